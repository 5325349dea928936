"""D3Pipeline: coarse ViT/DPT height -> latent PLBR refinement -> decoded relative height, one call per batch.

The CLI, the raster engine, the notebook and the QGIS plugin all predict through this object.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checkpoint import COMPONENTS, checkpoint_provenance, load_checkpoint, load_component, save_checkpoint
from .config import D3Config, get_config
from .device import autocast_dtype, resolve_device
from .errors import CheckpointError, InputError
from .models import CoarseDepthModel, Refiner
from .plbr import PLBRSchedule, refine_step
from .vae import LatentCodec, build_vae, minmax_per_tile


@torch.no_grad()
def coarse_maps(coarse: nn.Module, images: Tensor) -> Tensor:
    """``coarse``'s heights for ``images``, min-max stretched per tile to [0, 1] (float32): what the refiner
    refines, at inference and (from the k-fold models) in training alike."""
    weight = next(coarse.parameters())
    dtype = autocast_dtype(weight.device)
    with torch.autocast(weight.device.type, dtype=dtype, enabled=dtype is not None):
        depth = coarse(images.to(weight.device, weight.dtype).contiguous(memory_format=torch.channels_last))
    return minmax_per_tile(depth.float())


StepCallback = Callable[[int, int], None]


class D3Pipeline:
    """Holds the three networks and the config; ``pipe(images)`` returns float32 ``B x 1 x H x W`` in [0, 1]."""

    def __init__(self, coarse: CoarseDepthModel, codec: LatentCodec, refiner: Refiner, config: D3Config):
        self.coarse = coarse
        self.codec = codec
        self.refiner = refiner
        self.config = config
        self.provenance: dict[str, str] = {}  # weights file name and sha256 (from_pretrained), tagged on outputs

    # ---- construction / persistence -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: D3Config | str) -> "D3Pipeline":
        """Randomly initialised pipeline (pretrained backbone / VAE only where the config names them)."""
        cfg = get_config(config) if isinstance(config, str) else config
        latent_size = cfg.tile_size // cfg.vae.downsample_factor
        coarse = CoarseDepthModel(cfg.coarse, img_size=cfg.tile_size)
        pipe = cls(
            coarse=coarse,
            codec=LatentCodec(build_vae(cfg.vae), cfg.vae.scaling_factor),
            refiner=Refiner(cfg.refiner, latent_channels=cfg.vae.latent_channels, sample_size=latent_size,
                            stem_channels=coarse.latent_feature_channels),
            config=cfg,
        )
        pipe.eval()
        return pipe

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None) -> "D3Pipeline":
        """Rebuild from a checkpoint file; weights are kept in ``dtype`` (default float32) on ``device``."""
        tensors, cfg, meta = load_checkpoint(path)
        pipe = cls.from_config(cfg)
        for name, module in pipe.components.items():
            load_component(module, tensors, name, source=str(path))
        stray = sorted({k.split(".", 1)[0] for k in tensors} - set(COMPONENTS))
        if stray:
            raise CheckpointError(f"{path}: unexpected weights of unknown component(s) {stray}; "
                                  f"a d3rsmde checkpoint holds only {list(COMPONENTS)}")
        pipe.provenance = checkpoint_provenance(path, meta)
        return pipe.to(device, dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {f"{name}.{k}": v for name, m in self.components.items() for k, v in m.state_dict().items()}

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = torch.float16,
                        max_shard_bytes: int | None = None, **metadata: Any) -> Path:
        """One safetensors file (plus shards beyond ``max_shard_bytes``); floating weights cast to ``dtype``
        (fp16 halves the download; None keeps them).

        The saved config drops ``pretrained_backbone`` / ``pretrained_path``: the weights are in the file now.
        """
        cfg = self.config
        cfg = dataclasses.replace(cfg, coarse=dataclasses.replace(cfg.coarse, pretrained_backbone=False),
                                  vae=dataclasses.replace(cfg.vae, pretrained_path=None))
        tensors = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                   for k, v in self.state_dict().items()}
        return save_checkpoint(path, tensors, cfg, metadata, max_shard_bytes=max_shard_bytes)

    # ---- placement ----------------------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, nn.Module]:
        """The modules as named in checkpoints: coarse, vae, refiner."""
        return {"coarse": self.coarse, "vae": self.codec.vae, "refiner": self.refiner}

    def to(self, device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> "D3Pipeline":
        """Move to ``device`` / ``dtype``, convolution weights in channels-last layout: the VAE and the refiner
        are convolution-bound, and oneDNN / cuDNN run them faster in NHWC (see the README's Performance section)."""
        dev = resolve_device(device)
        for m in (self.coarse, self.codec, self.refiner):
            m.to(device=dev, dtype=dtype)
            m.to(memory_format=torch.channels_last)
        return self

    def _as_input(self, images: Tensor) -> Tensor:
        return images.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)

    def eval(self) -> "D3Pipeline":
        for m in (self.coarse, self.codec, self.refiner):
            m.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.coarse.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.coarse.parameters()).dtype

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: the ViT patch and the VAE x U-Net downsampling."""
        cfg = self.config
        return math.lcm(cfg.coarse.patch_size, cfg.vae.downsample_factor * cfg.refiner.downsample_factor)

    # ---- inference ----------------------------------------------------------------------------------------------
    def check_images(self, images: Tensor) -> None:
        """InputError naming the problem unless ``images`` is a float ``B x 3 x H x W`` batch in [0, 1] of a
        usable size."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InputError(f"images must be a B x 3 x H x W tensor (3 bands), got {shape}")
        if not images.is_floating_point():
            raise InputError(f"images must be floats in [0, 1], got dtype {images.dtype}; stretch the raster first")
        h, w = images.shape[-2:]
        m = self.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise InputError(f"tile size {h}x{w} is not a positive multiple of {m}; pad or crop to a multiple of {m}")
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(f"image values must lie in [0, 1] (got {lo:.4g}..{hi:.4g}); stretch the raster first")

    def _autocast(self):
        dtype = autocast_dtype(self.device)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def coarse_depth(self, images: Tensor) -> Tensor:
        """Coarse model only, min-max stretched per tile to [0, 1] (float32); also the refiner's training input."""
        self.check_images(images)
        return coarse_maps(self.coarse, images)

    @torch.no_grad()
    def refine(self, images: Tensor, coarse01: Tensor, refine_steps: int | None = None,
               on_step: StepCallback | None = None) -> Tensor:
        """PLBR refinement of a [0, 1] coarse map with ``refine_steps`` steps (None: the config's).

        ``on_step(done, total)`` is called after each step; it may raise (e.g.
        :class:`~d3rsmde.errors.Cancelled`) to stop.
        """
        z_0 = self.refine_latents(images, coarse01, refine_steps, on_step)
        with self._autocast():
            depth = self.codec.decode_depth(z_0.to(self.dtype))
        return depth.float()

    @torch.no_grad()
    def refine_latents(self, images: Tensor, coarse01: Tensor, refine_steps: int | None = None,
                       on_step: StepCallback | None = None) -> Tensor:
        """The refinement loop of :meth:`refine` up to its last latent, the one the VAE decodes."""
        steps = self.config.num_steps if refine_steps is None else refine_steps
        schedule = PLBRSchedule(steps, self.config.eps)
        images = self._as_input(images)
        with self._autocast():
            z_x = self.refiner.image_features(images, self.coarse, self.codec)
            z_c = self.codec.encode_depth(self._as_input(coarse01))
            z_t = z_c
            for done, t in enumerate(schedule.timesteps.tolist(), start=1):
                z_t = refine_step(self.refiner, z_x, z_t, z_c, t, schedule)
                if on_step is not None:
                    on_step(done, steps)
        return z_t

    @torch.no_grad()
    def __call__(self, images: Tensor, refine_steps: int | None = None,
                 on_step: StepCallback | None = None) -> Tensor:
        """Relative height ``B x 1 x H x W`` (float32, [0, 1] per tile); ``refine_steps=0`` is the coarse model
        alone, None the config's number of steps, any other T works with an "alpha"-conditioned refiner.
        ``on_step(done, total)`` follows the refinement steps (see :meth:`refine`)."""
        if refine_steps is not None and (int(refine_steps) != refine_steps or refine_steps < 0):
            raise InputError(f"refine_steps must be a whole number >= 0, got {refine_steps}")
        coarse = self.coarse_depth(images)
        if refine_steps == 0:
            return coarse
        return self.refine(images, coarse, refine_steps, on_step)
