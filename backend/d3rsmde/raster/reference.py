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
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window, from_bounds

from ..progress import Cancel, check_cancel
from .io import warp_onto
from .output import BLOCK, NODATA, GridSpec, VerifiedOutput

MIN_WARP_WIDTH = 8  # the narrowest grid GDAL is asked to average onto (see keep_reference_lows)

def keep_reference_lows(surface: Path, reference: Path, out: VerifiedOutput, scratch: Path,
                        cancel: Cancel | None = None) -> None:
    """Write ``surface`` (heights in the reference's units) into ``out`` (same grid) with its large scales taken
    from ``reference``, one band of rows at a time; pixels the reference does not cover keep the surface."""
    with ExitStack() as stack:
        s = stack.enter_context(rasterio.open(surface))
        ref = stack.enter_context(rasterio.open(reference))
        coarse = _low_grid(ref, s)
        # GDAL 3.6 averages wrongly onto grids under 4 pixels wide (measured: a 2 x 2 grid got its columns
        # swapped, 3 x 3 was off too), so narrow grids are averaged onto a grid k times finer and the k x k
        # blocks meaned here.
        k = max(1, math.ceil(MIN_WARP_WIDTH / coarse.width))
        fine = GridSpec(coarse.crs, coarse.transform * Affine.scale(1 / k), coarse.width * k, coarse.height * k)
        with VerifiedOutput(scratch / "reference-lows.tmp", coarse, final=False) as lows:
            r = stack.enter_context(warp_onto(ref, fine, Resampling.average))
            a = stack.enter_context(warp_onto(s, fine, Resampling.average))
            for row0 in range(0, coarse.height, BLOCK):
                check_cancel(cancel, message="cancelled while adding the reference DEM's relief")
                rows = min(BLOCK, coarse.height - row0)
                window = Window(0, row0 * k, fine.width, rows * k)
                difference = _block_means(r.read(1, window=window), k) - _block_means(a.read(1, window=window), k)
                lows.write(np.where(np.isfinite(difference), difference, NODATA), Window(0, row0, coarse.width, rows))
        lows.verify()
        up = stack.enter_context(warp_onto(stack.enter_context(rasterio.open(lows.path)), s, Resampling.bilinear))
        for row0 in range(0, s.height, BLOCK):
            check_cancel(cancel, message="cancelled while adding the reference DEM's relief")
            window = Window(0, row0, s.width, min(BLOCK, s.height - row0))
            heights = s.read(1, window=window, masked=True)
            correction = up.read(1, window=window, masked=True).filled(0.0)
            out.write((heights + correction).filled(NODATA), window)


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
    """The grid the large scales live on: the reference's own pixels over the surface, or the surface's grid when
    the reference is finer (then the output follows the reference, at no more pixels than the output has)."""
    native, _, _ = calculate_default_transform(ref.crs, surface.crs, ref.width, ref.height, *ref.bounds)
    if abs(native.determinant) <= abs(surface.transform.determinant):
        return GridSpec.of(surface)
    exact = from_bounds(*transform_bounds(surface.crs, ref.crs, *surface.bounds), transform=ref.transform)
    col0, row0 = max(math.floor(exact.col_off), 0), max(math.floor(exact.row_off), 0)
    col1 = min(math.ceil(exact.col_off + exact.width), ref.width)
    row1 = min(math.ceil(exact.row_off + exact.height), ref.height)
    window = Window(col0, row0, max(col1 - col0, 1), max(row1 - row0, 1))
    return GridSpec(ref.crs, ref.window_transform(window), int(window.width), int(window.height))
