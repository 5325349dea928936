"""``d3rsmde train``, ``finetune``, ``interpolate`` and ``train-decoder``: thin argument parsing over the recipe,
the region fine-tuner, weight interpolation and the height-map decoder."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import D3Config, config_names, get_config
from ..data import BuildOptions
from ..datasets import TileDatasets
from ..defaults import FINETUNE_BATCH_SIZE, FINETUNE_EPOCHS, FINETUNE_REFINER_EPOCHS, SEED, TRAIN_BATCH_SIZE
from ..errors import InputError
from ..files import atomic_write_text
from ..metrics import format_differences, format_metrics_table
from ..models.refiner import IMAGE_CONDITIONS, PREDICTIONS
from ..pipeline import D3Pipeline
from ..progress import terminal_progress
from ..sources import STEM_WEIGHTS
from ..train.coarse import COARSE_SETTINGS
from ..train.finetune import finetune_region
from ..train.interpolate import interpolate_weights
from ..train.recipe import DEFAULT_EPOCHS, REFINER_MAPS, train_pipeline
from ..train.refiner import REFINER_SETTINGS
from ..train.vae import DEPTH_DECODER_CHANNELS, VAE_SETTINGS, train_depth_decoder
from .options import BANDS_HELP, add_exclude_options, bands, excluded, floats, ints, print_warnings


def train_config(args: argparse.Namespace) -> D3Config:
    """The named config with the architecture options of ``d3rsmde train`` applied."""
    config = get_config(args.config)
    coarse = {k: v for k, v in (("stem", args.coarse_stem), ("stem_weights", args.stem_weights)) if v}
    refiner = {k: v for k, v in (("image_condition", args.refiner_image_condition),
                                 ("prediction", args.refiner_prediction)) if v}
    return dataclasses.replace(config, coarse=dataclasses.replace(config.coarse, **coarse),
                               refiner=dataclasses.replace(config.refiner, **refiner))


def _cli_train(args) -> int:
    epochs = {k: v for k, v in (("vae", args.vae_epochs), ("coarse", args.coarse_epochs),
                                ("refiner", args.refiner_epochs)) if v is not None}
    lr = {k: v for k, v in (("vae", args.vae_lr), ("coarse", args.coarse_lr), ("refiner", args.refiner_lr))
          if v is not None}
    roots = args.data.split(",")
    out = train_pipeline(
        train_config(args), TileDatasets(roots, "train"), _val_sets(args, roots), args.out,
        work_dir=args.work_dir or Path(args.out).with_suffix(".work"), epochs=epochs, lr=lr, k=args.k,
        fold_epochs=args.fold_epochs, refiner_own_inputs=args.refiner_own_inputs, refiner_maps=args.refiner_maps,
        coarse_grad_weight=args.coarse_grad_weight, refiner_decoded_weight=args.refiner_decoded_weight,
        device=args.device, resume=not args.restart,
        batch_size=args.batch_size, num_workers=args.workers,
        steps_per_epoch=args.steps_per_epoch, average_from=args.average_from, seed=args.seed,
        photometric=args.photometric_jitter,
        progress=terminal_progress(),
        max_shard_bytes=_shard_bytes(args), init_weights=args.init_weights,
    )
    print(f"weights: {out}")
    return 0


def _cli_finetune(args) -> int:
    result = finetune_region(
        args.image, args.dem, args.weights, args.out, bands=args.bands, extent=args.extent, exclude=excluded(args),
        epochs=args.epochs, refiner_epochs=args.refiner_epochs, tile=args.tile, batch_size=args.batch_size,
        device=args.device, work_dir=args.work_dir, options=BuildOptions(min_relief_m=args.min_relief),
        progress=terminal_progress(),
    )
    print(f"held-out {result['held_out']} tiles:")
    print(format_metrics_table({"before": result["before"], "after": result["after"]}, label="weights"))
    print(f"after minus before, paired over the {result['after']['tiles']} held-out tiles (+- standard error): "
          + format_differences(result["change"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1, default=str))
    print(f"weights: {result['weights']} (trained on bands {','.join(map(str, result['bands']))}: give the same to "
          "predict)")
    print_warnings(result["warnings"])
    return 0


def _cli_interpolate(args) -> int:
    if Path(args.out).resolve() in {Path(args.start).resolve(), Path(args.tuned).resolve()}:
        raise InputError(f"the output weights {args.out} would overwrite an input: choose another path")
    pipe = interpolate_weights(args.start, args.tuned, args.alpha)
    out = pipe.save_pretrained(args.out, max_shard_bytes=_shard_bytes(args), interpolated={
        "start": Path(args.start).name, "tuned": Path(args.tuned).name, "alpha": args.alpha})
    print(f"weights: {out}")
    return 0


def _cli_train_decoder(args) -> int:
    if Path(args.out).resolve() == Path(args.weights).resolve():
        raise InputError(f"the output weights {args.out} would overwrite the input: choose another path")
    roots = args.data.split(",")
    pipe = D3Pipeline.from_pretrained(args.weights, device=args.device)
    train_depth_decoder(pipe, TileDatasets(roots, "train"), _val_sets(args, roots), channels=tuple(args.channels),
                        layers_per_block=args.layers_per_block, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, device=args.device,
                        work_dir=args.work_dir or Path(args.out).with_suffix(".work"), progress=terminal_progress())
    out = pipe.save_pretrained(args.out, max_shard_bytes=_shard_bytes(args), depth_decoder_from=Path(args.weights).name)
    print(f"weights: {out}")
    return 0


def _val_sets(args, roots: list[str]) -> TileDatasets:
    """The val splits that drive schedules and epoch choice: those of ``--val-data`` if given, else of DATA."""
    return TileDatasets(args.val_data.split(",") if args.val_data else roots, "val")


def _shard_bytes(args) -> int | None:
    return int(args.max_shard_mb * 2**20) if args.max_shard_mb else None


def add_cli(subparsers) -> None:
    """Register ``train``, ``finetune``, ``interpolate`` and ``train-decoder`` on the ``d3rsmde`` subparsers."""
    train = subparsers.add_parser("train", help="train a model from scratch on a tile dataset (VAE, k-fold "
                                                "coarse, refiner)")
    train.add_argument("config", choices=config_names(), help="model size")
    train.add_argument("data", help="tile dataset folder(s), comma-separated (from `d3rsmde data build/world/render`): "
                                    "their train and val splits")
    train.add_argument("out", help="output weights file (.safetensors)")
    train.add_argument("--val-data", help="tile dataset folder(s) whose val split drives the schedules and the "
                                          "choice of epoch (default: those of DATA), e.g. real pairs only")
    train.add_argument("--vae-epochs", type=int, help=f"default {DEFAULT_EPOCHS['vae']}")
    train.add_argument("--coarse-epochs", type=int,
                       help=f"per fold and for the final model; default {DEFAULT_EPOCHS['coarse']}")
    train.add_argument("--refiner-epochs", type=int, help=f"default {DEFAULT_EPOCHS['refiner']}")
    for stage, settings, note in (("vae", VAE_SETTINGS, ""),
                                  ("coarse", COARSE_SETTINGS, ", the paper's, for a pretrained backbone"),
                                  ("refiner", REFINER_SETTINGS, "")):
        train.add_argument(f"--{stage}-lr", type=float, help=f"{stage} learning rate (default {settings.lr:g}{note})")
    train.add_argument("--coarse-stem", choices=sorted(STEM_WEIGHTS),
                       help="another pretrained CNN stem for the config's hybrid coarse model (timm name)")
    train.add_argument("--stem-weights", help="ImageNet weights of the coarse model's CNN stem (.pth), e.g. from "
                                              "`d3rsmde data stem-weights`")
    train.add_argument("--init-weights", help="start the VAE, final coarse model and refiner from these weights "
                                              "(same config; with another --coarse-stem, the VAE and refiner only) "
                                              "instead of from scratch")
    train.add_argument("--refiner-own-inputs", type=float, default=0.0, metavar="SHARE",
                       help="share of refiner batches trained on its own sampling-loop inputs instead of blends of "
                            "the true map (default %(default)s)")
    train.add_argument("--refiner-maps", choices=REFINER_MAPS, default=REFINER_MAPS[0],
                       help="the refiner's training maps: from k fold models that never saw their tiles, or from "
                            "the final coarse model (no folds; default %(default)s)")
    train.add_argument("--refiner-image-condition", choices=IMAGE_CONDITIONS,
                       help="what the refiner sees of the image: the VAE latent (the paper's), the coarse model's "
                            "pretrained stem features, or nothing (an ablation; default: the config's)")
    train.add_argument("--refiner-prediction", choices=PREDICTIONS,
                       help="the refiner's U-Net predicts z0 (the paper's) or a correction of its input "
                            "(residual; from weights that predict z0 it starts as the identity; default: the "
                            "config's)")
    train.add_argument("--coarse-grad-weight", type=float, default=0.0, metavar="W",
                       help="add W x a multi-scale gradient-matching loss (slopes) to the coarse models' HDN loss "
                            "(default %(default)s: the paper's HDN loss alone)")
    train.add_argument("--refiner-decoded-weight", type=float, default=0.0, metavar="W",
                       help="add W x a loss on the decoded map (L1 and gradient matching, through the frozen "
                            "decoder) to the refiner's latent L1 (default %(default)s: the paper's latent L1 alone)")
    train.add_argument("--photometric-jitter", type=float, default=0.0, metavar="S",
                       help="give each training image a random gamma, contrast, brightness and band gains of "
                            "strength S (1: gamma x0.67-1.49, contrast x0.6-1.4, brightness +-0.15, gains +-10 %%; "
                            "default %(default)s: none)")
    train.add_argument("--k", type=int, default=5, help="coarse folds (default %(default)s)")
    train.add_argument("--fold-epochs", type=int, help="epochs of each fold's coarse model (default: --coarse-epochs)")
    train.add_argument("--batch-size", type=int, default=TRAIN_BATCH_SIZE, help="default %(default)s")
    train.add_argument("--workers", type=int, default=0, help="data loader processes")
    train.add_argument("--steps-per-epoch", type=int, help="cap on batches per epoch (quick trial runs)")
    train.add_argument("--seed", type=int, default=SEED, help="initialisation, shuffling and augmentation seed: "
                                                              "another one gives a replicate run (default %(default)s)")
    train.add_argument("--average-from", type=int, metavar="EPOCH",
                       help="each stage keeps the mean of its weights after this epoch and the later ones (weight "
                            "averaging) instead of its best validation epoch")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (under torchrun: one GPU per rank)")
    train.add_argument("--work-dir", help="stage checkpoints and logs (default: OUT with suffix .work)")
    train.add_argument("--restart", action="store_true", help="discard stage checkpoints in the work folder")
    train.add_argument("--max-shard-mb", type=float, help="split the weights into files of at most this many MiB "
                                                          "(e.g. to keep each under a git host's limit)")
    train.set_defaults(func=_cli_train)

    tune = subparsers.add_parser("finetune", help="fine-tune weights on one region from an image and a DEM")
    tune.add_argument("image", help="image raster (bands as --bands says)")
    tune.add_argument("dem", help="elevation raster of the same area, any CRS and resolution")
    tune.add_argument("out", help="output weights file (.safetensors)")
    tune.add_argument("--bands", type=bands, help=BANDS_HELP)
    tune.add_argument("--weights", help="weights to start from (default: the shipped weights)")
    tune.add_argument("--extent", type=floats, help="xmin,ymin,xmax,ymax in the image CRS (write --extent=... when xmin is negative)")
    add_exclude_options(tune, "of training (clouds)")
    tune.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS, help="coarse model epochs (default %(default)s)")
    tune.add_argument("--refiner-epochs", type=int, default=FINETUNE_REFINER_EPOCHS,
                      help="refiner epochs after the coarse model's (default %(default)s: the refiner is kept; tuned "
                      "on one region's few tiles it hurt the rest of the region more often than it helped)")
    tune.add_argument("--tile", type=int, help="tile size in pixels (default: the model's, or half or a quarter of "
                                               "it when the region is too small for training tiles and a held-out "
                                               "block at it)")
    tune.add_argument("--batch-size", type=int, default=FINETUNE_BATCH_SIZE, help="default %(default)s")
    tune.add_argument("--min-relief", type=float, default=BuildOptions().min_relief_m,
                      help="least 2-98%% height range of a tile, metres (default %(default)s)")
    tune.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    tune.add_argument("--work-dir", help="keep tiles and checkpoints here (a rerun resumes)")
    tune.add_argument("--json", help="also write the before/after metrics to this JSON file")
    tune.set_defaults(func=_cli_finetune)

    mix = subparsers.add_parser("interpolate", help="weights between a model and its fine-tuned version "
                                                    "(WiSE-FT): (1 - alpha) * START + alpha * TUNED")
    mix.add_argument("start", help="weights before fine-tuning (.safetensors)")
    mix.add_argument("tuned", help="the same config after fine-tuning")
    mix.add_argument("out", help="output weights file (.safetensors)")
    mix.add_argument("--alpha", type=float, default=0.5, help="share of TUNED (default %(default)s)")
    mix.add_argument("--max-shard-mb", type=float, help="split the weights into files of at most this many MiB")
    mix.set_defaults(func=_cli_interpolate)

    dec = subparsers.add_parser("train-decoder", help="replace a model's VAE decoder by a narrower one distilled "
                                                      "from it (faster inference; encoder, coarse model and refiner "
                                                      "unchanged)")
    dec.add_argument("weights", help="trained weights (.safetensors) with the VAE's own decoder (the teacher)")
    dec.add_argument("data", help="tile dataset folder(s), comma-separated: their train splits' images and heights")
    dec.add_argument("--val-data", help="tile dataset folder(s) whose val split is scored each epoch "
                                        "(default: those of DATA)")
    dec.add_argument("out", help="output weights file (.safetensors)")
    dec.add_argument("--channels", type=ints, default=list(DEPTH_DECODER_CHANNELS),
                     help="decoder widths, one per VAE level, finest first (default "
                          f"{','.join(map(str, DEPTH_DECODER_CHANNELS))})")
    dec.add_argument("--layers-per-block", type=int, default=0,
                     help="extra residual blocks per level (default %(default)s: one block per level)")
    dec.add_argument("--epochs", type=int, default=24, help="default %(default)s (18 min on a 2-core CPU at "
                                                           "--steps-per-epoch 60)")
    dec.add_argument("--lr", type=float, default=2e-4, help="default %(default)s")
    dec.add_argument("--batch-size", type=int, default=TRAIN_BATCH_SIZE, help="default %(default)s")
    dec.add_argument("--steps-per-epoch", type=int, help="cap on batches per epoch")
    dec.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    dec.add_argument("--work-dir", help="checkpoints and log (default: OUT with suffix .work); a rerun resumes")
    dec.add_argument("--max-shard-mb", type=float, help="split the weights into files of at most this many MiB")
    dec.set_defaults(func=_cli_train_decoder)
