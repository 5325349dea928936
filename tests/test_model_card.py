"""scripts/model_card_eval.py: every row the model card needs, measured, on whole scenes and on held-out tiles."""

import importlib.util
import json

import pytest
from conftest import REPO, SAMPLE_DEM, SAMPLE_RGB

from d3rsmde.data import BuildOptions, build_dataset


@pytest.fixture(scope="module")
def model_card_eval():
    spec = importlib.util.spec_from_file_location("model_card_eval", REPO / "scripts" / "model_card_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_card_rows_and_picture(model_card_eval, tiny_weights, tmp_path):
    image, dem = SAMPLE_RGB, SAMPLE_DEM
    counts = build_dataset(image, dem, tmp_path / "tiles", BuildOptions(tile_size=64, stride=32, block_size=128, test_fraction=0.3))["counts"]
    assert counts["test"] > 0
    out = tmp_path / "card"
    assert model_card_eval.main(["--weights", str(tiny_weights), "--tiles", str(tmp_path / "tiles"),
                                 "--scene", f"RMNP={image},{dem}", "--steps", "0,2", "--device", "cpu", "--no-lpips",
                                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    expected = {"coarse only (T=0)", "D3-RSMDE T=2", "baseline: constant plane", "baseline: luminance",
                "baseline: inverted luminance"}
    for part in ("RMNP", "held-out tiles: tiles"):
        rows = results[part]
        assert set(rows) == expected, part
        assert rows["baseline: constant plane"]["ssim"] != rows["baseline: luminance"]["ssim"], part
        assert rows["baseline: luminance"]["grad_r"] == pytest.approx(rows["baseline: inverted luminance"]["grad_r"])
        for row in rows.values():
            assert 0 <= row["mae"] <= 255 and -1 <= row["ssim"] <= 1, part
    md = (out / "results.md").read_text()
    assert "**RMNP** (" in md and "whole scene" in md and "| baseline: luminance |" in md and "CPU" in md
    assert (out / "examples.png").read_bytes()[:4] == b"\x89PNG"
