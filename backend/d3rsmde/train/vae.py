"""Stage 0: the autoencoder behind the latent codec, trained on RGB tiles AND height tiles, each prepared exactly
as :class:`~d3rsmde.vae.LatentCodec` encodes them, since the refiner works on both kinds of latent.

No pretrained SD VAE can be downloaded here, so it is trained from scratch: L1 reconstruction, L1 of the
reconstruction's finite differences (an L1 autoencoder alone smooths slopes away, and slopes are what a height map
is read for), plus a small KL term (AutoencoderKL only) that keeps the latent space smooth. It trains on 128-pixel
crops (it is convolutional; a 256 tile costs ten times a 128 crop on a CPU) and is frozen afterwards.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..vae import minmax_per_tile
from ..progress import Cancel, Progress
from .common import TrainSettings, fit

VAE_SETTINGS = TrainSettings(lr=1e-4, weight_decay=1e-2, plateau_factor=0.5, plateau_patience=5, crop=128)
KL_WEIGHT = 1e-6  # the Stable Diffusion VAE's value: enough to regularise, too small to blur


class Autoencoding(nn.Module):
    """``forward(x)`` -> (reconstruction, KL per sample); a module so DDP sees one forward per step."""

    def __init__(self, vae: AutoencoderKL | AutoencoderTiny):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.vae, AutoencoderTiny):
            return self.vae.decode(self.vae.encode(x).latents).sample, torch.zeros(len(x), device=x.device)
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


def vae_inputs(batch: dict) -> tuple[Tensor, Tensor]:
    """Images and heights of ``batch`` as the codec feeds them, stacked, in [-1, 1] (3 channels), with the
    per-pixel weights of the reconstruction loss (0 on nodata heights)."""
    images = minmax_per_tile(batch["image"]) * 2 - 1
    mask = batch["mask"]
    depth = torch.where(mask, minmax_per_tile(batch["depth"], mask), torch.full_like(batch["depth"], 0.5))
    x = torch.cat([images, (depth * 2 - 1).expand(-1, 3, -1, -1)])
    weight = torch.cat([torch.ones_like(mask), mask]).float()
    return x, weight


def vae_loss(model: nn.Module, batch: dict, kl_weight: float = KL_WEIGHT) -> Tensor:
    x, weight = vae_inputs(batch)
    recon, kl = model(x)
    err = recon.float() - x
    l1 = (err.abs() * weight).sum() / (weight.sum() * x.shape[1]).clamp_min(1.0)
    return l1 + _gradient_l1(err, weight) + kl_weight * kl.float().mean()


def _gradient_l1(err: Tensor, weight: Tensor) -> Tensor:
    """Mean L1 of the error's horizontal and vertical differences over pixel pairs whose both ends are valid."""
    total = err.new_zeros(())
    for dim in (-1, -2):
        n = err.shape[dim] - 1
        d = err.narrow(dim, 1, n) - err.narrow(dim, 0, n)
        w = weight.narrow(dim, 1, n) * weight.narrow(dim, 0, n)
        total = total + (d.abs() * w).sum() / (w.sum() * err.shape[1]).clamp_min(1.0)
    return total


def train_vae(
    vae: AutoencoderKL | AutoencoderTiny,
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    *,
    settings: TrainSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **overrides,
) -> list[dict]:
    """Train ``vae`` (e.g. ``pipeline.codec.vae``) in place, then freeze it again; ``overrides`` change
    :data:`VAE_SETTINGS` fields. Returns the per-epoch history."""
    settings = (settings or VAE_SETTINGS).replace(**overrides)
    vae.requires_grad_(True)
    try:
        return fit(Autoencoding(vae), vae_loss, train_ds, val_ds, settings=settings, work_dir=work_dir,
                   name="vae", progress=progress, cancel=cancel)
    finally:
        vae.requires_grad_(False)
        vae.eval()
