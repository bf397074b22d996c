"""Which encoder a few-shot classifier embeds images with: any source ``load_encoder`` reads, two baselines, and the
copy of the encoder a classifier folder carries so that loading it needs nothing else.

Encoder specs:
    ``<name | path | URL | timm:<model>>``: a checkpoint, as :func:`mmpretrain.load_encoder` reads it.
    ``random:<spec>``: the same architecture at a seeded random init (the floor a pretrained encoder must beat);
        ``random:timm:<model>`` builds timm's architecture without fetching its weights.
    ``pixels`` / ``pixels:<size>``: the grey-level pixels of the centre crop resized to ``size`` (default 32), the
        floor of any learned representation.

Usage::

    from mmpretrain.fewshot.encoding import open_encoder
    handle = open_encoder("timm:resnet18")       # handle.encoder.encode_images([...]), handle.config
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mmpretrain._io import atomic_path, sha256_file, write_text_atomic
from mmpretrain.encoders import ImageEncoder, weights_sha256
from mmpretrain.errors import ConfigError, DataError, MissingPathError

__all__ = ["EncoderHandle", "PixelBackbone", "open_encoder", "read_encoder", "write_encoder"]

PIXELS = "pixels"
RANDOM = "random:"
TIMM = "timm:"
_CONFIG_KEY = "mmpretrain_config"  # the metadata key hub.load_checkpoint reads a safetensors file's config from


class PixelBackbone(nn.Module):
    """Normalised RGB ``(B, 3, S, S)`` -> ``(B, S·S)`` grey levels: raw pixels as an embedding, the baseline floor."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.num_features = self.image_size * self.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1).flatten(1)


@dataclass
class EncoderHandle:
    """An opened image encoder and what it takes to save it again.

    Attributes:
        encoder: the :class:`~mmpretrain.encoders.ImageEncoder`.
        spec: the spec it was opened from (what ``embed_encoder=false`` records).
        config: ``{"kind": "pixels", "image_size"}`` or the checkpoint config (``architecture``, ``preprocessing``).
        random_init: the weights are a random init (recorded in every output).
    """

    encoder: ImageEncoder
    spec: str
    config: dict[str, Any]
    random_init: bool = False

    @property
    def weights_sha256(self) -> str:
        """sha256 over the backbone's tensors: what a referenced encoder is checked against when loaded again."""
        return weights_sha256(self.encoder.backbone)


def _pixels(spec: str, device: str | torch.device | None) -> EncoderHandle:
    size_text = spec[len(PIXELS) + 1:] if spec.startswith(PIXELS + ":") else "32"
    if not size_text.isdigit() or not 4 <= int(size_text) <= 512:
        raise ConfigError(f"encoder={spec}: write pixels or pixels:<size> with a size from 4 to 512 pixels")
    size = int(size_text)
    preprocessing = {"image_size": size, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3,
                     "std": [0.5] * 3}
    encoder = ImageEncoder(PixelBackbone(size), preprocessing, f"pixels:{size}", device=device)
    return EncoderHandle(encoder, spec, {"kind": PIXELS, "name": f"pixels:{size}", "image_size": size,
                                         "preprocessing": preprocessing})


def _random_timm(spec: str, name: str, device: str | torch.device | None) -> EncoderHandle:
    """``random:timm:<model>``: timm's architecture and preprocessing at a seeded init; no weights are fetched."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"encoder={spec}: timm has no model {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0)
    data = timm.data.resolve_data_config({}, model=model)
    preprocessing = {"image_size": int(data["input_size"][-1]), "crop_pct": float(data["crop_pct"]),
                     "interpolation": str(data["interpolation"]), "mean": [float(v) for v in data["mean"]],
                     "std": [float(v) for v in data["std"]]}
    label = f"random init of timm:{name}"
    config = {"name": label, "architecture": {"name": name, "kwargs": {}}, "preprocessing": preprocessing}
    return EncoderHandle(ImageEncoder(model.eval(), preprocessing, label, device=device), spec, config, True)


def open_encoder(spec: str, device: str | torch.device | None = None, progress: bool = True) -> EncoderHandle:
    """Open an encoder spec (see the module docstring); video checkpoints are refused.

    Raises:
        ConfigError / MissingPathError / HubError: a spec no source reads, naming it.
    """
    from mmpretrain.hub import build_model, load_checkpoint

    spec = str(spec).strip()
    if not spec:
        raise ConfigError("encoder= is empty: name a checkpoint, timm:<model>, random:<checkpoint> or pixels")
    if spec == PIXELS or spec.startswith(PIXELS + ":"):
        return _pixels(spec, device)
    random_init = spec.startswith(RANDOM)
    source = spec[len(RANDOM):] if random_init else spec
    if random_init and source.startswith(TIMM):
        return _random_timm(spec, source[len(TIMM):], device)
    loaded = load_checkpoint(source, progress=progress)
    if loaded.config.get("kind") == "video":
        raise ConfigError(f"encoder={spec} is a video–text model; a few-shot image classifier needs an image encoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(loaded, random_init=random_init)
    config = dict(loaded.config)
    random_init = random_init or "random init" in str(config.get("name", "")) or bool(config.get("random_init"))
    name = f"random init of {source}" if spec.startswith(RANDOM) else str(config.get("name") or source)
    config["name"] = name
    encoder = ImageEncoder(model, config["preprocessing"], name, device=device)
    return EncoderHandle(encoder, spec, config, random_init)


def write_encoder(handle: EncoderHandle, folder: str | os.PathLike) -> dict[str, Any]:
    """Write the encoder into ``folder`` (``model.safetensors`` with its config, and ``config.json``); returns what
    the classifier's JSON records about it (``embedded``, ``spec``, ``name``, ``sha256`` of the weights file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**handle.config, "name": handle.encoder.name}
    record = {"embedded": True, "spec": handle.spec, "name": handle.encoder.name, "random_init": handle.random_init,
              "weights_sha256": handle.weights_sha256}
    if config.get("kind") == PIXELS:
        write_text_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
        return record
    state = {k: v.detach().cpu().contiguous().clone() for k, v in handle.encoder.backbone.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={_CONFIG_KEY: json.dumps(config, sort_keys=True)})
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    record["file_sha256"] = sha256_file(folder / "model.safetensors")
    return record


def read_encoder(record: dict[str, Any], folder: str | os.PathLike, device: str | torch.device | None = None,
                 ) -> EncoderHandle:
    """The encoder a classifier folder describes: its embedded copy in ``folder``, or the referenced spec, checked
    against the recorded sha256 of its weights.

    Raises:
        MissingPathError: the embedded copy is gone. DataError: the weights differ from those the classifier was
            fitted with (a referenced checkpoint that changed, or a damaged copy).
    """
    folder = Path(folder)
    if record.get("embedded"):
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise MissingPathError(f"{folder}: the classifier's embedded encoder is missing (no config.json)")
        config = json.loads(config_file.read_text())
        if config.get("kind") == PIXELS:
            handle = _pixels(f"{PIXELS}:{config['image_size']}", device)
        else:
            weights = folder / "model.safetensors"
            if not weights.is_file():
                raise MissingPathError(f"{folder}: the classifier's embedded encoder is missing model.safetensors")
            if record.get("file_sha256") and sha256_file(weights) != record["file_sha256"]:
                raise DataError(f"{weights}: sha256 differs from the one recorded when the classifier was written "
                                "(a damaged or replaced file)")
            handle = open_encoder(str(folder), device=device)
            handle.encoder.name = record.get("name", handle.encoder.name)
        handle.spec, handle.random_init = record.get("spec", handle.spec), bool(record.get("random_init"))
    else:
        handle = open_encoder(record["spec"], device=device)
    if handle.weights_sha256 != record.get("weights_sha256"):
        raise DataError(f"encoder {record.get('spec')!r}: its weights (sha256 {handle.weights_sha256[:12]}…) are not "
                        f"those the classifier was fitted with ({str(record.get('weights_sha256'))[:12]}…); refit "
                        "the classifier or restore that checkpoint")
    return handle
