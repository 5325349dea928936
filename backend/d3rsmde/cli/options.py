"""What the commands share: argument types (comma-separated numbers, as ``0,1,3,6``, and band lists in the syntax
the QGIS plugin takes too, ``4,3,2`` or ``4;3;2``) and how warnings are printed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..bands import parse_bands
from ..errors import InputError


def _numbers(kind: type, text: str) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None


def ints(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    return _numbers(int, text)


def floats(text: str) -> list[float]:
    """``"-105.9,40.2,-105.5,40.5"`` -> four floats."""
    return _numbers(float, text)


BANDS_HELP = ("1-based bands to use as RGB, e.g. 4,3,2 or 4;3;2, or one band used as grey (default: red, green, blue "
              "from the raster's colour interpretation or band names such as Sentinel-2 B4,B3,B2; else band 1 of 1-2 "
              "band rasters, the first three of others)")


def bands(text: str) -> list[int] | None:
    """1-based band numbers, ``"4,3,2"`` or ``"4;3;2"`` (:func:`d3rsmde.bands.parse_bands`)."""
    try:
        return parse_bands(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_exclude_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--exclude`` (areas to leave out ``purpose``) and ``--exclude-values`` (the class codes of a mask raster
    that mark them): read back with :func:`excluded`."""
    parser.add_argument("--exclude", metavar="MASK", help=f"areas to leave out {purpose}, nodata like the input's "
                        "own: a raster, nonzero where left out (any CRS/resolution), or a GeoJSON file of polygons "
                        "(.geojson/.json, WGS 84 unless it names another CRS)")
    parser.add_argument("--exclude-values", type=floats, metavar="V,V,...", help="only these values of the --exclude "
                        "raster mark areas to leave out, e.g. 3,8,9,10 for Sentinel-2 L2A scene classification "
                        "(cloud shadow, cloud, cirrus)")


def excluded(args: argparse.Namespace):
    """What ``--exclude`` and ``--exclude-values`` ask for, as the library's ``exclude`` arguments take it."""
    from ..raster.exclusion import MaskRaster

    if args.exclude_values and not args.exclude:
        raise InputError("--exclude-values needs --exclude: the raster whose values they are")
    return MaskRaster(args.exclude, tuple(args.exclude_values)) if args.exclude_values else args.exclude


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache``: where downloaded packages and the files made from them are kept."""
    parser.add_argument("--cache", help="download cache (default $D3RSMDE_SOURCES or ~/.cache/d3rsmde/sources)")


def print_warnings(warnings: Iterable[str]) -> None:
    """A backend result's ``warnings``, one per line on stderr, where they stay visible when stdout is piped."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
