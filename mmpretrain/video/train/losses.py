"""Video-language pretraining objectives (VTC, VTM, MTM, MVM) as pure functions, testable against plain loops.

Every loss is computed in float32 and, when there is nothing to score (no valid row, no masked token), returns a zero
that still depends on its inputs so that DDP sees the same parameters used on every rank and `backward()` works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mmpretrain.errors import ConfigError
from mmpretrain.video.train.masking import IGNORE_INDEX

_MVM_LOSSES = ("l1", "mse")
_NEGATIVE_MODES = ("hard", "random")


def vtc_similarity(video_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Temperature-scaled cosine logits (rows: videos, columns: texts) for L2-normalised embeddings."""
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return video_emb.float() @ text_emb.float().T / temperature


def _anchor_ce(logits: torch.Tensor, targets: torch.Tensor, column_ok: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy with invalid columns removed from the softmax."""
    return F.cross_entropy(logits.masked_fill(~column_ok, float("-inf")), targets, reduction="none")


def vtc_loss(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    all_video: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
    offset: int = 0,
    valid: torch.Tensor | None = None,
    all_valid: torch.Tensor | None = None,
    same: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (ALBEF/ALPRO): each local pair against every gathered pair, so negatives grow with world size.

    Local rows are scored against all gathered columns; the positive of local row i is column `offset + i`. The loss is
    (CE video->text + CE text->video) / 2, averaged over valid local rows. With equal local batches and every row
    valid, the mean of the ranks' losses equals the single-process loss on the global batch. For gradients to reach
    other ranks' rows, gather with `torch.distributed.nn.all_gather` (or put the local tensors back in their slot).

    Args:
        video_emb: (B, D) L2-normalised local video embeddings.
        text_emb: (B, D) L2-normalised local text embeddings.
        temperature: softmax temperature, a float or a (learnable) scalar tensor.
        all_video: (N, D) video embeddings gathered from all ranks, this rank's rows at `offset:offset + B`;
            default `video_emb`.
        all_text: (N, D) gathered text embeddings, laid out like `all_video`; default `text_emb`.
        offset: index of this rank's first row in the gathered tensors.
        valid: (B,) bool, False for clips without text; such rows are not anchors, and their video and text are not
            negatives for anyone (their text embedding is a placeholder). Default: `all_valid[offset:offset + B]`,
            or all True.
        all_valid: (N,) gathered `valid`; required when `valid` is given together with gathered embeddings.
        same: (B, N) bool, True where a column shows the same thing as the local row (the same tag set or title):
            such a column is no negative of that row (a false negative would push apart two clips of one
            description). The row's own positive is kept whatever ``same`` says.

    Returns:
        Scalar loss; `0 * (video_emb.sum() + text_emb.sum())` (a zero that keeps the graph) when no row is valid.
    """
    if video_emb.ndim != 2 or video_emb.shape != text_emb.shape:
        raise ValueError(
            f"video_emb and text_emb must both be (B, D), got {tuple(video_emb.shape)} and {tuple(text_emb.shape)}"
        )
    batch = video_emb.shape[0]
    gathered = all_video is not None or all_text is not None
    all_video = video_emb if all_video is None else all_video
    all_text = text_emb if all_text is None else all_text
    if all_video.ndim != 2 or all_video.shape != all_text.shape or all_video.shape[1] != video_emb.shape[1]:
        raise ValueError(
            f"all_video and all_text must both be (N, {video_emb.shape[1]}), "
            f"got {tuple(all_video.shape)} and {tuple(all_text.shape)}"
        )
    total = all_video.shape[0]
    if not 0 <= offset <= total - batch:
        raise ValueError(f"offset must be in [0, {total - batch}] for {batch} local rows among {total}, got {offset}")
    if all_valid is None:
        if valid is not None and gathered:
            raise ValueError("all_valid is required when valid is given with gathered all_video/all_text")
        all_valid = torch.ones(total, dtype=torch.bool, device=video_emb.device) if valid is None else valid
    all_valid = all_valid.bool()
    if all_valid.shape != (total,):
        raise ValueError(f"all_valid must have shape ({total},), got {tuple(all_valid.shape)}")
    local_valid = all_valid[offset : offset + batch]
    if valid is not None and not torch.equal(valid.bool(), local_valid):
        raise ValueError("valid must equal all_valid[offset:offset + B]")

    if not bool(local_valid.any()):
        return (video_emb.sum() + text_emb.sum()) * 0.0
    targets = torch.arange(offset, offset + batch, device=video_emb.device)[local_valid]
    column_ok = all_valid.unsqueeze(0)
    if same is not None:
        if same.shape != (batch, total):
            raise ValueError(f"same must have shape ({batch}, {total}), got {tuple(same.shape)}")
        own = torch.zeros_like(same, dtype=torch.bool)
        own[torch.arange(batch), torch.arange(offset, offset + batch)] = True
        column_ok = (column_ok & ~(same.bool() & ~own))[local_valid]
    v2t = _anchor_ce(vtc_similarity(video_emb[local_valid], all_text, temperature), targets, column_ok)
    t2v = _anchor_ce(vtc_similarity(text_emb[local_valid], all_video, temperature), targets, column_ok)
    return (v2t + t2v).mean() / 2


@torch.no_grad()
def sample_hard_negatives(
    sim: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    same: torch.Tensor | None = None,
    mode: str = "hard",
) -> torch.Tensor:
    """One negative column per row for VTM, drawn from softmax(sim[i]) over the other columns (ALBEF hard negatives).

    Hard negatives (similar but wrong pairs) teach the matching head more than random ones. The positive column i,
    invalid columns and columns flagged in `same` (e.g. a duplicate of the same video or text, which would be a
    false negative) are never drawn; those columns are removed before the softmax, so peaked rows cannot underflow.

    Args:
        sim: (B, B) temperature-scaled similarities (e.g. `vtc_similarity`), positives on the diagonal.
        generator: generator on the device of `sim`; None uses torch's global generator.
        valid: (B,) bool; False columns are never drawn. Rows are not filtered: the caller decides which rows to use.
        same: (B, B) bool, True where column j is the same item as row i's positive.
        mode: "hard" (softmax of `sim`) or "random" (uniform over the allowed columns).

    Returns:
        (B,) long column indices, -1 for rows with no allowed column.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be square (B, B), got shape {tuple(sim.shape)}")
    if mode not in _NEGATIVE_MODES:
        raise ValueError(f"mode must be one of {_NEGATIVE_MODES}, got {mode!r}")
    batch = sim.shape[0]
    allowed = ~torch.eye(batch, dtype=torch.bool, device=sim.device)
    if valid is not None:
        if valid.shape != (batch,):
            raise ValueError(f"valid must have shape ({batch},), got {tuple(valid.shape)}")
        allowed &= valid.bool().unsqueeze(0)
    if same is not None:
        if same.shape != sim.shape:
            raise ValueError(f"same must have shape {tuple(sim.shape)}, got {tuple(same.shape)}")
        allowed &= ~same.bool()
    out = torch.full((batch,), -1, dtype=torch.long, device=sim.device)
    rows = allowed.any(dim=1)
    if not bool(rows.any()):
        return out
    scores = sim.float() if mode == "hard" else torch.zeros_like(sim, dtype=torch.float32)
    weights = scores[rows].masked_fill(~allowed[rows], float("-inf")).softmax(dim=1)
    out[rows] = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return out


def vtm_loss(logits: torch.Tensor, labels: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Cross-entropy of the matching head, (N, 2) logits against 0/1 labels; a graph-keeping zero when N == 0.

    ``balanced`` weighs each class present by the inverse of its count, so every class contributes equally: with
    ALBEF's one positive and two negatives per sample, an unweighted head learns a 1/3 match prior and its
    probability stays under 0.5 for true pairs until it is very sure; balanced, 0.5 is the decision threshold.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if not balanced:
        return F.cross_entropy(logits.float(), labels)
    # a class absent from the batch has no sample to weigh, so its clamped count is never used
    weight = 1.0 / torch.bincount(labels, minlength=logits.shape[1]).float().clamp_min(1.0)
    return F.cross_entropy(logits.float(), labels, weight=weight)


def vtm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose argmax matches the label; nan when N == 0 (undefined, not 0%)."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return (logits.detach().argmax(dim=1) == labels).float().mean()


def mtm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-token cross-entropy averaged over positions whose label is not -100; a graph-keeping zero if none."""
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, L, V) and labels (B, L), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    target = labels != IGNORE_INDEX
    if not bool(target.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[target].float(), labels[target])


def mtm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy over positions whose label is not -100; nan when none is masked (undefined, not 0%)."""
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, L, V) and labels (B, L), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    target = labels != IGNORE_INDEX
    return (logits.detach()[target].argmax(dim=-1) == labels[target]).float().mean()


def mvm_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss: str = "l1",
    normalize_target: bool = True,
) -> torch.Tensor:
    """Masked video modelling: regress the target of masked tokens only, since visible ones are trivially copied.

    "l1" on frozen-teacher features is the best MVM target in the empirical MVM study (VIOLETv2); "mse" on per-patch
    normalised pixels is VideoMAE. `normalize_target` layer-normalises each token's target without affine parameters
    (mean 0, biased variance 1, eps 1e-6 inside the square root), as MaskFeat/VideoMAE do; MAE's variant with the
    unbiased variance differs by a factor sqrt(C / (C - 1)). The target is treated as a constant (detached).

    Args:
        pred: (B, N, C) predictions for every token.
        target: (B, N, C) targets (teacher features or `patchify_pixels` output).
        mask: (B, N) bool, True at masked tokens (e.g. `blockwise_mask(...).flatten(1)`).
        loss: "l1" or "mse".
        normalize_target: layer-normalise the target per token first.

    Returns:
        Mean over masked tokens and channels; a graph-keeping zero when nothing is masked.
    """
    if loss not in _MVM_LOSSES:
        raise ValueError(f"loss must be one of {_MVM_LOSSES}, got {loss!r}")
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (B, N, C), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask.any()):
        return pred.sum() * 0.0
    goal = target.detach()[mask].float()
    if normalize_target:
        goal = F.layer_norm(goal, goal.shape[-1:], eps=1e-6)
    guess = pred[mask].float()
    return F.l1_loss(guess, goal) if loss == "l1" else F.mse_loss(guess, goal)


def patchify_pixels(frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cut frames into a grid of patches and flatten each patch: the pixel target of MVM ("pixels" option).

    Tokens are ordered (frame, patch row, patch column), matching `mask.flatten(1)` of the masks in
    `mmpretrain.video.train.masking`; each patch is flattened in (pixel row, pixel column, channel) order, as in MAE.

    Args:
        frames: (B, T, C, H, W) pixels.
        grid: (rows, columns) of patches; must divide (H, W).

    Returns:
        (B, T * rows * columns, patch_h * patch_w * C).
    """
    if frames.ndim != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
    rows, cols = grid
    b, t, c, h, w = frames.shape
    if rows < 1 or cols < 1 or h % rows or w % cols:
        raise ValueError(f"grid {grid} must be positive and divide the frame size ({h}, {w})")
    ph, pw = h // rows, w // cols
    patches = frames.reshape(b, t, c, rows, ph, cols, pw).permute(0, 1, 3, 5, 4, 6, 2)
    return patches.reshape(b, t * rows * cols, ph * pw * c)


def objective_weights(
    weights: Mapping[str, float], progress: float, ramp: float, first: Sequence[str] = ("vtc",)
) -> dict[str, float]:
    """Each objective's weight at ``progress`` (fraction of training done, 0..1): the ``first`` ones at their full
    weight from the start, the others rising linearly from 0 to theirs over the first ``ramp`` of training.

    Why: at init VTM's gradient into the frame encoder is several times VTC's and mostly solved by colour; letting
    the contrastive objective shape the video vector first keeps it from being a minority voice. ``ramp=0`` keeps
    every weight constant.

    Example:
        >>> objective_weights({"vtc": 1.0, "vtm": 1.0, "mtm": 0.2}, progress=0.05, ramp=0.2)
        {'vtc': 1.0, 'vtm': 0.25, 'mtm': 0.05}
    """
    if ramp < 0:
        raise ConfigError(f"model.loss_ramp={ramp} must be >= 0")
    scale = 1.0 if ramp == 0 else min(max(progress / ramp, 0.0), 1.0)
    return {k: float(w) if k in first else float(w) * scale for k, w in weights.items()}
