#!/usr/bin/env python3
"""Model-card ablation: the recipe's final coarse model (4 x 50 batches of 8, lr 2e-4, seed 42) with a randomly
initialised stem instead of the ImageNet one, scored coarse-only on the whole Rocky Mountain scene.

    .venv/bin/python scripts/ablation_scratch_stem.py [WORK]   # WORK of scripts/train_default_weights.sh
"""
from __future__ import annotations

import dataclasses
import json
import sys

import torch

from d3rsmde import pairs
from d3rsmde.config import get_config
from d3rsmde.datasets import TileDatasets
from d3rsmde.evaluation import evaluate_scene
from d3rsmde.models import CoarseDepthModel
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.train.coarse import train_coarse

WORK = "build/ablation-scratch-stem"


def main() -> None:
    data = sys.argv[1] if len(sys.argv) > 1 else "build/default-weights"
    roots = [f"{data}/{name}" for name in ("render", "world")]
    cfg = dataclasses.replace(get_config("lean"), tile_size=256)
    torch.manual_seed(42)
    model = CoarseDepthModel(cfg.coarse, img_size=256)
    train_coarse(model, TileDatasets(roots, "train"), None, epochs=4, steps_per_epoch=50, batch_size=8, lr=2e-4,
                 work_dir=WORK, device="cpu")
    pipe = D3Pipeline.from_config(cfg)
    pipe.coarse.load_state_dict(model.state_dict())
    image, dem = pairs.rmnp()
    predict_raster(image, f"{WORK}/rmnp-T0.tif", pipe, refine_steps=0)
    scores = evaluate_scene(f"{WORK}/rmnp-T0.tif", dem)
    print(json.dumps({k: v for k, v in scores.items() if isinstance(v, (int, float))}))


if __name__ == "__main__":
    main()
