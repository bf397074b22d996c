"""Video–text retrieval evaluation: VTC embeddings through a FAISS index, then VTM re-ranking of the shortlist.

ALBEF/ALPRO retrieval: embed every video and text once (standalone VTC embeddings), shortlist by similarity, and
re-score only the shortlist with the cross-modal VTM head, so the O(N²) cross-encoder of VIOLET is needed for
k·N pairs instead of N². Ranks come from the index's shortlist (exact up to its length; see
:func:`~mmpretrain.video.eval.metrics.ranks_from_topk`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmpretrain.errors import DataError
from mmpretrain.retrieval import build_index
from mmpretrain.video.eval.metrics import ranks_from_topk, rerank_topk, retrieval_metrics_from_ranks, tag_agreement
from mmpretrain.video.io.manifest import VideoRecord
from mmpretrain.video.train.text import join_ocr, same_content

if TYPE_CHECKING:
    from mmpretrain.encoders import VideoEncoder

log = logging.getLogger(__name__)


def _shortlist(gallery: np.ndarray, queries: np.ndarray, k: int, index_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows (as integers) and scores of each query through a FAISS index over the gallery."""
    index = build_index(gallery, ids=np.arange(len(gallery)), metric="ip", index_key=index_key, target_recall=None)
    scores, ids = index.search(queries, k=k)
    return ids.astype(np.int64), scores


def _negative_texts(
    sim: np.ndarray, texts: Sequence[str], same_thing: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """For each video, the most similar text that is not its own, nor an identical copy, nor one flagged in
    ``same_thing`` (a paraphrase: same label, tags or normalized title), and a random such text."""
    codes = np.unique(np.array(list(texts)), return_inverse=True)[1]
    same = codes[:, None] == codes[None, :]
    if same_thing is not None:
        same = same | same_thing
    hardest = np.where(same, -np.inf, sim).argmax(axis=1)
    rng = np.random.default_rng(seed)
    random = np.array([rng.choice(np.flatnonzero(~row)) if (~row).any() else i for i, row in enumerate(same)])
    return hardest, random


def video_text_retrieval(
    encoder: VideoEncoder,
    records: Sequence[VideoRecord],
    *,
    ks: Sequence[int] = (1, 5, 10),
    shortlist: int = 100,
    rerank_k: int = 10,
    index_key: str = "Flat",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Text→video and video→text R@k, median and mean rank, VTM accuracy, and text→video after VTM re-ranking.

    Args:
        encoder: a :class:`VideoEncoder` (its VTC embeddings are used whatever its ``embedding`` setting).
        records: the held-out videos; a title is a query (without the record's OCR, as a user types it); videos
            without a title are galleries only.
        ks: recall cut-offs. shortlist: how many hits the index returns per query (ranks are exact up to it).
        rerank_k: how many of the text→video shortlist the VTM head re-scores (0: no re-ranking).
        index_key: the FAISS index over the gallery (``Flat``: exact; any factory string or ``auto``).
        batch_size: videos per forward pass.

    Returns:
        ``{"t2v": {...}, "v2t": {...}, "t2v_rerank": {...}, "vtm_accuracy": float, "vtm_accuracy_hard": float,
        "queries": n, "videos": n}``, and ``t2v_tags`` when records carry tags: per tag, the share of queries whose
        top-1 video shares it with the query's own (:func:`~mmpretrain.video.eval.metrics.tag_agreement`).
        VTM accuracy is balanced over each video's own text and one other text (a
        random one, seeded; ``_hard``: the most VTC-similar one), a match when the VTM probability exceeds 0.5; the
        other text never shows the same thing (same label, tag set or normalized title, as in training).
    """
    texts = [r.title or "" for r in records]
    ocr = [join_ocr(list(r.ocr)) for r in records]
    queries = np.array([bool(t.strip()) for t in texts])
    if queries.sum() == 0:
        raise DataError("no record has a title: nothing to query with")
    mode, encoder.embedding = encoder.embedding, "vtc"
    try:
        videos = encoder.encode_videos([r.video for r in records], batch_size=batch_size)
    finally:
        encoder.embedding = mode
    text_emb = encoder.encode_texts(texts)[queries]  # a query is what a user types: no OCR
    rows = np.flatnonzero(queries)
    k = min(len(records), max(shortlist, max(ks), rerank_k))
    t2v_ids, t2v_scores = _shortlist(videos, text_emb, k, index_key)
    v2t_ids, _ = _shortlist(text_emb, videos[rows], min(len(rows), k), index_key)
    result: dict[str, Any] = {
        "videos": len(records),
        "queries": len(rows),
        "t2v": retrieval_metrics_from_ranks(ranks_from_topk(t2v_ids, rows), ks),
        "v2t": retrieval_metrics_from_ranks(ranks_from_topk(v2t_ids, np.arange(len(rows))), ks),
    }
    if any(r.tags for r in records):
        result["t2v_tags"] = tag_agreement([records[i].tags for i in rows], [records[i].tags for i in t2v_ids[:, 0]])
    clips = _ClipCache(encoder, records)
    sim = videos[rows] @ text_emb.T
    same_thing = same_content([texts[i] for i in rows], [records[i].label for i in rows],
                              [records[i].tags for i in rows]).numpy()
    hardest, random = _negative_texts(sim, [f"{texts[i]}\n{ocr[i]}" for i in rows], same_thing)
    pos = _vtm(encoder, clips, rows, [texts[i] for i in rows], [ocr[i] for i in rows])
    for key, negatives in (("vtm_accuracy", random), ("vtm_accuracy_hard", hardest)):
        neg = _vtm(encoder, clips, rows, [texts[rows[j]] for j in negatives], [ocr[rows[j]] for j in negatives])
        result[key] = float(100 * (np.mean(pos > 0.5) + np.mean(neg <= 0.5)) / 2)
    if rerank_k > 0:
        head = min(rerank_k, k)
        vtm = np.stack([
            _vtm(encoder, clips, t2v_ids[q, :head], [texts[row]] * head, [""] * head)
            for q, row in enumerate(rows)
        ])
        reranked, _ = rerank_topk(t2v_ids[:, :head], t2v_scores[:, :head], vtm)
        ranks = ranks_from_topk(np.concatenate([reranked, t2v_ids[:, head:]], axis=1), rows)
        result["t2v_rerank"] = retrieval_metrics_from_ranks(ranks, ks)
        result["rerank_k"] = head
    return result


class _ClipCache:
    """Decoded clips by row, decoded once: re-ranking looks at the same gallery videos many times."""

    def __init__(self, encoder: VideoEncoder, records: Sequence[VideoRecord]) -> None:
        self.encoder, self.records = encoder, records
        self.clips: dict[int, torch.Tensor] = {}

    def __getitem__(self, row: int) -> torch.Tensor:
        if row not in self.clips:
            self.clips[row] = self.encoder.read_clip(self.records[row].video, row)
        return self.clips[row]


def _vtm(encoder: VideoEncoder, clips: _ClipCache, rows: Sequence[int], texts: list[str], ocr: list[str],
         batch_size: int = 32) -> np.ndarray:
    """VTM match probabilities of (video row i, text i) pairs, batched."""
    out = []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        out.append(encoder.match_scores(torch.stack([clips[int(r)] for r in part]), texts[start:start + batch_size],
                                        ocr[start:start + batch_size]))
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)
