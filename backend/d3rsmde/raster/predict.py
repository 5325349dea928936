"""``predict_raster``: options checked, then two passes over a scratch tile store.

Pass 1 runs every tile with valid pixels through the model (reads prefetched in a thread) into the store; the
tiles are then put on one scale and shift (:mod:`.calibration`); pass 2 blends them one band of rows at a time into
the verified output, with a reference DEM's large scales (:mod:`.reference`) when one is given, resampled back to
the input grid when the model ran at its own ground resolution.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, WindowError
from rasterio.windows import Window, from_bounds

from ..bands import guessed_bands_warning, select_bands
from ..defaults import OVERLAP_FRACTION
from ..device import default_batch_size, is_out_of_memory
from ..errors import InputError, OutputError
from ..files import describe_write_error, staged_output
from ..geodesy import pixel_size_m
from ..imagery import stats_shape, stretch_limits
from ..progress import Cancel, Progress, check_cancel, report
from ..tiling import TileGrid
from .calibration import align_tiles, flat_tiles
from .exclusion import Exclusion, ExcludeSpec, exclusion_file, exclusion_for
from .io import check_paths, gdal_settings, open_raster, spare_inputs, warp_onto
from .masks import SMALL_HOLE_PIXELS, nodata_holes_closable, without_collar
from .output import BLOCK, NODATA, GridSpec, VerifiedOutput, finish
from .reference import keep_reference_lows
from .tiles import Prefetcher, Source, TileStore
from .workers import WorkerPool, default_workers

# Below this standard deviation of the stretched image (0..1), in every band, a tile shows no relief to the model:
# uniform sea with noise of 3 grey levels in 255 measures 0.015-0.020 (band-dependent), the least textured tile of
# the evaluation scenes (ocean with some coast, a world block) 0.061 in its most varied band, the others 0.12-0.29.
FEATURELESS_CONTRAST = 0.03
# A per-tile map with relief spreads over its 0..1: a plane 0.29; the least spread of the bundled model's 124 tile
# maps of the 9 evaluation scenes 0.087 (coarse only) and 0.086 (T = 6); its coarse maps of calm sea 0.002-0.017.
STRAY_MAP_SPREAD = 0.05


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
    workers: int | None = None,
    reference_dem=None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    resample_to_gsd: bool = False,
    bounds: Sequence[float] | None = None,
    exclude: ExcludeSpec = None,
    overwrite: bool = True,
) -> dict:
    """Predict a height map for the raster at ``src`` and write it to ``dst`` (.tif/.tiff) as a float32 GeoTIFF.

    The output has the input's size and georeferencing (CRS and transform, or GCPs, or RPCs), nodata where the
    input is nodata or transparent or in the fill border of an unmasked raster (small enclosed holes where it
    equals its nodata value excepted: :mod:`.masks`), and is relative height 0..1 over the whole raster, or
    metres (the reference's units) when ``reference_dem`` (any raster, any CRS and resolution, at least 2 pixels
    over the input) is given: then the output follows the reference at the reference's resolution and the model
    adds the relief below it (:mod:`.reference`). The image is prepared as the weights' preprocessing config says
    (``pipeline.config.preprocessing``: band order, stretch percentiles, tile size, GSD). ``bands``: 1-based band
    numbers in the model's channel order (one band is replicated to three).
    ``tile``/``overlap``/``batch_size``/``workers`` default to the model's tile size, an eighth of it
    (:data:`~d3rsmde.defaults.OVERLAP_FRACTION`), and what suits the device (``workers``: batches run at once, each
    on its share of torch's threads, :mod:`.workers`). ``resample_to_gsd`` runs the
    model at its training ground resolution and resamples back. ``bounds`` (left, bottom, right, top in the
    raster's CRS) limits the run to that extent: the output covers the raster's pixels within it, and the image
    is stretched over them alone. ``exclude``: areas to leave out (clouds, water), nodata like the raster's own:
    a mask raster (nonzero = left out; any CRS and resolution) or GeoJSON file path, or GeoJSON geometries in the
    raster's CRS (:mod:`.exclusion`).
    ``progress(fraction, message)`` is called and ``cancel()`` polled once per batch. The output is read back and
    checked before it replaces a previous ``dst``; on cancel or failure no output or scratch file is left behind,
    and ``dst`` may be no file any input reads (a VRT's sources included); ``overwrite=False`` refuses an existing
    ``dst``. Returns run statistics, with ``warnings``: what the user should know about the result.
    """
    start = time.perf_counter()
    src_path, dst_path, ref_path = check_paths(src, dst, reference_dem)
    spare_inputs(dst_path, [("exclusion mask", exclusion_file(exclude))])
    if not overwrite and os.path.lexists(dst_path):
        raise InputError(f"{dst_path} exists and is not to be overwritten")
    prep = pipeline.config.preprocessing  # what the weights were trained with: bands, stretch, tile, GSD
    multiple = pipeline.size_multiple
    tile = _whole_number("tile size", prep.tile_size if tile is None else tile, multiple)
    if tile % multiple:
        raise InputError(f"tile size {tile} must be a positive multiple of {multiple} for this model")
    overlap = round(tile * OVERLAP_FRACTION) if overlap is None else _whole_number("overlap", overlap, 0)
    batch_size = _whole_number("batch size", default_batch_size(pipeline.device, tile) if batch_size is None
                               else batch_size, 1)
    steps = _whole_number("refinement steps", pipeline.config.num_steps if refine_steps is None else refine_steps, 0)
    workers = _whole_number("workers", default_workers(pipeline.device) if workers is None else workers, 1)

    # GDAL's messages go to logging, not stderr: a failed write is reported once, as an OutputError. A missing
    # georeferencing is said once, plainly, in the returned warnings.
    with rasterio.Env(**gdal_settings()), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(src_path) as ds:
            indexes = select_bands(ds, bands, prep.band_order)
            band_notes = guessed_bands_warning(ds, bands)
            close_holes = nodata_holes_closable(ds, indexes)
            nodata = ds.nodatavals[indexes[0] - 1]
            extent, notes = _extent_window(ds, bounds)
            left_out = exclusion_for(exclude, ds)
            with ExitStack() as stack:
                seen, collar, collar_notes = without_collar(ds, indexes, src_path.name, stack)
                band_notes += collar_notes
                lo, hi = stretch_limits(seen, indexes, extent, prep.stretch_percentiles, left_out)
                if left_out is not None:
                    notes += _left_out_warnings(src_path, left_out, seen, extent)
            if (hi <= lo).all():
                raise InputError(f"{src_path.name} shows no contrast: in every band used ({sorted(set(indexes))}), "
                                 f"at least {np.ptp(prep.stretch_percentiles):g} % of its pixels have one value, so "
                                 "there is no relief in it to estimate (an empty, fill or cloud-covered raster?)")
            factor = _gsd_factor(ds, prep.gsd_m) if resample_to_gsd else 1.0
            out_grid = GridSpec.of(ds).within(extent)
        if ref_path is not None:
            with open_raster(ref_path) as ref:
                if ref.crs is None or out_grid.crs is None:
                    raise InputError(f"to use a reference DEM, {ref_path.name} and {src_path.name} both need a CRS")
                ref_units = ref.units[0] if ref.units and ref.units[0] else "m"
        source = Source(src_path, tuple(indexes), lo, hi, out_grid.scaled(factor), close_holes, collar, left_out)
        _check_tile_fits(tile, source.grid, prep.tile_size, multiple)
        # A tile's outer pixels carry the model's edge artefact (the VAE decoder's bright frame: 17x the median
        # |second difference| at the edge pixel, 3x at 7 pixels, bundled model at tile 128); none of them reaches
        # the output, at seams or at the raster border, where the tiles overhang into mirrored padding.
        grid = TileGrid(source.grid.height, source.grid.width, tile, overlap, margin=overlap // 4)
        try:
            with staged_output(dst_path, overwrite=overwrite) as scratch, \
                    TileStore(scratch / "tiles.f32", tile) as store:
                batches = batch_ranges(len(grid), batch_size, workers)
                run = _Run(source, grid, store, pipeline, steps, batches, workers, ref_path, progress, cancel,
                           extent)
                ranges, holes = _infer_tiles(run)
                if not np.isfinite(ranges).all(axis=1).any():
                    raise InputError(f"{src_path.name} has no valid pixel (all nodata or transparent)")
                scale, shift = align_tiles(grid, store, ranges, ref_path, source.grid)
                units = "relative" if ref_path is None else ref_units
                stretch = _blended_range(run, scale, shift) if ref_path is None else None
                with VerifiedOutput(scratch / dst_path.name, out_grid) as out:
                    if factor == 1.0 and ref_path is None:
                        _write_blended(run, scale, shift, out, stretch)
                    else:  # through scratch files on the model grid
                        surface = _scratch_pass(scratch / "model-grid.tmp", source.grid,
                                                lambda tmp: _write_blended(run, scale, shift, tmp, stretch))
                        if ref_path is not None and factor != 1.0:
                            surface = _scratch_pass(scratch / "with-reference.tmp", source.grid,
                                                    lambda tmp: keep_reference_lows(surface, ref_path, tmp, scratch,
                                                                                    cancel))
                        if factor != 1.0:
                            _resample_back(run, surface, out, out_grid)
                        else:
                            keep_reference_lows(surface, ref_path, out, scratch, cancel)
                    finish(out.ds, units, run.tags())
                out.verify()
        except OSError as exc:  # a full disk, an I/O error: the previous output, if any, is untouched
            raise OutputError(describe_write_error(dst_path, exc)) from exc
        except (MemoryError, RuntimeError) as exc:  # numpy's MemoryError; torch's is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            raise InputError(f"not enough memory for batches of {batch_size} tiles of {tile} px; "
                             "give a smaller tile size or batch size") from exc
    report(progress, 1.0, "done")
    seconds = time.perf_counter() - start
    megapixels = out_grid.width * out_grid.height / 1e6
    return {
        "output": str(dst_path),
        "units": units,
        "tiles": len(grid),
        "tile": tile,
        "overlap": overlap,
        "edge_margin": grid.margin,
        "batch_size": max(map(len, batches)),
        "workers": workers,
        "refine_steps": steps,
        "bands": list(indexes),
        "stretch": {"low": lo.tolist(), "high": hi.tolist()},
        "gsd_factor": factor,
        "reference_dem": str(ref_path) if ref_path else None,
        "device": str(pipeline.device),
        "seconds": seconds,
        "megapixels": megapixels,
        "megapixels_per_second": megapixels / max(seconds, 1e-9),
        "nodata_holes_used": holes,
        "extent": None if bounds is None else list(rasterio.transform.array_bounds(
            out_grid.height, out_grid.width, out_grid.transform)),
        "warnings": band_notes + out_grid.warnings(src_path) + notes + _hole_warnings(src_path, holes, nodata)
        + _featureless_warnings(src_path, ranges),
    }


@dataclass(frozen=True)
class _Run:
    """What the passes of one prediction share, handed whole rather than as long positional argument lists."""

    source: Source
    grid: TileGrid
    store: TileStore
    pipeline: object
    steps: int
    batches: list[range]
    workers: int
    reference: Path | None
    progress: Progress | None
    cancel: Cancel | None
    extent: Window  # the input's pixels the output covers

    def tags(self) -> dict:
        """What the output was made by and from: model, settings, input names and the weights' provenance."""
        return dict(
            model=self.pipeline.config.name,
            refine_steps=self.steps,
            tile_size=self.grid.tile,
            overlap=self.grid.overlap,
            source=self.source.path.name,
            reference_dem=self.reference.name if self.reference else "",
            **getattr(self.pipeline, "provenance", {}),  # weights file + sha256; stand-in pipelines have none
        )


def _infer_tiles(run: _Run) -> tuple[np.ndarray, int]:
    """Pass 1: every tile with valid pixels through the model into the store; returns per-tile (min, max) and how
    many pixels of small nodata holes were taken as image data (each counted once: the blending weights of the
    tiles over a pixel sum to 1)."""
    grid = run.grid

    def batches() -> Iterator:
        with ExitStack() as stack:
            source = run.source.opened(stack)
            ds = source.open(stack)
            for tiles in run.batches:
                ids, images, masks, closed = [], [], [], 0.0
                for i in tiles:
                    image, valid, holes = source.read(ds, grid, i)
                    if valid.any():
                        ids.append(i)
                        images.append(image)
                        masks.append(valid)
                        closed += float(grid.weights(i)[holes].sum()) if holes.any() else 0.0
                if ids:
                    yield ids, np.stack(images), np.stack(masks), tiles.stop, closed

    def infer(batch) -> np.ndarray:
        images = batch[1]
        x = torch.from_numpy(images).to(run.pipeline.device)
        return run.pipeline(x, refine_steps=run.steps)[:, 0].float().cpu().numpy()

    def unless_cancelled(prefetched: Iterator) -> Iterator:
        for batch in prefetched:
            check_cancel(run.cancel, message="cancelled while predicting tiles")
            yield batch

    ranges = np.full((len(grid), 2), np.nan)
    holes = 0.0
    with Prefetcher(batches) as prefetched, WorkerPool(run.workers) as pool:
        for (ids, images, masks, done, closed), pred in pool.map(infer, unless_cancelled(prefetched)):
            holes += closed
            pred[~masks] = np.nan
            for i, image, p, m in zip(ids, images, pred, masks):
                if _featureless(image, p, m):
                    p[m] = np.median(p[m])
                run.store.write(i, p)
                ranges[i] = p[m].min(), p[m].max()
            report(run.progress, 0.9 * done / len(grid), f"tiles {done}/{len(grid)}")
    return ranges, round(holes)


def _featureless(image: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> bool:
    """True when a tile shows the model no relief: its stretched image (``3 x H x W`` in [0, 1]) varies by less than
    :data:`FEATURELESS_CONTRAST` (standard deviation, every band) over its ``valid`` pixels (calm water, cloud, haze
    or fill), and the model's map of it (min-max stretched per tile) is flat but for a few stray values (standard
    deviation under :data:`STRAY_MAP_SPREAD`). Such a map is made flat: stretched to the full 0..1 its stray values
    would be read as a mountain, and gentle real relief under a plain image still gives a map with spread."""
    return bool(np.all(image[:, valid].std(axis=1) < FEATURELESS_CONTRAST)) and depth[valid].std() < STRAY_MAP_SPREAD


def _featureless_warnings(src_path: Path, ranges: np.ndarray) -> list[str]:
    flat = int(flat_tiles(ranges).sum())
    if not flat:
        return []
    tiles = int(np.isfinite(ranges).all(axis=1).sum())
    return [f"{flat} of {tiles} tiles of {src_path.name} show no contrast (calm water, cloud, haze or fill): the "
            "model sees no relief there, and the map is flat in them"]


def _left_out_warnings(src_path: Path, left_out: Exclusion, ds, extent: Window) -> list[str]:
    """A warning when the areas to leave out miss the image: most likely given in another CRS than they say."""
    if left_out.over(ds, extent, stats_shape(extent.height, extent.width)).any():
        return []
    what = Path(left_out.mask.path).name if left_out.mask else f"{len(left_out.geometries)} polygon(s)"
    return [f"the areas to leave out ({what}) cover none of {src_path.name}: nothing was left out (is their CRS "
            "the one they declare?)"]


def _hole_warnings(src_path: Path, pixels: int, nodata) -> list[str]:
    if not pixels:
        return []
    return [f"{pixels} pixels of {src_path.name} equal its nodata value {nodata:g} in holes of at most "
            f"{SMALL_HOLE_PIXELS} pixels inside the image (saturated snow or cloud, or the darkest shadow, when "
            "nodata is also a brightness): they were read as image pixels, so the height map has no holes there; "
            "larger nodata areas stay nodata"]


def _blended_bands(run: _Run, scale: np.ndarray, shift: np.ndarray,
                   message: str) -> Iterator[tuple[int, np.ndarray]]:
    """The aligned tiles blended, one band of rows at a time: ``(first row, band)``, NaN where no tile has data."""
    grid = run.grid
    for row0 in range(0, grid.height, BLOCK):
        check_cancel(run.cancel, message=message)
        row1 = min(row0 + BLOCK, grid.height)
        acc = np.zeros((row1 - row0, grid.width), dtype=np.float32)
        wsum = np.zeros_like(acc)
        for i in grid.tiles_in_rows(row0, row1):
            r, c = grid.origin(i)
            a, b = max(row0, r), min(row1, r + grid.tile)
            p = run.store.read(i, a - r, b - r)
            w = grid.weights(i)[a - r : b - r]
            ok = np.isfinite(p)
            w = np.where(ok, w, 0.0)
            v = np.where(ok, scale[i] * p + shift[i], 0.0)
            c0, c1 = max(c, 0), min(c + grid.tile, grid.width)
            acc[a - row0 : b - row0, c0:c1] += (w * v)[:, c0 - c : c1 - c]
            wsum[a - row0 : b - row0, c0:c1] += w[:, c0 - c : c1 - c]
        band = np.full(acc.shape, np.nan, dtype=np.float32)
        np.divide(acc, wsum, out=band, where=wsum > 0)
        yield row0, band


def _blended_range(run: _Run, scale: np.ndarray, shift: np.ndarray) -> tuple[float, float]:
    """Lowest and highest value of the blended surface, what relative output stretches onto 0..1. Measured on the
    blend itself: the tiles' own ranges (used before 0.5.4) include pixels that never reach the output (padding,
    tile edges) and blending averages the extremes in the overlaps, which left e.g. the Rocky Mountain sample at
    0.05..0.88."""
    lo, hi = np.inf, -np.inf
    for _, band in _blended_bands(run, scale, shift, "cancelled while stretching the output"):
        if np.isfinite(band).any():
            lo, hi = min(lo, float(np.nanmin(band))), max(hi, float(np.nanmax(band)))
    return lo, hi


def _write_blended(run: _Run, scale: np.ndarray, shift: np.ndarray, out: VerifiedOutput,
                   stretch: tuple[float, float] | None) -> None:
    """Pass 2: blend the aligned tiles one band of rows at a time and write each band; ``stretch``: the blend's
    (lowest, highest) value, mapped onto exactly 0 and 1 (relative output; the same blend, so no value falls
    outside)."""
    for row0, band in _blended_bands(run, scale, shift, "cancelled while writing the output"):
        if stretch is not None:
            low, high = stretch
            band = ((band - low) / (high - low if high > low else 1.0)).astype(np.float32)
        out.write(np.where(np.isnan(band), NODATA, band), Window(0, row0, run.grid.width, band.shape[0]))
        row1 = row0 + band.shape[0]
        report(run.progress, 0.9 + 0.09 * row1 / run.grid.height, f"writing rows {row1}/{run.grid.height}")


def _scratch_pass(path: Path, grid: GridSpec, write: Callable[[VerifiedOutput], None]) -> Path:
    """``write`` into a verified, uncompressed scratch height file on ``grid``; returns its path."""
    with VerifiedOutput(path, grid, final=False) as tmp:
        write(tmp)
    tmp.verify()
    return path


def _resample_back(run: _Run, work: Path, out: VerifiedOutput, grid: GridSpec) -> None:
    """Warp the model-GSD result onto the output ``grid`` (the input's, within the extent), one band of rows at a
    time, masked like the input."""
    with ExitStack() as stack:
        w = stack.enter_context(rasterio.open(work))
        source = run.source.opened(stack)
        src = source.open_native(stack)
        vrt = stack.enter_context(warp_onto(w, grid, Resampling.bilinear))
        for row0 in range(0, grid.height, BLOCK):
            check_cancel(run.cancel, message="cancelled while writing the output")
            window = Window(0, row0, grid.width, min(BLOCK, grid.height - row0))
            band = vrt.read(1, window=window, masked=True).filled(NODATA)
            in_src = Window(run.extent.col_off, run.extent.row_off + row0, window.width, window.height)
            valid, _ = source.mask(src, in_src)
            out.write(np.where(valid, band, NODATA), window)


def batch_ranges(tiles: int, batch_size: int, workers: int) -> list[range]:
    """Tile numbers in batches of at most ``batch_size``, as many as a multiple of ``workers`` and as even as can
    be, so that no worker idles while another runs a last batch (25 tiles, 2 workers: 7+6+6+6, not 8+8+8+1)."""
    count = workers * -(-tiles // (workers * batch_size))
    edges = np.linspace(0, tiles, count + 1).round().astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _extent_window(ds, bounds: Sequence[float] | None) -> tuple[Window, list[str]]:
    """The window of ``ds`` that ``bounds`` (left, bottom, right, top in its CRS) covers, whole pixels, and what
    the user should know about it; the whole raster for None."""
    whole = Window(0, 0, ds.width, ds.height)
    if bounds is None:
        return whole, []
    if ds.crs is None:
        raise InputError(f"{Path(ds.name).name} has no CRS, so an extent cannot be placed on it; run on the whole "
                         "raster or give it a CRS")
    left, bottom, right, top = (float(v) for v in bounds)
    if not (left < right and bottom < top):
        raise InputError(f"extent {list(bounds)} is empty: give left < right and bottom < top, in the raster's CRS")
    wanted = from_bounds(left, bottom, right, top, ds.transform).round_offsets().round_lengths()
    try:
        window = wanted.intersection(whole)
    except WindowError:
        window = None
    if window is None or window.width < 1 or window.height < 1:
        raise InputError(f"extent {list(bounds)} does not overlap {Path(ds.name).name} (its bounds are "
                         f"{[round(v, 6) for v in ds.bounds]}, in {ds.crs})")
    notes = [] if window == wanted else [
        f"the extent reaches beyond {Path(ds.name).name}: the output covers only their overlap"]
    return window, notes


def _gsd_factor(ds, gsd_m: float | None) -> float:
    """How many model pixels one input pixel spans at the raster's centre (1.0 when within 5%)."""
    if not gsd_m:
        raise InputError("this model does not record the ground resolution it was trained at; run without resampling")
    if ds.crs is None:
        raise InputError(f"{ds.name} has no CRS, so its ground resolution is unknown; run without resampling")
    size_x, size_y = pixel_size_m(ds.transform, ds.crs, ds.height / 2, ds.width / 2)
    factor = math.sqrt(size_x * size_y) / gsd_m
    return 1.0 if abs(factor - 1.0) < 0.05 else factor


def _whole_number(what: str, value, minimum: int) -> int:
    """An integer option as given: 2.5, True or 0 tiles are refused, not silently rounded or replaced."""
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise InputError(f"{what} must be a whole number, got {value!r}")
    if value < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def largest_tile(width: int, height: int, model_tile: int, multiple: int) -> int:
    """The largest tile worth running on a ``width`` x ``height`` raster: the raster as one tile (rounded up to the
    model's ``multiple``), or the model's own tile if that is larger. Beyond it a tile is only padding."""
    return max(model_tile, -(-max(width, height) // multiple) * multiple)


def _check_tile_fits(tile: int, grid: GridSpec, model_tile: int, multiple: int) -> None:
    """A tile larger than both the model's and the raster is only padding, and can ask for terabytes."""
    limit = largest_tile(grid.width, grid.height, model_tile, multiple)
    if tile > limit:
        raise InputError(f"tile size {tile} is larger than this {grid.width} x {grid.height} raster needs; "
                         f"give at most {limit}")
