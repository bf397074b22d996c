"""Loading any checkpoint the hub reads (registry name, URL, file, published folder, ``timm:<model>``) as a
:class:`~mmpretrain.hub.formats.LoadedCheckpoint`: weights in timm layout plus a config held to the schema."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mmpretrain.errors import MissingPathError
from mmpretrain.hub.download import download, is_url
from mmpretrain.hub.errors import CheckpointConfigError, CheckpointReadError, HubError
from mmpretrain.hub.formats import (
    CONFIG_FILE,
    CONFIG_METADATA_KEY,
    WEIGHTS_FILE,
    LoadedCheckpoint,
    convert_moby_official,
    lightning_config,
    video_lightning_config,
    weight_tensors,
)
from mmpretrain.hub.infer import infer_architecture, match_registry
from mmpretrain.hub.registry import RegistryEntry, default_preprocessing, load_registry, normalize_architecture
from mmpretrain.hub.safe_load import safe_torch_load
from mmpretrain.hub.schema import validate_config
from mmpretrain.hub.stock import is_stock, load_stock

log = logging.getLogger(__name__)


def _plain_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A timm-style state dict, possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise HubError(f"{source}: not a state dict of tensors")
    return weight_tensors(obj, source)


def _read_safetensors(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    except Exception as e:  # safetensors raises its own SafetensorError (not exported) and OSError
        raise CheckpointReadError(f"{path}: not a readable safetensors file: {e}") from e
    embedded = metadata.get(CONFIG_METADATA_KEY)
    return (_parse_config(embedded, f"{path} (metadata {CONFIG_METADATA_KEY!r})") if embedded else None), state


def _parse_config(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CheckpointConfigError(f"{where}: the checkpoint config is not valid JSON: {e}") from e


def _config_for(
    config: dict[str, Any] | None,
    state: Mapping[str, torch.Tensor],
    path: Path,
    source: str,
    entries: Mapping[str, RegistryEntry],
    raw: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config given (architecture= or a registry name), else that of a registry entry matching the file by
    name or sha256, else a Swin / ViT architecture read from the weights' shapes (see :mod:`mmpretrain.hub.infer`)."""
    if config is not None:
        return config
    entry = match_registry(path, entries)
    if entry is not None:
        log.info("%s: the registry's %s (matched by file name or sha256)", source, entry.name)
        return entry.config()
    arch = infer_architecture(state, source, raw)
    log.info("%s: carries no config; architecture read from its weights: %s %s", source, arch["name"], arch["kwargs"])
    return {"architecture": arch, "preprocessing": default_preprocessing(arch, None)}


def load_checkpoint(
    name_or_path_or_url: str | Path,
    *,
    architecture: str | Mapping[str, Any] | None = None,
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    random_init: bool = False,
) -> LoadedCheckpoint:
    """Load backbone weights in timm layout, with config, from a registry name, URL, file or published folder.

    The format is detected from the content: own safetensors (config in metadata or a sibling ``config.json``),
    official MoBY (``{"model": {"encoder.*"}}``), a Lightning training checkpoint of this project, or a plain
    timm state dict. Files without a config take ``architecture``, else the registry entry matching their file name
    or sha256, else the Swin / ViT architecture their weights' shapes show (checked to fit them exactly).

    Args:
        name_or_path_or_url: registry name, ``http(s)://``/``file://`` URL, ``.pth``/``.ckpt``/``.safetensors``
            file, a folder written by :func:`publish`, or ``timm:<model>``: timm's pretrained weights, fetched into
            the Hugging Face cache (see :mod:`mmpretrain.hub.stock`).
        architecture: timm name or ``{"name", "kwargs"}`` for files that carry no config (and the shape a
            ``timm:<model>`` of the same name is adapted to).
        registry: an extra registry file.
        cache_dir: download cache root.
        progress: show a download progress bar.
        random_init: ``timm:<model>`` only: its architecture at a seeded random init, nothing fetched.
    """
    source = str(name_or_path_or_url)
    if is_stock(source):
        config, state, weights = load_stock(source, random_init=random_init, architecture=architecture,
                                            progress=progress)
        return LoadedCheckpoint(config, state, source, "timm", weights)
    entries = load_registry(registry)
    config: dict[str, Any] | None = None
    if architecture is not None:
        arch = normalize_architecture(architecture, source)
        config = {"architecture": arch, "preprocessing": default_preprocessing(arch, None)}
    if source in entries or is_url(source):
        path = download(source, cache_dir=cache_dir, progress=progress, registry=registry)
        if source in entries and config is None:
            config = entries[source].config()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise MissingPathError(
                f"{source!r} is not a registered checkpoint ({', '.join(sorted(entries))}), a URL, or an existing path"
            )
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise MissingPathError(f"{path} is a folder without {WEIGHTS_FILE}; not a published checkpoint")
        path = path / WEIGHTS_FILE
    if path.suffix == ".safetensors":
        embedded, state = _read_safetensors(path)
        sibling = path.with_name(CONFIG_FILE)
        if embedded is None and path.name == WEIGHTS_FILE and sibling.is_file():
            embedded = _parse_config(sibling.read_text(encoding="utf-8"), str(sibling))
        if embedded is not None:
            return _checked(embedded, state, source, "mmpretrain", path)
        return _checked(_config_for(config, state, path, source, entries), state, source, "timm", path)
    obj = safe_torch_load(path)
    if (
        isinstance(obj, Mapping)
        and isinstance(obj.get("model"), Mapping)
        and any(k.startswith("encoder.") for k in obj["model"])
    ):
        state = convert_moby_official(obj, source)
        config = _config_for(config, state, path, source, entries, raw=obj["model"])
        return _checked(config, state, source, "moby-official", path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "video_model" in obj:
        video_config, state = video_lightning_config(obj, source)
        return _checked(video_config, state, source, "lightning", path)
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(hparams, Mapping) and "backbone" in hparams:
        image_config, state = lightning_config(obj, source)
        return _checked(image_config, state, source, "lightning", path)
    state = _plain_state_dict(obj, source)
    return _checked(_config_for(config, state, path, source, entries), state, source, "timm", path)


def _checked(config: Any, state: dict[str, torch.Tensor], source: str, fmt: str, path: Path) -> LoadedCheckpoint:
    """Every loaded checkpoint passes here: its config is held to the schema and its weights are finite tensors
    before anything is built from them."""
    where = str(path) if str(path) == source else f"{source} ({path})"
    return LoadedCheckpoint(validate_config(config, where), weight_tensors(state, where), source, fmt, path)
