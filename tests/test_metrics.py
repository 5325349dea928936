"""depth_metrics against values worked out by hand, an independent SSIM, and the LPIPS availability logic."""

import math

import numpy as np
import pytest
import torch

from d3rsmde.errors import InputError
from d3rsmde.metrics import alexnet_weights_path, depth_metrics, format_metrics_table, ssim

# Both maps already span exactly 0..255, so the per-tile stretch leaves them unchanged.
GT = np.array([[0, 100, 200], [100, 50, 255]], float)
PRED = np.array([[0, 120, 150], [190, 50, 255]], float)
# ratios: 0/0 (fails), 1.2 (<1.25), 1.333 (<1.25^2), 1.9 (<1.25^3), 1, 1


@pytest.fixture(autouse=True)
def no_alexnet(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("D3RSMDE_SOURCES", str(tmp_path / "sources"))  # no converted LPIPS file either


def test_hand_computed_values():
    m = depth_metrics(PRED, GT)
    assert m["mae"] == pytest.approx(160 / 6)
    assert m["rmse"] == pytest.approx(math.sqrt(11000 / 6))
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 * 6 / 11000))
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((3 / 6, 4 / 6, 5 / 6))
    assert 0 < m["ssim"] < 1


def test_each_map_is_stretched_and_rounded():
    # Any positive scale and shift of either map changes nothing; 2x2 ramp -> 0, 85, 170, 255.
    assert depth_metrics(PRED * 3.7 + 812, torch.tensor(GT / 255 - 4)) == depth_metrics(PRED, GT)
    m = depth_metrics(np.array([[0, 2], [1, 3]]), np.array([[10, 11], [12, 13]]))
    assert m["mae"] == pytest.approx(42.5)  # |85 - 170| on two of four pixels
    assert m["delta1"] == m["delta3"] == pytest.approx(0.25)  # 0/0 fails, 170/85 = 2 fails, 255/255 passes


def test_identical_maps():
    gt = np.random.default_rng(0).random((1, 40, 40)) + 1
    gt[0, 3, 7] = 0  # the only pixel that stretches to 0
    m = depth_metrics(gt, gt)
    assert m["mae"] == 0 and m["rmse"] == 0 and m["psnr"] == math.inf
    assert m["delta1"] == pytest.approx(1 - 1 / 1600)  # the single zero pixel (the minimum) counts as a failure
    assert m["ssim"] == pytest.approx(1.0)


def test_mask_excludes_pixels():
    mask = np.array([[True, True, True], [False, True, True]])
    base = depth_metrics(PRED, GT, mask)
    garbage = PRED.copy()
    garbage[1, 0] = np.nan
    assert depth_metrics(garbage, GT, mask)["mae"] == base["mae"]
    assert base["mae"] == pytest.approx(70 / 5)  # the excluded pixel was 90 off
    with pytest.raises(InputError):
        depth_metrics(PRED, GT, np.zeros_like(mask))
    with pytest.raises(InputError):
        depth_metrics(PRED, GT[:, :2])


def test_ssim_matches_explicit_window():
    rng = np.random.default_rng(1)
    a = np.round(rng.random((16, 18)) * 255)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255)
    x = np.arange(-5, 6)
    w = np.exp(-(x**2) / (2 * 1.5**2))
    kernel = np.outer(w, w) / np.outer(w, w).sum()

    def blur(img):
        padded = np.pad(img, 5, mode="symmetric")
        return np.array(
            [[(padded[i : i + 11, j : j + 11] * kernel).sum() for j in range(img.shape[1])] for i in range(img.shape[0])]
        )

    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    smap = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    assert ssim(a, b) == pytest.approx(smap[5:-5, 5:-5].mean(), rel=1e-9)


def test_lpips_unavailable_without_local_weights():
    m = depth_metrics(PRED, GT)
    assert m["lpips"] is None and m["lpips_status"].startswith("unavailable")
    big = np.random.default_rng(2).random((40, 40))
    m = depth_metrics(big, big)
    assert m["lpips"] is None and str(alexnet_weights_path()) in m["lpips_status"]


def test_lpips_runs_with_local_weights():
    # A random AlexNet stands in for the real download: the code path is the same, values are not meaningful.
    import torchvision

    path = alexnet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save({k: v.half() for k, v in torchvision.models.alexnet().state_dict().items()}, path)
    rng = np.random.default_rng(3)
    gt = rng.random((40, 40))
    same = depth_metrics(gt, gt)
    other = depth_metrics(rng.random((40, 40)), gt)
    assert "lpips_status" not in same
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert other["lpips"] > 0


def test_format_metrics_table():
    table = format_metrics_table({"coarse": depth_metrics(PRED, GT), "refined": {"mae": 1.0}})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| model | MAE")
    assert "| coarse | 26.67 | 42.82 | 0.500 | 0.667 | 0.833 | 15.50 |" in lines[2]
    assert lines[2].endswith("| n/a | n/a |") and lines[3].count("n/a") == 8  # no LPIPS; ∇r needs 3x3
