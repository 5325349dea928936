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


def photometric_jitter(item: dict, strength: float, generator: torch.Generator | None = None) -> dict:
    """``item`` with its image (``3 x H x W`` in [0, 1]) given a random gamma (x0.67-1.49 at ``strength`` 1),
    contrast about its mean (x0.6-1.4), brightness (+-0.15) and gain per band (+-10 %), all scaled by ``strength``.
    How bright a tile is depends on sun, season, haze, land cover and the raster's stretch more than on its heights
    (measured as the model card's stage 17: not used by the default weights)."""
    if strength <= 0 or "image" not in item:
        return item

    def uniform(n: int) -> Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * strength

    image = item["image"].clamp(0, 1) ** torch.exp(0.4 * uniform(1))
    mean = image.mean(dim=(-2, -1), keepdim=True)
    image = (image - mean) * (1 + 0.4 * uniform(1)) + mean + 0.15 * uniform(1)
    return {**item, "image": (image * (1 + 0.1 * uniform(3))[:, None, None]).clamp(0, 1)}


class Augmented(Dataset):
    """``dataset`` with :func:`flip_rotate` applied to each item (``flip``), a random ``crop`` x ``crop`` window
    cut from it and/or its image jittered (:func:`photometric_jitter` at ``photometric``)."""

    def __init__(self, dataset: Dataset, flip: bool = True, crop: int | None = None, photometric: float = 0.0):
        self.dataset, self.flip, self.crop, self.photometric = dataset, flip, crop, photometric

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if self.crop:
            item = random_crop(item, self.crop)
        item = photometric_jitter(item, self.photometric)
        return flip_rotate(item) if self.flip else item
