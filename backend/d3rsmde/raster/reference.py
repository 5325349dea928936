"""A reference DEM's heights kept at its own resolution, the model's relief added below it.

Fitting each tile's relative heights to a reference (:mod:`.calibration`) gives metres but keeps the model's
large-scale shape, and that shape can be far worse than the reference itself: on the Rocky Mountain sample with a
reference 8x coarser than the true DEM (1.9 km), the fitted map's RMSE was 369 m against the reference's own 104 m.
So the output takes its large scales from the reference: ``surface + bilinear(R - average(surface))``, both averages
on the reference's grid. Where the model is right at those scales nothing changes; where it is wrong the reference
wins; the model contributes only what the reference is too coarse to show.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from scipy import ndimage

from ..progress import Cancel, check_cancel
from .io import pixels_per_pixel_of, warp_onto
from .output import BLOCK, NODATA, GridSpec, VerifiedOutput

MIN_WARP_WIDTH = 8  # the narrowest grid GDAL is asked to average onto (see _reference_lows)
MAX_LOW_PIXELS = 4096 * 4096  # the large scales' grid at most (64 MB as float32): coarser for huge rasters
FILL_STEPS = 25  # past the reference's data its correction reaches about sqrt(FILL_STEPS) pixels, then its mean


def keep_reference_lows(surface: Path, reference: Path, out: VerifiedOutput, scratch: Path,
                        cancel: Cancel | None = None) -> None:
    """Write ``surface`` (heights in the reference's units) into ``out`` (same grid) with its large scales taken
    from ``reference``, one band of rows at a time. Where the reference has no data (holes, or past its edge) the
    correction is diffused outwards and settles to its mean, so the map does not step there."""
    with ExitStack() as stack:
        s = stack.enter_context(rasterio.open(surface))
        ref = stack.enter_context(rasterio.open(reference))
        grid = _low_grid(ref, s)
        with VerifiedOutput(scratch / "reference-lows.tmp", grid, final=False) as lows:
            lows.write(_carried_on(_reference_lows(ref, s, grid, cancel)), Window(0, 0, grid.width, grid.height))
        lows.verify()
        up = stack.enter_context(warp_onto(stack.enter_context(rasterio.open(lows.path)), s, Resampling.bilinear))
        for row0 in range(0, s.height, BLOCK):
            check_cancel(cancel, message="cancelled while adding the reference DEM's relief")
            window = Window(0, row0, s.width, min(BLOCK, s.height - row0))
            heights = s.read(1, window=window, masked=True)
            correction = up.read(1, window=window, masked=True).filled(0.0)
            out.write((heights + correction).filled(NODATA), window)


def _reference_lows(ref, surface, grid: GridSpec, cancel: Cancel | None = None) -> np.ndarray:
    """The reference minus the surface, both averaged over each pixel of ``grid``; NaN where either has no data."""
    # GDAL 3.6 averages wrongly onto grids under 4 pixels wide (measured: a 2 x 2 grid got its columns swapped,
    # 3 x 3 was off too), so narrow grids are averaged onto a grid k times finer and the k x k blocks meaned here.
    k = max(1, math.ceil(MIN_WARP_WIDTH / grid.width))
    fine = GridSpec(grid.crs, grid.transform * Affine.scale(1 / k), grid.width * k, grid.height * k)
    lows = np.empty((grid.height, grid.width), dtype=np.float32)
    with warp_onto(ref, fine, Resampling.average) as r, warp_onto(surface, fine, Resampling.average) as a:
        for row0 in range(0, grid.height, BLOCK):
            check_cancel(cancel, message="cancelled while adding the reference DEM's relief")
            rows = min(BLOCK, grid.height - row0)
            window = Window(0, row0 * k, fine.width, rows * k)
            lows[row0:row0 + rows] = _block_means(r.read(1, window=window), k) - _block_means(
                a.read(1, window=window), k)
    return lows


def _carried_on(values: np.ndarray) -> np.ndarray:
    """``values`` with every NaN filled: the finite values diffused outwards a few pixels (``FILL_STEPS`` rounds of
    a 1-pixel Gaussian over the missing part, starting from the mean of the finite values), so the fill joins
    the data without a step and settles to that mean further out; all NaN: zeros. (Carrying the nearest value on
    drew the reference's edge out in streaks, seen in desktop QGIS's hillshade.)"""
    missing = ~np.isfinite(values)
    if not missing.any():
        return values
    if missing.all():
        return np.zeros_like(values)
    filled = np.where(missing, values[~missing].mean(), values)
    for _ in range(FILL_STEPS):
        filled[missing] = ndimage.gaussian_filter(filled, 1.0, mode="nearest")[missing]
    return filled


def _block_means(values: np.ndarray, k: int) -> np.ndarray:
    """Means of the finite values in each ``k`` x ``k`` block (NaN where a block has none)."""
    if k == 1:
        return values.astype(np.float64)
    h, w = values.shape[0] // k, values.shape[1] // k
    blocks = values.astype(np.float64).reshape(h, k, w, k)
    finite = np.isfinite(blocks)
    counts = finite.sum(axis=(1, 3))
    sums = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    return np.divide(sums, counts, out=np.full((h, w), np.nan), where=counts > 0)


def _low_grid(ref, surface) -> GridSpec:
    """The grid the large scales live on: the reference's pixels over the whole surface (past the reference's
    edge too), or the surface's own pixels when the reference is finer; coarser when that would exceed
    ``MAX_LOW_PIXELS``."""
    if pixels_per_pixel_of(ref, surface) <= 1:
        grid = GridSpec(surface.crs, surface.transform, surface.width, surface.height)
    else:
        exact = from_bounds(*transform_bounds(surface.crs, ref.crs, *surface.bounds), transform=ref.transform)
        col0, row0 = math.floor(exact.col_off), math.floor(exact.row_off)
        col1, row1 = math.ceil(exact.col_off + exact.width), math.ceil(exact.row_off + exact.height)
        window = Window(col0, row0, max(col1 - col0, 1), max(row1 - row0, 1))
        grid = GridSpec(ref.crs, ref.window_transform(window), int(window.width), int(window.height))
    shrink = math.sqrt(grid.width * grid.height / MAX_LOW_PIXELS)
    return grid.scaled(1 / shrink) if shrink > 1 else grid
