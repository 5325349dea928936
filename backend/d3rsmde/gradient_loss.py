"""Multi-scale gradient matching (Ranftl et al., MiDaS): a loss on slopes beside the HDN loss on heights.

The HDN loss compares normalised heights; a map that puts a ridge a few pixels off, or rounds a valley wall into a
gentle slope, costs it little. This loss compares the finite differences of the normalised error at 1, 1/2, 1/4
and 1/8 scale, so slopes must lie where the reference's lie and be as steep (the whole-scene gradient correlation
that the model card reports).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError

SCALES = 4


def gradient_matching_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None, scales: int = SCALES,
                           eps: float = 1e-6) -> Tensor:
    """Mean over samples of ``sum_k mean |grad_x R_k| + |grad_y R_k|``, ``R_k`` the difference of the two maps
    (each ``(d - median) / mean|d - median|`` over its valid pixels) subsampled by ``2**k``; scalar.

    ``pred`` and ``gt`` are ``B x 1 x H x W`` or ``B x H x W``; a difference counts only where both of its pixels
    are valid (in ``mask`` and finite in ``gt``), so nothing outside the mask reaches the value or the gradient.
    """
    if pred.shape != gt.shape:
        raise InputError(f"gradient_matching_loss: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if gt.dim() not in (3, 4) or (gt.dim() == 4 and gt.shape[1] != 1):
        raise InputError(f"gradient_matching_loss expects B x 1 x H x W or B x H x W maps, got {tuple(gt.shape)}")
    batch, (height, width) = gt.shape[0], gt.shape[-2:]
    g = gt.reshape(batch, height, width).float()
    p = pred.reshape(batch, height, width).float()
    valid = torch.isfinite(g)
    if mask is not None:
        if mask.numel() != g.numel():
            raise InputError(f"gradient_matching_loss: mask {tuple(mask.shape)} does not match maps {tuple(gt.shape)}")
        valid = valid & mask.reshape(batch, height, width).bool()
    residual = torch.where(valid, _normalise(p, valid, eps) - _normalise(g, valid, eps), torch.zeros_like(p))
    total = torch.zeros(batch, device=p.device)
    for k in range(scales):
        r, v = residual[:, :: 2**k, :: 2**k], valid[:, :: 2**k, :: 2**k]
        dx = (r[:, :, 1:] - r[:, :, :-1]).abs() * (v[:, :, 1:] & v[:, :, :-1])
        dy = (r[:, 1:, :] - r[:, :-1, :]).abs() * (v[:, 1:, :] & v[:, :-1, :])
        total = total + (dx.sum((1, 2)) + dy.sum((1, 2))) / v.sum((1, 2)).clamp(min=1)
    return total.mean()


def _normalise(d: Tensor, valid: Tensor, eps: float) -> Tensor:
    """``(d - median) / mean|d - median|`` per sample over its valid pixels (the HDN loss's whole-tile context)."""
    flat = torch.where(valid, d, torch.full_like(d, float("nan"))).flatten(1)
    median = flat.nanmedian(dim=1).values.nan_to_num(0.0)[:, None, None]
    centred = torch.where(valid, d - median, torch.zeros_like(d))
    spread = centred.abs().sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)
    return centred / (spread[:, None, None] + eps)
