"""Raster layers that rasterio cannot read (web maps such as XYZ tiles and WMS, WCS, ArcGIS MapServer, database
and virtual rasters) fetched into a GeoTIFF over an extent, at a chosen ground pixel size, as QGIS's own
*Export > Save As* does: the engine then reads a file like any other."""
from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsDistanceArea,
    QgsPointXY,
    QgsProcessingUtils,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

# A guard against fetching the world: 10,000 x 10,000 pixels of a web map take minutes to download.
MAX_FETCH_PIXELS = 100_000_000
DEFAULT_PIXEL_SIZE_M = 30.0  # Landsat's: inside the scales the default weights were trained on


def is_file_layer(layer: QgsRasterLayer) -> bool:
    """Whether rasterio can read the layer's source (GDAL's provider), or it must be fetched first."""
    return layer.providerType() == "gdal"


def layer_label(layer: QgsRasterLayer) -> str:
    """The layer's name for messages and the fetched file; a web map that qgis_process made from "wms://..." has
    none (QGIS 3.22) or the last part of its URL template, '{y}' (3.40): it is then named after its provider."""
    name = layer.name()
    return name if name and "{" not in name else f"{layer.providerType()} layer"


def is_image_layer(layer: QgsRasterLayer) -> bool:
    """Whether the layer's provider serves rendered colour (web maps: one ARGB band that becomes red, green, blue
    and alpha in the file) rather than data bands."""
    return layer.dataProvider().dataType(1) in (Qgis.ARGB32, Qgis.ARGB32_Premultiplied)


def any_valid_pixel(path: Path) -> bool:
    """Whether a fetched file has any pixel that is not transparent or nodata (looked at on a grid of at most
    1024 x 1024, enough for any real image)."""
    import rasterio

    with rasterio.open(path) as ds:
        shape = (min(ds.height, 1024), min(ds.width, 1024))
        return bool(ds.dataset_mask(out_shape=shape).any())


def map_units_per_metre(layer: QgsRasterLayer, at: QgsPointXY, context) -> tuple[float, float]:
    """How many of the layer's map units span one ground metre at ``at``, east-west and north-south: Web
    Mercator's metres are 1/cos(latitude) of a ground metre both ways; a degree of longitude shrinks with latitude,
    one of latitude does not, so square pixels on the ground are not square in degrees."""
    from d3rsmde.errors import InputError

    measure = QgsDistanceArea()
    measure.setSourceCrs(layer.crs(), context.transformContext())
    measure.setEllipsoid("WGS84")
    step = 1e-3 if layer.crs().isGeographic() else 1.0
    east = measure.measureLine(QgsPointXY(at.x() - step / 2, at.y()), QgsPointXY(at.x() + step / 2, at.y()))
    north = measure.measureLine(QgsPointXY(at.x(), at.y() - step / 2), QgsPointXY(at.x(), at.y() + step / 2))
    if not (east > 0 and north > 0):
        raise InputError(f"Cannot measure ground distances in the CRS of layer '{layer_label(layer)}' "
                         f"({layer.crs().authid() or 'unknown'}).")
    return step / east, step / north


@contextmanager
def fetched_layer(layer: QgsRasterLayer, extent: QgsRectangle, pixel_size_m: float, context,
                  feedback) -> Iterator[Path]:
    """The layer over ``extent`` (in its CRS) at ``pixel_size_m`` ground metres per pixel, as a GeoTIFF in the
    layer's CRS under Processing's temporary folder, named after the layer (so messages name it), removed on
    exit. Web maps come as red, green, blue and alpha; the log says what was fetched. What cannot be fetched is
    an :class:`~d3rsmde.errors.InputError` (a folder run reports it for that file and goes on)."""
    from d3rsmde.errors import Cancelled, InputError

    label = layer_label(layer)
    # Only whole pixels within the layer: a provider may fill cells outside its extent with values its nodata
    # does not name (QGIS 3.22's virtual rasters: -3.4e38 under a nodata of -1.8e308).
    extent = extent.intersect(layer.extent())
    if extent.isNull() or extent.isEmpty():
        raise InputError(f"Layer '{label}' has nothing to fetch there: give an Extent that it covers.")
    size_x, size_y = (pixel_size_m * units for units in map_units_per_metre(layer, extent.center(), context))
    cols, rows = math.floor(extent.width() / size_x), math.floor(extent.height() / size_y)
    if not cols or not rows:
        raise InputError(f"Layer '{label}' is fetched at {pixel_size_m:g} m per pixel, and the extent "
                         "is narrower than a pixel: draw a larger Extent or choose a smaller pixel size.")
    if cols * rows > MAX_FETCH_PIXELS:
        raise InputError(
            f"Layer '{label}' is not a file: it is fetched over the extent at {pixel_size_m:g} m per pixel, "
            f"which would be {cols:,} x {rows:,} pixels (at most {MAX_FETCH_PIXELS:,}). Draw a smaller Extent or "
            "choose a larger pixel size.")
    box = QgsRectangle(extent.xMinimum(), extent.yMaximum() - rows * size_y,
                       extent.xMinimum() + cols * size_x, extent.yMaximum())  # pixels of exactly that size
    name = re.sub(r"[^\w.-]+", "_", label).strip("_") or "layer"
    path = Path(QgsProcessingUtils.generateTempFilename(f"{name}.tif"))
    pipe = QgsRasterPipe()
    if not pipe.set(layer.dataProvider().clone()):
        raise InputError(f"Layer '{label}' cannot be read block by block.")
    writer = QgsRasterFileWriter(str(path))
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES"])
    block_feedback = QgsRasterBlockFeedback()
    feedback.canceled.connect(block_feedback.cancel)
    block_feedback.progressChanged.connect(feedback.setProgress)
    started = time.perf_counter()
    try:
        error = writer.writeRaster(pipe, cols, rows, box, layer.crs(), context.transformContext(), block_feedback)
        if feedback.isCanceled():
            raise Cancelled("fetching the layer")
        if error != QgsRasterFileWriter.NoError:
            raise InputError(f"Layer '{label}' could not be fetched (QgsRasterFileWriter error "
                             f"{int(error)}): is its server reachable?")
        if not any_valid_pixel(path):  # a web map whose server is down gives transparent tiles, not an error
            raise InputError(f"Layer '{label}' gave no pixels over the extent (all transparent or "
                             "nodata): is its server reachable, and does the layer cover the extent?")
        feedback.pushInfo(f"Fetched layer '{label}' ({layer.providerType()}, not a file) over the extent at "
                          f"{pixel_size_m:g} m per pixel: {cols} x {rows} pixels in {layer.crs().authid()}, "
                          f"{time.perf_counter() - started:.1f} s")
        yield path
    finally:
        feedback.canceled.disconnect(block_feedback.cancel)
        path.unlink(missing_ok=True)
