"""MoBY (MoCo v2 + BYOL) as a thin LightningModule over the pure parts in this package."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from mmpretrain.errors import ConfigError
from mmpretrain.models import MLPHead, backbone_has_batchnorm, create_backbone, state_fits
from mmpretrain.ssl.knn import knn_accuracy
from mmpretrain.ssl.losses import moby_loss
from mmpretrain.ssl.momentum import cosine_momentum, update_momentum
from mmpretrain.ssl.queue import KeyQueue
from mmpretrain.training import (
    adamw_kernel,
    check_choice,
    check_range,
    gather_unique,
    global_batch,
    param_groups_weight_decay,
    scaled_lr,
    warmup_cosine_schedule,
)


class MoBY(pl.LightningModule):
    """Online encoder + projector + predictor against a momentum encoder + projector and two key queues.

    Faithful to the official recipe (Transformer-SSL `models/moby.py`), with its two known bugs fixed: the
    momentum schedule is a function of the restored global step (not a counter reset on resume), and the
    relative-position bias tables are exempt from weight decay. Checkpoints hold the online weights under
    `backbone.`, the target under `target_backbone.`, and both queues with their pointers.

    Args:
        backbone: timm model name; `backbone_kwargs` override its architecture (image size, widths...).
        drop_path_rate / target_drop_path_rate: stochastic depth, 0.2 online and 0.0 for the target.
        proj_hidden_dim / proj_dim: projector in→4096→256 and predictor 256→4096→256.
        queue_len: negatives per queue (4096); must be divisible by the global batch.
        temperature: InfoNCE temperature (0.2).
        momentum_start / momentum_end: EMA momentum, cosine from 0.99 to 1 over all optimizer steps.
        base_lr / lr_ref_batch: 1e-3 per 512 images, scaled by the global batch; so are warmup_start_lr and
            min_lr, as the official code scales them.
        warmup_epochs: linear warmup, then cosine per step.
        optimizer: the optimizer without parameters and lr (the recipe's ``model.optimizer`` node with
            ``_partial_: true``; default AdamW, weight decay 0.05, betas (0.9, 0.999)), see :meth:`build_optimizer`.
        warmup_fraction: the warmup as a share of all optimizer steps instead (budgeted runs: ``trainer.max_steps``
            or :class:`~mmpretrain.training.TimeBudget`, whose length in epochs depends on the set's size).
        knn_k / knn_temperature: the weighted-kNN monitor (20, 0.07).
        image_size / mean / std / interpolation / crop_pct: preprocessing, stored so an exported encoder reproduces it.
        init: the checkpoint a continued pretraining starts from, recorded here; `mmpretrain-train` loads it
            through the hub and :meth:`initialize_from` (model code does no I/O).
    """

    def __init__(
        self,
        backbone: str = "swin_tiny_patch4_window7_224",
        backbone_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float = 0.2,
        target_drop_path_rate: float = 0.0,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        queue_len: int = 4096,
        temperature: float = 0.2,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
        base_lr: float = 1e-3,
        lr_ref_batch: int = 512,
        warmup_start_lr: float = 5e-7,
        min_lr: float = 5e-6,
        warmup_epochs: float = 5,
        warmup_fraction: float | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        init: str | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, weight_decay=0.05,
                                                                betas=(0.9, 0.999))
        self.save_hyperparameters(ignore=["optimizer"])
        self.hparams["optimizer"] = _optimizer_settings(self.optimizer_factory)
        check_range({"model.drop_path_rate": drop_path_rate, "model.target_drop_path_rate": target_drop_path_rate},
                    0.0, 1.0, high_open=True)
        check_range({"model.momentum_start": momentum_start, "model.momentum_end": momentum_end}, 0.0, 1.0)
        check_range({f"model.{k}": v for k, v in {"proj_hidden_dim": proj_hidden_dim, "proj_dim": proj_dim,
                                                   "queue_len": queue_len, "lr_ref_batch": lr_ref_batch,
                                                   "knn_k": knn_k, "image_size": image_size}.items()}, 1)
        check_range({"model.temperature": temperature, "model.knn_temperature": knn_temperature,
                     "model.base_lr": base_lr}, 0.0, low_open=True)
        check_range({"model.warmup_start_lr": warmup_start_lr, "model.min_lr": min_lr,
                     "model.warmup_epochs": warmup_epochs,
                     "model.optimizer.weight_decay": self.hparams.optimizer.get("weight_decay")}, 0.0)
        check_range({"model.warmup_fraction": warmup_fraction}, 0.0, 1.0, high_open=True)
        check_choice(interpolation, INTERPOLATIONS, "model.interpolation")
        backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone = create_backbone(backbone, drop_path_rate, **backbone_kwargs)
        self.target_backbone = create_backbone(backbone, target_drop_path_rate, **backbone_kwargs)
        feat_dim = self.backbone.num_features
        self.projector = MLPHead(feat_dim, proj_hidden_dim, proj_dim)
        self.target_projector = MLPHead(feat_dim, proj_hidden_dim, proj_dim)
        self.predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim)
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)
        self.queue1 = KeyQueue(proj_dim, queue_len)
        self.queue2 = KeyQueue(proj_dim, queue_len)
        self.concat_views = not backbone_has_batchnorm(self.backbone)
        self._val_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def initialize_from(
        self, backbone: Mapping[str, torch.Tensor], training_state: Mapping[str, torch.Tensor], source: str
    ) -> dict[str, str]:
        """Continued pretraining: start from a checkpoint's weights instead of random ones (``model.init``).

        The online backbone takes ``backbone`` (timm layout, loaded strict). The target backbone, projector,
        target projector, predictor and the two queues take ``training_state`` (this module's names, see
        :func:`mmpretrain.hub.moby_training_state`) where it holds them with this model's shapes; otherwise the
        target backbone and projector copy the online ones and the heads and queues stay fresh.

        Returns:
            ``part -> "restored"`` or ``"fresh (why)"``, for the log.

        Raises:
            ConfigError: ``backbone`` does not fit ``model.backbone`` / ``model.backbone_kwargs``.
        """
        problem = state_fits(self.backbone, backbone)
        if problem:
            raise ConfigError(f"model.init={source}: its backbone does not fit model.backbone={self.hparams.backbone} "
                              f"(model.backbone_kwargs={dict(self.hparams.backbone_kwargs or {})}): {problem}")
        self.backbone.load_state_dict(backbone, strict=True)
        report = {"backbone": "restored"}
        for name in ("projector", "predictor", "queue1", "queue2"):
            report[name] = _load_part(getattr(self, name), f"{name}.", training_state)
        for target, online in (("target_backbone", "backbone"), ("target_projector", "projector")):
            report[target] = _load_part(getattr(self, target), f"{target}.", training_state)
            if report[target] != "restored":
                getattr(self, target).load_state_dict(getattr(self, online).state_dict())
                report[target] += f", a copy of the {online}"
        return report

    @property
    def embed_dim(self) -> int:
        return self.backbone.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the online encoder: what downstream tasks embed with."""
        return self.backbone(images)

    def current_momentum(self) -> float:
        """EMA momentum at the trainer's global step over its last step (a budget's), so a resumed run continues
        the schedule."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return cosine_momentum(self.global_step, total, self.hparams.momentum_start, self.hparams.momentum_end)

    def _encode_views(self, encoder: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One batched pass when the encoder has no BatchNorm (Swin, ViT: identical result, faster), else two."""
        if self.concat_views:
            return encoder(torch.cat([x1, x2])).chunk(2)
        return encoder(x1), encoder(x2)

    def moby_step(
        self, x1: torch.Tensor, x2: torch.Tensor, momentum: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EMA update, keys from the target branch, predictions from the online branch, and the loss.

        Returns the loss and both keys (to enqueue after the loss has used the current queues).
        """
        with torch.no_grad():
            update_momentum(self.backbone, self.target_backbone, momentum)
            update_momentum(self.projector, self.target_projector, momentum)
            f1, f2 = self._encode_views(self.target_backbone, x1, x2)
            key_1 = F.normalize(self.target_projector(f1), dim=1)
            key_2 = F.normalize(self.target_projector(f2), dim=1)
        h1, h2 = self._encode_views(self.backbone, x1, x2)
        pred_1 = F.normalize(self.predictor(self.projector(h1)), dim=1)
        pred_2 = F.normalize(self.predictor(self.projector(h2)), dim=1)
        loss = moby_loss(
            pred_1, pred_2, key_1, key_2,
            self.queue1.keys.clone(), self.queue2.keys.clone(), self.hparams.temperature,
        )
        return loss, key_1, key_2

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x1, x2 = batch["views"]
        self.queue1.check_batch(x1.shape[0] * self.trainer.world_size)
        momentum = self.current_momentum()
        loss, key_1, key_2 = self.moby_step(x1, x2, momentum)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MoBY loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}); "
                "stopping before any checkpoint is written, the last good one is kept"
            )
        self.queue1.enqueue(self._gather(key_1))
        self.queue2.enqueue(self._gather(key_2))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x1.shape[0])
        self.log("train/momentum", momentum, on_step=True, on_epoch=False, batch_size=x1.shape[0])
        return loss

    def _gather(self, keys: torch.Tensor) -> torch.Tensor:
        """Keys of every rank, rank order, so each process enqueues the same global batch."""
        if self.trainer.world_size == 1:
            return keys
        return self.all_gather(keys).flatten(0, 1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        features = self.backbone(batch["image"])
        self._val_outputs.setdefault(dataloader_idx, []).append(
            (features.float(), batch["label"], batch["index"])
        )

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, {}
        if len(outputs) < 2:
            return
        bank, query = (self._gathered(outputs[i]) for i in (0, 1))
        scores = knn_accuracy(*bank, *query, k=self.hparams.knn_k, temperature=self.hparams.knn_temperature)
        self.log("val/knn_top1", scores["top1"], prog_bar=True, sync_dist=False)
        self.log("val/knn_top5", scores["top5"], sync_dist=False)

    def _gathered(self, chunks: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of every rank, each sample once (the distributed sampler pads with repeats)."""
        features, labels, index = (torch.cat(parts) for parts in zip(*chunks))
        return gather_unique(self, index, features, labels)

    def build_optimizer(self, lr: float, precision: str = "32-true") -> torch.optim.Optimizer:
        """The ``model.optimizer`` node over the online branch, with MoBY's no-decay groups and learning rate ``lr``.

        The node's ``weight_decay`` applies to weights; norms, biases and position tables get none. An Adam or AdamW
        that names no kernel gets the fused one, several times faster than the per-tensor loop on CPU and GPU; under
        mixed precision (``precision``, Lightning's setting) the foreach kernel instead, see :func:`adamw_kernel`.
        """
        settings = self.hparams.optimizer
        groups = param_groups_weight_decay([self.backbone, self.projector, self.predictor],
                                           settings.get("weight_decay", 0.0))
        adam = getattr(self.optimizer_factory, "func", self.optimizer_factory) in (torch.optim.Adam, torch.optim.AdamW)
        kernel = adamw_kernel(precision) if adam and not {"fused", "foreach"} & set(settings) else {}
        return self.optimizer_factory(groups, lr=lr, **kernel)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        batch = global_batch(self)
        lr, start_lr, min_lr = (scaled_lr(x, batch, hp.lr_ref_batch) for x in (hp.base_lr, hp.warmup_start_lr,
                                                                                  hp.min_lr))
        optimizer = self.build_optimizer(lr, str(self.trainer.precision))
        return warmup_cosine_schedule(self, optimizer, lr, min_lr, hp.warmup_epochs, start_lr, hp.warmup_fraction)


def _optimizer_settings(factory: Callable[..., torch.optim.Optimizer]) -> dict[str, Any]:
    """An optimizer factory as plain data (class path and keyword arguments), for the checkpoint's hyper-parameters:
    the factory itself would make the checkpoint unloadable with ``weights_only``."""
    target = getattr(factory, "func", factory)
    keywords = dict(getattr(factory, "keywords", None) or {})
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in keywords.items()}
    return {"_target_": f"{target.__module__}.{target.__qualname__}", **plain}


def _load_part(module: nn.Module, prefix: str, state: Mapping[str, torch.Tensor]) -> str:
    """Load the ``prefix`` entries of ``state`` into ``module`` when they fit it exactly; say what happened."""
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        return "fresh (not in the checkpoint)"
    problem = state_fits(module, part)
    if problem:
        return f"fresh (does not fit: {problem})"
    module.load_state_dict(part, strict=True)
    return "restored"
