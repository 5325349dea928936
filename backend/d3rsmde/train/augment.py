"""Training-time augmentation of tile items (dicts of ``C x H x W`` tensors): every map of an item is moved the
same way, so image, depth and mask stay aligned."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


def _spatial(item: dict) -> dict[str, Tensor]:
    """The ``C x H x W`` tensors of ``item``: the maps an augmentation moves."""
    return {k: v for k, v in item.items() if isinstance(v, Tensor) and v.dim() == 3}


def flip_rotate(item: dict, generator: torch.Generator | None = None) -> dict:
    """The same random flip and quarter turn on every ``C x H x W`` tensor of ``item`` (turns only if square).

    Terrain seen from above has no preferred orientation, so these are free extra training samples.
    """
    spatial = _spatial(item)
    if not spatial:
        return item
    h, w = next(iter(spatial.values())).shape[-2:]
    turns = int(torch.randint(4 if h == w else 1, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    out = dict(item)
    for key, value in spatial.items():
        value = torch.rot90(value, turns, dims=(-2, -1))
        out[key] = value.flip(-1) if flip else value
    return out


def random_crop(item: dict, size: int, generator: torch.Generator | None = None) -> dict:
    """The same random ``size`` x ``size`` window of every ``C x H x W`` tensor of ``item``: fully convolutional
    stages (the VAE) learn as well from crops and cost far less per step; smaller tiles are used whole."""
    spatial = _spatial(item)
    if not spatial:
        return item
    h, w = next(iter(spatial.values())).shape[-2:]
    if size >= min(h, w):  # tiles no larger than the crop are used whole
        return item
    y = int(torch.randint(h - size + 1, (1,), generator=generator))
    x = int(torch.randint(w - size + 1, (1,), generator=generator))
    return {**item, **{k: v[..., y:y + size, x:x + size] for k, v in spatial.items()}}


class Augmented(Dataset):
    """``dataset`` with :func:`flip_rotate` applied to each item (``flip``) and/or a random ``crop`` x ``crop``
    window cut from it."""

    def __init__(self, dataset: Dataset, flip: bool = True, crop: int | None = None):
        self.dataset, self.flip, self.crop = dataset, flip, crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if self.crop:
            item = random_crop(item, self.crop)
        return flip_rotate(item) if self.flip else item
