"""What every D3-RSMDE algorithm shares: naming, the backend check, the model parameters, error translation.

The backend (torch, d3rsmde) is imported only inside processAlgorithm, after the dependency check, so the
provider loads in a QGIS without torch and each algorithm then explains what to install.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..deps import backend_problem
from ..paths import BUNDLED_WEIGHTS, HELP_URL, ICON
from .fetch import DEFAULT_PIXEL_SIZE_M, fetched_layer, is_file_layer, is_image_layer, layer_label

DEVICES = ("auto", "cpu", "cuda")
# Words the Toolbox search matches besides the names (users look for "DEM" or "elevation", not "depth").
TAGS = ("height", "elevation", "DEM", "DSM", "terrain", "depth", "relief", "deep learning", "remote sensing")
DEVICE_LABELS = ("Automatic (CUDA GPU if available, else CPU)", "CPU", "CUDA GPU")


class D3Algorithm(QgsProcessingAlgorithm):
    """Base class; subclasses define NAME, DISPLAY_NAME, HELP, initAlgorithm() and process()."""

    NAME = ""
    DISPLAY_NAME = ""
    HELP = ""

    WEIGHTS = "WEIGHTS"
    REFINE_STEPS = "REFINE_STEPS"
    TILE = "TILE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    REFERENCE_DEM = "REFERENCE_DEM"
    BANDS = "BANDS"
    EXCLUDE = "EXCLUDE"
    EXCLUDE_VALUES = "EXCLUDE_VALUES"
    PIXEL_SIZE = "PIXEL_SIZE"

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(self.DISPLAY_NAME)

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(self.HELP)

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def tags(self) -> list[str]:
        return [self.tr(tag) for tag in TAGS]

    def helpUrl(self) -> str:  # noqa: N802 - QGIS API
        return HELP_URL

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("D3RSMDE", text)

    # -- parameters shared by the algorithms ---------------------------------------------------------------

    def add_advanced(self, parameter: QgsProcessingParameterDefinition) -> None:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)

    def add_bands_parameter(self, image: str) -> None:
        """BANDS: the bands of the raster layer parameter ``image`` fed to the model as RGB (empty = automatic)."""
        self.addParameter(QgsProcessingParameterBand(
            self.BANDS, self.tr("Bands used as RGB (empty = automatic)"), parentLayerParameterName=image,
            optional=True, allowMultiple=True))

    def add_pixel_size_parameter(self) -> None:
        """PIXEL_SIZE: ground metres per pixel at which an image layer that is not a file (a web map) is fetched."""
        self.addParameter(QgsProcessingParameterNumber(
            self.PIXEL_SIZE, self.tr("Pixel size for layers that are not files (web maps), in metres"),
            type=QgsProcessingParameterNumber.Double, minValue=0.01, defaultValue=DEFAULT_PIXEL_SIZE_M))

    def add_weights_parameter(self, description: str = "Model weights (.safetensors; empty = bundled default)"):
        self.addParameter(QgsProcessingParameterFile(
            self.WEIGHTS, self.tr(description), extension="safetensors", optional=True))

    def add_device_parameter(self) -> None:
        self.add_advanced(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=[self.tr(label) for label in DEVICE_LABELS], defaultValue=0))

    def add_model_parameters(self) -> None:
        """WEIGHTS, REFINE_STEPS and the advanced TILE, OVERLAP, BATCH_SIZE, DEVICE of the inference algorithms."""
        from d3rsmde.config import D3Config  # torch-free; the number the models are trained and shipped with

        self.add_weights_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            self.REFINE_STEPS, self.tr("Refinement steps (0 = coarse model only)"),
            type=QgsProcessingParameterNumber.Integer, minValue=0, defaultValue=D3Config.num_steps, optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            self.TILE, self.tr("Tile size in pixels (empty = from the weights)"),
            type=QgsProcessingParameterNumber.Integer, minValue=16, optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            self.OVERLAP, self.tr("Tile overlap in pixels (empty = automatic)"),
            type=QgsProcessingParameterNumber.Integer, minValue=0, optional=True))
        self.add_advanced(QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Tiles per batch (empty = automatic)"),
            type=QgsProcessingParameterNumber.Integer, minValue=1, optional=True))
        self.add_device_parameter()

    def add_exclude_parameter(self, examples: str) -> None:
        """EXCLUDE: areas to leave out (``examples``: what they are), a polygon layer or a raster nonzero there;
        EXCLUDE_VALUES (advanced): only these values of such a raster (class codes)."""
        self.addParameter(QgsProcessingParameterMapLayer(
            self.EXCLUDE, self.tr(f"Areas to leave out ({examples}: polygons, or a raster nonzero there)"),
            optional=True, types=[QgsProcessing.TypeVectorPolygon, QgsProcessing.TypeRaster]))
        self.add_advanced(QgsProcessingParameterString(
            self.EXCLUDE_VALUES, self.tr("Values of that raster to leave out, e.g. 3,8,9,10 for Sentinel-2 scene "
                                         "classification (empty = any nonzero)"), optional=True))

    def add_reference_parameter(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_DEM, self.tr("Reference DEM (output in metres)"), optional=True))

    # -- reading parameters --------------------------------------------------------------------------------

    def optional_int(self, parameters, name: str, context) -> int | None:
        """An integer parameter, or None when left empty (the backend then picks its default)."""
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsInt(parameters, name, context)

    def device(self, parameters, context) -> str:
        return DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]

    def weights(self, parameters, context) -> Path:
        """The chosen weights file, else the default ($D3RSMDE_WEIGHTS, the repository's, the zip's)."""
        chosen = self.parameterAsFile(parameters, self.WEIGHTS, context)
        if chosen:
            if not Path(chosen).is_file():
                raise QgsProcessingException(f"Weights file not found: {chosen}")
            return Path(chosen)
        from d3rsmde.errors import CheckpointError
        from d3rsmde.weights import default_weights_path

        try:
            return default_weights_path()
        except CheckpointError:
            if BUNDLED_WEIGHTS.is_file():  # the zip's copy, when d3rsmde comes from a venv rather than libs/
                return BUNDLED_WEIGHTS
            raise

    def model_options(self, parameters, context) -> dict:
        """The predict_raster keyword arguments taken from the shared model parameters."""
        return {
            "tile": self.optional_int(parameters, self.TILE, context),
            "overlap": self.optional_int(parameters, self.OVERLAP, context),
            "batch_size": self.optional_int(parameters, self.BATCH_SIZE, context),
            "refine_steps": self.optional_int(parameters, self.REFINE_STEPS, context),
        }

    def band_list(self, parameters, name: str, context) -> list[int] | None:
        """1-based bands, "4,3,2" and "4;3;2" alike (qgis_process passes text, which QGIS reads as [0] when it
        holds commas); None = the backend's automatic choice."""
        from d3rsmde.bands import parse_bands

        value = parameters.get(name)
        return parse_bands(value if isinstance(value, str) else self.parameterAsInts(parameters, name, context))

    def exclude_values(self, parameters, context) -> tuple[float, ...] | None:
        """EXCLUDE_VALUES as numbers, "3,8,9,10" or "3;8;9;10"; None when empty (any nonzero value)."""
        text = self.parameterAsString(parameters, self.EXCLUDE_VALUES, context).replace(";", ",")
        try:
            return tuple(float(v) for v in text.split(",") if v.strip()) or None
        except ValueError:
            raise QgsProcessingException(f"Values to leave out must be numbers such as 3,8,9,10, not '{text}'.") \
                from None

    def raster_path(self, parameters, name: str, context) -> str | None:
        """File path behind a raster layer parameter (the backend reads files with rasterio), None if unset."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            return None
        return layer_file(layer)

    def image_file(self, parameters, layer: QgsRasterLayer, extent: QgsRectangle | None, bands: list[int] | None,
                   context, feedback, stack: ExitStack) -> str:
        """The file the backend reads for an image layer (see ``readable_file``); a web map has no bands to
        choose."""
        if bands and not is_file_layer(layer) and is_image_layer(layer):
            raise QgsProcessingException(f"Layer '{layer_label(layer)}' is a web map: it is fetched as red, green and "
                                         "blue, so leave Bands empty.")
        return self.readable_file(parameters, layer, extent, context, feedback, stack)

    def elevation_file(self, parameters, name: str, image: QgsRasterLayer, extent: QgsRectangle | None, context,
                       feedback, stack: ExitStack) -> str | None:
        """The file of the elevation layer parameter ``name`` (a reference DEM, a DEM to train on), None if unset;
        one that is not a file (a WCS, a database raster) is fetched over the image's ``extent`` (in the image's
        CRS; None: all of it), with a margin of a tenth."""
        dem = self.parameterAsRasterLayer(parameters, name, context)
        if dem is None or is_file_layer(dem):
            return None if dem is None else layer_file(dem)
        area = QgsCoordinateTransform(image.crs(), dem.crs(), context.transformContext()).transformBoundingBox(
            image.extent() if extent is None else extent)
        area.grow(0.1 * max(area.width(), area.height()))
        return self.readable_file(parameters, dem, area, context, feedback, stack)

    def readable_file(self, parameters, layer: QgsRasterLayer, extent: QgsRectangle | None, context, feedback,
                      stack: ExitStack) -> str:
        """The file the backend reads for a raster layer: its own; for a layer that is not a file (a web map, WCS, a
        database or virtual raster), the layer fetched over ``extent`` (in its CRS; None: the layer's) at
        PIXEL_SIZE, deleted when ``stack`` closes."""
        if is_file_layer(layer):
            return layer_file(layer)
        return str(stack.enter_context(fetched_layer(
            layer, layer.extent() if extent is None else extent,
            self.parameterAsDouble(parameters, self.PIXEL_SIZE, context), context, feedback)))

    # -- running -------------------------------------------------------------------------------------------

    def load_pipeline(self, parameters, context, feedback):
        """The model (cached between runs and batch rows), with the device and weights logged."""
        from d3rsmde.device import describe_device

        from ..cache import load_pipeline, pipeline_for

        weights = self.weights(parameters, context)
        loads = pipeline_for.cache_info().misses
        pipeline = load_pipeline(weights, self.device(parameters, context))
        reused = pipeline_for.cache_info().misses == loads
        digest = pipeline.provenance["weights_sha256"]
        feedback.pushInfo(f"Weights: {weights} (sha256 {digest}){' (already loaded)' if reused else ''}")
        feedback.pushInfo(f"Device: {describe_device(pipeline.device)}")
        return pipeline

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        problem = backend_problem()
        if problem:
            raise QgsProcessingException(problem)
        from d3rsmde.errors import Cancelled, D3Error

        try:
            return self.process(parameters, context, feedback)
        except Cancelled as exc:
            raise QgsProcessingException(self.tr("Cancelled; no output was written.")) from exc
        except D3Error as exc:
            raise QgsProcessingException(str(exc)) from exc

    def process(self, parameters, context, feedback) -> dict:
        raise NotImplementedError


def layer_file(layer: QgsRasterLayer) -> str:
    """The GDAL dataset name a GDAL raster layer reads (a file, a file inside a zip, a GeoPackage table, a
    subdataset), without QGIS's own options; other providers (WMS, PostGIS...) cannot be passed to rasterio."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"Layer '{layer.name()}' is not a file raster (provider {layer.providerType()}); "
            "export it to GeoTIFF first.")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    name = f"{parts.get('vsiPrefix') or ''}{parts['path']}{parts.get('vsiSuffix') or ''}"
    return f"GPKG:{name}:{parts['layerName']}" if parts.get("layerName") else name


def areas_to_leave_out(layer: QgsMapLayer | None, crs: QgsCoordinateReferenceSystem, context,
                       within: QgsRectangle | None = None, values: tuple[float, ...] | None = None):
    """What ``predict_raster(exclude=...)`` takes for a layer: a raster (any nonzero value, or ``values``, left
    out), or the geometries of a polygon layer's features as GeoJSON in ``crs`` (the image's); None for no layer,
    and, given the image's extent ``within`` (in ``crs``), when nothing of the layer reaches it."""
    from d3rsmde.raster.exclusion import MaskRaster

    if layer is None:
        return None
    if not isinstance(layer, (QgsRasterLayer, QgsVectorLayer)) or (
            isinstance(layer, QgsVectorLayer) and layer.geometryType() != QgsWkbTypes.PolygonGeometry):
        raise QgsProcessingException(f"Layer '{layer.name()}' holds no polygons: the areas to leave out are "
                                     "polygons or a raster (nonzero where left out).")
    transform = QgsCoordinateTransform(layer.crs(), crs, context.transformContext())
    if isinstance(layer, QgsRasterLayer):
        reaches = within is None or transform.transformBoundingBox(layer.extent()).intersects(within)
        return MaskRaster(layer_file(layer), values) if reaches else None
    if values is not None:
        raise QgsProcessingException(f"Layer '{layer.name()}' holds polygons: values to leave out apply to a raster.")
    geometries = []
    for feature in layer.getFeatures():
        geometry = QgsGeometry(feature.geometry())
        if not geometry.isEmpty():
            geometry.transform(transform)
            if within is None or geometry.intersects(within):
                geometries.append(json.loads(geometry.asJson()))
    return geometries if geometries or within is None else None


def log_summary(feedback, summary: dict) -> None:
    """One line per entry of a backend result: nested metric dicts on one line, numbers to 4 digits, paired
    differences as difference ± standard error; its ``warnings`` as QGIS warnings (highlighted in the log)."""
    def text(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, tuple) and len(value) == 2:  # a paired difference and its standard error
            return f"{value[0]:+.4g}" + ("" if value[1] is None else f" ± {value[1]:.2g}")
        if isinstance(value, dict):
            return ", ".join(f"{k} {text(v)}" for k, v in value.items() if v is not None and not k.endswith("_status"))
        return str(value)

    for key, value in summary.items():
        if key == "warnings":
            for warning in value:
                feedback.pushWarning(warning)
        else:
            feedback.pushInfo(f"{key}: {text(value)}")


def progress_callback(feedback):
    """The backend's progress(fraction, message) reported on a QGIS feedback (0..100)."""
    def progress(fraction: float, message: str = "") -> None:
        feedback.setProgress(100.0 * fraction)
        if message:
            feedback.pushDebugInfo(message)

    return progress
