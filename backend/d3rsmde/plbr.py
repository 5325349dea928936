"""PLBR schedule (progressive linear blending refinement): a deterministic, few-step "diffusion" between the coarse
latent z_c and the refined latent z_0. Like a diffusers scheduler it holds no model: the pipeline owns the loop
(``for t in schedule.timesteps: z0_hat = refiner(...); z_t = schedule.step(z0_hat, t, z_c)``), so it can report
progress and stop between steps.

There is no noise: the forward process blends linearly, z_t = alpha_bar_t * z_0 + (1 - alpha_bar_t) * z_c with
alpha_bar_t = eps * (T - t - 1) / (T - 1), so the last step (t = T-1) starts exactly from the coarse map and never
from pure noise; this is what makes 6 steps enough.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import InputError


class PLBRSchedule:
    """Scheduler-like holder of the blending weights: the training forward process and one sampling step."""

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

    def step(self, z0_hat: Tensor, t: int, z_c: Tensor) -> Tensor:
        """The refiner's input for the step after ``t``, from its z0 estimate at ``t``:
        alpha_bar_{t-1} * z0_hat + (1 - alpha_bar_{t-1}) * z_c; at t = 0 the estimate itself (alpha_bar_{-1} = 1)."""
        if t == 0:
            return z0_hat
        a = float(self.alpha_bar[t - 1])
        return a * z0_hat + (1 - a) * z_c


def refine_step(refiner: nn.Module, z_x: Tensor, z_t: Tensor, z_c: Tensor, t: int, schedule: PLBRSchedule) -> Tensor:
    """One sampling step at ``t``: the refiner's z0 estimate from the image condition ``z_x`` and ``z_t``, blended
    into its next input (:meth:`PLBRSchedule.step`). The pipeline's loop and the refiner's own-input training
    share it."""
    t_batch = torch.full((len(z_t),), t, dtype=torch.int64, device=z_t.device)
    z0_hat = refiner(z_x, z_t, refiner.conditioning(schedule, t_batch))
    return schedule.step(z0_hat, t, z_c)
