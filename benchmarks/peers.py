"""Peer models for speed and memory comparisons, built from configs with random weights.

Compute cost does not depend on weight values, so a randomly initialised model of the published configuration
gives a faithful time and memory figure on the same machine, with no download. `scale="tiny"` keeps the
structure but shrinks the widths so CPU smoke tests finish in seconds; its figures mean nothing.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor, nn

SCALES = ("full", "tiny")
PROMPT_TOKENS = 77  # CLIP's context length: the empty prompt is still 77 embeddings long


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def marigold_unet_config(scale: str = "full") -> dict:
    """Stable Diffusion 2's U-Net with conv_in widened to 8 channels (image latent + noisy depth latent)."""
    _check_scale(scale)
    full = scale == "full"
    return dict(
        in_channels=8,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280) if full else (32, 64, 64, 64),
        layers_per_block=2 if full else 1,
        # diffusers' historical name: these are SD2's head counts (64-wide heads).
        attention_head_dim=(5, 10, 20, 20) if full else (1, 2, 2, 2),
        cross_attention_dim=1024 if full else 32,
        use_linear_projection=True,
        sample_size=96,
    )


def marigold_vae_config(scale: str = "full") -> dict:
    """Stable Diffusion's f8, 4-channel AutoencoderKL."""
    _check_scale(scale)
    full = scale == "full"
    return dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if full else (32, 32, 64, 64),
        layers_per_block=2 if full else 1,
        latent_channels=4,
        scaling_factor=0.18215,
        sample_size=768,
    )


def marigold_scheduler() -> DDIMScheduler:
    """Marigold v1.0's DDIM settings (SD2 betas, v-prediction)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )


class MarigoldPeer(nn.Module):
    """What Marigold's inference computes, step for step, on random weights.

    Per image: encode the RGB once; per ensemble member: start from noise, run `steps` U-Net calls against the
    empty-prompt embedding, decode; then reduce the members. Two simplifications that do not change the cost
    materially: the empty prompt is a zero 77 x D tensor (Marigold runs the CLIP text encoder once per run, not
    per tile), and members are min-max normalised before the median instead of Marigold's small scale-and-shift
    optimisation. As in Marigold on a large GPU, all members of an image run as one U-Net batch unless
    `member_batch` limits it.
    """

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler):
        super().__init__()
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        width = unet.config.cross_attention_dim
        self.register_buffer("prompt_embedding", torch.zeros(1, PROMPT_TOKENS, width), persistent=False)

    @classmethod
    def from_scale(cls, scale: str = "full") -> "MarigoldPeer":
        unet = UNet2DConditionModel(**marigold_unet_config(scale))
        vae = AutoencoderKL(**marigold_vae_config(scale))
        return cls(unet, vae, marigold_scheduler()).eval()

    @property
    def device(self) -> torch.device:
        return self.prompt_embedding.device

    def encode(self, images: Tensor) -> Tensor:
        """[0, 1] RGB -> scaled posterior-mean latents."""
        posterior = self.vae.encode(images * 2 - 1).latent_dist
        return posterior.mean * self.vae.config.scaling_factor

    def denoise(self, z_x: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """One U-Net call and one DDIM update of the depth latent."""
        prompt = self.prompt_embedding.expand(z_t.shape[0], -1, -1)
        prediction = self.unet(torch.cat([z_x, z_t], 1), t, encoder_hidden_states=prompt).sample
        return self.scheduler.step(prediction, t, z_t).prev_sample

    def decode(self, latents: Tensor) -> Tensor:
        """Depth latents -> depth in [0, 1] (mean of the three decoded channels, as Marigold does)."""
        rgb = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (rgb.mean(1, keepdim=True).clamp(-1, 1) + 1) / 2

    @torch.no_grad()
    def forward(
        self, images: Tensor, steps: int = 50, ensemble: int = 10, member_batch: int | None = None,
        reduce: str = "median",
    ) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> relative depth [B, 1, H, W] in [0, 1]."""
        if steps < 1 or ensemble < 1:
            raise ValueError(f"steps and ensemble must be >= 1, got {steps} and {ensemble}")
        batch = images.shape[0]
        z_x = self.encode(images)
        self.scheduler.set_timesteps(steps, device=images.device)
        member_batch = member_batch or ensemble
        members = []
        for first in range(0, ensemble, member_batch):
            count = min(member_batch, ensemble - first)
            z_x_members = z_x.repeat_interleave(count, 0)
            z_t = torch.randn_like(z_x_members)
            for t in self.scheduler.timesteps:
                z_t = self.denoise(z_x_members, z_t, t)
            members.append(self.decode(z_t).unflatten(0, (batch, count)))
        depth = torch.cat(members, 1).float()  # [B, E, 1, H, W]
        low = depth.amin(dim=(2, 3, 4), keepdim=True)
        high = depth.amax(dim=(2, 3, 4), keepdim=True)
        depth = (depth - low) / (high - low).clamp_min(1e-6)
        return depth.median(1).values if reduce == "median" else depth.mean(1)


def build_marigold(scale: str = "full") -> MarigoldPeer:
    return MarigoldPeer.from_scale(scale)


def build_dpt_hybrid(scale: str = "full") -> nn.Module:
    """The paper's coarse model alone: our CoarseDepthModel in the "base" (DPT-Hybrid-sized) configuration."""
    _check_scale(scale)
    from d3rsmde.config import get_config
    from d3rsmde.models.coarse import CoarseDepthModel

    config = get_config("base" if scale == "full" else "tiny")
    return CoarseDepthModel(config.coarse, img_size=config.tile_size).eval()
