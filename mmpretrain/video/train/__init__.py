"""Video training: text preparation, masking, the pretraining objectives (pure functions), parameter groups, and the
thin LightningModules for pretraining (:class:`VideoFusionPretrain`) and fine-tuning (:class:`VideoFinetune`)."""

from mmpretrain.video._lazy import lazy_exports

_LAZY = {
    "TextProcessor": "text",
    "join_ocr": "text",
    "normalize_title": "text",
    "same_content": "text",
    "blockwise_mask": "masking",
    "mask_tokens": "masking",
    "random_mask": "masking",
    "mtm_loss": "losses",
    "objective_weights": "losses",
    "mvm_loss": "losses",
    "vtc_loss": "losses",
    "vtm_loss": "losses",
    "video_param_groups": "param_groups",
    "VideoFusionPretrain": "module",
    "VideoFinetune": "finetune",
    "write_predictions": "finetune",
    "build_finetune": "build",
    "build_pretrain": "build",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
