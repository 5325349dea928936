"""How a depth result looks when it lands in a project: terrain colours over its own value range, and an
optional hillshade on top (multiply blend) so relief reads at a glance."""
from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsHillshadeRenderer,
    QgsRasterDataProvider,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterBandStats,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QPainter

from .paths import DEPTH_STYLE

# Vertical exaggeration for the hillshade: the value range spans this share of the layer width, so both
# relative heights (0..1) and metres in a degree CRS give visible, not saturated, relief.
RELIEF_SHARE_OF_WIDTH = 0.05


def value_range(layer: QgsRasterLayer) -> tuple[float, float]:
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    return stats.minimumValue, stats.maximumValue


def apply_depth_style(layer: QgsRasterLayer) -> None:
    """Load the terrain style and stretch its colour ramp to the layer's min..max (relative or metres)."""
    message, ok = layer.loadNamedStyle(str(DEPTH_STYLE))
    if not ok:
        raise RuntimeError(f"Cannot load style {DEPTH_STYLE}: {message}")
    renderer = layer.renderer()
    ramp = renderer.shader().rasterShaderFunction().sourceColorRamp()
    low, high = value_range(layer)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    renderer.createShader(ramp.clone())  # continuous: one colour stop per gradient stop
    layer.triggerRepaint()


def hillshade_layer(layer: QgsRasterLayer) -> QgsRasterLayer:
    """A second view of the same file, shaded, meant to sit above the coloured layer.

    The file is resampled by the provider (bilinear zoomed in, average zoomed out) before it is shaded: QGIS shades
    the block it reads at the screen's resolution, and at any zoom but 1:1 nearest-neighbour reading repeats rows
    and columns, which the shading draws as a grid of stripes over the whole map."""
    shade = QgsRasterLayer(layer.source(), f"{layer.name()} hillshade", layer.providerType())
    shade.setResamplingStage(Qgis.RasterResamplingStage.Provider)
    shade.dataProvider().setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
    shade.dataProvider().setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Average)
    renderer = QgsHillshadeRenderer(shade.dataProvider(), 1, 315.0, 45.0)
    low, high = value_range(layer)
    if high > low:
        renderer.setZFactor(RELIEF_SHARE_OF_WIDTH * layer.extent().width() / (high - low))
    shade.setRenderer(renderer)
    shade.setBlendMode(QPainter.CompositionMode_Multiply)
    return shade


class DepthLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Runs on the main thread once QGIS has added the result layer to the project."""

    # QGIS takes ownership of the C++ side; keep the Python side alive until it has run.
    pending: set[DepthLayerStyler] = set()

    def __init__(self, hillshade: bool):
        super().__init__()
        self.hillshade = hillshade
        DepthLayerStyler.pending.add(self)

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        DepthLayerStyler.pending.discard(self)
        apply_depth_style(layer)
        if self.hillshade:
            project = layer.project() or context.project()
            project.addMapLayer(hillshade_layer(layer))
