#!/usr/bin/env python3
"""The model card's *Stage 16* probe: `d3rsmde train`, with a share of the refiner's training coarse maps blended
toward the true map (b * truth + (1 - b) * coarse, b uniform in [0, 1], on KEEP_SHARE of the samples, default
0.5), so that the refiner also learns to keep a coarse map that is already right (the refiner ceiling probe showed
the shipped one lowering a true DEM's slopes). Every argument goes to `d3rsmde train`; the recipe's stage-4 round:

    KEEP_SHARE=0.5 python scripts/refiner_keep_probe.py train lean RENDER2,RENDER3,WORLD build/stage16/keep.safetensors \
        --init-weights resources/weights/d3rsmde-lean.safetensors --work-dir build/stage16/run-keep \
        --stem-weights "$(d3rsmde data stem-weights | tail -n 1)" --k 3 --fold-epochs 4 --vae-epochs 0 \
        --coarse-epochs 0 --batch-size 8 --steps-per-epoch 50 --refiner-lr 1e-4 --refiner-epochs 10 \
        --average-from 3 --refiner-own-inputs 1

(with stage 12's fold maps linked into build/stage16/run-keep/coarse). A measured negative result, kept to
reproduce the card's figures; not a training option.
"""
import os
import sys

import torch

from d3rsmde.cli import main
from d3rsmde.train.refiner import RefinerLoss
from d3rsmde.vae import minmax_per_tile

SHARE = float(os.environ.get("KEEP_SHARE", "0.5"))
latent_l1 = RefinerLoss.__call__


def with_kept_maps(self: RefinerLoss, model, batch: dict) -> torch.Tensor:
    mask, coarse = batch["mask"], batch["coarse"]
    target = torch.where(mask, minmax_per_tile(batch["depth"], mask), coarse)
    n = len(coarse)
    b = torch.rand(n, 1, 1, 1, device=coarse.device) * (torch.rand(n, 1, 1, 1, device=coarse.device) < SHARE)
    return latent_l1(self, model, {**batch, "coarse": b * target + (1 - b) * coarse})


if __name__ == "__main__":
    RefinerLoss.__call__ = with_kept_maps
    sys.exit(main(sys.argv[1:]))
