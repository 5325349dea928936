"""Compute cost of a configuration, counted (not estimated) with torch's FlopCounterMode.

The lean default is sized by this count (<= 0.5 MFLOP per output pixel at T = 6), and the benchmarks report it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from .config import D3Config, get_config
from .plbr import PLBRSchedule


_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_ATTENTION not in flop_registry:  # torch counts its CUDA attention kernels but not the CPU one (0 FLOPs)
    @register_flop_formula(_CPU_ATTENTION)
    def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matmuls, convolutions and attention, as torch's FlopCounterMode counts them)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_pixel(config: D3Config | str, refine_steps: int | None = None, tile: int | None = None) -> dict:
    """FLOPs per output pixel of one tile through the pipeline, in all and by component (coarse, VAE, refiner)."""
    from .pipeline import D3Pipeline  # the pipeline imports the models; keep this module light to import

    cfg = get_config(config) if isinstance(config, str) else config
    tile = tile or cfg.tile_size
    steps = cfg.num_steps if refine_steps is None else refine_steps
    pipe = D3Pipeline.from_config(cfg)
    images = torch.rand(1, 3, tile, tile)
    with torch.no_grad():
        coarse = count_flops(lambda: pipe.coarse(images))
        total = count_flops(lambda: pipe(images, refine_steps=steps))
        image = pipe.refiner.image_features(images, pipe.coarse, pipe.codec)
        z = pipe.codec.encode_depth(images[:, :1])
        t = torch.zeros(1, dtype=torch.int64)
        refiner = steps * count_flops(
            lambda: pipe.refiner(image, z, pipe.refiner.conditioning(PLBRSchedule(steps, cfg.eps), t))) if steps else 0
    pixels = tile * tile
    return {"total": total / pixels, "coarse": coarse / pixels, "refiner": refiner / pixels,
            "vae": (total - coarse - refiner) / pixels, "tile": tile, "refine_steps": steps}

