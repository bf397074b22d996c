"""Title and OCR into one BERT sequence: ``[CLS] title [SEP] ocr [SEP]``, title segment 0, OCR segment 1.

The industrial title + OCR recipe (REFERENCES, WeChat/QQ Browser challenges): one sequence, OCR cut first when the
sequence is too long, because titles are short and written for the video while OCR is long and noisy.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch

from mmpretrain.errors import ConfigError

CONTENT_KEYS = ("label", "tags", "title")
_NOT_WORD = re.compile(r"[\W_]+")


def join_ocr(ocr: str | Sequence[str] | None) -> str:
    """OCR lines of a frame sequence as one string (a list is joined with spaces)."""
    if ocr is None:
        return ""
    if isinstance(ocr, str):
        return ocr.strip()
    return " ".join(str(part).strip() for part in ocr if str(part).strip())


def manifest_texts(records: Sequence[Any]) -> list[str]:
    """The non-empty titles and joined OCR of video records, in order: the corpus a trained tokenizer learns."""
    texts = (text for r in records for text in ((r.title or "").strip(), join_ocr(r.ocr)))
    return [text for text in texts if text]


def normalize_title(title: str | None) -> str:
    """A title with case, accents' width forms, spaces and punctuation folded: "A red circle!" == "a  red, circle"."""
    folded = unicodedata.normalize("NFKC", title or "").casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


def same_content(
    titles: Sequence[str | None],
    labels: Sequence[str | None] | None = None,
    tag_sets: Sequence[Sequence[str] | None] | None = None,
    keys: Sequence[str] = CONTENT_KEYS,
) -> torch.Tensor:
    """``(B, B)`` True where two samples show the same thing, so neither may be the other's VTM negative: the
    same non-empty ``label``, the same non-empty tag set, or the same non-empty normalized title (``keys`` picks
    which of these count). The diagonal is True.

    Raises:
        ValueError: an unknown key, or labels/tags of another length than titles.
    """
    unknown = sorted(set(keys) - set(CONTENT_KEYS))
    if unknown:
        raise ConfigError(f"model.vtm_exclude has unknown keys {unknown}; known: {CONTENT_KEYS}")
    n = len(titles)
    columns: dict[str, list[str]] = {"title": [normalize_title(t) for t in titles]}
    if labels is not None:
        columns["label"] = [str(x) if x not in (None, "") else "" for x in labels]
    if tag_sets is not None:
        columns["tags"] = ["\x1f".join(sorted(set(tags or ()))) for tags in tag_sets]
    same = torch.eye(n, dtype=torch.bool)
    for key in keys:
        values = columns.get(key)
        if values is None:
            continue
        if len(values) != n:
            raise ValueError(f"{len(titles)} titles but {len(values)} {key} values")
        codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
        code = torch.tensor([codes[v] for v in values], dtype=torch.long)
        present = torch.tensor([bool(v) for v in values], dtype=torch.bool)
        same |= (code[:, None] == code[None, :]) & present[:, None] & present[None, :]
    return same


class TextProcessor:
    """Tokenize (title, OCR) pairs into padded tensors; picklable, so it runs inside DataLoader workers.

    Args:
        tokenizer: a fast transformers tokenizer with CLS, SEP, PAD and MASK tokens.
        max_len: tokens per sequence, special tokens included (``data.max_text_len``).
        max_title_len: cap on title tokens so a long title still leaves room for OCR (``None``: no cap).
    """

    def __init__(self, tokenizer: Any, max_len: int = 64, max_title_len: int | None = None) -> None:
        if max_len < 4:
            raise ConfigError(f"max_text_len={max_len} leaves no room for text after [CLS] and two [SEP]")
        missing = [t for t in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id")
                   if getattr(tokenizer, t, None) is None]
        if missing:
            raise ConfigError(f"tokenizer {type(tokenizer).__name__} lacks {missing}; use a BERT-style tokenizer")
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.max_title_len = max_title_len
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not any(texts):
            return [[] for _ in texts]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def pair_ids(self, title_ids: list[int], ocr_ids: list[int]) -> tuple[list[int], list[int]]:
        """Token ids and segment ids of one pair, OCR truncated first, then the title."""
        cap = self.max_len - 2 if self.max_title_len is None else min(self.max_len - 2, self.max_title_len)
        title_ids = title_ids[:cap]
        ocr_ids = ocr_ids[: max(self.max_len - 3 - len(title_ids), 0)]
        ids = [self.cls_id, *title_ids, self.sep_id]
        types = [0] * len(ids)
        if ocr_ids:
            ids += [*ocr_ids, self.sep_id]
            types += [1] * (len(ocr_ids) + 1)
        return ids, types

    def __call__(
        self, titles: Sequence[str | None], ocr: Sequence[str | Sequence[str] | None]
    ) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``, ``attention_mask``, ``token_type_ids``, ``special_tokens_mask`` and ``has_text``.

        ``has_text`` is False for a video with neither title nor OCR: its text is only ``[CLS] [SEP]`` and the
        model leaves it out of the text objectives instead of learning from an empty string.
        """
        if len(titles) != len(ocr):
            raise ValueError(f"{len(titles)} titles but {len(ocr)} OCR entries")
        titles = [(t or "").strip() for t in titles]
        ocr_texts = [join_ocr(o) for o in ocr]
        pairs = [self.pair_ids(t, o) for t, o in zip(self._ids(titles), self._ids(ocr_texts))]
        length = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), length), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(pairs), length), dtype=torch.long)
        attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
        for row, (ids, types) in enumerate(pairs):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_type_ids[row, : len(ids)] = torch.tensor(types)
            attention_mask[row, : len(ids)] = 1
        special = (input_ids == self.cls_id) | (input_ids == self.sep_id) | (attention_mask == 0)
        has_text = torch.tensor([bool(t or o) for t, o in zip(titles, ocr_texts)])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "special_tokens_mask": special,
            "has_text": has_text,
        }
