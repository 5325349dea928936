"""D3-RSMDE QGIS plugin: a Processing provider over the `d3rsmde` backend (loaded lazily)."""
from .deps import add_bundled_libs, keep_triton_out

keep_triton_out()  # before anything in QGIS's process can import torch through this plugin
add_bundled_libs()


def classFactory(iface):  # noqa: N802 - name fixed by QGIS
    from .plugin import D3RsmdePlugin

    return D3RsmdePlugin(iface)
