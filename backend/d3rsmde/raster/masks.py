"""Which input pixels are image data: the raster's masks, less the small holes that a nodata value which is also a
brightness leaves inside the image.

An 8-bit image with nodata 255 (or 0) loses every saturated pixel, snow or cloud (or the darkest shadow and
water), to nodata: the bundled Rocky Mountain sample has 69 such holes of 1-12 pixels on its peaks. As nodata
they would be dark dots in the model's input and holes in the height map, which break slopes, hillshades and flow
lines downstream. So an enclosed hole of at most :data:`SMALL_HOLE_PIXELS` pixels in a mask that comes from a
nodata value is taken as image data, its pixel values as they are. Larger holes, holes that reach the raster's
edge, and alpha or internal masks (a producer's explicit "transparent") stay nodata.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from scipy import ndimage

SMALL_HOLE_PIXELS = 64  # the largest enclosed nodata hole (8-connected pixels) taken as image data


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
