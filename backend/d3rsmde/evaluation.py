"""Whole-scene evaluation: how well one height map of a scene matches its reference DEM, as a user sees it.

The paper scores 512 x 512 tiles, each stretched on its own. A user looks at one map of the whole scene, so here
the prediction is averaged onto the reference DEM's grid (its pixels are usually larger), both maps are min-max
stretched to 0..255 over their common valid pixels as one image, and the paper's metrics are computed once,
with the gradient correlation that tells whether slopes lie where the terrain has them.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from .errors import InputError
from .metrics import depth_metrics


def scene_on_reference_grid(pred, reference) -> tuple[np.ndarray, np.ndarray]:
    """(prediction averaged onto the reference's grid, reference), both float64 with NaN where invalid.

    Reads whole rasters: the reference DEM sets the size, and reference DEMs are coarse (a 10000 x 10000 DEM
    would take 1.6 GB here).
    """
    with ExitStack() as stack:
        try:
            ref = stack.enter_context(rasterio.open(Path(reference).expanduser()))
            src = stack.enter_context(rasterio.open(Path(pred).expanduser()))
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"cannot open raster: {err}") from err
        if ref.crs is None or src.crs is None:
            raise InputError("whole-scene evaluation needs both rasters georeferenced (a CRS): "
                             f"{'reference' if ref.crs is None else 'prediction'} has none")
        g = ref.read(1, masked=True).astype(np.float64).filled(np.nan)
        vrt = stack.enter_context(WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width,
                                            height=ref.height, resampling=Resampling.average, nodata=np.nan,
                                            dtype="float32"))
        p = vrt.read(1).astype(np.float64)
    return p, g


def evaluate_scene(pred, reference) -> dict:
    """The paper's metrics (plus ``grad_r``) of a whole predicted scene against its reference DEM, both stretched
    to 0..255 as one image over their common valid pixels; ``pixels`` is how many reference pixels were scored."""
    p, g = scene_on_reference_grid(pred, reference)
    valid = np.isfinite(p) & np.isfinite(g)
    if valid.sum() < 2:
        raise InputError(f"{Path(pred).name} and {Path(reference).name} overlap in fewer than 2 valid pixels of "
                         "the reference grid: do they cover the same place?")
    return {**depth_metrics(p, g, valid), "pixels": int(valid.sum())}
