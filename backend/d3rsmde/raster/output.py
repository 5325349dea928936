"""The height GeoTIFF: where it sits on Earth (:class:`GridSpec`), its one creation profile
(:func:`height_profile`, used by every writer of heights in the project), a writer that proves the closed file
holds what was written, and the tags and overviews that describe a finished map."""

from __future__ import annotations

import errno
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window, transform as window_transform

from .. import __version__
from ..errors import InputError
from .io import open_raster

NODATA = -9999.0
BLOCK = 256  # output block size, and the height of the band of rows blended at a time
SOFTWARE = f"d3rsmde {__version__}"  # the tag that marks a height map as ours (see is_height_output)


@dataclass(frozen=True)
class GridSpec:
    """A raster grid and how it is placed on Earth: CRS and transform, else ground control points or RPCs."""

    crs: object
    transform: Affine
    width: int
    height: int
    gcps: tuple = ((), None)
    rpcs: object = None

    @classmethod
    def of(cls, ds) -> "GridSpec":
        return cls(ds.crs, ds.transform, ds.width, ds.height, ds.gcps, ds.rpcs)

    def scaled(self, factor: float) -> "GridSpec":
        """The same footprint with pixels ``factor`` times smaller."""
        if factor == 1.0:
            return self
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        return GridSpec(self.crs, self.transform * Affine.scale(self.width / w, self.height / h), w, h)

    def within(self, window: Window) -> "GridSpec":
        """The part of this grid that ``window`` covers (this grid itself for the whole); needs a CRS and transform,
        since ground control points and RPCs describe the whole image."""
        if (window.col_off, window.row_off, window.width, window.height) == (0, 0, self.width, self.height):
            return self
        return GridSpec(self.crs, window_transform(window, self.transform), int(window.width), int(window.height))

    def georeferencing(self) -> dict:
        """rasterio creation keywords that give a new raster this placement."""
        if self.crs is None and self.gcps[0]:
            return {"gcps": self.gcps[0], "crs": self.gcps[1], "rpcs": self.rpcs}
        return {"crs": self.crs, "transform": self.transform, "rpcs": self.rpcs}

    def warnings(self, src_path: Path) -> list[str]:
        """What the user should know about where the output sits: nothing, unless the input has no CRS."""
        if self.crs is not None or self.gcps[0] or self.rpcs:
            return []
        if self.transform.is_identity:
            return [f"{src_path.name} has no georeferencing (no CRS, GCPs or RPCs), so neither has the output: "
                    "it matches the input pixel for pixel but has no place on a map"]
        return [f"{src_path.name} has coordinates but no CRS (their system is not recorded), so the output has "
                "the same coordinates and no CRS: assign both the input's CRS (in QGIS: Layer Properties > "
                "Source; or gdal_edit.py -a_srs EPSG:code) to place them on a map"]


def height_profile(grid, *, final: bool = True) -> dict:
    """rasterio creation keywords of a height map placed like ``grid`` (a :class:`GridSpec` or an open dataset,
    whose CRS and transform, GCPs or RPCs are copied as they are): one float32 band with ``NODATA``, 256-pixel
    tiles, BigTIFF when needed, and, for a ``final`` file, DEFLATE with the floating-point predictor (scratch
    files skip compression: they are read once)."""
    spec = grid if isinstance(grid, GridSpec) else GridSpec.of(grid)
    profile = dict(driver="GTiff", width=spec.width, height=spec.height, count=1, dtype="float32", nodata=NODATA,
                   tiled=True, blockxsize=BLOCK, blockysize=BLOCK, bigtiff="IF_SAFER", **spec.georeferencing())
    if final:
        profile.update(compress="DEFLATE", predictor=3)
    return profile


class VerifiedOutput:
    """A height GeoTIFF being written, with a checksum of every window written so that :meth:`verify` can prove
    the closed file holds exactly that: GDAL reports write errors (a full disk) only as messages and carries on."""

    def __init__(self, path: Path, spec: GridSpec, final: bool = True):
        self.path = path
        self.ds = rasterio.open(path, "w", **height_profile(spec, final=final))
        self._sums: list[tuple[Window, int]] = []

    def __enter__(self) -> "VerifiedOutput":
        return self

    def __exit__(self, *exc) -> None:
        self.ds.close()

    def write(self, band: np.ndarray, window: Window) -> None:
        band = np.ascontiguousarray(band, dtype=np.float32)
        self.ds.write(band, 1, window=window)
        self._sums.append((window, zlib.crc32(band)))

    def verify(self) -> None:
        """Reopen the closed file: every window as written, every overview block present and readable."""
        try:
            with rasterio.open(self.path) as ds:
                bad = [w for w, crc in self._sums if zlib.crc32(ds.read(1, window=w)) != crc]
                levels = len(ds.overviews(1))
            for level in range(levels):
                with rasterio.open(self.path, overview_level=level) as ov:
                    for (row, col), window in ov.block_windows(1):
                        if int(ov.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1) or 0) == 0:
                            bad.append(f"overview {level}")
                        ov.read(1, window=window)  # decodes: raises on a truncated block
        except RasterioIOError as exc:
            raise OSError(errno.EIO, f"the new file could not be read back; is the disk full? ({exc})") from exc
        if bad:
            raise OSError(errno.EIO, f"the new file does not hold what was written ({len(bad)} blocks differ); "
                          "is the disk full?")


def finish(ds, units: str, tags: dict) -> None:
    """Describe a height map (what, in which units, made by what from what: ``tags``) and add overviews down to
    ~64 pixels."""
    relative = units == "relative"
    ds.set_band_description(1, "relative height (0 lowest, 1 highest)" if relative else f"height ({units})")
    if not relative:
        ds.set_band_unit(1, units)
    ds.update_tags(units=units, software=SOFTWARE, **tags)
    ds.update_tags(1, units=units)
    factors, f = [], 2
    while max(ds.width, ds.height) / f >= 64:
        factors.append(f)
        f *= 2
    if factors:
        ds.build_overviews(factors, Resampling.average)


def is_height_output(path: Path) -> bool:
    """Whether ``path`` is a height raster d3rsmde wrote (tagged by :func:`finish`): not an image to predict from."""
    try:
        with open_raster(path) as ds:
            return ds.tags().get("software", "").startswith("d3rsmde ")
    except InputError:
        return False
