"""The CUDA paths no CPU run exercises: fp16/bf16 autocast, channels-last on cuDNN, a DDP step over NCCL, and
whole-raster prediction on the GPU. All skipped without CUDA; ``benchmarks/gpu_check.sh`` runs them on a GPU.

Each compares against the float32 CPU result of the bundled weights on smooth synthetic terrain, where a real
model's output is stable: bf16/fp16 autocast of the same model agrees to about 3e-3 mean absolute difference on
a CPU (bf16 there), so 1e-2 leaves room for other kernels without letting a broken path (NaN, overflow, a wrong
layout) through.
"""

import numpy as np
import pytest
import torch

import d3rsmde.pipeline as pipeline_module
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.weights import default_weights_path
from synthetic import render
from test_raster import read, terrain_m, write

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cpu_pipe():
    return D3Pipeline.from_pretrained(default_weights_path(), device="cpu")


@pytest.fixture(scope="module")
def tiles(cpu_pipe):
    """Six tiles of rendered smooth terrain at the bundled model's tile size."""
    t = cpu_pipe.config.tile_size
    image = render(terrain_m(3 * t, 3 * t))
    return torch.from_numpy(np.stack([image[:, r : r + t, c : c + t] for r in (0, t, 2 * t) for c in (0, t)]))


@pytest.fixture(scope="module")
def cpu_result(cpu_pipe, tiles):
    return cpu_pipe(tiles)


def assert_close_to(result: torch.Tensor, reference: torch.Tensor, mean_tol: float = 1e-2) -> None:
    result = result.float().cpu()
    assert result.shape == reference.shape and torch.isfinite(result).all()
    assert result.min() >= 0 and result.max() <= 1
    assert (result - reference).abs().mean() < mean_tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_paths_agree_with_float32(monkeypatch, tiles, cpu_result, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setattr(pipeline_module, "autocast_dtype", lambda device: dtype)
    pipe = D3Pipeline.from_pretrained(default_weights_path(), device="cuda")
    assert_close_to(pipe(tiles), cpu_result)


def test_channels_last_on_cuda_changes_layout_not_results(monkeypatch, tiles):
    monkeypatch.setattr(pipeline_module, "autocast_dtype", lambda device: None)  # float32: compare layouts only
    placed = D3Pipeline.from_pretrained(default_weights_path(), device="cuda")
    conv = placed.codec.vae.encoder.conv_in.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = D3Pipeline.from_pretrained(default_weights_path(), device="cuda")
    for m in (plain.coarse, plain.codec, plain.refiner):
        m.to(memory_format=torch.contiguous_format)
    assert plain.codec.vae.encoder.conv_in.weight.is_contiguous()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # TF32 would differ between algorithms
        torch.testing.assert_close(placed(tiles), plain(tiles), atol=1e-4, rtol=0)


def test_ddp_step_over_nccl_on_one_gpu(tmp_path):
    """One bf16 training step of the coarse model through DistributedDataParallel with the NCCL backend."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from d3rsmde.config import get_config
    from d3rsmde.models import CoarseDepthModel

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = CoarseDepthModel(get_config("tiny").coarse, img_size=64).cuda()
        before = [p.detach().clone() for p in model.parameters()]
        ddp = DistributedDataParallel(model, device_ids=[0])
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        x, target = torch.rand(2, 3, 64, 64, device="cuda"), torch.rand(2, 1, 64, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_bf16_supported()):
            loss = torch.nn.functional.mse_loss(ddp(x).float(), target)
        loss.backward()
        optimizer.step()
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)
        assert torch.isfinite(loss) and total.item() == 1.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    finally:
        dist.destroy_process_group()


def test_predict_raster_on_cuda_matches_cpu(tmp_path):
    src = write(tmp_path / "in.tif", (render(terrain_m(300, 420)) * 255).astype(np.uint8))
    gpu = D3Pipeline.from_pretrained(default_weights_path(), device="cuda")
    stats = predict_raster(src, tmp_path / "gpu.tif", gpu)
    predict_raster(src, tmp_path / "cpu.tif", D3Pipeline.from_pretrained(default_weights_path(), device="cpu"))
    assert stats["device"].startswith("cuda") and stats["batch_size"] >= 1
    out, ref = read(tmp_path / "gpu.tif"), read(tmp_path / "cpu.tif")
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - ref).mean() < 2e-2
