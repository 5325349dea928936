#!/usr/bin/env python3
"""The model card's *Stage 13* probes: can inference alone (no new training) close the bar?

    python scripts/scene_tile_eval.py --weights W --tiles 256,320,384,448,512 --steps 0,6 --max-scenes 4 \
        --world build/default-weights/world --scene rmnp=IMAGE,DEM --scene meuse=IMAGE,DEM --out build/stage13
    python scripts/stage13_probes.py --weights W --scenes build/stage13

Every row is a whole scene scored paired against the default prediction of the same scene (tile 256, overlap 32,
T = 0 or 6), as ``d3rsmde evaluate --whole-scene --versus`` does: the difference and its jackknife standard error.

- ``dihedral``: the mean of the maps predicted from the image flipped and turned (2: 0 and 180 degrees; 4: the four
  turns; 8: with the mirror images), as Marigold averages its ensemble; the training saw all eight.
- ``tilings``: the mean of the maps predicted at several tile sizes (256-512, from ``scene_tile_eval.py``'s outputs):
  each tiling gives every pixel different context and different seams.
- ``phase``: the default tiling moved by half a tile, alone and averaged with the default one.
- ``anchor``: the whole scene resampled into one tile, predicted, and used as the target of per-tile fits (the
  reference-DEM mode's joint solve) instead of the seams alone: the scene's layout from one view.
- ``scale_prior``: a weak prior pulling every tile's scale in the seam solve toward the common one (weight
  ``lam`` of the mean overlap energy per tile): are the scales the seams give too free?
- ``spread``: is the disagreement of the tilings an error map? Spearman r, per pixel of the DEM's grid, between the
  standard deviation of the five tilings' maps and the default map's error (all stretched over the scene).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
from pathlib import Path

import d3rsmde  # noqa: F401  (thread policy before torch)
import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from scipy.stats import spearmanr

from d3rsmde import pairs, tiling
from d3rsmde.evaluation import SCENE_FIGURES, scene_on_reference_grid, scene_report
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import calibration, predict, predict_raster
from d3rsmde.vae import minmax_per_tile

DIHEDRAL = [(turns, flip) for flip in (False, True) for turns in range(4)]
DEFAULT_TILE = 256


def paired(pred: Path, dem: Path, base: Path) -> dict:
    report = scene_report(pred, dem, versus=base)
    return {"scene": report["scene"], "minus_default": report["scene_minus_versus"]}


def show(label: str, result: dict) -> None:
    scene, diff = result["scene"], result["minus_default"]
    figures = " / ".join(f"{scene[k]:.3f}" for k in SCENE_FIGURES)
    changes = ", ".join(f"{k} {diff[k][0]:+.3f} +- {diff[k][1]:.3f}" for k in SCENE_FIGURES if diff[k])
    print(f"{label}: {figures} | minus default: {changes}", flush=True)


def mean_of(paths: list[Path], out: Path) -> Path:
    maps = []
    for path in paths:
        with rasterio.open(path) as src:
            maps.append(src.read(1))
            profile = src.profile
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.mean(maps, axis=0).astype(np.float32), 1)
    return out


@contextlib.contextmanager
def patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def dihedral_call(n: int):
    """``D3Pipeline.__call__`` averaging the first ``n`` flips/turns (2: 0 and 180 degrees)."""
    views = [(0, False), (2, False)] if n == 2 else DIHEDRAL[:n]
    plain = D3Pipeline.__call__

    def call(self, images, refine_steps=None, on_step=None):
        total = 0
        for turns, flip in views:
            x = torch.rot90(images, turns, (-2, -1))
            y = plain(self, x.flip(-1) if flip else x, refine_steps)
            total = total + torch.rot90(y.flip(-1) if flip else y, -turns, (-2, -1))
        return minmax_per_tile(total / len(views))
    return call


def shifted_offsets(shift: int):
    plain = tiling._offsets
    return lambda length, tile, overlap, margin: plain(length + shift, tile, overlap, margin) - shift


def scale_prior_solve(lam: float):
    plain = tiling.solve_affines

    def solve(n_tiles, seam_pairs, fits=(), **kw):
        seam_pairs = list(seam_pairs)
        if fits:
            return plain(n_tiles, seam_pairs, fits, **kw)
        energy = sum(float(np.sum(r * r)) for _, _, r in seam_pairs)
        w = math.sqrt(lam * max(energy, 1.0) / n_tiles)
        prior = [(i, np.array([[w, 0.0]]), np.array([w])) for i in range(n_tiles)]  # w * scale_i = w * 1
        return plain(n_tiles, seam_pairs, prior, **kw)
    return solve


def copy_surface(surface, reference, out, scratch, cancel=None):
    """The aligned surface as it is: the anchor sets the tiles' scales and shifts, not the map's large scales."""
    with rasterio.open(surface) as src:
        out.write(src.read(1), rasterio.windows.Window(0, 0, src.width, src.height))


def one_tile_view(image: Path, out: Path, side: int = DEFAULT_TILE) -> Path:
    with rasterio.open(image) as src:
        f = side / max(src.height, src.width)
        h, w = round(src.height * f), round(src.width * f)
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        profile = dict(src.profile, height=h, width=w,
                       transform=src.transform * src.transform.scale(src.width / w, src.height / h))
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def spread_error_rank_correlation(preds: list[Path], dem: Path) -> float:
    maps = [scene_on_reference_grid(p, dem) for p in preds]
    truth = maps[0][1]
    valid = np.isfinite(truth) & np.all([np.isfinite(m) for m, _ in maps], axis=0)

    def stretched(a: np.ndarray) -> np.ndarray:
        return (a[valid] - a[valid].min()) / (a[valid].max() - a[valid].min())
    spread = np.std([stretched(m) for m, _ in maps], axis=0)
    return float(spearmanr(spread, np.abs(stretched(maps[0][0]) - stretched(truth))).correlation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="resources/weights/d3rsmde-lean.safetensors")
    parser.add_argument("--scenes", type=Path, default=Path("build/stage13"),
                        help="scene_tile_eval.py's --out: the held-out scenes and their predictions per tile size")
    parser.add_argument("--tiles", default="256,320,384,448,512")
    args = parser.parse_args()
    work = args.scenes / "probes"
    work.mkdir(parents=True, exist_ok=True)
    pipe = D3Pipeline.from_pretrained(args.weights)
    rmnp, meuse = pairs.rmnp(), pairs.meuse()
    scenes = {"rmnp": rmnp, "meuse": meuse}
    for dem in sorted(args.scenes.glob("*-dem.tif")):
        name = dem.name[:-len("-dem.tif")]
        scenes[name] = (args.scenes / f"{name}-rgb.tif", dem)
    tiles = [int(t) for t in args.tiles.split(",")]
    results = collections.defaultdict(dict)

    def default(name: str, steps: int) -> Path:
        return args.scenes / f"{name}-tile{DEFAULT_TILE}-T{steps}.tif"

    def record(probe: str, name: str, steps: int, pred: Path) -> None:
        result = paired(pred, scenes[name][1], default(name, steps))
        results[probe][f"{name} T={steps}"] = result
        show(f"{probe} {name} T={steps}", result)

    for steps in (0, 6):
        for name in ("rmnp", "meuse"):
            for n in (2, 4, 8):
                pred = work / f"{name}-dihedral{n}-T{steps}.tif"
                with patched(D3Pipeline, "__call__", dihedral_call(n)):
                    predict_raster(scenes[name][0], pred, pipe, refine_steps=steps)
                record(f"dihedral{n}", name, steps, pred)
        for name in scenes:
            if name == "meuse":  # smaller than one tile: every tiling is the same one tile
                continue
            image = scenes[name][0]
            record("tilings", name, steps, mean_of([args.scenes / f"{name}-tile{t}-T{steps}.tif" for t in tiles],
                                                   work / f"{name}-tilings-T{steps}.tif"))
            shifted = work / f"{name}-phase-T{steps}.tif"
            with patched(tiling, "_offsets", shifted_offsets(DEFAULT_TILE // 2)):
                predict_raster(image, shifted, pipe, refine_steps=steps)
            record("phase", name, steps, shifted)
            record("phase+default", name, steps, mean_of([shifted, default(name, steps)],
                                                         work / f"{name}-phase-mean-T{steps}.tif"))
            view = work / f"{name}-one-tile-T0.tif"
            if not view.exists():
                predict_raster(one_tile_view(image, work / f"{name}-one-tile-rgb.tif"), view, pipe, refine_steps=0)
            anchored = work / f"{name}-anchored-T{steps}.tif"
            with patched(predict, "keep_reference_lows", copy_surface):
                predict_raster(image, anchored, pipe, refine_steps=steps, reference_dem=view)
            record("anchor", name, steps, anchored)
            for lam in (0.1, 1.0):
                pred = work / f"{name}-prior{lam}-T{steps}.tif"
                with patched(calibration, "solve_affines", scale_prior_solve(lam)):
                    predict_raster(image, pred, pipe, refine_steps=steps)
                record(f"scale_prior{lam}", name, steps, pred)

    for steps in (0, 6):
        for name in scenes:
            if name != "meuse":
                r = spread_error_rank_correlation([args.scenes / f"{name}-tile{t}-T{steps}.tif" for t in tiles],
                                                  scenes[name][1])
                results["spread"][f"{name} T={steps}"] = r
                print(f"spread {name} T={steps}: Spearman r(spread of the tilings, error of tile {tiles[0]}) "
                      f"{r:.3f}", flush=True)

    summary = {}
    for probe, rows in results.items():
        for steps in (0, 6):
            if probe == "spread":
                continue
            diffs = [r["minus_default"] for key, r in rows.items() if key.endswith(f"T={steps}")]
            mean = {k: float(np.mean([d[k][0] for d in diffs if d[k]])) for k in SCENE_FIGURES}
            better = {k: int(sum((d[k][0] > 0) == (k in ("ssim", "grad_r")) for d in diffs if d[k] and d[k][0]))
                      for k in SCENE_FIGURES}
            summary[f"{probe} T={steps}"] = {"scenes": len(diffs), "mean_difference": mean, "scenes_better": better}
            print(f"{probe} T={steps}, {len(diffs)} scenes, mean difference "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in mean.items())
                  + " | scenes better " + ", ".join(f"{k} {v}" for k, v in better.items()), flush=True)
    (work / "results.json").write_text(json.dumps({"rows": results, "summary": summary}, indent=1, default=float))


if __name__ == "__main__":
    main()
