"""Training callbacks specific to two-view self-supervised learning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torchvision.utils import make_grid, save_image

from mmpretrain.data.transforms import denormalize

log = logging.getLogger(__name__)


class ViewPairGrid(pl.Callback):
    """Save (and send to W&B) one grid of augmented view pairs from the first batch: a look at what the model sees.

    Row 2i holds view 1 (always blurred), row 2i+1 view 2 (sometimes solarized); columns are images.
    """

    def __init__(self, num_pairs: int = 8, filename: str = "view_pairs.png") -> None:
        self.num_pairs = num_pairs
        self.filename = filename
        self.done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self.done or not trainer.is_global_zero or "views" not in batch:
            return
        self.done = True
        hp = pl_module.hparams
        views = [denormalize(v[: self.num_pairs].detach().float().cpu(), hp.mean, hp.std) for v in batch["views"]]
        grid = make_grid(torch.cat(views), nrow=views[0].shape[0], padding=2)
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="train/view_pairs", images=[str(path)], caption=["top: view 1, bottom: view 2"])
        log.info("augmented view pairs written to %s", path)
