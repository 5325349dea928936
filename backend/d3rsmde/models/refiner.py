"""PLBR refiner: a diffusers UNet2DModel that predicts the refined latent z0 from [z_x, z_t] and the step."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from ..config import RefinerConfig
from ..errors import InputError
from ..plbr import PLBRSchedule
from ..vae import LatentCodec

TIMESTEP_MODES = ("alpha", "learned")
IMAGE_CONDITIONS = ("vae", "stem", "none")
PREDICTIONS = ("z0", "residual")


class Refiner(nn.Module):
    """``forward(image, z_t, cond)``: ``image`` is what :meth:`image_features` gives (the VAE latent of the image,
    or the coarse model's stem map, projected here to the latent's channels; nothing for "none", whose image
    channels get zeros), ``z_t`` the blended latent; cond comes from :meth:`conditioning` — alpha_bar in "alpha"
    mode, the integer step in "learned" mode."""

    def __init__(self, cfg: RefinerConfig, latent_channels: int = 4, sample_size: int = 64,
                 stem_channels: int | None = None):
        super().__init__()
        if cfg.timestep_mode not in TIMESTEP_MODES:
            raise InputError(f"refiner timestep_mode must be one of {TIMESTEP_MODES}, got {cfg.timestep_mode!r}")
        if len(cfg.attention) != len(cfg.block_out_channels):
            raise InputError("RefinerConfig.attention needs one flag per entry of block_out_channels")
        if cfg.image_condition not in IMAGE_CONDITIONS:
            raise InputError(f"refiner image_condition must be one of {IMAGE_CONDITIONS}, got {cfg.image_condition!r}")
        if cfg.prediction not in PREDICTIONS:
            raise InputError(f"refiner prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
        if cfg.image_condition == "stem" and not stem_channels:
            raise InputError("a refiner conditioned on the stem needs a coarse model with a CNN stem")
        self.cfg = cfg
        self.image_proj = nn.Conv2d(stem_channels, latent_channels, 1) if cfg.image_condition == "stem" else None
        learned = cfg.timestep_mode == "learned"
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=2 * latent_channels,
            out_channels=latent_channels,
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            time_embedding_type="learned" if learned else "positional",
            num_train_timesteps=cfg.num_train_steps if learned else None,
        )
        if cfg.prediction == "residual":
            self.start_as_identity()

    def start_as_identity(self) -> None:
        """Zero the U-Net's last layer: a residual refiner then returns its input, so refinement starts from the
        coarse map (also for a residual refiner built from the weights of a z0-predicting one)."""
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def conditioning(self, schedule: PLBRSchedule, t: Tensor) -> Tensor:
        """What :meth:`forward` takes for integer steps ``t`` of ``schedule``.

        "alpha" mode conditions on the blending weight itself, so any number of steps works with one model;
        "learned" mode looks the step up in a table and only works with the T it was trained for.
        """
        if self.cfg.timestep_mode == "learned":
            if schedule.num_steps != self.cfg.num_train_steps:
                raise InputError(
                    f"this refiner learned a {self.cfg.num_train_steps}-step embedding and cannot run "
                    f"{schedule.num_steps} steps; use refine_steps={self.cfg.num_train_steps}"
                )
            return t.long()
        return schedule.alpha_bar.to(t.device)[t.long()]

    @torch.no_grad()
    def image_features(self, images: Tensor, coarse: nn.Module, codec: LatentCodec) -> Tensor:
        """The frozen encoders' view of ``images`` (B x 3 x H x W in [0, 1]) that :meth:`forward` conditions on."""
        if self.cfg.image_condition == "none":
            return images.new_zeros(images.shape[0], 0, 1, 1)
        if self.image_proj is None:
            return codec.encode_image(images)
        return coarse.latent_features(images)

    def forward(self, image: Tensor, z_t: Tensor, cond: Tensor) -> Tensor:
        if self.cfg.image_condition == "none":
            z_x = torch.zeros_like(z_t)
        elif self.image_proj is None:
            z_x = image
        else:
            z_x = self.image_proj(image.to(self.image_proj.weight.dtype))
        timestep = cond if self.cfg.timestep_mode == "learned" else cond.float() * 1000.0
        out = self.unet(torch.cat([z_x.to(z_t.dtype), z_t], dim=1), timestep).sample
        return z_t + out if self.cfg.prediction == "residual" else out
