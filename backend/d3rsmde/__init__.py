"""D3-RSMDE: remote-sensing monocular depth (height) estimation, coarse ViT/DPT + latent PLBR refinement."""

__version__ = "0.1.0"
