"""Issue 14 through the QGIS algorithms (real QGIS, headless): a full disk keeps the previous output; the folder
algorithm never overwrites a file or takes its own outputs as images; a raster without georeferencing is said once;
evaluate names a missing CRS."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import crop_raster
from qgis.core import QgsProcessingException

from test_file_safety import leave_free, small_disk  # noqa: F401 - small_disk is a fixture
from test_qgis_plugin import CPU, RecordingFeedback, run

pytestmark = pytest.mark.qgis


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("free_tiles", [0, 4], ids=["full-in-scratch-pass", "full-while-writing-output"])
def test_disk_full_keeps_the_previous_output(d3_provider, tiny_weights, small_rgb, small_disk, free_tiles):
    output = small_disk / "depth.tif"
    output.write_bytes(b"the previous, good output")
    leave_free(small_disk, free_tiles * 64 * 64 * 4 + (4 << 10))  # room for the tiny model's 4 scratch tiles, or not
    with pytest.raises(QgsProcessingException, match="depth.tif was not written"):
        run("d3rsmde:estimatedepth", {"INPUT": str(small_rgb), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                      "REFINE_STEPS": 0, "TILE": 64, "OUTPUT": str(output)})
    assert output.read_bytes() == b"the previous, good output"
    assert sorted(p.name for p in small_disk.iterdir()) == ["depth.tif", "filler"]


def test_folder_never_overwrites_and_skips_its_own_outputs(d3_provider, tiny_weights, small_rgb, tmp_path):
    folder = tmp_path / "scenes"  # input and output folder at once
    folder.mkdir()
    crop_raster(small_rgb, folder / "a.tif", 0, 0, 64, 48)
    crop_raster(small_rgb, folder / "a_depth.tif", 8, 8, 64, 48)  # the user's own image, named like an output
    crop_raster(small_rgb, folder / "scene.tif", 16, 0, 64, 48)
    with rasterio.open(folder / "scene.tif") as src:
        profile = {**src.profile, "driver": "PNG"}
        profile.pop("tiled", None), profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(folder / "scene.png", "w", **profile) as png:
                png.write(src.read())
    users = sha256(folder / "a_depth.tif")
    params = {"INPUT_FOLDER": str(folder), "PATTERN": "*.tif;*.png", "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
              "REFINE_STEPS": 0, "OUTPUT_FOLDER": str(folder)}

    first = run("d3rsmde:estimatedepthfolder", params, RecordingFeedback())
    names = sorted(Path(p).name for p in first["OUTPUTS"])
    assert names == ["a_depth-2.tif", "a_depth_depth.tif", "scene_png_depth.tif", "scene_tif_depth.tif"]
    assert (first["PROCESSED"], first["FAILED"]) == (4, 0)
    assert sha256(folder / "a_depth.tif") == users

    feedback = RecordingFeedback()
    second = run("d3rsmde:estimatedepthfolder", params, feedback)  # a re-run: the first outputs are no images
    assert (second["PROCESSED"], second["FAILED"]) == (4, 0)
    assert sum("not an image; skipped" in line for line in feedback.infos) == 4
    assert not set(second["OUTPUTS"]) & set(first["OUTPUTS"])
    assert all(Path(p).is_file() for p in first["OUTPUTS"] + second["OUTPUTS"])
    assert sha256(folder / "a_depth.tif") == users
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_raster_without_georeferencing_is_said_once(d3_provider, tiny_weights, tmp_path, capfd):
    src = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(src, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8") as ds:
            ds.write(np.random.default_rng(0).integers(0, 255, (3, 48, 64)).astype(np.uint8))
    feedback = RecordingFeedback()
    result = run("d3rsmde:estimatedepth", {"INPUT": str(src), "WEIGHTS": str(tiny_weights), "DEVICE": CPU,
                                           "REFINE_STEPS": 0, "OUTPUT": str(tmp_path / "out.tif")}, feedback)
    assert Path(result["OUTPUT"]).is_file()
    said = [line for line in feedback.infos + feedback.errors + feedback.warnings if "no georeferencing" in line]
    assert said == [w for w in feedback.warnings if "no georeferencing" in w] and len(said) == 1, feedback.infos
    # QGIS itself prints "ERROR 1: Unable to compute a transformation" when it opens such a layer (the INPUT);
    # what d3rsmde adds is the one plain line above, and no Python warning.
    assert "NotGeoreferenced" not in capfd.readouterr().err

    feedback = RecordingFeedback()  # the folder algorithm says it per file
    run("d3rsmde:estimatedepthfolder", {"INPUT_FOLDER": str(tmp_path), "PATTERN": "plain.tif", "DEVICE": CPU,
                                        "WEIGHTS": str(tiny_weights), "REFINE_STEPS": 0,
                                        "OUTPUT_FOLDER": str(tmp_path / "folder")}, feedback)
    assert len(feedback.warnings) == 1 and feedback.warnings[0].startswith("plain.tif has no georef")


def test_evaluate_names_a_missing_crs(d3_provider, small_rgb, tmp_path):
    bare = tmp_path / "bare.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(bare, "w", driver="GTiff", width=32, height=32, count=1, dtype="float32") as ds:
            ds.write(np.ones((1, 32, 32), np.float32))
    with pytest.raises(QgsProcessingException, match="bare.tif has no CRS"):
        run("d3rsmde:evaluate", {"PREDICTION": str(bare), "REFERENCE": str(small_rgb),
                                 "OUTPUT_HTML": str(tmp_path / "m.html")})
    assert not (tmp_path / "m.html").exists()
    before = sha256(bare)
    with pytest.raises(QgsProcessingException, match="is the prediction raster"):
        run("d3rsmde:evaluate", {"PREDICTION": str(bare), "REFERENCE": str(small_rgb), "OUTPUT_HTML": str(bare)})
    assert sha256(bare) == before
