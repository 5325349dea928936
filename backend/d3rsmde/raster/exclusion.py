"""Areas the user leaves out of a prediction: clouds and their shadows, water, a construction site.

Given as a mask raster (nonzero = left out; any CRS and resolution, e.g. a cloud mask) or as polygons (a GeoJSON
file, or GeoJSON geometries in the image's CRS), they are nodata for the image stretch, the model and the output,
as the raster's own nodata is. A white cloud left in raises the top of the stretch, so the rest of the image
reaches the model darker and the whole map moves (the model card's limits), and it is drawn high, like snow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.features import geometry_mask
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_geom
from rasterio.windows import Window

from ..errors import InputError
from ..imagery import dataset_name
from .io import dataset_path, open_raster

GEOJSON_SUFFIXES = (".geojson", ".json")
GEOJSON_CRS = "EPSG:4326"  # RFC 7946: GeoJSON coordinates are WGS 84 longitude, latitude
# What ``exclude`` arguments take: a mask raster or GeoJSON file path, GeoJSON geometries in the image's CRS, None.
ExcludeSpec = Union[str, os.PathLike, Sequence[dict], None]


@dataclass(frozen=True)
class Exclusion:
    """Where to leave the image out: ``geometries`` (GeoJSON, in the image's CRS) or a ``mask`` raster."""

    geometries: tuple[dict, ...] = ()
    mask: Path | None = None

    def over(self, ds, window: Window, shape: tuple[int, int] | None = None) -> np.ndarray:
        """True where left out, over ``window`` of ``ds`` (the image, on any grid it is read on), at ``shape``
        (default: the window's own). A mask pixel counts if any of it covers the image pixel."""
        shape = shape or (int(window.height), int(window.width))
        transform = ds.window_transform(window) * Affine.scale(window.width / shape[1], window.height / shape[0])
        if self.geometries:
            return geometry_mask(self.geometries, out_shape=shape, transform=transform, invert=True,
                                 all_touched=True)
        with open_raster(self.mask) as mask:
            if mask.crs is None:  # and the image has none (exclusion_for): the same grid, pixel for pixel
                return mask.read(1, window=window, out_shape=shape, masked=True).filled(0) != 0
            out = np.zeros(shape, mask.dtypes[0])
            # No dst_nodata: GDAL's max resampling then takes every 0 for nodata and leaves out everything. Where
            # the mask has no data, or does not reach, the output holds its nodata value (if any): kept.
            reproject(rasterio.band(mask, 1), out, src_nodata=mask.nodata, dst_transform=transform,
                      dst_crs=ds.crs, resampling=Resampling.max)
            nodata = mask.nodata
        return (out != 0) & ~(out == nodata if nodata is None or not np.isnan(nodata) else np.isnan(out))


def exclusion_for(spec: ExcludeSpec, ds) -> Exclusion | None:
    """The :class:`Exclusion` ``spec`` names for the image ``ds``: None; a path to a mask raster or a GeoJSON file
    (``.geojson``/``.json``: WGS 84 unless it names another CRS); or GeoJSON geometries in the image's CRS."""
    if spec is None:
        return None
    if not isinstance(spec, (str, os.PathLike)):
        return Exclusion(geometries=_polygons(list(spec), "the areas to leave out"))
    path = dataset_path(spec)
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        return Exclusion(geometries=_geojson_polygons(path, ds))
    with open_raster(path) as mask:
        placed = (mask.crs is not None and ds.crs is not None) or (
            mask.crs is None and ds.crs is None and (mask.width, mask.height) == (ds.width, ds.height))
    if not placed:
        raise InputError(f"the mask {path.name} cannot be placed on {dataset_name(ds)}: both need a CRS, or "
                         "neither has one and they have the same size")
    return Exclusion(mask=path)


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
