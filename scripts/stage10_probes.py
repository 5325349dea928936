#!/usr/bin/env python3
"""The model card's *Stage 10* probes: is the blur of the refined maps the codec's, and can it be undone?

    python scripts/stage10_probes.py scenes --world build/default-weights/world [--weights W] [--variants ...]
    python scripts/stage10_probes.py val --tiles build/default-weights/render2,build/default-weights/world
    python scripts/stage10_probes.py decoder --tiles build/default-weights/render2,build/default-weights/world \
        --out build/stage10/decoder.safetensors
    python scripts/stage10_probes.py roundtrip --tiles ... [--weights W]

- ``scenes``: whole held-out scenes (the 4 GLOBE test blocks and the world test blocks of
  ``scripts/scene_tile_eval.py``, Rocky Mountain, Meuse) at T = 6, the refined map as the pipeline makes it
  (``base``) or with the coarse map's detail added back: ``blurS`` adds ``coarse - gaussian_blur(coarse, S)`` (the
  scales finer than about the latent's 8-pixel cell), ``codec`` adds what the VAE loses of the coarse map
  (``coarse - decode(encode(coarse))``).
- ``val``: the same on the validation tiles (per-tile metrics), with gains 0.5 and 1.
- ``decoder``: the VAE's decoder alone trained further on the encoded true heights (the encoder frozen, so the
  refiner's latents keep their meaning): L1 plus L1 of finite differences on 128-pixel crops, ``--steps`` batches
  of 8 at lr 1e-4, seed 0; writes a whole weights file.
- ``roundtrip``: the true heights of the validation tiles encoded and decoded: the codec's own ceiling.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import d3rsmde  # noqa: F401  (thread policy before torch)
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import gaussian_blur

from d3rsmde import pairs
from d3rsmde.datasets import TileDatasets
from d3rsmde.evaluation import evaluate_scene
from d3rsmde.metrics import depth_metrics
from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster
from d3rsmde.train.vae import _gradient_l1
from d3rsmde.vae import minmax_per_tile

sys.path.insert(0, str(Path(__file__).parent))
from scene_tile_eval import METRICS, held_out_globe_scenes, held_out_world_scenes  # noqa: E402

DEFAULT_WEIGHTS = "resources/weights/d3rsmde-lean.safetensors"


def fine_detail(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``maps`` less their Gaussian blur: the scales finer than ``sigma`` pixels."""
    size = 2 * math.ceil(3 * sigma) + 1
    return maps - gaussian_blur(maps, kernel_size=[size, size], sigma=[sigma, sigma])


class WithDetail:
    """A pipeline whose refined maps get ``gain`` times the coarse map's fine detail (``variant``: see above)."""

    def __init__(self, pipe: D3Pipeline, variant: str, gain: float = 1.0):
        self.pipe, self.variant, self.gain = pipe, variant, gain

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, refine_steps: int | None = None, on_step=None) -> torch.Tensor:
        coarse = self.pipe.coarse_depth(images)
        refined = self.pipe.refine(images, coarse, refine_steps)
        if self.variant == "base":
            return refined
        if self.variant.startswith("blur"):
            return refined + self.gain * fine_detail(coarse, float(self.variant[4:]))
        if self.variant == "codec":
            codec = self.pipe.codec
            with self.pipe._autocast():
                round_trip = codec.decode_depth(codec.encode_depth(coarse)).float()
            return refined + self.gain * (coarse - round_trip)
        raise SystemExit(f"unknown variant {self.variant!r}")


def scenes(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = held_out_globe_scenes(out, 4)
    found.update(held_out_world_scenes(out, Path(args.world)))
    found["rmnp"], found["meuse"] = pairs.rmnp(), pairs.meuse()
    pipe = D3Pipeline.from_pretrained(args.weights)
    results = {}
    for variant in args.variants.split(","):
        model = WithDetail(pipe, variant)
        for name, (image, dem) in found.items():
            pred = out / f"{name}-{variant}.tif"
            predict_raster(image, pred, model, refine_steps=6)
            m = evaluate_scene(pred, dem)
            results.setdefault(variant, {})[name] = {k: float(m[k]) for k in METRICS}
        groups = {"globe": "globe-", "world": "world-", "rmnp": "rmnp", "meuse": "meuse"}
        print(variant, " | ".join(
            group + " " + " / ".join(f"{np.mean([v[k] for n, v in results[variant].items() if n.startswith(p)]):.3f}"
                                     for k in METRICS) for group, p in groups.items()), flush=True)
    return results


def val(args) -> dict:
    pipe = D3Pipeline.from_pretrained(args.weights)
    variants = {"coarse only": None, "base": None,
                **{f"blur{s} gain {g}": (s, g) for s in (2, 3, 4) for g in (0.5, 1.0)}}
    results = {}
    for root in args.tiles.split(","):
        rows = {v: [] for v in variants}
        for batch in DataLoader(TileDatasets([root], "val"), batch_size=8):
            coarse = pipe.coarse_depth(batch["image"])
            refined = pipe.refine(batch["image"], coarse, 6)
            for v, sg in variants.items():
                maps = coarse if v == "coarse only" else refined if sg is None else \
                    refined + sg[1] * fine_detail(coarse, sg[0])
                rows[v] += [depth_metrics(p, g, m) for p, g, m in zip(maps, batch["depth"], batch["mask"])]
        results[root] = {v: {k: float(np.mean([r[k] for r in rs])) for k in METRICS} for v, rs in rows.items()}
        for v, m in results[root].items():
            print(Path(root).name, f"{v:16s}", " / ".join(f"{m[k]:.3f}" for k in METRICS), flush=True)
    return results


def true_heights(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each tile's true heights stretched to [0, 1] (nodata 0.5) and its mask."""
    mask = batch["mask"]
    return torch.where(mask, minmax_per_tile(batch["depth"], mask), torch.full_like(batch["depth"], 0.5)), mask


def decoder(args) -> dict:
    torch.manual_seed(0)
    pipe = D3Pipeline.from_pretrained(args.weights, device="cpu")
    vae = pipe.codec.vae
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    loader = DataLoader(TileDatasets(args.tiles.split(","), "train"), batch_size=8, shuffle=True, drop_last=True)
    crop, step, losses = 128, 0, []
    while step < args.steps:
        for batch in loader:
            i, j = (int(v) * 8 for v in torch.randint(0, (256 - crop) // 8 + 1, (2,)))
            batch = {k: batch[k][..., i:i + crop, j:j + crop] for k in ("depth", "mask")}
            if batch["mask"].float().mean() < 0.5:
                continue
            height, mask = true_heights(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with torch.no_grad():
                    z = vae.encode(height.expand(-1, 3, -1, -1) * 2 - 1).latent_dist.mean
                decoded = (vae.decode(z.float()).sample.float().mean(1, keepdim=True) + 1) / 2
            err, weight = decoded - height, mask.float()
            loss = (err.abs() * weight).sum() / weight.sum() + _gradient_l1(err, weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % 500 == 0:
                print(f"step {step}: loss {np.mean(losses[-500:]):.4f}", flush=True)
            if step == args.steps:
                break
    for p in params:
        p.requires_grad_(False)
    out = Path(args.out)
    out = out if out.suffix == ".safetensors" else out / "decoder.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return {"steps": step, "loss_first_500": float(np.mean(losses[:500])), "loss_last_500": float(np.mean(losses[-500:]))}


@torch.no_grad()
def roundtrip(args) -> dict:
    pipe = D3Pipeline.from_pretrained(args.weights)
    results = {}
    for root in args.tiles.split(","):
        rows = []
        for batch in DataLoader(TileDatasets([root], "val"), batch_size=8):
            height, _ = true_heights(batch)
            with pipe._autocast():
                decoded = pipe.codec.decode_depth(pipe.codec.encode_depth(height)).float()
            rows += [depth_metrics(p, g, m) for p, g, m in zip(decoded, batch["depth"], batch["mask"])]
        results[root] = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
        print(Path(root).name, " / ".join(f"{results[root][k]:.3f}" for k in METRICS), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["scenes", "val", "decoder", "roundtrip"])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--tiles", default="build/default-weights/render2,build/default-weights/world")
    parser.add_argument("--world", default="build/default-weights/world")
    parser.add_argument("--variants", default="base,blur2,blur3,blur4,codec")
    parser.add_argument("--steps", type=int, default=6576, help="decoder: training batches")
    parser.add_argument("--out", default="build/stage10")
    args = parser.parse_args(argv)
    result = globals()[args.probe](args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
