"""Install the backend's missing Python packages from inside QGIS, into a folder the plugin owns in the QGIS profile.

No root and QGIS's own site-packages untouched: pip runs with ``--target <profile>/python/d3rsmde-packages/pyXY``,
a folder the plugin puts on sys.path when it loads (deleting it undoes the install). torch comes as the CPU build
where ``nvidia-smi`` finds no NVIDIA driver (a few hundred MB instead of several GB of CUDA libraries), else as
PyPI's CUDA build. No Qt here: the dialog (installer_dialog.py) and the tests drive the same functions.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

from .deps import BACKEND_PACKAGES

FOLDER = "d3rsmde-packages"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_BUILDS = ("torch", "torchvision")
NEED_NUMPY = ("torchvision", "diffusers", "rasterio")  # install numpy as a dependency


def target_dir(profile: str | Path) -> Path:
    """Where the packages go for this QGIS profile and this Python minor version (wheels are per version)."""
    return Path(profile) / "python" / FOLDER / f"py{sys.version_info.major}{sys.version_info.minor}"


def add_to_path(profile: str | Path) -> None:
    """Put an earlier install first on sys.path, so its packages win over older ones elsewhere."""
    folder = str(target_dir(profile))
    if profile and Path(folder).is_dir():
        if folder not in sys.path:
            sys.path.insert(0, folder)
        importlib.invalidate_caches()  # packages pip has just added to a folder already on sys.path


def python_executable() -> str:
    """The interpreter QGIS embeds, for `python -m pip` (sys.executable is QGIS itself on some platforms)."""
    candidates = [Path(sys.executable), Path(sys.prefix) / "bin" / "python3", Path(sys.prefix) / "python.exe",
                  Path(sys.prefix) / "python3.exe"]
    for candidate in candidates:
        if candidate.name.lower().startswith("python") and candidate.is_file():
            return str(candidate)
    found = shutil.which("python3") or shutil.which("python")
    if not found:
        raise FileNotFoundError(f"no Python interpreter found next to QGIS's Python ({sys.prefix})")
    return found


def has_nvidia_driver() -> bool:
    """True when `nvidia-smi` runs and reports a driver: then the CUDA build of torch is worth its size."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def running_numpy() -> str | None:
    """The version of the numpy this Python imports (None without one)."""
    try:
        return importlib.import_module("numpy").__version__
    except Exception:  # noqa: BLE001 - absent or broken: nothing to hold
        return None


def pip_command(missing: list[str], profile: str | Path, cuda: bool) -> list[str]:
    """`python -m pip install` of the pinned packages for these missing import names into the plugin's folder.
    timm needs torchvision, so torch brings torchvision along (same build).

    pip ignores what is installed when it installs into a --target folder, so a package that depends on numpy
    would bring the newest numpy there, ahead of QGIS's own on sys.path, and QGIS's GDAL and rasterio are built
    for that one (a numpy 2 beside QGIS 3.22's numpy 1.24 breaks them). So the numpy QGIS has is held: the same
    version is pinned whenever such a package is installed (numpy 1 on QGIS 3.22, numpy 2 on 3.40)."""
    names = [name for name in BACKEND_PACKAGES if name in missing or (name == "torchvision" and "torch" in missing)]
    command = [python_executable(), "-m", "pip", "install", "--target", str(target_dir(profile)), "--upgrade",
               "--no-warn-script-location", "--disable-pip-version-check", "--progress-bar", "off"]
    if not cuda and any(name in TORCH_BUILDS for name in names):
        command += ["--extra-index-url", CPU_TORCH_INDEX]
    specs = [BACKEND_PACKAGES[name] for name in names]
    numpy_now = running_numpy()
    if "numpy" not in names and numpy_now and any(name in NEED_NUMPY for name in names):
        specs.append(f"numpy=={numpy_now}")
    return command + specs


def failure_hint(log: str) -> str:
    """One line on the likely cause of a failed pip run, from its output."""
    text = log.lower()
    if "no module named pip" in text:
        return "QGIS's Python has no pip: install it (Debian/Ubuntu: sudo apt install python3-pip) and try again."
    if "no space left" in text or "errno 28" in text:
        return "The disk is full: free space in the QGIS profile folder and try again."
    if "proxy" in text or "407" in text:
        return "A proxy refused the connection: set HTTPS_PROXY for QGIS (or pip's proxy setting) and try again."
    if any(word in text for word in ("connection", "network", "name resolution", "timed out")):
        return ("pip could not download the packages: check the network connection (and a proxy, if you use "
                "one), then try again.")
    if "no matching distribution" in text:
        return ("pip found no build of a pinned package for this Python and system (or could not reach the "
                "package index).")
    return "pip failed; its output is above."
