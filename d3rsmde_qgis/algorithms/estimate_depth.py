"""d3rsmde:estimatedepth - one raster in, one height raster out (same grid, CRS and transform)."""
from __future__ import annotations

from contextlib import ExitStack

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsRectangle,
)

from ..styling import DepthLayerStyler
from .base import D3Algorithm, areas_to_leave_out, log_summary, progress_callback


class EstimateDepth(D3Algorithm):
    NAME = "estimatedepth"
    DISPLAY_NAME = "Estimate depth"
    HELP = (
        "Estimates a height map from a single remote-sensing image with D3-RSMDE: a ViT/DPT coarse model "
        "followed by a few latent refinement steps (PLBR).<br>"
        "<b>Bands</b>: the bands fed to the model as RGB, three or one (a single band is used as grey). Left "
        "empty they are chosen from the layer: red, green and blue by colour interpretation or band "
        "descriptions (Sentinel-2 and Landsat 8/9 B4, B3, B2); otherwise band 1 of a one- or two-band layer, "
        "the first three of any other (with a warning when there are four or more: Landsat 4-7 and 4-band "
        "blue-green-red-NIR images do not start with red). The log names the bands used.<br>"
        "<b>Extent</b>: optional (drawn on the canvas, or a layer's or the canvas's extent, in any CRS); only the "
        "image's pixels within it are processed, and the output covers them alone.<br>"
        "<b>Web maps</b> (XYZ tiles such as a satellite basemap, WMS, WCS, ArcGIS MapServer) and other layers that "
        "are not files: the layer is fetched over the Extent (draw one: a web map covers the world) at the <b>Pixel "
        "size for layers that are not files</b>, in ground metres, and the output has that grid, in the layer's "
        "CRS. File rasters keep their own pixels and ignore it.<br>"
        "<b>Areas to leave out</b>: optional; polygons (clouds, their shadows, water) or a raster that is nonzero "
        "there (a cloud mask; or only the values given under Advanced, e.g. 3,8,9,10 of a Sentinel-2 scene "
        "classification: cloud shadow, cloud, cirrus), in any CRS and resolution. They are nodata like the image's "
        "own: the image is stretched without them and the map has no heights there. Leave out clouds: a cloud left "
        "in makes the rest of the image darker to the model, which moves the whole map, and is drawn high, like "
        "snow.<br>"
        "<b>Refinement steps</b>: the model's default is shown; 0 keeps the coarse map (fastest); empty uses "
        "the number stored with the weights.<br>"
        "<b>Reference DEM</b>: optional (any CRS and resolution, e.g. SRTM or Copernicus DEM; one that is not a file, "
        "such as a WCS, is fetched over the image at the pixel size above); when given, the "
        "output is in metres, follows the reference at the reference's resolution and adds the image's relief "
        "below it. Without it the output is relative height in 0..1 (higher = higher).<br>"
        "The output has the input's grid, CRS and transform (float32 GeoTIFF), with nodata where the input is "
        "nodata or transparent, or in a fill border of 0 (or 255) around an image without a nodata value (a "
        "rotated scene: the log says so), except small holes (at most 64 pixels) where the image equals its "
        "nodata value, such as snow saturated at 255 when nodata is 255: those get heights, and the log counts them. "
        "Large rasters are processed in overlapping tiles; progress and Cancel work per batch of tiles. "
        "The model stays loaded between runs and batch rows that use the same weights and device."
    )

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    HILLSHADE = "HILLSHADE"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input image")))
        self.add_bands_parameter(self.INPUT)
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Extent (empty = the whole image)"), optional=True))
        self.add_pixel_size_parameter()
        self.add_exclude_parameter("clouds, water")
        self.add_model_parameters()
        self.add_reference_parameter()
        self.add_advanced(QgsProcessingParameterBoolean(
            self.HILLSHADE, self.tr("Also add a hillshade layer"), defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Height")))

    def process(self, parameters, context, feedback) -> dict:
        from d3rsmde.raster import predict_raster

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        self.layer_name = self.tr("{} height").format(layer.name())
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        bands = self.band_list(parameters, self.BANDS, context)
        exclude = areas_to_leave_out(self.parameterAsLayer(parameters, self.EXCLUDE, context), layer.crs(), context,
                                     values=self.exclude_values(parameters, context))
        pipeline = self.load_pipeline(parameters, context, feedback)
        with ExitStack() as stack:
            extent = self.extent(parameters, layer, context)
            source = self.image_file(parameters, layer, extent, bands, context, feedback, stack)
            reference_dem = self.elevation_file(parameters, self.REFERENCE_DEM, layer, extent, context, feedback,
                                                stack)
            bounds = None if extent is None else (
                extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
            summary = predict_raster(
                source, output, pipeline, bands=bands, reference_dem=reference_dem, bounds=bounds, exclude=exclude,
                progress=progress_callback(feedback), cancel=feedback.isCanceled,
                **self.model_options(parameters, context))
        log_summary(feedback, summary)
        self.hillshade = self.parameterAsBoolean(parameters, self.HILLSHADE, context)
        self.output = output
        return {self.OUTPUT: output}

    def extent(self, parameters, layer, context) -> QgsRectangle | None:
        """The extent parameter in the layer's CRS; None when it is not set."""
        rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        return None if rect.isNull() else rect

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 - QGIS API
        # Main thread, before QGIS loads the result: name it after the input (QGIS keeps the file's name instead
        # for a file the user named, if "prefer filename as layer name" is on), attach the styler.
        if context.willLoadLayerOnCompletion(self.output):
            details = context.layerToLoadOnCompletionDetails(self.output)
            details.name = self.layer_name
            details.setPostProcessor(DepthLayerStyler(self.hillshade))
        return {self.OUTPUT: self.output}
