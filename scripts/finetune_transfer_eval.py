#!/usr/bin/env python3
"""Does fine-tuning on part of a region help where there is no DEM, and which networks should it tune?
``finetune_region`` on one half of a real pair, then the other half predicted with: the start weights; the tuned
coarse model under the start refiner ("coarse tuned": what fine-tuning gives by default since 0.5.7,
``refiner_epochs=0``); and, when the refiner is tuned too (``--refiner-epochs`` above 0), the tuned coarse model
and refiner, and every weight halfway between the start and the tuned ones (WiSE-FT, ``interpolate_weights``, alpha
0.5). The coarse model is tuned before the refiner, so "coarse tuned" is the same model either way. Scored as
whole scenes, paired with the start (``scene_report``: difference +- jackknife standard error). Each scene is split
four ways (train on the west / east / south / north half of the image's footprint on the DEM, test on the opposite
half), so every pixel is tested twice; each seed seeds the training and which tiles of the half are held out.

    python scripts/finetune_transfer_eval.py --seeds 42,1,2 --epochs 10 --out build/finetune-transfer
    python scripts/finetune_transfer_eval.py --seeds 42,1,2 --epochs 30 --refiner-epochs 0 \
        --out build/finetune-transfer-30

Writes results.json and results.md into --out (the weights and maps stay there too; a rerun reuses the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.warp import transform_bounds

from d3rsmde import pairs
from d3rsmde.data import BuildOptions
from d3rsmde.device import describe_device
from d3rsmde.defaults import FINETUNE_EPOCHS, SEED
from d3rsmde.evaluation import SCENE_FIGURES, scene_report
from d3rsmde.files import atomic_write_text
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.train.finetune import finetune_region
from d3rsmde.train.interpolate import interpolate_weights
from d3rsmde.weights import default_weights_path

SIDES = ("west", "east", "south", "north")


def footprint(image: Path, dem: Path) -> tuple[float, float, float, float]:
    """The image's bounds within the DEM's, in the image's CRS."""
    with rasterio.open(image) as img, rasterio.open(dem) as d:
        left, bottom, right, top = transform_bounds(d.crs, img.crs, *d.bounds)
        b = img.bounds
    return max(left, b.left), max(bottom, b.bottom), min(right, b.right), min(top, b.top)


def halves(box: tuple[float, float, float, float], side: str) -> tuple[tuple, tuple]:
    """(the ``side`` half of ``box``, the opposite half)."""
    left, bottom, right, top = box
    mid_x, mid_y = (left + right) / 2, (bottom + top) / 2
    west, east = (left, bottom, mid_x, top), (mid_x, bottom, right, top)
    south, north = (left, bottom, right, mid_y), (left, mid_y, right, top)
    return {"west": (west, east), "east": (east, west), "south": (south, north), "north": (north, south)}[side]


def slug(text: str) -> str:
    """"Rocky Mountain NP" -> "rocky-mountain-np", "coarse + refiner tuned" -> "coarse-refiner-tuned"."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def coarse_tuned(start: Path, tuned: Path) -> D3Pipeline:
    """``start`` with ``tuned``'s coarse model."""
    pipe = D3Pipeline.from_pretrained(start)
    pipe.coarse.load_state_dict(D3Pipeline.from_pretrained(tuned).coarse.state_dict())
    return pipe


BETTER = {"mae": -1, "ssim": 1, "lpips": -1, "grad_r": 1}  # the sign of an improvement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="start weights (default: the bundled ones)")
    parser.add_argument("--pairs", default="rmnp,olinda", help="real pairs (d3rsmde data pairs names)")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=IMAGE,DEM", help="instead of --pairs")
    parser.add_argument("--tile", type=int, default=64, help="fine-tuning tile (predictions use the model's)")
    parser.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS, help="coarse epochs")
    parser.add_argument("--refiner-epochs", type=int, default=None, help="refiner epochs (default: --epochs)")
    parser.add_argument("--seeds", default=str(SEED), help="fine-tuning seeds (training and split), comma-separated")
    parser.add_argument("--out", default="build/finetune-transfer")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = Path(args.weights or default_weights_path())
    scenes = pairs.evaluation_scenes(args.scene, args.pairs.split(","))
    refiner_epochs = args.epochs if args.refiner_epochs is None else args.refiner_epochs
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, (image, dem) in scenes.items():
            box = footprint(image, dem)
            for side in SIDES:
                rows += transfer_rows(name, image, dem, side, halves(box, side), start, out, args.tile, args.epochs,
                                      refiner_epochs, seed)
    summary = summarise(rows)
    machine = f"{describe_device('cpu')}; {os.cpu_count()} CPUs; {platform.platform()}; torch {torch.__version__}"
    result = {"machine": machine, "start": str(start), "tile": args.tile, "epochs": args.epochs,
              "refiner_epochs": refiner_epochs, "rows": rows,
              "summary": summary}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    lines = ["| scene | seed | trained on | weights | " + " | ".join(SCENE_FIGURES)
             + " | minus start (paired, +- SE) |",
             "|---|---|---|---|" + "---|" * (len(SCENE_FIGURES) + 1)]
    for r in rows:
        diff = "; ".join(f"{k} {v[0]:+.3g} +- {v[1]:.2g}" for k, v in (r["minus start"] or {}).items() if v) or "-"
        lines.append(f"| {r['scene']} | {r['seed']} | {r['trained on']} | {r['weights']} | "
                     + " | ".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in SCENE_FIGURES) + f" | {diff} |")
    lines += ["", "| scene: weights | mean " + " | mean ".join(SCENE_FIGURES) + " | runs better than start ("
              + ", ".join(SCENE_FIGURES) + ") |", "|---|" + "---|" * (len(SCENE_FIGURES) + 1)]
    lines += [f"| {key} | " + " | ".join(f"{v['mean'][k]:.3f}" for k in SCENE_FIGURES) + " | "
              + ", ".join(f"{v['better'][k]}/{v['runs']}" for k in SCENE_FIGURES) + " |" for key, v in summary.items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def transfer_rows(name: str, image: Path, dem: Path, side: str, boxes: tuple, start: Path, out: Path, tile: int,
                  epochs: int, refiner_epochs: int, seed: int) -> list[dict]:
    """Fine-tune on ``boxes[0]`` (once: a rerun reuses the weights), score every variant on ``boxes[1]``."""
    train_box, test_box = boxes
    tag = f"{slug(name)}-{side}-seed{seed}"
    tuned = out / f"{tag}.safetensors"
    if not tuned.exists():
        finetune_region(image, dem, start, tuned, extent=train_box, tile=tile, device="cpu",
                        options=BuildOptions(seed=seed), epochs=epochs, refiner_epochs=refiner_epochs, seed=seed)
    models = {"start": D3Pipeline.from_pretrained(start), "coarse tuned": coarse_tuned(start, tuned)}
    if refiner_epochs:
        models.update({"coarse + refiner tuned": D3Pipeline.from_pretrained(tuned),
                       "halfway (coarse + refiner)": interpolate_weights(start, tuned, 0.5)})
    maps = {label: out / f"{tag}-{slug(label)}.tif" for label in models}
    for label, pipe in models.items():
        predict_raster(image, maps[label], pipe, bounds=test_box)
    rows = []
    for label in models:
        report = scene_report(maps[label], dem, None if label == "start" else maps["start"])
        rows.append({"scene": name, "seed": seed, "trained on": f"{side} half", "weights": label,
                     **{k: report["scene"][k] for k in SCENE_FIGURES},
                     "minus start": report.get("scene_minus_versus")})
        print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per scene and variant: the mean figures over runs (seeds x halves) and in how many runs each beat the start."""
    summary = {}
    for scene, label in dict.fromkeys((r["scene"], r["weights"]) for r in rows):
        picked = [r for r in rows if r["scene"] == scene and r["weights"] == label]
        starts = [next(s for s in rows if s["weights"] == "start" and
                       (s["scene"], s["seed"], s["trained on"]) == (r["scene"], r["seed"], r["trained on"]))
                  for r in picked]
        summary[f"{scene}: {label}"] = {
            "runs": len(picked),
            "mean": {k: float(np.mean([r[k] for r in picked])) for k in SCENE_FIGURES},
            "better": {k: sum(BETTER[k] * (r[k] - s[k]) > 0 for r, s in zip(picked, starts)) for k in SCENE_FIGURES}}
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
