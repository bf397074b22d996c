"""Masks for masked video and masked text modelling, with all randomness drawn from an explicit generator.

Video masks live on the token grid of the video encoder, shape (batch, frames, height, width); `mask.flatten(1)`
matches the (frame, row, column) token order of `mmpretrain.video.train.losses.patchify_pixels`. Every frame has exactly
`round(ratio * height * width)` masked tokens, so batches have a fixed number of visible tokens.
"""

from __future__ import annotations

import math

import torch

_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
_BLOCK_ATTEMPTS = 10
IGNORE_INDEX = -100


def _check_grid(batch: int, frames: int, height: int, width: int, ratio: float) -> int:
    """Validate the mask arguments and return the number of masked tokens per frame."""
    for name, value in (("batch", batch), ("frames", frames), ("height", height), ("width", width)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    return round(ratio * height * width)


def _spread(masks: torch.Tensor, batch: int, frames: int, tube: bool) -> torch.Tensor:
    """Arrange (n, H, W) masks as (batch, frames, H, W): one per clip repeated over frames, or one per frame."""
    if tube:
        return masks.unsqueeze(1).expand(-1, frames, -1, -1).contiguous()
    return masks.view(batch, frames, *masks.shape[1:])


def _place_block(mask: torch.Tensor, budget: int, min_block: int, generator: torch.Generator | None) -> int:
    """Try to mask one random rectangle adding between 1 and `budget` new tokens (BEiT); return how many it added."""
    height, width = mask.shape
    for _ in range(_BLOCK_ATTEMPTS):
        u_area, u_aspect, u_top, u_left = torch.rand(4, generator=generator).tolist()
        low = min(min_block, budget)
        area = low + (budget - low) * u_area
        aspect = math.exp(_LOG_ASPECT[0] + (_LOG_ASPECT[1] - _LOG_ASPECT[0]) * u_aspect)
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (1 <= h <= height and 1 <= w <= width):
            continue
        top, left = int(u_top * (height - h + 1)), int(u_left * (width - w + 1))
        window = mask[top : top + h, left : left + w]
        added = h * w - int(window.sum())
        if 0 < added <= budget:
            window.fill_(True)
            return added
    return 0


def _block_mask_2d(
    height: int, width: int, count: int, min_block: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One (H, W) mask of exactly `count` tokens: rectangles until none fits, then random single tokens."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    masked = 0
    while masked < count:
        added = _place_block(mask, count - masked, min_block, generator)
        if added == 0:
            break
        masked += added
    if masked < count:
        free = (~mask).flatten().nonzero().squeeze(1)
        pick = free[torch.randperm(free.numel(), generator=generator)[: count - masked]]
        mask.view(-1)[pick] = True
    return mask


def blockwise_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    min_block: int = 1,
    tube: bool = False,
) -> torch.Tensor:
    """BEiT block masking: contiguous rectangles are harder to inpaint from neighbours than scattered tokens.

    Each rectangle has an area drawn uniformly from [min_block, tokens still to mask] and a log-uniform aspect ratio
    in [0.3, 1/0.3]; a rectangle is kept only if it adds new tokens without overshooting, so the blocks never exceed
    the target and any shortfall (after 10 failed tries) is topped up with random single tokens.

    Args:
        batch: number of clips.
        frames: frames (or temporal token slices) per clip.
        height: token rows per frame.
        width: token columns per frame.
        ratio: fraction of each frame's tokens to mask, in [0, 1); the count is `round(ratio * height * width)`.
        generator: CPU generator for reproducible masks; None uses torch's global generator.
        min_block: smallest rectangle area in tokens (BEiT uses 16 on a 14x14 grid).
        tube: share one spatial mask across all frames of a clip (VideoMAE tube masking), so a masked patch cannot be
            copied from the same place in a neighbouring frame; False draws every frame independently.

    Returns:
        Bool tensor (batch, frames, height, width) on the CPU, True where a token is masked.
    """
    count = _check_grid(batch, frames, height, width, ratio)
    if min_block < 1:
        raise ValueError(f"min_block must be >= 1, got {min_block}")
    n = batch if tube else batch * frames
    masks = torch.stack([_block_mask_2d(height, width, count, min_block, generator) for _ in range(n)])
    return _spread(masks, batch, frames, tube)


def random_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    tube: bool = False,
) -> torch.Tensor:
    """Uniformly random token masking with an exact count per frame; arguments as in `blockwise_mask`."""
    count = _check_grid(batch, frames, height, width, ratio)
    n = batch if tube else batch * frames
    order = torch.rand(n, height * width, generator=generator).argsort(dim=1)
    masks = torch.zeros(n, height * width, dtype=torch.bool)
    masks.scatter_(1, order[:, :count], True)
    return _spread(masks.view(n, height, width), batch, frames, tube)


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masked-language-model corruption, with at least one target per row so tiny batches always have a loss.

    Each token not flagged in `special_tokens_mask` is chosen with probability `prob`; a row whose draw chose nothing
    but has a maskable token gets one chosen uniformly among them (only when `prob > 0`). Of the chosen tokens, 80%
    become `mask_token_id`, 10% a token drawn uniformly from the whole vocabulary (as BERT does), 10% stay unchanged.

    Args:
        input_ids: (B, L) token ids.
        special_tokens_mask: (B, L) bool, True at [CLS], [SEP], [PAD] and any other token that must never be a target.
        mask_token_id: id of [MASK].
        vocab_size: size of the vocabulary the random replacements are drawn from.
        prob: selection probability, in [0, 1].
        generator: generator on the device of `input_ids`; None uses torch's global generator.

    Returns:
        (corrupted input ids, labels): new tensors; labels hold the original id at chosen positions and -100 elsewhere.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask shape {tuple(special_tokens_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    device = input_ids.device
    maskable = ~special_tokens_mask.bool()
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < prob) & maskable
    if prob > 0:
        empty = ~chosen.any(dim=1) & maskable.any(dim=1)
        scores = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~maskable, -1.0)
        fallback = torch.zeros_like(chosen).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        chosen |= fallback & empty.unsqueeze(1)
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
    corrupted = input_ids.clone()
    corrupted[chosen & (split < 0.8)] = mask_token_id
    to_random = chosen & (split >= 0.8) & (split < 0.9)
    corrupted[to_random] = random_ids[to_random]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return corrupted, labels
