"""Stage 1: the coarse ViT/DPT model, trained with the HDN loss (paper: AdamW 5e-5, wd 1e-4, lr x0.6 after
5 epochs without validation improvement, seed 42), optionally plus a weighted gradient-matching loss."""

from __future__ import annotations

import os

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import InputError
from ..gradient_loss import gradient_matching_loss
from ..hdn_loss import hdn_loss
from ..progress import Cancel, Progress
from .common import TrainSettings, fit

COARSE_SETTINGS = TrainSettings(lr=5e-5, weight_decay=1e-4, plateau_factor=0.6, plateau_patience=5)


class CoarseLoss:
    """HDN loss of the model's map for ``batch["image"]`` against ``batch["depth"]`` on ``batch["mask"]``, plus
    ``grad_weight`` x the gradient-matching loss (0: the paper's HDN loss alone)."""

    def __init__(self, grad_weight: float = 0.0):
        if not grad_weight >= 0.0:
            raise InputError(f"the gradient loss weight must be >= 0, got {grad_weight}")
        self.grad_weight = float(grad_weight)

    def __call__(self, model: nn.Module, batch: dict) -> Tensor:
        pred = model(batch["image"])
        loss = hdn_loss(pred, batch["depth"], batch["mask"])
        if self.grad_weight:
            loss = loss + self.grad_weight * gradient_matching_loss(pred, batch["depth"], batch["mask"])
        return loss


def train_coarse(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    *,
    settings: TrainSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    grad_weight: float = 0.0,
    **overrides,
) -> list[dict]:
    """Train ``model`` (a CoarseDepthModel) in place with :class:`CoarseLoss` (``grad_weight``); ``overrides``
    change :data:`COARSE_SETTINGS` fields (``epochs=``, ``batch_size=``...). Returns the per-epoch history."""
    settings = (settings or COARSE_SETTINGS).replace(**overrides)
    return fit(model, CoarseLoss(grad_weight), train_ds, val_ds, settings=settings, work_dir=work_dir,
               name="coarse", progress=progress, cancel=cancel)
