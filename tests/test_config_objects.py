"""Settings that travel as one object from the config: the views' augmentations (``data.view``, a `ViewAugment`)
and MoBY's optimizer (``model.optimizer``, a partial). Keys at their former places name their new ones."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra.utils import instantiate

from mmpretrain.cli import entry
from mmpretrain.data import SSLImageDataModule, ViewAugment
from mmpretrain.errors import ConfigError
from mmpretrain.ssl import MoBY

TINY = ["model.backbone=resnet18", "model.proj_hidden_dim=16", "model.proj_dim=8", "model.queue_len=16"]


def test_the_view_node_builds_view_augment_and_overrides_reach_both_views(tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", ["data.view.blur_p=[0.0,0.5]", "data.view.jitter_strength=[0.8,0.8,0.8,0.2]",
                                     f"data.root={tmp_path}"], tmp_path)
    data = instantiate(cfg.data)
    assert isinstance(data.view, ViewAugment) and data.view.blur_p == (0.0, 0.5)
    assert data.view.jitter_strength == (0.8, 0.8, 0.8, 0.2) and data.view.crop_scale == (0.08, 1.0)
    assert data.hparams["view"] == {**ViewAugment().to_dict(), "blur_p": [0.0, 0.5],
                                    "jitter_strength": [0.8, 0.8, 0.8, 0.2]}
    assert {f for f in ViewAugment.__dataclass_fields__} == set(cfg.data.view) - {"_target_"}  # one key each


def test_view_settings_from_a_mapping_and_bad_ones_name_the_key() -> None:
    assert ViewAugment.of({"flip_p": 0.0}) == ViewAugment(flip_p=0.0)
    assert ViewAugment.of(None) == ViewAugment()
    with pytest.raises(ConfigError, match=r"^data\.view\.blur is not a view setting; data\.view has: crop_scale"):
        ViewAugment.of({"blur": [0.0, 0.0]})
    for bad, message in (({"crop_scale": [0.0, 1.0]}, r"data\.view\.crop_scale=\[0\.0, 1\.0\]: expected 0 < low"),
                         ({"blur_p": [1.0]}, r"data\.view\.blur_p=\[1\.0\]: expected \[view 1, view 2\]"),
                         ({"solarize_p": [0.0, 2.0]}, r"data\.view\.solarize_p=2\.0: a probability"),
                         ({"blur_sigma": [2.0, 1.0]}, r"data\.view\.blur_sigma=\[2\.0, 1\.0\]")):
        with pytest.raises(ConfigError, match=message):
            ViewAugment(**bad)


def test_a_view_key_at_its_former_place_names_the_new_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.jitter_strength is now data\.view\.jitter_strength"):
        SSLImageDataModule(root=str(tmp_path), jitter_strength=[0.8, 0.8, 0.8, 0.2])
    with pytest.raises(ConfigError, match=r"^data\.colour is not a key of SSLImageDataModule$"):
        SSLImageDataModule(root=str(tmp_path), colour=True)
    assert entry.override_hint("train.yaml", ["data.blur_p=[0,0]"]) == "did you mean `data.view.blur_p`?"
    assert entry.override_hint("train.yaml", ["model.weight_decay=0.1"]) == (
        "did you mean `model.optimizer.weight_decay`?"
    )


def test_the_optimizer_node_is_the_recipe_and_gets_moby_groups_and_kernel(tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*TINY, "model.optimizer.weight_decay=0.1"], tmp_path)
    model = instantiate(cfg.model)
    optimizer = model.build_optimizer(lr=0.5)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"]) == (0.1, 0.0, 0.5)
    assert decay["betas"] == (0.9, 0.999)
    online = {id(p) for m in (model.backbone, model.projector, model.predictor) for p in m.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == online  # the target branch is not trained
    assert optimizer.defaults["foreach"] is None and model.build_optimizer(0.5, "16-mixed").defaults["foreach"]

    sgd = compose_cfg("train.yaml", [*TINY, "model.optimizer._target_=torch.optim.SGD", "~model.optimizer.betas",
                                     "+model.optimizer.momentum=0.9"], tmp_path)
    optimizer = instantiate(sgd.model).build_optimizer(lr=0.5)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_the_checkpoint_holds_the_optimizer_as_plain_data(tmp_path: Path) -> None:
    """A partial in the hyper-parameters would make every checkpoint unloadable with ``weights_only=True``."""
    cfg = compose_cfg("train.yaml", TINY, tmp_path)
    model = instantiate(cfg.model)
    assert model.hparams["optimizer"] == {"_target_": "torch.optim.adamw.AdamW", "weight_decay": 0.05,
                                          "betas": [0.9, 0.999]}
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]["optimizer"]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match=r"model\.optimizer\.weight_decay=-1 must be in"):
        MoBY(backbone="resnet18", optimizer=functools.partial(torch.optim.AdamW, weight_decay=-1))
