"""Device and precision choice, in one place so the CLI, the plugin and training agree."""

from __future__ import annotations

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
    """Mixed precision for inference: bf16 on GPUs that have it (no overflow in the VAE), else fp16; CPU: None."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def describe_device(device: str | torch.device = "auto") -> str:
    """One human line: the GPU's name and memory, or the CPU and how many threads torch uses."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return f"CPU ({torch.get_num_threads()} threads)"
