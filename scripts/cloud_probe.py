#!/usr/bin/env python3
"""How much a saturated cloud moves the map far from it (the stretch's top moves; the model sees a darker image).

A white disk (radius 45 px with a 10-px soft edge, over 3.5 % of the bundled sample) is painted onto the Rocky
Mountain sample; each weights file predicts both images at the defaults (coarse only and T = 6), and the median
|difference| of the two maps more than 120 px from the cloud's centre is printed, as a share of the map's 0..1
range. A model that reads height from how bright its input is moves more. The cloud is also left out
(``exclude``: a disk polygon over it, as ``d3rsmde predict --exclude`` takes one): then the rest of the map should
stay as it was.

    python scripts/cloud_probe.py --weights resources/weights/d3rsmde-lean.safetensors \
        build/stage17/stage17-jitter.safetensors
    python scripts/cloud_probe.py --weights resources/weights/d3rsmde-lean.safetensors --steps 6 \
        --figure docs/images/cloud-left-out.png    # the README's picture: the first weights, the last T
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from d3rsmde.pipeline import D3Pipeline
from d3rsmde.raster import predict_raster

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample" / "rmnp-rgb.tif"
CENTRE, RADIUS, EDGE, FAR = (120, 150), 45, 10, 120


def clouded(src: Path, dst: Path) -> tuple[np.ndarray, dict]:
    """Write ``src`` with the cloud painted on to ``dst``; return the mask of pixels far from the cloud and a
    polygon (in the image's CRS) that covers the cloud."""
    with rasterio.open(src) as ds:
        image, profile = ds.read(), ds.profile
    rows, cols = np.mgrid[: image.shape[1], : image.shape[2]]
    distance = np.hypot(rows - CENTRE[0], cols - CENTRE[1])
    cover = np.clip((RADIUS - distance) / EDGE, 0, 1)
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(np.round(image * (1 - cover) + 250 * cover).astype(image.dtype))
    angles = np.linspace(0, 2 * np.pi, 65)
    reach = RADIUS + 1
    ring = [profile["transform"] * (CENTRE[1] + 0.5 + reach * np.cos(a), CENTRE[0] + 0.5 + reach * np.sin(a))
            for a in angles]
    return distance > FAR, {"type": "Polygon", "coordinates": [ring]}


def write_figure(png: Path, image: Path, maps: list[np.ma.MaskedArray]) -> None:
    """The clouded image and the three maps (clear image, cloud left in, cloud left out) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with rasterio.open(image) as ds:
        rgb = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    titles = ["image with a cloud", "height, clear image", "height, cloud left in", "height, cloud left out"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), constrained_layout=True)
    axes[0].imshow(rgb)
    for ax, z in zip(axes[1:], maps):
        ax.imshow(z, cmap="terrain", vmin=0, vmax=1)
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_axis_off()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=60)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--steps", default="0,6")
    parser.add_argument("--figure", type=Path, help="PNG of the first weights' maps at the last number of steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        far, disk = clouded(SAMPLE, tmp / "cloud.tif")
        for weights in args.weights:
            pipe = D3Pipeline.from_pretrained(weights, device="cpu")
            moves = []
            for steps in map(int, args.steps.split(",")):
                maps = []
                for name, image, exclude in (("clear", SAMPLE, None), ("cloud", tmp / "cloud.tif", None),
                                             ("left-out", tmp / "cloud.tif", [disk])):
                    out = tmp / f"{name}-{steps}.tif"
                    predict_raster(image, out, pipe, refine_steps=steps, exclude=exclude)
                    with rasterio.open(out) as ds:
                        maps.append(ds.read(1, masked=True))
                moved = [np.ma.median(np.abs(m - maps[0])[far]) for m in maps[1:]]
                moves.append(f"T={steps}: {moved[0]:.3f} (cloud left out: {moved[1]:.3f})")
            print(f"{weights}: median move far from the cloud {', '.join(moves)}")
            if args.figure and weights == args.weights[0]:
                write_figure(args.figure, tmp / "cloud.tif", maps)


if __name__ == "__main__":
    main()
