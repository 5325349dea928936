"""Stage 1: the coarse ViT/DPT model, trained with the HDN loss alone (paper: AdamW 5e-5, wd 1e-4, lr x0.6 after
5 epochs without validation improvement, seed 42)."""

from __future__ import annotations

import os

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..hdn_loss import hdn_loss
from ..progress import Cancel, Progress
from .common import TrainSettings, fit

COARSE_SETTINGS = TrainSettings(lr=5e-5, weight_decay=1e-4, plateau_factor=0.6, plateau_patience=5)


def coarse_loss(model: nn.Module, batch: dict) -> Tensor:
    """HDN loss of the model's map for ``batch["image"]`` against ``batch["depth"]`` on ``batch["mask"]``."""
    return hdn_loss(model(batch["image"]), batch["depth"], batch["mask"])


def train_coarse(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    *,
    settings: TrainSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **overrides,
) -> list[dict]:
    """Train ``model`` (a CoarseDepthModel) in place; ``overrides`` change :data:`COARSE_SETTINGS` fields
    (``epochs=``, ``batch_size=``...). Returns the per-epoch history."""
    settings = (settings or COARSE_SETTINGS).replace(**overrides)
    return fit(model, coarse_loss, train_ds, val_ds, settings=settings, work_dir=work_dir, name="coarse",
               progress=progress, cancel=cancel)
