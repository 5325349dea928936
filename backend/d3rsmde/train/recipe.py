"""The whole training recipe in one call: VAE -> k-fold coarse -> refiner -> one weights file.

Every stage keeps its state in its own folder under ``work_dir``, so an interrupted run (crash, cancel, wall-clock
limit) picks up where it stopped: finished stages load their result, the running one resumes from its last epoch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoint import checkpoint_config
from ..config import D3Config, get_config
from ..defaults import SEED, TRAIN_BATCH_SIZE
from ..errors import InputError
from ..pipeline import D3Pipeline
from ..plbr import PLBRSchedule
from ..progress import Cancel, Progress, check_cancel, scaled_progress
from .coarse import train_coarse
from .common import distributed_context, seed_everything
from .kfold import kfold_coarse_predictions, predict_coarse
from .refiner import train_refiner
from .vae import train_vae

STAGES = ("vae", "coarse", "refiner")
DEFAULT_EPOCHS = {"vae": 30, "coarse": 100, "refiner": 100}
REFINER_MAPS = ("kfold", "final")  # where the refiner's training maps come from (see train_pipeline)


def stage_epochs(epochs: int | dict[str, int] | None) -> dict[str, int]:
    """Epochs per stage from one number (all stages), a partial dict (the rest default) or None (defaults)."""
    if epochs is None:
        return dict(DEFAULT_EPOCHS)
    if isinstance(epochs, int):
        return dict.fromkeys(STAGES, epochs)
    unknown = sorted(set(epochs) - set(STAGES))
    if unknown:
        raise InputError(f"unknown training stage(s) {unknown}; stages are {list(STAGES)}")
    return {**DEFAULT_EPOCHS, **epochs}


def train_pipeline(
    config: D3Config | str,
    train_ds: Dataset,
    val_ds: Dataset | None,
    out_path: str | os.PathLike,
    *,
    work_dir: str | os.PathLike,
    epochs: int | dict[str, int] | None = None,
    lr: dict[str, float] | None = None,
    k: int = 5,
    fold_epochs: int | None = None,
    device: str | torch.device = "auto",
    resume: bool = True,
    data: str | None = None,
    gsd_m: float | None = None,
    max_shard_bytes: int | None = None,
    init_weights: str | os.PathLike | None = None,
    refiner_own_inputs: float = 0.0,
    refiner_maps: str = "kfold",
    coarse_grad_weight: float = 0.0,
    refiner_decoded_weight: float = 0.0,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **overrides,
) -> Path:
    """Train a D3-RSMDE model from scratch and save it to ``out_path`` (written only when everything is done).

    ``overrides`` are training settings shared by all stages (``batch_size=``, ``steps_per_epoch=``,
    ``num_workers=``...). ``data`` and ``gsd_m`` describe the training data in the checkpoint; by default they
    come from a TileDataset's index. ``resume=False`` discards earlier stage folders in ``work_dir``.
    ``lr={"coarse": 3e-4}`` overrides a stage's learning rate (the paper's 5e-5 assumes a pretrained backbone).
    ``epochs={"vae": 0}`` keeps the VAE as built (e.g. a pretrained one named by ``config.vae.pretrained_path``).
    ``fold_epochs`` trains the k fold models shorter than the final coarse model (see ``kfold``); with
    ``epochs["refiner"] == 0`` no fold is trained (their maps only feed the refiner).
    ``max_shard_bytes`` splits the weights file into shards of at most that size (see ``checkpoint``).
    ``init_weights`` (a weights file of the same config) starts the VAE, the final coarse model and the refiner
    from its networks instead of from scratch: more training for shipped weights. The fold models still start
    from scratch, since each must never have seen the tiles it predicts. A config whose coarse model has another
    CNN stem than ``init_weights``' takes only the VAE and refiner from it (its coarse model starts from the
    stem's ImageNet weights). ``refiner_own_inputs`` is the share of
    refiner batches trained on its own sampling-loop inputs (see ``train.refiner``).
    ``refiner_maps``: the refiner's training maps come from ``"kfold"`` models that never saw their tiles (the
    paper's way), or from the ``"final"`` coarse model itself (no fold is trained): when the final model is much
    better than fold models a CPU can afford, fold maps carry errors it does not make and teach the refiner to
    rewrite good maps; its own maps of seen tiles err the other way (the refiner learns to change little).
    ``coarse_grad_weight`` adds that weight of the gradient-matching loss to the coarse models' HDN loss.
    ``refiner_decoded_weight`` adds that weight of a loss on the decoded map to the refiner's latent L1 (see
    :mod:`.refiner`).
    """
    if refiner_maps not in REFINER_MAPS:
        raise InputError(f"refiner_maps must be one of {REFINER_MAPS}, got {refiner_maps!r}")
    config = get_config(config) if isinstance(config, str) else config
    index = getattr(train_ds, "index", {})
    if index.get("tile_size"):  # the model predicts best at the tile size it was trained on
        config = dataclasses.replace(config, tile_size=int(index["tile_size"]))
    epochs = stage_epochs(epochs)
    lr = dict(lr or {})
    unknown = sorted(set(lr) - set(STAGES))
    if unknown:
        raise InputError(f"unknown training stage(s) {unknown} in lr; stages are {list(STAGES)}")
    stage_lr = {s: ({"lr": lr[s]} if s in lr else {}) for s in STAGES}
    work = Path(work_dir)
    rank, world, _ = distributed_context(device)
    if not resume and rank == 0:
        for stage in STAGES:
            shutil.rmtree(work / stage, ignore_errors=True)
    if world > 1:
        torch.distributed.barrier()
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    shared = dict(device=device, **overrides)
    # fold models only make the refiner's training maps
    folds = k if epochs["refiner"] > 0 and refiner_maps == "kfold" else 0
    cost = {"vae": epochs["vae"], "coarse": (fold_epochs or epochs["coarse"]) * folds + epochs["coarse"],
            "refiner": epochs["refiner"]}
    bounds = np.cumsum([0] + [cost[s] for s in STAGES]) / max(sum(cost.values()), 1)
    part = {s: scaled_progress(progress, bounds[i], bounds[i + 1]) for i, s in enumerate(STAGES)}

    if init_weights is not None:
        stored = checkpoint_config(init_weights)
        if stored.name != config.name:
            raise InputError(f"{init_weights} holds a {stored.name!r} model, not {config.name!r}")
        config = dataclasses.replace(config, vae=stored.vae)  # e.g. with a distilled height-map decoder
        if stored.refiner.prediction == "residual" != config.refiner.prediction:
            raise InputError(f"{init_weights} holds a residual refiner; continue it with the residual prediction "
                             f"(--refiner-prediction residual)")
    seed = overrides.get("seed", SEED)
    seed_everything(seed)
    pipe = D3Pipeline.from_config(config)
    if init_weights is not None:
        start = D3Pipeline.from_pretrained(init_weights, device="cpu")
        for name, module in pipe.components.items():
            if name == "coarse" and stored.coarse.stem != config.coarse.stem:
                continue
            # A refiner switched to the stem's image condition keeps its U-Net and learns the new projection.
            missing, unexpected = module.load_state_dict(start.components[name].state_dict(), strict=False)
            if unexpected or any(not key.startswith("image_proj.") for key in missing):
                raise InputError(f"{init_weights}: its {name} does not fit this config (missing {missing}, "
                                 f"unexpected {unexpected})")
        if stored.refiner.prediction != config.refiner.prediction == "residual":
            pipe.refiner.start_as_identity()  # a z0 refiner's last layer would add a whole map to z_t
    train_vae(pipe.codec.vae, train_ds, val_ds, work_dir=work / "vae", epochs=epochs["vae"],
              progress=part["vae"], cancel=cancel, **shared, **stage_lr["vae"])
    if folds:
        maps, final = kfold_coarse_predictions(config, train_ds, k, val_ds=val_ds, fold_epochs=fold_epochs,
                                               work_dir=work / "coarse",
                                               final_init=pipe.coarse.state_dict() if init_weights else None,
                                               epochs=epochs["coarse"], progress=part["coarse"], cancel=cancel,
                                               grad_weight=coarse_grad_weight, **shared, **stage_lr["coarse"])
        pipe.coarse.load_state_dict(final.state_dict())
    else:  # no fold models: train the final model alone
        train_coarse(pipe.coarse, train_ds, val_ds, work_dir=work / "coarse" / "final", epochs=epochs["coarse"],
                     progress=part["coarse"], cancel=cancel, grad_weight=coarse_grad_weight, **shared,
                     **stage_lr["coarse"])
    if epochs["refiner"] > 0:
        batch = overrides.get("batch_size", TRAIN_BATCH_SIZE)
        if not folds:
            maps = predict_coarse(pipe.coarse, train_ds, batch_size=batch, cancel=cancel)
        val_maps = predict_coarse(pipe.coarse, val_ds, batch_size=batch, cancel=cancel) if val_ds is not None else None
        train_refiner(pipe.refiner, pipe.codec, train_ds, maps, PLBRSchedule(config.num_steps, config.eps), val_ds,
                      val_maps, own_inputs=refiner_own_inputs, decoded_weight=refiner_decoded_weight,
                      coarse=pipe.coarse, work_dir=work / "refiner",
                      epochs=epochs["refiner"], progress=part["refiner"], cancel=cancel, **shared,
                      **stage_lr["refiner"])
    check_cancel(cancel, "training")

    # The stem's ImageNet file only initialises training; the checkpoint carries the trained stem itself.
    pipe.config = dataclasses.replace(config, data=data if data is not None else _describe_sources(index),
                                      gsd_m=gsd_m if gsd_m is not None else index.get("gsd_m"),
                                      coarse=dataclasses.replace(config.coarse, stem_weights=None))
    out = Path(out_path)
    if rank == 0:
        pipe.save_pretrained(out, max_shard_bytes=max_shard_bytes, training={
            "epochs": epochs, "k": k, "fold_epochs": fold_epochs or epochs["coarse"], "seed": seed,
            "tiles": {"train": len(train_ds), "val": len(val_ds) if val_ds else 0},
            **({"init_weights": Path(init_weights).name} if init_weights else {}),
            **({"refiner_own_inputs": refiner_own_inputs} if refiner_own_inputs else {}),
            **({"refiner_maps": refiner_maps} if epochs["refiner"] > 0 else {}),
            **({"coarse_grad_weight": coarse_grad_weight} if coarse_grad_weight and epochs["coarse"] > 0 else {}),
            **({"refiner_decoded_weight": refiner_decoded_weight}
               if refiner_decoded_weight and epochs["refiner"] > 0 else {}),
        })
    if world > 1:
        torch.distributed.barrier()
    if progress:
        progress(1.0, f"saved {out}")
    return out


def _describe_sources(index: dict) -> str:
    """Where the tiles came from, by package (local cache paths mean nothing on another machine)."""
    sources = index.get("sources", {})
    packaged = {k: v for k, v in sources.items() if k.endswith("_package")} or sources
    return "; ".join(f"{k.removesuffix('_package')}: {v}" for k, v in packaged.items())
