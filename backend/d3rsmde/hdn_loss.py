"""Hierarchical depth normalisation (HDN) loss, the coarse model's only training signal.

A scale-and-shift-invariant L1 evaluated in many contexts at once (Zhang et al. 2022): the whole tile, halves and
quarters of its height range, of its height quantiles and of its area. Local contexts keep fine relief from being
drowned by the tile's total range, which a single global normalisation would do.

Everything is one sort per context level, so the loss stays cheap enough to run every training step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError

LEVELS = (1, 2, 4)


def hdn_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """HDN loss of ``pred`` against ``gt`` (both ``B x 1 x H x W`` or ``B x H x W``); scalar.

    Contexts come from ``gt``: depth-range bins (1, 2, 4 equal bins of [min, max]), depth-quantile bins (1, 2, 4)
    and a spatial grid (1x1, 2x2, 4x4). In each context ``N(d) = (d - median) / mean|d - median|``; the per-pixel
    ``|N(gt) - N(pred)|`` is averaged over the contexts holding the pixel, then over valid pixels; the three
    strategies are averaged, then the samples. Pixels outside ``mask`` (or with non-finite ``gt``) are ignored.
    """
    if pred.shape != gt.shape:
        raise InputError(f"hdn_loss: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if gt.dim() not in (3, 4) or (gt.dim() == 4 and gt.shape[1] != 1):
        raise InputError(f"hdn_loss expects B x 1 x H x W or B x H x W maps, got {tuple(gt.shape)}")
    batch = gt.shape[0]
    height, width = gt.shape[-2:]
    g = gt.reshape(batch, -1).float()
    p = pred.reshape(batch, -1).float()
    valid = torch.isfinite(g)
    if mask is not None:
        if mask.numel() != g.numel():
            raise InputError(f"hdn_loss: mask {tuple(mask.shape)} does not match maps {tuple(gt.shape)}")
        valid = valid & mask.reshape(batch, -1).bool()
    # Values outside the mask must reach neither the statistics nor the gradient.
    g = torch.where(valid, g, torch.zeros_like(g))
    p = torch.where(valid, p, torch.zeros_like(p))
    count = valid.sum(1)

    g_order = torch.argsort(torch.where(valid, g, torch.full_like(g, float("inf"))), dim=1)
    p_order = torch.argsort(p, dim=1)
    strategies = (
        _range_labels(g, valid, eps),
        _quantile_labels(g_order, valid, count),
        _grid_labels(batch, height, width, valid),
    )
    per_pixel = torch.zeros_like(g)
    for levels in strategies:
        errors = [
            (_normalise(g, g_order, labels, k, eps) - _normalise(p, p_order, labels, k, eps)).abs()
            for labels, k in levels
        ]
        # Every valid pixel lies in exactly one context per level, so this is the mean over its contexts.
        per_pixel = per_pixel + torch.stack(errors).mean(0) / len(strategies)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    has_pixels = count > 0
    if not bool(has_pixels.any()):
        return (p * 0).sum()
    per_sample = per_pixel.sum(1)[has_pixels] / count[has_pixels]
    return per_sample.mean()


def _normalise(d: Tensor, order: Tensor, labels: Tensor, k: int, eps: float) -> Tensor:
    """``(d - median) / mean|d - median|`` inside each context; ``labels`` in ``[0, k]``, ``k`` = ignored pixels.

    ``order`` sorts ``d``; a stable sort by label then yields every context's values in order, so each median is
    one gather (the lower median for even counts, like ``torch.median``).
    """
    n = d.shape[1]
    by_label = torch.sort(labels.gather(1, order), dim=1, stable=True).indices
    sorted_pixels = order.gather(1, by_label)
    sizes = torch.zeros(d.shape[0], k + 1, dtype=torch.long, device=d.device)
    sizes.scatter_add_(1, labels, torch.ones_like(labels))
    starts = sizes.cumsum(1) - sizes
    middle = (starts + (sizes - 1).clamp_min(0) // 2).clamp_max(n - 1)
    median = d.gather(1, sorted_pixels.gather(1, middle))
    deviation = d - median.gather(1, labels)
    spread = torch.zeros_like(median).scatter_add(1, labels, deviation.abs()) / sizes.clamp_min(1)
    return deviation / spread.gather(1, labels).clamp_min(eps)


def _ignored(labels: Tensor, valid: Tensor, k: int) -> tuple[Tensor, int]:
    return torch.where(valid, labels, torch.full_like(labels, k)), k


def _range_labels(g: Tensor, valid: Tensor, eps: float) -> list[tuple[Tensor, int]]:
    """1, 2, 4 equal-width bins of each sample's valid height range."""
    low = torch.where(valid, g, torch.full_like(g, float("inf"))).amin(1, keepdim=True)
    high = torch.where(valid, g, torch.full_like(g, float("-inf"))).amax(1, keepdim=True)
    unit = ((g - low) / (high - low).clamp_min(eps)).nan_to_num(0.0)
    return [_ignored((unit * k).long().clamp(0, k - 1), valid, k) for k in LEVELS]


def _quantile_labels(g_order: Tensor, valid: Tensor, count: Tensor) -> list[tuple[Tensor, int]]:
    """1, 2, 4 equal-count bins of each sample's valid heights (``g_order`` puts invalid pixels last)."""
    positions = torch.arange(g_order.shape[1], device=g_order.device).expand_as(g_order)
    rank = torch.empty_like(g_order).scatter_(1, g_order, positions)
    total = count.clamp_min(1).unsqueeze(1)
    return [_ignored((rank * k // total).clamp_max(k - 1), valid, k) for k in LEVELS]


def _grid_labels(batch: int, height: int, width: int, valid: Tensor) -> list[tuple[Tensor, int]]:
    """1x1, 2x2, 4x4 grids of cells over the tile."""
    rows = torch.arange(height, device=valid.device)
    cols = torch.arange(width, device=valid.device)
    levels = []
    for k in LEVELS:
        cell = (rows * k // height).unsqueeze(1) * k + (cols * k // width).unsqueeze(0)
        levels.append(_ignored(cell.reshape(1, -1).expand(batch, -1), valid, k * k))
    return levels
