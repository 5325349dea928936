"""Real DEMs reachable through package managers, read into metres with their ground sampling distance.

They feed the renderer (:mod:`d3rsmde.render`): real relief at user scales (1 m lidar to ~1 km GLOBE), imagery
drawn on top. Each source names its package, version and in-package path; files are fetched once into the
sources cache (see :func:`d3rsmde.sources.fetch`) and never committed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from .errors import InputError
from .pairs import globe_g
from .progress import Progress
from .sources import GLOBE_G, GLOBE_G_BOUNDS, PackagedFile, fetch

JACKSBORO = PackagedFile(
    "debian", "python-matplotlib-data", "", "usr/share/matplotlib/mpl-data/sample_data/jacksboro_fault_dem.npz",
    "USGS 3\" DEM of the Jacksboro fault, Tennessee, 344x403 metres (matplotlib's sample data)",
)
LIDAR_DEM = PackagedFile(
    "pypi", "lidar", "0.8.4", "lidar/data/dem.tif", "1 m lidar DEM, 400x400, EPSG:26915, MIT",
)
FUJI = PackagedFile(
    "pypi-sdist", "pymartini", "0.6.0", "tests/data/fuji.png",
    "Mapbox Terrain-RGB tile of Mount Fuji, 512x512 (pymartini's test data; training use only)",
)
ST_HELENS = PackagedFile(
    "pypi-sdist", "pymartini", "0.6.0", "tests/data/mapbox_st_helens.png",
    "Mapbox Terrain-RGB tile of Mount St Helens, 256x256 (pymartini's test data; training use only)",
)
TERRARIUM = PackagedFile(
    "pypi-sdist", "pymartini", "0.6.0", "tests/data/terrarium.png",
    "Terrarium-encoded elevation tile, 256x256 (pymartini's test data; training use only)",
)


def decode_terrain_rgb(rgb: np.ndarray) -> np.ndarray:
    """Mapbox Terrain-RGB (3 x H x W uint8) -> metres: -10000 + (R * 65536 + G * 256 + B) * 0.1."""
    r, g, b = (rgb[i].astype(np.float64) for i in range(3))
    return (-10000.0 + (r * 65536.0 + g * 256.0 + b) * 0.1).astype(np.float32)


def decode_terrarium(rgb: np.ndarray) -> np.ndarray:
    """Terrarium (3 x H x W uint8) -> metres: R * 256 + G + B / 256 - 32768."""
    r, g, b = (rgb[i].astype(np.float64) for i in range(3))
    return (r * 256.0 + g + b / 256.0 - 32768.0).astype(np.float32)


@dataclass(frozen=True)
class DEM:
    """A height map in metres (rows north to south) and its pixel size in metres."""

    name: str
    height: np.ndarray
    gsd_m: float
    source: str
    sea_level: float | None = None  # heights at or below it are water (coastal DEMs)


def _read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # bare PNG tiles
        with rasterio.open(path) as src:
            return src.read()[:3]


def _jacksboro(cache, progress) -> DEM:
    with np.load(fetch(JACKSBORO, cache, progress)) as f:
        height = f["elevation"].astype(np.float32)
        dy = float(f["dy"]) * 111_320.0
        dx = float(f["dx"]) * 111_320.0 * math.cos(math.radians(36.3))  # the fault lies near 36.3 N
    return DEM("jacksboro", height, math.sqrt(dx * dy), JACKSBORO.describe())


def _lidar(cache, progress) -> DEM:
    with rasterio.open(fetch(LIDAR_DEM, cache, progress)) as src:
        height = src.read(1, masked=True).filled(np.nan).astype(np.float32)
        gsd = math.sqrt(abs(src.res[0] * src.res[1]))
    return DEM("lidar-1m", height, gsd, LIDAR_DEM.describe())


def _tile(item: PackagedFile, decode: Callable[[np.ndarray], np.ndarray], gsd_m: float):
    def read(cache, progress) -> DEM:
        return DEM(Path(item.member).stem, decode(_read_png(fetch(item, cache, progress))), gsd_m, item.describe())

    return read


def _globe(cache, progress) -> DEM:
    with rasterio.open(globe_g(cache, progress)) as src:
        height = src.read(1).astype(np.float32)
    rows = height.shape[0]
    lat = (GLOBE_G_BOUNDS[1] + GLOBE_G_BOUNDS[3]) / 2
    step = (GLOBE_G_BOUNDS[3] - GLOBE_G_BOUNDS[1]) / rows * 111_320.0
    return DEM("globe-g", height, step * math.sqrt(math.cos(math.radians(lat))), GLOBE_G.describe(), sea_level=0.0)


# Terrain-RGB zoom levels are not recorded in pymartini's tiles; their extents (a volcano per tile) put them at
# roughly 60-120 m per pixel.
READERS: dict[str, Callable] = {
    "globe-g": _globe,
    "jacksboro": _jacksboro,
    "lidar-1m": _lidar,
    "fuji": _tile(FUJI, decode_terrain_rgb, 90.0),
    "st-helens": _tile(ST_HELENS, decode_terrain_rgb, 60.0),
    "terrarium": _tile(TERRARIUM, decode_terrarium, 120.0),
}


def dem_names() -> list[str]:
    return list(READERS)


def load_dem(name: str, cache=None, progress: Progress | None = None) -> DEM:
    """The DEM called ``name`` (one of :func:`dem_names`), fetched through its package the first time."""
    if name not in READERS:
        raise InputError(f"unknown DEM {name!r}; choose from {dem_names()}")
    return READERS[name](cache, progress)
