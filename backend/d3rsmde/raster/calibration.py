"""Putting every tile on one scale and shift: the seams' overlapping rows tie neighbours together, and per-tile fits
to a reference DEM, when there is one, give the surface metres (see :mod:`d3rsmde.tiling` for the sparse solve).
Without a reference the surface's scale is arbitrary; the engine stretches the blended surface onto 0..1."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..errors import InputError
from ..tiling import TileGrid, fit_rows, pair_rows, solve_affines
from .io import pixels_per_pixel_of, warp_onto
from .output import GridSpec
from .tiles import TileStore

MIN_REFERENCE_PIXELS = 2  # one reference pixel gives a level but no relief to scale the heights by


def flat_tiles(ranges: np.ndarray) -> np.ndarray:
    """Which tiles' maps are a constant (min = max; ``ranges`` as :func:`align_tiles` takes them): drawn flat
    where the image shows no relief (:mod:`.predict`), they fit any scale."""
    return np.isfinite(ranges).all(axis=1) & (ranges[:, 0] == ranges[:, 1])


def align_tiles(grid: TileGrid, store: TileStore, ranges: np.ndarray, reference: Path | None = None,
                spec: GridSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile (scale, shift) that join the tiles in ``store`` into one surface (``ranges``: each tile's (min,
    max), NaN for a tile without data): of mean scale 1 and mean shift 0 over the tiles with relief (a flat tile,
    min = max, fits any scale and must not take it all), or in the units of the ``reference`` DEM read on ``spec``,
    the grid the tiles were predicted on."""
    has_data = np.isfinite(ranges).all(axis=1)
    pairs = _overlap_rows(grid, store, has_data)
    scale, shift = solve_affines(len(grid), pairs, gauge_weights=(has_data & ~flat_tiles(ranges)) * 1.0)
    if reference is None:
        return scale, shift
    fits = _reference_fits(grid, store, has_data, reference, spec)
    # One global (gain, offset) of the aligned surface: a_i*p + b_i -> g*(a_i*p + b_i) + o.
    rows = np.concatenate([a @ np.array([[scale[i], 0.0], [shift[i], 1.0]]) for i, a, _ in fits])
    gain, offset = np.linalg.lstsq(rows, np.concatenate([b for _, _, b in fits]), rcond=None)[0]
    return solve_affines(len(grid), pairs, fits, initial_scale=gain * scale, initial_shift=gain * shift + offset)


def _tile_part(grid: TileGrid, store: TileStore, i: int, box) -> np.ndarray:
    """Tile ``i``'s prediction over a raster box inside it."""
    r, c = grid.origin(i)
    return store.read(i, box.row0 - r, box.row1 - r)[:, box.col0 - c : box.col1 - c]


def _overlap_rows(grid: TileGrid, store: TileStore, has_data: np.ndarray) -> list:
    """Seam equations: for each pair of overlapping tiles with data, rows that ask them to agree there."""
    out = []
    for i, j, box in grid.pairs():
        if has_data[i] and has_data[j]:
            r = pair_rows(_tile_part(grid, store, i, box), _tile_part(grid, store, j, box))
            if r is not None:
                out.append((i, j, r))
    return out


def _reference_fits(grid: TileGrid, store: TileStore, has_data: np.ndarray, ref_path: Path, spec: GridSpec) -> list:
    """Per-tile robust fits to the reference DEM, to be solved jointly with the overlaps so metres vary smoothly.

    A reference pixel is one measurement however many output pixels it is warped onto, so the fits are weighted
    down by that number: a coarse DEM sets the level and the large-scale shape, the overlaps keep the tiles
    together, and fewer than ``MIN_REFERENCE_PIXELS`` over the raster cannot scale the heights at all. Tiles the
    reference misses start from the aligned surface under one global fit.
    """
    fits = []
    with rasterio.open(ref_path) as ref, warp_onto(ref, spec, Resampling.bilinear) as vrt:
        ratio = pixels_per_pixel_of(ref, spec)  # output pixels per reference pixel
        covering = spec.width * spec.height / ratio
        if covering < MIN_REFERENCE_PIXELS:
            raise InputError(
                f"the reference DEM {ref_path.name} is too coarse for this raster: about {covering:.2g} of its pixels "
                f"cover it, and at least {MIN_REFERENCE_PIXELS} are needed to scale the heights (one pixel gives a "
                "level, not a relief); give a finer DEM")
        weight = 1.0 / math.sqrt(max(1.0, ratio))
        for i in np.flatnonzero(has_data):
            box, (r, c) = grid.box(i), grid.origin(i)
            window = Window(box.col0, box.row0, box.col1 - box.col0, box.row1 - box.row0)
            y = np.full((grid.tile, grid.tile), np.nan, dtype=np.float32)
            y[box.row0 - r : box.row1 - r, box.col0 - c : box.col1 - c] = vrt.read(1, window=window)
            fit = fit_rows(store.read(i), y)
            if fit is not None:
                fits.append((i, weight * fit[0], weight * fit[1]))
    if not fits:
        raise InputError(f"the reference DEM {ref_path.name} has no valid data over the input raster")
    return fits
