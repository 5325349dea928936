"""Find out, without crashing QGIS, whether the Python backend can run here, and say how to fix it.

Nothing here imports torch at module import: the provider must load (and list its algorithms) in a QGIS
whose Python lacks the heavy packages; only running an algorithm needs them.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from .paths import BUNDLED_LIBS

# import name -> what pip installs, pinned as in requirements.txt (tests/test_installer.py keeps them equal);
# numpy 2 breaks the GDAL bindings QGIS ships; timm needs torchvision of torch's own release.
BACKEND_PACKAGES = {
    "numpy": "numpy<2",
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "timm": "timm==1.0.31",
    "diffusers": "diffusers==0.42.1",
    "safetensors": "safetensors>=0.4",
    "rasterio": "rasterio",
    "scipy": "scipy",  # the engine's tile alignment (sparse least squares) and masks
}


def keep_triton_out() -> None:
    """Make `import triton` fail, and `importlib.util.find_spec("triton")` return None, in QGIS's process.

    torch's CUDA builds ship triton, and importing torchvision pulls it in (torch._dynamo). triton's
    libtriton.so carries its own LLVM, which crashes (SIGSEGV in a static initialiser) a process that has
    already loaded Mesa's libLLVM, as desktop QGIS has for its OpenGL on every Mesa driver. Inference never
    needs triton (it only compiles GPU kernels for torch.compile), and torch treats a module that cannot be
    imported as "no triton". A None entry in sys.modules is the one block that both `import` (ImportError)
    and `find_spec` (None, torch's own probe) honour; setdefault keeps a triton already loaded by someone else.
    """
    sys.modules.setdefault("triton", None)


def add_bundled_libs() -> None:
    """Make the copy of `d3rsmde` shipped in the plugin zip importable when no installed one is."""
    if importlib.util.find_spec("d3rsmde") is None and BUNDLED_LIBS.is_dir():
        sys.path.insert(0, str(BUNDLED_LIBS))


def missing_packages() -> dict[str, str]:
    """Top-level modules this Python cannot import, mapped to the error. A package that fails only because
    one of its own dependencies is missing (timm without torch) is reported as that dependency."""
    missing = {}
    for name in (*BACKEND_PACKAGES, "d3rsmde"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing.setdefault((exc.name or name).split(".")[0], str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken wheel raises OSError/RuntimeError, not ImportError
            missing[name] = f"{type(exc).__name__}: {exc}"
    return missing


def install_message(missing: dict[str, str]) -> str:
    """What is missing and the exact commands that install it into the Python QGIS runs."""
    pip_names = " ".join(f'"{BACKEND_PACKAGES.get(name, name)}"' for name in missing if name != "d3rsmde")
    lines = [
        f"D3-RSMDE cannot run: the Python inside QGIS (Python {sys.version.split()[0]}, prefix {sys.prefix}) "
        "cannot import:",
        *(f"  - {name} ({error})" for name, error in missing.items()),
        "Install into the Python that QGIS uses, then restart QGIS:",
        "  Any system: Raster > D3-RSMDE > Install Python packages… installs them into your QGIS profile "
        "(no administrator rights needed).",
    ]
    if pip_names:
        lines += [
            "  Debian/Ubuntu: in the D3-RSMDE source folder run `make setup`, then start QGIS with "
            "`scripts/run_qgis.sh` (it puts the project's .venv/bin first on PATH, so QGIS's Python uses the "
            f"venv); or add them to that venv: `.venv/bin/python -m pip install {pip_names}`.",
            "  Windows (OSGeo4W / QGIS standalone installer): open the OSGeo4W Shell as administrator and run "
            f"`python -m pip install {pip_names}`.",
        ]
    if "d3rsmde" in missing:
        lines.append("  d3rsmde itself: reinstall the plugin from its zip (it bundles d3rsmde under libs/), "
                     "or run `python -m pip install -e .` in the D3-RSMDE source folder.")
    lines.append("Details: docs/INSTALL-QGIS.md in the D3-RSMDE sources.")
    return "\n".join(lines)


def backend_problem() -> str | None:
    """None when the backend imports, else the message to show the user."""
    add_bundled_libs()
    missing = missing_packages()
    return install_message(missing) if missing else None
