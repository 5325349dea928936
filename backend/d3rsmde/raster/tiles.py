"""Tiles in and out of the model with flat memory: model input read by window (bands, stretch, the grid the model
runs on), read ahead in a background thread, and predictions kept in a scratch file rather than in memory."""

from __future__ import annotations

import queue
import threading
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..imagery import is_paletted, read_image, stretch
from ..tiling import TileGrid
from .exclusion import Exclusion
from .masks import collar_masked, image_mask
from .output import GridSpec

PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Source:
    """How model input is read: bands, stretch, the grid it is read on (resampled for the model's GSD), whether
    small nodata holes are image data, the value of a fill border to mask (:mod:`.masks`) and the areas the user
    leaves out (:mod:`.exclusion`)."""

    path: Path
    indexes: tuple[int, ...]
    lo: np.ndarray
    hi: np.ndarray
    grid: GridSpec
    close_holes: bool
    collar: float | None = None
    left_out: Exclusion | None = None

    def opened(self, stack: ExitStack) -> Source:
        """This source with what it reads besides the raster (a mask of areas left out) kept open in ``stack`` for
        a pass over its tiles."""
        return self if self.left_out is None else replace(self, left_out=self.left_out.opened(stack))

    def open_native(self, stack: ExitStack):
        """The raster on its own grid, its fill border masked."""
        ds = stack.enter_context(rasterio.open(self.path))
        return ds if self.collar is None else stack.enter_context(collar_masked(ds, self.collar))

    def open(self, stack: ExitStack):
        """The raster on the grid the model runs on."""
        ds = self.open_native(stack)
        if (ds.width, ds.height, ds.transform) == (self.grid.width, self.grid.height, self.grid.transform):
            return ds
        if is_paletted(ds, self.indexes[0]):
            resampling = Resampling.nearest
        else:
            resampling = Resampling.average if self.grid.width < ds.width else Resampling.bilinear
        return stack.enter_context(
            WarpedVRT(
                ds,
                crs=ds.crs,
                transform=self.grid.transform,
                width=self.grid.width,
                height=self.grid.height,
                resampling=resampling,
            )
        )

    def mask(self, ds, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(valid, closed)`` over ``window`` of ``ds`` (:func:`.masks.image_mask`), less the areas left out."""
        valid, closed = image_mask(ds, self.indexes, window, self.close_holes)
        if self.left_out is not None:
            kept = ~self.left_out.over(ds, window)
            valid &= kept
            closed &= kept
        return valid, closed

    def read(self, ds, grid: TileGrid, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tile ``i`` as ``3 x tile x tile`` float32 in [0, 1], its validity mask, and the mask of the small nodata
        holes counted as valid (:func:`.masks.image_mask`); where the tile overhangs the raster, the image is
        mirrored and the masks False.

        Invalid pixels are filled with the tile's mean colour so that nodata does not look like terrain.
        """
        box, (r, c) = grid.box(i), grid.origin(i)
        window = Window(box.col0, box.row0, box.col1 - box.col0, box.row1 - box.row0)
        data = read_image(ds, self.indexes, window)
        valid, closed = self.mask(ds, window)
        finite = np.isfinite(data).all(axis=0)  # float rasters may carry NaN without declaring nodata
        valid &= finite
        closed &= finite
        data = stretch(data, self.lo, self.hi)
        if valid.any() and not valid.all():
            data = np.where(valid, data, data[:, valid].mean(axis=1)[:, None, None])
        pad = ((0, 0), (box.row0 - r, r + grid.tile - box.row1), (box.col0 - c, c + grid.tile - box.col1))
        return (np.pad(data, pad, mode="reflect"), np.pad(valid, pad[1:], constant_values=False),
                np.pad(closed, pad[1:], constant_values=False))


class TileStore:
    """Tile predictions in a raw float32 scratch file (NaN = no data), so memory stays flat with tile count."""

    def __init__(self, path: Path, tile: int):
        self.tile = tile
        self._file = open(path, "w+b")
        self._written: set[int] = set()

    def __enter__(self) -> "TileStore":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def write(self, i: int, values: np.ndarray) -> None:
        self._file.seek(i * self.tile * self.tile * 4)
        self._file.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
        self._written.add(i)

    def read(self, i: int, row0: int = 0, row1: int | None = None) -> np.ndarray:
        """Rows ``[row0, row1)`` of tile ``i``; all NaN for a tile never written (it had no valid pixel)."""
        row1 = self.tile if row1 is None else row1
        out = np.full((row1 - row0, self.tile), np.nan, dtype=np.float32)
        if i not in self._written:
            return out
        self._file.seek((i * self.tile + row0) * self.tile * 4)
        self._file.readinto(memoryview(out).cast("B"))
        return out


_DONE = object()


class Prefetcher:
    """Runs a batch generator in a background thread at most ``depth`` batches ahead: reads overlap compute."""

    def __init__(self, produce: Callable[[], Iterator], depth: int = PREFETCH_BATCHES):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), name="d3rsmde-prefetch", daemon=True)

    def __enter__(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Iterator:
        while (item := self._queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self, produce: Callable[[], Iterator]) -> None:
        try:
            with closing(produce()) as items:
                for item in items:
                    if not self._put(item):
                        return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False
