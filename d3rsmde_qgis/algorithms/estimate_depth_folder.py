"""d3rsmde:estimatedepthfolder - every matching image of a folder, one model load, per-file errors kept apart."""
from __future__ import annotations

from contextlib import ExitStack
from fnmatch import fnmatch
from pathlib import Path

from qgis.core import (
    QgsProcessingException,
    QgsProcessingMultiStepFeedback,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from .base import D3Algorithm, areas_to_leave_out, progress_callback

DEFAULT_PATTERN = "*.tif;*.tiff;*.jp2;*.png;*.jpg"
OUTPUT_SUFFIX = "_depth.tif"


def matching_files(folder: Path, pattern: str) -> list[Path]:
    """Files directly in `folder` matching any of the ';'-separated glob patterns in any case (Landsat names its
    bands .TIF), sorted."""
    globs = [part.strip().lower() for part in pattern.split(";") if part.strip()]
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and any(fnmatch(path.name.lower(), glob) for glob in globs))


class EstimateDepthFolder(D3Algorithm):
    NAME = "estimatedepthfolder"
    DISPLAY_NAME = "Estimate depth for folder"
    HELP = (
        "Runs <i>Estimate depth</i> on every image of a folder (not its subfolders) whose name matches one of "
        "the ';'-separated patterns (in any case), writing <i>name</i>_depth.tif into the output folder. No file "
        "is ever overwritten: a name already taken gets -2, -3..., images sharing a name get their extension in it "
        "(scene_png_depth.tif), and height rasters written by D3-RSMDE are not taken as images. The model is loaded "
        "once for all files. A file that cannot be processed is reported as an error and skipped; the others "
        "still run. Cancel keeps the files already written. A reference DEM, when given, turns every output into "
        "metres as in <i>Estimate depth</i> (a file it does not cover is reported and skipped); one that is not a "
        "file (a WCS) is fetched over each image at the <b>Pixel size for layers that are not files</b>. Outputs: the "
        "number of files processed and failed, and the list of written rasters. <b>Areas to leave out</b> (a "
        "polygon layer or a mask raster, e.g. lakes or clouds over the whole region) are left out of each file "
        "they reach, as in <i>Estimate depth</i>.<br>"
        "Each file gets its own relative scale (0..1 over that file). For adjacent tiles of one area, build a "
        "virtual raster of them (<i>Raster > Miscellaneous > Build Virtual Raster</i>) and run <i>Estimate "
        "depth</i> on it once: one seamless map on one scale, the same as from a single file."
    )

    INPUT_FOLDER = "INPUT_FOLDER"
    PATTERN = "PATTERN"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"
    OUTPUTS = "OUTPUTS"

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT_FOLDER, self.tr("Input folder"), behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(
            self.PATTERN, self.tr("File name patterns (';'-separated)"), defaultValue=DEFAULT_PATTERN))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Bands used as RGB, e.g. 4,3,2 or 4;3;2 (empty = automatic, per file)"),
            optional=True))
        self.add_exclude_parameter("lakes, clouds")
        self.add_model_parameters()
        self.add_reference_parameter()
        self.add_pixel_size_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputNumber(self.PROCESSED, self.tr("Files processed")))
        self.addOutput(QgsProcessingOutputNumber(self.FAILED, self.tr("Files failed")))
        self.addOutput(QgsProcessingOutputMultipleLayers(self.OUTPUTS, self.tr("Depth rasters")))

    def process(self, parameters, context, feedback) -> dict:
        from d3rsmde.errors import Cancelled, D3Error
        from d3rsmde.files import folder_outputs
        from d3rsmde.raster import is_height_output, predict_raster

        folder = Path(self.parameterAsFile(parameters, self.INPUT_FOLDER, context))
        if not folder.is_dir():
            raise QgsProcessingException(f"Input folder not found: {folder}")
        pattern = self.parameterAsString(parameters, self.PATTERN, context)
        images = matching_files(folder, pattern)
        previous = [image for image in images if is_height_output(image)]
        for image in previous:
            feedback.pushInfo(f"{image.name}: a D3-RSMDE height raster, not an image; skipped")
        images = [image for image in images if image not in previous]
        if not images:
            raise QgsProcessingException(f"No file in {folder} matches '{pattern}'.")
        out_folder = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        out_folder.mkdir(parents=True, exist_ok=True)
        bands = self.band_list(parameters, self.BANDS, context)
        options = self.model_options(parameters, context)
        left_out = self.parameterAsLayer(parameters, self.EXCLUDE, context)
        values = self.exclude_values(parameters, context)
        pipeline = self.load_pipeline(parameters, context, feedback)

        steps = QgsProcessingMultiStepFeedback(len(images), feedback)
        outputs, failed = [], 0
        for step, (image, output) in enumerate(zip(images, folder_outputs(images, out_folder, OUTPUT_SUFFIX))):
            steps.setCurrentStep(step)
            feedback.pushInfo(f"[{step + 1}/{len(images)}] {image.name} -> {output.name}")
            try:
                placed = QgsRasterLayer(str(image), image.name, "gdal")
                exclude = areas_to_leave_out(left_out, placed.crs(), context, placed.extent(), values) \
                    if left_out is not None and placed.isValid() else None
                with ExitStack() as stack:
                    reference = self.elevation_file(parameters, self.REFERENCE_DEM, placed, None, context, feedback,
                                                    stack) if placed.isValid() else None
                    summary = predict_raster(str(image), str(output), pipeline, bands=bands, reference_dem=reference,
                                             exclude=exclude, progress=progress_callback(steps),
                                             cancel=feedback.isCanceled, overwrite=False, **options)
            except Cancelled:  # keep what is done; predict_raster leaves nothing of the current file
                feedback.reportError(f"Cancelled: {image.name} and the files after it were not processed.")
                break
            except (D3Error, OSError, ValueError) as exc:  # unreadable or unsuitable file: report, go on
                failed += 1
                feedback.reportError(f"{image.name}: {exc}", fatalError=False)
                continue
            for warning in summary["warnings"]:
                feedback.pushWarning(warning)  # it names the file
            outputs.append(str(output))
        feedback.pushInfo(f"{len(outputs)} processed, {failed} failed.")
        return {self.OUTPUT_FOLDER: str(out_folder), self.PROCESSED: len(outputs), self.FAILED: failed,
                self.OUTPUTS: outputs}
