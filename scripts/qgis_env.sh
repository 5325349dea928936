# Source me (bash): environment for headless `qgis_process.bin` on the in-repo D3-RSMDE plugin.
#   source scripts/qgis_env.sh && qgis_process.bin run d3rsmde:estimatedepth -- INPUT=... OUTPUT=...
# Isolated profile (QGIS_CUSTOM_CONFIG_PATH, default build/qgis-profile) with the plugin enabled, no display,
# and the project's .venv/bin first on PATH so QGIS's embedded Python imports torch & co. from the venv.
# Variables already set by the caller are kept.
_d3_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_d3_root/.venv/bin:$PATH"
export QGIS_PLUGINPATH="$_d3_root${QGIS_PLUGINPATH:+:$QGIS_PLUGINPATH}"
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export QGIS_CUSTOM_CONFIG_PATH="${QGIS_CUSTOM_CONFIG_PATH:-$_d3_root/build/qgis-profile}"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$QGIS_CUSTOM_CONFIG_PATH/xdg-runtime"
  mkdir -p -m 700 "$XDG_RUNTIME_DIR"
fi
# qgis_process only loads plugins enabled in the profile; enabling writes the profile's QGIS3.ini once.
if ! grep -qs '^d3rsmde_qgis=true' "$QGIS_CUSTOM_CONFIG_PATH/profiles/default/QGIS/QGIS3.ini"; then
  qgis_process.bin plugins enable d3rsmde_qgis >/dev/null
fi
unset _d3_root
