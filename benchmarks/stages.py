"""Where a whole-raster run spends its time: wall seconds per stage of one `predict_raster` call, from cProfile.

cProfile sees the calling thread only: reading and stretching tiles happen in the prefetch thread, so the
inference loop's wait for the next batch ("waiting for tiles") is the part of reading that inference did not hide.
For the same reason the model runs in the calling thread here (``workers=1``; on a CPU the engine's default runs
two batches at once in worker threads, whose time cProfile would not split into the model's parts).

    python -m benchmarks.stages --megapixels 4 --out benchmarks/results/cpu-2core
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from benchmarks import common
from benchmarks.raster import side_for, write_synthetic_geotiff

def stages() -> tuple[tuple[str, object], ...]:
    """(label, function) in table order; indented labels are parts of the stage above them."""
    import queue

    from d3rsmde import imagery, tiling
    from d3rsmde.models import CoarseDepthModel, Refiner
    from d3rsmde.raster import calibration, output, predict, tiles
    from d3rsmde.vae import LatentCodec

    return (
        ("percentile stretch limits (decimated read)", imagery.stretch_limits),
        ("pass 1: tiles through the model", predict._infer_tiles),
        ("  waiting for tiles (read + stretch not hidden)", queue.Queue.get),
        ("  coarse model", CoarseDepthModel.forward),
        ("  VAE encode (image + coarse map)", LatentCodec._encode),
        ("  refiner steps", Refiner.forward),
        ("  VAE decode", LatentCodec.decode_depth),
        ("  scratch writes", tiles.TileStore.write),
        ("seam equations from overlaps", calibration._overlap_rows),
        ("seam solve (LSQR)", tiling.solve_affines),
        ("pass 2: blend and write", predict._write_blended),
        ("tags and overviews", output.finish),
        ("output verification", output.VerifiedOutput.verify),
    )


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each stage's function, found by its code object (file, first line, name)."""
    out = {}
    for label, fn in stages():
        code = inspect.unwrap(fn).__code__
        entry = stats.stats.get((code.co_filename, code.co_firstlineno, code.co_name))
        out[label] = entry[3] if entry else 0.0
    return out


def run(args: argparse.Namespace) -> dict:
    from d3rsmde.raster import predict_raster

    pipe, source = common.load_ours(args.weights, args.config)
    side = side_for(args.megapixels)
    with tempfile.TemporaryDirectory(prefix="d3rsmde-stages-", dir=args.workdir) as tmp:
        src = write_synthetic_geotiff(Path(tmp) / "in.tif", side, side)
        warm = write_synthetic_geotiff(Path(tmp) / "warm.tif", 256, 256, seed=1)
        predict_raster(warm, Path(tmp) / "warm-out.tif", pipe, workers=1)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        stats = profiler.runcall(predict_raster, src, Path(tmp) / "out.tif", pipe, workers=1)
        wall = time.perf_counter() - start
    seconds = stage_seconds(pstats.Stats(profiler))
    machine = {**common.describe_machine(pipe.device, None), "dtype": common.pipeline_precision(pipe, pipe.device)}
    return {"machine": machine, "model": source,
            "settings": {"megapixels": args.megapixels, "argv": list(sys.argv[1:])}, "run": stats,
            "wall_seconds": wall, "stages": seconds}


def to_markdown(result: dict) -> str:
    wall = result["wall_seconds"]
    rows = [[label, common.fmt(s), f"{100 * s / wall:.0f} %"] for label, s in result["stages"].items()]
    r = result["run"]
    return "\n".join([
        "# Where predict_raster spends its time", "", common.machine_line(result["machine"]), "",
        f"One run under cProfile (which adds some overhead to Python calls): {r['megapixels']:.3g} MP synthetic "
        f"GeoTIFF, {result['model']}, tile {r['tile']}, overlap {r['overlap']}, {r['tiles']} tiles, batch "
        f"{r['batch_size']}, one worker (the model in the profiled thread), T = {r['refine_steps']}, device "
        f"{r['device']}; wall {wall:.1f} s. Indented rows are "
        "parts of the row above them.", "",
        common.markdown_table(["Stage", "Seconds", "Share of wall"], rows),
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0])
    p.add_argument("--megapixels", type=float, default=4.0)
    p.add_argument("--weights", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default="build/bench")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    _, md_path = common.write_results(args.out, "stages", result, to_markdown(result))
    print(md_path.read_text())
    return result


if __name__ == "__main__":
    main()
