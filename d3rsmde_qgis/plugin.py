"""Plugin entry points: the Processing provider (all qgis_process calls) and, in the desktop, Raster menu entries."""
from __future__ import annotations

import importlib.util

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QPushButton

from .deps import BACKEND_PACKAGES
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
        """Raster > D3-RSMDE: one entry per algorithm (its usual Processing dialog) and the package installer,
        offered at start when backend packages are missing."""
        self.initProcessing()
        for algorithm in self.provider.algorithms():
            action = QAction(QIcon(str(ICON)), f"{algorithm.displayName()}…", self.iface.mainWindow())
            action.setObjectName(algorithm.id())
            action.triggered.connect(lambda _checked=False, alg_id=algorithm.id(): self.open_dialog(alg_id))
            self.iface.addPluginToRasterMenu(MENU, action)
            self.actions.append(action)
        install = QAction("Install Python packages…", self.iface.mainWindow())
        install.setObjectName("d3rsmde:install")
        install.triggered.connect(self.open_installer)
        self.iface.addPluginToRasterMenu(MENU, install)
        self.actions.append(install)
        if packages_not_found():
            self.offer_installer()

    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
        self.actions.clear()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def offer_installer(self) -> None:
        """A message bar note with a button, not a modal dialog: QGIS's start is not blocked."""
        bar = self.iface.messageBar()
        missing = ", ".join(packages_not_found())
        note = bar.createMessage("D3-RSMDE", f"needs Python packages this QGIS lacks: {missing}")
        button = QPushButton("Install…")
        button.clicked.connect(self.open_installer)
        note.layout().addWidget(button)
        bar.pushWidget(note, Qgis.Warning)

    def open_installer(self) -> None:
        from .installer_dialog import InstallerDialog

        self.dialog = InstallerDialog(self.iface.mainWindow())
        self.dialog.show()

    def open_dialog(self, algorithm_id: str) -> None:
        """The algorithm's dialog, non-modal as from the Toolbox (kept referenced, else Python deletes it)."""
        import processing

        self.dialog = processing.createAlgorithmDialog(algorithm_id)
        self.dialog.show()


def packages_not_found() -> list[str]:
    """Backend packages not even present (found without importing them: importing torch at start-up is slow)."""
    return [name for name in BACKEND_PACKAGES if not is_present(name)]


def is_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-installed package without a spec
        return False
