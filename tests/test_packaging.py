"""The plugin zip: its layout, and that QGIS loads it from a clean profile the way "Install from ZIP" does."""
from __future__ import annotations

import configparser
import os
import re
import stat
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
                     "libs/d3rsmde/__init__.py", "libs/d3rsmde/pipeline.py", "libs/d3rsmde/raster/__init__.py"):
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


# -- the QGIS plugin repository's upload rules (plugins.qgis.org), checked offline ------------------------------
# Our own checks of the rules the site applies to an uploaded zip, as its documentation states them.

UPLOAD_LIMIT_BYTES = 25_000_000
LEAN_WEIGHTS_BYTES = 18_000_000  # the default model being retrained to fit the limit (issue 10, deliverable 4)
REQUIRED_METADATA = ("name", "description", "about", "version", "qgisMinimumVersion", "qgisMaximumVersion",
                     "author", "email", "tracker", "repository", "homepage", "changelog", "icon", "experimental")
EXECUTABLE_SUFFIXES = (".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".exe", ".bat", ".cmd", ".jar")
EXECUTABLE_MAGIC = (b"\x7fELF", b"MZ", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe",
                    b"\xca\xfe\xba\xbe")
TRAINING_DATA_MODULES = ("sources.py", "pairs.py", "lpips_alexnet.py", "dems.py", "render.py", "render_tiles.py")


def zip_metadata(plugin_zip) -> configparser.SectionProxy:
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read_string(zipfile.ZipFile(plugin_zip).read("d3rsmde_qgis/metadata.txt").decode("utf-8"))
    return metadata["general"]


def test_zip_structure_follows_the_repository_rules(plugin_zip):
    """One top folder named like a Python package, with __init__.py (classFactory) and metadata.txt; no absolute
    or parent paths, links, VCS or OS debris, bytecode or executables."""
    archive = zipfile.ZipFile(plugin_zip)
    assert archive.testzip() is None
    infos = archive.infolist()
    tops = {info.filename.split("/")[0] for info in infos}
    assert tops == {"d3rsmde_qgis"} and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", "d3rsmde_qgis")
    assert "def classFactory(" in archive.read("d3rsmde_qgis/__init__.py").decode("utf-8")
    for info in infos:
        name = info.filename
        assert not name.startswith("/") and ".." not in name.split("/"), name
        assert not {"__pycache__", "__MACOSX", ".git", ".svn", ".DS_Store"} & set(name.split("/")), name
        assert stat.S_IFMT(info.external_attr >> 16) != stat.S_IFLNK, f"{name} is a symlink"
        assert not name.lower().endswith(EXECUTABLE_SUFFIXES), name
        if not info.is_dir():
            assert not archive.read(name)[:4].startswith(EXECUTABLE_MAGIC), f"{name} is an executable"
    assert "d3rsmde_qgis/LICENSE" in archive.namelist()


def test_metadata_follows_the_repository_rules(plugin_zip):
    general = zip_metadata(plugin_zip)
    missing = [key for key in REQUIRED_METADATA if not general.get(key, "").strip()]
    assert not missing, f"metadata.txt lacks {missing}"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", general["version"])
    assert re.fullmatch(r"3\.\d+(\.\d+)?", general["qgisMinimumVersion"])
    assert general["qgisMaximumVersion"] == "4.99"  # QGIS 4 loads only plugins that declare it
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", general["email"])
    for key in ("tracker", "repository", "homepage"):
        assert re.fullmatch(r"https://[\w.-]+/\S+", general[key]), key
    assert general["experimental"] in ("True", "False") and general["deprecated"] in ("True", "False")
    assert "plugin" not in general["name"].lower() and "\n" not in general["description"]
    names = zipfile.ZipFile(plugin_zip).namelist()
    icon = f"d3rsmde_qgis/{general['icon']}"
    assert icon in names and zipfile.ZipFile(plugin_zip).read(icon).startswith(b"\x89PNG\r\n\x1a\n")
    assert general["changelog"].startswith(general["version"])


def test_about_is_self_contained(plugin_zip):
    """`about` must be readable on its own in the Plugin Manager: no pointer to a file the zip does not hold."""
    about = zip_metadata(plugin_zip)["about"]
    names = set(zipfile.ZipFile(plugin_zip).namelist())
    paths = [token.strip(".,;:()\"'") for token in about.split() if "://" not in token]
    paths = [token for token in paths if "/" in token or re.search(r"\.(md|txt|html|py|sh|pdf)$", token)]
    assert all(f"d3rsmde_qgis/{path}" in names for path in paths), paths
    assert "make " not in about and len(about) > 200


def test_training_data_code_stays_out_and_the_bundled_backend_runs_without_it(installed):
    """The zip's libs/d3rsmde lacks the download/render modules, yet inference and fine-tuning import from it, and
    the metrics of evaluation and fine-tuning run (LPIPS looks for its weights without the download modules)."""
    libs = installed / "profiles" / "default" / "python" / "plugins" / "d3rsmde_qgis" / "libs"
    assert not [name for name in TRAINING_DATA_MODULES if (libs / "d3rsmde" / name).exists()]
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import d3rsmde, d3rsmde.raster, d3rsmde.pipeline, "
             "d3rsmde.train.finetune, d3rsmde.bands, numpy; from d3rsmde.metrics import depth_metrics; "
             "depth_metrics(numpy.eye(64), numpy.eye(64)); print(d3rsmde.__file__)")
    origin = subprocess.run([sys.executable, "-c", probe, str(libs)], check=True, capture_output=True,
                            text=True).stdout.strip()
    assert Path(origin) == libs / "d3rsmde" / "__init__.py"


def test_zip_fits_the_repository_upload_limit(plugin_zip):
    size = plugin_zip.stat().st_size
    weights = sum(info.file_size for info in zipfile.ZipFile(plugin_zip).infolist()
                  if info.filename.endswith(".safetensors"))
    assert 0 < weights <= LEAN_WEIGHTS_BYTES, f"bundled weights are {weights:,} bytes"
    assert size < UPLOAD_LIMIT_BYTES, f"{size:,} bytes with {weights:,} bytes of weights"


def test_plugin_bundles_the_backends_default_weights():
    from d3rsmde.weights import DEFAULT_NAME
    from d3rsmde_qgis.paths import BUNDLED_WEIGHTS

    assert BUNDLED_WEIGHTS.name == DEFAULT_NAME and BUNDLED_WEIGHTS.is_file()
