"""The video–title–OCR fusion transformer (VIOLET-style) with an ALBEF/ALPRO contrastive head.

Frames go through a timm ViT/Swin one at a time; a tubelet stem (a 3-D patch embedding over neighbouring frames)
adds motion to each frame's token grid (pooled to ``visual_grid`` × ``visual_grid``), and ViT encoders may also
attend across frames (divided space–time attention); the tokens get spatial and temporal position embeddings.
Title and OCR go through a transformers BERT. A fusion transformer reads ``[CLS; video tokens; text tokens]`` with
type embeddings (CLS, video, title, OCR) and key-padding masks, so either modality may be absent: a video without
text is fused alone, which is also how its standalone (VTC) embedding is made. :class:`FusionArch` holds the
architecture's keys; :func:`create_video_model` is the factory. Pure torch: no file or network access;
:mod:`mmpretrain.video.train` trains it and :func:`mmpretrain.hub.build_model` rebuilds it from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.models.backbones import create_backbone, set_kwargs
from mmpretrain.models.text import (
    TextModel,
    load_text_state,
    read_text_model,
    text_encoder_from_dict,
    text_encoder_to_dict,
)

TYPE_CLS, TYPE_VIDEO, TYPE_TITLE, TYPE_OCR = range(4)
TEXT_POOLINGS = ("mean", "cls")


def pool_text(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text from ``(B, L, H)`` token states: the CLS state, or the mean over the tokens the
    attention mask keeps (padding excluded), as sentence-transformers pools the models it trains."""
    if pooling == "cls":
        return states[:, 0]
    if pooling != "mean":
        raise ConfigError(f"model.arch.text_pooling={pooling!r} is not one of {TEXT_POOLINGS}")
    keep = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def frame_token_grid(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A timm model's ``forward_features`` output as a ``(N, h, w, C)`` token grid.

    ViT-like models return ``(N, prefix + h·w, C)`` (class/register tokens first); Swin returns NHWC; CNNs NCHW.
    """
    if features.ndim == 3:
        tokens = features[:, int(getattr(encoder, "num_prefix_tokens", 0)) :]
        grid = getattr(getattr(encoder, "patch_embed", None), "grid_size", None)
        if grid is None or grid[0] * grid[1] != tokens.shape[1]:
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ValueError(f"cannot arrange {tokens.shape[1]} frame tokens into a grid")
            grid = (side, side)
        return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])
    if features.ndim == 4:
        return features if getattr(encoder, "output_fmt", "NCHW") == "NHWC" else features.permute(0, 2, 3, 1)
    raise ValueError(f"unsupported frame feature shape {tuple(features.shape)}")


def pool_grid(tokens: torch.Tensor, grid: int | None) -> torch.Tensor:
    """Average-pool a ``(N, h, w, C)`` grid to ``grid × grid`` tokens (VIOLET keeps 7×7 per frame)."""
    if grid is None or tokens.shape[1:3] == (grid, grid):
        return tokens
    pooled = F.adaptive_avg_pool2d(tokens.permute(0, 3, 1, 2), grid)
    return pooled.permute(0, 2, 3, 1)


def match_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """A ``(N, h, w, C)`` token grid brought to ``grid × grid``: average pooling when it is at least that fine in both
    directions, bilinear interpolation (half-pixel centres) otherwise, so any teacher's features line up with the
    student's tokens."""
    if tokens.shape[1:3] == (grid, grid):
        return tokens
    x = tokens.permute(0, 3, 1, 2)
    if min(tokens.shape[1:3]) >= grid:
        x = F.adaptive_avg_pool2d(x, grid)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


class FrameTeacher(nn.Module):
    """A frozen image encoder whose frame features are the MVM regression target (VIOLETv2), always in eval mode.

    Frames arrive normalized with the student's mean/std; they are brought to the teacher's own preprocessing
    (mean/std, image size) first, and its token grid is matched to the student's (:func:`match_grid`).

    Args:
        backbone: a headless timm model (its ``forward_features`` gives a token grid).
        image_size / mean / std: the teacher's preprocessing. student_mean / student_std: the frames'.
        grid: the student's tokens per frame side.
    """

    def __init__(self, backbone: nn.Module, image_size: int, mean, std, student_mean, student_std, grid: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.image_size, self.grid = int(image_size), int(grid)
        own_mean, own_std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        scale = torch.tensor(student_std, dtype=torch.float32) / own_std
        shift = (torch.tensor(student_mean, dtype=torch.float32) - own_mean) / own_std
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.eval()

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def train(self, mode: bool = True) -> FrameTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` student-normalized frames -> ``(B, T·g², C)`` float32 targets."""
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1).float() * self.scale + self.shift
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        tokens = match_grid(frame_token_grid(self.backbone, self.backbone.forward_features(x)), self.grid)
        return tokens.reshape(b, t * self.grid * self.grid, tokens.shape[-1]).float()


def encode_frame_grid(encoder: nn.Module, frames: torch.Tensor, grid: int | None) -> torch.Tensor:
    """``(B, T, 3, H, W)`` normalized frames -> ``(B, T, g, g, C)`` frame tokens, frames encoded independently."""
    b, t = frames.shape[:2]
    tokens = pool_grid(frame_token_grid(encoder, encoder.forward_features(frames.flatten(0, 1))), grid)
    return tokens.reshape(b, t, *tokens.shape[1:])


TEMPORAL_STEMS = ("tubelet", "per_frame")
VTC_TEXTS = ("title", "all")
SPACE_TIMES = ("none", "divided")


@dataclass(frozen=True)
class FusionArch:
    """The fusion model's architecture, one place for its keys (``model.arch`` in the configs).

    Args:
        visual_grid: tokens per frame side after pooling; ``None`` keeps the encoder's grid.
        width / depth / num_heads / mlp_ratio / dropout: the fusion transformer.
        proj_dim: the shared VTC space (256 in ALBEF/ALPRO).
        temperature: VTC temperature at init (0.07), learned, clamped to [0.001, 0.5] by the training module.
        text_pooling: how the VTC text vector is read from the text encoder (see :func:`pool_text`); ``None``
            follows how the text encoder was trained (resolved by :func:`create_video_model`).
        temporal_stem: ``tubelet`` adds a 3-D patch embedding over ``tubelet_frames`` neighbouring frames to each
            frame's tokens, so motion is in the tokens before the fusion (VIOLET's Video Swin does this with a
            (2, 4, 4) tubelet); ``per_frame`` encodes frames alone (time only as an embedding).
        tubelet_frames: the stem's temporal kernel (odd: centred on each frame, so tokens stay one grid per frame).
        vtc_text: ``title``: the VTC text vector reads the title alone (OCR is text *in* the video, not a
            description of it; it stays in the fusion for VTM, MTM and fused embeddings); ``all``: title and OCR.
        space_time: ``divided``: before every block of a ViT frame encoder, each patch attends to itself in the
            clip's other frames (TimeSformer's divided space–time attention; zero at start, so a pretrained image
            model is unchanged at step 0); ``none``: frames meet only in the stem and the fusion.

    Example:
        >>> FusionArch(width=96, depth=2, num_heads=4).temporal_stem
        'tubelet'
    """

    visual_grid: int | None = 7
    width: int = 512
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    proj_dim: int = 256
    temperature: float = 0.07
    text_pooling: str | None = None
    temporal_stem: str = "tubelet"
    tubelet_frames: int = 3
    vtc_text: str = "title"
    space_time: str = "none"

    def __post_init__(self) -> None:
        for key, value, known in (("text_pooling", self.text_pooling, (*TEXT_POOLINGS, None)),
                                  ("temporal_stem", self.temporal_stem, TEMPORAL_STEMS),
                                  ("vtc_text", self.vtc_text, VTC_TEXTS),
                                  ("space_time", self.space_time, SPACE_TIMES)):
            if value not in known:
                raise ConfigError(f"model.arch.{key}={value!r} is not one of {tuple(k for k in known if k)}")
        if self.tubelet_frames < 1 or self.tubelet_frames % 2 == 0:
            raise ConfigError(f"model.arch.tubelet_frames={self.tubelet_frames} must be odd and >= 1")
        if self.num_heads >= 1 and self.width % self.num_heads:
            raise ConfigError(f"model.arch.width={self.width} must be divisible by "
                             f"model.arch.num_heads={self.num_heads}")

    @classmethod
    def of(cls, value: FusionArch | Mapping[str, Any] | None) -> FusionArch:
        """``value`` as a :class:`FusionArch` (a mapping from a config or a checkpoint; ``None``: the defaults).

        Raises:
            ValueError: an unknown key, naming ``model.arch``.
        """
        if isinstance(value, FusionArch):
            return value
        value = dict(value or {})
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"model.arch has unknown keys {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**value)


class TubeletStem(nn.Module):
    """A 3-D patch embedding over neighbouring frames: ``(B, T, 3, H, W)`` -> ``(B, T, g, g, C)``, one token grid
    per frame (stride 1 in time, zero padding at the clip's ends), added to the frame encoder's tokens.

    Each output cell sees its own patch in ``kernel`` consecutive frames, so a cell hidden in every frame (tube
    masking) reads nothing of its own content. :meth:`zero_` makes it add nothing, so a pretrained image encoder
    starts exactly where it was.
    """

    def __init__(self, channels: int, patch: int, kernel: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, channels, (kernel, patch, patch), stride=(1, patch, patch),
                              padding=(kernel // 2, 0, 0))

    def zero_(self) -> TubeletStem:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        return self

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.proj(frames.transpose(1, 2))  # (B, C, T, g, g)
        return x.permute(0, 2, 3, 4, 1)


class TemporalAttention(nn.Module):
    """The temporal half of divided space–time attention (TimeSformer): every patch token attends to the same
    patch in the clip's other frames, with a learned time embedding, added residually to a ViT block's input.

    The output projection starts at zero, so the image model is unchanged until it learns to use time.
    """

    def __init__(self, dim: int, num_heads: int, num_frames: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor, frames: int, prefix: int) -> torch.Tensor:
        """``(B·T, prefix + N, C)`` block input -> the same with time mixed into the ``N`` patch tokens."""
        tokens = x[:, prefix:]
        bt, n, c = tokens.shape
        y = tokens.reshape(bt // frames, frames, n, c).transpose(1, 2).reshape(-1, frames, c)
        h = self.norm(y) + self.time_embed[:, :frames].to(y.dtype)
        y = self.attn(h, h, h, need_weights=False)[0]
        y = y.reshape(bt // frames, n, frames, c).transpose(1, 2).reshape(bt, n, c)
        return torch.cat([x[:, :prefix], tokens + y], dim=1)


class _TimeHook:
    """A ViT block's pre-forward hook applying its :class:`TemporalAttention` (a class, not a lambda: picklable)."""

    def __init__(self, temporal: TemporalAttention, clip: dict[str, int], prefix: int) -> None:
        self.temporal, self.clip, self.prefix = temporal, clip, prefix

    def __call__(self, _: nn.Module, args: tuple) -> tuple:
        return (self.temporal(args[0], self.clip["frames"], self.prefix), *args[1:])


class VideoTextFusion(nn.Module):
    """Frame encoder + text encoder + fusion transformer, with MVM, MTM, VTM and VTC heads.

    Entry points: :meth:`encode_video` and :meth:`encode_text` (the shared VTC space, :attr:`embed_dim` wide),
    :meth:`encode_fused` (the fused CLS over frames, title and OCR) and :meth:`match` (VTM probability); training
    reuses the pieces (:meth:`video_tokens`, :meth:`text_states`, :meth:`fuse`, the heads).

    Args:
        frame_encoder: a headless timm ViT/Swin (``forward_features`` gives a token grid).
        text_encoder: a transformers encoder whose ``last_hidden_state`` feeds the fusion (BERT family).
        vocab_size: tokenizer size, for the MTM head.
        arch: the architecture (:class:`FusionArch` or its mapping); ``text_pooling`` must be resolved.
        num_frames: the most frames a clip may have (temporal position embeddings).
        image_size: frame side in pixels (the tubelet stem's patch is ``image_size // grid``).
        mvm_dim: the MVM target width: the teacher's feature width; ``None``: a patch's pixels, 3·(image_size/g)².
    """

    def __init__(
        self,
        frame_encoder: nn.Module,
        text_encoder: nn.Module,
        vocab_size: int,
        arch: FusionArch | Mapping[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int = 224,
        mvm_dim: int | None = None,
    ) -> None:
        super().__init__()
        arch = FusionArch.of(arch)
        if arch.text_pooling is None:
            raise ValueError("model.arch.text_pooling must be resolved (create_video_model does it)")
        self.arch = arch
        self.frame_encoder = frame_encoder
        self.text_encoder = text_encoder
        self.num_frames, self.image_size = int(num_frames), int(image_size)
        self.visual_grid = arch.visual_grid
        width, frame_dim = arch.width, int(frame_encoder.num_features)
        text_dim = int(text_encoder.config.hidden_size)
        self.grid = arch.visual_grid or self._native_grid()
        self.temporal_stem = None
        if arch.temporal_stem == "tubelet":
            if self.image_size % self.grid:
                raise ConfigError(f"model.image_size={image_size} is not divisible by visual_grid={self.grid} "
                                 "(the tubelet stem's patch; model.arch.temporal_stem=tubelet)")
            self.temporal_stem = TubeletStem(frame_dim, self.image_size // self.grid, arch.tubelet_frames)
        self.temporal_attn = None
        self._clip = {"frames": 1}
        if arch.space_time == "divided":
            self._add_temporal_attention()
        self.video_proj = nn.Sequential(nn.LayerNorm(frame_dim), nn.Linear(frame_dim, width))
        self.text_proj = nn.Linear(text_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.spatial_pos = nn.Parameter(torch.zeros(1, 1, self.grid**2, width))
        self.temporal_pos = nn.Parameter(torch.zeros(1, num_frames, 1, width))
        self.type_embed = nn.Embedding(4, width)
        layer = nn.TransformerEncoderLayer(width, arch.num_heads, int(width * arch.mlp_ratio), arch.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, arch.depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.vtc_video = nn.Linear(width, arch.proj_dim)
        self.vtc_text = nn.Linear(text_dim, arch.proj_dim)
        self.temperature = nn.Parameter(torch.tensor(float(arch.temperature)))
        self.vtm_head = nn.Linear(width, 2)
        self.mtm_head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, vocab_size)
        )
        if mvm_dim is None and self.image_size % self.grid:
            raise ConfigError(f"model.image_size={image_size} is not divisible by visual_grid={self.grid} (MVM pixels)")
        mvm_dim = mvm_dim or 3 * (self.image_size // self.grid) ** 2
        self.mvm_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, mvm_dim))
        # BERT's initializer range for every learned embedding: nn.Embedding's default N(0, 1) would bury the
        # content of each token under its type embedding and make the fused CLS nearly constant.
        for param in (self.cls_token, self.spatial_pos, self.temporal_pos, self.type_embed.weight):
            nn.init.trunc_normal_(param, std=0.02)

    def _native_grid(self) -> int:
        grid = getattr(getattr(self.frame_encoder, "patch_embed", None), "grid_size", None)
        if grid is None:
            raise ConfigError("model.arch.visual_grid must be set for a frame encoder without patch_embed.grid_size")
        return int(grid[0])

    def _add_temporal_attention(self) -> None:
        """One :class:`TemporalAttention` before each block of a ViT-like frame encoder (pre-forward hooks)."""
        blocks = getattr(self.frame_encoder, "blocks", None)
        if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not hasattr(blocks[0], "attn"):
            raise ConfigError(f"model.arch.space_time=divided needs a ViT-like frame encoder (a 'blocks' list); "
                             f"{type(self.frame_encoder).__name__} has none")
        dim, heads = int(self.frame_encoder.embed_dim), int(blocks[0].attn.num_heads)
        prefix = int(getattr(self.frame_encoder, "num_prefix_tokens", 0))
        self.temporal_attn = nn.ModuleList(TemporalAttention(dim, heads, self.num_frames) for _ in blocks)
        for block, temporal in zip(blocks, self.temporal_attn):
            block.register_forward_pre_hook(_TimeHook(temporal, self._clip, prefix))

    @property
    def frame_token_side(self) -> int | None:
        """Tokens per side of the frame encoder's own output grid at ``image_size`` (from timm's ``feature_info``
        stride), ``None`` when the encoder does not say. Below ``grid``, pooling repeats tokens: they hold no layout."""
        info = getattr(self.frame_encoder, "feature_info", None)
        if not info:
            return None
        return max(1, self.image_size // int(info[-1]["reduction"]))

    @property
    def width(self) -> int:
        return self.arch.width

    @property
    def embed_dim(self) -> int:
        """Width of :meth:`encode_video` and :meth:`encode_text` rows (the VTC projection)."""
        return int(self.vtc_video.out_features)

    def zero_temporal_stem(self) -> None:
        """For a frame encoder holding pretrained weights: the tubelet stem starts at zero, so at step 0 the video
        tokens are exactly the image model's (and it still learns: its gradient does not vanish)."""
        if self.temporal_stem is not None:
            self.temporal_stem.zero_()

    # ------------------------------------------------------------------------------------------- pieces

    def frame_grid(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalized frames -> ``(B, T, g, g, C)`` frame tokens (plus the tubelet stem's)."""
        if frames.shape[1] > self.num_frames:
            raise ValueError(f"clip has {frames.shape[1]} frames; the model was built for at most {self.num_frames}")
        self._clip["frames"] = frames.shape[1]  # read by the divided-attention hooks
        grid = encode_frame_grid(self.frame_encoder, frames, self.visual_grid)
        if self.temporal_stem is not None:
            grid = grid + self.temporal_stem(frames).to(grid.dtype)
        return grid

    def video_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalized frames -> fusion-width tokens with spatial, temporal and type
        embeddings: ``(B, T·g², D)``."""
        grid = self.frame_grid(frames)
        b, t = grid.shape[:2]
        x = self.video_proj(grid.flatten(2, 3))
        x = x + self.spatial_pos + self.temporal_pos[:, :t] + self.type_embed.weight[TYPE_VIDEO]
        return x.reshape(b, -1, x.shape[-1])

    def text_states(self, text: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The text encoder's token states ``(B, L, H_text)`` of a tokenized batch (``input_ids``,
        ``attention_mask``, ``token_type_ids``)."""
        out = self.text_encoder(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                token_type_ids=text["token_type_ids"])
        return out.last_hidden_state

    def fuse(
        self,
        video: torch.Tensor | None,
        text: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        video_keep: torch.Tensor | None = None,
        text_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fusion transformer over ``[CLS; video; text]``; returns all output states ``(B, 1 + Nv + L, D)``.

        Args:
            video: ``(B, Nv, D)`` from :meth:`video_tokens`, or ``None`` for text only.
            text: ``(B, L, H_text)`` from :meth:`text_states`, or ``None`` for video only.
            attention_mask / token_type_ids: the tokenizer's, with ``text``.
            video_keep / text_keep: ``(B,)`` bools; False hides that modality of a sample (modality dropout,
                videos without text) through the key-padding mask.
        """
        if video is None and text is None:
            raise ValueError("fuse needs video, text or both")
        batch = (video if video is not None else text).shape[0]
        device = (video if video is not None else text).device
        cls = (self.cls_token + self.type_embed.weight[TYPE_CLS]).expand(batch, -1, -1)
        parts, pads = [cls], [torch.zeros(batch, 1, dtype=torch.bool, device=device)]
        if video is not None:
            parts.append(video)
            hidden = torch.zeros(batch, video.shape[1], dtype=torch.bool, device=device)
            pads.append(hidden if video_keep is None else hidden | ~video_keep[:, None])
        if text is not None:
            types = TYPE_TITLE + token_type_ids.clamp(0, 1)
            parts.append(self.text_proj(text) + self.type_embed(types))
            pad = attention_mask == 0
            pads.append(pad if text_keep is None else pad | ~text_keep[:, None])
        return self.fusion(torch.cat(parts, dim=1), src_key_padding_mask=torch.cat(pads, dim=1))

    def video_embedding(self, video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The standalone video embedding of :meth:`video_tokens`: CLS of the video-only fusion, projected to the
        VTC space, L2-normalized unless ``normalize`` is False."""
        out = self.vtc_video(self.fuse(video)[:, 0])
        return F.normalize(out, dim=-1) if normalize else out

    def text_embedding(self, text: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token states pooled (``text_pooling``) over ``attention_mask``, projected, L2-normalized unless
        ``normalize`` is False."""
        out = self.vtc_text(pool_text(text, attention_mask, self.arch.text_pooling))
        return F.normalize(out, dim=-1) if normalize else out

    def match_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """VTM logits ``(B, 2)`` (no match, match) from the fused CLS."""
        return self.vtm_head(fused[:, 0])

    # ------------------------------------------------------------------------------------------- entry points

    def encode_video(self, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalized frames -> ``(B, embed_dim)`` VTC embeddings (frames alone, no text)."""
        return self.video_embedding(self.video_tokens(frames), normalize)

    def encode_text(self, text: Mapping[str, torch.Tensor], normalize: bool = True,
                    states: torch.Tensor | None = None) -> torch.Tensor:
        """A tokenized batch -> ``(B, embed_dim)`` VTC embeddings in :meth:`encode_video`'s space.

        With ``arch.vtc_text="title"`` the text encoder reads the title segment alone (the ``[CLS] title [SEP]``
        prefix; OCR tokens hidden), so a query and a training title are encoded alike; ``states`` (from
        :meth:`text_states` of the same batch) are reused only with ``"all"``.
        """
        mask = text["attention_mask"]
        if self.arch.vtc_text == "title":
            mask = mask * (text["token_type_ids"] == 0)
            length = max(int(mask.sum(1).max()), 1)
            mask = mask[:, :length]
            states = self.text_states({"input_ids": text["input_ids"][:, :length], "attention_mask": mask,
                                       "token_type_ids": text["token_type_ids"][:, :length]})
        elif states is None:
            states = self.text_states(text)
        return self.text_embedding(states, mask, normalize)

    def encode_fused(self, frames: torch.Tensor, text: Mapping[str, torch.Tensor],
                     text_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The fused CLS ``(B, width)`` over frames, title and OCR; ``text_keep`` False (default: ``has_text``
        where the batch carries it) fuses a video from its frames alone."""
        keep = text.get("has_text") if text_keep is None else text_keep
        states = self.text_states(text)
        fused = self.fuse(self.video_tokens(frames), states, text["attention_mask"], text["token_type_ids"],
                          text_keep=None if keep is None else keep.bool())
        return fused[:, 0]

    def match(self, frames: torch.Tensor, text: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """VTM match probabilities ``(B,)`` of (clip i, text i) pairs."""
        fused = self.fuse(self.video_tokens(frames), self.text_states(text), text["attention_mask"],
                          text["token_type_ids"])
        return self.match_logits(fused).float().softmax(-1)[:, 1]


def create_video_model(
    frame_encoder: str,
    text_encoder: str | TextModel,
    arch: FusionArch | Mapping[str, Any] | None = None,
    *,
    frame_encoder_kwargs: Mapping[str, Any] | None = None,
    frame_drop_path: float = 0.0,
    text_pretrained: bool = True,
    text_overrides: Mapping[str, Any] | None = None,
    num_frames: int = 8,
    image_size: int = 224,
    mvm_dim: int | None = None,
) -> tuple[VideoTextFusion, Any]:
    """The models factory of the fusion model: frame encoder (timm, random init), text encoder and tokenizer
    (transformers), ``arch.text_pooling=None`` resolved to how the text model was trained.

    ``text_encoder`` is a name (read here with ``text_pretrained`` / ``text_overrides``) or a
    :class:`~mmpretrain.models.text.TextModel` already read, which builds without any file access.

    Returns:
        (the model, its tokenizer).
    """
    arch = FusionArch.of(arch)
    text = text_encoder if isinstance(text_encoder, TextModel) else read_text_model(
        text_encoder, text_pretrained, text_overrides)
    if arch.text_pooling is None:
        arch = replace(arch, text_pooling=text.pooling)
    frames = create_backbone(frame_encoder, frame_drop_path, **dict(frame_encoder_kwargs or {}))
    # a pretrained encoder's random init is overwritten: drawn on a forked RNG, it leaves the parts after it as seeded
    with torch.random.fork_rng(devices=[], enabled=text.pretrained):
        encoder = text_encoder_from_dict(text.architecture)
    if text.state is not None:
        load_text_state(encoder, text.state)
    model = VideoTextFusion(frames, encoder, len(text.tokenizer), arch, num_frames=num_frames, image_size=image_size,
                            mvm_dim=mvm_dim)
    return model, text.tokenizer


def video_model_config(
    model: VideoTextFusion, frame_encoder: str, frame_kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The architecture of ``model`` as plain JSON: enough for :func:`build_video_model` to rebuild it. A ``None``
    frame-encoder key (a recipe dropping a key it inherits) is left out, as :func:`create_backbone` leaves it out."""
    return {
        "frame_encoder": {"name": frame_encoder, "kwargs": set_kwargs(frame_kwargs)},
        "text_encoder": text_encoder_to_dict(model.text_encoder),
        "fusion": {
            **asdict(model.arch),
            "vocab_size": int(model.mtm_head[-1].out_features),
            "num_frames": int(model.num_frames),
            "image_size": int(model.image_size),
            "mvm_dim": int(model.mvm_head[-1].out_features),
        },
    }


# what a checkpoint written before a key existed was built with
_FUSION_BEFORE = {"temporal_stem": "per_frame", "vtc_text": "all", "text_pooling": "cls", "space_time": "none"}


def build_video_model(architecture: Mapping[str, Any]) -> VideoTextFusion:
    """A random-init :class:`VideoTextFusion` from :func:`video_model_config`; the caller loads the weights."""
    frame = architecture["frame_encoder"]
    fusion = dict(architecture["fusion"])
    sizes = {key: fusion.pop(key) for key in ("vocab_size", "num_frames", "image_size", "mvm_dim") if key in fusion}
    arch = FusionArch.of(_FUSION_BEFORE | fusion)
    return VideoTextFusion(
        create_backbone(frame["name"], 0.0, **dict(frame.get("kwargs") or {})),
        text_encoder_from_dict(architecture["text_encoder"]),
        arch=arch,
        **sizes,
    )
