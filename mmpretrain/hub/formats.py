"""Checkpoint formats: official-MoBY conversion, publishing to the own format, loading and strict building.

Formats:
    ``mmpretrain``: this project's own format, ``model.safetensors`` (the config embedded in its metadata) plus
        ``config.json`` and ``model.safetensors.sha256``, written by :func:`publish`.
    ``moby-official``: the SwinTransformer/Transformer-SSL release files (``{"model": {"encoder.*", ...}}``).
    ``timm``: a plain state dict in timm's current key layout.
    ``lightning``: a training checkpoint of :mod:`mmpretrain.ssl` or :mod:`mmpretrain.video` (only read, never
        registered).

Video models (``config["kind"] == "video"``) carry their whole architecture (frame encoder, text encoder config,
fusion sizes) and their tokenizer in the config, so a single downloaded file rebuilds them offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmpretrain._io import sha256_file, write_text_atomic
from mmpretrain.errors import MissingPathError
from mmpretrain.hub.download import download, is_url, sidecar_path, write_sidecar
from mmpretrain.hub.errors import CheckpointConfigError, CheckpointReadError, HubError
from mmpretrain.hub.infer import infer_architecture, match_registry
from mmpretrain.hub.registry import (
    DEFAULT_PREPROCESSING,
    RegistryEntry,
    check_name,
    default_preprocessing,
    load_registry,
    normalize_architecture,
)
from mmpretrain.hub.safe_load import safe_torch_load
from mmpretrain.hub.schema import check_fits, on_meta, plain_json, validate_config
from mmpretrain.hub.stock import is_stock, load_stock

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_METADATA_KEY = "mmpretrain_config"


@dataclasses.dataclass
class LoadedCheckpoint:
    """Backbone weights in timm layout plus what is needed to rebuild and feed the model.

    ``config`` holds at least ``architecture`` (``{"name", "kwargs"}``) and ``preprocessing``; published files
    also carry ``tokenizer`` and ``training`` (the training hyper-parameters).
    """

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    format: str
    path: Path | None = None


# ----------------------------------------------------------------------------------------------- conversion


def convert_moby_official(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Turn an official MoBY checkpoint into timm backbone weights (load them strict into a ``num_classes=0`` model).

    Keeps the online ``encoder.`` only (drops ``encoder_k``, projectors, predictor and queues), drops the
    ``relative_position_index``/``attn_mask`` buffers and any classifier ``head``, and for Swin moves
    PatchMerging from the end of stage i (original layout) to the start of stage i+1 (timm layout).

    Args:
        state: the loaded file (``{"model": ...}``) or its ``model`` dict.
    """
    model = state.get("model", state)
    if not isinstance(model, Mapping) or not any(k.startswith("encoder.") for k in model):
        raise KeyError("not an official MoBY checkpoint: no 'encoder.' keys under 'model'")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if not key.startswith("encoder."):
            continue
        key = key[len("encoder.") :]
        if key.endswith(("relative_position_index", "attn_mask")) or key.startswith("head."):
            continue
        out[key] = value
    if any(k.startswith("layers.0.downsample.") for k in out):
        out = {re.sub(r"^layers\.(\d+)\.downsample\.", _next_stage, k): v for k, v in out.items()}
    return out


def _next_stage(match: re.Match[str]) -> str:
    return f"layers.{int(match.group(1)) + 1}.downsample."


def _model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture kwargs without the head and weight switches, which the hub always sets itself."""
    return {k: v for k, v in dict(kwargs or {}).items() if k not in ("num_classes", "pretrained")}


def _lightning_config(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and online backbone weights (``backbone.*``) of a Lightning training checkpoint of this project."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    for key in ("backbone", "image_size", "mean", "std", "interpolation"):
        if key not in hparams:
            raise CheckpointConfigError(f"{source}: training checkpoint lacks hyper_parameters[{key!r}]")
    kwargs = hparams.get("backbone_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise CheckpointConfigError(f"{source}: hyper_parameters['backbone_kwargs'] must be a mapping")
    architecture = {"name": hparams["backbone"], "kwargs": _model_kwargs(kwargs)}
    try:
        preprocessing = {
            "image_size": int(hparams["image_size"]),
            "mean": [float(x) for x in hparams["mean"]],
            "std": [float(x) for x in hparams["std"]],
            "interpolation": str(hparams["interpolation"]),
            "crop_pct": float(hparams.get("crop_pct", DEFAULT_PREPROCESSING["crop_pct"])),
        }
    except (TypeError, ValueError) as e:
        raise CheckpointConfigError(f"{source}: hyper_parameters hold unusable preprocessing values: {e}") from e
    config: dict[str, Any] = {"architecture": architecture, "preprocessing": preprocessing}
    if hparams.get("tokenizer") is not None:
        config["tokenizer"] = hparams["tokenizer"]
    config["training"] = plain_json(hparams, source)
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in _tensors(ckpt["state_dict"], source).items() if k.startswith(prefix)}
    if not state:
        raise CheckpointConfigError(f"{source}: training checkpoint has no '{prefix}*' weights in state_dict")
    return config, state


def _tensors(state: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointConfigError(f"{source}: 'state_dict' must be a mapping of tensors, got {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def is_video(config: Mapping[str, Any]) -> bool:
    """True for a video–text model config (built by :mod:`mmpretrain.video`, not a timm backbone)."""
    return config.get("kind") == "video"


def _video_lightning_config(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and fusion-model weights (``model.*``; the frozen MVM teacher is left out) of a video training run."""
    if not isinstance(ckpt["video_model"], Mapping):
        kind = type(ckpt["video_model"]).__name__
        raise CheckpointConfigError(f"{source}: 'video_model' must be a mapping, got {kind}")
    config = dict(ckpt["video_model"])
    config["training"] = plain_json(dict(ckpt.get("hyper_parameters") or {}), source)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in _tensors(ckpt["state_dict"], source).items() if k.startswith(prefix)}
    if not state:
        raise CheckpointConfigError(f"{source}: video training checkpoint has no '{prefix}*' weights in state_dict")
    return config, state


def _write_published(out_dir: Path, state: Mapping[str, torch.Tensor], config: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (config in its metadata), ``config.json`` and the sha256 sidecar atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = out_dir / f"{WEIGHTS_FILE}.tmp"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={_CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)})
    os.replace(tmp, weights)
    digest = sha256_file(weights)
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_sidecar(weights, digest)
    mode = _new_file_mode()
    for written in (weights, out_dir / CONFIG_FILE, sidecar_path(weights)):
        written.chmod(mode)  # temporaries may be private (0600); the published files share the umask's mode
    return digest


def _new_file_mode() -> int:
    """The mode a plain `open(..., "w")` gives a new file under this process's umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def run_name(checkpoint: Path) -> str:
    """A published model's default name: `<experiment>_<run>` for `logs/<experiment>/runs/<run>/checkpoints/last.ckpt`
    (and `..._<stem>` for other checkpoint files, `<run>_<trial>` for sweep trials), else the file's stem."""
    parts = checkpoint.resolve().parts
    if len(parts) < 5 or parts[-2] != "checkpoints":
        return checkpoint.stem
    if parts[-5] == "multiruns" and len(parts) >= 6:
        experiment, run = parts[-6], f"{parts[-4]}_{parts[-3]}"
    elif parts[-4] == "runs":
        experiment, run = parts[-5], parts[-3]
    else:
        return checkpoint.stem
    return "_".join([experiment, run] + ([] if checkpoint.stem == "last" else [checkpoint.stem]))


def _published_entry(out_dir: Path, name: str, url: str | None, digest: str, config: dict[str, Any]) -> dict[str, Any]:
    video = is_video(config)
    entry = RegistryEntry(
        name=name,
        url=url or (out_dir / WEIGHTS_FILE).resolve().as_uri(),
        format="mmpretrain",
        architecture={"name": "video_fusion", "kwargs": {}} if video else config["architecture"],
        sha256=digest,
        preprocessing=config["preprocessing"],
    )
    return entry.to_dict()


def _default_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-+") or "checkpoint"


def publish(
    training_checkpoint: str | Path, out_dir: str | Path, name: str | None = None, url: str | None = None
) -> dict[str, Any]:
    """Turn a Lightning training checkpoint into the own format and return the registry entry to paste.

    Writes ``model.safetensors`` (online backbone only), ``config.json`` (architecture, preprocessing, tokenizer,
    training hyper-parameters) and ``model.safetensors.sha256`` into ``out_dir``.

    Args:
        training_checkpoint: a ``.ckpt`` of :mod:`mmpretrain.ssl` (``state_dict`` with ``backbone.*`` and
            ``hyper_parameters`` with ``backbone``, ``backbone_kwargs``, ``image_size``, ``mean``, ``std``,
            ``interpolation``).
        out_dir: folder to write to.
        name: registry name; defaults to `<experiment>_<run>` of the run folder (see :func:`run_name`).
        url: where ``model.safetensors`` will be hosted; defaults to its local ``file://`` URI.
    """
    path = Path(training_checkpoint)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointConfigError(f"{path}: not a Lightning training checkpoint (no 'state_dict')")
    name = check_name(name, "name") if name is not None else _default_name(run_name(path))
    read = _video_lightning_config if "video_model" in ckpt else _lightning_config
    config, state = read(ckpt, str(path))
    config = validate_config(config, str(path))
    config["name"] = name
    out = Path(out_dir)
    digest = _write_published(out, state, config)
    return _published_entry(out, name, url, digest, config)


def convert_to_published(
    source: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    architecture: str | Mapping[str, Any] | None = None,
    url: str | None = None,
    registry: str | Path | None = None,
) -> dict[str, Any]:
    """Convert any loadable checkpoint (e.g. official MoBY) to the own format, after checking it loads strict."""
    loaded = load_checkpoint(source, architecture=architecture, registry=registry)
    build_backbone(loaded)
    config = {k: v for k, v in loaded.config.items() if k != "name"}
    name = check_name(name, "name") if name is not None else _default_name(Path(str(source)).stem)
    config["name"] = name
    config["converted_from"] = {"source": str(source), "format": loaded.format}
    out = Path(out_dir)
    digest = _write_published(out, loaded.state_dict, config)
    return _published_entry(out, name, url, digest, config)


# ----------------------------------------------------------------------------------------------- loading


def _plain_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A timm-style state dict, possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HubError(f"{source}: not a state dict of tensors")
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    except Exception as e:  # safetensors raises its own SafetensorError (not exported) and OSError
        raise CheckpointReadError(f"{path}: not a readable safetensors file: {e}") from e
    embedded = metadata.get(_CONFIG_METADATA_KEY)
    return (_parse_config(embedded, f"{path} (metadata {_CONFIG_METADATA_KEY!r})") if embedded else None), state


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
                                            progress=progress)  # fmt: skip
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
        state = convert_moby_official(obj)
        config = _config_for(config, state, path, source, entries, raw=obj["model"])
        return _checked(config, state, source, "moby-official", path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "video_model" in obj:
        video_config, state = _video_lightning_config(obj, source)
        return _checked(video_config, state, source, "lightning", path)
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(hparams, Mapping) and "backbone" in hparams:
        lightning_config, state = _lightning_config(obj, source)
        return _checked(lightning_config, state, source, "lightning", path)
    state = _plain_state_dict(obj, source)
    return _checked(_config_for(config, state, path, source, entries), state, source, "timm", path)


def _checked(config: Any, state: dict[str, torch.Tensor], source: str, fmt: str, path: Path) -> LoadedCheckpoint:
    """Every loaded checkpoint passes here: its config is held to the schema before anything is built from it."""
    where = str(path) if str(path) == source else f"{source} ({path})"
    return LoadedCheckpoint(validate_config(config, where), state, source, fmt, path)


def build_backbone(loaded: LoadedCheckpoint, load: bool = True) -> torch.nn.Module:
    """Create the timm model of ``loaded.config`` (``num_classes=0``, no timm download) and load it strict.

    Strict loading is the point: a bare prefix strip with ``strict=False`` would leave e.g. Swin's downsample
    layers random without a word. Classifier weights the headless model lacks are the only keys skipped. The
    weights' shapes are checked against a ``meta``-device build first, so the real model is only allocated once
    they confirm its size; ``load=False`` stops after that check and returns the ``meta`` skeleton.

    Raises:
        HubError: missing or unexpected keys or shape mismatches, naming the keys and the source.
    """
    import timm

    if is_video(loaded.config):
        raise HubError(f"{loaded.source} is a video–text model, not an image backbone: use mmpretrain.load_encoder")
    arch = validate_config(loaded.config, loaded.source)["architecture"]

    def make() -> torch.nn.Module:
        return timm.create_model(arch["name"], pretrained=False, num_classes=0, **_model_kwargs(arch.get("kwargs")))

    skeleton = on_meta(make)
    classifier = getattr(skeleton, "pretrained_cfg", {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(f"{h}.") for h in heads)

    check_fits(skeleton, loaded.state_dict, loaded.source, arch["name"], ignore=is_head)
    if not load:
        return skeleton
    model = make()
    expected = set(model.state_dict())
    state = {k: v for k, v in loaded.state_dict.items() if k in expected or not is_head(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HubError(
            f"{loaded.source}: weights do not fit {arch['name']}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(f"{loaded.source}: weights do not fit {arch['name']}: {e}") from e
    return model.eval()


def build_model(loaded: LoadedCheckpoint, random_init: bool = False) -> torch.nn.Module:
    """The model a loaded checkpoint describes: an image backbone or a video–text fusion model, in eval mode.

    ``random_init=True`` builds the same architecture without loading the weights (seed first): the baseline every
    quality figure is compared with, built by the same code as the trained model so the two differ only in weights.

    Raises:
        HubError: the weights do not fit the architecture in the config, naming the source.
    """
    from mmpretrain.models import build_video_model, create_backbone

    config = validate_config(loaded.config, loaded.source)
    arch = config["architecture"]
    if is_video(config):
        check_fits(on_meta(lambda: build_video_model(arch)), loaded.state_dict, loaded.source, "the video model")
        model = build_video_model(arch)
        if not random_init:
            try:
                model.load_state_dict(loaded.state_dict, strict=True)
            except RuntimeError as err:
                raise HubError(f"{loaded.source}: weights do not fit the video model in its config: {err}") from err
        return model.eval()
    if random_init:
        build_backbone(loaded, load=False)  # the weights confirm the sizes before the real model is built
        return create_backbone(arch["name"], **_model_kwargs(arch.get("kwargs"))).eval()
    return build_backbone(loaded)
