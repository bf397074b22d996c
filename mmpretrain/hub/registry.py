"""The checkpoint registry: :class:`RegistryEntry`, the built-in entries, user registry files, name checks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpretrain.errors import ConfigError, MissingPathError
from mmpretrain.models.backbones import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("mmpretrain", "moby-official", "timm")
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "image_size": 224,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
URL_SCHEMES = ("http", "https", "file")
_MOBY_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.3"


@dataclasses.dataclass
class RegistryEntry:
    """A named checkpoint: where to fetch it, how to check it and what model and preprocessing it needs.

    ``architecture`` is ``{"name": timm model name, "kwargs": {...}}``, the same shape as in ``config.json``, so
    entries printed by :func:`publish` paste into a registry file unchanged.
    """

    name: str
    url: str
    format: str
    architecture: dict[str, Any]
    sha256: str | None = None
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "registry name")
        if self.format not in FORMATS:
            raise ConfigError(f"checkpoint {self.name!r}: format {self.format!r} is not one of {FORMATS}")
        if urllib.parse.urlparse(self.url).scheme not in URL_SCHEMES:
            raise ConfigError(f"checkpoint {self.name!r}: url {self.url!r} must be http(s):// or file://")
        self.architecture = normalize_architecture(self.architecture, f"checkpoint {self.name!r}")
        self.sha256 = normalize_sha256(self.sha256, f"checkpoint {self.name!r}")

    def config(self) -> dict[str, Any]:
        """The loader config this entry implies for files that carry none (official and timm formats)."""
        return {
            "architecture": self.architecture,
            "preprocessing": default_preprocessing(self.architecture, self.preprocessing),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the entry."""
        return dataclasses.asdict(self)


def check_name(name: str, what: str) -> str:
    """Refuse names that could escape the cache folder once used as a path component."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ConfigError(
            f"{what} {name!r} is not a safe file name: use letters, digits and '._+-' only, "
            "not starting with '.' (no path separators, '..' or absolute paths)"
        )
    return name


def normalize_sha256(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ConfigError(f"{what}: sha256 {value!r} is not 64 hex digits")
    return value


def normalize_architecture(arch: str | Mapping[str, Any], what: str) -> dict[str, Any]:
    """Accept ``"timm_name"`` or ``{"name": ..., "kwargs": {...}}`` and return the dict form."""
    if isinstance(arch, str):
        return {"name": arch, "kwargs": {}}
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ConfigError(f"{what}: architecture must be a timm model name or {{'name': ..., 'kwargs': {{...}}}}")
    unknown = set(arch) - {"name", "kwargs"}
    if unknown:
        raise ConfigError(f"{what}: unknown architecture keys {sorted(unknown)}")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{what}: architecture kwargs must be a mapping")
    return {"name": arch["name"], "kwargs": dict(kwargs)}


def default_preprocessing(arch: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill preprocessing defaults; a model built for another ``img_size`` gets that as the default size."""
    out = dict(DEFAULT_PREPROCESSING)
    img_size = arch.get("kwargs", {}).get("img_size")
    if isinstance(img_size, int):
        out["image_size"] = img_size
    out.update(given or {})
    return out


_MOBY_PREPROCESSING = {"image_size": 224, "interpolation": "bicubic", "crop_pct": 0.875}

_BUILTINS = (
    RegistryEntry(
        name="moby_swin_t_300ep",
        url=f"{_MOBY_RELEASE}/moby_swin_t_300ep_pretrained.pth",
        format="moby-official",
        architecture={"name": "swin_tiny_patch4_window7_224", "kwargs": {}},
        preprocessing=dict(_MOBY_PREPROCESSING),
        description="MoBY Swin-T, 300 epochs on ImageNet-1K (official release; 75.3 linear top-1)",
    ),
    RegistryEntry(
        name="moby_deit_small_300ep",
        url=f"{_MOBY_RELEASE}/moby_deit_small_300ep_pretrained.pth",
        format="moby-official",
        architecture={"name": "deit_small_patch16_224", "kwargs": {}},
        preprocessing=dict(_MOBY_PREPROCESSING),
        description="MoBY DeiT-S, 300 epochs on ImageNet-1K (official release; 72.8 linear top-1)",
    ),
)


def _read_registry_file(path: Path) -> list[RegistryEntry]:
    """Parse a JSON or YAML registry: a list of entries with ``name``, or a mapping name -> entry."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"registry file {path}: invalid JSON: {e}") from e
    if isinstance(data, Mapping):
        items = [{"name": name, **(body or {})} for name, body in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise ConfigError(f"registry file {path}: expected a list of entries or a mapping name -> entry")
    fields = {f.name for f in dataclasses.fields(RegistryEntry)}
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"registry file {path}: entry {i} is not a mapping")
        label = f"registry file {path}, entry {item.get('name', i)!r}"
        unknown = set(item) - fields
        if unknown:
            raise ConfigError(f"{label}: unknown keys {sorted(unknown)} (allowed: {sorted(fields)})")
        missing = {"name", "url", "format", "architecture"} - set(item)
        if missing:
            raise ConfigError(f"{label}: missing keys {sorted(missing)}")
        try:
            entries.append(RegistryEntry(**item))
        except ValueError as e:
            raise ConfigError(f"{label}: {e}") from e
    return entries


def load_registry(path: str | Path | None = None) -> dict[str, RegistryEntry]:
    """Built-in entries, overridden by the files in ``MMPRETRAIN_REGISTRY`` (``os.pathsep``-separated), then ``path``.

    User files come last so a team can pin mirrors or hashes of the built-ins without editing the package.
    """
    entries = {e.name: dataclasses.replace(e) for e in _BUILTINS}
    files = [Path(p) for p in os.environ.get("MMPRETRAIN_REGISTRY", "").split(os.pathsep) if p]
    if path is not None:
        files.append(Path(path))
    for file in files:
        file = file.expanduser()
        if not file.is_file():
            raise MissingPathError(f"registry file {file} does not exist")
        entries.update((e.name, e) for e in _read_registry_file(file))
    return entries


def list_pretrained(registry: str | Path | None = None) -> list[str]:
    """Names accepted by :func:`download`, :func:`load_checkpoint` and ``mmpretrain.load_encoder``."""
    return sorted(load_registry(registry))
