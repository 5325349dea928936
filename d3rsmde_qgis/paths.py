"""Where the plugin's own files live: one layout in the source tree (via symlinks) and in the zip."""
from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
BUNDLED_LIBS = PLUGIN_DIR / "libs"
RESOURCES = PLUGIN_DIR / "resources"
ICON = RESOURCES / "icons" / "d3rsmde.svg"
DEPTH_STYLE = RESOURCES / "styles" / "depth-terrain.qml"
BUNDLED_WEIGHTS = RESOURCES / "weights" / "d3rsmde-small.safetensors"
