"""D3-RSMDE: remote-sensing monocular depth (height) estimation, coarse ViT/DPT + latent PLBR refinement."""

import os

# OpenMP threads that spin while waiting for each other take the CPU from the very thread they wait for when other
# processes keep the cores busy: the model's many small kernels each end in such a wait. Measured on 2 cores at load
# average ~10: a 0.18 MP raster took 424 s with libgomp's default (spinning) wait and 15 s with PASSIVE (sleeping).
# libgomp reads this once, when torch loads it, so it must be set before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.4.0"
