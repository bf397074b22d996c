"""Model factories: image backbones (timm), text encoders and tokenizers (transformers), MLP heads, and the
video–title–OCR fusion transformer built from them. Pure torch: no file or network access."""

from mmpretrain.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_has_batchnorm,
    create_backbone,
    fixed_input_size,
)
from mmpretrain.models.coverage import coverage_warning, unknown_token_share
from mmpretrain.models.fit import state_fits
from mmpretrain.models.fusion import (
    FrameTeacher,
    FusionArch,
    TubeletStem,
    VideoTextFusion,
    build_video_model,
    create_video_model,
    encode_frame_grid,
    frame_token_grid,
    match_grid,
    pool_text,
    video_model_config,
)
from mmpretrain.models.heads import MLPHead
from mmpretrain.models.text import (
    SPECIAL_TOKENS,
    WORD_EMBEDDINGS,
    TextModel,
    create_text_encoder,
    create_tokenizer,
    load_text_state,
    read_text_model,
    resolve_text_model,
    text_encoder_from_dict,
    text_encoder_to_dict,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
    trained_pooling,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPECIAL_TOKENS",
    "WORD_EMBEDDINGS",
    "FrameTeacher",
    "FusionArch",
    "MLPHead",
    "TextModel",
    "TubeletStem",
    "VideoTextFusion",
    "backbone_has_batchnorm",
    "build_video_model",
    "coverage_warning",
    "create_backbone",
    "create_text_encoder",
    "create_tokenizer",
    "create_video_model",
    "encode_frame_grid",
    "fixed_input_size",
    "frame_token_grid",
    "load_text_state",
    "match_grid",
    "pool_text",
    "read_text_model",
    "resolve_text_model",
    "state_fits",
    "text_encoder_from_dict",
    "text_encoder_to_dict",
    "tokenizer_from_json",
    "tokenizer_to_json",
    "train_tokenizer",
    "trained_pooling",
    "unknown_token_share",
    "video_model_config",
]
