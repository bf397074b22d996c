"""The OmegaConf resolvers the configs use, registered by the config package (`mmpretrain.conf`) itself, so that
whoever composes the configs (the console scripts, Hydra's compose API in tests) has them, and nothing else does.

Resolvers run only when a config value that uses them is read; none touches the disk before.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["register_resolvers", "split_beside", "suffix"]


def _is_labeled_folder(path: Path) -> bool:
    """One subfolder per class holding images (the ImageFolder layout the kNN monitor reads)."""
    from mmpretrain.data.sources import IMAGE_EXTENSIONS

    return path.is_dir() and any(
        sub.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir()) for sub in path.iterdir()
    )


def split_beside(root: str | None, split: str) -> str | None:
    """`<parent of root>/<split>` when that parent holds labeled `train/` and `val/` folders, else None.

    The `mmpretrain.split_beside` resolver: an experiment turns its kNN monitor on for `data.root=<x>/train` with a
    labeled `<x>/val` beside it (the demo's layout), and off for a user's folder without them, instead of failing on
    folders the user never named.
    """
    if not root:
        return None
    parent = Path(str(root)).expanduser().parent
    if all(_is_labeled_folder(parent / s) for s in ("train", "val")):
        return str(parent / split)
    return None


def suffix(value: str | None) -> str:
    """`_<value>`, or nothing for None: the `mmpretrain.suffix` resolver that names an eval task in its run folder."""
    return "" if value is None or value == "" else f"_{value}"


def register_resolvers() -> None:
    """Register `mmpretrain.split_beside` and `mmpretrain.suffix` once (later calls do nothing)."""
    for name, function in (("mmpretrain.split_beside", split_beside), ("mmpretrain.suffix", suffix)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
