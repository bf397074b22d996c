"""The video–title–OCR fusion transformer (VIOLET-style) with an ALBEF/ALPRO contrastive head.

Frames go through a timm ViT/Swin one at a time; its token grid (pooled to ``visual_grid`` × ``visual_grid``) gets
spatial and temporal position embeddings. Title and OCR go through a transformers BERT. A fusion transformer
reads ``[CLS; video tokens; text tokens]`` with type embeddings (CLS, video, title, OCR) and key-padding masks, so
either modality may be absent: a video without text is fused alone, which is also how its standalone (VTC)
embedding is made. Pure torch: no file or network access; :mod:`mmpretrain.video.module` trains it and
:func:`mmpretrain.hub.build_model` rebuilds it from a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.models.backbones import create_backbone
from mmpretrain.models.text import text_encoder_from_dict, text_encoder_to_dict

TYPE_CLS, TYPE_VIDEO, TYPE_TITLE, TYPE_OCR = range(4)
TEXT_POOLINGS = ("mean", "cls")


def pool_text(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text from ``(B, L, H)`` token states: the CLS state, or the mean over the tokens the
    attention mask keeps (padding excluded), as sentence-transformers pools the models it trains."""
    if pooling == "cls":
        return states[:, 0]
    if pooling != "mean":
        raise ValueError(f"text pooling {pooling!r} is not one of {TEXT_POOLINGS}")
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


class VideoTextFusion(nn.Module):
    """Frame encoder + text encoder + fusion transformer, with MVM, MTM, VTM and VTC heads.

    Args:
        frame_encoder: a headless timm ViT/Swin (``forward_features`` gives a token grid).
        text_encoder: a transformers encoder whose ``last_hidden_state`` feeds the fusion (BERT family).
        vocab_size: tokenizer size, for the MTM head.
        num_frames: the most frames a clip may have (temporal position embeddings).
        visual_grid: tokens per frame side after pooling; ``None`` keeps the encoder's grid.
        width / depth / num_heads / mlp_ratio / dropout: the fusion transformer.
        proj_dim: the shared VTC space (256 in ALBEF/ALPRO).
        temperature: VTC temperature at init (0.07), learned, clamped to [0.001, 0.5] by the training module.
        mvm_dim: the MVM target width (teacher feature width, or 3·patch² for pixels).
        text_pooling: how the VTC text vector is read from the text encoder (see :func:`pool_text`); ``cls`` for
            checkpoints written before the choice existed.
    """

    def __init__(
        self,
        frame_encoder: nn.Module,
        text_encoder: nn.Module,
        vocab_size: int,
        num_frames: int = 8,
        visual_grid: int | None = 7,
        width: int = 512,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        proj_dim: int = 256,
        temperature: float = 0.07,
        mvm_dim: int | None = None,
        text_pooling: str = "cls",
    ) -> None:
        super().__init__()
        if text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"model.text_pooling={text_pooling!r} is not one of {TEXT_POOLINGS}")
        self.text_pooling = text_pooling
        self.frame_encoder = frame_encoder
        self.text_encoder = text_encoder
        self.num_frames = num_frames
        self.visual_grid = visual_grid
        frame_dim = int(frame_encoder.num_features)
        text_dim = int(text_encoder.config.hidden_size)
        grid_tokens = (visual_grid or self._native_grid()) ** 2
        self.video_proj = nn.Sequential(nn.LayerNorm(frame_dim), nn.Linear(frame_dim, width))
        self.text_proj = nn.Linear(text_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.spatial_pos = nn.Parameter(torch.zeros(1, 1, grid_tokens, width))
        self.temporal_pos = nn.Parameter(torch.zeros(1, num_frames, 1, width))
        self.type_embed = nn.Embedding(4, width)
        layer = nn.TransformerEncoderLayer(
            width, num_heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.vtc_video = nn.Linear(width, proj_dim)
        self.vtc_text = nn.Linear(text_dim, proj_dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.vtm_head = nn.Linear(width, 2)
        self.mtm_head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, vocab_size)
        )
        self.mvm_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, mvm_dim or frame_dim))
        # BERT's initializer range for every learned embedding: nn.Embedding's default N(0, 1) would bury the
        # content of each token under its type embedding and make the fused CLS nearly constant.
        for param in (self.cls_token, self.spatial_pos, self.temporal_pos, self.type_embed.weight):
            nn.init.trunc_normal_(param, std=0.02)

    def _native_grid(self) -> int:
        grid = getattr(getattr(self.frame_encoder, "patch_embed", None), "grid_size", None)
        if grid is None:
            raise ValueError("visual_grid must be set for a frame encoder without patch_embed.grid_size")
        return int(grid[0])

    @property
    def width(self) -> int:
        return self.cls_token.shape[-1]

    def frame_grid(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> ``(B, T, g, g, C)`` frame-encoder tokens."""
        if frames.shape[1] > self.num_frames:
            raise ValueError(f"clip has {frames.shape[1]} frames; the model was built for at most {self.num_frames}")
        return encode_frame_grid(self.frame_encoder, frames, self.visual_grid)

    def video_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        """Frame tokens projected to the fusion width with spatial, temporal and type embeddings: ``(B, T·g², D)``."""
        b, t = grid.shape[:2]
        x = self.video_proj(grid.flatten(2, 3))
        x = x + self.spatial_pos + self.temporal_pos[:, :t] + self.type_embed.weight[TYPE_VIDEO]
        return x.reshape(b, -1, x.shape[-1])

    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        """The text encoder's token states ``(B, L, H_text)``."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
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

    def video_embedding(self, video: torch.Tensor) -> torch.Tensor:
        """The standalone video embedding: CLS of the video-only fusion, projected to the VTC space, L2-normalized."""
        return F.normalize(self.vtc_video(self.fuse(video)[:, 0]), dim=-1)

    def text_embedding(self, text: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The text embedding in the same space: the text encoder's states pooled (``text_pooling``), projected,
        L2-normalized unless ``normalize`` is False."""
        out = self.vtc_text(pool_text(text, attention_mask, self.text_pooling))
        return F.normalize(out, dim=-1) if normalize else out

    def match_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """VTM logits ``(B, 2)`` (no match, match) from the fused CLS."""
        return self.vtm_head(fused[:, 0])


def video_model_config(
    model: VideoTextFusion, frame_encoder: str, frame_kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The architecture of ``model`` as plain JSON: enough for :func:`build_video_model` to rebuild it."""
    layer = model.fusion.layers[0]
    return {
        "frame_encoder": {"name": frame_encoder, "kwargs": dict(frame_kwargs or {})},
        "text_encoder": text_encoder_to_dict(model.text_encoder),
        "fusion": {
            "vocab_size": int(model.mtm_head[-1].out_features),
            "num_frames": int(model.num_frames),
            "visual_grid": model.visual_grid,
            "width": int(model.width),
            "depth": len(model.fusion.layers),
            "num_heads": int(layer.self_attn.num_heads),
            "mlp_ratio": layer.linear1.out_features / model.width,
            "dropout": float(layer.dropout.p),
            "proj_dim": int(model.vtc_video.out_features),
            "mvm_dim": int(model.mvm_head[-1].out_features),
            "text_pooling": model.text_pooling,
        },
    }


def build_video_model(architecture: dict[str, Any]) -> VideoTextFusion:
    """A random-init :class:`VideoTextFusion` from :func:`video_model_config`; the caller loads the weights."""
    frame = architecture["frame_encoder"]
    return VideoTextFusion(
        create_backbone(frame["name"], 0.0, **dict(frame.get("kwargs") or {})),
        text_encoder_from_dict(architecture["text_encoder"]),
        **architecture["fusion"],
    )
