#!/usr/bin/env bash
# Start QGIS desktop so that its Python is the project's venv (torch, timm, diffusers, d3rsmde): QGIS's
# embedded Python takes the first python3 on PATH, so the venv's bin goes first. Arguments go to qgis.
# Install the plugin from dist/d3rsmde_qgis.zip (`make package`), or, to use the source tree directly:
#   QGIS_PLUGINPATH="$PWD" scripts/run_qgis.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "No .venv in $root: run 'make setup' there first." >&2
  exit 1
fi
export PATH="$root/.venv/bin:$PATH"
exec qgis "$@"
