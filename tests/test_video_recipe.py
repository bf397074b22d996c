"""The video pretraining recipe: text pooling, lr groups, the MVM teacher, tube masking, real negatives, seeded
validation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, video_overrides
from test_video_pretrain import MINILM, VIT, fake_batch, tiny_module

from mmpretrain.cli.train import train
from mmpretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mmpretrain.models import create_backbone, create_tokenizer, match_grid, pool_text, trained_pooling
from mmpretrain.video import TextProcessor
from mmpretrain.video.eval.evaluation import _negative_texts
from mmpretrain.video.train import module as video_module
from mmpretrain.video.train.losses import sample_hard_negatives
from mmpretrain.video.train.param_groups import video_param_groups
from mmpretrain.video.train.text import normalize_title, same_content

SWIN = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}


@pytest.fixture(scope="module")
def processor() -> TextProcessor:
    return TextProcessor(create_tokenizer(MINILM), max_len=32)


def save_moby(path: Path, name: str, kwargs: dict, mean=(0.5,) * 3, std=(0.5,) * 3) -> dict[str, torch.Tensor]:
    """A MoBY checkpoint of this project (what `experiment=moby_*` writes), from a fresh backbone."""
    torch.manual_seed(1)
    source = create_backbone(name, **kwargs)
    hparams = {"backbone": name, "backbone_kwargs": kwargs, "image_size": 32, "mean": list(mean), "std": list(std),
               "interpolation": "bicubic"}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": hparams}, path)
    return source.state_dict()


# ----------------------------------------------------------------------------------------------- text pooling


def test_mean_pooling_matches_numpy_with_padding_excluded() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(3, 6, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    expected = np.stack([states[i, : mask[i].sum()].mean(0) for i in range(3)])
    got = pool_text(torch.from_numpy(states), torch.from_numpy(mask), "mean").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    padded = states.copy()
    padded[mask == 0] = 1e3  # whatever sits under padding never counts
    np.testing.assert_allclose(pool_text(torch.from_numpy(padded), torch.from_numpy(mask), "mean").numpy(), expected,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pool_text(torch.from_numpy(states), torch.from_numpy(mask), "cls").numpy(),
                                  states[:, 0])
    with pytest.raises(ValueError, match=r"model\.arch\.text_pooling='max'"):
        pool_text(torch.from_numpy(states), torch.from_numpy(mask), "max")


def test_default_pooling_follows_how_the_text_encoder_was_trained(tmp_path: Path, processor: TextProcessor) -> None:
    assert trained_pooling(MINILM) == "mean"  # sentence-transformers' 1_Pooling/config.json says mean
    assert trained_pooling("sentence-transformers/all-MiniLM-L6-v2") == "mean"
    assert trained_pooling(str(tmp_path)) == "cls"  # a plain BERT folder
    module = tiny_module()
    assert module.model.arch.text_pooling == "mean"
    assert module.export_config()["architecture"]["fusion"]["text_pooling"] == "mean"  # exported encoders agree
    batch = fake_batch(processor, ["a red circle", "a blue square moving up"], [None, None])
    text = batch["text"]
    m = module.model
    states = m.text_states(text)
    keep = text["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize(m.vtc_text((states * keep).sum(1) / keep.sum(1)), dim=-1)
    torch.testing.assert_close(m.text_embedding(states, text["attention_mask"]), manual)
    assert tiny_module(text_pooling="cls").model.arch.text_pooling == "cls"
    with pytest.raises(ValueError, match=r"model.arch.text_pooling='max'"):
        tiny_module(text_pooling="max")


# ----------------------------------------------------------------------------------------------- lr groups


def test_lr_groups_per_part_without_decay_on_norms_biases_and_embeddings() -> None:
    model = tiny_module().model
    groups = video_param_groups(model, 1e-3, 0.05, {"text": 0.1, "frames": 0.5})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"text", "frames", "fusion", "text/no_decay", "frames/no_decay", "fusion/no_decay"}
    for name, group in by_name.items():
        part = name.split("/")[0]
        assert group["lr"] == pytest.approx(1e-3 * {"text": 0.1, "frames": 0.5, "fusion": 1.0}[part])
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each exactly once
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name in decayed:
        assert not name.endswith(".bias") and "norm" not in name.lower() and "embeddings." not in name, name
        assert not any(k in name for k in ("type_embed", "cls_token", "spatial_pos", "temporal_pos", "temperature"))
    assert "text_encoder.embeddings.word_embeddings.weight" not in decayed
    assert "text_encoder.encoder.layer.0.attention.self.query.weight" in decayed
    assert {names[id(p)].split(".")[0] for p in by_name["text"]["params"]} == {"text_encoder"}
    with pytest.raises(ValueError, match=r"model.lr_mult has unknown parts \['heads'\]"):
        video_param_groups(model, 1e-3, 0.05, {"heads": 2.0})
    with pytest.raises(ValueError, match=r"model.lr_mult must be >= 0"):
        video_param_groups(model, 1e-3, 0.05, {"text": -1.0})


# ----------------------------------------------------------------------------------------------- MVM teacher


def test_match_grid_pools_finer_grids_and_interpolates_coarser_ones() -> None:
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    expected = fine.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))  # 2x2 block means
    np.testing.assert_allclose(match_grid(torch.from_numpy(fine), 4).numpy(), expected, rtol=1e-5, atol=1e-6)
    a, b = 1.0, 5.0
    coarse = torch.tensor([[a, b], [a, b]]).view(1, 2, 2, 1)
    row = match_grid(coarse, 4)[0, 0, :, 0].numpy()  # half-pixel centres: a, 3a/4 + b/4, a/4 + 3b/4, b
    np.testing.assert_allclose(row, [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b], rtol=1e-6)
    same = torch.randn(1, 4, 4, 2)
    assert match_grid(same, 4) is same


def test_default_teacher_is_the_frame_init_checkpoint(tmp_path: Path) -> None:
    weights = save_moby(tmp_path / "moby.ckpt", "vit_tiny_patch16_224", VIT)
    module = tiny_module(frame_init=str(tmp_path / "moby.ckpt"))
    for k, v in weights.items():
        torch.testing.assert_close(module.teacher.backbone.state_dict()[k], v)
    assert module.model.mvm_head[-1].out_features == module.teacher.num_features


def test_any_image_encoder_as_teacher_frozen_eval_and_on_the_student_grid(tmp_path: Path,
                                                                          processor: TextProcessor) -> None:
    """A Swin teacher (16x16 tokens at stage 1, 8x8 at the end, its own mean/std) for a ViT student of 4x4 tokens."""
    save_moby(tmp_path / "swin.ckpt", "swin_tiny_patch4_window7_224", SWIN, mean=(0.4,) * 3, std=(0.2,) * 3)
    module = tiny_module(mvm_teacher=str(tmp_path / "swin.ckpt"), modality_dropout={"text": 0.3, "video": 0.3})
    teacher = module.teacher
    module.train()
    assert not teacher.training and not teacher.backbone.training
    frames = module.normalize(fake_batch(processor, ["a"] * 2, [None] * 2)["frames"])
    target = teacher(frames)
    assert target.shape == (2, 4 * 4 * 4, teacher.num_features)
    # independent: undo the student's normalization, apply the teacher's, run the Swin, 2x2-pool its 8x8 grid
    pixels = frames.flatten(0, 1) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        grid = teacher.backbone.forward_features((pixels - 0.4) / 0.2)
    assert grid.shape[1:3] == (8, 8)
    pooled = grid.reshape(8, 4, 2, 4, 2, -1).mean(dim=(2, 4)).reshape(2, 64, -1)
    torch.testing.assert_close(target, pooled, rtol=1e-4, atol=1e-5)

    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = module.pretrain_step(fake_batch(processor, ["a red circle", "blue square", "x", "y"], [None] * 4))
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    torch.optim.SGD(module.model.parameters(), lr=1.0).step()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(k.startswith("teacher.") for k in module.state_dict())  # resumes exactly


def test_without_teacher_or_frame_init_mvm_regresses_pixels_and_says_so(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mmpretrain.video.train.module"):
        module = tiny_module()
    assert module.teacher is None
    assert module.model.mvm_head[-1].out_features == 3 * 8 * 8
    assert "MVM regresses per-patch normalized pixels" in caplog.text


def test_a_video_checkpoint_is_refused_as_teacher(tmp_path: Path) -> None:
    video = tiny_module()
    ckpt = tmp_path / "video.ckpt"
    video.on_save_checkpoint(saved := {"state_dict": video.state_dict(), "hyper_parameters": dict(video.hparams)})
    torch.save(saved, ckpt)
    with pytest.raises(ValueError, match=r"model.mvm_teacher=.* is a video model"):
        tiny_module(mvm_teacher=str(ckpt))


# ----------------------------------------------------------------------------------------------- masking


def test_tube_masking_is_the_default() -> None:
    module = tiny_module()
    assert module.hparams.mvm_tube
    mask = module._frame_mask(3, 4, torch.Generator().manual_seed(0))
    assert torch.equal(mask, mask[:, :1].expand_as(mask)) and mask.any()


# ----------------------------------------------------------------------------------------------- negatives


PARAPHRASES = [  # (title, label, tags): every content twice, in other words
    ("a red circle moving left", "circle", ["red", "circle", "moving-left"]),
    ("the red circle drifts to the left", "circle", ["moving-left", "circle", "red"]),
    ("blue square slides up", "square", ["blue", "square", "moving-up"]),
    ("watch the blue square go upwards", "square", ["blue", "square", "moving-up"]),
    ("A  Green, Cross!", "", []),
    ("a green cross", "", []),
    ("yellow triangle heading down", "triangle", ["yellow", "triangle", "moving-down"]),
    ("a triangle in yellow heading towards the bottom", "triangle", ["yellow", "triangle", "moving-down"]),
]


def test_same_content_folds_titles_and_matches_labels_and_tag_sets() -> None:
    assert normalize_title("  A  Green, Cross! ") == normalize_title("a green cross") == "a green cross"
    titles, labels, tags = (list(x) for x in zip(*PARAPHRASES))
    same = same_content(titles, labels, tags)
    twin = torch.arange(8) ^ 1  # each sample's paraphrase
    assert same[torch.arange(8), twin].all() and same.diagonal().all()
    assert same.sum() == 16  # nothing else: different content, and empty labels / tags never match
    only_title = same_content(titles, labels, tags, keys=["title"])
    assert only_title.sum() == 8 + 2  # only the folded "green cross" pair
    with pytest.raises(ValueError, match=r"model.vtm_exclude has unknown keys \['colour'\]"):
        same_content(titles, keys=["colour"])
    with pytest.raises(ValueError, match=r"model.vtm_exclude has unknown keys"):
        tiny_module(vtm_exclude=["colour"])


def test_hard_negatives_never_pick_a_paraphrase(processor: TextProcessor, monkeypatch) -> None:
    titles, labels, tags = (list(x) for x in zip(*PARAPHRASES))
    same = same_content(titles, labels, tags)
    # the paraphrase is by far the most similar column: hard sampling would take it every time if allowed
    sim = torch.full((8, 8), -5.0)
    sim[torch.arange(8), torch.arange(8) ^ 1] = 10.0
    sim.fill_diagonal_(10.0)
    for seed in range(50):
        picks = sample_hard_negatives(sim, same=same, generator=torch.Generator().manual_seed(seed))
        assert not same[torch.arange(8), picks].any()

    drawn = []
    real = video_module.sample_hard_negatives

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(video_module, "sample_hard_negatives", spy)
    module = tiny_module()
    batch = fake_batch(processor, titles, [None] * 8) | {"title": titles, "label_name": labels, "tag_set": tags}
    for seed in range(5):
        module.pretrain_step(batch, generator=torch.Generator().manual_seed(seed), dropout=False)
    assert len(drawn) == 10
    for picks in drawn:
        assert (picks >= 0).all() and not same[torch.arange(8), picks].any()


def test_eval_hardest_text_is_never_a_paraphrase() -> None:
    titles, labels, tags = (list(x) for x in zip(*PARAPHRASES))
    sim = np.full((8, 8), -1.0)
    sim[np.arange(8), np.arange(8) ^ 1] = 0.9  # the paraphrase is the most similar other text
    sim[np.arange(8), (np.arange(8) + 2) % 8] = 0.5
    hardest, random = _negative_texts(sim, titles, same_content(titles, labels, tags).numpy())
    assert hardest.tolist() == ((np.arange(8) + 2) % 8).tolist()
    assert not same_content(titles, labels, tags).numpy()[np.arange(8), random].any()


# ----------------------------------------------------------------------------------------------- validation


def test_seeded_validation_logs_identical_metrics(video_demo: dict[str, Path], tmp_path: Path) -> None:
    """Two runs with one seed log the same validation metrics, and validating again after the global random state
    moved on (as training moves it) gives them again: every validation draw comes from its own seeded generator."""
    runs, objects = [], None
    for name in ("a", "b"):
        cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), "trainer.max_epochs=1", "seed=3",
                                         "trainer.limit_train_batches=2"], tmp_path / name)
        metrics, objects = train(cfg)
        runs.append({k: float(v) for k, v in metrics.items() if k.startswith("val/")})
    assert {"val/mtm", "val/mvm", "val/vtm", "val/vtc", "val/t2v_r1"} <= set(runs[0])
    assert runs[0] == runs[1]
    lrs = {k: float(v) for k, v in metrics.items() if k.startswith("lr-AdamW/")}  # one learning rate per group
    assert set(lrs) == {f"lr-AdamW/{p}{s}" for p in ("text", "frames", "fusion") for s in ("", "/no_decay")}
    assert lrs["lr-AdamW/text"] == pytest.approx(0.1 * lrs["lr-AdamW/fusion"])  # the demo's text lr_mult
    trainer, module, data = objects["trainer"], objects["model"], objects["datamodule"]
    again = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        np.random.seed(seed)
        again.append(trainer.validate(module, datamodule=data, verbose=False)[0])
    assert again[0] == again[1]
    assert again[0]["val/mtm"] == pytest.approx(runs[0]["val/mtm"])


def test_frame_encoder_and_teacher_from_a_moby_checkpoint_of_any_architecture(tmp_path: Path,
                                                                              video_demo: dict[str, Path]) -> None:
    """`model.frame_encoder=null`: the demo starts from whatever backbone its MoBY run trained."""
    weights = save_moby(tmp_path / "swin.ckpt", "swin_tiny_patch4_window7_224", SWIN)
    module = tiny_module(frame_encoder=None, frame_init=str(tmp_path / "swin.ckpt"))
    for k, v in weights.items():
        torch.testing.assert_close(module.model.frame_encoder.state_dict()[k], v)
        torch.testing.assert_close(module.teacher.backbone.state_dict()[k], v)
    architecture = module.export_config()["architecture"]["frame_encoder"]
    assert architecture == {"name": "swin_tiny_patch4_window7_224", "kwargs": SWIN}
    with pytest.raises(ValueError, match=r"model.frame_encoder=null .* model.frame_init, which is unset"):
        tiny_module(frame_encoder=None)

    cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), "debug=fdr", "model.frame_encoder=null",
                                     f"model.frame_init={tmp_path / 'swin.ckpt'}"], tmp_path)
    metrics, objects = train(cfg)
    assert objects["model"].teacher is not None and np.isfinite(float(metrics["train/mvm"]))
