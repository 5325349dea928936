"""The "d3rsmde" Processing provider: makes the algorithms available in the Toolbox, batch, modeler and qgis_process."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .paths import ICON, SVG_ICON


class D3RsmdeProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "d3rsmde"

    def name(self) -> str:
        return "D3-RSMDE"

    def longName(self) -> str:  # noqa: N802 - QGIS API
        return "D3-RSMDE height estimation from a single remote-sensing image"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def svgIconPath(self) -> str:  # noqa: N802 - QGIS API
        return str(SVG_ICON)

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802 - QGIS API
        return ["tif"]  # the backend writes GeoTIFF only

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
