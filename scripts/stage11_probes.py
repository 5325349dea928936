#!/usr/bin/env python3
"""The model card's *Stage 11* probes: how far the bar is, and which image cues the Rocky Mountain scene offers.

    python scripts/stage11_probes.py [--weights W] [--renders build/default-weights/render2] [--out build/stage11]

- ``bar``: the TRUE DEM Gaussian-blurred by sigma DEM pixels, scored as a prediction (`depth_metrics`, the
  whole-scene figures): what smoothness of a perfect map the bar (MAE <= 25, SSIM >= 0.50, grad r >= 0.35) allows.
- ``shading``: linear shape from shading (Pentland 1990: for gentle Lambertian slopes the brightness is linear in
  the slope along the sun's azimuth, so the heights are the brightness integrated along it, here in the Fourier
  domain with a damping ``lam`` of the low frequencies), every 30 degrees of azimuth: an oracle choice of the
  azimuth (by the DEM) bounds what the shading alone carries.
- ``scale``: the image resampled by a factor before the model (coarse only and T = 6): is the scene at the wrong
  scale for the model?
- ``texture``: Pearson r between the image's local contrast (standard deviation of the luminance in 9 x 9 pixels)
  and the slope of the true heights, on the Rocky Mountain scene (on the DEM's grid) and on render tiles (both
  halved, as the scene's DEM is about two image pixels): do the renders teach "rough = steep" as real images show it?
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import d3rsmde  # noqa: F401  (thread policy before torch)
import numpy as np
import rasterio
from rasterio.enums import Resampling
from scipy.ndimage import gaussian_filter, uniform_filter

from d3rsmde import pairs
from d3rsmde.datasets import load_index
from d3rsmde.evaluation import evaluate_scene, scene_on_reference_grid
from d3rsmde.metrics import depth_metrics
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster

FIGURES = ("mae", "ssim", "grad_r")


def row(figures: dict) -> str:
    return " / ".join(f"{figures[k]:.3f}" for k in FIGURES)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64).mean(axis=0)


def local_contrast(lum: np.ndarray, size: int = 9) -> np.ndarray:
    mean = uniform_filter(lum, size)
    return np.sqrt(np.maximum(uniform_filter(lum ** 2, size) - mean ** 2, 0.0))


def slope(height: np.ndarray) -> np.ndarray:
    d_row, d_col = np.gradient(height)
    return np.hypot(d_row, d_col)


def halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def write_like(path: Path, values: np.ndarray, profile: dict, valid: np.ndarray) -> Path:
    out = dict(profile, count=1, dtype="float32", nodata=np.nan, height=values.shape[0], width=values.shape[1])
    with rasterio.open(path, "w", **out) as dst:
        dst.write(np.where(valid, values, np.nan).astype(np.float32), 1)
    return path


def linear_shape_from_shading(lum: np.ndarray, azimuth_deg: float, lam: float, pad: int = 64) -> np.ndarray:
    """Brightness integrated along the sun's azimuth (clockwise from north; rows run south)."""
    image = np.pad(lum - lum.mean(), pad, mode="reflect")
    k_row = np.fft.fftfreq(image.shape[0])[:, None]
    k_col = np.fft.fftfreq(image.shape[1])[None, :]
    az = np.deg2rad(azimuth_deg)
    derivative = 2j * np.pi * (k_col * np.sin(az) - k_row * np.cos(az))  # d/ds toward the sun
    heights = np.fft.fft2(image) * np.conj(derivative) / (np.abs(derivative) ** 2 + lam ** 2)
    return -np.real(np.fft.ifft2(heights))[pad:-pad, pad:-pad]  # ground facing the sun is bright, rising away


def probe_bar(dem: Path) -> dict:
    with rasterio.open(dem) as src:
        g = src.read(1, masked=True).astype(np.float64).filled(np.nan)
    valid = np.isfinite(g)
    filled = np.where(valid, g, np.nanmean(g))
    out = {}
    for sigma in (1, 2, 3, 4, 6, 8):
        out[sigma] = depth_metrics(gaussian_filter(filled, sigma), g, valid)
        print(f"bar: true DEM blurred, sigma {sigma} DEM px: {row(out[sigma])}", flush=True)
    return out


def probe_shading(image: Path, dem: Path, work: Path) -> dict:
    with rasterio.open(image) as src:
        rgb, profile, valid = src.read(), src.profile, src.read_masks(1) > 0
    lum = luminance(rgb)
    lum[~valid] = lum[valid].mean()
    out = {}
    for lam in (0.01, 0.03, 0.1):
        scores = {az: evaluate_scene(write_like(work / "sfs.tif", linear_shape_from_shading(lum, az, lam), profile,
                                                valid), dem) for az in range(0, 360, 30)}
        best = max(scores, key=lambda az: scores[az]["grad_r"])
        out[lam] = {"best_azimuth": best, **{k: scores[best][k] for k in FIGURES},
                    "grad_r_range": [min(s["grad_r"] for s in scores.values()), scores[best]["grad_r"]]}
        print(f"shading: lam {lam}, best azimuth {best}: {row(scores[best])}", flush=True)
    return out


def probe_scale(image: Path, dem: Path, work: Path, pipe: D3Pipeline) -> dict:
    out = {}
    for factor in (0.5, 0.75, 1.0, 1.5, 2.0):
        with rasterio.open(image) as src:
            h, w = round(src.height * factor), round(src.width * factor)
            data = src.read(out_shape=(src.count, h, w),
                            resampling=Resampling.bilinear if factor > 1 else Resampling.average)
            profile = dict(src.profile, height=h, width=w,
                           transform=src.transform * src.transform.scale(src.width / w, src.height / h))
        resampled = work / f"image-x{factor}.tif"
        with rasterio.open(resampled, "w", **profile) as dst:
            dst.write(data)
        for steps in (0, 6):
            pred = work / f"pred-x{factor}-T{steps}.tif"
            predict_raster(resampled, pred, pipe, refine_steps=steps)
            out[f"x{factor} T={steps}"] = figures = evaluate_scene(pred, dem)
            print(f"scale: image x{factor}, T = {steps}: {row(figures)}", flush=True)
    return out


def probe_texture(image: Path, dem: Path, work: Path, renders: Path | None) -> dict:
    with rasterio.open(image) as src:
        contrast = local_contrast(luminance(src.read()))
        path = write_like(work / "contrast.tif", contrast, src.profile, np.ones(contrast.shape, bool))
    c, g = scene_on_reference_grid(path, dem)
    out = {"rocky_mountain": pearson(c, slope(g))}
    print(f"texture: Rocky Mountain r(contrast, slope) {out['rocky_mountain']:.3f}", flush=True)
    if renders is not None:
        by_source = collections.defaultdict(list)
        for entry in load_index(renders)["tiles"][::4]:
            with np.load(renders / entry["file"]) as tile:
                contrast = halve(local_contrast(luminance(tile["image"])))
                by_source[entry["dem"]].append(pearson(contrast, slope(halve(tile["depth"][0]))))
        for source, values in by_source.items():
            out[source] = float(np.nanmedian(values))
            print(f"texture: renders {source} ({len(values)} tiles) median r {out[source]:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="resources/weights/d3rsmde-lean.safetensors")
    parser.add_argument("--renders", type=Path, help="a render tile set (d3rsmde data render) for the texture probe")
    parser.add_argument("--out", type=Path, default=Path("build/stage11"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    image, dem = pairs.rmnp()
    results = {
        "bar": probe_bar(dem),
        "shading": probe_shading(image, dem, args.out),
        "texture": probe_texture(image, dem, args.out, args.renders),
        "scale": probe_scale(image, dem, args.out, D3Pipeline.from_pretrained(args.weights)),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
