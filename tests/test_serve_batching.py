"""The model worker alone: batches never exceed max_batch, rows go back to the request they came from, a failing
batch fails only its own requests, and the worker goes on."""

from __future__ import annotations

import asyncio

import pytest
import torch

from mmpretrain.serve import ModelWorker


def row_sums(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in forward pass whose rows identify their input: the sum of each image's pixels."""
    if (pixels == 255).all(dim=(1, 2, 3)).any():
        raise RuntimeError("an all-white image broke the model")
    return pixels.flatten(1).float().sum(1, keepdim=True)


def image(value: int) -> torch.Tensor:
    return torch.full((1, 3, 2, 2), value, dtype=torch.uint8)


async def _gather_all(worker: ModelWorker, values: list[int]) -> list:
    return await asyncio.gather(*(worker.embed_images(image(v)) for v in values), return_exceptions=True)


def test_batches_respect_max_batch_and_rows_return_to_their_request() -> None:
    sizes: list[int] = []
    worker = ModelWorker(row_sums, max_batch=4, max_wait=0.2, on_batch=sizes.append)
    worker.start()
    try:
        results = asyncio.run(_gather_all(worker, list(range(10))))
    finally:
        worker.stop()
    assert [float(r[0, 0]) for r in results] == [12.0 * v for v in range(10)]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) == 3


def test_a_failing_batch_fails_its_requests_only() -> None:
    worker = ModelWorker(row_sums, max_batch=8, max_wait=0.05)
    worker.start()
    try:
        failed = asyncio.run(_gather_all(worker, [1, 255, 2]))
        assert all(isinstance(r, RuntimeError) for r in failed)
        later = asyncio.run(_gather_all(worker, [3]))
        assert float(later[0][0, 0]) == 36.0 and worker.alive

        async def call() -> int:
            return await worker.call(lambda: 7)

        assert asyncio.run(call()) == 7
    finally:
        worker.stop()
    assert not worker.alive


def test_stop_finishes_queued_work() -> None:
    worker = ModelWorker(row_sums, max_batch=2, max_wait=0.0)

    async def queue_then_stop() -> list:
        pending = [asyncio.ensure_future(worker.embed_images(image(v))) for v in (1, 2, 3)]
        await asyncio.sleep(0)
        worker.start()
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        return await asyncio.gather(*pending)

    results = asyncio.run(queue_then_stop())
    assert [float(r[0, 0]) for r in results] == pytest.approx([12.0, 24.0, 36.0])
