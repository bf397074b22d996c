"""Stock timm backbones: `timm:<model>` through the same loading path as any checkpoint.

A user starts from the strongest backbone there is by writing `encoder=timm:<model>` (or `model.init=timm:<model>`
to continue pretraining it with MoBY) where they would name a checkpoint. The weights are timm's pretrained ones,
fetched as timm fetches them: from the Hugging Face hub (``HF_ENDPOINT``) into its cache (``HF_HUB_CACHE`` /
``HF_HOME``), with a progress bar. Offline (``MMPRETRAIN_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) the cache serves them or
the run stops with one line naming the model and the cache. A random init happens only when asked
(``random_init=True``) and says so in its name and config, so no output mistakes it for a pretrained network.
``timm:hf-hub:<org>/<repo>`` reads a timm model pushed to the hub (its ``config.json`` names the architecture).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmpretrain.errors import ConfigError
from mmpretrain.hub.download import offline_mode
from mmpretrain.hub.errors import CheckpointConfigError, DownloadError, OfflineError
from mmpretrain.hub.registry import DEFAULT_PREPROCESSING
from mmpretrain.models import create_backbone

log = logging.getLogger(__name__)

PREFIX = "timm:"
HF_PREFIX = "hf-hub:"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_stock(source: str) -> bool:
    """True for a `timm:<model>` name."""
    return str(source).startswith(PREFIX)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache timm uses: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``.

    Read when called (huggingface_hub reads it once, at import), so a process may point it elsewhere first.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def fetch_hub_file(repo: str, filenames: tuple[str, ...], source: str, progress: bool = True) -> Path:
    """The first of ``filenames`` the hub repo ``repo`` holds, from the cache or fetched into it.

    Raises:
        OfflineError: offline and not cached, naming ``source`` and the cache.
        DownloadError: online and the hub (``HF_ENDPOINT``) has none of the files or cannot be reached.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    offline, cache = offline_mode(), hf_cache_dir()
    endpoint = os.environ.get("HF_ENDPOINT") or None
    repo_id, _, revision = repo.partition("@")  # timm's hf_hub_id may pin a revision
    bars_were_off = are_progress_bars_disabled()
    problems = []
    for filename in filenames:
        if not progress:
            disable_progress_bars()
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache,
                                        endpoint=endpoint, local_files_only=offline))
        except EntryNotFoundError:
            continue
        except LocalEntryNotFoundError as err:
            if not offline:  # the hub cannot be reached: the next file would wait as long
                problems.append(str(err).splitlines()[0])
                break
        except (HfHubHTTPError, OSError) as err:
            problems.append(str(err).splitlines()[0])
            break
        finally:
            if not bars_were_off:
                enable_progress_bars()
    wanted = " or ".join(f"{repo}/{f}" for f in filenames)
    if offline:
        raise OfflineError(f"{source}: {wanted} is not in the Hugging Face cache {cache} and offline mode is on "
                           "(MMPRETRAIN_OFFLINE / HF_HUB_OFFLINE): fetch it once online, or ask for random_init=true")
    where = endpoint or "https://huggingface.co"
    detail = f": {problems[0]}" if problems else ": no such file"
    raise DownloadError(f"{source}: cannot fetch {wanted} from {where}{detail} (random_init=true builds the "
                        "architecture without weights)")


def _hub_model(repo: str, source: str, progress: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Architecture, pretrained config and model arguments of a timm model pushed to the hub (its config.json)."""
    path = fetch_hub_file(repo, ("config.json",), source, progress)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if "pretrained_cfg" not in config:  # timm's older layout: the pretrained config at the top
            config = {"architecture": config.pop("architecture"), "pretrained_cfg": config}
        name, pretrained_cfg = str(config["architecture"]), dict(config["pretrained_cfg"])
        model_args = dict(config.get("model_args") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointConfigError(f"{source}: {path} is not a timm model config "
                                    f"({type(err).__name__}: {err})") from err
    if "num_classes" in config:
        pretrained_cfg["num_classes"] = config["num_classes"]
    return name, pretrained_cfg | {"hf_hub_id": repo}, model_args  # no "source": timm would fetch again itself


def _check_name(name: str, source: str) -> None:
    import timm

    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"{source}: timm has no model {name!r}{hint}")


def load_stock(
    source: str,
    *,
    random_init: bool = False,
    architecture: str | Mapping[str, Any] | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path | None]:
    """Config, headless weights and weights file (None: random init) of `timm:<model>`.

    Args:
        source: ``timm:<model>`` (a timm name, optionally with its pretrained tag, ``timm:resnet50.a1_in1k``) or
            ``timm:hf-hub:<org>/<repo>``.
        random_init: the architecture at a seeded random init, nothing fetched; recorded in the config
            (``"random_init": true``) and in its name.
        architecture: ``{"name", "kwargs"}`` the caller will build (continued pretraining): when it names the same
            timm model, its shape arguments (``img_size``...) go to timm, which adapts the pretrained weights
            (position embeddings, relative-position tables) as it does for ``timm.create_model``.
        progress: the download's progress bar.
        seed: the random init's seed.

    Raises:
        ConfigError: timm has no such model (naming the closest ones), or it has no pretrained weights.
        CheckpointConfigError: the model's config.json on the hub does not parse.
        OfflineError / DownloadError: see :func:`fetch_hub_file`.
    """

    name = source[len(PREFIX) :]
    pretrained_cfg: dict[str, Any] | None = None
    kwargs: dict[str, Any] = {}
    if name.startswith(HF_PREFIX):
        name, pretrained_cfg, kwargs = _hub_model(name[len(HF_PREFIX) :], source, progress)
    _check_name(name, source)
    if isinstance(architecture, Mapping) and architecture.get("name") in (name, name.split(".")[0]):
        kwargs |= dict(architecture.get("kwargs") or {})
    with torch.device("meta"):
        skeleton = create_backbone(name, pretrained_cfg=pretrained_cfg, **kwargs)
    pretrained_cfg = dict(skeleton.pretrained_cfg)
    weights = None
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_backbone(name, **kwargs)
        label = f"{source} (random init)"
    else:
        weights = _pretrained_file(pretrained_cfg, source, progress)
        model = create_backbone(name, pretrained=True, pretrained_cfg=pretrained_cfg,
                                pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
        label = f"{source} (timm pretrained, {pretrained_cfg.get('tag') or pretrained_cfg.get('hf_hub_id')})"
        log.info("%s: timm's pretrained weights %s", source, weights)
    size = kwargs.get("img_size") or pretrained_cfg.get("input_size", (3, DEFAULT_PREPROCESSING["image_size"]))[-1]
    preprocessing = {
        **DEFAULT_PREPROCESSING,
        "image_size": int(size[-1] if isinstance(size, list | tuple) else size),
        "mean": [float(x) for x in pretrained_cfg.get("mean", DEFAULT_PREPROCESSING["mean"])],
        "std": [float(x) for x in pretrained_cfg.get("std", DEFAULT_PREPROCESSING["std"])],
        "interpolation": str(pretrained_cfg.get("interpolation", DEFAULT_PREPROCESSING["interpolation"])),
        "crop_pct": float(pretrained_cfg.get("crop_pct", DEFAULT_PREPROCESSING["crop_pct"])),
    }
    config = {"name": label, "architecture": {"name": name, "kwargs": kwargs}, "preprocessing": preprocessing,
              "random_init": random_init}
    return config, model.state_dict(), weights


def _pretrained_file(pretrained_cfg: Mapping[str, Any], source: str, progress: bool) -> Path:
    """timm's pretrained weights of a model, from the hub cache or fetched into it."""
    repo = pretrained_cfg.get("hf_hub_id")
    if not repo:
        raise ConfigError(f"{source}: timm has no pretrained weights on the Hugging Face hub for this model; "
                          "random_init=true builds it at random")
    filename = pretrained_cfg.get("hf_hub_filename")
    return fetch_hub_file(str(repo), (filename,) if filename else _WEIGHT_FILES, source, progress)
