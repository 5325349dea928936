"""Stage 3: the PLBR refiner, trained in the frozen VAE's latent space (paper: L1 on latents, AdamW 1e-4, lr x0.5
after 5 epochs without improvement).

One sample: a uniform step t, the blend z_t = alpha_bar_t * z_0 + (1 - alpha_bar_t) * z_c of the true and the
coarse latents, and the U-Net asked for z_0 from [z_x, z_t]. The coarse maps must be held-out predictions
(see kfold.py), or the refiner learns to correct errors it will never meet.

At inference, though, z_t blends the refiner's own earlier estimate, not the truth, with z_c: a refiner trained
only on true blends trusts its input at small t and carries its first estimate's errors to the end (exposure
bias). ``own_inputs`` is the share of batches whose z_t comes from running the sampling loop itself, without
gradients, from z_c down to t, so that later steps learn to correct earlier ones.

Latent L1 asks each latent cell for its median under the refiner's uncertainty, and the frozen decoder turns
such hedged latents into smooth maps (model card, *Stage 10*). ``decoded_weight`` adds a loss on the decoded map
itself, through the frozen decoder: L1 on heights plus the multi-scale gradient matching loss, so that the
refiner is asked for slopes where the true map has them.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import InputError
from ..gradient_loss import gradient_matching_loss
from ..plbr import PLBRSchedule, refine_step
from ..progress import Cancel, Progress
from ..vae import LatentCodec, minmax_per_tile
from .common import TrainSettings, distributed_context, fit, unwrap

# AdamW's weight decay is not given in the paper; 1e-2 is the usual diffusers/torch value for U-Nets.
REFINER_SETTINGS = TrainSettings(lr=1e-4, weight_decay=1e-2, plateau_factor=0.5, plateau_patience=5)


class WithCoarse(Dataset):
    """``dataset`` items plus ``"coarse"``: tile ``i``'s coarse map (``maps[i]``, H x W in [0, 1]) as 1 x H x W."""

    def __init__(self, dataset: Dataset, maps: np.ndarray):
        if len(maps) != len(dataset):
            raise InputError(f"{len(maps)} coarse maps for {len(dataset)} tiles: they must match one to one")
        self.dataset, self.maps = dataset, maps

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "coarse": torch.from_numpy(np.asarray(self.maps[i], np.float32))[None]}


class RefinerLoss:
    """Latent L1 between the refiner's z_0 estimate and the true z_0, weighted by the valid share of each latent
    cell; nodata pixels of the target take the coarse value, so they carry no made-up relief. A share
    ``own_inputs`` of the batches takes z_t from the refiner's own sampling loop, and ``decoded_weight`` weighs a
    loss on the decoded map (see the module docstring)."""

    def __init__(self, codec: LatentCodec, schedule: PLBRSchedule, own_inputs: float = 0.0,
                 coarse: nn.Module | None = None, decoded_weight: float = 0.0):
        if not 0.0 <= own_inputs <= 1.0:
            raise InputError(f"own_inputs is a share of batches in [0, 1], got {own_inputs}")
        if not decoded_weight >= 0.0:
            raise InputError(f"decoded_weight must be >= 0, got {decoded_weight}")
        self.codec, self.schedule, self.own_inputs, self.coarse = codec, schedule, float(own_inputs), coarse
        self.decoded_weight = float(decoded_weight)

    def own_chain(self, refiner: nn.Module, z_x: Tensor, z_c: Tensor, t: Tensor) -> Tensor:
        """Each sample's input at its step ``t`` when sampling starts from ``z_c``, as at inference."""
        z_t, z = z_c.clone(), z_c
        for step in range(self.schedule.num_steps - 1, int(t.min()), -1):
            z = refine_step(refiner, z_x, z, z_c, step, self.schedule)  # the input of step - 1
            here = t == step - 1
            z_t[here] = z[here].to(z_t.dtype)
        return z_t

    def __call__(self, model: nn.Module, batch: dict) -> Tensor:
        mask, coarse = batch["mask"], batch["coarse"]
        with torch.no_grad():
            target = torch.where(mask, minmax_per_tile(batch["depth"], mask), coarse)
            z_x = unwrap(model).image_features(batch["image"], self.coarse, self.codec)
            z_0 = self.codec.encode_depth(target)
            z_c = self.codec.encode_depth(coarse)
            t = torch.randint(self.schedule.num_steps, (len(z_0),), device=z_0.device)
            if self.own_inputs and float(torch.rand(())) < self.own_inputs:
                z_t = self.own_chain(unwrap(model), z_x, z_c, t)
            else:
                z_t = self.schedule.q_sample(z_0, z_c, t)
            weight = F.adaptive_avg_pool2d(mask.float(), z_0.shape[-2:])
        z_hat = model(z_x, z_t, unwrap(model).conditioning(self.schedule, t))
        loss = ((z_hat.float() - z_0.float()).abs() * weight).sum() / (weight.sum() * z_0.shape[1]).clamp_min(1e-6)
        if self.decoded_weight:
            decoded = self.codec.decode_depth(z_hat).float()
            l1 = ((decoded - target).abs() * mask).sum() / mask.sum().clamp_min(1)
            loss = loss + self.decoded_weight * (l1 + gradient_matching_loss(decoded, target, mask))
        return loss


def train_refiner(
    refiner: nn.Module,
    codec: LatentCodec,
    dataset: Dataset,
    coarse_maps: np.ndarray,
    schedule: PLBRSchedule,
    val_ds: Dataset | None = None,
    val_coarse_maps: np.ndarray | None = None,
    *,
    settings: TrainSettings | None = None,
    own_inputs: float = 0.0,
    decoded_weight: float = 0.0,
    coarse: nn.Module | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    **overrides,
) -> list[dict]:
    """Train ``refiner`` in place on ``dataset`` with its held-out ``coarse_maps`` (``maps[i]`` for tile ``i``);
    ``codec`` (and ``coarse``, whose stem a refiner conditioned on it reads) stay frozen. Validation needs
    ``val_coarse_maps`` too (the final coarse model's maps).
    ``own_inputs``: share of batches trained on the refiner's own sampling-loop inputs; ``decoded_weight``: weight
    of the loss on the decoded map (:class:`RefinerLoss`).
    ``overrides`` change :data:`REFINER_SETTINGS` fields. Returns the per-epoch history."""
    settings = (settings or REFINER_SETTINGS).replace(**overrides)
    if (val_ds is None) != (val_coarse_maps is None):
        raise InputError("refiner validation needs both val_ds and val_coarse_maps (or neither)")
    device = distributed_context(settings.device)[2]
    codec.to(device)
    if refiner.cfg.image_condition == "stem":
        if coarse is None:
            raise InputError("a refiner conditioned on the coarse model's stem needs that coarse model to train")
        coarse.to(device).eval()  # batch norm statistics stay as trained
    val = WithCoarse(val_ds, val_coarse_maps) if val_ds is not None else None
    loss = RefinerLoss(codec, schedule, own_inputs, coarse, decoded_weight)
    return fit(refiner, loss, WithCoarse(dataset, coarse_maps), val,
               settings=settings, work_dir=work_dir, name="refiner", progress=progress, cancel=cancel)
