"""Reading rasters safely: opening with plain errors, output path checks, the files an input reads, lining one
raster up with another's grid, and the GDAL block cache of a run. Georeferencing is never guessed: rasters without
a CRS are lined up only pixel for pixel."""

from __future__ import annotations

import os
import re
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from ..errors import InputError
from ..files import check_not_an_input

# GDAL's block cache during a run. Its default, 5% of RAM (1.2 GB on a 24 GB machine), filled with blocks that are
# not read again and, as resident memory, costs about twice its nominal size: most of the peak of a large run.
GDAL_CACHE_BYTES = 128 * 2**20
OUTPUT_EXTENSIONS = (".tif", ".tiff")  # the output is always a GeoTIFF; another extension would lie about it
# An absolute archive member as GDAL names it (/vsizip//data/a.zip/b.tif): prefix, archive, path inside.
ARCHIVE_MEMBER = re.compile(r"^(/vsi(?:zip|tar|7z|rar)/)(/.+?\.(?:zip|kmz|tar|tgz|tar\.gz|7z|rar))(/.*)?$", re.I)
GZIP_FILE = re.compile(r"^/vsigzip/(/.+)$", re.I)


def gdal_settings() -> dict:
    """GDAL options for the run (then restored), each unless the user set it: the block cache bound (blocks are
    read by tile and written in whole bands of blocks, so a cache holding a band of input rows is all that is
    reused), and every core for compressing the output and building its overviews, which run after the model
    (2-core Xeon, 4 MP float32: overviews 0.34 -> 0.20 s)."""
    settings = {"GDAL_CACHEMAX": GDAL_CACHE_BYTES, "GDAL_NUM_THREADS": "ALL_CPUS"}
    return {key: value for key, value in settings.items() if key not in os.environ}


def open_raster(path: Path | str):
    """Open a raster (a file or any GDAL dataset name), turning GDAL's complaints into an InputError. A missing
    georeferencing is no error, and is said once by the caller that needs one, not warned about at every open."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        if not os.path.exists(path):
            raise InputError(f"{path} does not exist") from exc
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise InputError(f"{path} is empty (0 bytes)") from exc
        raise InputError(f"{path} is not a raster GDAL can read: {exc}") from exc
    if ds.count == 0:  # a container: a zip, a NetCDF or HDF file, a Sentinel-2 product's metadata file
        subdatasets = ds.subdatasets
        ds.close()
        hint = f": open one of its {len(subdatasets)} subdatasets, e.g. {subdatasets[0]}" if subdatasets else ""
        raise InputError(f"{path} holds no raster bands{hint}")
    if ds.dtypes[0].startswith("complex"):
        ds.close()
        raise InputError(f"{path} has complex pixels ({ds.dtypes[0]}); give a real-valued raster")
    return ds


def dataset_path(name: str | os.PathLike) -> Path:
    """``name`` as a Path naming the same GDAL dataset. Path folds the double slash of an absolute archive member
    (/vsizip//data/a.zip/b.tif, as QGIS names a raster inside a zip), so the archive is written in GDAL's braces
    instead (/vsizip/{/data/a.zip}/b.tif); /vsigzip/ knows no braces, so a gzipped file's absolute path becomes
    one relative to the working folder (/vsigzip//data/a.tif.gz -> /vsigzip/../data/a.tif.gz)."""
    text = os.fspath(name)
    member = ARCHIVE_MEMBER.match(text)
    gzipped = GZIP_FILE.match(text)
    if member:
        text = f"{member[1]}{{{member[2]}}}{member[3] or ''}"
    elif gzipped:
        text = f"/vsigzip/{os.path.relpath(gzipped[1])}"
    return Path(text).expanduser()


def check_paths(src, dst, reference_dem) -> tuple[Path, Path, Path | None]:
    """The input, output and reference paths of a prediction, refused before any work if the output cannot be
    written there or would overwrite a file an input reads."""
    src_path = dataset_path(src)
    dst_path = Path(dst).expanduser()
    ref_path = None if reference_dem is None else dataset_path(reference_dem)
    spare_inputs(dst_path, [("input", src_path), ("reference DEM", ref_path)])
    if dst_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise InputError(f"the output {dst_path.name} must end in .tif or .tiff: it is always a float32 GeoTIFF")
    if dst_path.is_dir():
        raise InputError(f"the output {dst_path} is a folder; give a file name such as height.tif")
    if not dst_path.parent.is_dir():
        raise InputError(f"the output folder {dst_path.parent} does not exist")
    if not os.access(dst_path.parent, os.W_OK):
        raise InputError(f"the output folder {dst_path.parent} is not writable")
    return src_path, dst_path, ref_path


def spare_inputs(dst, inputs: Sequence[tuple[str, object]]) -> None:
    """Refuse an output path that is any file the input rasters read; ``inputs``: (what, path or None) pairs."""
    for what, path in inputs:
        if path is not None:
            check_not_an_input(Path(dst).expanduser(), what, Path(path).expanduser(), raster_files(path))


def raster_files(path: Path | str) -> set[str]:
    """Every file GDAL reads for the raster at ``path``: sidecars (.aux.xml, world files) and, through any depth of
    VRTs, their sources. Empty when ``path`` cannot be opened (that is reported when it is read)."""
    seen: set[str] = set()
    todo = [str(path)]
    while todo:
        name = todo.pop()
        try:
            with open_raster(name) as ds:
                files = ds.files
        except InputError:
            continue  # a sidecar, or a raster that is not there: nothing further to follow
        for f in files:
            if f not in seen:
                seen.add(f)
                if os.path.realpath(f) != os.path.realpath(name):
                    todo.append(f)
    return seen


def height_units(ds) -> str:
    """A raster's height units: d3rsmde's tag ("relative", "m"), else the band's unit, else unknown ("")."""
    return ds.tags().get("units") or (ds.units[0] if ds.units and ds.units[0] else "")


def onto_grid(stack: ExitStack, ds, grid, resampling: Resampling):
    """``ds`` on ``grid``'s pixels: warped when both have a CRS and overlap, as it is when neither has a CRS."""
    if ds.crs is None and grid.crs is None:
        if (ds.width, ds.height) != (grid.width, grid.height):
            raise InputError(f"{Path(ds.name).name} and {Path(grid.name).name} have no CRS and different sizes "
                             f"({ds.width} x {ds.height}, {grid.width} x {grid.height}), so they cannot be lined up")
        return ds
    for a, b in ((ds, grid), (grid, ds)):
        if a.crs is None:
            raise InputError(f"{Path(a.name).name} has no CRS, so it cannot be lined up with {Path(b.name).name}; "
                             "give both rasters a CRS")
    left, bottom, right, top = transform_bounds(ds.crs, grid.crs, *ds.bounds)
    g = grid.bounds
    if left >= g.right or right <= g.left or bottom >= g.top or top <= g.bottom:
        raise InputError(f"{Path(ds.name).name} and {Path(grid.name).name} do not overlap")
    return stack.enter_context(warp_onto(ds, grid, resampling))


def pixels_per_pixel_of(ds, grid) -> float:
    """How many pixels of ``grid`` (anything with a CRS and transform) one pixel of ``ds`` covers, ``ds``'s
    resolution taken in ``grid``'s CRS: above 1 where ``ds`` is the coarser."""
    native, _, _ = calculate_default_transform(ds.crs, grid.crs, ds.width, ds.height, *ds.bounds)
    return abs(native.determinant / grid.transform.determinant)


def warp_onto(ds, grid, resampling: Resampling) -> WarpedVRT:
    """``ds`` resampled onto the pixels of ``grid`` (a dataset or a :class:`~.output.GridSpec`: anything with a
    CRS, transform, width and height) as float32, NaN where it has no data."""
    return WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                     nodata=np.nan, dtype="float32", resampling=resampling)
