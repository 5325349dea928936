"""Stage 0: the autoencoder behind the latent codec, trained on RGB tiles AND height tiles, each prepared exactly
as :class:`~d3rsmde.vae.LatentCodec` encodes them, since the refiner works on both kinds of latent; and, after
everything else, an optional narrower decoder for height maps alone (:func:`train_depth_decoder`).

No pretrained SD VAE can be downloaded here, so it is trained from scratch: L1 reconstruction, L1 of the
reconstruction's finite differences (an L1 autoencoder alone smooths slopes away, and slopes are what a height map
is read for), plus a small KL term (AutoencoderKL only) that keeps the latent space smooth. It trains on 128-pixel
crops (it is convolutional; a 256 tile costs ten times a 128 crop on a CPU) and is frozen afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import InputError
from ..progress import Cancel, Progress
from ..vae import build_depth_decoder, minmax_per_tile
from .common import TrainSettings, fit

VAE_SETTINGS = TrainSettings(lr=1e-4, weight_decay=1e-2, plateau_factor=0.5, plateau_patience=5, crop=128)
KL_WEIGHT = 1e-6  # the Stable Diffusion VAE's value: enough to regularise, too small to blur
# Default widths of a distilled height-map decoder: half the lean VAE's at the finest levels, one residual block
# per level (T = 6 tile on a 2-core CPU 126 -> 101 ms; not in the shipped weights: see the README, Performance).
DEPTH_DECODER_CHANNELS = (8, 16, 32, 64)


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


class DecoderDistillation(nn.Module):
    """``forward(batch)`` -> (student heights, teacher heights) on the latents a pipeline decodes: each batch's
    images refined with 1..T steps from the pipeline's own coarse maps, plus the encoded true heights.

    Only ``student`` (the pipeline's VAE, holding the new decoder) is a submodule: the frozen teacher and the rest
    of the pipeline stay in eval mode and out of the training checkpoints.
    """

    def __init__(self, pipeline, teacher: AutoencoderKL):
        super().__init__()
        self.student = pipeline.codec.vae
        self._frozen = (pipeline, teacher)

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        pipeline, teacher = self._frozen
        if torch.rand(()) < 0.5:
            batch = mirrored_border(batch)
        images = batch["image"]
        steps = int(torch.randint(1, pipeline.config.num_steps + 1, ()))
        with torch.no_grad():
            coarse = pipeline.coarse_depth(images)
            mask = batch["mask"]
            truth = torch.where(mask, minmax_per_tile(batch["depth"], mask), coarse)
            scale = pipeline.codec.scaling_factor
            z = torch.cat([pipeline.refine_latents(images, coarse, steps),
                           pipeline.codec.encode_depth(truth.to(pipeline.dtype))]).float() / scale
            target = teacher.decode(z).sample.float().mean(1, keepdim=True)
        return self.student.decode(z).sample.float().mean(1, keepdim=True), target


def mirrored_border(batch: dict, most: float = 0.5) -> dict:
    """``batch`` as the raster engine sees a raster's border: each map cut by a random width (up to ``most`` of
    the tile) on one side and one end, and mirrored back to full size, as a tile overhanging the raster is."""
    size = batch["image"].shape[-1]
    cut = int(torch.randint(size // 16, int(size * most), ()))  # reflection needs cut < the inner size
    left, top = (int(v) for v in torch.randint(0, 2, (2,)))
    pad = (cut * left, cut * (1 - left), cut * top, cut * (1 - top))
    inner = (slice(None), slice(None), slice(pad[2], size - pad[3]), slice(pad[0], size - pad[1]))
    out = dict(batch)
    for key in ("image", "depth", "mask"):
        maps = batch[key][inner]
        out[key] = F.pad(maps.float(), pad, mode="reflect").to(batch[key].dtype)
    return out


def decoder_distillation_loss(model: nn.Module, batch: dict) -> Tensor:
    """L1 plus L1 of the finite differences (as :func:`vae_loss`) between student and teacher heights."""
    student, teacher = model(batch)
    err = student - teacher
    weight = torch.ones_like(err)
    return err.abs().mean() + _gradient_l1(err, weight)


def train_depth_decoder(
    pipeline,
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    *,
    channels: tuple[int, ...] = DEPTH_DECODER_CHANNELS,
    layers_per_block: int = 0,
    settings: TrainSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **overrides,
) -> list[dict]:
    """Give ``pipeline`` (a trained :class:`~d3rsmde.pipeline.D3Pipeline`, changed in place) a decoder of
    ``channels`` widths distilled from its own: the new one learns to draw what the old one draws from the latents
    the pipeline decodes (:class:`DecoderDistillation`), so results stay those of the validated model, faster.
    The encoder, the coarse model and the refiner are untouched. Settings as :func:`train_vae`'s."""
    if pipeline.config.vae.depth_decoder_channels:
        raise InputError("these weights already have a height-map decoder; start from the weights with the VAE's "
                         "own decoder, which teaches the new one")
    cfg = dataclasses.replace(pipeline.config.vae, depth_decoder_channels=tuple(channels),
                              depth_decoder_layers_per_block=layers_per_block)
    vae = pipeline.codec.vae
    student = build_depth_decoder(cfg).to(next(vae.parameters()).device)
    teacher = copy.deepcopy(vae).eval()
    vae.decoder = student
    pipeline.config = dataclasses.replace(pipeline.config, vae=cfg)
    settings = (settings or VAE_SETTINGS).replace(**overrides)
    trainable = [vae.decoder, vae.post_quant_conv] if vae.post_quant_conv is not None else [vae.decoder]
    for module in trainable:
        module.requires_grad_(True)
    pipeline.eval()
    try:
        return fit(DecoderDistillation(pipeline, teacher), decoder_distillation_loss, train_ds, val_ds,
                   settings=settings, work_dir=work_dir, name="depth decoder", progress=progress, cancel=cancel)
    finally:
        vae.requires_grad_(False)
        pipeline.to(pipeline.device).eval()  # channels-last for the new decoder too
