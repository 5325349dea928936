"""The in-plugin package installer (d3rsmde_qgis/installer.py and its dialog): pins, torch build, and a real
install into a clean QGIS profile after which *Estimate depth* runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


# A Python whose environment lacks the packages HIDDEN: they are importable only from the plugin's install folder.
HIDE_PACKAGES = """
import importlib.machinery, os, sys
class OnlyFromPluginFolder:
    def find_spec(self, name, path=None, target=None):
        if name not in HIDDEN:
            return None
        folders = [p for p in sys.path if "d3rsmde-packages" in p]
        spec = importlib.machinery.PathFinder.find_spec(name, folders) if folders else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec
sys.meta_path.insert(0, OnlyFromPluginFolder())
"""


def hiding_folder(tmp_path, names: tuple[str, ...]):
    """A folder whose sitecustomize.py hides ``names`` from a Python that has it on PYTHONPATH."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"HIDDEN = {set(names)!r}\n{HIDE_PACKAGES}")
    return blocker


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
print("BUILD", dialog.build.currentText())
loop = QEventLoop()
dialog.install_button.click()
dialog.process.finished.connect(loop.quit)
QTimer.singleShot(int(sys.argv[1]) * 1000, loop.quit)
loop.exec_()
app.processEvents()
print("STATUS", dialog.status.text())
print("FROM", {name: getattr(sys.modules.get(name), "__file__", None) for name in ("torch", "safetensors")})
print("LOG", dialog.log.toPlainText()[-1500:])
"""


def install_with_the_dialog(profile, blocker, tmp_path, timeout_s: int) -> str:
    """Open the installer dialog in a fresh QGIS application (offscreen), press Install, wait; its report."""
    dialog_env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(profile),
                  "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    installed = subprocess.run([sys.executable, "-c", RUN_INSTALLER_DIALOG, str(timeout_s)], env=dialog_env,
                               capture_output=True, text=True, timeout=timeout_s + 60)
    return installed.stdout + installed.stderr[-2000:]


def test_installer_then_estimate_depth_in_a_clean_profile(tiny_weights, small_rgb, tmp_path):
    """Clean profile, safetensors missing: the run names the installer; the dialog installs safetensors with pip
    into the profile; the same run then succeeds. (safetensors stands in for torch here: same path, 1 MB; the
    test below does it with torch itself.)"""
    from demo import qgis_process

    blocker = hiding_folder(tmp_path, ("safetensors",))
    profile = tmp_path / "profile"
    env = {"PYTHONPATH": str(blocker)}
    output = tmp_path / "height.tif"
    run = ["run", "d3rsmde:estimatedepth", "--", f"INPUT={small_rgb}", f"WEIGHTS={tiny_weights}", "REFINE_STEPS=0",
           f"OUTPUT={output}"]
    before = qgis_process(run, profile, env, capture_output=True, text=True)
    assert before.returncode != 0 and "- safetensors" in before.stdout + before.stderr
    assert "Install Python packages" in before.stdout + before.stderr and not output.exists()

    report = install_with_the_dialog(profile, blocker, tmp_path, timeout_s=300)
    assert "MISSING ['safetensors']" in report and "STATUS Installed: D3-RSMDE's algorithms can run now." in report, (
        report)
    folder = profile / "profiles" / "default" / "python" / "d3rsmde-packages"
    assert list(folder.glob("py*/safetensors/__init__.py"))  # in the profile, not in any site-packages

    after = qgis_process(run, profile, env, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout + after.stderr
    assert output.is_file()


ML_PACKAGES = ("torch", "torchvision", "timm", "diffusers", "safetensors")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("D3RSMDE_TEST_REAL_INSTALL") != "1",
                    reason="downloads and installs torch with pip (about 5.6 GB, 8 min here): "
                           "set D3RSMDE_TEST_REAL_INSTALL=1")
def test_real_torch_install_then_estimate_depth(small_rgb, tmp_path):
    """The whole story a zip user lives: a QGIS without torch, timm, diffusers or safetensors; *Estimate depth*
    names what is missing; the dialog installs the pinned packages (the build it chooses for this machine) into
    the profile; *Estimate depth* then runs the bundled model at its defaults, with torch from that folder."""
    import rasterio
    from demo import qgis_process

    blocker = hiding_folder(tmp_path, ML_PACKAGES)
    profile = tmp_path / "profile"
    env = {"PYTHONPATH": str(blocker)}
    output = tmp_path / "height.tif"
    run = ["run", "d3rsmde:estimatedepth", "--", f"INPUT={small_rgb}", f"OUTPUT={output}"]
    before = qgis_process(run, profile, env, capture_output=True, text=True)
    assert before.returncode != 0 and "- torch" in before.stdout + before.stderr and not output.exists()

    report = install_with_the_dialog(profile, blocker, tmp_path, timeout_s=1800)
    assert "MISSING ['diffusers', 'safetensors', 'timm', 'torch', 'torchvision']" in report, report
    assert "STATUS Installed: D3-RSMDE's algorithms can run now." in report, report
    folder = next((profile / "profiles" / "default" / "python" / "d3rsmde-packages").glob("py*"))
    assert f"'torch': '{folder / 'torch' / '__init__.py'}'" in report, report

    after = qgis_process(run, profile, env, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout + after.stderr
    with rasterio.open(output) as height, rasterio.open(small_rgb) as image:
        assert (height.width, height.height, height.crs) == (image.width, image.height, image.crs)
        assert float(height.read(1).std()) > 0


BUILD_CHOICES = """
from qgis.core import QgsApplication
app = QgsApplication([], True)
app.initQgis()
import d3rsmde_qgis
from d3rsmde_qgis.installer_dialog import InstallerDialog
dialog = InstallerDialog()
for index in range(dialog.build.count()):
    dialog.build.setCurrentIndex(index)
    print(dialog.build.isEnabled(), dialog.build.currentText(), "|", " ".join(dialog.command()))
"""


@pytest.mark.parametrize("hidden", [ML_PACKAGES, ("safetensors",)])
def test_dialog_torch_build_choice(hidden, tmp_path):
    """The dialog's torch build: automatic follows nvidia-smi (none here: the CPU index), CPU and CUDA chosen by
    hand give their own index; without torch to install the choice is greyed out."""
    blocker = hiding_folder(tmp_path, hidden)
    no_driver = [part for part in os.environ["PATH"].split(os.pathsep) if not (Path(part) / "nvidia-smi").exists()]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile"),
           "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
           "PATH": os.pathsep.join(no_driver)}
    lines = subprocess.run([sys.executable, "-c", BUILD_CHOICES], env=env, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    choices = [line.split(" | ") for line in lines if " | " in line]
    assert [label.split(" ", 1)[1] for label, _ in choices] == [
        "Automatic (CPU only: no NVIDIA driver was found)", "CPU only (smaller download; from download.pytorch.org)",
        "CUDA, for NVIDIA GPUs (several GB; from PyPI)"]
    cpu_index = ["https://download.pytorch.org/whl/cpu" in command for _, command in choices]
    if "torch" in hidden:
        assert all(label.startswith("True") for label, _ in choices)
        assert cpu_index == [True, True, False] and all("torch==2.14.1" in command for _, command in choices)
    else:
        assert all(label.startswith("False") for label, _ in choices)
        assert cpu_index == [False] * 3 and all(command.endswith(" safetensors>=0.4") for _, command in choices)


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

    blocker = hiding_folder(tmp_path, ("safetensors",))
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
