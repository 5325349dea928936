"""Which precision inference runs in: bf16 autocast on CPUs that compute it natively (AVX512-BF16 or AMX), float32
on other CPUs; the bundled model's bf16 output agrees with float32 where bf16 is used."""

from pathlib import Path

import numpy as np
import pytest
import torch

import d3rsmde.device
import d3rsmde.pipeline as pipeline_module
from d3rsmde.device import autocast_dtype, cpu_has_native_bf16
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.weights import default_weights_path
from synthetic import render
from test_raster import terrain_m

CPU = torch.device("cpu")


def cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def test_cpu_bf16_only_where_native(monkeypatch):
    native = bool(cpuinfo_flags() & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
    assert cpu_has_native_bf16() == native  # the real check (conftest pins the patched one to False)
    monkeypatch.setattr(d3rsmde.device, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(CPU) == torch.bfloat16
    monkeypatch.setattr(d3rsmde.device, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(CPU) is None
    assert autocast_dtype(torch.device("meta")) is None


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_on_this_cpu_agrees_with_float32(monkeypatch):
    pipe = D3Pipeline.from_pretrained(default_weights_path(), device="cpu")
    t = pipe.config.tile_size
    image = render(terrain_m(2 * t, 2 * t))
    tiles = torch.from_numpy(np.stack([image[:, r : r + t, c : c + t] for r in (0, t) for c in (0, t)]))
    float32 = pipe(tiles)
    monkeypatch.setattr(d3rsmde.device, "cpu_has_native_bf16", lambda: True)
    assert pipeline_module.autocast_dtype(pipe.device) == torch.bfloat16
    bf16 = pipe(tiles)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert 0 < (bf16 - float32).abs().mean() < 1e-2  # bf16 really ran, and agrees
