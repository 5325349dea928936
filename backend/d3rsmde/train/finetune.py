"""Fine-tune a trained model on one region: an image and a DEM of the same place -> new weights, with the
metrics before and after on a held-out block so the user sees whether it helped.

The VAE stays frozen (the latent space the refiner works in must not move); the coarse model is fine-tuned with
HDN, then the refiner. The refiner's coarse maps come from the coarse model as it was BEFORE fine-tuning: it has
never seen these tiles, so its errors are the honest held-out kind the refiner must learn to fix (the k-fold idea,
without k extra trainings).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoint import describe_checkpoint
from ..data import BuildOptions, build_dataset
from ..datasets import TileDataset
from ..defaults import FINETUNE_BATCH_SIZE, FINETUNE_EPOCHS, FINETUNE_MIN_TILE, FINETUNE_REFINER_EPOCHS, SEED
from ..errors import InputError
from ..evaluation import mean_tile_metrics, tile_difference, tile_metrics
from ..pipeline import D3Pipeline
from ..plbr import PLBRSchedule
from ..progress import Cancel, Progress, check_cancel, report, scaled_progress
from ..raster.exclusion import ExcludeSpec
from ..weights import default_weights_path
from .coarse import train_coarse
from .kfold import predict_coarse
from .refiner import train_refiner


def finetune_region(
    image: str | os.PathLike,
    dem: str | os.PathLike,
    weights_in: str | os.PathLike | None,
    weights_out: str | os.PathLike,
    *,
    bands: Sequence[int] | None = None,
    extent: tuple[float, float, float, float] | None = None,
    exclude: ExcludeSpec = None,
    epochs: int = FINETUNE_EPOCHS,
    refiner_epochs: int = FINETUNE_REFINER_EPOCHS,
    tile: int | None = None,
    batch_size: int = FINETUNE_BATCH_SIZE,
    device: str | torch.device = "auto",
    options: BuildOptions = BuildOptions(),
    work_dir: str | os.PathLike | None = None,
    seed: int = SEED,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict:
    """Fine-tune ``weights_in`` (None: the shipped weights) on ``image`` + ``dem`` and save ``weights_out``:
    tiles cut by :func:`~d3rsmde.data.build_dataset` (``options``, tile size ``tile``; by default the model's, or a
    half or a quarter of it when the region is too small for training tiles and a held-out block at it), then
    :func:`finetune_tiles`.

    ``bands``: the image bands to train on as RGB (as ``predict_raster`` takes them; None: chosen the same way, so
    give the same bands to both). ``extent`` is (xmin, ymin, xmax, ymax) in the image CRS; ``exclude``: areas to
    leave out of training (clouds), as ``predict_raster`` takes them. ``work_dir`` keeps tiles
    and stage checkpoints (a rerun resumes); by default a temporary folder is used. ``seed`` seeds the training
    (``options.seed`` the split). Returns what :func:`finetune_tiles` returns, plus ``tiles`` (counts per split),
    ``bands`` (those used), ``work_dir`` and ``warnings`` (what the user should know: bands guessed blindly).
    """
    weights_in = Path(weights_in) if weights_in is not None else default_weights_path()
    _check_args(weights_in, weights_out, epochs, refiner_epochs)
    with tempfile.TemporaryDirectory(prefix="d3rsmde-finetune-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        pipe = D3Pipeline.from_pretrained(weights_in, device=device)
        if tile and tile % pipe.size_multiple:
            raise InputError(f"tile size {tile} must be a multiple of {pipe.size_multiple} for this model")
        sizes = [tile] if tile else _tile_sizes(pipe.config.tile_size, pipe.size_multiple)
        for size, block in [(size, block) for size in sizes for block in _split_blocks(options, size)]:
            built = build_dataset(image, dem, work / "tiles", options.replace(tile_size=size, block_size=block),
                                  bands=bands, extent=extent, exclude=exclude,
                                  progress=scaled_progress(progress, 0.0, 0.1),
                                  cancel=cancel)
            if built["counts"]["train"] and (built["counts"]["val"] or built["counts"]["test"]):
                break
        if size != sizes[0]:
            built["warnings"].append(f"the region is too small for training tiles and a held-out block of "
                                     f"{sizes[0]} px: it was cut into tiles of {size} px")
        region = f"fine-tuned on {image} + {dem}" + (f" within {tuple(extent)}" if extent else "")
        result = finetune_tiles(pipe, work / "tiles", weights_out, epochs=epochs, refiner_epochs=refiner_epochs,
                                batch_size=batch_size, device=device, work_dir=work, region=region,
                                finetuned_from=weights_in, seed=seed, progress=scaled_progress(progress, 0.1, 1.0),
                                cancel=cancel)
    return {**result, "tiles": built["counts"], "bands": built["bands"],
            "work_dir": str(work_dir) if work_dir is not None else None, "warnings": built["warnings"]}


def finetune_tiles(
    pipe: D3Pipeline,
    tiles: str | os.PathLike,
    weights_out: str | os.PathLike,
    *,
    epochs: int = FINETUNE_EPOCHS,
    refiner_epochs: int = FINETUNE_REFINER_EPOCHS,
    batch_size: int = FINETUNE_BATCH_SIZE,
    device: str | torch.device = "auto",
    work_dir: str | os.PathLike | None = None,
    region: str = "",
    finetuned_from: str | os.PathLike = "",
    seed: int = SEED,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict:
    """Fine-tune ``pipe`` in place on the tile dataset folder ``tiles`` and save it to ``weights_out``.

    ``epochs`` trains the coarse model, ``refiner_epochs`` then the refiner (0: it is kept as it is, the default,
    since tuning it on one region's few tiles hurt more often than it helped); ``region`` is appended to the
    weights' description of their data. ``work_dir`` keeps stage checkpoints (a rerun resumes); ``seed`` seeds the
    training (batch order, augmentation). Returns ``{"before", "after", "change", "weights", "held_out"}``:
    metrics are tile means on the held-out split (test, or val when the region is too small for a test block),
    ``change`` after minus before with its standard error, paired tile by tile
    (:func:`~d3rsmde.evaluation.tile_difference`).
    """
    _check_args(finetuned_from, weights_out, epochs, refiner_epochs)
    train_ds, val_ds, test_ds = (TileDataset(tiles, s) for s in ("train", "val", "test"))
    held_out, held_name = (test_ds, "test") if len(test_ds) else (val_ds, "val")
    if len(train_ds) == 0 or len(held_out) == 0:
        raise InputError(
            f"the region gave {train_ds.index['counts']} tiles (dropped: {train_ds.index.get('dropped')}); "
            "fine-tuning needs training tiles and a held-out block: use a larger extent or a smaller tile (tiles "
            "whose heights span less than the minimum relief are dropped as flat: d3rsmde finetune --min-relief)")
    val = val_ds if len(val_ds) and held_name == "test" else None
    tile = int(train_ds.index["tile_size"])
    work = Path(work_dir) if work_dir is not None else None
    before_rows = tile_metrics(pipe, held_out, batch_size=batch_size, cancel=cancel)
    before = mean_tile_metrics(before_rows)

    # The refiner learns on the start coarse model's maps of the training tiles (maps it has not fitted yet, as
    # the k-fold maps of training are), so they are made before the coarse model is tuned.
    maps = predict_coarse(pipe.coarse, train_ds, batch_size=batch_size, cancel=cancel) if refiner_epochs else None
    coarse_end = 0.5 if refiner_epochs else 0.95
    train_coarse(pipe.coarse, train_ds, val, epochs=epochs, batch_size=batch_size, device=device, seed=seed,
                 work_dir=work / "coarse" if work else None, progress=scaled_progress(progress, 0.05, coarse_end),
                 cancel=cancel)
    config = pipe.config
    own_inputs = trained_own_inputs(finetuned_from)
    if refiner_epochs:
        val_maps = None if val is None else predict_coarse(pipe.coarse, val, batch_size=batch_size, cancel=cancel)
        train_refiner(pipe.refiner, pipe.codec, train_ds, maps, PLBRSchedule(config.num_steps, config.eps), val,
                      val_maps, own_inputs=own_inputs, coarse=pipe.coarse, epochs=refiner_epochs,
                      batch_size=batch_size, device=device, seed=seed, work_dir=work / "refiner" if work else None,
                      progress=scaled_progress(progress, 0.5, 0.95), cancel=cancel)
    pipe.eval()
    after_rows = tile_metrics(pipe, held_out, batch_size=batch_size, cancel=cancel)
    after, change = mean_tile_metrics(after_rows), tile_difference(after_rows, before_rows)
    check_cancel(cancel, "fine-tuning")

    pipe.config = dataclasses.replace(config, data="; ".join(filter(None, [config.data, region])),
                                      gsd_m=train_ds.index.get("gsd_m", config.gsd_m))
    pipe.save_pretrained(weights_out, finetuned_from=str(finetuned_from), finetune={
        "epochs": epochs, "refiner_epochs": refiner_epochs, "tile": tile, "refiner_own_inputs": own_inputs,
        "tiles": train_ds.index["counts"], "bands": train_ds.index.get("bands"), "seed": seed,
        "before": _finite(before), "after": _finite(after),
    })
    report(progress, 1.0, f"saved {weights_out}")
    return {"before": before, "after": after, "change": change, "weights": str(weights_out), "held_out": held_name}


def trained_own_inputs(weights: str | os.PathLike) -> float:
    """The share of refiner batches on its own sampling-loop inputs that ``weights`` were last trained with (their
    fine-tune or training metadata; 0 where not recorded): fine-tuning goes on the same way instead of undoing it."""
    if not weights:
        return 0.0
    meta = describe_checkpoint(weights)["metadata"]
    for key in ("finetune", "training"):
        if key in meta:
            return float(json.loads(meta[key]).get("refiner_own_inputs", 0.0))
    return 0.0


def _tile_sizes(model_tile: int, multiple: int) -> list[int]:
    """Tile sizes to try when none was given, largest first: the model's, then halves of it down to
    :data:`~d3rsmde.defaults.FINETUNE_MIN_TILE` (multiples of ``multiple`` only)."""
    sizes = [model_tile]
    while sizes[-1] // 2 >= FINETUNE_MIN_TILE and (sizes[-1] // 2) % multiple == 0:
        sizes.append(sizes[-1] // 2)
    return sizes


def _split_blocks(options: BuildOptions, tile: int) -> list[int]:
    """Split block sides to try, largest first: a region too small for a held-out block of the usual 4 x 4 tiles is
    split in blocks of 2 x 2, then single tiles (neighbouring tiles then fall in different splits, which is still no
    overlap at the default stride). A block size the caller chose is kept."""
    if options.block_size is not None:
        return [options.block_size]
    return [4 * tile, 2 * tile, tile]


def _check_args(weights_in, weights_out, epochs: int, refiner_epochs: int) -> None:
    if weights_in and Path(weights_out).resolve() == Path(weights_in).resolve():
        raise InputError(f"the output weights {weights_out} would overwrite the input weights: choose another path")
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if refiner_epochs < 0:
        raise InputError(f"refiner epochs must be 0 (keep the refiner) or more, got {refiner_epochs}")


def _finite(metrics: dict) -> dict:
    """JSON-safe copy (an infinite PSNR of a perfect tile becomes None)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
