"""Which bands of a raster the model sees as RGB: one band-list syntax and one default, for the CLI, the QGIS
plugin and dataset building alike. No torch here: the plugin reads band lists before the backend is checked.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .errors import InputError

RGB = ("red", "green", "blue")
# Band names in which B2, B3, B4 are blue, green, red: Sentinel-2 (B1..B12, B8A) and Landsat 8/9 (B1..B11).
# Landsat 4-7 also name bands B1..B7 but with B3 = red, so the layout is trusted only when a band beyond B8
# (B8A, B9..B12) is present, which Landsat 4-7 never have, or when the bands are exactly Sentinel-2's four 10 m
# bands (B2, B3, B4, B8: the usual Sentinel-2 export; B8 of Landsat 7 is a 15 m panchromatic band that no stack of
# its 30 m bands 2-4 holds without band 1).
SENTINEL2_LANDSAT8_ONLY = {"8a", "9", "10", "11", "12"}
SENTINEL2_10M = {"2", "3", "4", "8"}
# Words that disqualify a colour word in a description: "red edge", "near infrared", "coastal blue".
NOT_VISIBLE = {"edge", "rededge", "nir", "infrared", "coastal", "aerosol"}


def parse_bands(value) -> list[int] | None:
    """1-based band numbers from "4,3,2", "4;3;2", "4 3 2", 4 or [4, 3, 2]; None, "" or [] -> None (automatic)."""
    if value is None:
        return None
    parts = re.split(r"[,;\s]+", value.strip()) if isinstance(value, str) else (
        [value] if isinstance(value, int) else list(value))
    parts = [part for part in parts if part != ""]
    try:
        bands = [part if isinstance(part, int) else int(str(part).strip()) for part in parts]
    except ValueError:
        raise InputError(
            f"bands must be 1-based band numbers separated by commas or semicolons, e.g. 4,3,2; got {value!r}"
        ) from None
    return bands or None


def default_bands(count: int, colors: Sequence[str] = (), descriptions: Sequence[str | None] = ()) -> list[int]:
    """The bands to use as RGB when none were chosen, from what the raster says about its bands, in this order:
    GDAL colour interpretation (red, green, blue); band descriptions naming the colours; Sentinel-2 or
    Landsat 8/9 band names (B4, B3, B2). Without such hints: one or two bands -> band 1 (replicated to grey; a
    second band is usually alpha or another polarisation), three or more -> the first three."""
    return _hinted_bands(colors, descriptions) or ([1] if count < 3 else [1, 2, 3])


def guessed_bands_warning(src, bands=None) -> list[str]:
    """What to tell the user when the bands were guessed blindly: none chosen, and four or more bands that say
    nothing about their colours (Landsat 4-7, PlanetScope and unnamed Sentinel-2 stacks do not start with red)."""
    if parse_bands(bands) is not None or src.count < 4 or _hinted_bands(
            [c.name for c in src.colorinterp], src.descriptions):
        return []
    return [f"{Path(src.name).name} has {src.count} bands that do not say which colour they are: bands 1, 2, 3 were "
            "used as red, green and blue. If they are not, choose the bands (--bands; in QGIS, Bands used as RGB): "
            "e.g. 3,2,1 for Landsat 4-7, 4,3,2 for Landsat 8-9 and Sentinel-2, 3,2,1 for 4-band blue-green-red-NIR "
            "images"]


def _hinted_bands(colors: Sequence[str], descriptions: Sequence[str | None]) -> list[int] | None:
    """Red, green and blue as the raster's colour interpretation, band descriptions or Sentinel-2/Landsat 8-9
    band names say, or None when they say nothing."""
    by_color = _indexes([(color or "").lower() for color in colors])
    if by_color:
        return by_color
    words = [set(re.findall(r"[a-z]+", (text or "").lower())) for text in descriptions]
    by_words = _indexes([next((c for c in RGB if c in w), "") if not w & NOT_VISIBLE else "" for w in words])
    if by_words:
        return by_words
    names = [_band_name(text) for text in descriptions]
    if SENTINEL2_LANDSAT8_ONLY & set(names) or sorted(names) == sorted(SENTINEL2_10M):
        return _indexes(["red" if n == "4" else "green" if n == "3" else "blue" if n == "2" else "" for n in names])
    return None


def select_bands(src, bands=None, order: Sequence[str] = RGB) -> list[int]:
    """Three 1-based band indexes of ``src`` (an open rasterio dataset) for the model's input channels: ``bands``
    (any form parse_bands takes, in the model's channel order; one band is replicated) or, when None/empty,
    :func:`default_bands` put in ``order``, the colours of the model's channels (its config's ``band_order``)."""
    chosen = parse_bands(bands)
    if chosen is None:
        chosen = default_bands(src.count, [c.name for c in src.colorinterp], src.descriptions)
        if len(chosen) == 3 and tuple(order) != RGB:
            if sorted(order) != sorted(RGB):
                raise InputError(f"a model's band order must name red, green and blue once each, got {tuple(order)}")
            chosen = [chosen[RGB.index(color)] for color in order]
    if len(chosen) not in (1, 3):
        raise InputError(f"bands must name 1 or 3 bands, got {chosen}")
    bad = [b for b in chosen if not 1 <= b <= src.count]
    if bad:
        raise InputError(f"band(s) {bad} do not exist in {src.name}, which has {src.count} band(s)")
    return chosen * 3 if len(chosen) == 1 else chosen


def _indexes(labels: list[str]) -> list[int] | None:
    """1-based indexes of the first red, green and blue labels, or None unless all three are there."""
    found = [labels.index(color) + 1 for color in RGB if color in labels]
    return found if len(found) == 3 else None


def _band_name(description: str | None) -> str:
    """"4" for "B4", "B04", "SR_B4" or "B4, central wavelength 665 nm"; "8a" for "B8A"; "" otherwise."""
    match = re.search(r"(?:^|[^a-z0-9])b0?(\d{1,2}a?)(?![a-z0-9])", (description or "").lower())
    return match.group(1) if match else ""
