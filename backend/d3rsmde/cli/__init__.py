"""The ``d3rsmde`` console script: predict, evaluate, info, and the training and data commands.

Every command is a thin layer over the library functions the QGIS plugin calls too. Errors the user can fix
(:class:`d3rsmde.errors.D3Error`) and those of the machine (out of memory, an I/O error) end the run with one
``error: ...`` line and exit status 2, no traceback. SIGTERM (``timeout``, Slurm, ``docker stop``) unwinds like
Ctrl-C, so that scratch files are removed, and exits with 143.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .. import __version__
from ..errors import D3Error, InputError
from ..files import atomic_write_text
from . import data as data_cli
from . import train as train_cli
from .options import BANDS_HELP, add_exclude_options, bands, excluded, print_warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d3rsmde", description="Remote-sensing monocular height estimation (D3-RSMDE): ViT coarse model + PLBR."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="height map for a georeferenced image raster",
        description="Predict a height raster (float32 GeoTIFF, same grid as the input, or its part within --bounds): "
        "relative 0..1, or metres "
        "when a reference DEM is given.",
    )
    predict.add_argument("input", help="image raster (any CRS; bands as --bands says)")
    predict.add_argument("output", help="output GeoTIFF")
    predict.add_argument("--weights", help="checkpoint (.safetensors); default: the shipped weights")
    predict.add_argument("--refine-steps", type=int, help="PLBR steps (0: coarse model only; default: the model's)")
    predict.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    predict.add_argument("--overlap", type=int, help="tile overlap in pixels (default: an eighth of the tile)")
    predict.add_argument("--batch-size", type=int, help="tiles per batch (default: chosen for the device)")
    predict.add_argument("--bands", type=bands, help=BANDS_HELP)
    predict.add_argument("--reference-dem", help="elevation raster (any CRS/resolution): the output is then in "
                         "metres, follows it at its resolution and adds the image's relief below it")
    predict.add_argument("--resample-to-gsd", action="store_true",
                         help="run the model at its training ground resolution and resample back")
    predict.add_argument("--bounds", type=float, nargs=4, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
                         help="only this extent of the input, in its CRS (as rio clip --bounds); the output covers "
                         "the input's pixels within it")
    add_exclude_options(predict, "(clouds, water)")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    predict.set_defaults(func=_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="compare a predicted height raster with a reference",
        description="Per-tile metrics as in the paper (averaged) and whole-raster errors; the reference is warped "
        "onto the prediction's grid.",
    )
    evaluate.add_argument("prediction", help="predicted height raster")
    evaluate.add_argument("reference", help="reference elevation raster (any CRS/resolution)")
    evaluate.add_argument("--tile", type=int, help="tile size for the per-tile metrics (default: the prediction's)")
    evaluate.add_argument("--mask", help="raster, nonzero where to evaluate")
    evaluate.add_argument("--whole-scene", action="store_true",
                          help="also score the scene as one image: the prediction averaged onto the reference grid, "
                               "both stretched to 0..255 together (as the model card does), with each figure's "
                               "jackknife standard error")
    evaluate.add_argument("--versus", metavar="OTHER", help="with --whole-scene: another prediction of the same "
                          "scene; prints this one's figures minus OTHER's, paired block by block, with standard errors")
    evaluate.add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=_evaluate)

    info = commands.add_parser(
        "info", help="what a checkpoint contains", description="Config, training data, GSD, tile size, parameters."
    )
    info.add_argument("weights", help="checkpoint (.safetensors)")
    info.set_defaults(func=_info)

    train_cli.add_cli(commands)
    data_cli.add_cli(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every cleanup runs as for Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_unwinds():
            return args.func(args)
    except D3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _predict(args) -> int:
    from tqdm import tqdm

    from ..pipeline import D3Pipeline
    from ..raster import predict_raster
    from ..weights import default_weights_path

    pipeline = D3Pipeline.from_pretrained(args.weights or default_weights_path(), device=args.device)
    bar = None  # opened on the first report, so that input errors print nothing but their one line

    def progress(fraction: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=1000, desc="predict", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        bar.update(round(1000 * fraction) - bar.n)
        bar.set_postfix_str(message)

    try:
        stats = predict_raster(
            args.input,
            args.output,
            pipeline,
            bands=args.bands,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            refine_steps=args.refine_steps,
            reference_dem=args.reference_dem,
            progress=progress,
            resample_to_gsd=args.resample_to_gsd,
            bounds=args.bounds,
            exclude=excluded(args),
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"wrote {stats['output']} ({stats['units']}): {stats['tiles']} tiles, {stats['megapixels']:.2f} MP "
        f"in {stats['seconds']:.1f} s on {stats['device']}"
    )
    print_warnings(stats["warnings"])
    return 0


def _evaluate(args) -> int:
    from ..evaluation import evaluate_rasters
    from ..metrics import format_differences, format_metrics_table
    from ..raster import spare_inputs

    if args.versus and not args.whole_scene:
        raise InputError("--versus compares whole scenes: give --whole-scene too")
    if args.json_path:
        spare_inputs(args.json_path, [("prediction", args.prediction), ("reference", args.reference),
                                      ("mask", args.mask), ("other prediction", args.versus)])
    result = evaluate_rasters(args.prediction, args.reference, mask=args.mask, tile=args.tile)
    print(f"per tile: mean over {result['tiles']} tiles of {result['tile']} px, each min-max stretched to 0..255")
    print(format_metrics_table({Path(args.prediction).name: result["per_tile"]}, label="prediction"))
    whole = result["whole"]
    units = f" {whole['units']}" if whole["units"] else ""
    print(f"whole raster ({whole['pixels']} pixels):")
    for key in ("mae", "rmse", "bias", "rmse_after_affine"):
        value = "n/a (relative prediction vs heights)" if whole[key] is None else f"{whole[key]:.4g}{units}"
        print(f"  {key:<18} {value}")
    if args.whole_scene:
        from ..evaluation import SCENE_FIGURES, scene_report

        result.update(scene_report(args.prediction, args.reference, args.versus))
        noise = result["scene_standard_error"]
        print(f"whole scene ({result['scene']['pixels']} reference pixels, stretched to 0..255 as one image):")
        print(format_metrics_table({Path(args.prediction).name: result["scene"]}, label="prediction"))
        print("  standard error (each of 3 x 3 blocks left out in turn): " + ", ".join(
            f"{key} {'n/a' if noise[key] is None else format(noise[key], '.3g')}" for key in SCENE_FIGURES))
        if args.versus:
            print(f"  minus {Path(args.versus).name}, paired (difference +- standard error): "
                  + format_differences(result["scene_minus_versus"]))
    print_warnings(result["warnings"])
    if args.json_path:
        atomic_write_text(Path(args.json_path), json.dumps(result, indent=2))
    return 0


def _info(args) -> int:
    from ..checkpoint import describe_checkpoint

    for key, value in describe_checkpoint(args.weights).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key:<16} {value}")
    return 0
