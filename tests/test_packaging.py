"""The plugin zip: its layout, and that QGIS loads it from a clean profile the way "Install from ZIP" does."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from package_plugin import build_zip

pytestmark = pytest.mark.qgis

ALGORITHM_IDS = ["d3rsmde:estimatedepth", "d3rsmde:estimatedepthfolder", "d3rsmde:evaluate", "d3rsmde:finetune"]


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_zip(tmp_path_factory.mktemp("dist") / "d3rsmde_qgis.zip")


@pytest.fixture(scope="module")
def installed(plugin_zip, tmp_path_factory) -> Path:
    """A fresh QGIS profile folder with the zip unpacked into its python/plugins, as the Plugin Manager does."""
    config = tmp_path_factory.mktemp("qgis-config")
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(config / "profiles" / "default" / "python" / "plugins")
    return config


def test_zip_layout(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"d3rsmde_qgis"}
    for required in ("__init__.py", "metadata.txt", "provider.py", "algorithms/estimate_depth.py",
                     "resources/icons/d3rsmde.png", "resources/styles/depth-terrain.qml", "README.md",
                     "libs/d3rsmde/__init__.py", "libs/d3rsmde/pipeline.py", "libs/d3rsmde/raster.py"):
        assert f"d3rsmde_qgis/{required}" in names, required
    for weights in sorted((REPO / "resources" / "weights").glob("*.safetensors")):
        assert f"d3rsmde_qgis/resources/weights/{weights.name}" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if "/resources/sample/" in name]  # test data stays out of the plugin


def test_metadata_is_the_repository_one_and_matches_the_backend_version(plugin_zip):
    import d3rsmde

    packed = zipfile.ZipFile(plugin_zip).read("d3rsmde_qgis/metadata.txt")
    assert packed == (REPO / "metadata.txt").read_bytes() == (REPO / "d3rsmde_qgis" / "metadata.txt").read_bytes()
    metadata = configparser.ConfigParser()
    metadata.read_string(packed.decode("utf-8"))
    general = metadata["general"]
    assert general["version"] == d3rsmde.__version__
    assert general["hasProcessingProvider"] == "yes" and general["icon"] == "resources/icons/d3rsmde.png"
    assert all(general.get(key) for key in ("name", "qgisMinimumVersion", "description", "about", "author"))


def test_installed_zip_provides_the_algorithms(installed):
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(installed), "QT_QPA_PLATFORM": "offscreen",
           "XDG_RUNTIME_DIR": str(installed), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("QGIS_PLUGINPATH", None)  # only the unpacked copy may be found
    subprocess.run(["qgis_process.bin", "plugins", "enable", "d3rsmde_qgis"], env=env, check=True,
                   capture_output=True)
    listing = subprocess.run(["qgis_process.bin", "list"], env=env, check=True, capture_output=True,
                             text=True).stdout
    assert all(f"\t{alg_id}\t" in listing for alg_id in ALGORITHM_IDS), listing


def test_bundled_backend_is_used_when_none_is_installed(installed):
    """Debian's Python without the venv has no d3rsmde: importing the plugin puts its libs/ copy first."""
    plugins = installed / "profiles" / "default" / "python" / "plugins"
    probe = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]); "
             "assert importlib.util.find_spec('d3rsmde') is None; import d3rsmde_qgis; "
             "print(importlib.util.find_spec('d3rsmde').origin)")
    origin = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(plugins)], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert Path(origin) == plugins / "d3rsmde_qgis" / "libs" / "d3rsmde" / "__init__.py"
