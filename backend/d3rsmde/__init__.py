"""D3-RSMDE: remote-sensing monocular depth (height) estimation, coarse ViT/DPT + latent PLBR refinement."""

import os

# OpenMP threads that spin while waiting for each other take the CPU from the very thread they wait for when other
# processes keep the cores busy: the model's many small kernels each end in such a wait. Measured on 2 cores at load
# average ~10: a 0.18 MP raster took 424 s with libgomp's default (spinning) wait and 15 s with PASSIVE (sleeping).
# A short spin before sleeping (GOMP_SPINCOUNT iterations; PASSIVE alone spins 0, libgomp's default 300000) keeps
# part of what spinning gains on an idle machine and costs little on a busy one: 2-core EPYC, 4 MP raster idle
# 12.7 -> 11.6 s, 1 MP raster beside 2 busy processes 8.0 -> 8.5 s (README, Performance).
# libgomp reads both once, when torch loads it, so they must be set before torch is imported; a user's values win.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.7.0"
