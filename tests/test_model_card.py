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


@pytest.mark.parametrize("lpips", [True, False], ids=["lpips-weights", "no-lpips-weights"])
def test_scene_tile_eval_scores_tile_sizes_on_held_out_blocks(tiny_weights, tmp_path, monkeypatch, lpips):
    """scripts/scene_tile_eval.py: a tile set's test blocks become whole scenes (image and DEM over the same ground,
    the DEM's nodata kept), and every scene is scored at every tile size and step count."""
    import rasterio

    if not lpips:  # a machine that never fetched them (CI): the column is n/a, the run still completes
        monkeypatch.setenv("D3RSMDE_SOURCES", str(tmp_path / "empty-cache"))
    spec = importlib.util.spec_from_file_location("scene_tile_eval", REPO / "scripts" / "scene_tile_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiles = tmp_path / "tiles"
    build_dataset(SAMPLE_RGB, SAMPLE_DEM, tiles, BuildOptions(tile_size=64, stride=32, block_size=128,
                                                              test_fraction=0.3))
    out = tmp_path / "scenes"
    assert module.main(["--weights", str(tiny_weights), "--max-scenes", "0", "--world", str(tiles),
                        "--scene", f"RMNP={SAMPLE_RGB},{SAMPLE_DEM}", "--tiles", "64,128", "--steps", "0,1",
                        "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    blocks = [n for n in results["scenes"] if n.startswith("world-b")]
    assert blocks and "RMNP" in results["scenes"]
    for scene in results["scenes"].values():
        assert set(scene) == {"tile 64, T=0", "tile 64, T=1", "tile 128, T=0", "tile 128, T=1"}
        assert all(0 <= row["mae"] <= 255 and row["pixels"] > 1 for row in scene.values())
        assert all(row["standard_error"]["mae"] >= 0 for row in scene.values())  # each scene's jackknife
    with rasterio.open(out / f"{blocks[0]}-rgb.tif") as image, rasterio.open(out / f"{blocks[0]}-dem.tif") as dem:
        assert rasterio.coords.disjoint_bounds(image.bounds, dem.bounds) is False
        assert dem.nodata is not None and dem.nodata != dem.nodata  # NaN: a DEM's nodata never becomes a summit
        assert 2000 < dem.read(1, masked=True).mean() < 4500  # the sample's heights, metres
    report = (out / "results.md").read_text()
    assert f"mean of {len(blocks)} held-out world blocks" in report and "Standard errors (a group mean" in report


def test_reference_dem_eval_scores_output_and_reference_alone(tiny_weights, tmp_path):
    """scripts/reference_dem_eval.py: each factor's coarse reference is the true DEM averaged, and the output made
    with it follows it (a random tiny model adds only its texture), scored beside the reference alone."""
    spec = importlib.util.spec_from_file_location("reference_dem_eval", REPO / "scripts" / "reference_dem_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "reference"
    assert module.main(["--weights", str(tiny_weights), "--factors", "2,4", "--scene",
                        f"RMNP={SAMPLE_RGB},{SAMPLE_DEM}", "--out", str(out), "--figure",
                        str(tmp_path / "figure.png")]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["factor"], r["what"].split()[0]) for r in rows] == [(2, "output"), (2, "the"), (4, "output"),
                                                                   (4, "the")]
    for output, alone in zip(rows[::2], rows[1::2]):
        assert 0 < output["rmse_m"] < 3 * alone["rmse_m"]  # metres that follow the reference (bundled model, 0.5.0 engine: 13x at 2x)
    assert rows[1]["rmse_m"] < rows[3]["rmse_m"]  # a coarser reference misses more
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_finetune_transfer_eval_tunes_on_one_half_and_scores_the_other(tiny_weights, tmp_path):
    """scripts/finetune_transfer_eval.py: four halves, four variants each; the "coarse tuned" variant is the start
    refiner under the tuned coarse model, and the summary counts runs against the start's."""
    spec = importlib.util.spec_from_file_location("transfer", REPO / "scripts" / "finetune_transfer_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    box = module.footprint(SAMPLE_RGB, SAMPLE_DEM)
    west, east = module.halves(box, "west")
    assert west[0] == box[0] and west[2] == east[0] < box[2] and west[1::2] == east[1::2] == box[1::2]
    out = tmp_path / "transfer"
    assert module.main(["--weights", str(tiny_weights), "--scene", f"RMNP={SAMPLE_RGB},{SAMPLE_DEM}", "--tile", "32",
                        "--epochs", "1", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [(r["trained on"], r["weights"]) for r in result["rows"][:4]] == [
        ("west half", "start"), ("west half", "coarse tuned"), ("west half", "coarse + refiner tuned"),
        ("west half", "halfway (coarse + refiner)")]
    assert len(result["rows"]) == 16 and result["rows"][0]["minus start"] is None
    assert result["summary"]["RMNP: start"]["better"]["mae"] == 0
    assert result["summary"]["RMNP: coarse tuned"]["runs"] == 4
    from d3rsmde.pipeline import D3Pipeline

    start, tuned = D3Pipeline.from_pretrained(tiny_weights), out / "rmnp-west-seed42.safetensors"
    mixed = module.coarse_tuned(tiny_weights, tuned)
    assert all(v.equal(start.refiner.state_dict()[k]) for k, v in mixed.refiner.state_dict().items())
    assert not all(v.equal(start.coarse.state_dict()[k]) for k, v in mixed.coarse.state_dict().items())


def test_refiner_ceiling_probe_scores_the_true_dem_through_the_vae_and_refiner(tiny_weights, tmp_path):
    """scripts/refiner_ceiling_probe.py: the true DEM, put on the image grid and scored back on its own, is nearly
    perfect (so the maps are lined up), and each of the seven maps is scored."""
    spec = importlib.util.spec_from_file_location("ceiling", REPO / "scripts" / "refiner_ceiling_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ceiling"
    assert module.main(["--weights", str(tiny_weights), "--scene", f"RMNP={SAMPLE_RGB},{SAMPLE_DEM}",
                        "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["map"] for r in rows] == ["true DEM", "true DEM through the VAE", "true DEM refined, T = 1",
                                        "true DEM refined, T = 6", "true DEM refined, T = 6, grey image",
                                        "the model, coarse only", "the model, T = 6"]
    assert rows[0]["grad_r"] > 0.95 and rows[0]["mae"] < 5
    assert rows[3]["grad_r"] < rows[0]["grad_r"]  # a random tiny refiner loses most of it
