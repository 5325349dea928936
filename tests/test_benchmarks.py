"""Benchmark scripts, smoke-sized: tiny models on the CPU, real measurements, valid JSON, markdown and plot."""
import json

import numpy as np
import pytest
import rasterio
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from benchmarks import common, peers, raster, speed  # the repo root is on pytest's pythonpath (pyproject.toml)
from d3rsmde.flops import count_flops

SPEED_ROWS = {
    *(f"D3-RSMDE tiny {s} @64" for s in ("coarse only", "T=3", "T=6", "T=10")),
    *(f"Marigold {s} @64" for s, _, _ in speed.MARIGOLD_SETTINGS),
    "DPT-Hybrid-sized coarse (tiny) @64",
}


def test_marigold_full_config_is_sd2_with_8_input_channels():
    with torch.device("meta"):  # shapes only: no 866M-parameter initialisation
        unet = UNet2DConditionModel(**peers.marigold_unet_config("full"))
        vae = AutoencoderKL(**peers.marigold_vae_config("full"))
    assert sum(p.numel() for p in unet.parameters()) == 865_922_244  # SD2 U-Net + 4 more conv_in channels
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # SD's KL-f8 VAE
    assert unet.conv_in.in_channels == 8 and unet.conv_out.out_channels == 4
    assert vae.config.scaling_factor == 0.18215


def test_marigold_peer_output_and_flops_composition():
    torch.manual_seed(0)
    peer = peers.build_marigold("tiny")
    images = torch.rand(2, 3, 64, 64)
    depth = peer(images, steps=2, ensemble=3, member_batch=2)
    assert depth.shape == (2, 1, 64, 64)
    assert 0 <= float(depth.min()) and float(depth.max()) <= 1 and float(depth.std()) > 0

    args = speed.parse_args(["--device", "cpu", "--repeats", "1"])
    runner = speed.Runner(args, torch.device("cpu"))
    fp32 = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    family = speed.Family("marigold", lambda: peer, (), lambda p, x, c: p(x), fp32)
    cost = speed.MarigoldCost(runner, family, peer, 64)
    whole = count_flops(lambda: peer(images[:1], steps=2, ensemble=3))
    assert cost.flops(2, 3) == whole > 0
    assert cost.seconds(50, 10) > cost.seconds(1, 1) > 0


def test_speed_main_tiny(tmp_path):
    out = tmp_path / "bench"
    result = speed.main(["--device", "cpu", "--scale", "tiny", "--config", "tiny", "--quick", "--tiles", "64",
                         "--marigold-tiles", "64", "--repeats", "1", "--profile", "T=3", "--out", str(out)])
    saved = json.loads((out / "speed.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {r["name"]: r for r in saved["rows"]}
    assert set(rows) == SPEED_ROWS
    v1 = rows["Marigold v1.0: 50 steps x 10 @64"]
    assert v1["source"] == "extrapolated" and v1["throughput_tiles_per_s"] is None
    for name, row in rows.items():
        assert row["latency_s"] > 0 and row["flops_per_tile"] > 0, name
        if row is not v1:
            assert row["source"] == "measured" and row["throughput_tiles_per_s"] > 0, name
            assert len(row["latency_runs_s"]) == 1 and row["best_batch"] in (1, 2), name
    flops = [rows[f"D3-RSMDE tiny {s} @64"]["flops_per_tile"] for s in ("coarse only", "T=3", "T=6", "T=10")]
    assert flops == sorted(flops) and len(set(flops)) == 4  # every refinement step adds work
    one, four = (rows[f"Marigold {s} @64"]["flops_per_tile"] for s in ("LCM: 1 step x 1", "4 steps x 1"))
    step = (four - one) / 3  # three more U-Net calls
    assert step > 0 and v1["flops_per_tile"] > one + 499 * step  # 500 U-Net calls and 10 decodes vs 1 and 1
    assert v1["speedup_vs_marigold_v1"] == 1.0
    assert rows["D3-RSMDE tiny T=6 @64"]["speedup_vs_marigold_v1"] == v1["latency_s"] / rows[
        "D3-RSMDE tiny T=6 @64"]["latency_s"]
    assert saved["machine"]["cpu"] and saved["machine"]["torch"] == torch.__version__

    md = (out / "speed.md").read_text()
    assert "| Model | Setting | Tile |" in md and "extrapolated" in md and "NOT run" in md
    assert md.count("| D3-RSMDE tiny |") == 4 and md.count("| Marigold |") == 3
    assert "speed.png" in md and (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile = (out / "profile-d3-rsmde-tiny-t-3-64.txt").read_text()
    assert "Self CPU" in profile and "aten::" in profile


def test_terrain_is_continuous_across_windows():
    terrain = raster.Terrain(seed=3)
    rows, cols = np.arange(0.0, 300.0), np.arange(0.0, 200.0)
    whole = terrain.heights(rows, cols)
    np.testing.assert_allclose(terrain.heights(rows[100:180], cols[50:120]), whole[100:180, 50:120], atol=1e-5)
    assert 0 < whole.min() < whole.max() < 1


def test_raster_main_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(raster, "STRIP_ROWS", 64)  # several strips even for a small raster
    src = raster.write_synthetic_geotiff(tmp_path / "in.tif", 150, 130)
    with rasterio.open(src) as ds:
        data = ds.read()
        assert (ds.count, ds.dtypes[0], ds.crs.to_epsg()) == (3, "uint8", 32633)
    assert data.std() > 5 and data[:, 60:70].std() > 5  # textured across strip boundaries

    out = tmp_path / "bench"
    raster.main(["--device", "cpu", "--config", "tiny", "--sizes", "0.01", "--out", str(out)])
    saved = json.loads((out / "raster.json").read_text())
    (row,) = saved["rows"]
    assert (row["width"], row["height"], row["tile"]) == (100, 100, 64)
    assert row["tiles"] >= 4 and row["seconds"] > 0 and row["peak_rss_bytes"] > 50 * 2**20
    assert abs(row["megapixels_per_second"] * row["seconds_per_megapixel"] - 1) < 1e-9
    assert row["peak_gpu_memory_bytes"] is None
    md = (out / "raster.md").read_text()
    assert "| 100 x 100 | 0.01 |" in md and "raster.png" in md
    assert (out / "raster.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temp files


def test_tables_are_written_without_matplotlib(tmp_path, monkeypatch):
    """A bare GPU image may lack matplotlib: the JSON and markdown still come, without a dangling image link."""
    monkeypatch.setattr(common, "figure_class", lambda: None)
    result = {"machine": {"cpu": "x"}, "rows": [{"megapixels": 1.0, "seconds_per_megapixel": 2.0}]}
    assert raster.plot(result, tmp_path / "raster.png") is False and not (tmp_path / "raster.png").exists()
    rows = [{"speedup_vs_marigold_v1": 2.0}]
    assert speed.plot({"rows": rows, "machine": {}}, tmp_path / "speed.png") is False
    assert not (tmp_path / "speed.png").exists()


def test_engine_ab_variants_and_tiny_run(tmp_path, tiny_weights):
    from benchmarks import engine_ab

    assert engine_ab.parse_variant("x:threads=1;overlap=8;OMP_WAIT_POLICY=PASSIVE") == {
        "name": "x", "options": {"threads": 1, "overlap": 8}, "env": {"OMP_WAIT_POLICY": "PASSIVE"}}
    with pytest.raises(SystemExit, match="unknown variant option 'thread'"):
        engine_ab.parse_variant("x:thread=1")
    result = engine_ab.main(["--config", "tiny", "--variants",
                             f"a:workers=2,b:overlap=16;workers=1,c:weights={tiny_weights};workers=2",
                             "--rounds", "1", "--out", str(tmp_path)])
    a, b, c = result["rows"]
    assert (a["variant"], a["overlap"], b["overlap"]) == ("a", 8, 16)  # the default: an eighth of the tile
    assert (a["workers"], b["workers"]) == (2, 1)
    assert a["mean_abs_diff_vs_first"] == 0 and 0 < b["mean_abs_diff_vs_first"] < 0.2  # same weights, other seams
    assert b["inferred_pixels_per_output_pixel"] > a["inferred_pixels_per_output_pixel"]
    assert a["rmse_after_affine_vs_dem"] > 0 and a["seconds"] > 0
    assert c["model"] == f"weights {tiny_weights}" and a["model"].startswith("config tiny")
    assert "| b | overlap=16; workers=1 |" in (tmp_path / "engine_ab.md").read_text()


def test_stages_profile_tiny(tmp_path):
    from benchmarks import stages

    result = stages.main(["--config", "tiny", "--megapixels", "0.02", "--out", str(tmp_path)])
    s = result["stages"]
    model = [s[k] for k in ("  coarse model", "  VAE encode (image + coarse map)", "  refiner steps", "  VAE decode")]
    assert all(v > 0 for v in model) and sum(model) <= s["pass 1: tiles through the model"] <= result["wall_seconds"]
    assert s["pass 2: blend and write"] > 0 and s["seam solve (LSQR)"] > 0
    assert "| pass 1: tiles through the model |" in (tmp_path / "stages.md").read_text()
