"""Imagery preprocessing shared by inference and training-data building (the role of diffusers' image processor):
bands chosen by :mod:`d3rsmde.bands`, then each band stretched linearly from its robust 1-99 percentiles over the
whole raster to [0, 1]. Tiles cut for training are stretched exactly as the raster engine stretches at inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

from .config import STRETCH_PERCENTILES
from .errors import InputError

STATS_MAX_SIDE = 1024  # percentiles come from a decimated read: exact enough, flat memory


def is_paletted(src, band: int) -> bool:
    """Whether ``band`` of ``src`` holds colour-table indexes (read them nearest: a mean of indexes is no colour)."""
    return src.colorinterp[band - 1] == ColorInterp.palette


def dataset_name(src) -> str:
    """The file name an open dataset reads, for messages: also through a WarpedVRT, whose own name is
    ``WarpedVRT(/full/path)``."""
    return Path(src.files[0] if src.files else src.name).name


def read_image(src, bands: Sequence[int], window: Window | None = None, out_shape: tuple[int, int] | None = None,
               resampling: Resampling = Resampling.nearest) -> np.ndarray:
    """``bands`` of ``src`` (an open rasterio dataset) over ``window``, ``len(bands) x H x W``: what the model sees.
    A paletted raster (one band of colour-table indexes, e.g. an 8-bit PNG or GeoTIFF saved with a palette) reads
    as the red, green and blue of its colour table: its indexes are no brightness. Decimated reads take the nearest
    index, never a mean of indexes."""
    paletted = is_paletted(src, bands[0])
    shape = None if out_shape is None else (len(bands), *out_shape)
    data = src.read(list(bands), window=window, out_shape=shape,
                    resampling=Resampling.nearest if paletted else resampling)
    if not paletted:
        return data
    table = src.colormap(bands[0])
    lut = np.zeros((max(max(table) + 1, int(data.max()) + 1), 3), np.uint8)
    for index, rgba in table.items():
        lut[index] = rgba[:3]
    return np.moveaxis(lut[data[0]], -1, 0)


def stats_shape(height: int, width: int) -> tuple[int, int]:
    """The shape of a decimated read of ``height`` x ``width`` pixels, at most :data:`STATS_MAX_SIDE` a side, for
    statistics of a whole raster."""
    scale = min(1.0, STATS_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def stretch_limits(src, bands: Sequence[int], window: Window, percentiles: Sequence[float] = STRETCH_PERCENTILES,
                   left_out=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``percentiles`` (low, high; by default the 1st and 99th) over the valid pixels of ``window``, from
    a decimated read; ``left_out``: areas the user leaves out (a :class:`~d3rsmde.raster.exclusion.Exclusion`)."""
    shape = stats_shape(window.height, window.width)
    data = read_image(src, bands, window, shape)
    valid = src.dataset_mask(window=window, out_shape=shape, resampling=Resampling.nearest) > 0
    valid &= np.isfinite(data).all(axis=0)  # float rasters may carry NaN/inf without declaring nodata
    if left_out is not None:
        valid &= ~left_out.over(src, window, shape)
    if not valid.any():
        raise InputError(f"{dataset_name(src)} has no valid pixels in the chosen extent (all nodata, masked or "
                         "left out)")
    return band_limits(data[:, valid], percentiles)


def band_limits(pixels: np.ndarray,
                percentiles: Sequence[float] = STRETCH_PERCENTILES) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) ``percentiles`` of ``pixels`` (bands x valid pixels): the stretch :func:`stretch` applies
    (also to rendered training tiles, which exist only as arrays)."""
    low, high = np.percentile(pixels.astype(np.float32), list(percentiles), axis=1)
    return low, high


def stretch(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map each band linearly from [low, high] to [0, 1] and clip; a constant band becomes 0."""
    span = np.where(high > low, high - low, 1.0)
    out = (data.astype(np.float32) - low[:, None, None]) / span[:, None, None]
    return np.clip(out, 0.0, 1.0, out=out)
