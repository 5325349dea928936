"""Plugin entry points: the Processing provider (all qgis_process calls) and, in the desktop, Raster menu entries."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .paths import ICON
from .provider import D3RsmdeProvider

MENU = "&D3-RSMDE"


class D3RsmdePlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider: D3RsmdeProvider | None = None
        self.actions: list[QAction] = []
        self.dialog = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        # initGui() calls this again in the desktop; a second provider with the same id would be rejected.
        if self.provider is None:
            self.provider = D3RsmdeProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        """Raster > D3-RSMDE > one entry per algorithm, opening its usual Processing dialog."""
        self.initProcessing()
        for algorithm in self.provider.algorithms():
            action = QAction(QIcon(str(ICON)), f"{algorithm.displayName()}…", self.iface.mainWindow())
            action.setObjectName(algorithm.id())
            action.triggered.connect(lambda _checked=False, alg_id=algorithm.id(): self.open_dialog(alg_id))
            self.iface.addPluginToRasterMenu(MENU, action)
            self.actions.append(action)

    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
        self.actions.clear()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def open_dialog(self, algorithm_id: str) -> None:
        """The algorithm's dialog, non-modal as from the Toolbox (kept referenced, else Python deletes it)."""
        import processing

        self.dialog = processing.createAlgorithmDialog(algorithm_id)
        self.dialog.show()
