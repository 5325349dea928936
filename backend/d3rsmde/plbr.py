"""PLBR schedule (progressive linear blending refinement): a deterministic, few-step "diffusion" between the coarse
latent z_c and the refined latent z_0.

There is no noise: the forward process blends linearly, z_t = alpha_bar_t * z_0 + (1 - alpha_bar_t) * z_c with
alpha_bar_t = eps * (T - t - 1) / (T - 1), so the last step (t = T-1) starts exactly from the coarse map and never
from pure noise; this is what makes 6 steps enough.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .errors import InputError

Denoiser = Callable[[Tensor, Tensor], Tensor]


class PLBRSchedule:
    """Scheduler-like holder of the blending weights, with the training forward process and the sampling loop."""

    def __init__(self, num_steps: int = 6, eps: float = 0.8):
        if int(num_steps) != num_steps or num_steps < 1:
            raise InputError(f"PLBR needs at least 1 refinement step, got {num_steps}")
        if not 0.0 <= eps <= 1.0:
            raise InputError(f"PLBR eps must lie in [0, 1], got {eps}")
        self.num_steps = int(num_steps)
        self.eps = float(eps)
        t = torch.arange(self.num_steps, dtype=torch.float64)
        denom = max(self.num_steps - 1, 1)  # T=1: the single step is t=0 with alpha_bar 0 (plain coarse -> z0)
        self.alpha_bar = (self.eps * (self.num_steps - t - 1) / denom).float()
        self.timesteps = torch.arange(self.num_steps - 1, -1, -1, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"PLBRSchedule(num_steps={self.num_steps}, eps={self.eps})"

    def _alpha(self, t: Tensor, like: Tensor) -> Tensor:
        a = self.alpha_bar.to(device=like.device)[t.to(device=like.device, dtype=torch.long)]
        return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, z0: Tensor, zc: Tensor, t: Tensor) -> Tensor:
        """Training input at step ``t`` (int tensor ``[B]``): alpha_bar_t * z0 + (1 - alpha_bar_t) * zc."""
        a = self._alpha(t, z0)
        return a * z0 + (1 - a) * zc

    def sample(self, model: Denoiser, z_x: Tensor, z_c: Tensor) -> Tensor:
        """Run the T refinement steps; ``model(cat([z_x, z_t], 1), t)`` predicts z0 (t: int64 ``[B]``).

        Exactly ``num_steps`` model calls; the last one's prediction is returned as is (alpha_bar_{-1} = 1).
        """
        z_t = z_c
        batch = z_c.shape[0]
        for t in self.timesteps.tolist():
            t_batch = torch.full((batch,), t, dtype=torch.int64, device=z_c.device)
            z0_hat = model(torch.cat([z_x, z_t], dim=1), t_batch)
            if t > 0:
                a = float(self.alpha_bar[t - 1])
                z_t = a * z0_hat + (1 - a) * z_c
        return z0_hat
