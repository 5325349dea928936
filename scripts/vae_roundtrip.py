#!/usr/bin/env python3
"""How much a weights file's VAE alone loses: the Rocky Mountain scene scored with each tile's coarse map passed
through the codec (encode, decode; no refiner) instead of refined, next to the coarse map itself.

Every refined map is decoded by the VAE, so this is the ceiling refinement works under (model card, *Verdict*).

    python scripts/vae_roundtrip.py --weights resources/weights/d3rsmde-lean.safetensors
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from d3rsmde.evaluation import evaluate_scene
from d3rsmde.pairs import rmnp
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster


class RoundTrip(D3Pipeline):
    """The pipeline with refinement replaced by encode + decode of the coarse map."""

    @torch.no_grad()
    def refine(self, images, coarse01, refine_steps=None, on_step=None):
        with self._autocast():
            z = self.codec.encode_depth(self._as_input(coarse01))
            return self.codec.decode_depth(z.to(self.dtype)).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args()
    image, dem = rmnp()
    pipe = RoundTrip.from_pretrained(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in (("coarse only", 0), ("VAE round trip of the coarse map", 1)):
            out = Path(tmp) / f"{steps}.tif"
            predict_raster(image, out, pipe, refine_steps=steps)
            m = evaluate_scene(out, dem)
            print(f"{name:34s} MAE {m['mae']:.2f}  SSIM {m['ssim']:.3f}  LPIPS {m.get('lpips') or float('nan'):.3f}  "
                  f"grad r {m['grad_r']:.3f}")


if __name__ == "__main__":
    main()
