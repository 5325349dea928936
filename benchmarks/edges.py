"""Seams and the raster-edge frame, as a user would see them: ``predict_raster`` on a smooth synthetic raster, then
each row's and column's mean |second difference| over the median line's, the worst of the outer 4 lines (border)
and of the rest (interior). A seam or a frame is a line much rougher than the terrain around it.

    python -m benchmarks.edges --overlaps 64,32 [--weights W] [--width 1700 --height 1100]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio

from benchmarks.raster import write_synthetic_geotiff
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.weights import default_weights_path

BORDER_LINES = 4


def worst_lines(height: np.ndarray) -> dict[str, float]:
    """Worst border and interior line roughness of ``height``, as multiples of the median line's."""
    d2_cols = np.abs(height[:, :-2] - 2 * height[:, 1:-1] + height[:, 2:]).mean(axis=0)
    d2_rows = np.abs(height[:-2] - 2 * height[1:-1] + height[2:]).mean(axis=1)
    border, interior = [], []
    for d2 in (d2_cols, d2_rows):
        ratio = d2 / np.median(d2)
        border.append(max(ratio[:BORDER_LINES].max(), ratio[-BORDER_LINES:].max()))
        interior.append(ratio[BORDER_LINES:-BORDER_LINES].max())
    return {"border": float(max(border)), "interior": float(max(interior))}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="default: the shipped weights")
    p.add_argument("--overlaps", default="64", help="comma-separated tile overlaps to compare")
    p.add_argument("--width", type=int, default=1700)
    p.add_argument("--height", type=int, default=1100)
    args = p.parse_args(argv)
    pipe = D3Pipeline.from_pretrained(args.weights or default_weights_path())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "terrain.tif"
        write_synthetic_geotiff(src, args.width, args.height, seed=0)
        for overlap in (int(v) for v in args.overlaps.split(",")):
            out = Path(tmp) / f"overlap{overlap}.tif"
            stats = predict_raster(src, out, pipe, overlap=overlap)
            with rasterio.open(out) as ds:
                worst = worst_lines(ds.read(1).astype(np.float64))
            print(f"tile {stats['tile']}, overlap {overlap}, edge margin {stats['edge_margin']}: worst border line "
                  f"{worst['border']:.2f}x, worst interior line {worst['interior']:.2f}x the median", flush=True)


if __name__ == "__main__":
    main()
