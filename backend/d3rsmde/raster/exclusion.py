"""Areas the user leaves out of a prediction: clouds and their shadows, water, a construction site.

Given as a mask raster (nonzero, or one of the given values, = left out; any CRS and resolution: a cloud mask, or a
class raster such as Sentinel-2's scene classification) or as polygons (a GeoJSON file, or GeoJSON geometries in
the image's CRS), they are nodata for the image stretch, the model and the output, as the raster's own nodata is.
A white cloud left in raises the top of the stretch, so the rest of the image reaches the model darker and the
whole map moves (the model card's limits), and it is drawn high, like snow.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.features import bounds, geometry_mask
from rasterio.transform import Affine, array_bounds
from rasterio.warp import reproject, transform_bounds, transform_geom
from rasterio.windows import Window, from_bounds

from ..errors import InputError
from ..imagery import dataset_name
from .io import dataset_path, open_raster

GEOJSON_SUFFIXES = (".geojson", ".json")
GEOJSON_CRS = "EPSG:4326"  # RFC 7946: GeoJSON coordinates are WGS 84 longitude, latitude


@dataclass(frozen=True)
class MaskRaster:
    """A raster whose band 1 marks what to leave out: any nonzero value, or only ``values`` (class codes, e.g.
    Sentinel-2 L2A scene classification 3, 8, 9, 10: cloud shadow, cloud, cirrus). Its nodata marks nothing."""

    path: str | os.PathLike
    values: tuple[float, ...] | None = None

    def marks(self, data: np.ma.MaskedArray) -> np.ndarray:
        """True where ``data`` (read from this raster) marks a pixel to leave out."""
        hit = data.data != 0 if self.values is None else np.isin(data.data, self.values)
        return hit & ~np.ma.getmaskarray(data)


# What ``exclude`` arguments take: a mask raster (its path, or a MaskRaster), a GeoJSON file path, GeoJSON
# geometries in the image's CRS, or None.
ExcludeSpec = Union[str, os.PathLike, MaskRaster, Sequence[dict], None]


@dataclass(frozen=True)
class Exclusion:
    """Where to leave the image out: ``geometries`` (GeoJSON, in the image's CRS) or a ``mask`` raster."""

    geometries: tuple[dict, ...] = ()
    mask: MaskRaster | None = None
    reader: object = field(default=None, repr=False, compare=False)  # the mask raster, open (:meth:`opened`)
    # Each polygon's (west, south, east, north), so that a window rasterizes only the polygons that reach it.
    boxes: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        boxes = np.array([bounds(g) for g in self.geometries], dtype=np.float64).reshape(-1, 4)
        object.__setattr__(self, "boxes", boxes)  # frozen: set once, here

    def opened(self, stack: ExitStack) -> Exclusion:
        """This exclusion with its mask raster kept open in ``stack``: for a pass over many windows, which would
        otherwise open it once each."""
        if self.mask is None or self.reader is not None:
            return self
        return replace(self, reader=stack.enter_context(open_raster(dataset_path(self.mask.path))))

    def over(self, ds, window: Window, shape: tuple[int, int] | None = None) -> np.ndarray:
        """True where left out, over ``window`` of ``ds`` (the image, on any grid it is read on), at ``shape``
        (default: the window's own). A mask pixel counts if any of it covers the image pixel."""
        shape = shape or (int(window.height), int(window.width))
        transform = ds.window_transform(window) * Affine.scale(window.width / shape[1], window.height / shape[0])
        if self.geometries:
            west, south, east, north = array_bounds(shape[0], shape[1], transform)
            b = self.boxes
            near = np.flatnonzero((b[:, 0] <= east) & (b[:, 2] >= west) & (b[:, 1] <= north) & (b[:, 3] >= south))
            if not near.size:
                return np.zeros(shape, bool)
            return geometry_mask([self.geometries[i] for i in near], out_shape=shape, transform=transform,
                                 invert=True, all_touched=True)
        with ExitStack() as stack:
            mask = self.opened(stack).reader
            if mask.crs is None:  # and the image has none (exclusion_for): the same grid, pixel for pixel
                return self.mask.marks(mask.read(1, window=window, out_shape=shape, masked=True))
            # The mask's pixels under the window (one more on each side), marked, then warped with the maximum:
            # an image pixel is left out if any marked mask pixel covers it.
            bounds = transform_bounds(ds.crs, mask.crs, *array_bounds(shape[0], shape[1], transform))
            under = from_bounds(*bounds, transform=mask.transform)
            col0, row0 = max(math.floor(under.col_off) - 1, 0), max(math.floor(under.row_off) - 1, 0)
            col1 = min(math.ceil(under.col_off + under.width) + 1, mask.width)
            row1 = min(math.ceil(under.row_off + under.height) + 1, mask.height)
            out = np.zeros(shape, np.uint8)
            if col1 <= col0 or row1 <= row0:
                return out.astype(bool)
            under = Window(col0, row0, col1 - col0, row1 - row0)
            marked = self.mask.marks(mask.read(1, window=under, masked=True)).astype(np.uint8)
            reproject(marked, out, src_transform=mask.window_transform(under), src_crs=mask.crs,
                      dst_transform=transform, dst_crs=ds.crs, resampling=Resampling.max)
        return out != 0


def exclusion_file(spec: ExcludeSpec) -> Path | None:
    """The file ``spec`` reads (a mask raster or GeoJSON file), None for geometries or no spec."""
    if isinstance(spec, MaskRaster):
        spec = spec.path
    return dataset_path(spec) if isinstance(spec, (str, os.PathLike)) else None


def exclusion_for(spec: ExcludeSpec, ds) -> Exclusion | None:
    """The :class:`Exclusion` ``spec`` names for the image ``ds``: None; a path to a mask raster or a GeoJSON file
    (``.geojson``/``.json``: WGS 84 unless it names another CRS); or GeoJSON geometries in the image's CRS."""
    if spec is None:
        return None
    if not isinstance(spec, (str, os.PathLike, MaskRaster)):
        return Exclusion(geometries=_polygons(list(spec), "the areas to leave out"))
    spec = spec if isinstance(spec, MaskRaster) else MaskRaster(spec)
    path = dataset_path(spec.path)
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        if spec.values is not None:
            raise InputError(f"{path.name} holds polygons: values to leave out apply to a mask raster")
        return Exclusion(geometries=_geojson_polygons(path, ds))
    with open_raster(path) as mask:
        placed = (mask.crs is not None and ds.crs is not None) or (
            mask.crs is None and ds.crs is None and (mask.width, mask.height) == (ds.width, ds.height))
    if not placed:
        raise InputError(f"the mask {path.name} cannot be placed on {dataset_name(ds)}: both need a CRS, or "
                         "neither has one and they have the same size")
    return Exclusion(mask=spec)


def _geojson_polygons(path: Path, ds) -> tuple[dict, ...]:
    if ds.crs is None:
        raise InputError(f"{dataset_name(ds)} has no CRS, so the polygons of {path.name} cannot be placed on it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the areas to leave out from {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path.name} is no GeoJSON object (a FeatureCollection, Feature or geometry)")
    features = data.get("features", [data])
    geometries = [f.get("geometry", f) if isinstance(f, dict) and f.get("type") == "Feature" else f for f in features]
    crs = ((data.get("crs") or {}).get("properties") or {}).get("name", GEOJSON_CRS)  # the pre-RFC 7946 member
    polygons = _polygons(geometries, path.name)
    try:
        return tuple(transform_geom(crs, ds.crs, g) for g in polygons)
    except (CRSError, ValueError) as exc:
        raise InputError(f"cannot place the polygons of {path.name} on {dataset_name(ds)}: {exc}") from exc


def _polygons(geometries: Sequence, what: str) -> tuple[dict, ...]:
    """The polygons among ``geometries`` (GeoJSON dicts; features without a geometry are skipped); an error when
    there is none or when one is not an area."""
    geometries = [g for g in geometries if g]
    bad = {g.get("type") if isinstance(g, dict) else type(g).__name__ for g in geometries} - {"Polygon",
                                                                                              "MultiPolygon"}
    if bad or not geometries:
        raise InputError(f"{what} must hold polygons (areas), not {', '.join(sorted(map(str, bad))) or 'nothing'}")
    return tuple(geometries)
