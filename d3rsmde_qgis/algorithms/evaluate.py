"""d3rsmde:evaluate - the paper's metrics of a height raster against a reference, as outputs and an HTML table."""
from __future__ import annotations

import html
from pathlib import Path

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import D3Algorithm, log_summary

# Output names are part of the plugin's API (models and scripts read them), so they are fixed here rather
# than taken from the backend, which is not importable when the provider loads without torch.
PER_TILE = ("mae", "rmse", "delta1", "delta2", "delta3", "psnr", "ssim", "lpips")
WHOLE = ("mae", "rmse", "bias", "rmse_after_affine")
SCENE = ("mae", "ssim", "lpips", "grad_r")  # d3rsmde.evaluation.SCENE_FIGURES


def scene_outputs(metrics: dict) -> dict:
    """SCENE_<FIGURE> and its _SE, VERSUS_<FIGURE>_DIFF and its _SE: None where not computed or not computable."""
    scene, error = metrics.get("scene", {}), metrics.get("scene_standard_error", {})
    diff = metrics.get("scene_minus_versus", {})
    out = {}
    for key in SCENE:
        name = key.upper()
        out[f"SCENE_{name}"], out[f"SCENE_{name}_SE"] = scene.get(key), error.get(key)
        out[f"VERSUS_{name}_DIFF"], out[f"VERSUS_{name}_DIFF_SE"] = diff.get(key) or (None, None)
    return out


def metrics_html(metrics: dict, prediction: str, reference: str, versus: str | None = None) -> str:
    """A small self-contained HTML page: the paper's per-tile metrics, whole-raster errors in units, then (when
    computed) the whole-scene figures with their standard errors and the paired difference from ``versus``."""
    from d3rsmde.metrics import COLUMNS

    per_tile, whole = metrics["per_tile"], metrics["whole"]
    units = whole.get("units") or "raster units"
    rows = [(f"<b>Per {metrics['tile']} px tile, mean of {metrics['tiles']} tiles</b> "
             "(each map stretched to 0..255)", "")]
    rows += [(title, "n/a" if per_tile.get(key) is None else fmt.format(per_tile[key])) for key, title, fmt in COLUMNS]
    rows += [(f"<b>Whole raster, {whole['pixels']} pixels</b> ({html.escape(units)})", "")]
    rows += [(key.replace("_", " "), "n/a (relative prediction)" if whole[key] is None else f"{whole[key]:.4g}")
             for key in WHOLE]
    if "scene" in metrics:
        titles = {key: title for key, title, _ in COLUMNS}
        outputs = scene_outputs(metrics)

        def plus_minus(value, error, sign=""):
            if value is None:
                return "n/a"
            return f"{value:{sign}.4g}" + ("" if error is None else f" &plusmn; {error:.2g}")

        rows += [(f"<b>Whole scene, {metrics['scene']['pixels']} reference pixels</b> (the prediction averaged onto "
                  "the reference's grid, both stretched to 0..255 as one image; &plusmn; standard error, each of "
                  "3 x 3 blocks left out in turn)", "")]
        rows += [(titles[key], plus_minus(outputs[f"SCENE_{key.upper()}"], outputs[f"SCENE_{key.upper()}_SE"]))
                 for key in SCENE]
        if versus is not None:
            rows += [(f"<b>Minus {html.escape(Path(versus).name)}</b> (paired: same pixels, same blocks left "
                      "out; a difference within about one standard error is noise)", "")]
            rows += [(titles[key], plus_minus(outputs[f"VERSUS_{key.upper()}_DIFF"],
                                              outputs[f"VERSUS_{key.upper()}_DIFF_SE"], "+")) for key in SCENE]
    cells = "\n".join(f"<tr><th align=\"left\">{name}</th><td>{value}</td></tr>" for name, value in rows)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>D3-RSMDE evaluation</title></head><body>\n"
        f"<h3>D3-RSMDE evaluation</h3>\n<p>Prediction: {html.escape(prediction)}<br>"
        f"Reference: {html.escape(reference)}"
        f"{'' if versus is None else '<br>Compared with: ' + html.escape(versus)}</p>\n"
        f"<table border=\"1\" cellspacing=\"0\" cellpadding=\"4\">\n{cells}\n</table>\n</body></html>\n"
    )


class EvaluateDepth(D3Algorithm):
    NAME = "evaluate"
    DISPLAY_NAME = "Evaluate depth against reference"
    HELP = (
        "Compares a height raster with a reference DEM (any CRS and resolution; it is warped onto the "
        "prediction's grid, nodata ignored).<br>"
        "<b>Per tile</b>, as in the D3-RSMDE paper: in each tile both maps are min-max stretched to 0..255, then "
        "MAE and RMSE (lower is better), delta1..3, PSNR and SSIM (higher is better) and LPIPS (lower is better; "
        "empty when the AlexNet weights are not on this machine), averaged over tiles.<br>"
        "<b>Whole raster</b>, in the rasters' units: MAE, RMSE, bias and the RMSE left after the best global "
        "scale and shift (the one to read for relative-height predictions).<br>"
        "<b>Whole scene</b> (optional), as the model card scores scenes: the prediction averaged onto the "
        "reference's grid, both stretched to 0..255 as one image, then MAE, SSIM, LPIPS and the correlation of "
        "slopes (gradient r), each with its standard error (the scene scored again with each of 3 x 3 blocks left "
        "out). Both rasters need a CRS; the whole reference is read at once.<br>"
        "<b>Compare with</b> another prediction of the same scene (e.g. other weights or refinement steps): the "
        "paired difference of each whole-scene figure and its standard error. A difference smaller than about "
        "one standard error does not tell the two maps apart.<br>"
        "The metrics are returned as outputs and written as an HTML table."
    )

    PREDICTION = "PREDICTION"
    REFERENCE = "REFERENCE"
    WHOLE_SCENE = "WHOLE_SCENE"
    VERSUS = "VERSUS"
    OUTPUT_HTML = "OUTPUT_HTML"

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, self.tr("Predicted height")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference DEM")))
        self.addParameter(QgsProcessingParameterBoolean(
            self.WHOLE_SCENE, self.tr("Whole-scene figures with standard errors"), defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.VERSUS, self.tr("Compare with another prediction (whole scene, paired)"), optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Metrics table"), fileFilter=self.tr("HTML files (*.html)")))
        for key in PER_TILE:
            self.addOutput(QgsProcessingOutputNumber(key.upper(), self.tr(f"{key} (per tile)")))
        for key in WHOLE:
            self.addOutput(QgsProcessingOutputNumber(f"WHOLE_{key.upper()}", self.tr(f"{key} (whole raster)")))
        for name in scene_outputs({}):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(name.lower().replace("_", " "))))

    def process(self, parameters, context, feedback) -> dict:
        from d3rsmde.evaluation import evaluate_rasters, scene_report
        from d3rsmde.files import atomic_write_text
        from d3rsmde.raster import spare_inputs

        prediction = self.raster_path(parameters, self.PREDICTION, context)
        reference = self.raster_path(parameters, self.REFERENCE, context)
        versus = self.raster_path(parameters, self.VERSUS, context)
        html_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context))
        spare_inputs(html_path, [("prediction", prediction), ("reference", reference), ("other prediction", versus)])
        metrics = evaluate_rasters(prediction, reference)
        if versus is not None or self.parameterAsBoolean(parameters, self.WHOLE_SCENE, context):
            metrics.update(scene_report(prediction, reference, versus))
        html_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(html_path, metrics_html(metrics, prediction, reference, versus))
        log_summary(feedback, metrics)
        return {
            self.OUTPUT_HTML: str(html_path),
            **{key.upper(): metrics["per_tile"].get(key) for key in PER_TILE},
            **{f"WHOLE_{key.upper()}": metrics["whole"][key] for key in WHOLE},
            **scene_outputs(metrics),
        }
