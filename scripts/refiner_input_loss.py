"""Latent L1 of refiners on validation tiles, on blends of the true map (what training used until 0.5.0) and on the
refiner's own sampling-loop inputs (what inference feeds it): the model card's exposure-bias check.

    python scripts/refiner_input_loss.py --tiles build/default-weights/render2,build/default-weights/world \
        build/default-weights/stage3-mix.safetensors resources/weights/d3rsmde-lean.safetensors

The coarse maps come from the first file's coarse model (the same in both files of the card's check).
"""
from __future__ import annotations

import argparse

import d3rsmde  # noqa: F401  (thread policy before torch)
import torch

from d3rsmde.datasets import TileDatasets
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.plbr import PLBRSchedule
from d3rsmde.train.common import evaluate_loss
from d3rsmde.train.kfold import predict_coarse
from d3rsmde.train.refiner import REFINER_SETTINGS, RefinerLoss, WithCoarse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--tiles", required=True, help="comma-separated tile datasets whose val split is scored")
    args = parser.parse_args(argv)
    val = TileDatasets(args.tiles.split(","), "val")
    pipes = [D3Pipeline.from_pretrained(w, device="cpu") for w in args.weights]
    maps = predict_coarse(pipes[0].coarse, val, batch_size=8)
    settings = REFINER_SETTINGS.replace(device="cpu", batch_size=8)
    for path, pipe in zip(args.weights, pipes):
        schedule = PLBRSchedule(pipe.config.num_steps, pipe.config.eps)
        for share, inputs in ((0.0, "true-map blends"), (1.0, "own inputs")):
            torch.manual_seed(0)
            loss = evaluate_loss(pipe.refiner, RefinerLoss(pipe.codec, schedule, share), WithCoarse(val, maps),
                                 settings, torch.device("cpu"))
            print(f"{path}: {inputs}: {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
