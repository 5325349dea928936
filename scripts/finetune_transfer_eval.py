#!/usr/bin/env python3
"""Does fine-tuning on part of a region help where there is no DEM? ``finetune_region`` on one half of a real
pair, then the other half predicted with the start weights, the fine-tuned ones and the two averaged (WiSE-FT,
``interpolate_weights``, alpha 0.5), scored as whole scenes and paired (``scene_report``: difference +- jackknife
standard error). Each scene is split four ways (train west / east / south / north half of the image's footprint on
the DEM, test on the opposite half), so every pixel is tested twice.

    python scripts/finetune_transfer_eval.py --pairs rmnp,olinda --out build/finetune-transfer

Writes results.json and results.md into --out (the weights and maps stay there too).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from d3rsmde import pairs
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="start weights (default: the bundled ones)")
    parser.add_argument("--pairs", default="rmnp,olinda", help="real pairs (d3rsmde data pairs names)")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=IMAGE,DEM", help="instead of --pairs")
    parser.add_argument("--tile", type=int, default=64, help="fine-tuning tile (predictions use the model's)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: finetune_region's)")
    parser.add_argument("--out", default="build/finetune-transfer")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = Path(args.weights or default_weights_path())
    scenes = pairs.evaluation_scenes(args.scene, args.pairs.split(","))
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    rows = []
    for name, (image, dem) in scenes.items():
        box = footprint(image, dem)
        for side in SIDES:
            train_box, test_box = halves(box, side)
            tag = f"{name.replace(' ', '-').lower()}-{side}"
            tuned = out / f"{tag}.safetensors"
            if not tuned.exists():
                finetune_region(image, dem, start, tuned, extent=train_box, tile=args.tile, device="cpu", **epochs)
            models = {"start": D3Pipeline.from_pretrained(start), "fine-tuned": D3Pipeline.from_pretrained(tuned),
                      "halfway": interpolate_weights(start, tuned, 0.5)}
            maps = {}
            for label, pipe in models.items():
                maps[label] = out / f"{tag}-{label}.tif"
                predict_raster(image, maps[label], pipe, bounds=test_box)
            for label in models:
                report = scene_report(maps[label], dem, None if label == "start" else maps["start"])
                rows.append({"scene": name, "trained on": f"{side} half", "weights": label,
                             **{k: report["scene"][k] for k in SCENE_FIGURES},
                             "minus start": report.get("scene_minus_versus")})
                print(rows[-1], flush=True)
    means = {}
    for (scene, label) in sorted({(r["scene"], r["weights"]) for r in rows}):
        picked = [r for r in rows if r["scene"] == scene and r["weights"] == label]
        means[f"{scene}: {label}"] = {k: float(np.mean([r[k] for r in picked])) for k in SCENE_FIGURES}
    result = {"machine": platform.node(), "start": str(start), "tile": args.tile, "rows": rows, "means": means}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    lines = ["| scene | trained on | weights | " + " | ".join(SCENE_FIGURES) + " | minus start (paired, +- SE) |",
             "|---|---|---|" + "---|" * (len(SCENE_FIGURES) + 1)]
    for r in rows:
        diff = "; ".join(f"{k} {v[0]:+.3g} +- {v[1]:.2g}" for k, v in (r["minus start"] or {}).items() if v) or "-"
        lines.append(f"| {r['scene']} | {r['trained on']} | {r['weights']} | "
                     + " | ".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in SCENE_FIGURES) + f" | {diff} |")
    lines += ["", "| scene: weights, mean of the four halves | " + " | ".join(SCENE_FIGURES) + " |",
              "|---|" + "---|" * len(SCENE_FIGURES)]
    lines += [f"| {key} | " + " | ".join(f"{v[k]:.3f}" for k in SCENE_FIGURES) + " |" for key, v in means.items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
