"""Shared fixtures: a tiny Swin config and a small demo image set, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_SWIN = {
    "backbone": "swin_tiny_patch4_window7_224",
    "backbone_kwargs": {
        "img_size": 32,
        "embed_dim": 24,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 2,
    },
    "image_size": 32,
}


@pytest.fixture
def one_faiss_thread():
    """One OpenMP thread: faiss's small parallel loops crawl when a loaded 2-core machine oversubscribes them."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmpretrain.data import make_demo_images

    root = tmp_path_factory.mktemp("demo")
    return make_demo_images(root, num_classes=4, train_per_class=12, val_per_class=4, size=32)


@pytest.fixture(scope="session")
def video_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real encoded demo videos (H.264 MP4 and MPEG-4 AVI, 32 px, 8 frames): 4 shapes x 6, a quarter held out."""
    from mmpretrain.video.demo import make_demo_videos

    return make_demo_videos(tmp_path_factory.mktemp("video_demo"), per_class=6, num_frames=8, size=32)


@pytest.fixture(scope="session")
def video_shards(video_demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo videos as WebDataset shards: train in shards of 6 (a space-separated list), val in one."""
    from mmpretrain.data.shards import write_shards
    from mmpretrain.video.io.shards import manifest_samples

    out = tmp_path_factory.mktemp("video_shards")
    write_shards(manifest_samples(video_demo["train"]), out, prefix="train", maxcount=6)
    write_shards(manifest_samples(video_demo["val"]), out, prefix="val", maxcount=100)
    train = sorted(p.name for p in out.glob("train-*.tar"))
    return {"train": " ".join(str(out / n) for n in train), "val": str(out / "val-000000.tar")}


TINY_VIDEO = [
    # the demo's ResNet, narrower, at 32 px (stride 8 keeps its 4x4 token grid)
    "model.image_size=32",
    "model.frame_encoder_kwargs.output_stride=8",
    "model.frame_encoder_kwargs.channels=[8,16,16,16]",
    "model.frame_encoder_kwargs.stem_width=8",
    "model.text_pretrained=false",
    "model.text_overrides.num_hidden_layers=1",
    "+model.text_overrides.hidden_size=32",
    "+model.text_overrides.num_attention_heads=2",
    "+model.text_overrides.intermediate_size=64",
    "model.arch.width=32",
    "model.arch.depth=1",
    "model.arch.num_heads=2",
    "model.arch.proj_dim=16",
]


def video_overrides(video_demo: dict[str, Path], batch_size: int = 4) -> list[str]:
    """`experiment=video_fusion_demo` shrunk further for tests: CPU, no workers, CSV logs, a 1-layer everything."""
    return [
        "experiment=video_fusion_demo",
        "logger=csv",
        "trainer=cpu",
        f"data.train_manifest={video_demo['train']}",
        f"data.val_manifest={video_demo['val']}",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        *TINY_VIDEO,
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="session")
def video_pretrained(video_demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `experiment=video_fusion_demo` checkpoint after one training step."""
    from mmpretrain.cli.train import train

    out = tmp_path_factory.mktemp("video_pretrain")
    overrides = [*video_overrides(video_demo), "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                 "trainer.limit_val_batches=0", "callbacks.last_checkpoint.every_n_epochs=1"]
    train(compose_cfg("train.yaml", overrides, out))
    return out / "run/checkpoints/last.ckpt"


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path):
    """Compose a config the way the CLI does, with every path redirected under `out_dir`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="mmpretrain.conf"):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(out_dir)
            cfg.paths.output_dir = str(out_dir / "run")
            cfg.paths.log_dir = str(out_dir / "logs")
            cfg.paths.work_dir = str(out_dir)
            cfg.extras.print_config = False
            del cfg.hydra
    return cfg


def tiny_overrides(demo_root: Path, queue_len: int = 64, batch_size: int = 8) -> list[str]:
    """Overrides that shrink `experiment=moby_demo` to a tiny Swin on the 32-px test images, CPU, no workers."""
    kw = TINY_SWIN["backbone_kwargs"]
    return [
        "experiment=moby_demo",
        "logger=csv",
        "trainer=cpu",
        f"data.root={demo_root}/train",
        f"data.knn_train_root={demo_root}/train",
        f"data.knn_val_root={demo_root}/val",
        "data.image_size=32",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        f"model.backbone_kwargs.img_size={kw['img_size']}",
        f"model.backbone_kwargs.embed_dim={kw['embed_dim']}",
        f"model.backbone_kwargs.depths=[{','.join(map(str, kw['depths']))}]",
        f"model.backbone_kwargs.num_heads=[{','.join(map(str, kw['num_heads']))}]",
        f"model.backbone_kwargs.window_size={kw['window_size']}",
        "model.proj_hidden_dim=64",
        "model.proj_dim=16",
        f"model.queue_len={queue_len}",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` are skipped when CUDA is absent (CI here has no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
