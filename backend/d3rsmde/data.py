"""Training tiles from an image raster and an elevation raster, split by spatially disjoint blocks.

The builder reads the image window by window and warps the elevation onto the image grid through one
``WarpedVRT`` (bilinear, nodata respected), so any CRS, resolution and raster size work with flat memory.
Imagery is stretched to [0, 1] with the robust 1-99 percentile per band over the whole image, the
convention the raster engine uses at inference. Splits are drawn per block of several tiles, never per
tile: neighbouring tiles see the same terrain, so a random tile split would leak it into validation.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError, WindowError
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from d3rsmde.bands import guessed_bands_warning, select_bands
from d3rsmde.geodesy import pixel_size_m
from d3rsmde.imagery import STRETCH_PERCENTILES, read_image, stretch, stretch_limits
from d3rsmde.errors import InputError

from d3rsmde.datasets import INDEX_NAME, SPLITS, publish_tiles, staged_tiles
from d3rsmde.defaults import SEED
from d3rsmde.progress import Cancel, Progress, check_cancel, report
from d3rsmde.raster.exclusion import Exclusion, ExcludeSpec, exclusion_for
from d3rsmde.raster.io import warp_onto
from d3rsmde.raster.masks import without_collar


@dataclass(frozen=True)
class BuildOptions:
    """How tiles are cut, filtered and split; passed whole from the CLI, the world source and the fine-tuner.

    ``stride`` defaults to the tile size and ``block_size`` (pixels of the split blocks) to 4 tiles. Heights below
    ``sea_level`` are water seen from above: they count as sea and are clamped to it (``None``: keep them, count
    no sea). Tiles keep when at least ``min_valid`` of their pixels have imagery and height, at most
    ``max_sea_fraction`` of those are sea and the 2-98 percentile height range reaches ``min_relief_m``.
    """

    tile_size: int = 256
    stride: int | None = None
    block_size: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    min_valid: float = 0.9
    min_relief_m: float = 10.0
    max_sea_fraction: float = 0.5
    sea_level: float | None = 0.0
    seed: int = SEED

    def __post_init__(self) -> None:
        if self.tile_size < 8 or self.step < 1:
            raise InputError(f"tile_size must be >= 8 and stride >= 1, got {self.tile_size} and {self.step}")
        if self.block < self.tile_size:
            raise InputError(f"block_size ({self.block}) must be at least tile_size ({self.tile_size})")
        _check_fractions(self.val_fraction, self.test_fraction)

    @property
    def step(self) -> int:
        """Pixels between tile origins."""
        return self.stride or self.tile_size

    @property
    def block(self) -> int:
        """Side of a split block in pixels."""
        return self.block_size or 4 * self.tile_size

    def replace(self, **changes) -> "BuildOptions":
        return dataclasses.replace(self, **changes)


def _origins(length: int, tile: int, stride: int) -> range:
    return range(0, length - tile + 1, stride)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise InputError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) and sum below 1"
        )


def assign_splits(
    block_weights: dict[tuple[int, int], int], val_fraction: float, test_fraction: float, seed: int
) -> dict[tuple[int, int], str]:
    """Give every block a split: largest blocks first (seeded random among equals), each to the split
    furthest below its share of tiles, so shares come out close even with few blocks."""
    _check_fractions(val_fraction, test_fraction)
    total = sum(block_weights.values())
    share = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    filled = Counter()
    blocks = sorted(block_weights)
    tie_break = np.random.default_rng(seed).permutation(len(blocks))
    assignment = {}
    for _, _, block in sorted(zip((-block_weights[b] for b in blocks), tie_break, blocks)):
        split = max(SPLITS, key=lambda s: share[s] * total - filled[s] if share[s] > 0 else -math.inf)
        assignment[block] = split
        filled[split] += block_weights[block]
    return assignment


def _open_raster(path, what: str):
    try:
        src = rasterio.open(path)
    except RasterioIOError as err:
        raise InputError(f"cannot open the {what} raster {path}: {err}") from err
    if src.crs is None:
        src.close()
        raise InputError(f"the {what} raster {path} has no CRS: georeference it first")
    return src


def _window_for(src, extent: Sequence[float] | None, tile_size: int) -> Window:
    full = Window(0, 0, src.width, src.height)
    if extent is None:
        window = full
    else:
        if len(extent) != 4:
            raise InputError(f"extent must be (xmin, ymin, xmax, ymax) in the image CRS, got {extent}")
        try:
            window = from_bounds(*extent, transform=src.transform).round_offsets().round_lengths()
            window = window.intersection(full)
        except WindowError as err:
            raise InputError(f"extent {tuple(extent)} does not overlap the image {src.name}") from err
    if window.width < tile_size or window.height < tile_size:
        raise InputError(
            f"the image area is {window.width}x{window.height} px, smaller than one {tile_size} px tile: "
            "use a smaller tile size or a larger extent"
        )
    return window


def build_dataset(
    image,
    dem,
    out_dir,
    options: BuildOptions = BuildOptions(),
    *,
    bands: Sequence[int] | None = None,
    extent: Sequence[float] | None = None,
    exclude: ExcludeSpec = None,
    sources: dict | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict:
    """Cut co-registered image/height tiles into ``out_dir`` (``tiles/*.npz`` + ``index.json``) as ``options``
    say; a tile overlapping split blocks of different splits is dropped.

    ``extent`` is (xmin, ymin, xmax, ymax) in the image CRS. ``exclude``: areas to leave out (clouds), masked
    like nodata, as ``predict_raster`` takes them (:mod:`d3rsmde.raster.exclusion`). Returns ``{"index_path",
    "counts", "dropped", "bands", "warnings"}``: the image bands the tiles hold as RGB, and what the user should
    know (bands guessed blindly).
    """
    o = options
    out_dir = Path(out_dir)
    with ExitStack() as stack:
        img = stack.enter_context(_open_raster(image, "image"))
        dem_src = stack.enter_context(_open_raster(dem, "elevation"))
        notes = guessed_bands_warning(img, bands)
        bands = select_bands(img, bands)
        img, _, collar_notes = without_collar(img, bands, Path(image).name, stack)  # as the engine reads it
        notes += collar_notes
        window = _window_for(img, extent, o.tile_size)
        left_out = exclusion_for(exclude, img)
        left_out = left_out.opened(stack) if left_out is not None else None
        low, high = stretch_limits(img, bands, window, left_out=left_out)
        image_dtype = np.uint8 if img.dtypes[bands[0] - 1] == "uint8" else np.uint16
        with staged_tiles(out_dir) as tmp:
            with warp_onto(dem_src, img, Resampling.bilinear) as elevation:
                tiles, dropped = _cut_tiles(img, elevation, bands, window, (low, high), image_dtype, tmp / "tiles", o,
                                            left_out, progress, cancel)
            counts, dropped["straddling"] = _split_tiles(tiles, o, tmp / "tiles")
            tiles = [t for t in tiles if "split" in t]
            gsd = [t["gsd_m"] for t in tiles]
            index = {
                "sources": {"image": str(image), "dem": str(dem), **(sources or {})},
                "crs": img.crs.to_wkt(),
                "gsd_m": float(np.median(gsd)) if gsd else None,
                "tile_size": o.tile_size,
                "stride": o.step,
                "block_size": o.block,
                "bands": bands,
                "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
                "bounds": list(window_bounds(window, img.transform)),
                "image_dtype": np.dtype(image_dtype).name,
                "stretch": {"percentiles": list(STRETCH_PERCENTILES), "low": low.tolist(), "high": high.tolist()},
                "depth_units": "metres",
                "sea_level": o.sea_level,
                "filters": {"min_valid": o.min_valid, "min_relief_m": o.min_relief_m,
                            "max_sea_fraction": o.max_sea_fraction},
                "split": {"val_fraction": o.val_fraction, "test_fraction": o.test_fraction, "seed": o.seed},
                "counts": counts,
                "dropped": dropped,
                "tiles": tiles,
            }
            publish_tiles(tmp, out_dir, index)
    report(progress, 1.0, f"{sum(counts.values())} tiles written to {out_dir}")
    return {"index_path": str(out_dir / INDEX_NAME), "counts": counts, "dropped": dropped, "bands": bands,
            "warnings": notes}


def _cut_tiles(img, elevation, bands: list[int], window: Window, limits: tuple, image_dtype, tile_dir: Path,
               o: BuildOptions, left_out: Exclusion | None, progress: Progress | None,
               cancel: Cancel | None) -> tuple[list, dict]:
    """Read, filter and write every candidate tile (``limits``: the stretch's low and high per band; ``left_out``
    masked like nodata); return kept tiles' metadata and drop counts."""
    scale = np.iinfo(image_dtype).max
    tile_size, block_size, sea_level = o.tile_size, o.block, o.sea_level
    origins = [(r, c) for r in _origins(window.height, tile_size, o.step)
               for c in _origins(window.width, tile_size, o.step)]
    dropped = Counter(nodata=0, sea=0, flat=0)
    tiles = []
    for i, (r, c) in enumerate(origins):
        check_cancel(cancel, "dataset build")
        report(progress, 0.95 * i / len(origins), f"tile {i + 1}/{len(origins)}")
        win = Window(window.col_off + c, window.row_off + r, tile_size, tile_size)
        height = elevation.read(1, window=win)
        valid = (img.dataset_mask(window=win) > 0) & np.isfinite(height)
        if left_out is not None:
            valid &= ~left_out.over(img, win)
        valid_fraction = float(valid.mean())
        if valid_fraction < o.min_valid:
            dropped["nodata"] += 1
            continue
        sea = valid & (height <= sea_level) if sea_level is not None else np.zeros_like(valid)
        sea_fraction = float(sea.sum() / valid.sum())
        if sea_fraction > o.max_sea_fraction:
            dropped["sea"] += 1
            continue
        if sea_level is not None:
            height = np.maximum(height, sea_level)
        lo, hi = np.percentile(height[valid], (2, 98))
        if hi - lo < o.min_relief_m:
            dropped["flat"] += 1
            continue
        pixels = stretch(read_image(img, bands, win), *limits)
        pixels = np.round(pixels * scale).astype(image_dtype) * valid
        depth = np.where(valid, height, 0.0).astype(np.float32)[None]
        name = f"r{int(win.row_off):06d}_c{int(win.col_off):06d}.npz"
        np.savez_compressed(tile_dir / name, image=pixels, depth=depth, mask=valid[None])
        half = tile_size / 2
        size_x, size_y = pixel_size_m(img.transform, img.crs, win.row_off + half, win.col_off + half)
        tiles.append({
            "file": f"tiles/{name}",
            "row": int(win.row_off),
            "col": int(win.col_off),
            "blocks": sorted({(br, bc) for br in {r // block_size, (r + tile_size - 1) // block_size}
                              for bc in {c // block_size, (c + tile_size - 1) // block_size}}),
            "bounds": list(window_bounds(win, img.transform)),
            "gsd_m": math.sqrt(size_x * size_y),
            "valid_fraction": valid_fraction,
            "sea_fraction": sea_fraction,
            "relief_m": float(hi - lo),
            "height_range_m": [float(height[valid].min()), float(height[valid].max())],
        })
    return tiles, dict(dropped)


def _split_tiles(tiles: list, o: BuildOptions, tile_dir: Path) -> tuple[dict, int]:
    """Split blocks, then tiles with them; drop (and delete) tiles that straddle blocks of different splits."""
    weights = Counter(t["blocks"][0] for t in tiles)
    for t in tiles:
        weights.update({b: 0 for b in t["blocks"]})
    assignment = assign_splits(dict(weights), o.val_fraction, o.test_fraction, o.seed)
    counts = Counter({s: 0 for s in SPLITS})
    straddling = 0
    for t in tiles:
        splits = {assignment[b] for b in t.pop("blocks")}
        if len(splits) > 1:
            straddling += 1
            (tile_dir / Path(t["file"]).name).unlink()
            continue
        t["split"] = splits.pop()
        counts[t["split"]] += 1
    return dict(counts), straddling
