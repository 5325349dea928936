"""Where the shipped weights live, in the repository and inside the plugin zip alike."""

from __future__ import annotations

import os
from pathlib import Path

import d3rsmde

from .errors import CheckpointError

ENV_VAR = "D3RSMDE_WEIGHTS"
DEFAULT_NAME = "d3rsmde-lean.safetensors"  # the one place the shipped file is named


def default_weights_path() -> Path:
    """``$D3RSMDE_WEIGHTS`` if set, else ``resources/weights/<DEFAULT_NAME>`` two levels above the
    package (``backend/d3rsmde`` in the repository, ``d3rsmde_qgis/libs/d3rsmde`` in the plugin)."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
    else:
        path = Path(d3rsmde.__file__).resolve().parents[2] / "resources" / "weights" / DEFAULT_NAME
    if not path.is_file():
        source = f"${ENV_VAR}" if env else "the default location"
        raise CheckpointError(
            f"no weights at {path} ({source}). Train or download d3rsmde weights and put them there, set "
            f"{ENV_VAR} to the file, or pass the weights path explicitly."
        )
    return path
