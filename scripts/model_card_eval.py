#!/usr/bin/env python3
"""Measure the figures of resources/weights/MODEL_CARD.md: whole scenes as a user sees them, and held-out tiles.

Rows: the model at several refinement steps T (T = 0 is the coarse model alone) and three trivial baselines
(a constant plane; image luminance as height; inverted luminance).
- Whole scenes, none ever trained on (Rocky Mountain National Park; the flat Meuse floodplain; Olinda, a coastal
  city with sea, Debian ``r-cran-stars``): ``predict_raster``
  with default settings, then ``evaluate_scene`` (prediction averaged onto the DEM grid, both stretched to 0..255
  as one image, the paper's metrics plus the gradient correlation).
- Held-out tiles of each tile dataset's test split (per-tile metrics, as the paper's tables).

    python scripts/model_card_eval.py --weights W --tiles build/default-weights/render,build/default-weights/world \
        --out build/model-card [--steps 0,1,3,6,10]

Writes results.json, results.md and examples.png (image | reference | coarse | refined, hillshaded) into --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from d3rsmde import pairs
from d3rsmde.datasets import TileDataset
from d3rsmde.device import describe_device
from d3rsmde.evaluation import (SCENE_FIGURES, evaluate_scene, evaluate_tiles, scene_report,
                                scene_on_reference_grid)
from d3rsmde.files import atomic_write_text
from d3rsmde.lpips_alexnet import lpips_weights
from d3rsmde.metrics import format_metrics_table
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import NODATA, height_profile, predict_raster
from d3rsmde.sources import FetchError

BASELINES = {
    "constant plane": lambda rgb: np.zeros_like(rgb[0]),
    "luminance": lambda rgb: rgb.mean(axis=0),
    "inverted luminance": lambda rgb: -rgb.mean(axis=0),
}


class _PerPixel:
    """A baseline as a pipeline-like callable for the tile evaluation."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, images: torch.Tensor, refine_steps=None) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.asarray(self.fn(x.numpy()), np.float32))[None] for x in images])


def _row_name(steps: int) -> str:
    return f"D3-RSMDE T={steps}" if steps else "coarse only (T=0)"


def scene_rows(pipe: D3Pipeline, image: Path, dem: Path, steps: list[int], work: Path,
               overlap: int | None = None) -> dict[str, dict]:
    rows = {}
    for t in steps:
        out = work / f"{image.stem}-T{t}.tif"
        began = time.perf_counter()
        predict_raster(image, out, pipe, refine_steps=t, overlap=overlap)
        report = scene_report(out, dem)
        rows[_row_name(t)] = {**report["scene"], "seconds": time.perf_counter() - began,
                              "jackknife_se": report["scene_standard_error"]}
    with rasterio.open(image) as src:
        rgb = src.read([1, 2, 3], masked=True).astype(np.float32).filled(np.nan)
        profile = height_profile(src)
    for name, fn in BASELINES.items():
        out = work / f"{image.stem}-{name.replace(' ', '-')}.tif"
        height = fn(rgb)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(np.where(np.isnan(height), NODATA, height).astype(np.float32), 1)
        rows[f"baseline: {name}"] = evaluate_scene(out, dem)
    return rows


def tile_rows(pipe: D3Pipeline, root: Path, steps: list[int]) -> dict[str, dict]:
    dataset = TileDataset(root, "test")
    rows = {_row_name(t): evaluate_tiles(pipe, dataset, refine_steps=t) for t in steps}
    for name, fn in BASELINES.items():
        rows[f"baseline: {name}"] = evaluate_tiles(_PerPixel(fn), dataset)
    return rows


def _hillshade(height: np.ndarray) -> np.ndarray:
    """Relief shading (sun from the north-west) of a map stretched to 0..1, so slopes show in the picture."""
    h = (height - np.nanmin(height)) / max(np.nanmax(height) - np.nanmin(height), 1e-9)
    dy, dx = np.gradient(np.nan_to_num(h, nan=float(np.nanmean(h))) * 40.0)
    shade = (dx - dy) / np.sqrt(1 + dx**2 + dy**2) / np.sqrt(2)
    return np.clip(0.5 + shade, 0, 1)


def examples_png(scenes: dict[str, tuple[Path, Path]], work: Path, steps: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scenes), 4, figsize=(14, 3.6 * len(scenes)), squeeze=False)
    for row, (name, (image, dem)) in zip(axes, scenes.items()):
        with rasterio.open(image) as src:
            rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        panels = [(rgb, f"{name}: image", None)]
        for label, t in (("coarse only", 0), (f"refined T={steps}", steps)):
            pred, reference = scene_on_reference_grid(work / f"{image.stem}-T{t}.tif", dem)
            panels.append((np.where(np.isfinite(reference), pred, np.nan), label, "terrain"))
        panels.insert(1, (reference, "reference DEM", "terrain"))
        for ax, (data, title, cmap) in zip(row, panels):
            if cmap:
                ax.imshow(data, cmap=cmap)
                ax.imshow(_hillshade(data), cmap="gray", alpha=0.35)
            else:
                ax.imshow(data)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--tiles", default="", help="comma-separated tile datasets whose test split is scored")
    parser.add_argument("--scene", action="append", metavar="NAME=IMAGE,DEM",
                        help="a whole scene to score (repeatable; default: the Rocky Mountain, Meuse and Olinda "
                             "pairs, fetched through pip and apt)")
    parser.add_argument("--steps", default="0,1,3,6,10")
    parser.add_argument("--overlap", type=int, help="tile overlap of the whole-scene predictions (default: "
                                                    "predict_raster's; the figures before 0.4.0 used 64)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch and convert the LPIPS AlexNet weights once if they are missing (default: yes)")
    parser.add_argument("--out", default="build/model-card")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    try:  # LPIPS needs its weights on disk (depth_metrics never downloads): fetched and converted once
        if args.lpips:
            lpips_weights()
    except FetchError as err:
        print(f"LPIPS will be n/a: {err}")
    pipe = D3Pipeline.from_pretrained(args.weights, device=args.device)
    start = time.perf_counter()
    scenes = pairs.evaluation_scenes(args.scene)
    results = {name: scene_rows(pipe, image, dem, steps, out, args.overlap) for name, (image, dem) in scenes.items()}
    for root in filter(None, args.tiles.split(",")):
        results[f"held-out tiles: {Path(root).name}"] = tile_rows(pipe, Path(root), steps)
    machine = f"{describe_device(pipe.device)}; {platform.platform()}; torch {torch.__version__}"
    atomic_write_text(out / "results.json", json.dumps({"weights": str(args.weights), "machine": machine,
                                                        "seconds": time.perf_counter() - start, **results},
                                                       indent=1, default=str))
    md = f"Measured on: {machine}\n"
    for name, rows in results.items():
        n = next(iter(rows.values())).get("tiles") or next(iter(rows.values())).get("pixels")
        unit = "tiles, per-tile metrics" if name.startswith("held-out") else "DEM pixels, whole scene"
        md += f"\n**{name}** ({n} {unit})\n\n" + format_metrics_table(rows)
        noise = {row: r["jackknife_se"] for row, r in rows.items() if "jackknife_se" in r}
        if noise:
            md += ("\nJackknife standard errors (the scene scored with each of 3 x 3 blocks left out in turn; "
                   "MAE / SSIM / LPIPS / ∇r): " + "; ".join(
                       f"{row} " + " / ".join("n/a" if se[k] is None else f"{se[k]:.{2 if k == 'mae' else 3}f}"
                                              for k in SCENE_FIGURES) for row, se in noise.items()) + "\n")
    atomic_write_text(out / "results.md", md)
    print(md)
    if 0 in steps:  # the picture sets the coarse map beside the refined one
        default = pipe.config.num_steps if pipe.config.num_steps in steps else steps[-1]
        examples_png(scenes, out, default, out / "examples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
