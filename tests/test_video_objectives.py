"""Video-language objectives and masks against independent numpy / loop computations."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmpretrain.video.train.losses import (
    mtm_accuracy,
    mtm_loss,
    mvm_loss,
    objective_weights,
    patchify_pixels,
    sample_hard_negatives,
    vtc_loss,
    vtc_similarity,
    vtm_accuracy,
    vtm_loss,
)
from mmpretrain.video.train.masking import blockwise_mask, mask_tokens, random_mask


def _np_ce(logits: np.ndarray, target: int) -> float:
    m = logits.max()
    return -(logits[target] - m - math.log(np.exp(logits - m).sum()))


def _np_vtc_terms(v: np.ndarray, t: np.ndarray, temp: float, valid: np.ndarray) -> list[float]:
    """Per valid row (v->t CE + t->v CE) / 2 over the valid columns of the whole batch, with explicit loops."""
    cols = [j for j in range(len(v)) if valid[j]]
    terms = []
    for i in cols:
        v2t = np.array([v[i] @ t[j] for j in cols]) / temp
        t2v = np.array([t[i] @ v[j] for j in cols]) / temp
        terms.append((_np_ce(v2t, cols.index(i)) + _np_ce(t2v, cols.index(i))) / 2)
    return terms


def _embeddings(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1), F.normalize(torch.randn(b, d, generator=g), dim=1)


def test_vtc_local_matches_numpy() -> None:
    v, t = _embeddings(6, 8, 0)
    want = np.mean(_np_vtc_terms(v.double().numpy(), t.double().numpy(), 0.07, np.ones(6, bool)))
    assert vtc_loss(v, t, 0.07).item() == pytest.approx(want, rel=1e-5)
    assert vtc_loss(v, t, torch.tensor(0.07)).item() == pytest.approx(want, rel=1e-5)
    assert torch.allclose(vtc_similarity(v, t, 0.5), v @ t.T / 0.5)


@pytest.mark.parametrize("with_invalid", [False, True])
def test_vtc_two_ranks_equal_global_batch(with_invalid: bool) -> None:
    v, t = _embeddings(8, 16, 1)
    valid = torch.ones(8, dtype=torch.bool)
    if with_invalid:
        valid[[2, 5, 6]] = False
    terms = _np_vtc_terms(v.double().numpy(), t.double().numpy(), 0.1, valid.numpy())
    global_loss = vtc_loss(v, t, 0.1, valid=valid)
    assert global_loss.item() == pytest.approx(np.mean(terms), rel=1e-5)

    weighted = 0.0
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        local = vtc_loss(
            v[rows], t[rows], 0.1, all_video=v, all_text=t, offset=4 * rank, valid=valid[rows], all_valid=valid
        )
        weighted += local.item() * int(valid[rows].sum())
        local_only = vtc_loss(v[rows], t[rows], 0.1, valid=valid[rows])
        assert local_only.item() != pytest.approx(local.item(), rel=1e-3)  # gathered negatives matter
    assert weighted == pytest.approx(np.sum(terms), rel=1e-5)
    if not with_invalid:  # equal local batches: the ranks' mean is the global loss (what DDP averaging optimises)
        assert weighted / 8 == pytest.approx(global_loss.item(), rel=1e-5)


def test_vtc_invalid_rows_are_neither_anchors_nor_negatives() -> None:
    v, t = _embeddings(5, 8, 2)
    valid = torch.tensor([True, False, True, True, False])
    before = vtc_loss(v, t, 0.07, valid=valid).item()
    v2, t2 = v.clone(), t.clone()
    v2[1], t2[4] = v[0], t[0]  # invalid rows become copies of a valid pair: a hard negative if they were counted
    assert vtc_loss(v2, t2, 0.07, valid=valid).item() == pytest.approx(before, rel=1e-6)
    assert vtc_loss(v2, t2, 0.07).item() != pytest.approx(before, rel=1e-3)


def test_vtc_nothing_valid_is_a_graph_keeping_zero_and_argument_errors() -> None:
    v, t = _embeddings(3, 4, 3)
    v.requires_grad_(True)
    loss = vtc_loss(v, t, 0.07, valid=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(v.grad, torch.zeros_like(v))
    with pytest.raises(ValueError, match="all_valid"):
        vtc_loss(v, t, 0.07, all_video=v, all_text=t, valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="offset"):
        vtc_loss(v, t, 0.07, all_video=v, all_text=t, offset=1)
    with pytest.raises(ValueError, match="temperature"):
        vtc_loss(v, t, 0.0)


def test_gradients_are_finite() -> None:
    v, t = _embeddings(4, 8, 4)
    v.requires_grad_(True)
    temp = torch.tensor(0.07, requires_grad=True)
    vtc_loss(F.normalize(v, dim=1), t, temp).backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(temp.grad) and temp.grad != 0

    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    pred = torch.randn(2, 6, 3, requires_grad=True)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :2] = True
    pair_logits = torch.randn(4, 2, requires_grad=True)
    total = (
        mtm_loss(logits, labels)
        + mvm_loss(pred, torch.randn(2, 6, 3), mask)
        + vtm_loss(pair_logits, labels[0, :4].clamp(0, 1))
    )
    total.backward()
    for grad in (logits.grad, pred.grad, pair_logits.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(pred.grad[:, 2:], torch.zeros_like(pred.grad[:, 2:]))  # unmasked tokens get no gradient


def test_mtm_loss_and_accuracy_match_loops() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 7, generator=g)
    labels = torch.tensor([[-100, 2, -100, 5], [-100, -100, -100, -100], [0, -100, 6, 1]])
    lg = logits.double().numpy()
    picked = [(b, i) for b in range(3) for i in range(4) if labels[b, i] != -100]
    want = np.mean([_np_ce(lg[b, i], int(labels[b, i])) for b, i in picked])
    hits = [int(np.argmax(lg[b, i]) == labels[b, i]) for b, i in picked]
    assert mtm_loss(logits, labels).item() == pytest.approx(want, rel=1e-5)
    assert mtm_accuracy(logits, labels).item() == pytest.approx(sum(hits) / len(hits))
    none = torch.full((3, 4), -100)
    logits.requires_grad_(True)
    zero = mtm_loss(logits, none)
    assert zero.item() == 0.0 and zero.requires_grad
    assert math.isnan(mtm_accuracy(logits, none).item())


def test_vtm_loss_and_accuracy() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.7], [-0.3, 0.2], [1.5, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    lg = logits.double().numpy()
    want = np.mean([_np_ce(lg[i], int(labels[i])) for i in range(4)])
    assert vtm_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert vtm_accuracy(logits, labels).item() == pytest.approx(0.5)
    assert vtm_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        vtm_loss(logits, labels[:3])


def test_balanced_vtm_loss_weighs_each_class_equally() -> None:
    # ALBEF's layout: one positive and two negatives per sample
    logits = torch.tensor([[0.3, 1.1], [-0.4, 0.9], [1.2, -0.5], [0.1, 0.4], [2.0, 0.0], [-1.0, 0.3]])
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    lg = logits.double().numpy()
    ce = np.array([_np_ce(lg[i], int(labels[i])) for i in range(6)])
    want = (ce[labels.numpy() == 1].mean() + ce[labels.numpy() == 0].mean()) / 2
    assert vtm_loss(logits, labels, balanced=True).item() == pytest.approx(want, rel=1e-6)
    assert vtm_loss(logits, labels, balanced=True).item() != pytest.approx(ce.mean(), rel=1e-3)
    # a constant head is optimal at the class prior when unbalanced, at 0.5 when balanced
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([bias], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        vtm_loss(torch.stack([torch.zeros(6), bias.expand(6)], dim=1), labels, balanced=True).backward()
        opt.step()
    assert torch.sigmoid(bias).item() == pytest.approx(0.5, abs=1e-3)
    only_negatives = torch.zeros(3, dtype=torch.long)
    assert vtm_loss(logits[:3], only_negatives, balanced=True).item() == pytest.approx(
        np.mean([_np_ce(lg[i], 0) for i in range(3)]), rel=1e-6)


def _np_layer_norm(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6)


@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("normalize", [True, False])
def test_mvm_loss_matches_numpy_on_masked_tokens_only(kind: str, normalize: bool) -> None:
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(2, 5, 4, generator=g), 3 * torch.randn(2, 5, 4, generator=g) + 1
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    p, tg = pred.double().numpy(), target.double().numpy()
    total, count = 0.0, 0
    for b in range(2):
        for n in range(5):
            if mask[b, n]:
                goal = _np_layer_norm(tg[b, n]) if normalize else tg[b, n]
                diff = p[b, n] - goal
                total += np.abs(diff).sum() if kind == "l1" else (diff**2).sum()
                count += 4
    got = mvm_loss(pred, target, mask, loss=kind, normalize_target=normalize)
    assert got.item() == pytest.approx(total / count, rel=1e-5)
    changed = pred.clone()
    changed[~mask] = 100.0
    assert mvm_loss(changed, target, mask, loss=kind, normalize_target=normalize).item() == pytest.approx(got.item())
    nothing = mvm_loss(pred.requires_grad_(True), target, torch.zeros(2, 5, dtype=torch.bool), loss=kind)
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="loss"):
        mvm_loss(pred, target, mask, loss="huber")


def test_patchify_pixels_order() -> None:
    frames = torch.arange(2 * 3 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 3, 4, 6)
    out = patchify_pixels(frames, (2, 3))
    assert out.shape == (2, 3 * 2 * 3, 2 * 2 * 3)
    for b in range(2):
        for t in range(3):
            for r in range(2):
                for c in range(3):
                    patch = frames[b, t, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]  # (C, ph, pw)
                    want = [patch[ch, y, x].item() for y in range(2) for x in range(2) for ch in range(3)]
                    assert out[b, t * 6 + r * 3 + c].tolist() == want
    with pytest.raises(ValueError, match="grid"):
        patchify_pixels(frames, (3, 3))


def test_hard_negatives_never_pick_positive_duplicates_or_invalid() -> None:
    g = torch.Generator().manual_seed(7)
    sim = 4 * torch.randn(6, 6, generator=g) + 10 * torch.eye(6)  # positives dominate, as after training
    same = torch.zeros(6, 6, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # items 0 and 1 are duplicates
    valid = torch.tensor([True, True, True, False, True, True])
    sim[0, 1] = sim[1, 0] = 50.0  # the duplicate would win nearly every draw if it were allowed
    seen = torch.zeros(6, 6, dtype=torch.long)
    for _ in range(300):
        picks = sample_hard_negatives(sim, generator=g, valid=valid, same=same)
        seen[torch.arange(6), picks] += 1
    assert seen.diagonal().sum() == 0
    assert seen[0, 1] == 0 and seen[1, 0] == 0
    assert seen[:, 3].sum() == 0
    assert (seen.sum(dim=1) == 300).all()


def test_hard_negatives_minus_one_when_impossible() -> None:
    assert sample_hard_negatives(torch.zeros(1, 1)).tolist() == [-1]
    only_first = torch.tensor([True, False, False])
    assert sample_hard_negatives(torch.randn(3, 3), valid=only_first).tolist() == [-1, 0, 0]
    same = torch.ones(2, 2, dtype=torch.bool)
    assert sample_hard_negatives(torch.randn(2, 2), same=same, mode="random").tolist() == [-1, -1]
    with pytest.raises(ValueError, match="mode"):
        sample_hard_negatives(torch.zeros(2, 2), mode="easy")


@pytest.mark.parametrize("mode", ["hard", "random"])
def test_hard_negatives_follow_the_softmax(mode: str) -> None:
    sim = torch.tensor([[9.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(8)
    draws = 3000
    counts = Counter(sample_hard_negatives(sim, generator=g, mode=mode)[0].item() for _ in range(draws))
    logits = np.array([3.0, 1.0, 0.0]) if mode == "hard" else np.zeros(3)
    expected = draws * np.exp(logits) / np.exp(logits).sum()
    observed = np.array([counts[1], counts[2], counts[3]])
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert counts[0] == 0
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("fn", [blockwise_mask, random_mask])
@pytest.mark.parametrize("tube", [False, True])
def test_masks_have_exact_counts(fn, tube: bool) -> None:
    g = torch.Generator().manual_seed(9)
    for height, width in ((7, 7), (14, 14), (4, 6)):
        for ratio in (0.0, 0.1, 0.4, 0.75, 0.9):
            mask = fn(3, 4, height, width, ratio, generator=g, tube=tube)
            assert mask.shape == (3, 4, height, width) and mask.dtype == torch.bool
            assert (mask.sum(dim=(2, 3)) == round(ratio * height * width)).all()


@pytest.mark.parametrize("fn", [blockwise_mask, random_mask])
def test_tube_masks_repeat_over_frames_and_seeds_reproduce(fn) -> None:
    tube = fn(4, 3, 7, 7, 0.5, generator=torch.Generator().manual_seed(1), tube=True)
    assert (tube == tube[:, :1]).all()
    assert not (tube[0] == tube[1]).all()
    frames = fn(4, 3, 7, 7, 0.5, generator=torch.Generator().manual_seed(1))
    assert any(not torch.equal(frames[b, 0], frames[b, f]) for b in range(4) for f in range(1, 3))
    assert torch.equal(frames, fn(4, 3, 7, 7, 0.5, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(frames, fn(4, 3, 7, 7, 0.5, generator=torch.Generator().manual_seed(2)))


def test_mask_argument_errors() -> None:
    for ratio in (1.0, -0.1):
        with pytest.raises(ValueError, match="ratio"):
            blockwise_mask(1, 1, 4, 4, ratio)
    with pytest.raises(ValueError, match="min_block"):
        blockwise_mask(1, 1, 4, 4, 0.5, min_block=0)
    with pytest.raises(ValueError, match="height"):
        random_mask(1, 1, 0, 4, 0.5)


def _components(grid: np.ndarray) -> int:
    """4-connected components of True cells, by flood fill."""
    seen = np.zeros_like(grid, dtype=bool)
    count = 0
    for start in zip(*np.nonzero(grid)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < grid.shape[0] and 0 <= nx < grid.shape[1] and grid[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def test_blockwise_masks_are_made_of_few_contiguous_blocks() -> None:
    g = torch.Generator().manual_seed(10)
    blocks = blockwise_mask(20, 1, 14, 14, 0.4, generator=g).numpy()
    scattered = random_mask(20, 1, 14, 14, 0.4, generator=g).numpy()
    block_parts = np.mean([_components(m[0]) for m in blocks])
    random_parts = np.mean([_components(m[0]) for m in scattered])
    assert block_parts < 0.4 * random_parts


def _token_batch(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] text [SEP] [PAD]...: ids 101/102/0 are special, text ids lie in [1000, 30000)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    special = torch.zeros(rows, length, dtype=torch.bool)
    for r, n in enumerate(lengths.tolist()):
        ids[r, 0], ids[r, n - 1], ids[r, n:] = 101, 102, 0
        special[r, 0] = special[r, n - 1 :] = True
    return ids, special


def test_mask_tokens_rates_and_labels() -> None:
    ids, special = _token_batch(256, 64, 11)
    original = ids.clone()
    corrupted, labels = mask_tokens(
        ids, special, mask_token_id=103, vocab_size=30522, generator=torch.Generator().manual_seed(12)
    )
    assert torch.equal(ids, original)
    chosen = labels != -100
    assert not (chosen & special).any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    assert chosen.any(dim=1).all()

    maskable = int((~special).sum())
    n = int(chosen.sum())
    assert abs(n - 0.15 * maskable) < 5 * math.sqrt(maskable * 0.15 * 0.85)
    masked = int((corrupted[chosen] == 103).sum())
    kept = int((corrupted[chosen] == ids[chosen]).sum())
    replaced = n - masked - kept
    for got, p in ((masked, 0.8), (kept, 0.1), (replaced, 0.1)):
        assert abs(got - p * n) < 5 * math.sqrt(n * p * (1 - p))


def test_mask_tokens_at_least_one_per_row_only_when_prob_positive() -> None:
    ids, special = _token_batch(32, 6, 13)
    special[5] = True  # a row with nothing to mask
    g = torch.Generator().manual_seed(14)
    _, labels = mask_tokens(ids, special, mask_token_id=103, vocab_size=30522, prob=0.01, generator=g)
    chosen = labels != -100
    has_maskable = (~special).any(dim=1)
    assert torch.equal(chosen.any(dim=1), has_maskable)
    assert not (chosen & special).any()
    corrupted, labels = mask_tokens(ids, special, mask_token_id=103, vocab_size=30522, prob=0.0, generator=g)
    assert (labels == -100).all() and torch.equal(corrupted, ids)
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, special, mask_token_id=103, vocab_size=30522, prob=1.5)
    with pytest.raises(ValueError, match="special_tokens_mask"):
        mask_tokens(ids, special[:, :3], mask_token_id=103, vocab_size=30522)


def test_objective_weights_ramp_all_but_vtc_linearly() -> None:
    base = {"vtc": 1.0, "vtm": 2.0, "mtm": 0.2, "mvm": 1.0}
    assert objective_weights(base, 0.0, 0.2) == {"vtc": 1.0, "vtm": 0.0, "mtm": 0.0, "mvm": 0.0}
    half = objective_weights(base, 0.1, 0.2)
    assert half["vtc"] == 1.0 and half["vtm"] == pytest.approx(1.0) and half["mtm"] == pytest.approx(0.1)
    assert objective_weights(base, 0.2, 0.2) == base and objective_weights(base, 0.9, 0.2) == base
    assert objective_weights(base, 0.0, 0.0) == base  # no ramp: constant weights
    assert objective_weights(base, 0.05, 0.2, first=("vtc", "mvm"))["mvm"] == 1.0
    with pytest.raises(ValueError, match=r"model.loss_ramp=-0.1 must be >= 0"):
        objective_weights(base, 0.5, -0.1)


def test_vtc_same_content_pairs_are_not_negatives() -> None:
    """A column flagged as the same thing leaves the row's softmax (an independent loop agrees); the row's own
    positive stays whatever the mask says; with gathered columns the mask is laid out like them."""
    v, t = _embeddings(4, 8, 7)
    same = torch.eye(4, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True
    loss = vtc_loss(v, t, 0.1, same=same)
    want = []
    for i in range(4):
        keep = [j for j in range(4) if not (same[i, j] and j != i)]
        v2t, t2v = (v[i] @ t[keep].T).numpy() / 0.1, (t[i] @ v[keep].T).numpy() / 0.1
        want.append((_np_ce(v2t, keep.index(i)) + _np_ce(t2v, keep.index(i))) / 2)
    assert loss.item() == pytest.approx(np.mean(want), rel=1e-5)
    assert vtc_loss(v, t, 0.1, same=torch.eye(4, dtype=torch.bool)).item() == pytest.approx(vtc_loss(v, t, 0.1).item())
    assert vtc_loss(v, t, 0.1, same=torch.ones(4, 4, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)
    local = vtc_loss(v[2:], t[2:], 0.1, all_video=v, all_text=t, offset=2, same=same[2:])
    assert local.item() == pytest.approx(np.mean(want[2:]), rel=1e-5)
    with pytest.raises(ValueError, match="same must have shape"):
        vtc_loss(v, t, 0.1, same=same[:2])
