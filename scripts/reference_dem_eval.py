#!/usr/bin/env python3
"""What a reference DEM gives: ``predict_raster(reference_dem=...)`` against the reference alone, on real pairs.

For each scene (the real pairs of ``d3rsmde data pairs`` by default, or ``--scene NAME=IMAGE,DEM``) and each factor F,
the true DEM averaged over F x F pixels plays the user's coarse reference DEM. Scored on the true DEM's grid
(``evaluate_scene``'s averaging, RMSE in metres, then the paper's metrics of both maps stretched as one image):
the engine's output in metres, and the coarse reference itself resampled bilinearly onto that grid (what a user
has without the model).

    python scripts/reference_dem_eval.py --factors 2,4,8 --out build/reference-dem \
        --figure docs/images/reference-dem.png

Writes results.json and results.md into --out; ``--figure``: the first scene at the middle factor, true DEM |
reference | output, shaded, on the true DEM's grid.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine

from d3rsmde import pairs
from d3rsmde.evaluation import scene_on_reference_grid
from d3rsmde.files import atomic_write_text
from d3rsmde.metrics import depth_metrics
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.raster.io import warp_onto
from d3rsmde.weights import default_weights_path

METRICS = ("rmse_m", "mae", "ssim", "grad_r")


def coarse_reference(dem: Path, factor: int, out: Path) -> Path:
    """``dem`` averaged over ``factor`` x ``factor`` pixels, on its own coarser grid."""
    with rasterio.open(dem) as ds:
        h, w = -(-ds.height // factor), -(-ds.width // factor)
        data = ds.read(1, out_shape=(h, w), resampling=Resampling.average, masked=True)
        profile = dict(ds.profile, height=h, width=w, dtype="float32", nodata=np.nan,
                       transform=ds.transform * Affine.scale(ds.width / w, ds.height / h))
    with rasterio.open(out, "w", **profile) as o:
        o.write(data.astype(np.float32).filled(np.nan), 1)
    return out


def scores(p: np.ndarray, g: np.ndarray) -> dict:
    valid = np.isfinite(p) & np.isfinite(g)
    m = depth_metrics(p, g, valid)
    return {"rmse_m": float(np.sqrt(np.mean((p - g)[valid] ** 2))), **{k: m[k] for k in METRICS[1:]}}


def reference_alone(reference: Path, dem: Path) -> tuple[np.ndarray, np.ndarray]:
    """The coarse reference resampled bilinearly onto the true DEM's grid, and the true DEM."""
    with rasterio.open(dem) as d, rasterio.open(reference) as r, warp_onto(r, d, Resampling.bilinear) as vrt:
        g = d.read(1, masked=True).astype(np.float64).filled(np.nan)
        return vrt.read(1, masked=True).astype(np.float64).filled(np.nan), g


def write_figure(png: Path, title: str, maps: dict[str, np.ndarray]) -> None:
    """The maps side by side on one colour scale, hill-shaded (the true DEM's grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LightSource

    truth = next(iter(maps.values()))
    low, high = np.nanpercentile(truth, (1, 99))
    fig, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 5.6), constrained_layout=True)
    for ax, (name, z) in zip(axes, maps.items()):
        filled = np.where(np.isfinite(z), z, np.nanmean(z))
        ax.imshow(LightSource(azdeg=315, altdeg=45).shade(filled, plt.cm.terrain, vert_exag=0.05, vmin=low,
                                                           vmax=high, blend_mode="soft"))
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(title)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    parser.add_argument("--factors", default="2,4,8")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=IMAGE,DEM")
    parser.add_argument("--out", default="build/reference-dem")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the first scene at the middle factor")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = pairs.evaluation_scenes(args.scene)
    pipe = D3Pipeline.from_pretrained(args.weights or default_weights_path())
    rows = []
    factors = [int(f) for f in args.factors.split(",")]
    for name, (image, dem) in scenes.items():
        for factor in factors:
            tag = f"{name.replace(' ', '-').lower()}-{factor}"
            reference = coarse_reference(dem, factor, out / f"{tag}-reference.tif")
            predict_raster(image, out / f"{tag}-output.tif", pipe, reference_dem=reference)
            output, truth = scene_on_reference_grid(out / f"{tag}-output.tif", dem)
            alone, _ = reference_alone(reference, dem)
            rows.append({"scene": name, "factor": factor, "what": "output (predict_raster with the reference)",
                         **scores(output, truth)})
            rows.append({"scene": name, "factor": factor, "what": "the reference alone (bilinear)",
                         **scores(alone, truth)})
            if args.figure and name == next(iter(scenes)) and factor == factors[len(factors) // 2]:
                write_figure(args.figure, f"{name}: reference DEM {factor}x coarser than the true DEM", {
                    "true DEM": truth, f"reference ({factor}x coarser), bilinear": alone,
                    "output with that reference": output})
            print(rows[-2], rows[-1], sep="\n", flush=True)
    result = {"machine": platform.node(), "weights": str(args.weights or "bundled"), "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    lines = ["| scene | reference | map | RMSE (m) | MAE | SSIM | grad r |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scene']} | {r['factor']}x coarser | {r['what']} | {r['rmse_m']:.2f} | {r['mae']:.2f} | "
              f"{r['ssim']:.3f} | {r['grad_r']:.3f} |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
