#!/usr/bin/env python3
"""Which inference tile size suits a model, judged on whole scenes it never saw (not on the Rocky Mountain alone).

Scenes: the GLOBE tile G test blocks (held out of every render tile set: ``render_tiles.split_blocks``) at each
render scale, rendered whole (one block, 4 training tiles across) with fixed seeds and written as GeoTIFFs on a
synthetic metric grid (image and DEM share it, so nothing is reprojected); the real world pair's test blocks
(Blue Marble over ETOPO5, sea floor set to sea level as in the world tiles) cut as whole scenes from ``--world``'s
test tiles; plus any ``--scene NAME=IMAGE,DEM``.
Each scene is predicted with ``predict_raster`` at every ``--tiles`` size (overlap an eighth of the tile, the
default; a scene smaller than the tile is run as one tile) and refinement steps, then scored as a whole
(``evaluate_scene``: MAE / SSIM / LPIPS / gradient r).

    python scripts/scene_tile_eval.py --weights W --tiles 256,512 --steps 0,6 --world build/default-weights/world \
        --out build/scene-tiles

Writes results.json and results.md into --out (the rendered scenes are cached there too).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window, from_bounds

from d3rsmde import pairs
from d3rsmde.device import describe_device
from d3rsmde.dems import load_dem
from d3rsmde.evaluation import SCENE_FIGURES, scene_report
from d3rsmde.files import atomic_write_text
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.raster.predict import largest_tile
from d3rsmde.render_tiles import (BLOCK_TILES, DEFAULT_DEMS, DEFAULT_SCALES, TEST_FRACTION, VAL_FRACTION,
                                  at_scale, split_blocks, split_seed, stretched_render)

TEST = 2  # split_blocks' code for the test split
METRICS = SCENE_FIGURES
TRAIN_TILE = 256  # the tile size the render sets were split with (block = BLOCK_TILES tiles)


def held_out_globe_scenes(out: Path, max_scenes: int, max_sea: float = 0.2) -> dict[str, tuple[Path, Path]]:
    """Render each whole GLOBE test block (up to ``max_scenes``, coarsest scale first) to image + DEM GeoTIFFs."""
    if max_scenes <= 0:
        return {}
    dem = load_dem("globe-g")
    position = DEFAULT_DEMS.index("globe-g")
    block = TRAIN_TILE * BLOCK_TILES
    scenes = {}
    for factor in sorted(DEFAULT_SCALES, reverse=True):
        height = at_scale(dem.height, factor)
        split = split_blocks(height.shape, block, split_seed(position, factor), VAL_FRACTION, TEST_FRACTION)
        for br, bc in zip(*np.nonzero(split == TEST)):
            crop = height[br * block:(br + 1) * block, bc * block:(bc + 1) * block]
            if crop.shape != (block, block) or np.mean(crop <= dem.sea_level) > max_sea:
                continue
            name = f"globe-x{factor}-b{br}-{bc}"
            image, dem_path = out / f"{name}-rgb.tif", out / f"{name}-dem.tif"
            if not image.exists():
                gsd = dem.gsd_m * factor
                rgb, _ = stretched_render(crop, gsd, seed=1000 + len(scenes), water_level=dem.sea_level)
                transform = from_origin(0.0, block * gsd, gsd, gsd)  # synthetic, shared by image and DEM
                pairs.write_geotiff(dem_path, crop.astype(np.float32), transform, crs="EPSG:3857")
                pairs.write_geotiff(image, rgb, transform, crs="EPSG:3857")
            scenes[name] = (image, dem_path)
            if len(scenes) == max_scenes:
                return scenes
    return scenes


def held_out_world_scenes(out: Path, world: Path) -> dict[str, tuple[Path, Path]]:
    """Each test block of the world tile set (its test tiles' bounding box) as image + DEM GeoTIFFs."""
    index = json.loads((world / "index.json").read_text())
    size, block = index["tile_size"], index["block_size"]
    col0, row0 = index["window"][:2]
    groups: dict[tuple[int, int], list[dict]] = {}
    for t in index["tiles"]:
        if t["split"] == "test":
            groups.setdefault(((t["row"] - row0) // block, (t["col"] - col0) // block), []).append(t)
    scenes = {}
    for (br, bc), tiles in sorted(groups.items()):
        rows = min(t["row"] for t in tiles), max(t["row"] for t in tiles) + size
        cols = min(t["col"] for t in tiles), max(t["col"] for t in tiles) + size
        name = f"world-b{br}-{bc}"
        image, dem_path = out / f"{name}-rgb.tif", out / f"{name}-dem.tif"
        if not image.exists():
            window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
            with rasterio.open(index["sources"]["image"]) as src:
                rgb, transform, crs = src.read(window=window), src.window_transform(window), src.crs
                bounds = rasterio.windows.bounds(window, src.transform)
            with rasterio.open(index["sources"]["dem"]) as src:
                w = from_bounds(*bounds, src.transform).round_offsets().round_lengths()
                height = src.read(1, window=w, masked=True).astype(np.float32).filled(np.nan)
                dem_transform = src.window_transform(w)
            sea = index.get("sea_level")
            height = height if sea is None else np.where(np.isnan(height), np.nan, np.maximum(height, sea))
            pairs.write_geotiff(dem_path, height.astype(np.float32), dem_transform, crs=str(crs), nodata=np.nan)
            pairs.write_geotiff(image, rgb, transform, crs=str(crs))
        scenes[name] = (image, dem_path)
    return scenes


def whole_scene_tile(image: Path, pipe: D3Pipeline) -> int:
    """The largest tile ``predict_raster`` accepts for ``image`` (the scene as one tile, or the model's tile)."""
    with rasterio.open(image) as src:
        return largest_tile(src.width, src.height, pipe.config.preprocessing.tile_size, pipe.size_multiple)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--tiles", default="256,384,512")
    parser.add_argument("--steps", default="0,6")
    parser.add_argument("--max-scenes", type=int, default=8, help="GLOBE scenes at most (0: none)")
    parser.add_argument("--world", type=Path, help="the world tile set whose test blocks become scenes")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=IMAGE,DEM")
    parser.add_argument("--out", default="build/scene-tiles")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = D3Pipeline.from_pretrained(args.weights)
    scenes = held_out_globe_scenes(out, args.max_scenes)
    if args.world:
        scenes.update(held_out_world_scenes(out, args.world))
    for item in args.scene:
        name, paths = item.split("=", 1)
        image, dem = paths.split(",")
        scenes[name] = (Path(image), Path(dem))
    tiles = [int(t) for t in args.tiles.split(",")]
    steps = [int(t) for t in args.steps.split(",")]
    results = {}
    for name, (image, dem) in scenes.items():
        for tile in tiles:
            for t in steps:
                pred = out / f"{name}-tile{tile}-T{t}.tif"
                began = time.perf_counter()
                run = predict_raster(image, pred, pipe, tile=min(tile, whole_scene_tile(image, pipe)),
                                     refine_steps=t)
                report = scene_report(pred, dem)
                m = report["scene"]
                m.update({k: float("nan") for k in METRICS if m[k] is None},  # LPIPS without its weights
                         seconds=time.perf_counter() - began, tile_used=run["tile"],
                         standard_error=report["scene_standard_error"])
                results.setdefault(name, {})[f"tile {tile}, T={t}"] = m
                print(f"{name} tile {tile} T={t}: " + " / ".join(f"{k} {m[k]:.3f}" for k in METRICS)
                      + f" ({m['seconds']:.1f} s)", flush=True)
    groups = {f"mean of {len(g)} {label}": g for label, g in (
        ("held-out GLOBE renders", [n for n in results if n.startswith("globe-")]),
        ("held-out world blocks", [n for n in results if n.startswith("world-")])) if g}
    rows = list(next(iter(results.values())))
    mean = {group: {row: {k: float(np.mean([results[n][row][k] for n in names])) for k in METRICS} for row in rows}
            for group, names in groups.items()}
    # Standard errors: of a group mean across its scenes; of one scene, its jackknife (scene_report).
    spread = {group: {row: {k: float(np.std([results[n][row][k] for n in names], ddof=1) / np.sqrt(len(names)))
                            if len(names) > 1 else float("nan") for k in METRICS} for row in rows}
              for group, names in groups.items()}
    spread.update({n: {row: {k: float("nan") if v is None else v for k, v in results[n][row]["standard_error"].items()}
                       for row in rows} for n in results})
    columns = {**mean, **{n: results[n] for n in results}}
    lines = [f"Weights `{args.weights}`; {describe_device(pipe.device)}, {platform.processor() or platform.machine()}.",
             "Each cell: MAE / SSIM / LPIPS / gradient r, whole scene.", ""]
    for title, table in (("", columns), ("Standard errors (a group mean: across its scenes; one scene: its "
                                         "jackknife over 3 x 3 blocks):", spread)):
        lines += ([title, ""] if title else []) + [
            "| setting | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
        for row in rows:
            cells = [" / ".join(f"{col[row][k]:.{2 if k == 'mae' else 3}f}" for k in METRICS) for col in table.values()]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text(out / "results.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps({"weights": args.weights, "mean": mean,
                                                        "standard_error": spread, "scenes": results},
                                                       indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
