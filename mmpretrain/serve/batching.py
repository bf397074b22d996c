"""The model worker: one thread owns the model; concurrent requests' images are batched into shared forward passes.

Requests put work on a queue and await a future. The worker takes the first waiting image job, then keeps taking
image jobs until it holds ``max_batch`` images or ``max_wait`` has passed since the first, and runs them as one
batch. Other work (texts, videos, searches) runs alone, in arrival order. Inputs arrive already decoded and resized
(see :mod:`mmpretrain.serve.inputs`), so the worker does nothing but compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class _ImageJob:
    pixels: torch.Tensor  # (n, 3, H, W) uint8
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _CallJob:
    fn: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()  # the queue's end mark


class ModelWorker:
    """A thread that runs ``embed(pixels)`` over dynamically batched image jobs, and other calls one at a time.

    Args:
        embed: uint8 ``(n, 3, H, W)`` batch -> ``(n, dim)`` float tensor (the encoder's ``embed``).
        max_batch: most images in one forward pass.
        max_wait: seconds to wait after the first image for others.
        on_batch: called with each image batch's size (metrics).

    Example:
        >>> worker = ModelWorker(encoder.embed, max_batch=32, max_wait=0.005)  # doctest: +SKIP
        >>> worker.start(); rows = await worker.embed_images(pixels); worker.stop()  # doctest: +SKIP
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor] | None, max_batch: int, max_wait: float,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mmpretrain-serve-model", daemon=True)
        self._held: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def pending(self) -> int:
        """Jobs waiting (a gauge for ``/metrics``)."""
        return self._queue.qsize()

    async def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rows for a ``(n, 3, H, W)`` uint8 batch, computed with whatever other requests' images arrive with it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_ImageJob(pixels, future, loop))
        return await future

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread (so nothing else uses the model meanwhile) and return its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_CallJob(fn, future, loop))
        return await future

    # ------------------------------------------------------------------------------------------------ the thread

    def _next(self, timeout: float | None) -> Any:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                job = self._next(None)
                if job is _STOP:
                    return
                if isinstance(job, _CallJob):
                    _settle([job], lambda call=job: [call.fn()])
                    continue
                batch = self._gather(job)
                _settle(batch, lambda b=batch: self._embed_batch(b))

    def _gather(self, first: _ImageJob) -> list[_ImageJob]:
        """``first`` plus the image jobs arriving within ``max_wait``, up to ``max_batch`` images."""
        batch, count = [first], len(first.pixels)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch:
            try:
                job = self._next(deadline - time.perf_counter())
            except queue.Empty:
                break
            if not isinstance(job, _ImageJob) or count + len(job.pixels) > self.max_batch:
                self._held = job  # a call, the end mark, or a job that would overflow: it goes next
                break
            batch.append(job)
            count += len(job.pixels)
        return batch

    def _embed_batch(self, batch: list[_ImageJob]) -> list[torch.Tensor]:
        pixels = torch.cat([job.pixels for job in batch])
        if self._on_batch is not None:
            self._on_batch(len(pixels))
        rows = self._embed(pixels).cpu()
        out, start = [], 0
        for job in batch:
            out.append(rows[start:start + len(job.pixels)])
            start += len(job.pixels)
        return out


def _settle(jobs: list[Any], compute: Callable[[], list[Any]]) -> None:
    """Resolve each job's future with its result, or all of them with the exception (the worker lives on)."""
    try:
        results, error = compute(), None
    except Exception as err:
        log.exception("model worker: a batch of %d jobs failed", len(jobs))
        results, error = [None] * len(jobs), err
    for job, result in zip(jobs, results):
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits for this result any more
            job.loop.call_soon_threadsafe(_set, job.future, result, error)


def _set(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request timed out or its client left
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
