"""k-fold coarse training: every training tile gets a coarse map from a model that never saw it.

The refiner learns to fix the coarse model's errors; trained on maps of tiles the coarse model had memorised, it
would see almost no errors and learn to do nothing. Folds are contiguous runs of the dataset's order (for
TileDataset: strips of the scan), so neighbouring tiles with shared terrain mostly fall in the same fold.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import D3Config
from ..errors import InputError
from ..models import CoarseDepthModel
from ..pipeline import coarse_maps
from .coarse import COARSE_SETTINGS, train_coarse
from ..progress import Cancel, Progress, check_cancel, scaled_progress
from .common import TrainSettings, distributed_context

MAPS_NAME = "coarse_maps.npy"


def fold_indices(n: int, k: int) -> list[np.ndarray]:
    """``k`` contiguous, near-equal index runs covering ``range(n)``."""
    if not 2 <= k <= n:
        raise InputError(f"k-fold needs 2 <= k <= number of tiles, got k={k} for {n} tiles")
    return np.array_split(np.arange(n), k)


@torch.no_grad()
def predict_coarse(model: nn.Module, dataset: Dataset, out: np.ndarray | None = None, *, batch_size: int = 8,
                   cancel: Cancel | None = None) -> np.ndarray:
    """Fill ``out`` (``len(dataset) x H x W``; default a new float16 array) with the model's maps stretched to
    [0, 1] per tile, exactly the input :meth:`~d3rsmde.pipeline.D3Pipeline.coarse_depth` gives the refiner at
    inference (the same function computes both)."""
    if out is None:
        out = np.empty((len(dataset), *dataset[0]["image"].shape[-2:]), np.float16)
    model.eval()
    start = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        check_cancel(cancel, "coarse prediction")
        maps = coarse_maps(model, batch["image"])
        out[start:start + len(maps)] = maps[:, 0].cpu().numpy()
        start += len(maps)
    return out


def kfold_coarse_predictions(
    config: D3Config,
    dataset: Dataset,
    k: int = 5,
    *,
    val_ds: Dataset | None = None,
    settings: TrainSettings | None = None,
    fold_epochs: int | None = None,
    final_init: dict | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    grad_weight: float = 0.0,
    **overrides,
) -> tuple[np.ndarray, CoarseDepthModel]:
    """Train ``k`` coarse models, each predicting the fold it did not see, then the final model on all tiles.

    ``fold_epochs`` (default: the settings' epochs) lets the fold models train shorter than the final one when
    compute is scarce: their maps then carry somewhat larger errors than the final model makes. ``final_init``
    (a state dict) starts the final model from trained weights instead of the folds' common start. Every model
    trains with :class:`~d3rsmde.train.coarse.CoarseLoss` (``grad_weight``).

    Returns ``(maps, final_model)``: ``maps[i]`` is tile ``i``'s held-out coarse map in [0, 1] (float16,
    ``N x H x W``; memory-mapped from ``work_dir/coarse_maps.npy`` when a work folder is given). ``val_ds`` drives
    every model's plateau schedule. With ``work_dir`` each training resumes and finished parts are skipped.
    """
    settings = (settings or COARSE_SETTINGS).replace(**overrides)
    rank, world, device = distributed_context(settings.device)
    work = Path(work_dir) if work_dir is not None else None
    if world > 1 and work is None:
        raise InputError("k-fold training under torchrun needs a work folder shared by the processes")
    folds = fold_indices(len(dataset), k)
    size = tuple(dataset[0]["image"].shape[-2:])
    shape = (len(dataset), *size)
    maps_path = work / MAPS_NAME if work is not None else None

    def new_model() -> CoarseDepthModel:
        torch.manual_seed(settings.seed)  # every fold starts from the same weights
        return CoarseDepthModel(config.coarse, img_size=config.tile_size)

    maps = _open_maps(maps_path, shape)
    fold_share = (fold_epochs or settings.epochs) / max(settings.epochs, 1)
    share = fold_share / (k * fold_share + 1)
    if maps is None:
        maps = np.empty(shape, np.float16) if work is None else _new_maps(maps_path, shape, rank)
        for i, held_out in enumerate(folds):
            train_idx = np.setdiff1d(np.arange(len(dataset)), held_out)
            model = new_model()
            train_coarse(model, Subset(dataset, train_idx.tolist()), val_ds,
                         settings=settings.replace(epochs=fold_epochs or settings.epochs),
                         work_dir=work / f"fold{i}" if work is not None else None,
                         progress=scaled_progress(progress, i * share, (i + 1) * share), cancel=cancel,
                         grad_weight=grad_weight)
            if rank == 0:
                predict_coarse(model, Subset(dataset, held_out.tolist()), _Rows(maps, held_out),
                               batch_size=settings.batch_size, cancel=cancel)
        if work is not None:
            if rank == 0:
                maps.flush()
                del maps
                os.replace(_tmp_path(maps_path), maps_path)
            if world > 1:
                torch.distributed.barrier()
            maps = _open_maps(maps_path, shape)
    final = new_model()
    if final_init is not None:
        final.load_state_dict(final_init)
    train_coarse(final, dataset, val_ds, settings=settings, work_dir=work / "final" if work is not None else None,
                 progress=scaled_progress(progress, k * share, 1.0), cancel=cancel, grad_weight=grad_weight)
    return maps, final.to(device)


class _Rows:
    """Write-through view of the rows ``index`` of ``array``, so predictions land in dataset order."""

    def __init__(self, array: np.ndarray, index: np.ndarray):
        self.array, self.index = array, index

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        self.array[self.index[rows]] = values


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.stem + ".tmp.npy")


def _new_maps(path: Path, shape: tuple, rank: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rank != 0:
        return np.empty((0, *shape[1:]), np.float16)  # only rank 0 predicts and writes
    return np.lib.format.open_memmap(_tmp_path(path), mode="w+", dtype=np.float16, shape=shape)


def _open_maps(path: Path | None, shape: tuple) -> np.ndarray | None:
    """The finished maps file, or None when there is none (or it belongs to another dataset)."""
    if path is None or not path.is_file():
        return None
    maps = np.load(path, mmap_mode="r")
    return maps if maps.shape == shape else None
