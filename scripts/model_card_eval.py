#!/usr/bin/env python3
"""Measure the figures of resources/weights/MODEL_CARD.md: a weights file on held-out tiles and on a raster pair.

Rows: the full model at several refinement steps T, coarse only (T = 0), and two trivial baselines (a constant
plane; image luminance as height). Held-out tiles are scored with the same per-tile metrics as training
(`evaluate_tiles`); the raster pair goes through `predict_raster` + `evaluate_rasters`, i.e. what a user runs.

    python scripts/model_card_eval.py --weights W --tiles TILES/ --out build/model-card \
        [--image resources/sample/rmnp-rgb.tif --dem resources/sample/rmnp-dem.tif] [--steps 1,3,6,10]

Writes results.json, results.md and examples.png (image | reference | coarse | refined) into --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from d3rsmde.data import TileDataset
from d3rsmde.device import describe_device
from d3rsmde.metrics import format_metrics_table
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import evaluate_rasters, predict_raster
from d3rsmde.train.finetune import evaluate_tiles


class ConstantPlane:
    """Baseline: the same height everywhere."""

    def __call__(self, images: torch.Tensor, refine_steps=None) -> torch.Tensor:
        return torch.zeros_like(images[:, :1])


class Luminance:
    """Baseline: brighter is higher (the image's mean over bands)."""

    def __call__(self, images: torch.Tensor, refine_steps=None) -> torch.Tensor:
        return images.mean(dim=1, keepdim=True)


def tile_rows(pipe: D3Pipeline, tiles: Path, split: str, steps: list[int]) -> dict[str, dict]:
    dataset = TileDataset(tiles, split)
    rows = {f"D3-RSMDE T={t}" if t else "coarse only (T=0)": evaluate_tiles(pipe, dataset, refine_steps=t)
            for t in steps}
    rows["baseline: constant plane"] = evaluate_tiles(ConstantPlane(), dataset)
    rows["baseline: luminance"] = evaluate_tiles(Luminance(), dataset)
    return rows


def raster_rows(pipe: D3Pipeline, image: Path, dem: Path, steps: list[int], work: Path) -> dict[str, dict]:
    rows = {}
    for t in steps:
        out = work / f"pred-T{t}.tif"
        predict_raster(image, out, pipe, refine_steps=t)
        rows[f"D3-RSMDE T={t}" if t else "coarse only (T=0)"] = evaluate_rasters(out, dem)["per_tile"]
    for name, baseline in (("constant plane", ConstantPlane()), ("luminance", Luminance())):
        out = _baseline_raster(baseline, image, work / f"{name.replace(' ', '-')}.tif", pipe.config.tile_size)
        rows[f"baseline: {name}"] = evaluate_rasters(out, dem)["per_tile"]
    return rows


def _baseline_raster(baseline, image: Path, out: Path, tile_size: int) -> Path:
    """The baseline applied to the whole image at once (both are per-pixel, so tiling changes nothing)."""
    import rasterio

    with rasterio.open(image) as src:
        profile = src.profile | {"count": 1, "dtype": "float32"}
        rgb = torch.from_numpy(src.read([1, 2, 3]).astype(np.float32))[None]
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(baseline(rgb)[0, 0].numpy(), 1)
            dst.update_tags(tile_size=str(tile_size))  # evaluate_rasters scores per tile of this size
    return out


def examples_png(pipe: D3Pipeline, tiles: Path, split: str, out: Path, count: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = TileDataset(tiles, split)
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    fig, axes = plt.subplots(count, 4, figsize=(10, 2.6 * count))
    for row, i in zip(axes, picks):
        item = dataset[int(i)]
        images = item["image"][None]
        coarse = pipe(images, refine_steps=0)[0, 0].numpy()
        refined = pipe(images)[0, 0].numpy()
        depth = np.where(item["mask"][0].numpy(), item["depth"][0].numpy(), np.nan)
        for ax, data, title in zip(row, [item["image"].permute(1, 2, 0).numpy(), depth, coarse, refined],
                                   ["image", "reference (m)", "coarse", f"refined T={pipe.config.num_steps}"]):
            ax.imshow(data, cmap=None if data.ndim == 3 else "terrain")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--tiles", required=True, help="tile dataset (d3rsmde data build/world)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image", default="resources/sample/rmnp-rgb.tif")
    parser.add_argument("--dem", default="resources/sample/rmnp-dem.tif")
    parser.add_argument("--steps", default="0,1,3,6,10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="build/model-card")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    pipe = D3Pipeline.from_pretrained(args.weights, device=args.device)
    start = time.perf_counter()
    tiles = tile_rows(pipe, Path(args.tiles), args.split, steps)
    raster = raster_rows(pipe, Path(args.image), Path(args.dem), steps, out)
    examples_png(pipe, Path(args.tiles), args.split, out / "examples.png")
    machine = f"{describe_device(pipe.device)}; {platform.platform()}; torch {torch.__version__}"
    results = {"weights": str(args.weights), "machine": machine, "seconds": time.perf_counter() - start,
               "held_out_tiles": tiles, "raster_pair": raster}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    n = next(iter(tiles.values()))["tiles"]
    md = (f"Measured on: {machine}\n\n**Held-out {args.split} blocks ({n} tiles)**\n\n"
          + format_metrics_table(tiles) + f"\n**Raster pair {Path(args.image).name} vs {Path(args.dem).name}**"
          " (predict_raster, per-tile metrics over the DEM's footprint)\n\n" + format_metrics_table(raster))
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
