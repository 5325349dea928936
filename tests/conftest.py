"""Shared fixtures. The QGIS ones register the in-repo plugin once per session (a second registration of the
same provider id is refused by QGIS) and give it a tiny model and a small crop of the sample raster.
pytest-qgis starts QgsApplication before this file is imported; its `qgis_processing` fixture starts Processing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RGB = REPO / "resources" / "sample" / "rmnp-rgb.tif"
SAMPLE_DEM = REPO / "resources" / "sample" / "rmnp-dem.tif"
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the plugin package and scripts/demo.py, as in QGIS


@pytest.fixture(autouse=True)
def float32_on_cpu(monkeypatch):
    """CPU results are compared tightly: pin float32 so they do not depend on whether this CPU has native bf16
    (tests/test_precision.py checks that policy itself)."""
    import d3rsmde.device

    monkeypatch.setattr(d3rsmde.device, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="session")
def d3_provider(qgis_processing, qgis_iface):
    """The D3-RSMDE provider, registered the way QGIS does it (classFactory + initProcessing)."""
    import d3rsmde_qgis

    plugin = d3rsmde_qgis.classFactory(qgis_iface)
    plugin.initProcessing()
    yield plugin.provider
    plugin.unload()


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised "tiny" pipeline (seed 0), in memory."""
    import torch

    from d3rsmde.pipeline import D3Pipeline

    torch.manual_seed(0)
    return D3Pipeline.from_config("tiny")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised "tiny" checkpoint: real code path, milliseconds per tile on a CPU."""
    from d3rsmde.pipeline import D3Pipeline

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    D3Pipeline.from_config("tiny").save_pretrained(path)
    return path


def crop_raster(source: Path, target: Path, col: int, row: int, width: int, height: int) -> Path:
    """A window of `source` as its own GeoTIFF, same CRS and pixel size (the transform moves with the window)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        window = Window(col, row, width, height)
        profile = {**src.profile, "width": width, "height": height, "transform": src.window_transform(window)}
        data = src.read(window=window)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
    return target


def blue_first_stack(source: Path, target: Path) -> Path:
    """``source``'s RGB as a 6-band stack that, like Landsat 4-7, starts with blue and names no colour: bands 3, 2, 1
    are red, green, blue (bands 4-6 repeat them, standing in for the infrared)."""
    import numpy as np
    import rasterio

    with rasterio.open(source) as src:
        red, green, blue = src.read()
        profile = {**src.profile, "count": 6, "photometric": "minisblack"}
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.stack([blue, green, red, red, green, blue]))  # the nodata pixels stay 255 in every band
    return target


@pytest.fixture(scope="session")
def small_rgb(tmp_path_factory) -> Path:
    """96 x 80 pixels of the RMNP sample, inside the DEM's footprint: 4 tiles of the tiny model."""
    return crop_raster(SAMPLE_RGB, tmp_path_factory.mktemp("images") / "rmnp-small.tif", 200, 150, 96, 80)
