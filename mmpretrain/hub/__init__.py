"""Checkpoint hub: a registry of named checkpoints, a safe download cache, format conversion and loading.

Everything that turns a name, URL or file into timm backbone weights lives here, so that the rest of the project
never touches the network, never unpickles untrusted code and never guesses a key layout.

Modules: :mod:`~mmpretrain.hub.registry` (named checkpoints), :mod:`~mmpretrain.hub.download` (cache, fetch,
verify), :mod:`~mmpretrain.hub.safe_load` (code-free ``torch.save`` loading), :mod:`~mmpretrain.hub.formats` (what
each format holds, official-MoBY conversion, weight checks), :mod:`~mmpretrain.hub.loading` (any source to a
:class:`LoadedCheckpoint`), :mod:`~mmpretrain.hub.building` (the model, strict), :mod:`~mmpretrain.hub.publishing`
(the own format), :mod:`~mmpretrain.hub.schema` (what an embedded config may say) and :mod:`~mmpretrain.hub.errors`.
"""

from mmpretrain.hub.building import build_backbone, build_model
from mmpretrain.hub.download import cache_path, download, hub_cache_dir, verify, verify_cached
from mmpretrain.hub.errors import (
    CheckpointConfigError,
    CheckpointReadError,
    ChecksumError,
    DownloadError,
    HubError,
    OfflineError,
)
from mmpretrain.hub.formats import CONFIG_FILE as CONFIG_FILE
from mmpretrain.hub.formats import WEIGHTS_FILE as WEIGHTS_FILE
from mmpretrain.hub.formats import LoadedCheckpoint, convert_moby_official, is_video
from mmpretrain.hub.loading import load_checkpoint
from mmpretrain.hub.moby_state import moby_training_state
from mmpretrain.hub.publishing import convert_to_published, publish
from mmpretrain.hub.registry import DEFAULT_PREPROCESSING as DEFAULT_PREPROCESSING
from mmpretrain.hub.registry import FORMATS, RegistryEntry, list_pretrained, load_registry
from mmpretrain.hub.registry import IMAGENET_STD as IMAGENET_STD
from mmpretrain.hub.safe_load import safe_torch_load
from mmpretrain.hub.schema import on_meta, validate_config
from mmpretrain.models.backbones import IMAGENET_MEAN as IMAGENET_MEAN

__all__ = [
    "FORMATS",
    "CheckpointConfigError",
    "CheckpointReadError",
    "ChecksumError",
    "DownloadError",
    "HubError",
    "LoadedCheckpoint",
    "OfflineError",
    "RegistryEntry",
    "build_backbone",
    "build_model",
    "cache_path",
    "convert_moby_official",
    "convert_to_published",
    "download",
    "hub_cache_dir",
    "is_video",
    "list_pretrained",
    "load_checkpoint",
    "load_registry",
    "moby_training_state",
    "on_meta",
    "publish",
    "safe_torch_load",
    "validate_config",
    "verify",
    "verify_cached",
]
