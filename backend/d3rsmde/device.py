"""Device, precision and memory: which device, which autocast type, how many tiles per batch, and what an
allocation failure looks like, in one place so the CLI, the plugin, the raster engine, training and the benchmarks
agree."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; "cuda" (or "cuda:N") without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but this PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise InputError(f"bad device {device!r}: {e}") from e
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for inference: bf16 on GPUs that have it (no overflow in the VAE), else fp16; on CPUs bf16
    only where they compute it natively (emulated bf16 is slower than float32), else None."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when oneDNN is in this torch and the CPU has AVX512-BF16 or AMX-BF16 (Linux: /proc/cpuinfo flags).

    There whole rasters run 1.6x faster in bf16 on a 2-core EPYC (Zen 4, AVX512-BF16) and the bundled model's
    relative heights agree with float32 to 0.005 on average (benchmarks/results/cpu-2core/bf16.md); anywhere else
    float32, silently.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


CPU_BATCH_PIXELS = 8 * 256 * 256


def default_batch_size(device: str | torch.device, tile: int) -> int:
    """Tiles of ``tile`` px per inference batch: what half the free GPU memory holds (about 8 KB per pixel at
    inference); on a CPU, half a megapixel (8 tiles of 256 px), where fewer, larger kernels keep both threads of a
    2-core machine busier: batch 2 -> 8 ran 1.48x faster with identical output, lean model, 2 MP
    (benchmarks/results/cpu-2core/batch-lean.md)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(max(free // 2 // (8192 * tile * tile), 1), 16))
    return int(min(max(CPU_BATCH_PIXELS // (tile * tile), 1), 8))


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: numpy's MemoryError, CUDA's OutOfMemoryError or the CPU allocator's RuntimeError."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def describe_device(device: str | torch.device = "auto") -> str:
    """One human line: the GPU's name and memory, or the CPU and how many threads torch uses."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return f"CPU ({torch.get_num_threads()} threads)"
