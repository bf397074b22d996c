"""MoBY's pure parts against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmpretrain.ssl import (
    KeyQueue,
    cosine_momentum,
    infonce_with_queue,
    knn_accuracy,
    moby_loss,
    update_momentum,
)
from mmpretrain.training import param_groups_weight_decay, scaled_lr, warmup_cosine_lr


def _np_infonce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, t: float) -> float:
    total = 0.0
    for i in range(q.shape[0]):
        logits = np.concatenate([[q[i] @ k[i]], q[i] @ queue]) / t
        m = logits.max()
        total += -(logits[0] - m - math.log(np.exp(logits - m).sum()))
    return total / q.shape[0]


def test_moby_loss_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    b, d, k = 6, 8, 16
    p1, p2, k1, k2 = (F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(4))
    q1, q2 = (F.normalize(torch.randn(d, k, generator=g), dim=0) for _ in range(2))
    got = moby_loss(p1, p2, k1, k2, q1, q2, temperature=0.2).item()
    a = [t.numpy().astype(np.float64) for t in (p1, p2, k1, k2, q1, q2)]
    want = _np_infonce(a[0], a[3], a[5], 0.2) + _np_infonce(a[1], a[2], a[4], 0.2)
    assert got == pytest.approx(want, rel=1e-5)
    # the sum of two terms, each scored against the OTHER view's keys and queue
    assert got == pytest.approx(
        infonce_with_queue(p1, k2, q2, 0.2).item() + infonce_with_queue(p2, k1, q1, 0.2).item(), rel=1e-6
    )
    assert got != pytest.approx(
        infonce_with_queue(p1, k1, q1, 0.2).item() + infonce_with_queue(p2, k2, q2, 0.2).item(), rel=1e-3
    )


def test_queue_enqueue_and_wraparound() -> None:
    queue = KeyQueue(dim=3, length=5)
    assert torch.allclose(queue.keys.norm(dim=0), torch.ones(5))
    a = torch.arange(12, dtype=torch.float32).view(4, 3)
    queue.enqueue(a)
    assert queue.ptr.item() == 4
    assert torch.equal(queue.keys[:, :4], a.T)
    b = torch.full((3, 3), -1.0)
    queue.enqueue(b)  # writes slot 4, then wraps to 0 and 1
    assert queue.ptr.item() == 2
    assert torch.equal(queue.keys[:, 4], b[0])
    assert torch.equal(queue.keys[:, :2], b[1:].T)
    assert torch.equal(queue.keys[:, 2:4], a[2:].T)
    state = queue.state_dict()
    assert set(state) == {"keys", "ptr"}


def test_queue_rejects_global_batch_that_does_not_divide() -> None:
    queue = KeyQueue(dim=4, length=4096)
    queue.check_batch(64)
    with pytest.raises(ValueError, match=r"queue_len=4096.*global batch size 48"):
        queue.check_batch(48)


def test_momentum_schedule_values() -> None:
    total = 1000
    assert cosine_momentum(0, total) == pytest.approx(0.99)
    assert cosine_momentum(500, total) == pytest.approx(0.995)
    assert cosine_momentum(1000, total) == pytest.approx(1.0)
    assert cosine_momentum(250, total) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    values = [cosine_momentum(k, total) for k in range(0, total + 1, 50)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_lr_schedule_warmup_and_cosine() -> None:
    base, start, end = scaled_lr(1e-3, 1024), scaled_lr(5e-7, 1024), scaled_lr(5e-6, 1024)
    assert base == pytest.approx(2e-3)
    # applied one step late, as the official scheduler is stepped after each optimizer step
    assert warmup_cosine_lr(0, 100, 10, base, start, end) == warmup_cosine_lr(1, 100, 10, base, start, end) == start
    assert warmup_cosine_lr(6, 100, 10, base, start, end) == pytest.approx((start + base) / 2)
    # the cosine runs over all 100 steps, warmup included: at the end of the warmup it is already below base
    after_warmup = end + (base - end) * (1 + math.cos(0.1 * math.pi)) / 2
    assert warmup_cosine_lr(11, 100, 10, base, start, end) == pytest.approx(after_warmup)
    assert warmup_cosine_lr(51, 100, 10, base, start, end) == pytest.approx((base + end) / 2)
    assert warmup_cosine_lr(101, 100, 10, base, start, end) == pytest.approx(end)
    assert warmup_cosine_lr(5, 100, 0, base, start, end) < base == warmup_cosine_lr(1, 100, 0, base, start, end)


def test_lr_schedule_matches_timm_cosine_scheduler_stepped_after_each_iteration() -> None:
    """The official loop: `optimizer.step()` with the current lr, then `lr_scheduler.step_update(idx)`."""
    from timm.scheduler import CosineLRScheduler

    total, warmup, base, start, end = 60, 7, 1e-3, 5e-7, 5e-6
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=end, warmup_lr_init=start, warmup_t=warmup,
                                  cycle_limit=1, t_in_epochs=False)
    official = []
    for idx in range(total):
        official.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(idx)
    ours = [warmup_cosine_lr(k, total, warmup, base, start, end) for k in range(total)]
    assert ours == pytest.approx(official, rel=1e-12)


def test_update_momentum_is_ema_of_parameters() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    update_momentum(online, target, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)


def test_no_decay_groups_swin() -> None:
    import timm

    model = timm.create_model(
        "swin_tiny_patch4_window7_224", num_classes=0, img_size=32, embed_dim=24, depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1), window_size=2,
    )
    decay, no_decay = param_groups_weight_decay([model], 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert any("relative_position_bias_table" in n for n in no_decay_names)
    assert not any("relative_position_bias_table" in n for n in decay_names)
    assert all(n.endswith(".bias") or "norm" in n or "relative_position" in n for n in no_decay_names)
    assert all(model.get_parameter(n).ndim >= 2 for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == sum(1 for _ in model.parameters())


def test_knn_accuracy_against_loop() -> None:
    g = torch.Generator().manual_seed(1)
    train = torch.randn(40, 5, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    test = torch.randn(10, 5, generator=g)
    test_labels = torch.randint(0, 3, (10,), generator=g)
    got = knn_accuracy(train, labels, test, test_labels, k=7, temperature=0.1)
    tn, qn = F.normalize(train, dim=1).numpy(), F.normalize(test, dim=1).numpy()
    correct = 0
    for i in range(10):
        sim = tn @ qn[i]
        top = np.argsort(-sim)[:7]
        votes = np.zeros(3)
        for j in top:
            votes[labels[j]] += np.exp(sim[j] / 0.1)
        correct += int(votes.argmax() == test_labels[i])
    assert got["top1"] == pytest.approx(100 * correct / 10)
    assert got["top5"] == pytest.approx(100.0)
