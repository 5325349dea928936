"""Height maps for whole georeferenced rasters: read in windows, infer in batches of tiles, stitch, write.

Memory is bounded by one batch of tiles, the prefetch queue and one band of output rows whatever the raster size:
tile predictions go to a scratch file next to the output and are blended from there in a second pass, after one
small sparse solve has put every tile on a common scale and shift (see :mod:`d3rsmde.tiling`).
"""

from __future__ import annotations

import errno
import math
import os
import queue
import threading
import time
import warnings
import zlib
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from . import __version__
from .bands import select_bands
from .geodesy import pixel_size_m
from .imagery import stretch, stretch_limits
from .errors import Cancelled, InputError, OutputError
from .files import check_not_an_input, describe_write_error, staged_output
from .metrics import depth_metrics
from .tiling import TileGrid, fit_rows, pair_rows, solve_affines

NODATA = -9999.0
BLOCK = 256  # output block size, and the height of the band of rows blended at a time
PREFETCH_BATCHES = 2
# GDAL's block cache during a run. Its default, 5% of RAM (1.2 GB on a 24 GB machine), filled with blocks that are
# not read again and, as resident memory, costs about twice its nominal size: most of the peak of a large run.
GDAL_CACHE_BYTES = 128 * 2**20
MIN_REFERENCE_PIXELS = 2  # one reference pixel gives a level but no relief to scale the heights by
OUTPUT_EXTENSIONS = (".tif", ".tiff")  # the output is always a GeoTIFF; another extension would lie about it

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


def predict_raster(
    src,
    dst,
    pipeline,
    *,
    bands: Sequence[int] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    refine_steps: int | None = None,
    reference_dem=None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    resample_to_gsd: bool = False,
    overwrite: bool = True,
) -> dict:
    """Predict a height map for the raster at ``src`` and write it to ``dst`` (.tif/.tiff) as a float32 GeoTIFF.

    The output has the input's size and georeferencing (CRS and transform, or GCPs, or RPCs), nodata where the
    input is nodata or transparent, and is relative height 0..1 over the whole raster, or metres (the reference's
    units) when ``reference_dem`` (any raster, any CRS and resolution, at least 2 pixels over the input) is
    given. ``bands``: 1-based band numbers (one band is replicated to three).
    ``tile``/``overlap``/``batch_size`` default to the model's tile size, a quarter of it, and a size suited to
    the device. ``resample_to_gsd`` runs the model at its training ground resolution and resamples back.
    ``progress(fraction, message)`` is called and ``cancel()`` polled once per batch. The output is read back and
    checked before it replaces a previous ``dst``; on cancel or failure no output or scratch file is left behind,
    and ``dst`` may be no file any input reads (a VRT's sources included); ``overwrite=False`` refuses an existing
    ``dst``. Returns run statistics, with ``warnings``: what the user should know about the result.
    """
    start = time.perf_counter()
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or (lambda: False)
    src_path, dst_path, ref_path = _check_paths(src, dst, reference_dem)
    if not overwrite and os.path.lexists(dst_path):
        raise InputError(f"{dst_path} exists and is not to be overwritten")
    multiple = pipeline.size_multiple
    tile = _whole_number("tile size", pipeline.config.tile_size if tile is None else tile, multiple)
    if tile % multiple:
        raise InputError(f"tile size {tile} must be a positive multiple of {multiple} for this model")
    overlap = tile // 4 if overlap is None else _whole_number("overlap", overlap, 0)
    batch_size = _whole_number("batch size", default_batch_size(pipeline.device, tile) if batch_size is None
                               else batch_size, 1)
    steps = _whole_number("refinement steps", pipeline.config.num_steps if refine_steps is None else refine_steps, 0)

    # GDAL's messages go to logging, not stderr: a failed write is reported once, as an OutputError. A missing
    # georeferencing is said once, plainly, in the returned warnings.
    with rasterio.Env(**_gdal_cache()), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open(src_path) as ds:
            indexes = select_bands(ds, bands)
            lo, hi = stretch_limits(ds, indexes, Window(0, 0, ds.width, ds.height))
            factor = _gsd_factor(ds, pipeline.config.gsd_m) if resample_to_gsd else 1.0
            out_grid = _GridSpec.of(ds)
        if ref_path is not None:
            with _open(ref_path) as ref:
                if ref.crs is None or out_grid.crs is None:
                    raise InputError(f"to use a reference DEM, {ref_path.name} and {src_path.name} both need a CRS")
                ref_units = ref.units[0] if ref.units and ref.units[0] else "m"
        source = _Source(src_path, tuple(indexes), lo, hi, out_grid.scaled(factor))
        _check_tile_fits(tile, source.grid, pipeline.config.tile_size, multiple)
        # A tile's outer pixels carry the model's edge artefact (the VAE decoder's bright frame: 17x the median
        # |second difference| at the edge pixel, 3x at 7 pixels, bundled model at tile 128); none of them reaches
        # the output, at seams or at the raster border, where the tiles overhang into mirrored padding.
        grid = TileGrid(source.grid.height, source.grid.width, tile, overlap, margin=overlap // 4)
        try:
            with staged_output(dst_path, overwrite=overwrite) as scratch:
                store = _TileStore(scratch / "tiles.f32", tile)
                with store:
                    ranges = _infer_tiles(source, grid, pipeline, store, batch_size, steps, progress, cancel)
                    has_data = np.isfinite(ranges).all(axis=1)
                    if not has_data.any():
                        raise InputError(f"{src_path.name} has no valid pixel (all nodata or transparent)")
                    pairs = _overlap_rows(grid, store, has_data)
                    scale, shift = solve_affines(len(grid), pairs)
                    if ref_path is None:
                        scale, shift = _normalise(scale, shift, ranges, has_data)
                        units = "relative"
                    else:
                        scale, shift = _calibrate(grid, store, has_data, pairs, scale, shift, ref_path, source.grid)
                        units = ref_units
                    bounds = (0.0, 1.0) if units == "relative" else None
                    with _Output(scratch / dst_path.name, out_grid) as out:
                        if factor == 1.0:
                            _write_blended(grid, store, scale, shift, out, progress, cancel, bounds)
                        else:
                            with _Output(scratch / "model-grid.tmp", source.grid, final=False) as tmp:
                                _write_blended(grid, store, scale, shift, tmp, progress, cancel, bounds)
                            tmp.verify()
                            _resample_back(tmp.path, src_path, indexes, out, cancel)
                        _finish(out.ds, pipeline, steps, units, tile, overlap, src_path, ref_path)
                    out.verify()
        except OSError as exc:  # a full disk, an I/O error: the previous output, if any, is untouched
            raise OutputError(describe_write_error(dst_path, exc)) from exc
        except (MemoryError, RuntimeError) as exc:  # numpy's MemoryError; torch's is a RuntimeError
            if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
                raise
            raise InputError(f"not enough memory for batches of {batch_size} tiles of {tile} px; "
                             "give a smaller tile size or batch size") from exc
    progress(1.0, "done")
    seconds = time.perf_counter() - start
    megapixels = out_grid.width * out_grid.height / 1e6
    return {
        "output": str(dst_path),
        "units": units,
        "tiles": len(grid),
        "tile": tile,
        "overlap": overlap,
        "edge_margin": grid.margin,
        "batch_size": batch_size,
        "refine_steps": steps,
        "bands": list(indexes),
        "stretch": {"low": lo.tolist(), "high": hi.tolist()},
        "gsd_factor": factor,
        "reference_dem": str(ref_path) if ref_path else None,
        "device": str(pipeline.device),
        "seconds": seconds,
        "megapixels": megapixels,
        "megapixels_per_second": megapixels / max(seconds, 1e-9),
        "warnings": out_grid.warnings(src_path),
    }


def _gdal_cache() -> dict:
    """GDAL's block cache bound for the run (then restored), unless the user set GDAL_CACHEMAX: blocks are read by
    tile and written in whole bands of blocks, so a cache holding a band of input rows is all that is reused."""
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocation failures: CUDA's OutOfMemoryError and the CPU allocator's RuntimeError."""
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text


def default_batch_size(device, tile: int) -> int:
    """Tiles per batch: what half the free GPU memory holds (about 8 KB per pixel at inference), else 2."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(np.clip(free // 2 // (8192 * tile * tile), 1, 16))
    return 2


@dataclass(frozen=True)
class _GridSpec:
    """A raster grid and how it is placed on Earth: CRS and transform, else ground control points or RPCs."""

    crs: object
    transform: Affine
    width: int
    height: int
    gcps: tuple = ((), None)
    rpcs: object = None

    @classmethod
    def of(cls, ds) -> "_GridSpec":
        return cls(ds.crs, ds.transform, ds.width, ds.height, ds.gcps, ds.rpcs)

    def scaled(self, factor: float) -> "_GridSpec":
        """The same footprint with pixels ``factor`` times smaller."""
        if factor == 1.0:
            return self
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        return _GridSpec(self.crs, self.transform * Affine.scale(self.width / w, self.height / h), w, h)

    def georeferencing(self) -> dict:
        """rasterio creation keywords that give a new raster this placement."""
        if self.crs is None and self.gcps[0]:
            return {"gcps": self.gcps[0], "crs": self.gcps[1], "rpcs": self.rpcs}
        return {"crs": self.crs, "transform": self.transform, "rpcs": self.rpcs}

    def warnings(self, src_path: Path) -> list[str]:
        if self.crs is None and not self.gcps[0] and not self.rpcs:
            return [f"{src_path.name} has no georeferencing (no CRS, GCPs or RPCs), so neither has the output: "
                    "it matches the input pixel for pixel but has no place on a map"]
        return []


@dataclass(frozen=True)
class _Source:
    """How model input is read: bands, stretch, and the grid it is read on (resampled for the model's GSD)."""

    path: Path
    indexes: tuple[int, ...]
    lo: np.ndarray
    hi: np.ndarray
    grid: _GridSpec

    def open(self, stack: ExitStack):
        ds = stack.enter_context(rasterio.open(self.path))
        if (ds.width, ds.height, ds.transform) == (self.grid.width, self.grid.height, self.grid.transform):
            return ds
        down = self.grid.width < ds.width
        return stack.enter_context(
            WarpedVRT(
                ds,
                crs=ds.crs,
                transform=self.grid.transform,
                width=self.grid.width,
                height=self.grid.height,
                resampling=Resampling.average if down else Resampling.bilinear,
            )
        )

    def read(self, ds, grid: TileGrid, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` as ``3 x tile x tile`` float32 in [0, 1] and its validity mask; where the tile overhangs the
        raster, the image is mirrored and the mask False.

        Invalid pixels are filled with the tile's mean colour so that nodata does not look like terrain.
        """
        box, (r, c) = grid.box(i), grid.origin(i)
        window = Window(box.col0, box.row0, box.col1 - box.col0, box.row1 - box.row0)
        data = ds.read(list(self.indexes), window=window)
        valid = (ds.read_masks(list(self.indexes), window=window) > 0).all(axis=0) & np.isfinite(data).all(axis=0)
        data = stretch(data, self.lo, self.hi)
        if valid.any() and not valid.all():
            data = np.where(valid, data, data[:, valid].mean(axis=1)[:, None, None])
        pad = ((0, 0), (box.row0 - r, r + grid.tile - box.row1), (box.col0 - c, c + grid.tile - box.col1))
        return np.pad(data, pad, mode="reflect"), np.pad(valid, pad[1:], constant_values=False)


class _TileStore:
    """Tile predictions in a raw float32 scratch file (NaN = no data), so memory stays flat with tile count."""

    def __init__(self, path: Path, tile: int):
        self.tile = tile
        self._file = open(path, "w+b")
        self._written: set[int] = set()

    def __enter__(self) -> "_TileStore":
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


class _Prefetcher:
    """Runs a batch generator in a background thread at most ``depth`` batches ahead: reads overlap compute."""

    def __init__(self, produce: Callable[[], Iterator], depth: int = PREFETCH_BATCHES):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), name="d3rsmde-prefetch", daemon=True)

    def __enter__(self) -> "_Prefetcher":
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


def _infer_tiles(source, grid, pipeline, store, batch_size, steps, progress, cancel) -> np.ndarray:
    """Pass 1: every tile with valid pixels through the model into ``store``; returns per-tile (min, max)."""

    def batches() -> Iterator:
        with ExitStack() as stack:
            ds = source.open(stack)
            ids, images, masks = [], [], []
            for i in range(len(grid)):
                image, valid = source.read(ds, grid, i)
                if valid.any():
                    ids.append(i)
                    images.append(image)
                    masks.append(valid)
                if len(ids) == batch_size or (ids and i == len(grid) - 1):
                    yield ids, np.stack(images), np.stack(masks), i + 1
                    ids, images, masks = [], [], []

    ranges = np.full((len(grid), 2), np.nan)
    with _Prefetcher(batches) as prefetched:
        for ids, images, masks, done in prefetched:
            if cancel():
                raise Cancelled("cancelled while predicting tiles")
            x = torch.from_numpy(images).to(pipeline.device)
            pred = pipeline(x, refine_steps=steps)[:, 0].float().cpu().numpy()
            pred[~masks] = np.nan
            for i, p, m in zip(ids, pred, masks):
                store.write(i, p)
                ranges[i] = p[m].min(), p[m].max()
            progress(0.9 * done / len(grid), f"tiles {done}/{len(grid)}")
    return ranges


def _tile_part(grid, store, i, box) -> np.ndarray:
    """Tile ``i``'s prediction over a raster box inside it."""
    r, c = grid.origin(i)
    return store.read(i, box.row0 - r, box.row1 - r)[:, box.col0 - c : box.col1 - c]


def _overlap_rows(grid, store, has_data) -> list:
    out = []
    for i, j, box in grid.pairs():
        if has_data[i] and has_data[j]:
            r = pair_rows(_tile_part(grid, store, i, box), _tile_part(grid, store, j, box))
            if r is not None:
                out.append((i, j, r))
    return out


def _normalise(scale, shift, ranges, has_data):
    """Map the aligned surface onto 0..1 over the whole raster."""
    ends = scale[:, None] * ranges + shift[:, None]
    lo, hi = np.nanmin(ends[has_data]), np.nanmax(ends[has_data])
    span = hi - lo if hi > lo else 1.0
    return scale / span, (shift - lo) / span


def _calibrate(grid, store, has_data, pairs, scale, shift, ref_path, spec):
    """Per-tile robust fits to the reference DEM, solved jointly with the overlaps, so metres vary smoothly.

    A reference pixel is one measurement however many output pixels it is warped onto, so the fits are weighted
    down by that number: a coarse DEM sets the level and the large-scale shape, the overlaps keep the tiles
    together, and fewer than ``MIN_REFERENCE_PIXELS`` over the raster cannot scale the heights at all. Tiles the
    reference misses start from the aligned surface under one global fit.
    """
    fits = []
    with rasterio.open(ref_path) as ref, WarpedVRT(
        ref,
        crs=spec.crs,
        transform=spec.transform,
        width=spec.width,
        height=spec.height,
        nodata=np.nan,
        dtype="float32",
        resampling=Resampling.bilinear,
    ) as vrt:
        native, _, _ = calculate_default_transform(ref.crs, spec.crs, ref.width, ref.height, *ref.bounds)
        ratio = abs(native.determinant / spec.transform.determinant)  # output pixels per reference pixel
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
    # One global (gain, offset) of the aligned surface: a_i*p + b_i -> g*(a_i*p + b_i) + o.
    rows = np.concatenate([a @ np.array([[scale[i], 0.0], [shift[i], 1.0]]) for i, a, _ in fits])
    gain, offset = np.linalg.lstsq(rows, np.concatenate([b for _, _, b in fits]), rcond=None)[0]
    return solve_affines(len(grid), pairs, fits, initial_scale=gain * scale, initial_shift=gain * shift + offset)


def _write_blended(grid, store, scale, shift, out, progress, cancel, bounds=None) -> None:
    """Pass 2: blend the aligned tiles one band of rows at a time and write each band.

    ``bounds``: (low, high) the values must stay in; relative output is 0..1 by contract, and float rounding of
    the affine maps would otherwise leave values like -5e-10."""
    for row0 in range(0, grid.height, BLOCK):
        if cancel():
            raise Cancelled("cancelled while writing the output")
        row1 = min(row0 + BLOCK, grid.height)
        acc = np.zeros((row1 - row0, grid.width), dtype=np.float32)
        wsum = np.zeros_like(acc)
        for i in grid.tiles_in_rows(row0, row1):
            r, c = grid.origin(i)
            a, b = max(row0, r), min(row1, r + grid.tile)
            p = store.read(i, a - r, b - r)
            w = grid.weights(i)[a - r : b - r]
            ok = np.isfinite(p)
            w = np.where(ok, w, 0.0)
            v = np.where(ok, scale[i] * p + shift[i], 0.0)
            c0, c1 = max(c, 0), min(c + grid.tile, grid.width)
            acc[a - row0 : b - row0, c0:c1] += (w * v)[:, c0 - c : c1 - c]
            wsum[a - row0 : b - row0, c0:c1] += w[:, c0 - c : c1 - c]
        band = np.full(acc.shape, NODATA, dtype=np.float32)
        np.divide(acc, wsum, out=band, where=wsum > 0)
        if bounds is not None:
            np.clip(band, *bounds, out=band, where=wsum > 0)
        out.write(band, Window(0, row0, grid.width, row1 - row0))
        progress(0.9 + 0.09 * row1 / grid.height, f"writing rows {row1}/{grid.height}")


def _resample_back(work: Path, src_path: Path, indexes, out, cancel) -> None:
    """Warp the model-GSD result onto the input grid, one band of rows at a time, masked like the input."""
    with rasterio.open(work) as w, rasterio.open(src_path) as src, WarpedVRT(
        w, crs=src.crs, transform=src.transform, width=src.width, height=src.height, resampling=Resampling.bilinear
    ) as vrt:
        for row0 in range(0, src.height, BLOCK):
            if cancel():
                raise Cancelled("cancelled while writing the output")
            window = Window(0, row0, src.width, min(BLOCK, src.height - row0))
            band = vrt.read(1, window=window, masked=True).filled(NODATA)
            valid = (src.read_masks(list(indexes), window=window) > 0).all(axis=0)
            out.write(np.where(valid, band, NODATA), window)


class _Output:
    """A float32 GeoTIFF being written, with a checksum of every window written so that :meth:`verify` can prove
    the closed file holds exactly that: GDAL reports write errors (a full disk) only as messages and carries on."""

    def __init__(self, path: Path, spec: _GridSpec, final: bool = True):
        profile = dict(driver="GTiff", width=spec.width, height=spec.height, count=1, dtype="float32",
                       nodata=NODATA, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, bigtiff="IF_SAFER",
                       **spec.georeferencing())
        if final:
            profile.update(compress="DEFLATE", predictor=3)
        self.path = path
        self.ds = rasterio.open(path, "w", **profile)
        self._sums: list[tuple[Window, int]] = []

    def __enter__(self) -> "_Output":
        return self

    def __exit__(self, *exc) -> None:
        self.ds.close()

    def write(self, band: np.ndarray, window: Window) -> None:
        band = np.ascontiguousarray(band, dtype=np.float32)
        self.ds.write(band, 1, window=window)
        self._sums.append((window, zlib.crc32(band)))

    def verify(self) -> None:
        """Reopen the closed file: every window as written, every overview block present and readable."""
        try:
            with rasterio.open(self.path) as ds:
                bad = [w for w, crc in self._sums if zlib.crc32(ds.read(1, window=w)) != crc]
                levels = len(ds.overviews(1))
            for level in range(levels):
                with rasterio.open(self.path, overview_level=level) as ov:
                    for (row, col), window in ov.block_windows(1):
                        if int(ov.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1) or 0) == 0:
                            bad.append(f"overview {level}")
                        ov.read(1, window=window)  # decodes: raises on a truncated block
        except RasterioIOError as exc:
            raise OSError(errno.EIO, f"the new file could not be read back; is the disk full? ({exc})") from exc
        if bad:
            raise OSError(errno.EIO, f"the new file does not hold what was written ({len(bad)} blocks differ); "
                          "is the disk full?")


def _finish(out, pipeline, steps, units, tile, overlap, src_path, ref_path) -> None:
    """Describe the output (what, in which units, from what) and add overviews down to ~64 pixels."""
    relative = units == "relative"
    out.set_band_description(1, "relative height (0 lowest, 1 highest)" if relative else f"height ({units})")
    if not relative:
        out.set_band_unit(1, units)
    out.update_tags(
        model=pipeline.config.name,
        refine_steps=steps,
        units=units,
        software=f"d3rsmde {__version__}",
        tile_size=tile,
        overlap=overlap,
        source=src_path.name,
        reference_dem=ref_path.name if ref_path else "",
        **getattr(pipeline, "provenance", {}),  # weights file + sha256; stand-in pipelines have none
    )
    out.update_tags(1, units=units)
    factors, f = [], 2
    while max(out.width, out.height) / f >= 64:
        factors.append(f)
        f *= 2
    if factors:
        out.build_overviews(factors, Resampling.average)


def is_height_output(path: Path) -> bool:
    """Whether ``path`` is a height raster d3rsmde wrote (tagged by :func:`_finish`): not an image to predict from."""
    try:
        with _open(path) as ds:
            return ds.tags().get("software", "").startswith("d3rsmde ")
    except InputError:
        return False


def _gsd_factor(ds, gsd_m: float | None) -> float:
    """How many model pixels one input pixel spans at the raster's centre (1.0 when within 5%)."""
    if not gsd_m:
        raise InputError("this model does not record the ground resolution it was trained at; run without resampling")
    if ds.crs is None:
        raise InputError(f"{ds.name} has no CRS, so its ground resolution is unknown; run without resampling")
    size_x, size_y = pixel_size_m(ds.transform, ds.crs, ds.height / 2, ds.width / 2)
    factor = math.sqrt(size_x * size_y) / gsd_m
    return 1.0 if abs(factor - 1.0) < 0.05 else factor


def _open(path: Path):
    """Open a raster (a file or any GDAL dataset name), turning GDAL's complaints into an InputError. A missing
    georeferencing is no error, and is said once by the caller that needs one, not warned about at every open."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        if not os.path.exists(path):
            raise InputError(f"{path} does not exist") from exc
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise InputError(f"{path} is empty (0 bytes)") from exc
        raise InputError(f"{path} is not a raster GDAL can read: {exc}") from exc
    if ds.dtypes[0].startswith("complex"):
        ds.close()
        raise InputError(f"{path} has complex pixels ({ds.dtypes[0]}); give a real-valued raster")
    return ds


def _check_paths(src, dst, reference_dem) -> tuple[Path, Path, Path | None]:
    src_path = Path(src).expanduser()
    dst_path = Path(dst).expanduser()
    ref_path = None if reference_dem is None else Path(reference_dem).expanduser()
    spare_inputs(dst_path, [("input", src_path), ("reference DEM", ref_path)])
    if dst_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise InputError(f"the output {dst_path.name} must end in .tif or .tiff: it is always a float32 GeoTIFF")
    if dst_path.is_dir():
        raise InputError(f"the output {dst_path} is a folder; give a file name such as height.tif")
    if not dst_path.parent.is_dir():
        raise InputError(f"the output folder {dst_path.parent} does not exist")
    if not os.access(dst_path.parent, os.W_OK):
        raise InputError(f"the output folder {dst_path.parent} is not writable")
    return src_path, dst_path, ref_path


def spare_inputs(dst, inputs: Sequence[tuple[str, object]]) -> None:
    """Refuse an output path that is any file the input rasters read; ``inputs``: (what, path or None) pairs."""
    for what, path in inputs:
        if path is not None:
            check_not_an_input(Path(dst).expanduser(), what, Path(path).expanduser(), raster_files(path))


def raster_files(path: Path) -> set[str]:
    """Every file GDAL reads for the raster at ``path``: sidecars (.aux.xml, world files) and, through any depth of
    VRTs, their sources. Empty when ``path`` cannot be opened (that is reported when it is read)."""
    seen: set[str] = set()
    todo = [str(path)]
    while todo:
        name = todo.pop()
        try:
            with _open(name) as ds:
                files = ds.files
        except InputError:
            continue  # a sidecar, or a raster that is not there: nothing further to follow
        for f in files:
            if f not in seen:
                seen.add(f)
                if os.path.realpath(f) != os.path.realpath(name):
                    todo.append(f)
    return seen


def _whole_number(what: str, value, minimum: int) -> int:
    """An integer option as given: 2.5, True or 0 tiles are refused, not silently rounded or replaced."""
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise InputError(f"{what} must be a whole number, got {value!r}")
    if value < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def _check_tile_fits(tile: int, grid: "_GridSpec", model_tile: int, multiple: int) -> None:
    """A tile larger than both the model's and the raster is only padding, and can ask for terabytes."""
    limit = max(model_tile, -(-max(grid.width, grid.height) // multiple) * multiple)
    if tile > limit:
        raise InputError(f"tile size {tile} is larger than this {grid.width} x {grid.height} raster needs; "
                         f"give at most {limit}")


def evaluate_rasters(pred, reference, *, mask=None, tile: int | None = None) -> dict:
    """Compare a predicted height raster with a reference (any CRS/resolution, warped onto the prediction grid).

    ``per_tile``: :func:`d3rsmde.metrics.depth_metrics` averaged over ``tile``-sized tiles (default: the tile size
    recorded in the prediction, else 512), i.e. the paper's per-tile relative figures. ``whole``: MAE, RMSE and
    bias over all valid pixels when both rasters are in the same units (None for a relative prediction against
    heights), and the RMSE left after the best global scale and shift, in the reference's units.
    ``mask``: optional raster, nonzero where to evaluate. Rasters without a CRS are compared pixel for pixel, and
    only with a raster of the same size and no CRS either.
    """
    pred_path, ref_path = Path(pred).expanduser(), Path(reference).expanduser()
    mask_path = None if mask is None else Path(mask).expanduser()
    with ExitStack() as stack:
        p_ds = stack.enter_context(_open(pred_path))
        tile = int(tile or p_ds.tags().get("tile_size", 512))
        g_ds = stack.enter_context(_open(ref_path))
        g_vrt = _onto(stack, g_ds, p_ds, Resampling.bilinear)
        m_vrt = None if mask_path is None else _onto(stack, stack.enter_context(_open(mask_path)), p_ds,
                                                     Resampling.nearest)
        sums = np.zeros(8)  # n, sum p, sum g, sum p^2, sum g^2, sum p*g, sum |p-g|, sum (p-g)^2
        per_tile: dict[str, list[float]] = {}
        n_tiles = 0
        for row0 in range(0, p_ds.height, tile):
            for col0 in range(0, p_ds.width, tile):
                window = Window(col0, row0, min(tile, p_ds.width - col0), min(tile, p_ds.height - row0))
                p = p_ds.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
                g = g_vrt.read(1, window=window, masked=True).astype(np.float64).filled(np.nan)
                ok = np.isfinite(p) & np.isfinite(g)
                if m_vrt is not None:
                    ok &= m_vrt.read(1, window=window, masked=True).filled(0) != 0
                if ok.sum() < 2:
                    continue
                pv, gv = p[ok], g[ok]
                d = pv - gv
                sums += [ok.sum(), pv.sum(), gv.sum(), pv @ pv, gv @ gv, pv @ gv, np.abs(d).sum(), d @ d]
                n_tiles += 1
                for key, value in depth_metrics(p, g, ok).items():
                    if isinstance(value, (int, float)):
                        per_tile.setdefault(key, []).append(float(value))
        p_units, g_units, crs = _units(p_ds), _units(g_ds), p_ds.crs
    if sums[0] == 0:
        raise InputError(f"{pred_path.name} and {ref_path.name} overlap but share no valid pixel "
                         "(one is nodata wherever the other has data)")
    comparable = (p_units == "relative") == (g_units == "relative")  # an unknown unit is taken as the other's
    n, sp, sg, spp, sgg, spg, sad, ssd = sums
    # Residual of the least-squares fit g ~ s*p + o, from the same running sums.
    var_p, var_g, cov = spp / n - (sp / n) ** 2, sgg / n - (sg / n) ** 2, spg / n - sp * sg / n**2
    residual = max(var_g - (cov * cov / var_p if var_p > 0 else 0.0), 0.0)
    return {
        "tile": tile,
        "tiles": n_tiles,
        "per_tile": {k: float(np.mean(v)) for k, v in per_tile.items()},
        "whole": {
            "mae": sad / n if comparable else None,
            "rmse": math.sqrt(ssd / n) if comparable else None,
            "bias": (sp - sg) / n if comparable else None,
            "rmse_after_affine": math.sqrt(residual),
            "pixels": int(n),
            "units": g_units or (p_units if comparable else ""),
        },
        "warnings": [] if crs else [f"{pred_path.name} and {ref_path.name} have no CRS: compared pixel for pixel"],
    }


def _units(ds) -> str:
    """A raster's height units: d3rsmde's tag ("relative", "m"), else the band's unit, else unknown ("")."""
    return ds.tags().get("units") or (ds.units[0] if ds.units and ds.units[0] else "")


def _onto(stack: ExitStack, ds, grid, resampling: Resampling):
    """``ds`` on ``grid``'s pixels: warped when both have a CRS and overlap, as it is when neither has a CRS."""
    if ds.crs is None and grid.crs is None:
        if (ds.width, ds.height) != (grid.width, grid.height):
            raise InputError(f"{Path(ds.name).name} and {Path(grid.name).name} have no CRS and different sizes "
                             f"({ds.width} x {ds.height}, {grid.width} x {grid.height}), so they cannot be lined up")
        return ds
    for a, b in ((ds, grid), (grid, ds)):
        if a.crs is None:
            raise InputError(f"{Path(a.name).name} has no CRS, so it cannot be lined up with {Path(b.name).name}; "
                             "give both rasters a CRS")
    left, bottom, right, top = transform_bounds(ds.crs, grid.crs, *ds.bounds)
    g = grid.bounds
    if left >= g.right or right <= g.left or bottom >= g.top or top <= g.bottom:
        raise InputError(f"{Path(ds.name).name} and {Path(grid.name).name} do not overlap")
    return stack.enter_context(WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                         height=grid.height, nodata=np.nan, dtype="float32", resampling=resampling))
