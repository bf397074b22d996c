"""Evaluating a frozen encoder: feature extraction for kNN, and the paper's linear probe."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmpretrain.training import scaled_lr


@torch.inference_mode()
def extract_features(
    backbone: nn.Module, loader: DataLoader, device: str | torch.device = "cpu", progress: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of every sample of a labeled loader, in loader order, on the CPU.

    `progress`: the label of a progress bar over the batches (None: no bar).
    """
    backbone.eval().to(device)
    features, labels = [], []
    for batch in tqdm(loader, desc=progress, unit="batch", disable=progress is None, leave=False):
        features.append(backbone(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


class LinearProbe(pl.LightningModule):
    """A linear classifier on a frozen backbone (kept in eval mode): MoBY's linear evaluation recipe.

    SGD with Nesterov momentum 0.9, lr 1.0 per 512 images scaled by the global batch, no weight decay,
    label smoothing 0.1, cosine decay per step.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        base_lr: float = 1.0,
        lr_ref_batch: int = 512,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone.requires_grad_(False)
        self.head = nn.Linear(backbone.num_features, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(images)
        return self.head(features.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        ranked = logits.argsort(dim=1, descending=True)
        hit = ranked == batch["label"].unsqueeze(1)
        n = logits.shape[0]
        self.log("val/top1", 100 * hit[:, 0].float().mean(), batch_size=n, sync_dist=True, prog_bar=True)
        self.log("val/top5", 100 * hit[:, :5].any(1).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        global_batch = self.trainer.train_dataloader.batch_size * self.trainer.world_size
        lr = scaled_lr(hp.base_lr, global_batch, hp.lr_ref_batch)
        optimizer = torch.optim.SGD(
            self.head.parameters(), lr=lr, momentum=hp.momentum, nesterov=True, weight_decay=hp.weight_decay
        )
        scheduler = LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
