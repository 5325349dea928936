"""Training tiles rendered from real DEMs (``d3rsmde data render``), in the same format as real image/DEM tiles
(:class:`d3rsmde.datasets.TileDataset` reads both).

Each DEM is used at several ground sampling distances (block means, or interpolation for 1/n), crops are drawn
at random inside split blocks (a crop never spans two blocks, so validation terrain is never seen in training), and
every crop gets its own render seed: the same ridge seen twice comes with another sun, season and land cover.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .datasets import INDEX_NAME, SPLITS, publish_tiles, staged_tiles
from .defaults import SEED
from .imagery import band_limits, stretch
from .dems import DEM, load_dem
from .errors import InputError
from .render import render_dem
from .progress import Progress, check_cancel, report

DEFAULT_DEMS = ("globe-g", "jacksboro", "fuji", "st-helens", "terrarium", "lidar-1m")
DEFAULT_SCALES = (1, 2, 4)
BLOCK_TILES = 4  # split blocks are this many tiles across (at each scale)
VAL_FRACTION, TEST_FRACTION = 0.1, 0.1  # shares of the split blocks held out for validation and test


def at_scale(height: np.ndarray, factor: float) -> np.ndarray:
    """``height`` on a grid of ``factor`` times its pixel size: the block mean over ``factor`` x ``factor`` pixels
    (what a coarser sensor grid of the same ground sees), or for a factor 1/n (0.5, 0.25) a cubic interpolation n
    times finer, so DEMs smaller than a tile still give tiles."""
    if factor < 1:
        zoom = round(1 / factor)
        if not math.isclose(zoom * factor, 1.0):
            raise InputError(f"a scale below 1 must be 1/n (0.5, 0.25...), got {factor}")
        return ndimage.zoom(height, zoom, order=3)
    factor = int(factor)
    if factor == 1:
        return height
    h, w = (s // factor * factor for s in height.shape)
    return height[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def split_blocks(shape: tuple[int, int], block: int, seed: int, val_fraction: float,
                 test_fraction: float) -> np.ndarray:
    """Split of each ``block`` x ``block`` block of a ``shape`` grid: 0 train, 1 val, 2 test (index into SPLITS).

    A scene of a single block trains whole. Depends only on its arguments, never on the render seed, so held-out
    terrain can be found again (e.g. to render whole held-out scenes for evaluation)."""
    draws = np.random.default_rng(seed).random((math.ceil(shape[0] / block), math.ceil(shape[1] / block)))
    split = np.where(draws < val_fraction, 1, np.where(draws < val_fraction + test_fraction, 2, 0))
    if split.size == 1:
        split[:] = 0
    return split


def split_seed(dem_position: int, factor: float) -> int:
    """The seed of :func:`split_blocks` for the DEM at ``dem_position`` in the render list, at ``factor``."""
    if factor < 1:  # 1/n scales: seeds no integer factor uses
        return SEED + 1000 * dem_position + 500 + round(1 / factor)
    return SEED + 1000 * dem_position + int(factor)


def _crops(dem: DEM, factor: float, tile: int, count: int, rng: np.random.Generator, split_rng_seed: int,
           val_fraction: float, test_fraction: float, min_relief_px: float, block: int) -> list[dict]:
    """Up to ``count`` crop jobs of ``dem`` at ``factor``: origin, split, and the crop itself."""
    height = at_scale(dem.height, factor)
    gsd = dem.gsd_m * factor
    rows, cols = height.shape
    if rows < tile or cols < tile:
        return []
    block_split = split_blocks((rows, cols), block, split_rng_seed, val_fraction, test_fraction)
    jobs, tries = [], 0
    while len(jobs) < count and tries < count * 20:
        tries += 1
        r, c = int(rng.integers(0, rows - tile + 1)), int(rng.integers(0, cols - tile + 1))
        if block_split.size > 1 and (r // block != (r + tile - 1) // block or c // block != (c + tile - 1) // block):
            continue  # straddles split blocks
        crop = height[r:r + tile, c:c + tile]
        if not np.isfinite(crop).all():
            continue
        lo, hi = np.percentile(crop, (2, 98))
        if hi - lo < min_relief_px * gsd:
            continue  # flat: nothing to learn but noise
        if dem.sea_level is not None and np.mean(crop <= dem.sea_level) > 0.4:
            continue
        jobs.append({"dem": dem.name, "factor": factor, "row": r, "col": c, "gsd_m": gsd, "height": crop,
                     "sea_level": dem.sea_level, "split": SPLITS[block_split[r // block, c // block]],
                     "seed": int(rng.integers(2**31))})
    return jobs


def stretched_render(height: np.ndarray, gsd_m: float, seed: int, water_level: float | None = None,
                     dry_share: float = 0.0, settled_share: float = 0.0) -> tuple[np.ndarray, dict]:
    """:func:`~d3rsmde.render.render_dem` stretched as the raster engine stretches a whole image (1-99 % per
    band) into uint8, so a render and an inference tile reach the model in the same value range."""
    image, info = render_dem(height, gsd_m, seed, water_level=water_level, dry_share=dry_share,
                             settled_share=settled_share)
    return np.round(stretch(image, *band_limits(image.reshape(3, -1))) * 255).astype(np.uint8), info


def _render_job(job: dict, dry_share: float, settled_share: float) -> tuple[np.ndarray, dict]:
    return stretched_render(job["height"], job["gsd_m"], job["seed"], job["sea_level"], dry_share, settled_share)


def build_render_dataset(
    out_dir,
    *,
    dems: Sequence[str] = DEFAULT_DEMS,
    tile_size: int = 256,
    scales: Sequence[float] = DEFAULT_SCALES,
    tiles_per_dem: int = 600,
    min_views: int = 16,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    min_relief_px: float = 0.3,
    split_block: int | None = None,
    dry_share: float = 0.0,
    settled_share: float = 0.0,
    seed: int = 42,
    workers: int | None = None,
    cache=None,
    progress: Progress | None = None,
    cancel=None,
) -> dict:
    """Render ``tiles_per_dem`` tiles per DEM and scale (fewer where a DEM is small) into ``out_dir``.

    The val/test blocks of each DEM and scale do not depend on ``seed`` (only crops and renders do), so tile sets
    rendered with other seeds add views without leaking held-out terrain into training.
    Scenes smaller than that get at least ``min_views`` renders per scale (the same crop under other suns, seasons
    and land cover). ``split_block``: side of the split blocks in pixels (default ``BLOCK_TILES`` tiles); give
    another tile size the blocks of an existing set (1024 for sets of 256 tiles) to hold out the same terrain.
    ``min_relief_px`` drops crops whose 2-98 % height range is under that many pixel widths (flat ground).
    ``dry_share``, ``settled_share``: shares of semi-arid and of settled-lowland renders
    (:func:`~d3rsmde.render.render_dem`).
    Returns ``{"index_path", "counts"}``; the folder is replaced only once everything is written.
    """
    if tile_size < 16:
        raise InputError(f"tile_size must be at least 16, got {tile_size}")
    for name, share in (("dry_share", dry_share), ("settled_share", settled_share)):
        if not 0.0 <= share <= 1.0:
            raise InputError(f"{name} must lie in [0, 1], got {share}")
    scales = [int(f) if float(f).is_integer() else float(f) for f in scales]  # tile names say x2, not x2.0
    block = split_block or tile_size * BLOCK_TILES
    if block < tile_size:
        raise InputError(f"split blocks of {block} px cannot hold tiles of {tile_size} px")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    jobs, sources = [], {}
    for d, name in enumerate(dems):
        dem = load_dem(name, cache, progress)
        sources[f"{name}_package"] = dem.source
        for factor in scales:
            area = int(dem.height.shape[0] / factor) * int(dem.height.shape[1] / factor)
            count = min(tiles_per_dem, max(min_views, 4 * area // tile_size**2))  # small scenes: several views each
            jobs += _crops(dem, factor, tile_size, count, rng, split_seed(d, factor), val_fraction,
                           test_fraction, min_relief_px, block)
    if not jobs:
        raise InputError("no DEM crop passed the filters: lower min_relief_px or the tile size")
    tiles = []
    with staged_tiles(out_dir) as tmp:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            renders = pool.map(partial(_render_job, dry_share=dry_share, settled_share=settled_share), jobs, chunksize=8)
            for i, (job, (image, info)) in enumerate(zip(jobs, renders)):
                check_cancel(cancel, "render dataset build")
                name = f"{job['dem']}_x{job['factor']}_r{job['row']:05d}_c{job['col']:05d}_{i:05d}.npz"
                mask = np.ones((1, tile_size, tile_size), bool)
                np.savez_compressed(tmp / "tiles" / name, image=image, depth=job["height"][None].astype(np.float32),
                                    mask=mask)
                tiles.append({"file": f"tiles/{name}", "split": job["split"], "dem": job["dem"],
                              "gsd_m": job["gsd_m"], "seed": job["seed"], **info})
                if i % 100 == 0:
                    report(progress, i / len(jobs), f"rendered {i}/{len(jobs)} tiles")
        counts = dict(Counter(t["split"] for t in tiles))
        index = {
            "kind": "render",
            "sources": sources,
            "gsd_m": float(np.median([t["gsd_m"] for t in tiles])),
            "tile_size": tile_size,
            "image_dtype": "uint8",
            "depth_units": "metres",
            "render": {"dems": list(dems), "scales": list(scales), "seed": seed, "min_relief_px": min_relief_px,
                       "split_block": block, "dry_share": dry_share, "settled_share": settled_share},
            "counts": {s: counts.get(s, 0) for s in SPLITS},
            "tiles": tiles,
        }
        publish_tiles(tmp, out_dir, index)
    report(progress, 1.0, f"{len(tiles)} rendered tiles written to {out_dir}")
    return {"index_path": str(out_dir / INDEX_NAME), "counts": index["counts"]}
