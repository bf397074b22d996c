"""Fine-tune a pretrained video–text fusion model for video classification or multi-label tagging.

A linear head reads the fusion CLS over frames, title and OCR. A video without title or OCR is fused from its frames
alone (its text hidden through the key-padding mask), and modality dropout hides the text of some training videos
so that case is learned. Validation gathers every video's scores once, logs the metrics of
:mod:`mmpretrain.video.eval.metrics`, tunes per-tag thresholds (a buffer, so they travel in the checkpoint) and writes a
per-class / per-tag report. The pure parts (class weights, metric summaries, reports, prediction records) live in
:mod:`mmpretrain.video.eval.tasks`; :class:`VideoFinetune` wires them into Lightning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader

from mmpretrain._io import atomic_path, write_text_atomic
from mmpretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, FrameNormalize
from mmpretrain.errors import ConfigError
from mmpretrain.models import build_video_model, tokenizer_from_json
from mmpretrain.training import (
    adamw_kernel,
    gather_unique,
    global_batch,
    param_groups_weight_decay,
    scaled_lr,
    warmup_cosine_schedule,
)
from mmpretrain.video.eval.metrics import (
    per_class_report,
    tune_thresholds,
)
from mmpretrain.video.eval.tasks import (
    check_task,
    check_weighting,
    class_weights,
    classification_metrics,
    json_safe,
    label_counts,
    prediction_records,
    tag_counts,
    tag_pos_weights,
    tagging_metrics,
    tagging_report,
)
from mmpretrain.video.io.datamodule import VideoDataModule

__all__ = ["VideoFinetune", "log_report_tables", "write_predictions"]

# heads of pretraining that a classifier never calls: dropped so they stay out of the optimizer, DDP's
# unused-parameter check and the checkpoint (the MTM head alone is vocabulary x width)
_PRETRAINING_HEADS = ("vtc_video", "vtc_text", "vtm_head", "mtm_head", "mvm_head")



def log_report_tables(loggers: Sequence[Any], key: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Send report rows as a ``wandb.Table`` to every W&B logger; other loggers have no tables and are skipped."""
    if not rows:
        return
    columns = list(rows[0])
    data = [[json_safe(row[c]) for c in columns] for row in rows]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=data)


class VideoFinetune(pl.LightningModule):
    """Video classification (softmax, cross-entropy) or multi-label tagging (sigmoid, BCE) on the fused CLS.

    The constructor reads no file: the model is built by the models factory from ``video_model`` and
    :func:`~mmpretrain.video.train.build.build_finetune` (the configs' target) loads the pretrained weights.

    Args:
        task: ``classify`` (one ``label`` per video) or ``tagging`` (multi-hot ``tags``).
        video_model: the model's architecture, preprocessing and tokenizer (a video checkpoint's config).
        pretrained: the video pretraining checkpoint the weights came from (named in errors; checkpoints drop it).
        num_classes / class_names, num_tags / tag_names: the outputs; filled from the datamodule's ``labels`` /
            ``tags`` at setup when null, and saved in the checkpoint so predictions name them.
        head_dropout: dropout before the linear head.
        modality_dropout: probability of hiding a training video's text, so videos without title or OCR are
            predicted well.
        freeze_backbone: train the head only (the pretrained model stays in eval mode).
        class_weighting: ``none``, ``inverse_sqrt`` or ``inverse``: cross-entropy class weights or BCE
            ``pos_weight`` from the training manifest's counts (:func:`class_weights`, :func:`tag_pos_weights`).
        lr / lr_ref_batch / backbone_lr_scale / min_lr / warmup_epochs / weight_decay / betas: AdamW with linear
            warmup and cosine decay per step; ``lr`` (the head's) is quoted per ``lr_ref_batch`` clips and the
            pretrained parts get ``lr * backbone_lr_scale``.
        top_k: labels or tags listed per video by :meth:`predict_step`.
    """

    def __init__(
        self,
        task: str = "classify",
        video_model: Mapping[str, Any] | None = None,
        pretrained: str | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        num_tags: int | None = None,
        tag_names: Sequence[str] | None = None,
        head_dropout: float = 0.1,
        modality_dropout: float = 0.1,
        freeze_backbone: bool = False,
        class_weighting: str = "none",
        lr: float = 1e-4,
        lr_ref_batch: int = 32,
        backbone_lr_scale: float = 0.1,
        min_lr: float = 1e-6,
        warmup_epochs: float = 1,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        top_k: int = 5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_task(task)
        check_weighting(class_weighting)
        if not 0 <= modality_dropout <= 1:
            raise ConfigError(f"model.modality_dropout={modality_dropout} must be in [0, 1]")
        if backbone_lr_scale <= 0:
            raise ConfigError(f"model.backbone_lr_scale={backbone_lr_scale} must be > 0; freeze with freeze_backbone")
        if video_model is None:
            raise ValueError("VideoFinetune needs video_model (a video checkpoint's config): build it with "
                             "mmpretrain.video.build_finetune, which reads model.pretrained or model.architecture")
        other = "num_tags" if task == "classify" else "num_classes"
        if self.hparams[other] is not None:
            raise ConfigError(f"model.{other} is not used by model.task={task!r}; leave it null")
        config = dict(video_model)
        model = build_video_model(config["architecture"])
        for name in _PRETRAINING_HEADS:
            setattr(model, name, nn.Identity())
        model.temperature.requires_grad_(False)
        self.model = model
        self.video_config = config
        self.tokenizer = tokenizer_from_json(config["tokenizer"])
        pre = config["preprocessing"]
        mean, std = pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD)
        self.normalize = FrameNormalize(mean, std)
        self.register_buffer("class_weight", None, persistent=False)
        self.register_buffer("pos_weight", None, persistent=False)
        if freeze_backbone:
            self.model.requires_grad_(False)
        self.head: nn.Module | None = None
        names = class_names if task == "classify" else tag_names
        size = num_classes if task == "classify" else num_tags
        if names is not None or size is not None:
            self._set_outputs(list(names) if names is not None else None, size)
        self.predict_top_k = int(top_k)
        self._outputs: list[tuple[torch.Tensor, ...]] = []

    def initialize_from(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the video model's weights (a pretraining checkpoint's), strict except the pretraining heads.

        Raises:
            ConfigError: the weights do not fit the architecture, naming ``model.pretrained``.
        """
        dropped = tuple(f"{name}." for name in _PRETRAINING_HEADS)
        kept = {k: v for k, v in state.items() if not k.startswith(dropped)}
        try:
            self.model.load_state_dict(kept, strict=True)
        except RuntimeError as err:
            raise ConfigError(f"model.pretrained={self.hparams.pretrained!r}: weights do not fit its video model: "
                              f"{err}") from err

    # ------------------------------------------------------------------------------------------- outputs

    @property
    def task(self) -> str:
        return self.hparams.task

    @property
    def names(self) -> list[str]:
        """Class (or tag) names in output order; indices as strings when the names were never given."""
        key = "class_names" if self.task == "classify" else "tag_names"
        names = self.hparams[key]
        return list(names) if names is not None else [str(i) for i in range(self.head[-1].out_features)]

    def _set_outputs(self, names: list[str] | None, size: int | None) -> None:
        """Create the head (and the tag thresholds) once; later calls must agree with it, naming the key."""
        names_key, size_key = ("class_names", "num_classes") if self.task == "classify" else ("tag_names", "num_tags")
        if names is not None and size is not None and len(names) != size:
            raise ConfigError(f"model.{size_key}={size} but the data has {len(names)}: {names[:10]}")
        known = self.hparams[names_key]
        if names is not None and known is not None and list(known) != names:
            raise ConfigError(f"model.{names_key} {list(known)[:10]} differ from the data's {names[:10]}")
        size = len(names) if names is not None else size
        if self.head is None:
            self.head = nn.Sequential(nn.Dropout(self.hparams.head_dropout), nn.Linear(self.model.width, size))
            if self.task == "tagging":
                self.register_buffer("thresholds", torch.full((size,), 0.5))
        elif self.head[-1].out_features != size:
            raise ConfigError(f"model.{size_key}={self.head[-1].out_features} but the data has {size}")
        self.hparams[size_key] = size
        if names is not None:
            self.hparams[names_key] = names

    def check_data(self, datamodule: Any) -> None:
        """Refuse data the model cannot read as it was pretrained: tokenizer, frame size, clip length, targets."""
        if not isinstance(datamodule, VideoDataModule):
            return
        hp, pre = datamodule.hparams, self.video_config["preprocessing"]
        source = f"model.pretrained={self.hparams.pretrained!r}" if self.hparams.pretrained else "the model"
        if "image_size" in pre and int(hp.image_size) != int(pre["image_size"]):
            raise ConfigError(f"data.image_size={hp.image_size} but {source} was trained at {pre['image_size']} px")
        if int(hp.num_frames) > self.model.num_frames:
            raise ConfigError(f"data.num_frames={hp.num_frames} but {source} takes at most {self.model.num_frames}")
        data_tok = datamodule.processor.tokenizer
        same = data_tok.get_vocab() == self.tokenizer.get_vocab() and all(
            getattr(data_tok, k) == getattr(self.tokenizer, k) for k in ("cls_token_id", "sep_token_id", "pad_token_id")
        )
        if not same:
            raise ConfigError(f"data.tokenizer={hp.tokenizer!r} is not the tokenizer {source} was trained with")
        if self.task == "classify" and datamodule.labels is None:
            raise ConfigError("model.task=classify needs class labels: set data.with_labels=true")
        if self.task == "tagging" and datamodule.tags is None:
            raise ConfigError("model.task=tagging needs tags: set data.with_tags=true")

    def setup(self, stage: str) -> None:
        """Size the head from the datamodule's vocabulary and weight the loss by the training counts."""
        datamodule = self.trainer.datamodule
        self.check_data(datamodule)
        names = getattr(datamodule, "labels" if self.task == "classify" else "tags", None)
        if names is not None:
            self._set_outputs(list(names), None)
        if self.head is None:
            key = "num_classes" if self.task == "classify" else "num_tags"
            raise ConfigError(f"model.{key} is null and the datamodule provides no {key[4:]} to size the head")
        records = getattr(datamodule, "train_records", None)
        from_shards = getattr(getattr(datamodule, "hparams", None), "shards", None)
        if stage == "fit" and self.hparams.class_weighting != "none" and from_shards:
            raise ConfigError(f"model.class_weighting={self.hparams.class_weighting} needs the training label counts, "
                              "which data.shards does not index; use a manifest or model.class_weighting=none")
        if stage == "fit" and records and names is not None:
            mode = self.hparams.class_weighting
            if self.task == "classify":
                self.class_weight = class_weights(label_counts(records, names), mode)
            else:
                self.pos_weight = tag_pos_weights(tag_counts(records, names), len(records), mode)

    # ------------------------------------------------------------------------------------------- forward

    def train(self, mode: bool = True) -> VideoFinetune:
        """Keep a frozen backbone in eval mode (no dropout, no drop path) whatever Lightning asks."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.model.eval()
        return self

    def features(self, batch: Mapping[str, Any], text_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The fused CLS ``(B, width)``; ``text_keep`` (default ``has_text``) False fuses a video from frames alone."""
        text, m = batch["text"], self.model
        keep = (text["has_text"] if text_keep is None else text_keep).bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.freeze_backbone):
            return m.encode_fused(self.normalize(batch["frames"]), text, text_keep=keep)

    def forward(self, batch: Mapping[str, Any], text_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, classes or tags)``."""
        return self.head(self.features(batch, text_keep))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (classify) or per-tag sigmoid probabilities (tagging)."""
        logits = logits.float()
        return logits.softmax(-1) if self.task == "classify" else logits.sigmoid()

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Weighted cross-entropy ignoring videos without a label (-1), or BCE with ``pos_weight`` over tags."""
        logits = logits.float()
        if self.task == "tagging":
            return F.binary_cross_entropy_with_logits(logits, batch["tags"].float(), pos_weight=self.pos_weight)
        labels = batch["label"]
        if not (labels >= 0).any():
            return logits.sum() * 0
        return F.cross_entropy(logits, labels, weight=self.class_weight, ignore_index=-1)

    def _targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["label"] if self.task == "classify" else batch["tags"]

    # ------------------------------------------------------------------------------------------- Lightning

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        keep = batch["text"]["has_text"].bool()
        if self.hparams.modality_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.hparams.modality_dropout)
        loss = self.loss(self(batch, keep), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {loss.item()} at global step {self.global_step} "
                                     f"(epoch {self.current_epoch})")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(keep))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self(batch)
        size = logits.shape[0]
        self.log(f"{stage}/loss", self.loss(logits, batch), on_epoch=True, batch_size=size, sync_dist=True)
        self._outputs.append((self.scores(logits), self._targets(batch), batch["index"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def _gathered(self, chunks: list[tuple[torch.Tensor, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and targets of every rank, each video once (the distributed sampler pads with repeats)."""
        scores, targets, index = (torch.cat(parts) for parts in zip(*chunks))
        scores, targets = gather_unique(self, index, scores, targets)
        return scores.cpu().numpy(), targets.cpu().numpy()

    def _evaluate(self, stage: str) -> None:
        """Metrics over the whole split; on validation (not the sanity check) also tune thresholds and report."""
        chunks, self._outputs = self._outputs, []
        if not chunks:
            return
        scores, targets = self._gathered(chunks)
        final = not self.trainer.sanity_checking
        if self.task == "classify":
            labelled = targets >= 0
            if not labelled.any():
                return
            scores, targets = scores[labelled], targets[labelled]
            metrics = classification_metrics(scores, targets)
            rows = per_class_report(scores, targets, self.names)
        else:
            targets = targets > 0.5
            if stage == "val" and final:
                self.thresholds.copy_(torch.from_numpy(tune_thresholds(scores, targets)).to(self.thresholds))
            thresholds = self.thresholds.cpu().double().numpy()
            metrics = tagging_metrics(scores, targets, thresholds)
            rows = tagging_report(scores, targets, self.names, thresholds)
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in ("top1", "mAP"), sync_dist=False)
        if final:
            self._report(stage, metrics, rows)

    def _report_dir(self) -> Path:
        """The logger's folder (``trainer.log_dir``, a collective call), else the trainer's ``default_root_dir``."""
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _report(self, stage: str, metrics: dict[str, float], rows: list[dict[str, Any]]) -> None:
        """Write ``<log_dir>/<stage>_report.json`` (overwritten each evaluation) and a W&B table where W&B logs."""
        folder = self._report_dir()
        if not self.trainer.is_global_zero:
            return
        report = {"task": self.task, "stage": stage, "epoch": self.current_epoch, "global_step": self.global_step,
                  "metrics": metrics, "classes" if self.task == "classify" else "tags": rows}
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / f"{stage}_report.json", json.dumps(json_safe(report), indent=2) + "\n")
        log_report_tables(self.loggers, f"{stage}/report", rows)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """JSON-ready records: each video's ``predict_top_k`` labels or tags with scores (and tags over threshold)."""
        scores = self.scores(self(batch)).cpu().numpy()
        thresholds = self.thresholds.cpu().double().numpy() if self.task == "tagging" else None
        return prediction_records(batch["id"], scores, self.names, self.task, self.predict_top_k, thresholds)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-contained: the architecture and tokenizer replace the pretraining reference."""
        hparams = dict(checkpoint["hyper_parameters"])
        hparams.update(pretrained=None, random_init=False, architecture=None, video_model=self.video_config)
        checkpoint["hyper_parameters"] = hparams

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        batch = global_batch(self)
        lr, min_lr = scaled_lr(hp.lr, batch, hp.lr_ref_batch), scaled_lr(hp.min_lr, batch, hp.lr_ref_batch)
        no_decay = ("temporal_pos", "spatial_pos")
        groups = []
        for module, scale in ((self.head, 1.0), (self.model, hp.backbone_lr_scale)):
            for group in param_groups_weight_decay([module], hp.weight_decay, no_decay):
                if group["params"]:
                    groups.append({**group, "lr": lr * scale})
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), **adamw_kernel(self.trainer.precision))
        return warmup_cosine_schedule(self, optimizer, lr, min_lr, hp.warmup_epochs)


# ----------------------------------------------------------------------------------------------- predictions


def _prediction_loader(data: pl.LightningDataModule | DataLoader) -> DataLoader:
    """A loader to predict: the datamodule's ``predict_dataloader`` if it has one, else its validation split."""
    if isinstance(data, DataLoader):
        return data
    return data.predict_dataloader() if is_overridden("predict_dataloader", data) else data.val_dataloader()


def write_predictions(
    trainer: pl.Trainer,
    module: VideoFinetune,
    data: pl.LightningDataModule | DataLoader,
    path: str | Path,
    top_k: int = 5,
) -> int:
    """Predict ``data`` and write JSON Lines, one video a line; returns the number of videos written.

    Classify lines are ``{"id", "labels": [{"label", "score"}, ...]}``; tagging lines are ``{"id", "tags":
    [{"tag", "score"}, ...], "predicted": [tags at or above their tuned thresholds]}``. A datamodule without a
    ``predict_dataloader`` is predicted on its validation split. Runs in one process, so every video is written.
    """
    if trainer.world_size > 1:
        raise ConfigError("write_predictions runs in one process; use a trainer with devices=1")
    if not isinstance(data, DataLoader):
        data.setup("predict")
        module.check_data(data)
    loader = _prediction_loader(data)
    previous, module.predict_top_k = module.predict_top_k, int(top_k)
    try:
        batches = trainer.predict(module, dataloaders=loader)
    finally:
        module.predict_top_k = previous
    records = [record for batch in batches or [] for record in batch]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)
