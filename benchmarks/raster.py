"""End-to-end `predict_raster` on synthetic GeoTIFFs of growing size: wall time, MP/s, peak RSS, peak GPU memory.

Each size runs in a fresh child process, so its peak resident memory is its own. The child builds the pipeline
and warms it up on a small raster first: the timed run is the steady-state cost of a whole raster.

    python -m benchmarks.raster --out build/bench                                  # 1, 16, 100 MP
    python -m benchmarks.raster --device cpu --sizes 0.25,1,4 --out build/bench
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.transform import from_origin

from benchmarks import common

STRIP_ROWS = 512  # rows generated and written at a time: memory stays ~STRIP_ROWS x width, whatever the height
# Terrain: sums of oriented sinusoids, (wavelength in pixels, amplitude): broad ridges down to fine texture.
OCTAVES = ((2000.0, 1.0), (700.0, 0.5), (250.0, 0.25), (90.0, 0.12), (35.0, 0.06), (14.0, 0.03))
RAMP = np.array([[52, 92, 44], [96, 128, 60], [150, 130, 90], [200, 196, 186]], np.float32)  # low -> high


class Terrain:
    """A seeded height field h(x, y) in about [0, 1], defined everywhere, so any window can be evaluated alone."""

    def __init__(self, seed: int = 0, waves_per_octave: int = 3):
        rng = np.random.default_rng(seed)
        self.waves = []  # (kx, ky, phase, amplitude)
        for wavelength, amplitude in OCTAVES:
            for angle in rng.uniform(0, np.pi, waves_per_octave):
                k = 2 * np.pi / wavelength
                self.waves.append((k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi), amplitude))
        self.norm = sum(w[3] for w in self.waves)

    def heights(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """h on the grid rows x cols; sin(a + b) is split so each wave costs two outer products, not a sin per
        pixel."""
        h = np.zeros((rows.size, cols.size), np.float32)
        for kx, ky, phase, amp in self.waves:
            ax, by = (kx * cols).astype(np.float32), (ky * rows + phase).astype(np.float32)
            h += amp * (np.sin(by)[:, None] * np.cos(ax)[None, :] + np.cos(by)[:, None] * np.sin(ax)[None, :])
        return 0.5 + 0.5 * h / self.norm


def terrain_rgb(terrain: Terrain, row0: int, rows: int, width: int, seed: int) -> np.ndarray:
    """uint8 RGB (3 x rows x width) for image rows row0..row0+rows: a height colour ramp, hillshade and grain."""
    h = terrain.heights(np.arange(row0, row0 + rows + 1, dtype=np.float64), np.arange(width + 1, dtype=np.float64))
    shade = np.clip(1.0 + 6.0 * ((h[:-1, 1:] - h[:-1, :-1]) + (h[1:, :-1] - h[:-1, :-1])), 0.7, 1.3)
    h = h[:-1, :-1]
    grain = np.random.default_rng((seed, row0)).standard_normal(h.shape, dtype=np.float32) * 6
    levels = np.linspace(0, 1, len(RAMP))
    rgb = np.empty((3, rows, width), np.uint8)
    for band in range(3):
        rgb[band] = np.clip(np.interp(h, levels, RAMP[:, band]) * shade + grain, 0, 255)
    return rgb


def write_synthetic_geotiff(path: str | Path, width: int, height: int, *, seed: int = 0,
                            pixel_m: float = 0.5) -> Path:
    """A tiled uint8 RGB GeoTIFF (UTM 33N) of terrain-like imagery, written a strip at a time."""
    path = Path(path)
    terrain = Terrain(seed)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000.0, 5000000.0, pixel_m, pixel_m), tiled=True,
                   blockxsize=256, blockysize=256, photometric="RGB", BIGTIFF="IF_SAFER")

    def write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as ds:
            for row0 in range(0, height, STRIP_ROWS):
                rows = min(STRIP_ROWS, height - row0)
                ds.write(terrain_rgb(terrain, row0, rows, width, seed), window=((row0, row0 + rows), (0, width)))

    common.atomic_write(path, write)
    return path


def side_for(megapixels: float) -> int:
    return max(1, round(math.sqrt(megapixels * 1e6)))


def _child(src: str, dst: str, warm_src: str, weights: str | None, config: str | None, device: str,
           options: dict) -> dict:
    """One size, in a fresh process: build, warm up, then the timed predict_raster."""
    import torch

    from d3rsmde.device import resolve_device
    from d3rsmde.raster import predict_raster

    dev = resolve_device(device)
    start = time.perf_counter()
    pipe, source = common.load_ours(weights, config)
    pipe.to(dev)
    build_s = time.perf_counter() - start
    predict_raster(warm_src, str(Path(dst).with_suffix(".warmup.tif")), pipe, **options)
    setup_rss = common.peak_rss_bytes()
    common.reset_peak_memory(dev)
    stats = predict_raster(src, dst, pipe, **options)
    common.synchronize(dev)
    return {**stats, "model": source, "build_s": build_s, "peak_rss_bytes": common.peak_rss_bytes(),
            "setup_peak_rss_bytes": setup_rss, "peak_gpu_memory_bytes": common.peak_memory_bytes(dev),
            "torch_threads": torch.get_num_threads()}


def run_size(megapixels: float, workdir: Path, warm_src: Path, args: argparse.Namespace) -> dict:
    side = side_for(megapixels)
    src = workdir / f"synthetic-{side}x{side}.tif"
    start = time.perf_counter()
    write_synthetic_geotiff(src, side, side, seed=args.seed)
    generate_s = time.perf_counter() - start
    options = dict(tile=args.tile, batch_size=args.batch_size, refine_steps=args.steps)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        stats = pool.submit(_child, str(src), str(workdir / f"height-{side}.tif"), str(warm_src), args.weights,
                            args.config, args.device, options).result()
    for path in workdir.glob("*.tif"):  # keep the disk use to one size at a time
        if path != warm_src:
            path.unlink()
    mp = stats["megapixels"]
    return {"requested_megapixels": megapixels, "width": side, "height": side, "generate_s": generate_s,
            **{k: v for k, v in stats.items() if k not in ("output", "stretch", "bands")},
            "seconds_per_megapixel": stats["seconds"] / mp}


def plot(result: dict, path: Path) -> bool:
    """Seconds per megapixel against raster size: flat means the engine scales linearly. False: no matplotlib."""
    Figure = common.figure_class()
    if Figure is None:
        return False
    rows = result["rows"]
    sizes, per_mp = [r["megapixels"] for r in rows], [r["seconds_per_megapixel"] for r in rows]
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    ax.plot(sizes, per_mp, "o-")
    for r in rows:
        ax.annotate(f"{r['megapixels_per_second']:.3g} MP/s", (r["megapixels"], r["seconds_per_megapixel"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{m:.3g}" for m in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, 1.25 * max(per_mp))
    ax.set_xlabel("raster size (megapixels)")
    ax.set_ylabel("seconds per megapixel")
    machine = result["machine"]
    ax.set_title(f"predict_raster on {machine.get('gpu', 'CPU ' + machine['cpu'])}", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    common.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True


def to_markdown(result: dict, plotted: bool) -> str:
    on_gpu = any(r["peak_gpu_memory_bytes"] for r in result["rows"])
    headers = ["Raster", "Megapixels", "Tiles", "Batch", "Wall s", "MP/s", "s/MP", "Peak RSS GiB"]
    headers += ["Peak GPU mem GiB"] if on_gpu else []
    table = []
    for r in result["rows"]:
        row = [f"{r['width']} x {r['height']}", common.fmt(r["megapixels"]), r["tiles"], r["batch_size"],
               common.fmt(r["seconds"]), common.fmt(r["megapixels_per_second"]),
               common.fmt(r["seconds_per_megapixel"]), common.fmt(r["peak_rss_bytes"] / 2**30)]
        row += [common.fmt(r["peak_gpu_memory_bytes"] / 2**30)] if on_gpu else []
        table.append(row)
    first = result["rows"][0] if result["rows"] else {}
    return "\n".join([
        "# Whole-raster speed: predict_raster on synthetic GeoTIFFs", "",
        common.machine_line(result["machine"]), "",
        f"Model: {first.get('model')}; tile {first.get('tile')}, overlap {first.get('overlap')}, "
        f"refine steps {first.get('refine_steps')}, device {first.get('device')}. Input: uint8 RGB, tiled, "
        "uncompressed; output: float32 GeoTIFF. Wall time covers reading, stretching, inference, the seam "
        "solve, blending and writing; it excludes model loading and a warm-up run on a small raster. Peak RSS is "
        "the child process's, model included.", "",
        common.markdown_table(headers, table),
        "![seconds per megapixel vs raster size](raster.png)" if plotted else "", "",
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.raster", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda t: tuple(float(v) for v in t.split(",") if v.strip()),
                   default=(1.0, 16.0, 100.0), help="raster sizes in megapixels (square rasters)")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default=None, help="our checkpoint (default: the shipped weights if present)")
    p.add_argument("--config", default=None, help="our config, randomly initialised, instead of weights")
    p.add_argument("--tile", type=int, default=None, help="default: the model's tile size")
    p.add_argument("--batch-size", type=int, default=None, help="default: predict_raster's choice")
    p.add_argument("--steps", type=int, default=None, help="refine steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the synthetic rasters go (default: a temp folder)")
    p.add_argument("--out", default="build/bench", help="folder for raster.json, raster.md, raster.png")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from d3rsmde.device import resolve_device

    args = parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="d3rsmde-bench-") as tmp:
        workdir = Path(tmp)
        pipe, _ = common.load_ours(args.weights, args.config)
        tile, precision = args.tile or pipe.config.tile_size, common.pipeline_precision(pipe, device)
        del pipe
        warm_src = write_synthetic_geotiff(workdir / "warmup.tif", 2 * tile, 2 * tile, seed=args.seed + 1)
        rows = [run_size(mp, workdir, warm_src, args) for mp in args.sizes]
    result = {
        "machine": {**common.describe_machine(device, None), "dtype": precision},
        "settings": {"sizes_megapixels": list(args.sizes), "weights": args.weights, "config": args.config,
                     "tile": args.tile, "batch_size": args.batch_size, "steps": args.steps,
                     "argv": list(argv if argv is not None else sys.argv[1:])},
        "rows": rows,
    }
    plotted = plot(result, out / "raster.png")
    _, md_path = common.write_results(out, "raster", result, to_markdown(result, plotted))
    print(md_path.read_text())
    return result


if __name__ == "__main__":
    main()
