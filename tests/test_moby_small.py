"""MoBY for small data: grayscale-aware views, continued pretraining from checkpoints (official MoBY layout, own
checkpoints, backbone-only files), seeding per rank, and the moby_small experiment with its step and time budgets."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from conftest import TINY_SWIN, compose_cfg, tiny_overrides
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import save_file
from test_moby_train import _StopAfter
from torchvision import transforms as T

import mmpretrain
import mmpretrain.hub
from mmpretrain.cli.train import initialize_model, train
from mmpretrain.data import SSLImageDataModule, ViewAugment
from mmpretrain.data.dataset import looks_grayscale
from mmpretrain.ssl import MoBY, cosine_momentum
from mmpretrain.training import TimeBudget, budget_horizon, scaled_lr, warmup_cosine_lr, warmup_steps

KW = TINY_SWIN["backbone_kwargs"]
ARCH = {"name": TINY_SWIN["backbone"], "kwargs": KW}
HIDDEN, PROJ, QUEUE = 64, 16, 64  # tiny_overrides' heads and queue


def _tiny_moby(seed: int = 0, **overrides) -> MoBY:
    torch.manual_seed(seed)
    kwargs = dict(backbone=TINY_SWIN["backbone"], backbone_kwargs=KW, image_size=32, proj_hidden_dim=HIDDEN,
                  proj_dim=PROJ, queue_len=QUEUE)
    return MoBY(**(kwargs | overrides))


def _official_mlp(prefix: str, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """MoBYMLP's keys: linear_hidden = [Identity, Linear, BatchNorm1d, ReLU], then linear_out."""
    names = {"0.": "linear_hidden.1.", "1.": "linear_hidden.2.", "3.": "linear_out."}
    return {f"{prefix}.{names[k[:2]]}{k[2:]}": v.clone() for k, v in head.state_dict().items()}


def _official_file(source: MoBY, path: Path) -> None:
    """`source` saved as Transformer-SSL releases MoBY: `{"model": ...}` with the original Swin layout
    (PatchMerging at the end of stages 0-2, relative_position_index and attn_mask buffers), encoder_k, projector,
    projector_k, predictor, queue1, queue2 and one queue_ptr."""
    state: dict[str, torch.Tensor] = {}
    for prefix, encoder in (("encoder", source.backbone), ("encoder_k", source.target_backbone)):
        for key, value in encoder.state_dict().items():
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
            state[f"{prefix}.{key}"] = value.clone()
        for key, value in encoder.named_buffers():
            if key.endswith("relative_position_index"):
                state[f"{prefix}.{key}"] = value.clone()
        for i, depth in enumerate(KW["depths"][:3]):
            for j in range(1, depth, 2):
                state[f"{prefix}.layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, 4, 4)
    state |= _official_mlp("projector", source.projector) | _official_mlp("projector_k", source.target_projector)
    state |= _official_mlp("predictor", source.predictor)
    state |= {"queue1": source.queue1.keys.clone(), "queue2": source.queue2.keys.clone(),
              "queue_ptr": torch.tensor([40])}
    torch.save({"model": state, "epoch": 299}, path)


def _trained_like(model: MoBY) -> MoBY:
    """Make every part distinct from a fresh model's: weights, BatchNorm statistics, target branch and queues."""
    with torch.no_grad():
        for module in (model.backbone, model.target_backbone, model.projector, model.target_projector, model.predictor):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        for head in (model.projector, model.target_projector, model.predictor):
            head[1].running_mean.normal_()
            head[1].num_batches_tracked.fill_(7)
    model.queue1.enqueue(torch.nn.functional.normalize(torch.randn(24, PROJ), dim=1))
    model.queue2.enqueue(torch.nn.functional.normalize(torch.randn(40, PROJ), dim=1))
    return model


def _features(backbone: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    was = backbone.training
    with torch.no_grad():
        out = backbone.eval()(x)
    backbone.train(was)
    return out


class _StepZero(pl.Callback):
    """Online features and the state of every part at the first training step, before any update."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and not hasattr(self, "features"):
            self.features = _features(pl_module.backbone)
            self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_official_moby_file_restores_every_part_and_step_zero_features_match_load_encoder(
    demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _trained_like(_tiny_moby(seed=1))
    path = tmp_path / "moby_swin_tiny_official.pth"
    _official_file(source, path)
    import mmpretrain.cli.train as train_mod

    recorder = _StepZero()
    original = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: [*original(c), recorder]
    overrides = [*tiny_overrides(demo_root), "trainer.max_steps=1", f"model.init={path}"]
    cfg = compose_cfg("train.yaml", overrides, tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="mmpretrain"):
            train(cfg)
    finally:
        train_mod.instantiate_callbacks = original

    encoder = mmpretrain.load_encoder(path, device="cpu", architecture=ARCH)
    torch.testing.assert_close(recorder.features, _features(encoder.backbone), atol=1e-6, rtol=0)
    want = source.state_dict()
    for part in ("target_backbone.", "projector.", "target_projector.", "predictor.", "queue1.", "queue2."):
        keys = [k for k in want if k.startswith(part)]
        assert keys
        for key in keys:
            expected = torch.tensor([40]) if key.endswith(".ptr") else want[key]
            torch.testing.assert_close(recorder.state[key], expected, msg=key)
    log = caplog.text
    assert "moby-official format" in log
    for part in ("backbone", "target_backbone", "projector", "target_projector", "predictor", "queue1", "queue2"):
        assert f"  {part}: restored" in log


def test_own_checkpoint_restores_parts_and_backbone_only_sources_start_heads_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _trained_like(_tiny_moby(seed=2))
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, ckpt)
    model = _tiny_moby(seed=3)
    report = initialize_model(model, str(ckpt))
    assert set(report.values()) == {"restored"}
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)

    # a timm file (head included, which the headless backbone drops) and a published encoder: backbone only
    timm_model = timm.create_model(ARCH["name"], num_classes=5, **KW)
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, timm_file)
    published = tmp_path / "published"
    mmpretrain.hub.publish(ckpt, published)
    for src in (str(timm_file), str(published)):
        model = _tiny_moby(seed=4)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        with caplog.at_level(logging.INFO, logger="mmpretrain"):
            report = initialize_model(model, src)
        assert report["backbone"] == "restored"
        for part in ("projector", "predictor", "queue1", "queue2"):
            assert report[part] == "fresh (not in the checkpoint)"
            for key in (k for k in fresh if k.startswith(f"{part}.")):
                assert torch.equal(model.state_dict()[key], fresh[key])
        assert report["target_backbone"] == "fresh (not in the checkpoint), a copy of the backbone"
        torch.testing.assert_close(_features(model.backbone), _features(model.target_backbone))
        encoder = mmpretrain.load_encoder(src, device="cpu", architecture=ARCH)
        torch.testing.assert_close(_features(model.backbone), _features(encoder.backbone), atol=1e-6, rtol=0)
        assert "  queue1: fresh (not in the checkpoint)" in caplog.text


def test_init_parts_that_do_not_fit_start_fresh_and_a_wrong_backbone_is_refused(tmp_path: Path) -> None:
    source = _trained_like(_tiny_moby(seed=5))
    path = tmp_path / "official.pth"
    _official_file(source, path)
    model = _tiny_moby(seed=6, queue_len=2 * QUEUE, proj_hidden_dim=2 * HIDDEN)
    report = initialize_model(model, str(path))
    assert report["backbone"] == report["target_backbone"] == "restored"
    want = "fresh (does not fit: shapes (checkpoint vs model) ['0.weight (64, 192) vs (128, 192)'"
    assert report["projector"].startswith(want)
    assert report["queue1"].startswith("fresh (does not fit") and "keys (16, 64) vs (16, 128)" in report["queue1"]
    assert report["target_projector"].endswith("a copy of the projector")
    torch.testing.assert_close(model.target_projector.state_dict(), model.projector.state_dict())

    other = _tiny_moby(seed=7, backbone_kwargs=KW | {"embed_dim": 32})
    with pytest.raises(ValueError, match=r"model\.init=.*official\.pth: its backbone does not fit model\.backbone=.*"
                                         r"weights do not fit"):
        initialize_model(other, str(path))
    with pytest.raises(FileNotFoundError, match="not a registered checkpoint"):
        initialize_model(_tiny_moby(), str(tmp_path / "missing.pth"))


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def test_grayscale_is_detected_and_gets_no_hue_or_saturation_jitter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (3, 20, 20), dtype=np.uint8)
    for i, plane in enumerate(gray):
        _png(tmp_path / "bw" / f"{i}_1bit.png", plane > 128)
        _png(tmp_path / "bw" / f"{i}_rgb.png", np.stack([plane] * 3, -1))  # colourless RGB
        _png(tmp_path / "bw" / f"{i}_l.png", plane)
    _png(tmp_path / "colour" / "c.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    for i, plane in enumerate(gray):
        _png(tmp_path / "colour" / f"{i}.png", np.stack([plane] * 3, -1))
    bw = sorted(str(p) for p in (tmp_path / "bw").iterdir())
    assert looks_grayscale(bw) and not looks_grayscale(sorted(str(p) for p in (tmp_path / "colour").iterdir()))

    def jitters(**kwargs) -> list:
        dm = SSLImageDataModule(image_size=16, num_workers=0, **kwargs)
        dm.setup()
        view = dm.train_transform.view_1.transforms
        return [type(t).__name__ for t in view], view[2].transforms[0]

    with caplog.at_level(logging.INFO, logger="mmpretrain.data.datamodule"):
        names, jitter = jitters(root=str(tmp_path / "bw"))
    assert "the images look grayscale" in caplog.text
    assert (jitter.saturation, jitter.hue) == (None, None) and jitter.brightness == (0.6, 1.4)
    assert "RandomGrayscale" not in names
    names, jitter = jitters(root=str(tmp_path / "colour"))
    assert jitter.hue == (-0.1, 0.1) and "RandomGrayscale" in names
    names, jitter = jitters(root=str(tmp_path / "colour"), grayscale=True)
    assert jitter.hue is None and "RandomGrayscale" not in names
    with pytest.raises(ValueError, match=r"data\.grayscale='yes': expected auto, true or false"):
        SSLImageDataModule(root=str(tmp_path), grayscale="yes")


def test_affine_views_fill_corners_with_the_border_colour_and_draw_torchvision_params(tmp_path: Path) -> None:
    from torchvision.transforms import functional as TF

    from mmpretrain.data.transforms import BorderFillAffine

    background = (10, 200, 30)
    array = np.full((32, 32, 3), background, dtype=np.uint8)
    array[4:28, 13:19] = (250, 250, 250)  # an upright bar: a rotation moves it, the corners show the fill
    image = Image.fromarray(array)
    op = BorderFillAffine(degrees=40, shear=20)
    torch.manual_seed(3)
    out = np.asarray(op(image))
    torch.manual_seed(3)
    angle, _, _, shear = T.RandomAffine.get_params([-40, 40], None, None, [-20, 20, -20, 20], [32, 32])
    expected = np.asarray(TF.affine(image, angle, [0, 0], 1.0, list(shear), T.InterpolationMode.BILINEAR,
                                    fill=list(background)))
    assert abs(angle) > 5 and np.array_equal(out, expected) and not np.array_equal(out, array)
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        assert tuple(corner) == background  # torchvision's default fill would make them black
    torch.manual_seed(3)
    assert tuple(np.asarray(T.RandomAffine(40, shear=20)(image))[0, 0]) == (0, 0, 0)
    grey = Image.fromarray(np.full((16, 16), 255, dtype=np.uint8))
    assert np.asarray(BorderFillAffine(30)(grey)).min() == 255  # single-channel views keep a white page white
    with pytest.raises(ValueError, match="half-ranges >= 0"):
        BorderFillAffine(-5)

    (tmp_path / "a").mkdir()
    image.save(tmp_path / "a" / "0.png")

    def views(**kwargs) -> list[list[str]]:
        dm = SSLImageDataModule(root=str(tmp_path), image_size=16, num_workers=0, **kwargs)
        dm.setup()
        pair = dm.train_transform
        return [[type(t).__name__ for t in v.transforms] for v in (pair.view_1, pair.view_2)]

    assert all("BorderFillAffine" not in names for names in views())  # off by default: BYOL's recipe
    for names in views(view={"affine_degrees": 10.0, "affine_shear": 5.0}):
        assert names[names.index("RandomHorizontalFlip") + 1] == "BorderFillAffine"
    dm = SSLImageDataModule(root=str(tmp_path), image_size=16, num_workers=0, view=ViewAugment(affine_degrees=10.0))
    dm.setup()
    first, second = dm.train_transform(Image.open(tmp_path / "a" / "0.png"))
    assert first.shape == second.shape == (3, 16, 16)


def test_colour_strengths_reach_both_views_and_bad_values_name_the_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _png(tmp_path / "c" / "0.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))

    def colour_ops(**kwargs) -> list[tuple]:
        dm = SSLImageDataModule(root=str(tmp_path / "c"), image_size=16, num_workers=0, **kwargs)
        dm.setup()
        found = []
        for view in (dm.train_transform.view_1, dm.train_transform.view_2):
            jitter = next(t.transforms[0] for t in view.transforms if isinstance(t, T.RandomApply))
            grey = [t.p for t in view.transforms if isinstance(t, T.RandomGrayscale)]
            found.append((jitter.brightness, jitter.saturation, jitter.hue, grey))
        return found

    assert colour_ops() == [((0.6, 1.4), (0.8, 1.2), (-0.1, 0.1), [0.2])] * 2  # BYOL's strengths
    strong = colour_ops(view={"jitter_strength": [0.75, 0.8, 0.75, 0.5], "grayscale_p": 0.5})
    assert strong == [((0.25, 1.75), (0.25, 1.75), (-0.5, 0.5), [0.5])] * 2
    assert colour_ops(view={"grayscale_p": 0.0})[0][3] == []
    strengths = ViewAugment(jitter_strength=[0.8, 0.8, 0.8, 0.5], grayscale_p=0.5)
    pair = SSLImageDataModule(root=str(tmp_path / "c"), image_size=16, num_workers=0, view=strengths)
    pair.setup()
    torch.manual_seed(0)
    first, second = pair.train_transform(Image.open(tmp_path / "c" / "0.png"))
    assert first.shape == second.shape == (3, 16, 16) and not torch.equal(first, second)
    bad = [
        ({"jitter_strength": [0.4, 0.4, 0.2]}, r"data\.view\.jitter_strength=\[0\.4, 0\.4, 0\.2\]"),
        ({"jitter_strength": [0.4, 0.4, 0.2, 0.7]}, r"hue <= 0\.5"),
        ({"grayscale_p": 1.5}, r"data\.view\.grayscale_p=1\.5"),
        ({"affine_shear": -1.0}, r"data\.view\.affine_shear=-1\.0"),
    ]
    for view, key in bad:
        with pytest.raises(ValueError, match=key):
            SSLImageDataModule(root=str(tmp_path / "c"), view=view)


def test_moby_small_experiment_composes_and_builds(tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", ["experiment=moby_small", f"data.root={tmp_path}"], tmp_path)
    model, data = instantiate(cfg.model), instantiate(cfg.data)
    assert cfg.trainer.accelerator == "cpu" and model.concat_views is True  # a LayerNorm Swin: both views in one pass
    assert model.hparams.crop_pct == cfg.data.eval_crop_pct and data.grayscale is None  # auto
    gpu = compose_cfg("train.yaml", ["experiment=moby_small", "trainer=gpu"], tmp_path)
    assert gpu.trainer.accelerator == "gpu" and gpu.model == cfg.model


class _DropPathMasks(pl.Callback):
    """Which samples each DropPath of the online backbone dropped, per step, saved per rank."""

    def __init__(self, out: str) -> None:
        self.out, self.masks = out, []

    def on_train_start(self, trainer, pl_module):
        def hook(module, inputs, output):
            self.masks.append((output.flatten(1).abs().sum(1) == 0).tolist())

        for m in pl_module.backbone.modules():
            if type(m).__name__ == "DropPath":
                m.register_forward_hook(hook)

    def on_train_end(self, trainer, pl_module):
        torch.save(self.masks, f"{self.out}/masks_rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ranks_draw_different_drop_path_masks_and_runs_reproduce(demo_root: Path, tmp_path: Path) -> None:
    import mmpretrain.cli.train as train_mod

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        cfg = compose_cfg(
            "train.yaml",
            [*tiny_overrides(demo_root, batch_size=4), "trainer=ddp_sim", "trainer.max_steps=3", "callbacks=none",
             "model.drop_path_rate=0.5", "+callbacks.rank_seed._target_=mmpretrain.training.RankSeed", "seed=5",
             "+callbacks.rank_seed.seed=5"],
            out,
        )
        original = train_mod.instantiate_callbacks
        train_mod.instantiate_callbacks = lambda c, out=out, original=original: [*original(c), _DropPathMasks(str(out))]
        try:
            train(cfg)
        finally:
            train_mod.instantiate_callbacks = original
        runs.append([torch.load(out / f"masks_rank{r}.pt") for r in (0, 1)])
    (a0, a1), (b0, b1) = runs
    assert len(a0) == len(a1) > 0 and any(any(row) for row in a0)
    assert a0 != a1  # rank 1 is seeded seed + 1
    assert (a0, a1) == (b0, b1)  # and the same seed reproduces both ranks


def test_budget_schedules_are_pure_functions_of_the_step_and_the_horizon() -> None:
    assert warmup_steps(5400, 20, 5, 0.0185) == warmup_steps(5400, 20, 5) == 100  # moby_small's 270 epochs
    assert warmup_steps(1000, 20, 5, 0.1) == 100 and warmup_steps(math.inf, 20, 5, 0.1) == math.inf
    base, start, end = 1e-3, 1e-5, 1e-6
    assert {warmup_cosine_lr(k, math.inf, 10, base, start, end) for k in (0, 1, 50, 10**6)} == {start}
    assert {cosine_momentum(k, math.inf) for k in (0, 7, 10**6)} == {0.99}  # a time budget still measuring
    assert budget_horizon(100, 30, 300, 0.25) == 1180
    assert budget_horizon(100, 301, 300, 0.25) == 100  # spent: end now
    with pytest.raises(ValueError, match="seconds_per_step=0"):
        budget_horizon(1, 0, 10, 0)
    for minutes in (0, -5):
        with pytest.raises(mmpretrain.errors.ConfigError, match=f"budget_minutes={minutes} must be > 0"):
            TimeBudget(minutes)


def test_moby_small_is_a_step_budget_and_budget_minutes_reaches_the_callback(tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", ["experiment=moby_small", f"data.root={tmp_path}"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.model.warmup_fraction) == (-1, 5400, 0.0185)
    assert instantiate(cfg.callbacks.time_budget).budget_s is None
    timed = compose_cfg("train.yaml", ["experiment=moby_small", "budget_minutes=7.5"], tmp_path)
    assert instantiate(timed.callbacks.time_budget).budget_s == 450
    demo = compose_cfg("train.yaml", ["experiment=moby_demo"], tmp_path)
    assert (demo.trainer.max_epochs, demo.trainer.max_steps, demo.model.warmup_fraction) == (60, -1, None)  # by epochs


class _Schedule(pl.Callback):
    """The lr and momentum each optimizer step uses, by global step; a fake clock that the steps advance."""

    def __init__(self, seconds: Callable[[int], float] = lambda step: 1.0, start: float = 0.0) -> None:
        self.rows: dict[int, tuple[float, float]] = {}
        self.seconds, self.now = seconds, start

    def clock(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.now += self.seconds(trainer.global_step)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows[trainer.global_step] = (lr, pl_module.current_momentum())


def _fit(cfg, *callbacks: pl.Callback) -> dict:
    import mmpretrain.cli.train as train_mod

    original = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: [*original(c), *callbacks]
    try:
        return train(cfg)[1]
    finally:
        train_mod.instantiate_callbacks = original


def _lrs(model: MoBY) -> tuple[float, float, float]:
    hp, batch = model.hparams, model.trainer.train_dataloader.batch_size
    return tuple(scaled_lr(x, batch, hp.lr_ref_batch) for x in (hp.base_lr, hp.warmup_start_lr, hp.min_lr))


def test_a_step_budget_lays_warmup_cosine_and_momentum_over_max_steps(demo_root: Path, tmp_path: Path) -> None:
    record = _Schedule()
    overrides = [*tiny_overrides(demo_root), "trainer.max_epochs=-1", "trainer.max_steps=10",
                 "model.warmup_fraction=0.2", "trainer.check_val_every_n_epoch=100"]
    objects = _fit(compose_cfg("train.yaml", overrides, tmp_path), record)
    assert objects["trainer"].global_step == 10 and sorted(record.rows) == list(range(10))  # 1.7 epochs of 6 steps
    base, start, end = _lrs(objects["model"])
    for step, (lr, momentum) in record.rows.items():
        assert lr == pytest.approx(warmup_cosine_lr(step, 10, 2, base, start, end), rel=1e-9)
        assert momentum == pytest.approx(cosine_momentum(step, 10), abs=1e-12)


def test_a_run_without_an_end_is_refused_naming_the_keys(demo_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(demo_root), "trainer.max_epochs=-1", "trainer.max_steps=-1"]
    with pytest.raises(mmpretrain.errors.ConfigError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1: the lr "
                                                            r"schedule needs an end; set .* or budget_minutes"):
        train(compose_cfg("train.yaml", overrides, tmp_path))


def _timed(demo_root: Path, out: Path) -> object:
    overrides = [*tiny_overrides(demo_root), "~callbacks.time_budget", "model.warmup_fraction=0.2",
                 "trainer.check_val_every_n_epoch=100"]
    return compose_cfg("train.yaml", overrides, out)


def _slower_after_8(step: int) -> float:
    return 1.0 if step < 8 else 2.0  # the machine gets busier: the horizon shrinks as it is measured again


def test_a_time_budget_measures_its_horizon_stops_in_time_and_resumes_the_same_schedule(
    demo_root: Path, tmp_path: Path
) -> None:
    full = _Schedule(_slower_after_8)
    budget = TimeBudget(0.5, calibration_steps=3, every=4, clock=full.clock)
    objects = _fit(_timed(demo_root, tmp_path / "full"), full, budget)
    # 8 steps of 1 s, then 2 s: the 30 s hold 8 + 11 steps; estimates at steps 4, 5, 9, 13, 17: 30, 30, 26, 21, 19
    assert objects["trainer"].global_step == budget.horizon == 19 and budget.elapsed() == 30
    base, start, end = _lrs(objects["model"])
    for step in range(4):  # before the first estimate (after the 4th batch) the schedules wait at their start
        assert full.rows[step] == (pytest.approx(start, rel=1e-9), pytest.approx(0.99))
    # the last estimate (19, after the 17th batch) reaches the momentum of step 17 and, since Lightning steps the lr
    # scheduler before the batch-end hooks, the lr from step 18 (step 17's lr was set with the estimate before, 21)
    for step, lr_horizon in ((17, 21), (18, 19)):
        lr, momentum = full.rows[step]
        assert lr == pytest.approx(warmup_cosine_lr(step, lr_horizon, 4, base, start, end), rel=1e-9)
        assert momentum == pytest.approx(cosine_momentum(step, 19), abs=1e-12)

    first = _Schedule(_slower_after_8)
    _fit(_timed(demo_root, tmp_path / "split"), first, TimeBudget(0.5, 3, 4, clock=first.clock),
         _StopAfter(12))
    ckpt = tmp_path / "split/run/checkpoints/last.ckpt"
    cfg = _timed(demo_root, tmp_path / "split")
    cfg.ckpt_path = str(ckpt)
    resumed = _Schedule(_slower_after_8, start=1000.0)  # another process, another clock: only spent time counts
    objects = _fit(cfg, resumed, TimeBudget(0.5, 3, 4, clock=resumed.clock))
    assert sorted(resumed.rows) == list(range(12, 19)) and objects["trainer"].global_step == 19
    for step, row in resumed.rows.items():
        assert row == (pytest.approx(full.rows[step][0], rel=1e-12), pytest.approx(full.rows[step][1], abs=1e-12))
