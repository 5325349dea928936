"""d3rsmde:finetune - adapt a checkpoint to one region from its image and a DEM; writes a new weights file."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from qgis.core import (
    QgsCoordinateTransform,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .base import D3Algorithm, areas_to_leave_out, log_summary, progress_callback
from .fetch import is_file_layer


class FinetuneRegion(D3Algorithm):
    NAME = "finetune"
    DISPLAY_NAME = "Fine-tune model on region"
    HELP = (
        "Fine-tunes D3-RSMDE weights on one region: the image and a DEM covering it (any CRS and resolution; "
        "the DEM is resampled to the image grid) are cut into tiles, and the model is trained for the given "
        "number of epochs starting from the base weights: its coarse model, and its refiner only when <i>Refiner "
        "epochs</i> (advanced) is above 0 (tuned on one region's few tiles, the refiner made the rest of the region "
        "worse more often than better). The log compares held-out tiles before and after: a change within about "
        "one standard error is not evidence that it helped. Use the resulting .safetensors file as "
        "<i>Model weights</i> in <i>Estimate depth</i>, with the same <b>Bands</b> (left empty, they are chosen as "
        "<i>Estimate depth</i> chooses them; the log names them). <b>Extent</b> limits training to part of the "
        "image (e.g. to keep an area for evaluation). An <b>Image</b> that is not a file (a web map such as a "
        "satellite basemap) is fetched over the Extent, or the DEM's, at the <b>Pixel size for layers that are not "
        "files</b>: use the same pixel size in <i>Estimate depth</i>; a DEM that is not a file (a WCS) is fetched "
        "over the image's area the same way. <b>Areas to leave out</b> (polygons or a "
        "raster nonzero there, any CRS) keeps clouds and their shadows out of training, as in <i>Estimate "
        "depth</i>. Training on a CPU is slow: start with few epochs. Cancel stops after the current step and "
        "writes nothing. Choose a file for <b>Fine-tuned weights</b>: left as a temporary file, they are deleted "
        "when QGIS closes (the log warns)."
    )

    IMAGE = "IMAGE"
    DEM = "DEM"
    EXTENT = "EXTENT"
    EPOCHS = "EPOCHS"
    REFINER_EPOCHS = "REFINER_EPOCHS"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        from d3rsmde.defaults import FINETUNE_EPOCHS, FINETUNE_REFINER_EPOCHS  # torch-free, as base.py's config

        self.addParameter(QgsProcessingParameterRasterLayer(self.IMAGE, self.tr("Image")))
        self.add_bands_parameter(self.IMAGE)
        self.addParameter(QgsProcessingParameterRasterLayer(self.DEM, self.tr("DEM (heights in metres)")))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Training extent"), optional=True))
        self.add_pixel_size_parameter()
        self.add_exclude_parameter("clouds")
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, self.tr("Epochs"), type=QgsProcessingParameterNumber.Integer, minValue=1,
            defaultValue=FINETUNE_EPOCHS))
        self.add_weights_parameter("Base weights (.safetensors; empty = bundled default)")
        self.add_advanced(QgsProcessingParameterNumber(
            self.REFINER_EPOCHS, self.tr("Refiner epochs (0 = keep the refiner)"),
            type=QgsProcessingParameterNumber.Integer, minValue=0, defaultValue=FINETUNE_REFINER_EPOCHS))
        self.add_advanced(QgsProcessingParameterNumber(
            self.TILE, self.tr("Tile size in pixels (empty = from the weights, or half or a quarter of it if the "
                               "region is too small)"),
            type=QgsProcessingParameterNumber.Integer, minValue=16, optional=True))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Fine-tuned weights"), fileFilter=self.tr("Safetensors weights (*.safetensors)")))

    def process(self, parameters, context, feedback) -> dict:
        from d3rsmde.train.finetune import finetune_region

        image_layer = self.parameterAsRasterLayer(parameters, self.IMAGE, context)
        dem_layer = self.parameterAsRasterLayer(parameters, self.DEM, context)
        box = self.parameterAsExtent(parameters, self.EXTENT, context, image_layer.crs())
        extent = None if box.isNull() else (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())
        if box.isNull():  # a layer that is not a file is fetched over the image file, or else where the DEM is
            box = image_layer.extent() if is_file_layer(image_layer) else QgsCoordinateTransform(
                dem_layer.crs(), image_layer.crs(), context.transformContext()).transformBoundingBox(dem_layer.extent())
        bands = self.band_list(parameters, self.BANDS, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        with ExitStack() as stack:
            summary = finetune_region(
                self.image_file(parameters, image_layer, box, bands, context, feedback, stack),
                self.elevation_file(parameters, self.DEM, image_layer, box, context, feedback, stack),
                str(self.weights(parameters, context)), output,
                bands=bands, extent=extent,
                exclude=areas_to_leave_out(self.parameterAsLayer(parameters, self.EXCLUDE, context),
                                           image_layer.crs(), context, values=self.exclude_values(parameters, context)),
                epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                refiner_epochs=self.parameterAsInt(parameters, self.REFINER_EPOCHS, context),
                tile=self.optional_int(parameters, self.TILE, context), device=self.device(parameters, context),
                progress=progress_callback(feedback), cancel=feedback.isCanceled)
        log_summary(feedback, summary)
        if Path(output).resolve().is_relative_to(Path(QgsProcessingUtils.tempFolder()).resolve()):
            feedback.pushWarning(
                f"The fine-tuned weights were saved in QGIS's temporary folder ({output}), which QGIS deletes when it "
                "closes: copy them elsewhere, or choose a file for Fine-tuned weights.")
        return {self.OUTPUT: output}
