"""Training: the shared loop (common) and tile augmentation (augment), one module per stage (vae, coarse, kfold,
refiner), the whole recipe, weight interpolation, region fine-tuning, and the narrower height-map decoder."""

from .coarse import train_coarse
from .common import TrainSettings, fit, seed_everything
from .finetune import finetune_region, finetune_tiles
from .interpolate import interpolate_weights
from .kfold import kfold_coarse_predictions
from .recipe import train_pipeline
from .refiner import train_refiner
from .vae import train_depth_decoder, train_vae

__all__ = [
    "TrainSettings",
    "finetune_region",
    "finetune_tiles",
    "fit",
    "interpolate_weights",
    "kfold_coarse_predictions",
    "seed_everything",
    "train_coarse",
    "train_depth_decoder",
    "train_pipeline",
    "train_refiner",
    "train_vae",
]
