"""How much of a text corpus a tokenizer can read: the share of ``[UNK]`` tokens, and a warning past a threshold.

An English WordPiece vocabulary (the demo's MiniLM) maps most Chinese, Japanese or Korean characters to ``[UNK]``:
every such title then embeds to nearly the same vector, and training, extraction and search go on without a word.
Measuring the unknown share of the texts a run sees turns that into one warning naming the text encoder and what
to use instead.

Usage::

    from mmpretrain.models.coverage import coverage_warning
    message = coverage_warning(tokenizer, ["红色的球向左移动"], where="text queries")
    if message:
        log.warning(message)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MULTILINGUAL_HINT", "UNKNOWN_SHARE_WARNING", "coverage_warning", "unknown_token_share"]

#: past this share of [UNK] tokens the texts are mostly unreadable to the tokenizer
UNKNOWN_SHARE_WARNING = 0.2
#: texts looked at, at most: the share of a large corpus is measured on its first rows
SAMPLE = 2000
MULTILINGUAL_HINT = ("train with a text encoder whose vocabulary covers the language, e.g. "
                     "model.text_encoder=bert-base-multilingual-cased or sentence-transformers/"
                     "paraphrase-multilingual-MiniLM-L12-v2 (Chinese: bert-base-chinese), or offline "
                     "model.tokenizer=train (a vocabulary learned from the training titles and OCR); "
                     "see docs/troubleshooting.md")


def unknown_token_share(tokenizer: Any, texts: Iterable[str | None], sample: int = SAMPLE) -> tuple[float, int]:
    """``(share of [UNK] among the tokens, number of non-empty texts measured)`` of the first ``sample`` texts.

    A tokenizer without an unknown token (byte-level BPE) reads everything: ``(0.0, n)``.
    """
    chosen = []
    for text in texts:
        if text and str(text).strip():
            chosen.append(str(text))
            if len(chosen) >= sample:
                break
    unk = getattr(tokenizer, "unk_token_id", None)
    if not chosen or unk is None:
        return 0.0, len(chosen)
    ids = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    unknown = sum(row.count(unk) for row in ids)
    return (unknown / total if total else 0.0), len(chosen)


def coverage_warning(
    tokenizer: Any,
    texts: Iterable[str | None],
    where: str,
    threshold: float = UNKNOWN_SHARE_WARNING,
    instead: str = MULTILINGUAL_HINT,
) -> str | None:
    """A one-line warning when more than ``threshold`` of the tokens of ``texts`` are ``[UNK]``, else None.

    ``where`` names the texts (``titles and OCR of data.train_manifest=...``); ``instead`` says what to use.
    """
    share, measured = unknown_token_share(tokenizer, texts)
    if share <= threshold:
        return None
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return (f"{share:.0%} of the tokens of {where} ({measured} texts) are unknown to the text encoder's tokenizer "
            f"({name}): those texts embed to nearly the same vector and say almost nothing; {instead}")
