"""The in-plugin package installer (d3rsmde_qgis/installer.py and its dialog): pins, torch build, and a real
install into a clean QGIS profile after which *Estimate depth* runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.qgis


def test_pins_are_the_requirements_ones():
    from d3rsmde_qgis.deps import BACKEND_PACKAGES

    requirements = {line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()}
    assert {spec for spec in BACKEND_PACKAGES.values() if "==" in spec or "<" in spec} <= requirements


@pytest.mark.parametrize("driver_exit, cpu_index", [(0, False), (9, True), (None, True)])
def test_torch_build_follows_nvidia_smi(driver_exit, cpu_index, tmp_path):
    """An `nvidia-smi` that reports a driver (exit 0) keeps PyPI's CUDA torch; failing or absent: the CPU build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if driver_exit is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {driver_exit}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    probe = ("import sys; from d3rsmde_qgis import installer; cuda = installer.has_nvidia_driver(); "
             "print(cuda, ' '.join(installer.pip_command(['torch', 'timm'], sys.argv[1], cuda)))")
    numpy = __import__("numpy").__version__  # the probe's Python is this one
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "profile")], check=True, text=True,
                         capture_output=True, env={**os.environ, "PATH": str(bin_dir), "PYTHONPATH": str(REPO)}).stdout
    cuda, command = out.split(" ", 1)
    assert cuda == str(not cpu_index)
    assert ("https://download.pytorch.org/whl/cpu" in command) == cpu_index
    assert "torch==2.14.1 torchvision==0.29.1 timm==1.0.31" in command
    assert command.rstrip().endswith(f" numpy=={numpy}")  # held: QGIS's GDAL is built for it (numpy 1 on 3.22, 2 on 3.40)
    assert f"--target {tmp_path / 'profile' / 'python' / 'd3rsmde-packages'}" in command


def test_only_packages_that_need_numpy_hold_it(tmp_path):
    from d3rsmde_qgis.installer import pip_command

    assert not any("numpy" in part for part in pip_command(["safetensors"], tmp_path, cuda=False))
    assert pip_command(["diffusers"], tmp_path, cuda=False)[-2:] == ["diffusers==0.42.1",
                                                                      f"numpy=={__import__('numpy').__version__}"]
    assert pip_command(["numpy"], tmp_path, cuda=False)[-1:] == ["numpy<2"]  # QGIS without numpy: the pin


# A Python whose environment lacks safetensors: it is importable only from the plugin's install folder.
HIDE_SAFETENSORS = """
import importlib.machinery, os, sys
class OnlyFromPluginFolder:
    def find_spec(self, name, path=None, target=None):
        if name != "safetensors":
            return None
        folders = [p for p in sys.path if "d3rsmde-packages" in p]
        spec = importlib.machinery.PathFinder.find_spec(name, folders) if folders else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec
sys.meta_path.insert(0, OnlyFromPluginFolder())
"""

RUN_INSTALLER_DIALOG = """
import sys
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QEventLoop, QTimer
app = QgsApplication([], True)
app.initQgis()
import d3rsmde_qgis
from d3rsmde_qgis.installer_dialog import InstallerDialog
dialog = InstallerDialog()
dialog.show()
print("MISSING", dialog.missing)
loop = QEventLoop()
dialog.install_button.click()
dialog.process.finished.connect(loop.quit)
QTimer.singleShot(300_000, loop.quit)
loop.exec_()
app.processEvents()
print("STATUS", dialog.status.text())
print("LOG", dialog.log.toPlainText()[-1500:])
"""


def test_installer_then_estimate_depth_in_a_clean_profile(tiny_weights, small_rgb, tmp_path):
    """Clean profile, safetensors missing: the run names the installer; the dialog installs safetensors with pip
    into the profile; the same run then succeeds. (safetensors stands in for torch: same path, 1 MB not 800.)"""
    from demo import qgis_process

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(HIDE_SAFETENSORS)
    profile = tmp_path / "profile"
    env = {"PYTHONPATH": str(blocker)}
    output = tmp_path / "height.tif"
    run = ["run", "d3rsmde:estimatedepth", "--", f"INPUT={small_rgb}", f"WEIGHTS={tiny_weights}", "REFINE_STEPS=0",
           f"OUTPUT={output}"]
    before = qgis_process(run, profile, env, capture_output=True, text=True)
    assert before.returncode != 0 and "- safetensors" in before.stdout + before.stderr
    assert "Install Python packages" in before.stdout + before.stderr and not output.exists()

    dialog_env = {**os.environ, **env, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(profile),
                  "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    installed = subprocess.run([sys.executable, "-c", RUN_INSTALLER_DIALOG], env=dialog_env, capture_output=True,
                               text=True, timeout=360)
    report = installed.stdout
    assert "MISSING ['safetensors']" in report and "STATUS Installed: D3-RSMDE's algorithms can run now." in report, (
        report + installed.stderr[-2000:])
    folder = profile / "profiles" / "default" / "python" / "d3rsmde-packages"
    assert list(folder.glob("py*/safetensors/__init__.py"))  # in the profile, not in any site-packages

    after = qgis_process(run, profile, env, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout + after.stderr
    assert output.is_file()


def test_failed_pip_runs_name_their_cause(tmp_path):
    """Real pip failures: an unreachable index (pip then only says "no matching distribution") and a missing pip."""
    from d3rsmde_qgis.installer import failure_hint

    offline = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--target", str(tmp_path / "t"), "--no-cache-dir", "--isolated",
         "--index-url", "http://127.0.0.1:9/simple", "--retries", "0", "--timeout", "2", "d3rsmde-not-a-package"],
        capture_output=True, text=True, env={**os.environ, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""})
    assert offline.returncode != 0
    assert "could not reach the package index" in failure_hint(offline.stdout + offline.stderr)
    no_pip = subprocess.run([sys.executable, "-I", "-S", "-m", "pip"], capture_output=True, text=True)
    assert no_pip.returncode != 0 and "has no pip" in failure_hint(no_pip.stderr)
    assert "disk is full" in failure_hint("OSError: [Errno 28] No space left on device")


OFFER_PROBE = """
import json
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QPushButton
from qgis.utils import iface
items = iface.messageBar().items()
with open(REPORT, "w") as out:
    json.dump([[item.title(), item.text(), [b.text() for b in item.findChildren(QPushButton)]] for item in items], out)
QTimer.singleShot(0, QgsApplication.instance().quit)
"""


def test_desktop_start_offers_the_installer_when_packages_are_missing(tmp_path):
    """Desktop QGIS whose Python lacks safetensors: a message bar note names it, with an Install… button."""
    from test_qgis_desktop import run_in_own_session

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(HIDE_SAFETENSORS)
    profile, report, script = tmp_path / "profile", tmp_path / "report.json", tmp_path / "probe.py"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nd3rsmde_qgis=true\n")
    script.write_text(f"REPORT = {str(report)!r}\n{OFFER_PROBE}")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": str(blocker),
           "QGIS_CUSTOM_CONFIG_PATH": str(profile), "QGIS_PLUGINPATH": str(REPO)}
    qgis = run_in_own_session(["xvfb-run", "-a", str(REPO / "scripts" / "run_qgis.sh"), "--nologo",
                               "--noversioncheck", "--code", str(script)], env, timeout=120)
    assert qgis.returncode == 0, qgis.stdout[-2000:]
    notes = json.loads(report.read_text())
    assert ["D3-RSMDE", "needs Python packages this QGIS lacks: safetensors", ["Install…"]] in notes, notes
