"""Whole-scene evaluation and the gradient correlation: what the model card's scene figures rest on."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from d3rsmde.errors import InputError
from d3rsmde.evaluation import evaluate_scene, scene_difference, scene_jackknife, tile_difference
from d3rsmde.metrics import gradient_correlation


def hills(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return 1000 + 300 * np.sin(6 * x) * np.cos(4 * y) + 200 * x


def write(path, array, transform, crs="EPSG:32613"):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=np.nan) as dst:
        dst.write(array.astype(np.float32), 1)
    return path


def test_gradient_correlation_sees_slopes_not_scale():
    g = hills(64)
    assert gradient_correlation(g, g) == pytest.approx(1.0)
    assert gradient_correlation(3 * g - 7, g) == pytest.approx(1.0)  # scale and shift invariant
    assert gradient_correlation(np.zeros_like(g), g) == 0.0  # a flat map has no relief to agree with
    rng = np.random.default_rng(0)
    assert abs(gradient_correlation(rng.random(g.shape), g)) < 0.1
    holes = np.ones(g.shape, bool)
    holes[20:30, 20:30] = False
    noisy = g.copy()
    noisy[20:30, 20:30] = 1e6  # masked garbage must not count
    assert gradient_correlation(noisy, g, holes) == pytest.approx(1.0)


def test_scene_is_averaged_onto_the_reference_grid(tmp_path):
    """A prediction at 4x the DEM's resolution that is a scaled copy of the terrain scores perfectly once
    averaged onto the DEM grid; the per-pixel MAE is in 0..255 units of the whole scene."""
    fine = np.kron(hills(32), np.ones((4, 4)))
    dem = write(tmp_path / "dem.tif", hills(32), from_origin(400000, 4500000, 100, 100))
    pred = write(tmp_path / "pred.tif", 0.01 * fine + 5, from_origin(400000, 4500000, 25, 25))
    result = evaluate_scene(pred, dem)
    assert result["pixels"] == 32 * 32
    assert result["mae"] < 0.6 and result["ssim"] > 0.99 and result["grad_r"] > 0.99
    flipped = write(tmp_path / "flipped.tif", -fine, from_origin(400000, 4500000, 25, 25))
    assert evaluate_scene(flipped, dem)["mae"] > 50


def test_jackknife_says_how_much_one_part_of_the_scene_moves_the_figures(tmp_path):
    """A perfect map scores the same whichever block is left out (no spread); one with a corrupted ninth scores
    very differently with and without that ninth (a large spread), and the same map shifted and scaled as a whole
    keeps the spread (the figures are scale- and shift-invariant)."""
    grid = from_origin(400000, 4500000, 100, 100)
    dem = write(tmp_path / "dem.tif", hills(48), grid)
    same = scene_jackknife(write(tmp_path / "same.tif", hills(48), grid), dem)
    assert same["mae"] == pytest.approx(0.0, abs=1e-9) and same["ssim"] == pytest.approx(0.0, abs=1e-9)
    corrupted = hills(48)
    corrupted[:16, :16] = 5000.0  # a spike over one ninth stretches everything else flat
    spread = scene_jackknife(write(tmp_path / "bad.tif", corrupted, grid), dem)
    assert spread["mae"] > 10 and spread["ssim"] > 0.05
    rescaled = scene_jackknife(write(tmp_path / "rescaled.tif", 0.01 * corrupted - 3, grid), dem)
    assert rescaled["mae"] == pytest.approx(spread["mae"], rel=1e-3)


def test_difference_of_two_maps_of_one_scene(tmp_path):
    """Paired, block by block: a map against itself rescaled differs by nothing, with no spread; a map whose
    corner is wrong is worse than the right one, by the whole-scene figures' difference."""
    grid = from_origin(400000, 4500000, 100, 100)
    dem = write(tmp_path / "dem.tif", hills(48), grid)
    right = write(tmp_path / "right.tif", hills(48) + 5 * np.random.default_rng(0).random((48, 48)), grid)
    rescaled = write(tmp_path / "rescaled.tif", 0.5 * (hills(48) + 5 * np.random.default_rng(0).random((48, 48))),
                     grid)
    same = scene_difference(right, rescaled, dem)
    assert same["mae"][0] == pytest.approx(0.0, abs=1e-6) and same["mae"][1] == pytest.approx(0.0, abs=1e-6)
    wrong = hills(48)
    wrong[:12, :12] = hills(48)[:12, :12].max() + 200  # a plateau that is not there
    diff = scene_difference(write(tmp_path / "wrong.tif", wrong, grid), right, dem)
    expected = evaluate_scene(tmp_path / "wrong.tif", dem)["mae"] - evaluate_scene(right, dem)["mae"]
    assert diff["mae"][0] == pytest.approx(expected) and diff["mae"][0] > 5 and diff["mae"][1] > 0


def test_scene_without_crs_or_overlap_is_refused(tmp_path):
    dem = write(tmp_path / "dem.tif", hills(16), from_origin(400000, 4500000, 100, 100))
    elsewhere = write(tmp_path / "far.tif", hills(16), from_origin(900000, 4500000, 100, 100))
    with pytest.raises(InputError, match="fewer than 2 valid pixels"):
        evaluate_scene(elsewhere, dem)
    with rasterio.open(tmp_path / "bare.tif", "w", driver="GTiff", width=16, height=16, count=1,
                       dtype="float32") as dst:
        dst.write(hills(16).astype(np.float32), 1)
    with pytest.raises(InputError, match="georeferenced"):
        evaluate_scene(tmp_path / "bare.tif", dem)


def test_cli_whole_scene_mode(tmp_path, capsys):
    from d3rsmde.cli import main

    dem = write(tmp_path / "dem.tif", hills(32), from_origin(400000, 4500000, 100, 100))
    pred = write(tmp_path / "pred.tif", np.kron(hills(32), np.ones((2, 2))), from_origin(400000, 4500000, 50, 50))
    assert main(["evaluate", str(pred), str(dem), "--whole-scene", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "whole scene (1024 reference pixels" in printed and "standard error (each of 3 x 3 blocks" in printed
    report = __import__("json").loads((tmp_path / "m.json").read_text())
    assert report["scene"]["grad_r"] > 0.99 and report["scene"]["mae"] < 1
    assert report["scene_standard_error"]["mae"] < 1  # a right map is right in every part
    flat = write(tmp_path / "flat.tif", np.kron(hills(32), np.ones((2, 2)))[::-1].copy(),
                 from_origin(400000, 4500000, 50, 50))
    assert main(["evaluate", str(pred), str(dem), "--whole-scene", "--versus", str(flat),
                 "--json", str(tmp_path / "v.json")]) == 0
    assert "minus flat.tif, paired" in capsys.readouterr().out
    mae, se = __import__("json").loads((tmp_path / "v.json").read_text())["scene_minus_versus"]["mae"]
    assert mae < -20 and se > 0  # the right map beats the upside-down one
    assert main(["evaluate", str(pred), str(dem), "--versus", str(flat)]) == 2  # needs --whole-scene
    before = flat.read_bytes()
    assert main(["evaluate", str(pred), str(dem), "--whole-scene", "--versus", str(flat), "--json", str(flat)]) == 2
    assert flat.read_bytes() == before  # an input, never overwritten


def test_tile_difference_is_the_paired_mean_and_its_standard_error():
    """Per-tile figures of two models on the same tiles: the mean difference and std / sqrt(n) of the differences;
    a figure one side lacks gives None, a single tile no error, unequal tile lists an error."""
    def tiles(mae, ssim, lpips, grad_r):
        return [dict(zip(("mae", "ssim", "lpips", "grad_r"), values)) for values in zip(mae, ssim, lpips, grad_r)]

    rows = tiles([10.0, 14.0, 9.0], [0.5, 0.7, 0.6], [None] * 3, [0.2, 0.1, 0.3])
    other = tiles([12.0, 13.0, 12.0], [0.4, 0.4, 0.6], [0.3, 0.2, 0.1], [0.2, 0.3, 0.1])
    result = tile_difference(rows, other)
    diffs = np.array([-2.0, 1.0, -3.0])
    assert result["mae"] == pytest.approx((diffs.mean(), diffs.std(ddof=1) / np.sqrt(3)))
    assert result["ssim"][0] == pytest.approx(0.4 / 3) and result["lpips"] is None
    assert tile_difference(rows[:1], other[:1])["mae"] == (-2.0, None)
    with pytest.raises(InputError, match="same tiles"):
        tile_difference(rows, other[:2])
