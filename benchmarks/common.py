"""Shared benchmark plumbing: timing, memory, FLOPs, machine description and result files.

Every figure a benchmark reports goes through these helpers so that all tables are timed, synchronised and
labelled the same way.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from d3rsmde.files import atomic_file

# Dense tensor-core peaks (TFLOP/s) for 16-bit dtypes, from NVIDIA's data sheets; matched on the GPU name in
# order, so the more specific names come first. A GPU not listed gets no "% of peak" column unless given.
PEAK_TFLOPS_16BIT = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock time covers the computation, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds of each of `repeats` synchronised calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes the caching allocator handed out since the last reset; None off the GPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """What a reader needs to judge or reproduce a figure: accelerator, CPU, software, precision, load."""
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def machine_line(machine: dict) -> str:
    """One markdown line naming the machine, for the head of every table."""
    where = f"{machine['gpu']} (CUDA {machine['cuda']})" if "gpu" in machine else f"CPU {machine['cpu']}"
    return (
        f"Machine: {where}; {machine['cpu_count']} CPU cores ({machine['cpu']}), {machine['torch_threads']} torch "
        f"threads, load average {machine['load_average_1min']}; torch {machine['torch']}, dtype {machine['dtype']}."
    )


def default_peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's dense 16-bit peak when the name is known and the run is 16-bit; None otherwise."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS_16BIT if key in name), None)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 3) -> str | None:
    """Significant-digit formatting that keeps large values whole and leaves missing ones blank."""
    if value is None:
        return None
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def figure_class():
    """matplotlib's Figure, or None where matplotlib is missing (a bare GPU image): the tables are still written."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(temp_path) and publish what it wrote as `path` (:func:`d3rsmde.files.atomic_file`): readers never
    see half a file. The folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write(str(tmp))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_results(out_dir: str | os.PathLike, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into out_dir; returns both paths."""
    out = Path(out_dir)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_text(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    write_text(md_path, markdown)
    return json_path, md_path


def load_ours(weights: str | os.PathLike | None = None, config: str | None = None):
    """Our pipeline on the CPU and a line saying what it is: `config` (random weights), `weights`, else the
    shipped weights, else the "small" config with random weights (the same cost: cost does not depend on
    weight values)."""
    from d3rsmde.errors import CheckpointError
    from d3rsmde.pipeline import D3Pipeline
    from d3rsmde.weights import default_weights_path

    if config:
        return D3Pipeline.from_config(config), f"config {config} (random weights)"
    if weights is None:
        try:
            weights = default_weights_path()
        except CheckpointError:
            return D3Pipeline.from_config("small"), "config small (random weights; no shipped weights found)"
    return D3Pipeline.from_pretrained(weights, device="cpu"), f"weights {weights}"


def pipeline_precision(pipe, device: torch.device) -> str:
    """How our pipeline computes on `device`: it picks its own autocast dtype (d3rsmde.device.autocast_dtype)."""
    from d3rsmde.device import autocast_dtype

    policy = autocast_dtype(device)
    weights = str(pipe.dtype).replace("torch.", "")
    return f"{str(policy).replace('torch.', '')} autocast, {weights} weights" if policy else weights
