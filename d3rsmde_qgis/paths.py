"""Where the plugin's own files live: one layout in the source tree (via symlinks) and in the zip."""
from __future__ import annotations

import configparser
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
BUNDLED_LIBS = PLUGIN_DIR / "libs"
RESOURCES = PLUGIN_DIR / "resources"
ICON = RESOURCES / "icons" / "d3rsmde.png"  # rendered from the SVG; the plugin site asks for PNG
SVG_ICON = RESOURCES / "icons" / "d3rsmde.svg"
DEPTH_STYLE = RESOURCES / "styles" / "depth-terrain.qml"
# The plugin must load without the backend (to offer the installer), so the name is repeated here;
# tests/test_packaging.py checks it equals d3rsmde.weights.DEFAULT_NAME.
BUNDLED_WEIGHTS = RESOURCES / "weights" / "d3rsmde-lean.safetensors"


def metadata(key: str) -> str:
    """A value of metadata.txt's [general] section (one source for the homepage the help links to)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PLUGIN_DIR / "metadata.txt", encoding="utf-8")
    return parser["general"][key]


HELP_URL = metadata("homepage")
