"""Few-shot on CUDA: the same episodes and answers as on the CPU, seeded fine-tuning on the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmpretrain.fewshot import METHODS, FewShotClassifier, evaluate_episodes, finetune_head

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(30), 40)
    features = rng.normal(size=(30, 64))[labels] + 1.5 * rng.normal(size=(len(labels), 64))
    return features.astype(np.float32), labels


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cuda_matches_cpu(method):
    features, labels = clustered()
    cpu = evaluate_episodes(features, labels, n_shot=5, episodes=400, method=method, device="cpu")
    gpu = evaluate_episodes(features, labels, n_shot=5, episodes=400, method=method, device="cuda")
    same = np.mean(cpu.accuracies == gpu.accuracies)
    detail = (f"cpu {cpu.mean:.5f} gpu {gpu.mean:.5f} same episodes {same:.3f} "
              f"matmul precision {torch.get_float32_matmul_precision()} tf32 {torch.backends.cuda.matmul.allow_tf32}")
    assert 30 < cpu.mean < 99.9, detail
    assert same > 0.97, detail                                                # rounding may flip a rare query
    assert abs(cpu.mean - gpu.mean) < 0.1, detail


def test_default_device_is_cuda_and_cuda_inputs_work():
    features, labels = clustered(1)
    on_gpu = torch.from_numpy(features).cuda()
    default = evaluate_episodes(on_gpu, torch.from_numpy(labels).cuda(), episodes=50, method="protonet")
    explicit = evaluate_episodes(features, labels, episodes=50, method="protonet", device="cuda")
    np.testing.assert_array_equal(default.accuracies, explicit.accuracies)
    clf = FewShotClassifier("simpleshot").fit(on_gpu[:400], labels[:400])
    assert (clf.predict(on_gpu[:400]) == labels[:400]).mean() > 0.9


def test_finetune_head_on_cuda_is_seeded():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).cuda()
    generator = torch.Generator().manual_seed(0)
    support, query = torch.rand(6, 3, 16, 16, generator=generator), torch.rand(9, 3, 16, 16, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    first = finetune_head(backbone, support, labels, query, steps=10, unfreeze=("0",), seed=4)
    second = finetune_head(backbone, support, labels, query, steps=10, unfreeze=("0",), seed=4)
    assert first.device.type == "cuda" and first.shape == (9, 3)
    torch.testing.assert_close(first, second)
