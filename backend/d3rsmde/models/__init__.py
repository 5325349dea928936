"""Trainable networks: the coarse ViT/DPT model and the PLBR refiner U-Net."""

from .coarse import CoarseDepthModel
from .refiner import Refiner

__all__ = ["CoarseDepthModel", "Refiner"]
