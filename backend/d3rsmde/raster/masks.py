"""Which input pixels are image data: the raster's masks, less the small holes that a nodata value which is also a
brightness leaves inside the image.

An 8-bit image with nodata 255 (or 0) loses every saturated pixel, snow or cloud (or the darkest shadow and
water), to nodata: the bundled Rocky Mountain sample has 69 such holes of 1-12 pixels on its peaks. As nodata
they would be dark dots in the model's input and holes in the height map, which break slopes, hillshades and flow
lines downstream. So an enclosed hole of at most :data:`SMALL_HOLE_PIXELS` pixels in a mask that comes from a
nodata value is taken as image data, its pixel values as they are. Larger holes, holes that reach the raster's
edge, and alpha or internal masks (a producer's explicit "transparent") stay nodata.

A raster that declares no mask at all may still have a fill border ("collar") of one value around the image: a
rotated Landsat or Sentinel-2 scene stacked without a nodata value, or a viewer's export. Read as image it is a
black plain (or a white wall) in the map and skews the stretch, so :func:`collar_value` finds it and
:func:`collar_masked` masks it.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Sequence

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy import ndimage

from ..imagery import is_paletted, read_image, stats_shape

SMALL_HOLE_PIXELS = 64  # the largest enclosed nodata hole (8-connected pixels) taken as image data
COLLAR_MIN_SHARE = 0.01  # a fill border over at least this share of an unmasked raster is masked as a collar


def nodata_holes_closable(ds, indexes: Sequence[int]) -> bool:
    """Whether the masks of ``indexes`` come from nodata values (not an alpha band or an internal mask), so that
    small enclosed holes in them are saturated pixels rather than transparent ones."""
    return all(MaskFlags.nodata in ds.mask_flag_enums[i - 1] for i in indexes)


def image_mask(ds, indexes: Sequence[int], window: Window, close_holes: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, closed)`` over ``window`` of ``ds``: valid where every band of ``indexes`` holds image data;
    ``closed`` marks the pixels of small enclosed nodata holes counted as valid (``close_holes``: see
    :func:`nodata_holes_closable`).

    A hole is judged on the window grown by more than the largest small hole on each side, so it is judged the
    same way from every window that contains any of its pixels (the tiles of a raster agree on it)."""
    valid = (ds.read_masks(list(indexes), window=window) > 0).all(axis=0)
    closed = np.zeros_like(valid)
    if valid.all() or not close_holes:
        return valid, closed
    grow = SMALL_HOLE_PIXELS + 1
    row0, col0 = max(int(window.row_off) - grow, 0), max(int(window.col_off) - grow, 0)
    row1 = min(int(window.row_off + window.height) + grow, ds.height)
    col1 = min(int(window.col_off + window.width) + grow, ds.width)
    wide = (ds.read_masks(list(indexes), window=Window(col0, row0, col1 - col0, row1 - row0)) > 0).all(axis=0)
    holes, _ = ndimage.label(~wide, structure=np.ones((3, 3), bool))
    small = np.bincount(holes.ravel()) <= SMALL_HOLE_PIXELS
    small[0] = False  # the valid pixels
    small[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = False  # may go on beyond the window
    inner = np.s_[int(window.row_off) - row0 : int(window.row_off) - row0 + valid.shape[0],
                  int(window.col_off) - col0 : int(window.col_off) - col0 + valid.shape[1]]
    closed = small[holes[inner]]
    return valid | closed, closed


def collar_value(ds, indexes: Sequence[int]) -> float | None:
    """The value of the fill border of an unmasked raster, or None: pixels equal to 0 (or to the largest value of
    an integer type) in every band of ``indexes``, connected to a corner of the raster (a rotated scene's collar
    holds all four, a padded strip two; a black shadow or a white roof at the edge seldom one), over at least
    :data:`COLLAR_MIN_SHARE` of it (judged on a decimated read), with image left inside: a raster that is all one
    such value is an empty one, not a border. Rasters with a nodata value, an alpha band or a mask, and paletted
    ones, are taken as they say."""
    if is_paletted(ds, indexes[0]) or not all(MaskFlags.all_valid in ds.mask_flag_enums[i - 1] for i in indexes):
        return None
    data = read_image(ds, indexes, out_shape=stats_shape(ds.height, ds.width))
    dtype = np.dtype(ds.dtypes[indexes[0] - 1])
    shares = {}
    for value in [0] + ([np.iinfo(dtype).max] if dtype.kind in "ui" else []):
        parts, _ = ndimage.label((data == value).all(axis=0), structure=np.ones((3, 3), bool))
        corners = parts[[0, 0, -1, -1], [0, -1, 0, -1]]
        shares[float(value)] = np.isin(parts, corners[corners > 0]).mean()
    value = max(shares, key=shares.get)
    return value if COLLAR_MIN_SHARE <= shares[value] < 1.0 else None


def collar_masked(ds, value: float) -> WarpedVRT:
    """``ds`` on its own grid, its pixels equal to ``value`` in every band masked (an alpha band: GDAL's unified
    source nodata), every value as it is."""
    return WarpedVRT(ds, src_nodata=value, add_alpha=True, crs=ds.crs, transform=ds.transform, width=ds.width,
                     height=ds.height, warp_extras={"UNIFIED_SRC_NODATA": "YES"})


def without_collar(ds, indexes: Sequence[int], name: str, stack: ExitStack) -> tuple[object, float | None, list[str]]:
    """``ds`` as the engine and fine-tuning read it: its fill border masked when it has one (:func:`collar_value`;
    the masked view is closed with ``stack``), the border's value (None: none) and the warning that tells the user
    (``name``: the raster's, for it)."""
    value = collar_value(ds, indexes)
    if value is None:
        return ds, None, []
    return stack.enter_context(collar_masked(ds, value)), value, [collar_warning(name, value)]


def collar_warning(name: str, value: float) -> str:
    return (f"{name} declares no nodata value, but a border of {value:g} in every band surrounds the image (as around "
            "a rotated scene): it was read as nodata, and the height map has none there")
