"""Desktop QGIS (xcb under Xvfb, not offscreen), where Qt has loaded Mesa's GL driver and with it libLLVM-15.

This is the configuration in which a torch build that ships triton killed QGIS (signal 11) on the first run of
*Estimate depth*: triton's own LLVM clashes with Mesa's. The offscreen tests never load Mesa, so only this test
can see it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.qgis

CPU = 1  # DEVICE enum index

# Runs inside QGIS desktop (`qgis --code`), after the plugins are loaded: run the algorithm as the Toolbox does,
# with the result loaded into the project, then quit QGIS. PARAMETERS and REPORT are prepended.
STARTUP_SCRIPT = """
import json
import sys
import processing
from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer

def mapped_libraries():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "/" in line})

report = {"llvm_before_run": [lib for lib in mapped_libraries() if "libLLVM" in lib]}
processing.runAndLoadResults("d3rsmde:estimatedepth", PARAMETERS)
report["layers"] = [(layer.name(), layer.source()) for layer in QgsProject.instance().mapLayers().values()]
report["triton_loaded"] = sys.modules.get("triton") is not None
report["llvm_after_run"] = [lib for lib in mapped_libraries() if "LLVM" in lib or "libtriton" in lib]

from qgis.utils import iface, plugins
menu = next(action.menu() for action in iface.rasterMenu().actions() if action.text() == "&D3-RSMDE")
report["raster_menu"] = {action.objectName(): action.text() for action in menu.actions()}
next(action for action in menu.actions() if action.objectName() == "d3rsmde:estimatedepth").trigger()
dialog = plugins["d3rsmde_qgis"].dialog
report["menu_opens"] = dialog.isVisible() and dialog.algorithm().id()
dialog.close()
next(action for action in menu.actions() if action.objectName() == "d3rsmde:install").trigger()
installer = plugins["d3rsmde_qgis"].dialog
report["installer_says"] = installer.isVisible() and installer.status.text()
installer.close()
with open(REPORT, "w") as out:
    json.dump(report, out)
# Close the project first, as Project > Exit QGIS does: QGIS 3.40 dies (signal 11 in QgsLayerTreeView) when it
# quits with layers still loaded, with or without this plugin.
QgsProject.instance().clear()
QTimer.singleShot(0, QgsApplication.instance().quit)  # --code runs before QGIS's event loop starts
"""


def run_in_own_session(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Like subprocess.run, but a timeout kills the whole group (xvfb-run, Xvfb and QGIS), not only xvfb-run."""
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"QGIS did not exit within {timeout} s:\n{output[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def test_estimate_depth_in_desktop_qgis_with_mesa_gl(tiny_weights, small_rgb, tmp_path):
    """QGIS desktop + Mesa GL: Estimate depth runs, its result is loaded (named after the input), the Raster menu
    opens the algorithms' dialogs, and QGIS exits normally."""
    output, report = tmp_path / "height.tif", tmp_path / "report.json"
    script = tmp_path / "startup.py"
    parameters = {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU, "OUTPUT": str(output)}
    script.write_text(f"PARAMETERS = {parameters!r}\nREPORT = {str(report)!r}\n{STARTUP_SCRIPT}")
    profile = tmp_path / "profile"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nd3rsmde_qgis=true\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path),
           "QGIS_CUSTOM_CONFIG_PATH": str(profile), "QGIS_PLUGINPATH": str(REPO)}
    for name in ("QT_XCB_GL_INTEGRATION", "QT_OPENGL"):
        env.pop(name, None)  # nothing may keep Qt from loading Mesa as on a user's desktop
    qgis = run_in_own_session(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", str(REPO / "scripts" / "run_qgis.sh"),
         "--nologo", "--noversioncheck", "--code", str(script)], env, timeout=180)
    # On a crash QGIS's handler prints a gdb backtrace: keep the signal and the libraries of the frames.
    clues = sorted({line.strip()[:200] for line in qgis.stdout.splitlines()
                    if "signal" in line or "libtriton" in line or "Error" in line})
    assert qgis.returncode == 0, f"QGIS exited with {qgis.returncode}:\n" + "\n".join(clues)
    result = json.loads(report.read_text())
    assert result["llvm_before_run"], "Mesa's libLLVM was not loaded: the test did not reproduce a desktop"
    assert not result["triton_loaded"], result["llvm_after_run"]
    assert result["layers"] == [[f"{small_rgb.stem} height", str(output)]]
    assert output.is_file()
    assert result["raster_menu"] == {"d3rsmde:estimatedepth": "Estimate depth…",
                                     "d3rsmde:estimatedepthfolder": "Estimate depth for folder…",
                                     "d3rsmde:finetune": "Fine-tune model on region…",
                                     "d3rsmde:evaluate": "Evaluate depth against reference…",
                                     "d3rsmde:install": "Install Python packages…"}
    assert result["menu_opens"] == "d3rsmde:estimatedepth"
    assert result["installer_says"].startswith("Every package D3-RSMDE needs is importable")


BLOCK_PROBE = """
import ctypes, importlib.util, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # what Qt's GL does in desktop QGIS
import d3rsmde_qgis
import diffusers, timm, torch, torchvision
assert importlib.util.find_spec("triton") is None
assert "triton" in sys.modules and sys.modules["triton"] is None  # blocked, not merely absent
"""


def mesa_llvm() -> str:
    """The libLLVM that Mesa's GL drivers link (libgl1-mesa-dri in the Makefile): Debian 12's swrast_dri.so links
    libLLVM-15.so.1; Debian 13's drivers load libgallium-25.*.so, which links libLLVM.so.19.1 (scripts/test_ltr.sh)."""
    drivers = [*Path("/usr/lib").glob("*/dri/swrast_dri.so"), *Path("/usr/lib").glob("*/libgallium*.so")]
    for driver in sorted(drivers):
        linked = subprocess.run(["ldd", str(driver)], capture_output=True, text=True).stdout
        found = [line.split("=>")[1].split()[0] for line in linked.splitlines()
                 if "libLLVM" in line and "=>" in line]
        if found:
            return found[0]
    pytest.fail("no Mesa GL driver linking libLLVM (install libgl1-mesa-dri)")


def test_plugin_keeps_triton_out_of_a_process_with_mesa_llvm():
    """The same clash without QGIS: Mesa's libLLVM loaded first, then the plugin, then the model libraries."""
    llvm = mesa_llvm()
    probe = subprocess.run([sys.executable, "-c", BLOCK_PROBE, llvm], env={**os.environ, "PYTHONPATH": str(REPO)},
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, f"exit {probe.returncode} (-11 = SIGSEGV): {probe.stderr[-2000:]}"
