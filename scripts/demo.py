#!/usr/bin/env python3
"""`make demo`: estimate height for the bundled sample through the QGIS plugin, headless, then draw a preview.

Runs `qgis_process.bin run d3rsmde:estimatedepth` in an isolated QGIS profile with the in-repo plugin enabled
(the environment comes from scripts/qgis_env.sh), so it exercises exactly what a QGIS user runs, then writes a
PNG with the image, the coloured height and its hillshade side by side.

    python scripts/demo.py --out build/demo [--weights W.safetensors] [--input image.tif]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from d3rsmde.files import atomic_file
from d3rsmde.weights import DEFAULT_NAME

ROOT = Path(__file__).resolve().parents[1]
QGIS_ENV = ROOT / "scripts" / "qgis_env.sh"
SAMPLE = ROOT / "resources" / "sample" / "rmnp-rgb.tif"
DEFAULT_WEIGHTS = ROOT / "resources" / "weights" / DEFAULT_NAME
DEPTH_STYLE = ROOT / "resources" / "styles" / "depth-terrain.qml"
RELIEF_SHARE_OF_WIDTH = 0.05  # hillshade exaggeration, as the plugin's hillshade layer uses


def qgis_process(args: list[str], profile: Path, extra_env: dict | None = None,
                 **kwargs) -> subprocess.CompletedProcess:
    """`qgis_process.bin ARGS` with scripts/qgis_env.sh sourced and `profile` as the QGIS profile folder;
    `kwargs` go to subprocess.run."""
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(profile), **(extra_env or {})}
    env.pop("XDG_RUNTIME_DIR", None)  # qgis_env.sh puts a private one in the profile
    command = ["bash", "-c", 'source "$0" && exec qgis_process.bin "$@"', str(QGIS_ENV), *args]
    return subprocess.run(command, env=env, **kwargs)


def estimate_depth(image: Path, output: Path, profile: Path, weights: Path | None = None) -> None:
    args = ["run", "d3rsmde:estimatedepth", "--", f"INPUT={image}", f"OUTPUT={output}"]
    if weights is not None:
        args.append(f"WEIGHTS={weights}")
    result = qgis_process(args, profile)
    if result.returncode != 0 or not output.is_file():
        sys.exit(f"qgis_process failed (exit {result.returncode}); its messages are above.")


def style_colormap(qml: Path = DEPTH_STYLE):
    """The plugin's terrain ramp (the QGIS style's gradient) as a matplotlib colormap, so both views agree."""
    import xml.etree.ElementTree as ET

    from matplotlib.colors import LinearSegmentedColormap

    ramp = ET.parse(qml).find(".//colorramp[@name='[source]']/Option")
    options = {option.get("name"): option.get("value") for option in ramp}

    def rgba(text: str) -> list[float]:
        return [int(channel) / 255 for channel in text.split(",")]

    stops = [stop.split(";") for stop in options["stops"].split(":")]
    return LinearSegmentedColormap.from_list("d3rsmde-terrain", [
        (0.0, rgba(options["color1"])), *((float(at), rgba(color)) for at, color in stops),
        (1.0, rgba(options["color2"]))])


def write_preview(image: Path, depth: Path, png: Path) -> None:
    """image | height (terrain colours) | hillshade, one row, same pixel grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio
    from matplotlib.colors import LightSource

    with rasterio.open(image) as src:
        rgb = src.read([1, 2, 3]).astype(np.float32)
    low, high = np.percentile(rgb, (1, 99))
    rgb = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1).transpose(1, 2, 0)
    with rasterio.open(depth) as src:
        height = src.read(1, masked=True).astype(np.float32)
    span = float(height.max() - height.min()) or 1.0
    shade = LightSource(azdeg=315, altdeg=45).hillshade(
        height.filled(float(height.mean())), vert_exag=RELIEF_SHARE_OF_WIDTH * height.shape[1] / span)

    fig, axes = plt.subplots(1, 3, figsize=(15, 5 * rgb.shape[0] / rgb.shape[1] + 0.6), constrained_layout=True)
    axes[0].imshow(rgb)
    axes[0].set_title(image.name)
    shown = axes[1].imshow(height, cmap=style_colormap())
    fig.colorbar(shown, ax=axes[1], shrink=0.8, label="height")
    axes[1].set_title("D3-RSMDE height")
    axes[2].imshow(np.ma.masked_where(np.ma.getmaskarray(height), shade), cmap="gray")
    axes[2].set_title("hillshade")
    for ax in axes:
        ax.set_axis_off()
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "demo", help="output folder")
    parser.add_argument("--weights", type=Path, help=f"weights to use (default {DEFAULT_WEIGHTS.relative_to(ROOT)})")
    parser.add_argument("--input", type=Path, default=SAMPLE, help="image to process (default: the RMNP sample)")
    args = parser.parse_args(argv)

    weights = args.weights or DEFAULT_WEIGHTS
    if not weights.is_file():
        sys.exit(f"Weights not found: {weights}. The default weights are not trained/bundled yet; "
                 "pass --weights PATH.safetensors.")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = args.input.stem.removesuffix("-rgb")
    depth, preview = out / f"{stem}-depth.tif", out / f"{stem}-preview.png"
    estimate_depth(args.input.resolve(), depth, out / ".qgis-profile", weights.resolve() if args.weights else None)
    write_preview(args.input, depth, preview)
    print(f"height raster: {depth}\npreview:       {preview}")


if __name__ == "__main__":
    main()
