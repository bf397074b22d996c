"""The service's state and the work behind each route: encoder, model worker, searcher, classifier, thread pool.

Routes (:mod:`mmpretrain.serve.app`) only parse requests and call these methods, so the work is testable and the
HTTP layer stays thin.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mmpretrain.errors import ConfigError
from mmpretrain.serve.batching import ModelWorker
from mmpretrain.serve.config import ServeConfig
from mmpretrain.serve.inputs import (
    RequestError,
    as_vector,
    check_count,
    check_texts,
    decode_image,
    image_pixels,
    video_clip,
)
from mmpretrain.serve.metrics import Metrics

log = logging.getLogger(__name__)


class Service:
    """Everything a running server holds. Build with :meth:`load`; :meth:`start` / :meth:`stop` the worker.

    Example:
        >>> service = Service.load(ServeConfig(encoder="moby_swin_t_300ep"))  # doctest: +SKIP
    """

    def __init__(self, config: ServeConfig, encoder: Any, searcher: Any = None, classifier: Any = None) -> None:
        self.config = config
        self.encoder = encoder
        self.searcher = searcher
        self.classifier = classifier
        self.metrics = Metrics()
        self.is_video = hasattr(encoder, "encode_videos")
        self.pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="mmpretrain-serve-decode")
        embed = None if self.is_video else encoder.embed
        self.worker = ModelWorker(embed, config.max_batch, config.max_wait_ms / 1000,
                                  on_batch=self.metrics.batch_size.observe)
        self.metrics.queue_depth.set_function(self.worker.pending)
        if searcher is not None:
            self._check_dims()

    @classmethod
    def load(cls, config: ServeConfig) -> Service:
        """Load the encoder, the index and the classifier that ``config`` names (errors name the key)."""
        from mmpretrain import load_encoder
        from mmpretrain.serve.classify import Classifier
        from mmpretrain.serve.search import Searcher, open_searchable

        # the index and the classifier first: a wrong folder is refused without waiting for the encoder's weights
        searcher = None
        if config.index:
            searcher = Searcher(open_searchable(config.index), config.thumbnail_px, config.max_pixels)
        classifier = Classifier(config.classifier) if config.classifier else None
        encoder = load_encoder(config.encoder, device=config.device)
        return cls(config, encoder, searcher, classifier)

    def _check_dims(self) -> None:
        dim = self.searcher.dim
        if self.encoder.embed_dim != dim:
            raise ConfigError(f"index={self.config.index} holds {dim}-d vectors but encoder={self.config.encoder} "
                              f"gives {self.encoder.embed_dim}-d embeddings; serve the encoder the store was made with")
        store = self.searcher.describe()["store_encoder"]
        if store is not None and store != self.encoder.name:
            log.warning("index store was made by encoder %r, the service runs %r", store, self.encoder.name)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Finish queued model work, then release the threads."""
        self.worker.stop(self.config.shutdown_timeout_s)
        self.pool.shutdown(wait=True)

    def describe(self) -> dict[str, Any]:
        """The ``/health`` answer."""
        return {
            "status": "ok" if self.worker.alive else "worker_down",
            "encoder": self.encoder.name, "kind": "video" if self.is_video else "image",
            "dim": int(self.encoder.embed_dim), "device": str(self.encoder.device),
            "index": self.searcher.describe() if self.searcher is not None else None,
            "classifier": self.classifier.describe() if self.classifier is not None else None,
            "max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms,
        }

    # ------------------------------------------------------------------------------------------------ work

    async def _in_pool(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _model(self, awaitable: Any) -> Any:
        """Wait for model work, at most ``request_timeout_s``."""
        try:
            return await asyncio.wait_for(awaitable, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(503, "model_timeout", f"the model did not answer within "
                                                     f"{self.config.request_timeout_s:g} s (request_timeout_s); "
                                                     "retry later") from None

    async def embed_images(self, blobs: list[bytes], what: str = "images") -> np.ndarray:
        """Rows of encoded images, equal to ``encode_images`` on the same files (decoding in the pool, the forward
        pass batched with other requests' images)."""
        if self.is_video:
            raise RequestError(400, "no_image_encoder", f"{what}: encoder {self.encoder.name!r} is a video-text "
                                                        "model; send a video or texts")
        check_count(blobs, what, self.config.max_items)
        cap = self.config.max_pixels
        pixels = await asyncio.gather(*(self._in_pool(image_pixels, self.encoder, data, f"{what}[{i}]", cap)
                                        for i, data in enumerate(blobs)))
        rows = await self._model(self.worker.embed_images(torch.stack(pixels)))
        return rows.numpy()

    async def embed_texts(self, texts: Any) -> np.ndarray:
        """Rows equal to ``encode_texts`` (a video-text encoder's VTC space)."""
        check_count(texts if isinstance(texts, list) else [texts], "texts", self.config.max_items)
        texts = await self._in_pool(check_texts, self.encoder, texts)
        return await self._model(self.worker.call(lambda: self.encoder.encode_texts(texts)))

    async def embed_video(self, data: bytes, title: str | None = None) -> np.ndarray:
        """One row equal to ``encode_videos([file], titles=[title])``."""
        if not self.is_video:
            raise RequestError(400, "no_video_encoder", f"video: encoder {self.encoder.name!r} embeds images only")
        clip = await self._in_pool(video_clip, self.encoder, data, "video")
        encoder = self.encoder

        def run() -> np.ndarray:
            text = encoder.processor([title], [None])
            return encoder.embed(clip[None], text, True).cpu().numpy()

        return await self._model(self.worker.call(run))

    async def search(self, k: Any, *, image: bytes | None = None, text: str | None = None,
                     vector: Any = None) -> list[dict[str, Any]]:
        """Hits of one query: an image, a text (video-text encoders) or a vector."""
        if self.searcher is None:
            raise RequestError(400, "no_index", "this service has no index: start mmpretrain-serve with index=<dir>")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.config.max_k:
            raise RequestError(400, "bad_k", f"k={k!r} must be an integer in [1, {self.config.max_k}] (max_k)")
        given = [name for name, value in (("image", image), ("text", text), ("vector", vector)) if value is not None]
        if len(given) != 1:
            raise RequestError(400, "bad_query", f"give exactly one of image, text or vector, got {given or 'none'}")
        if image is not None:
            query = await self.embed_images([image], "image")
        elif text is not None:
            query = await self.embed_texts([text])
        else:
            query = as_vector(vector, self.searcher.dim)
        return (await self._in_pool(self.searcher.search, query, k))[0]

    async def classify(self, blobs: list[bytes], top_k: int = 5) -> list[dict[str, Any]]:
        """Labels with probabilities (or "unknown") for each image, from the classifier folder."""
        if self.classifier is None:
            raise RequestError(400, "no_classifier", "this service has no classifier: start mmpretrain-serve with "
                                                     "classifier=<dir>")
        check_count(blobs, "images", self.config.max_items)
        cap = self.config.max_pixels
        images = await asyncio.gather(*(self._in_pool(decode_image, data, f"images[{i}]", cap)
                                        for i, data in enumerate(blobs)))
        return await self._model(self.worker.call(lambda: self.classifier.classify(images, top_k)))

    async def thumbnail(self, item_id: str) -> bytes:
        if self.searcher is None:
            raise RequestError(400, "no_index", "this service has no index, so no thumbnails")
        return await self._in_pool(self.searcher.thumbnail, item_id)
