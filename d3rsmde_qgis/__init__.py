"""D3-RSMDE QGIS plugin: a Processing provider over the `d3rsmde` backend (loaded lazily)."""
from qgis.core import QgsApplication

from .deps import add_bundled_libs, keep_triton_out
from .installer import add_to_path

keep_triton_out()  # before anything in QGIS's process can import torch through this plugin
add_to_path(QgsApplication.qgisSettingsDirPath())  # packages the plugin's installer put in the profile
add_bundled_libs()


def classFactory(iface):  # noqa: N802 - name fixed by QGIS
    from .plugin import D3RsmdePlugin

    return D3RsmdePlugin(iface)
