"""Plugin entry points. Only the Processing provider: qgis_process calls initProcessing() and nothing else."""
from __future__ import annotations

from qgis.core import QgsApplication

from .provider import D3RsmdeProvider


class D3RsmdePlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider: D3RsmdeProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        # initGui() calls this again in the desktop; a second provider with the same id would be rejected.
        if self.provider is None:
            self.provider = D3RsmdeProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
