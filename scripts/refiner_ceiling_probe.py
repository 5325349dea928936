#!/usr/bin/env python3
"""How good can the refined map be, whatever the coarse model? The true DEM itself as the coarse map, through the
weights' VAE alone and through their PLBR refiner (T = 1 and the default 6, and 6 with a uniform grey image in
place of the real one: how much of the change comes from what the refiner reads in the image), beside the weights'
own maps, each image run whole as one tile and scored as a whole scene (``scene_report``, on the DEM's grid).

If the refined true DEM misses a figure of issue 12's bar, no coarse model can meet it with this refiner and VAE.

    python scripts/refiner_ceiling_probe.py --out build/refiner-ceiling

Writes results.json and results.md into --out (the maps stay there too).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window
from scipy import ndimage

from d3rsmde import pairs
from d3rsmde.bands import select_bands
from d3rsmde.evaluation import SCENE_FIGURES, scene_report
from d3rsmde.files import atomic_write_text
from d3rsmde.imagery import stretch, stretch_limits
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.weights import default_weights_path


def image_and_truth(image: Path, dem: Path, pipe: D3Pipeline) -> tuple[np.ndarray, np.ndarray, dict]:
    """The image as the model sees it (its bands, stretched as the weights say) and the true DEM on the image's grid
    in 0..1, filled past the DEM's edge with the nearest height (those pixels are not scored); the image's profile."""
    with rasterio.open(image) as src, rasterio.open(dem) as ref:
        bands = select_bands(src, None, pipe.config.band_order)
        low, high = stretch_limits(src, bands, Window(0, 0, src.width, src.height), pipe.config.stretch_percentiles)
        rgb = stretch(src.read(bands).astype(np.float32), low, high)
        truth = np.full((src.height, src.width), np.nan, np.float32)
        reproject(ref.read(1, masked=True).astype(np.float32).filled(np.nan), truth, src_transform=ref.transform,
                  src_crs=ref.crs, dst_transform=src.transform, dst_crs=src.crs, resampling=Resampling.bilinear,
                  src_nodata=np.nan, dst_nodata=np.nan)
        profile = dict(src.profile, count=1, dtype="float32", nodata=None)
    nearest = ndimage.distance_transform_edt(~np.isfinite(truth), return_distances=False, return_indices=True)
    truth = truth[tuple(nearest)]
    return rgb, (truth - truth.min()) / np.ptp(truth), profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=IMAGE,DEM",
                        help="default: the real pairs of d3rsmde data pairs")
    parser.add_argument("--out", default="build/refiner-ceiling")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights or default_weights_path())
    pipe = D3Pipeline.from_pretrained(weights, device="cpu").eval()
    rows = []
    for name, (image, dem) in pairs.evaluation_scenes(args.scene).items():
        rgb, truth01, profile = image_and_truth(image, dem, pipe)
        height, width = truth01.shape
        pad = [(0, -height % pipe.size_multiple), (0, -width % pipe.size_multiple)]
        images = torch.from_numpy(np.pad(rgb, [(0, 0)] + pad, mode="reflect"))[None]
        truth = torch.from_numpy(np.pad(truth01, pad, mode="reflect"))[None, None]
        coarse = pipe.coarse_depth(images)
        with torch.no_grad():  # the pipeline is float32 on the CPU, as ``truth`` is
            vae = pipe.codec.decode_depth(pipe.codec.encode_depth(truth))
        maps = {"true DEM": truth, "true DEM through the VAE": vae,
                "true DEM refined, T = 1": pipe.refine(images, truth, 1),
                "true DEM refined, T = 6": pipe.refine(images, truth, 6),
                "true DEM refined, T = 6, grey image": pipe.refine(torch.full_like(images, 0.5), truth, 6),
                "the model, coarse only": coarse, "the model, T = 6": pipe.refine(images, coarse, 6)}
        for label, depth in maps.items():
            path = out / f"{'-'.join(name.lower().split())}-{'-'.join(label.replace(',', '').split())}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(depth[0, 0, :height, :width].numpy().astype(np.float32), 1)
            scene = scene_report(path, dem, errors=False)["scene"]
            rows.append({"scene": name, "map": label, **{k: scene[k] for k in SCENE_FIGURES}})
            print(rows[-1], flush=True)
    atomic_write_text(out / "results.json", json.dumps({"weights": str(weights), "machine": platform.platform(),
                                                        "rows": rows}, indent=2))
    lines = ["| scene | map (whole image as one tile) | " + " | ".join(SCENE_FIGURES) + " |",
             "|---|---|" + "---|" * len(SCENE_FIGURES)]
    lines += [f"| {r['scene']} | {r['map']} | " + " | ".join(
        "n/a" if r[k] is None else f"{r[k]:.3f}" for k in SCENE_FIGURES) + " |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
