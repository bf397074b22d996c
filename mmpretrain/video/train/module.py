"""Video–text pretraining (MVM, MTM, VTM, VTC) as a thin LightningModule over :mod:`mmpretrain.video` parts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mmpretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, FrameNormalize
from mmpretrain.errors import ConfigError
from mmpretrain.models import (
    WORD_EMBEDDINGS,
    FrameTeacher,
    FusionArch,
    TextModel,
    create_backbone,
    create_video_model,
    fixed_input_size,
    load_text_state,
    tokenizer_from_json,
    tokenizer_to_json,
    video_model_config,
)
from mmpretrain.training import (
    adamw_kernel,
    check_choice,
    check_range,
    gather_unique,
    global_batch,
    scaled_lr,
    warmup_cosine_schedule,
)
from mmpretrain.video.train.losses import (
    mtm_accuracy,
    mtm_loss,
    mvm_loss,
    objective_weights,
    patchify_pixels,
    sample_hard_negatives,
    vtc_loss,
    vtm_accuracy,
    vtm_loss,
)
from mmpretrain.video.train.masking import IGNORE_INDEX, blockwise_mask, mask_tokens, random_mask
from mmpretrain.video.train.param_groups import video_param_groups
from mmpretrain.video.train.text import CONTENT_KEYS, same_content

log = logging.getLogger(__name__)

LOSSES = ("vtc", "vtm", "mtm", "mvm")
MVM_TARGETS = ("teacher", "pixels")
MASKINGS = ("blockwise", "random")
VTM_NEGATIVES = ("hard", "random")
EMBEDDINGS = ("vtc", "fused")
#: pretrained: the text model's own vocabulary; train: a WordPiece vocabulary learned from the training titles and OCR
TOKENIZERS = ("pretrained", "train")
#: frame side when neither model.image_size nor the frame encoder's img_size says one
DEFAULT_IMAGE_SIZE = 224


def frame_size(frame_encoder: str, frame_kwargs: Mapping[str, Any] | None,
               image_size: int | None) -> tuple[dict[str, Any], int]:
    """The frame encoder's kwargs and the frame side, which must agree: ``image_size`` when set, else the kwargs'
    ``img_size``, else 224; an ``img_size`` of ``None`` (interpolated from ``model.image_size=null``) takes it. An
    architecture that takes any input size (a CNN) has no ``img_size`` argument: the key is dropped, so the recipe's
    ``img_size: ${model.image_size}`` fits a CNN frame encoder as well.

    Raises:
        ConfigError: both set to different sizes, naming both keys.
    """
    kwargs = dict(frame_kwargs or {})
    declared = kwargs.get("img_size")
    declared = declared[0] if isinstance(declared, (list, tuple)) and len(set(declared)) == 1 else declared
    if image_size is not None and declared is not None and int(declared) != int(image_size):
        raise ConfigError(f"model.image_size={image_size} but model.frame_encoder_kwargs.img_size={declared}: "
                          "the frames are read at one size; set both alike (or leave model.image_size null)")
    size = int(image_size if image_size is not None else declared if declared is not None else DEFAULT_IMAGE_SIZE)
    if "img_size" in kwargs:
        if fixed_input_size(frame_encoder):
            kwargs["img_size"] = size
        else:
            del kwargs["img_size"]
    return kwargs, size


def same_text(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` True where two samples carry identical text: such a pair is never a negative."""
    ids = input_ids.masked_fill(attention_mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


class VideoFusionPretrain(pl.LightningModule):
    """Pretrain :class:`VideoTextFusion` with masked visual / text modeling, video–text matching and contrast.

    The recipe follows VIOLET (fusion over frame and text tokens, MVM + MTM + VTM, AdamW betas (0.9, 0.98), wd
    1e-3; a tubelet stem puts motion into the tokens as its Video Swin does), VIOLETv2 (MVM regresses with L1 the
    features of a strong frozen image model: ``mvm_teacher``, by default the ``frame_init`` checkpoint; never a random
    network: with neither, per-patch normalized pixels), VideoMAE (tube masking), and ALBEF/ALPRO (a 256-d
    contrastive head with a learnable temperature from 0.07, negatives gathered across ranks, one hard VTM negative
    per video and per text drawn from the contrastive similarity, never the positive nor a sample showing the same
    thing). Modality dropout hides all text or all frames of some samples in the masked pass, so a video without
    text still embeds well. VTC leads: the other objectives' weights ramp in over the first ``loss_ramp`` of
    training (:func:`~mmpretrain.video.train.losses.objective_weights`).

    The constructor reads no file: :func:`build_pretrain` (the configs' target) reads the text model (``text_model``:
    its architecture and tokenizer, saved in the hyperparameters), ``frame_init`` and ``mvm_teacher``, and hands the
    weights to :meth:`initialize_from`; a checkpoint restores them with the rest, without the original files.

    Args:
        frame_encoder / frame_encoder_kwargs / frame_drop_path: timm ViT/Swin for the frames.
        text_encoder / text_pretrained / text_overrides: transformers model (hub name, path, ``pkg://``), whether to
            load its weights, config overrides (e.g. ``num_hidden_layers``); read by :func:`build_pretrain`.
        tokenizer / tokenizer_vocab / tokenizer_corpus: ``pretrained`` (the text model's vocabulary) or ``train`` (a
            WordPiece vocabulary of at most ``tokenizer_vocab`` tokens learned by :func:`build_pretrain` from the
            titles and OCR of the ``tokenizer_corpus`` manifest; the word embeddings then start at random init and
            learn at the ``fusion`` rate, the text layers keep their weights and the ``text`` rate).
        text_model: the text encoder's architecture, tokenizer and pooling (:class:`~mmpretrain.models.TextModel`
            ``.to_dict()``), filled by :func:`build_pretrain`.
        num_frames / image_size: clip length and frame side (``None``: ``frame_encoder_kwargs["img_size"]``, else
            224; :func:`build_pretrain` fills it from ``frame_init`` when ``frame_encoder`` is ``None``).
        arch: the fusion model (:class:`~mmpretrain.models.FusionArch` or its mapping, ``model.arch``).
        mvm_target: ``teacher`` (frozen image-model features, L1) or ``pixels`` (per-patch normalized pixels, MSE).
        teacher: the MVM teacher's architecture and preprocessing (``name``, ``kwargs``, ``image_size``, ``mean``,
            ``std``), filled by :func:`build_pretrain`; ``None``: MVM regresses pixels.
        frame_init / mvm_teacher: where :func:`build_pretrain` took the frame encoder's and the teacher's weights
            (kept as provenance; this constructor loads nothing).
        mvm_ratio / mvm_masking / mvm_tube: the visual mask (tube: the same cells in every frame, so a masked cell
            cannot be copied from a neighbour; the tubelet stem needs it).
        mtm_prob: BERT masking probability (0.15). vtm_negatives: ``hard`` or ``random`` (in-batch).
        vtm_exclude: what makes two samples the same for VTM negatives: ``label``, ``tags`` (the same tag set),
            ``title`` (the same normalized title); identical token sequences are always excluded.
        vtc_exclude: what makes two samples of a batch the same for VTC (``tags``, ``title``, ``label``; empty:
            every other sample is a negative): such pairs are not pushed apart. ``label`` alone would also spare
            clips that share only their class, which VTC must still tell apart. Compared within each process's
            batch (with several GPUs, gathered columns from other ranks stay negatives).
        vtm_balanced: weigh VTM's positives and negatives equally (one positive to two negatives otherwise), so
            a match probability above 0.5 means a match, as retrieval evaluation and re-ranking read it.
        loss_weights: weight per objective; 0 switches one off. loss_ramp: the fraction of training over which the
            objectives other than VTC rise from 0 to their weight (0: constant weights).
        modality_dropout: ``{"text": p, "video": p}``. lr_mult: ``{"text", "frames", "fusion"}`` multipliers of
            ``lr`` (default 1 each; the tubelet stem is in ``frames``).
        lr / lr_ref_batch / min_lr / warmup_epochs / weight_decay / betas: AdamW with warmup + cosine per step,
            lr quoted per ``lr_ref_batch`` clips.
        max_text_len / mean / std: preprocessing, stored so an exported encoder reproduces it.
        embedding: what ``VideoEncoder.encode_videos`` returns by default: ``vtc`` or ``fused``.
    """

    def __init__(
        self,
        frame_encoder: str | None = "vit_small_patch16_224",
        frame_encoder_kwargs: dict[str, Any] | None = None,
        frame_drop_path: float = 0.1,
        text_encoder: str = "bert-base-uncased",
        text_pretrained: bool = True,
        text_overrides: dict[str, Any] | None = None,
        tokenizer: str = "pretrained",
        tokenizer_vocab: int = 8000,
        tokenizer_corpus: str | None = None,
        text_model: Mapping[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int | None = None,
        arch: FusionArch | Mapping[str, Any] | None = None,
        mvm_target: str = "teacher",
        teacher: Mapping[str, Any] | None = None,
        frame_init: str | None = None,
        mvm_teacher: str | None = None,
        mvm_ratio: float = 0.3,
        mvm_masking: str = "blockwise",
        mvm_tube: bool = True,
        mtm_prob: float = 0.15,
        vtm_negatives: str = "hard",
        vtm_exclude: Sequence[str] = CONTENT_KEYS,
        vtm_balanced: bool = True,
        vtc_exclude: Sequence[str] = ("tags", "title"),
        loss_weights: Mapping[str, float] | None = None,
        loss_ramp: float = 0.0,
        modality_dropout: Mapping[str, float] | None = None,
        lr: float = 1e-4,
        lr_mult: Mapping[str, float] | None = None,
        lr_ref_batch: int = 256,
        min_lr: float = 1e-6,
        warmup_epochs: float = 1,
        weight_decay: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.98),
        max_text_len: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        embedding: str = "vtc",
    ) -> None:
        super().__init__()
        fusion = FusionArch.of(arch)
        arch = asdict(fusion)  # saved as plain JSON: checkpoints are read with weights_only, hparams.yaml by yaml
        # loggers get the composed config; the hyperparameters hold the tokenizer (hundreds of kB) for checkpoints
        self.save_hyperparameters(logger=False)
        arch = fusion
        check_choice(tokenizer, TOKENIZERS, "model.tokenizer")
        frame_kwargs, image_size = frame_size(frame_encoder, frame_encoder_kwargs, image_size)
        check_choice(mvm_target, MVM_TARGETS, "model.mvm_target")
        check_choice(mvm_masking, MASKINGS, "model.mvm_masking")
        check_choice(vtm_negatives, VTM_NEGATIVES, "model.vtm_negatives")
        check_choice(embedding, EMBEDDINGS, "model.embedding")
        check_range({"model.mvm_ratio": mvm_ratio, "model.arch.dropout": arch.dropout,
                     "model.frame_drop_path": frame_drop_path}, 0.0, 1.0, high_open=True)
        check_range({"model.mtm_prob": mtm_prob, "model.loss_ramp": loss_ramp,
                     **{f"model.modality_dropout.{k}": v for k, v in dict(modality_dropout or {}).items()}}, 0.0, 1.0)
        check_range({"model.num_frames": num_frames, "model.image_size": image_size, "model.max_text_len": max_text_len,
                     **{f"model.arch.{k}": getattr(arch, k) for k in ("visual_grid", "width", "depth", "num_heads",
                                                                      "proj_dim")}}, 1)
        check_range({"model.lr": lr, "model.arch.mlp_ratio": arch.mlp_ratio,
                     "model.arch.temperature": arch.temperature}, 0.0, low_open=True)
        check_range({"model.min_lr": min_lr, "model.warmup_epochs": warmup_epochs, "model.weight_decay": weight_decay,
                     **{f"model.loss_weights.{k}": v for k, v in dict(loss_weights or {}).items()}}, 0.0)
        self.loss_weights = {k: 1.0 for k in LOSSES} | dict(loss_weights or {})
        unknown = sorted(set(self.loss_weights) - set(LOSSES))
        if unknown:
            raise ConfigError(f"model.loss_weights has unknown objectives {unknown}; known: {LOSSES}")
        if arch.temporal_stem == "tubelet" and not mvm_tube and self.loss_weights["mvm"] > 0:
            raise ConfigError("model.mvm_tube=false with model.arch.temporal_stem=tubelet: a cell masked in one frame "
                             "would be read from its neighbours by the stem; keep tube masking or use per_frame")
        self.modality_dropout = {"text": 0.0, "video": 0.0} | dict(modality_dropout or {})
        same_content([], keys=vtm_exclude)  # validates the keys now, not at the first step
        self.vtm_exclude = tuple(vtm_exclude)
        for key in vtc_exclude:
            check_choice(key, CONTENT_KEYS, "model.vtc_exclude")
        self.vtc_exclude = tuple(vtc_exclude)
        if frame_encoder is None:
            where = ("build the module with mmpretrain.video.build_pretrain, which reads it" if frame_init else
                     "which is unset")
            raise ConfigError(f"model.frame_encoder=null takes the architecture from model.frame_init, {where}")
        if mvm_target == "teacher" and teacher is None and (mvm_teacher or frame_init):
            raise ValueError(f"model.mvm_teacher={mvm_teacher or frame_init!r} is not loaded: build the module with "
                             "mmpretrain.video.build_pretrain, which reads it")
        if text_model is None:
            raise ValueError(f"model.text_encoder={text_encoder!r} is not loaded: build the module with "
                             "mmpretrain.video.build_pretrain, which reads it")
        self.frame_arch = (frame_encoder, frame_kwargs)
        use_teacher = mvm_target == "teacher" and teacher is not None
        if mvm_target == "teacher" and teacher is None:
            log.info("model.mvm_teacher and model.frame_init are unset: MVM regresses per-patch normalized pixels "
                     "(a random network's features would teach nothing)")
        teacher_net = None
        if use_teacher:
            teacher_net = create_backbone(teacher["name"], 0.0, **dict(teacher.get("kwargs") or {}))
        self.model, self.tokenizer = create_video_model(
            frame_encoder, TextModel.from_dict(text_model), arch, frame_encoder_kwargs=frame_kwargs,
            frame_drop_path=frame_drop_path, num_frames=num_frames, image_size=image_size,
            mvm_dim=int(teacher_net.num_features) if use_teacher else None,
        )
        self.grid = self.model.grid
        side = self.model.frame_token_side
        if side is not None and side < self.grid:
            raise ConfigError(
                f"model.frame_encoder {self.frame_arch[0]!r} outputs {side}x{side} tokens per {image_size}-px frame "
                f"but model.arch.visual_grid={self.grid}: its tokens would be copies that say nothing of where things "
                f"are or how they move; use a frame encoder with stride <= {image_size // self.grid} at this size "
                "(e.g. a ViT with that patch_size), a larger model.image_size, or a smaller model.arch.visual_grid")
        self.teacher = None
        if use_teacher:
            self.teacher = FrameTeacher(teacher_net, teacher["image_size"], teacher["mean"], teacher["std"], mean, std,
                                        self.grid)
        self.model.train()  # transformers loads in eval mode: the text encoder's dropout must train too
        self.normalize = FrameNormalize(mean, std)
        self._val: list[tuple[torch.Tensor, ...]] = []

    def initialize_from(self, frames: Mapping[str, torch.Tensor] | None = None,
                        teacher: Mapping[str, torch.Tensor] | None = None,
                        text: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load pretrained frame-encoder and MVM-teacher weights (strict) and text-encoder weights (all but the word
        embeddings of a trained vocabulary); a pretrained frame encoder starts with a zero tubelet stem, so step 0
        sees exactly the image model's tokens."""
        if frames is not None:
            self.model.frame_encoder.load_state_dict(frames, strict=True)
            self.model.zero_temporal_stem()
        if teacher is not None:
            self.teacher.backbone.load_state_dict(teacher, strict=True)
        if text is not None:
            load_text_state(self.model.text_encoder, text)

    # ------------------------------------------------------------------------------------------- pieces

    def train(self, mode: bool = True) -> VideoFusionPretrain:
        """Keep the MVM teacher in eval mode (no dropout, no drop path) whatever Lightning asks."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def export_config(self) -> dict[str, Any]:
        """What rebuilds the model and its inputs without the original files: stored in every checkpoint."""
        hp = self.hparams
        return {
            "kind": "video",
            "architecture": video_model_config(self.model, *self.frame_arch),
            "preprocessing": {
                "num_frames": int(hp.num_frames),
                "image_size": int(self.model.image_size),
                "mean": [float(x) for x in hp.mean],
                "std": [float(x) for x in hp.std],
                "max_text_len": int(hp.max_text_len),
            },
            "tokenizer": tokenizer_to_json(self.tokenizer),
            "embedding": hp.embedding,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["video_model"] = self.export_config()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume with another vocabulary of the same size (the weights would load and mean other tokens):
        e.g. ``model.tokenizer=train`` learned again from a changed ``model.tokenizer_corpus``."""
        saved = (checkpoint.get("video_model") or {}).get("tokenizer")
        if saved and tokenizer_from_json(saved).get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError("the checkpoint was trained with another tokenizer than this model's (model.tokenizer="
                              "train on a changed model.tokenizer_corpus, or another model.text_encoder): resume with "
                              "the text settings and manifest it was trained with")

    def _frame_mask(self, batch: int, frames: int, generator: torch.Generator | None) -> torch.Tensor:
        make = blockwise_mask if self.hparams.mvm_masking == "blockwise" else random_mask
        return make(batch, frames, self.grid, self.grid, self.hparams.mvm_ratio,
                    generator=generator, tube=self.hparams.mvm_tube)

    @staticmethod
    def _hide(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero (= the mean after normalization) the pixels under masked tokens."""
        b, t, _, h, w = frames.shape
        pixels = F.interpolate(mask.flatten(0, 1)[:, None].float(), size=(h, w), mode="nearest")
        return frames * (1 - pixels.view(b, t, 1, h, w))

    def _mvm_target(self, frames: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return patchify_pixels(frames, (self.grid, self.grid))
        return self.teacher(frames)

    def _gather(self, *tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
        """Every rank's rows (gradients flow back to their owner) and this rank's offset among them."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensors, 0
        out = tuple(self.all_gather(t, sync_grads=t.requires_grad).flatten(0, 1) for t in tensors)
        return out, self.trainer.global_rank * tensors[0].shape[0]

    # ------------------------------------------------------------------------------------------- the step

    def pretrain_step(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                      dropout: bool = True) -> dict[str, torch.Tensor]:
        """All four objectives on one batch; returns the weighted ``loss``, each term, accuracies and embeddings."""
        hp, m = self.hparams, self.model
        text = batch["text"]
        ids, attn, types, has_text = (text[k] for k in ("input_ids", "attention_mask", "token_type_ids", "has_text"))
        frames = self.normalize(batch["frames"])
        b, t = frames.shape[:2]
        out: dict[str, torch.Tensor] = {}

        video = m.video_tokens(frames)
        states = m.text_states(text)
        v_emb, t_emb = m.video_embedding(video), m.encode_text(text, states=states)
        with torch.no_grad():
            m.temperature.clamp_(0.001, 0.5)
        # with a title-only text vector, a video with OCR but no title has nothing to contrast with
        vtc_valid = has_text if m.arch.vtc_text == "all" else has_text & (((types == 0) & (attn == 1)).sum(1) > 2)
        (all_v, all_t, all_valid), offset = self._gather(v_emb, t_emb, vtc_valid)
        vtc_same = self._same(batch, self.vtc_exclude) if offset == 0 and len(all_v) == b else None
        out["vtc"] = vtc_loss(v_emb, t_emb, m.temperature, all_video=all_v, all_text=all_t, offset=offset,
                              valid=vtc_valid, all_valid=all_valid,
                              same=None if vtc_same is None else vtc_same.to(v_emb.device))

        same = self._same(batch, self.vtm_exclude)
        out["vtm"], out["vtm_acc"] = self._matching(video, states, text, v_emb, t_emb, generator, same)

        mask = self._frame_mask(b, t, generator).to(frames.device)
        # with a (CPU) generator, as in validation, the draw runs on the CPU so it is the same on any device
        where = "cpu" if generator is not None else ids.device
        masked_ids, labels = (x.to(ids.device) for x in mask_tokens(
            ids.to(where), text["special_tokens_mask"].to(where), mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer), prob=hp.mtm_prob, generator=generator))
        text_keep, video_keep = has_text.clone(), torch.ones_like(has_text)
        if dropout:
            draw = torch.rand(b, 2, generator=generator).to(frames.device)
            drop_text = (draw[:, 0] < self.modality_dropout["text"]) & has_text
            text_keep &= ~drop_text
            video_keep &= ~((draw[:, 1] < self.modality_dropout["video"]) & has_text & ~drop_text)
        masked_video = m.video_tokens(self._hide(frames, mask))
        masked_states = m.text_states({**text, "input_ids": masked_ids})
        fused = m.fuse(masked_video, masked_states, attn, types, video_keep, text_keep)
        n_video = masked_video.shape[1]
        mvm_mask = mask.flatten(1) & video_keep[:, None]
        out["mvm"] = mvm_loss(m.mvm_head(fused[:, 1 : 1 + n_video]), self._mvm_target(frames), mvm_mask,
                              loss="l1" if self.teacher is not None else "mse")
        labels = labels.masked_fill(~text_keep[:, None], IGNORE_INDEX)
        chosen = labels != IGNORE_INDEX
        logits = m.mtm_head(fused[:, 1 + n_video :][chosen])[None]
        out["mtm"] = mtm_loss(logits, labels[chosen][None])
        out["mtm_acc"] = mtm_accuracy(logits.detach(), labels[chosen][None])
        weights = self.objective_weights() if dropout else self.loss_weights
        out["loss"] = sum(weights[k] * out[k] for k in LOSSES)
        out["v_emb"], out["t_emb"], out["has_text"] = v_emb.detach(), t_emb.detach(), vtc_valid
        return out

    def objective_weights(self) -> dict[str, float]:
        """The objectives' weights at this step: VTC's from the start, the others ramped in over ``loss_ramp``."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        progress = self.global_step / total if total and total != float("inf") else 1.0
        return objective_weights(self.loss_weights, progress, self.hparams.loss_ramp)

    def _same(self, batch: Mapping[str, Any], keys: Sequence[str]) -> torch.Tensor | None:
        """Which samples show the same thing by ``keys``, from the batch's titles, labels and tag sets."""
        if "title" not in batch:
            return None
        return same_content(batch["title"], batch.get("label_name"), batch.get("tag_set"), keys) if keys else None

    def _matching(
        self,
        video: torch.Tensor,
        states: torch.Tensor,
        text: Mapping[str, torch.Tensor],
        v_emb: torch.Tensor,
        t_emb: torch.Tensor,
        generator: torch.Generator | None,
        same_thing: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VTM over positives, one negative text per video and one negative video per text (hard by default).

        Negatives come from the local batch's VTC similarity (ALBEF); samples with identical text, or flagged in
        ``same_thing`` (same label, tags or normalized title: a paraphrase is not a negative), are never each
        other's negative, and videos without text take part only as negatives for other texts. The draw runs on the
        CPU (a B×B matrix), so a seeded CPU ``generator`` works whatever device the model is on.
        """
        ids, attn, types, has_text = (text[k] for k in ("input_ids", "attention_mask", "token_type_ids", "has_text"))
        rows = has_text.nonzero().flatten()
        with torch.no_grad():
            sim = ((v_emb @ t_emb.T).float() / self.model.temperature).cpu()
            same, valid = same_text(ids, attn).cpu(), has_text.cpu()
            if same_thing is not None:
                same |= same_thing
            mode = self.hparams.vtm_negatives
            neg_text = sample_hard_negatives(sim, valid=valid, same=same, mode=mode, generator=generator)
            neg_video = sample_hard_negatives(sim.T.contiguous(), same=same, mode=mode, generator=generator)
            neg_text, neg_video = neg_text.to(rows.device)[rows], neg_video.to(rows.device)[rows]
        has_nt, has_nv = neg_text >= 0, neg_video >= 0
        video_idx = torch.cat([rows, rows[has_nt], neg_video[has_nv]])
        text_idx = torch.cat([rows, neg_text[has_nt], rows[has_nv]])
        labels = torch.cat([torch.ones_like(rows), torch.zeros(int(has_nt.sum() + has_nv.sum()), dtype=torch.long,
                                                               device=rows.device)])
        if rows.numel() == 0:
            return self.model.vtm_head.weight.sum() * 0, torch.tensor(float("nan"), device=v_emb.device)
        fused = self.model.fuse(video[video_idx], states[text_idx], attn[text_idx], types[text_idx])
        logits = self.model.match_logits(fused)
        return vtm_loss(logits, labels, balanced=self.hparams.vtm_balanced), vtm_accuracy(logits.detach(), labels)

    # ------------------------------------------------------------------------------------------- Lightning

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.pretrain_step(batch)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(
                f"video pretraining loss is {out['loss'].item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); terms: " + ", ".join(f"{k}={out[k].item():.4g}" for k in LOSSES)
            )
        size = batch["frames"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for key in (*LOSSES, "mtm_acc", "vtm_acc"):
            if torch.isfinite(out[key]):
                self.log(f"train/{key}", out[key], on_step=True, on_epoch=True, batch_size=size)
        self.log("train/temperature", self.model.temperature, on_step=True, on_epoch=False, batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)
        out = self.pretrain_step(batch, generator=generator, dropout=False)
        size = batch["frames"].shape[0]
        self.log("val/loss", out["loss"], on_epoch=True, batch_size=size, sync_dist=True)
        for key in (*LOSSES, "mtm_acc", "vtm_acc"):
            if torch.isfinite(out[key]):
                self.log(f"val/{key}", out[key], on_epoch=True, batch_size=size, sync_dist=True)
        self._val.append((out["v_emb"].float(), out["t_emb"].float(), out["has_text"], batch["index"]))

    def on_validation_epoch_end(self) -> None:
        chunks, self._val = self._val, []
        if not chunks:
            return
        v, t, valid, index = (torch.cat(parts) for parts in zip(*chunks))
        v, t, valid = gather_unique(self, index, v, t, valid)
        v, t = v[valid.bool()], t[valid.bool()]
        if len(v) == 0:
            return
        sim = t @ v.T
        target = torch.arange(len(v), device=sim.device)
        self.log("val/t2v_r1", (sim.argmax(1) == target).float().mean() * 100, prog_bar=True)
        self.log("val/v2t_r1", (sim.argmax(0) == target).float().mean() * 100)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        batch = global_batch(self)
        lr, min_lr = scaled_lr(hp.lr, batch, hp.lr_ref_batch), scaled_lr(hp.min_lr, batch, hp.lr_ref_batch)
        fresh = (f"text_encoder.{WORD_EMBEDDINGS}",) if hp.tokenizer == "train" else ()
        groups = video_param_groups(self.model, lr, hp.weight_decay, hp.lr_mult, fresh=fresh)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), **adamw_kernel(self.trainer.precision))
        return warmup_cosine_schedule(self, optimizer, lr, min_lr, hp.warmup_epochs)
