"""The training loop every stage shares: AdamW + plateau schedule, clipping, bf16 where native, logs, resumable
checkpoints, progress/cancel callbacks and DDP under ``torchrun``, so each stage only writes its loss.

A stage trains one ``nn.Module`` with ``loss_fn(model, batch) -> scalar``; ``loss_fn`` must only call
``model(...)`` (its forward) so DistributedDataParallel can synchronise gradients. Batches are dicts of tensors,
items ``{"image": 3xHxW [0, 1], "depth": 1xHxW, "mask": 1xHxW bool, ...}``.

Work folder of a stage: ``last.pt`` (model, optimizer, scheduler, epoch, best weights, history) after every epoch,
``log.csv`` (and TensorBoard events when installed), and ``final.pt`` (weights, history) once the stage is done,
replacing ``last.pt``. A later call with the same folder resumes from ``last.pt`` or, when ``final.pt`` exists,
loads it and returns at once, whatever ``epochs`` it asks for.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from ..defaults import SEED, TRAIN_BATCH_SIZE
from ..device import autocast_dtype, resolve_device
from ..errors import InputError
from ..files import atomic_file
from ..progress import Cancel, Progress, check_cancel
from .augment import Augmented

LossFn = Callable[[nn.Module, dict], Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one stage; the stages start from their paper defaults (see each stage module)."""

    epochs: int = 100
    batch_size: int = TRAIN_BATCH_SIZE
    lr: float = 1e-4
    weight_decay: float = 1e-4
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    grad_clip: float | None = 1.0
    seed: int = SEED
    device: str | torch.device = "auto"
    bf16: bool = True  # autocast to bfloat16 where the device computes it natively (see device.autocast_dtype)
    augment: bool = True
    num_workers: int = 0
    steps_per_epoch: int | None = None  # cap on batches per epoch (quick runs); None: the whole dataset
    crop: int | None = None  # train on random square crops of this size (validation sees whole tiles)
    photometric: float = 0.0  # strength of the training images' random gamma/contrast/brightness (augment.py)
    # Keep the mean of the weights after each epoch from this one on (stochastic weight averaging) instead of the
    # best epoch's: with few, noisy validation tiles the "best" epoch is partly chance, an average is not.
    average_from: int | None = None

    def replace(self, **overrides) -> "TrainSettings":
        """A copy with ``overrides``; unknown names raise InputError instead of being ignored."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown training setting(s) {unknown}; known: {sorted(self.__dataclass_fields__)}")
        return dataclasses.replace(self, **overrides)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def distributed_context(device: str | torch.device = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device): joins the process group when started by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return dist.get_rank(), world, torch.device("cuda", local)
    return dist.get_rank(), world, torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def atomic_save(obj, path: Path) -> None:
    """torch.save through :func:`~d3rsmde.files.atomic_file`: a crash never leaves a half-written file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    *,
    settings: TrainSettings,
    work_dir: str | os.PathLike | None = None,
    name: str = "train",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> list[dict]:
    """Train ``model``'s parameters that require grad; returns one history row per epoch.

    With ``val_ds`` the plateau schedule follows the validation loss and the best epoch's weights are kept;
    without it, the training loss drives the schedule and the last weights are kept. ``settings.average_from``
    keeps the mean of the weights of that epoch and the later ones instead.
    """
    if len(train_ds) == 0:
        raise InputError(f"{name}: the training set is empty")
    rank, world, device = distributed_context(settings.device)
    main = rank == 0
    stage_dir = Path(work_dir) if work_dir is not None else None
    model.to(device)
    if stage_dir is not None and (stage_dir / "final.pt").is_file():
        done = torch.load(stage_dir / "final.pt", map_location=device, weights_only=True)
        model.load_state_dict(done["model"])
        if progress and main:
            progress(1.0, f"{name}: already trained, loaded from {stage_dir}")
        return done["history"]
    if main and stage_dir is not None:
        stage_dir.mkdir(parents=True, exist_ok=True)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{name}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.plateau_factor, patience=settings.plateau_patience
    )
    start, history, best_loss, best_state, average = 0, [], math.inf, None, None
    if stage_dir is not None and (stage_dir / "last.pt").is_file():
        state = torch.load(stage_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["epoch"] + 1, state["history"]
        best_loss, best_state = state["best_loss"], state["best_model"]
        average = state.get("average")

    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    sampler = DistributedSampler(train_ds, seed=settings.seed) if world > 1 else RandomSampler(train_ds)
    loader = DataLoader(
        Augmented(train_ds, settings.augment, settings.crop, settings.photometric)
        if settings.augment or settings.crop or settings.photometric else train_ds,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=settings.num_workers > 0,
    )
    steps = min(len(loader), settings.steps_per_epoch or len(loader))
    use_bf16 = _use_bf16(settings, device)
    logger = _Logger(stage_dir, name) if main and stage_dir is not None else None

    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        # Shuffling, augmentation and sampled steps depend on (seed, epoch, rank) only, so a resumed run
        # sees the batches an unbroken one would.
        seed_everything(settings.seed + 1000 * epoch + rank)
        if world > 1:
            sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2, device=device)
        bar = tqdm(itertools.islice(loader, steps), total=steps, desc=f"{name} {epoch + 1}/{settings.epochs}",
                   disable=None if main else True, leave=False)
        for step, batch in enumerate(bar):
            check_cancel(cancel, name)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(trained, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            total += torch.stack([loss.detach().float(), torch.ones((), device=device)])
            if progress and main:
                fraction = (epoch * steps + step + 1) / (settings.epochs * steps)
                progress(fraction, f"{name}: epoch {epoch + 1}/{settings.epochs}, loss {loss.item():.4f}")
        train_loss = _mean_across_ranks(total, world)
        val_loss = evaluate_loss(trained, loss_fn, val_ds, settings, device, world, cancel, name) \
            if val_ds is not None and len(val_ds) else None
        monitored = train_loss if val_loss is None else val_loss
        scheduler.step(monitored)
        if val_loss is not None and val_loss < best_loss:
            best_loss, best_state = val_loss, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if settings.average_from is not None and epoch + 1 >= settings.average_from:
            average = _running_mean(average, model.state_dict(), epoch + 2 - settings.average_from)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
        history.append(row)
        if main and stage_dir is not None:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                         "best_loss": best_loss, "best_model": best_state, "average": average}, stage_dir / "last.pt")
        if logger:
            logger.write(row)
    if average is not None:
        model.load_state_dict(average)
    elif best_state is not None:
        model.load_state_dict(best_state)
    if main and stage_dir is not None:
        atomic_save({"model": model.state_dict(), "history": history}, stage_dir / "final.pt")
        (stage_dir / "last.pt").unlink(missing_ok=True)  # optimizer state is dead weight once the stage is done
    if logger:
        logger.close()
    if world > 1:
        dist.barrier()
    return history


@torch.no_grad()
def evaluate_loss(model, loss_fn, dataset, settings, device, world=1, cancel=None, name="eval") -> float:
    """Mean ``loss_fn`` over ``dataset`` (this rank's share under DDP), eval mode, fixed random stream."""
    sampler = DistributedSampler(dataset, shuffle=False) if world > 1 else None
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.num_workers)
    model.eval()
    total = torch.zeros(2, device=device)
    use_bf16 = _use_bf16(settings, device)
    # Losses that draw random steps (the refiner's) must compare epochs on the same draws.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for batch in loader:
            check_cancel(cancel, name)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(model, to_device(batch, device))
            total += torch.stack([loss.float() * len(batch["image"]), torch.tensor(float(len(batch["image"])),
                                                                                   device=device)])
    return _mean_across_ranks(total, world)


def _running_mean(mean: dict | None, state: dict, count: int) -> dict:
    """``mean`` of ``count - 1`` state dicts updated with ``state``; integer buffers (counters) take the latest."""
    current = {k: v.detach().cpu().clone() for k, v in state.items()}
    if mean is None:
        return current
    return {k: mean[k] + (v - mean[k]) / count if v.is_floating_point() else v for k, v in current.items()}


def _use_bf16(settings: TrainSettings, device: torch.device) -> bool:
    """bf16 autocast where the device computes it natively: CUDA GPUs that have it, and CPUs with AVX512-BF16 or
    AMX (about 3x faster than float32 for the VAE on a 2-core Zen 4); float32 elsewhere."""
    return settings.bf16 and autocast_dtype(device) == torch.bfloat16


def _mean_across_ranks(total: Tensor, world: int) -> float:
    """``total`` = [sum, count]; the global mean across DDP ranks."""
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp_min(1))


class _Logger:
    """Appends epoch rows to ``log.csv``, and to TensorBoard when the package is installed."""

    FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds")

    def __init__(self, stage_dir: Path, name: str):
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.path = stage_dir / "log.csv"
        self.name = name
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(stage_dir / "tensorboard"))
        except ImportError:
            self.board = None

    def write(self, row: dict) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.board is not None:
            for key in ("train_loss", "val_loss", "lr"):
                if row[key] is not None:
                    self.board.add_scalar(f"{self.name}/{key}", row[key], row["epoch"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
