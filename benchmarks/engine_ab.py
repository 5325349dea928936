"""Interleaved A/B of whole-raster engine settings in one run: one raster, the variants alternated round by round,
each run in a fresh process, so whatever else loads the machine falls on all of them alike. Every output is compared
with the first variant's, and with the reference DEM when there is one.

A variant is ``NAME`` or ``NAME:key=value;key=value``: ``threads`` (torch intra-op threads), ``tile``, ``overlap``,
``batch``, ``workers`` (batches run at once), ``autocast`` (``fp32`` | ``bf16``: the pipeline's CPU autocast,
overriding its own choice), ``weights`` (another weights file than ``--weights``, e.g. the same model with a narrower
decoder), and any upper-case key as an environment variable of the run (``OMP_WAIT_POLICY=PASSIVE``). ``--load N``
keeps N busy processes running through the whole A/B (one per core: a machine someone else is using) and records
their CPU share.

    python -m benchmarks.engine_ab --variants "base,one-thread:threads=1" --rounds 3 --load 2 --out build/ab
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import common

REPO = Path(__file__).resolve().parents[1]
RMNP = (REPO / "resources" / "sample" / "rmnp-rgb.tif", REPO / "resources" / "sample" / "rmnp-dem.tif")
OPTIONS = {"threads": int, "tile": int, "overlap": int, "batch": int, "workers": int, "autocast": str, "weights": str}


def parse_variant(text: str) -> dict:
    """``NAME:key=value;...`` -> {"name", "options", "env"}; unknown lower-case keys are an error."""
    name, _, rest = text.partition(":")
    options, env = {}, {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        key, _, value = item.partition("=")
        if key.isupper():
            env[key] = value
        elif key in OPTIONS:
            options[key] = OPTIONS[key](value)
        else:
            raise SystemExit(f"unknown variant option {key!r} in {text!r}; known: {sorted(OPTIONS)} or ENV_VARS")
    if options.get("autocast", "fp32") not in ("fp32", "bf16"):
        raise SystemExit(f"autocast must be fp32 or bf16, got {options['autocast']!r}")
    return {"name": name.strip(), "options": options, "env": env}


def child(spec: dict) -> dict:
    """One timed predict_raster with the variant's settings, after a warm-up call of the model."""
    import torch

    import d3rsmde.pipeline as pipeline_module
    from d3rsmde.raster import predict_raster

    options = spec["options"]
    if "threads" in options:
        torch.set_num_threads(options["threads"])
    if "autocast" in options:
        dtype = torch.bfloat16 if options["autocast"] == "bf16" else None
        pipeline_module.autocast_dtype = lambda device: dtype
    torch.manual_seed(0)  # the same random weights in every run of a config
    pipe, source = (common.load_ours(options["weights"]) if "weights" in options
                    else common.load_ours(spec["weights"], spec["config"]))
    tile = options.get("tile", pipe.config.tile_size)
    pipe(torch.rand(options.get("batch", 2), 3, tile, tile), refine_steps=spec["steps"])  # oneDNN primitives
    before = resource.getrusage(resource.RUSAGE_SELF)
    stats = predict_raster(spec["src"], spec["dst"], pipe, tile=tile, overlap=options.get("overlap"),
                           batch_size=options.get("batch"), workers=options.get("workers"), refine_steps=spec["steps"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": stats["seconds"], "megapixels": stats["megapixels"], "tiles": stats["tiles"],
            "tile": stats["tile"], "overlap": stats["overlap"], "batch_size": stats["batch_size"],
            "workers": stats["workers"],
            "cpu_seconds": cpu, "torch_threads": torch.get_num_threads(), "model": source,
            "inferred_pixels_per_output_pixel": stats["tiles"] * stats["tile"] ** 2 / (stats["megapixels"] * 1e6)}


def _busy() -> None:
    while True:
        pass


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "from benchmarks.engine_ab import _busy; _busy()"], cwd=REPO)
            for _ in range(n)]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def read_output(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1, masked=True).filled(np.nan)


def run(args: argparse.Namespace) -> dict:
    variants = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="d3rsmde-ab-", dir=args.workdir) as tmp:
        return _run(args, variants, Path(tmp))


def _run(args: argparse.Namespace, variants: list[dict], work: Path) -> dict:
    from d3rsmde.evaluation import evaluate_rasters

    if args.megapixels:
        from benchmarks.raster import side_for, write_synthetic_geotiff

        side = side_for(args.megapixels)
        src, dem = write_synthetic_geotiff(work / f"synthetic-{side}.tif", side, side), None
    else:
        src, dem = RMNP
    load = start_load(args.load)
    runs = []
    try:
        for round_ in range(args.rounds):
            for v in variants:
                dst = work / f"{v['name']}.tif"
                spec = {**v, "src": str(src), "dst": str(dst), "weights": args.weights, "config": args.config,
                        "steps": args.steps}
                env = {**os.environ, **v["env"], "PYTHONPATH": os.pathsep.join(
                    [str(REPO / "backend"), str(REPO), os.environ.get("PYTHONPATH", "")])}
                load_before, wall = cpu_seconds([p.pid for p in load]), time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "benchmarks.engine_ab", "--child", json.dumps(spec)],
                                      env=env, cwd=REPO, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"variant {v['name']} failed:\n{done.stderr[-3000:]}")
                wall = time.perf_counter() - wall
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row.update(variant=v["name"], round=round_, load_average_1min=round(os.getloadavg()[0], 2),
                           load_cpu_share=(cpu_seconds([p.pid for p in load]) - load_before) / wall / args.load
                           if args.load else None)
                runs.append(row)
                print(f"round {round_} {v['name']}: {row['seconds']:.1f} s", flush=True)
        rows = summarise(variants, runs, work, dem, evaluate_rasters)
    finally:
        for p in load:
            p.kill()
            p.wait()
    return {"machine": common.describe_machine(__import__("torch").device("cpu")),
            "settings": {**{k: v for k, v in vars(args).items() if k != "child"},
                         "raster": str(src), "reference_dem": str(dem) if dem else None},
            "rows": rows, "runs": runs}


def summarise(variants: list[dict], runs: list[dict], work: Path, dem, evaluate_rasters) -> list[dict]:
    base = read_output(work / f"{variants[0]['name']}.tif")
    base_s = statistics.median(r["seconds"] for r in runs if r["variant"] == variants[0]["name"])
    rows = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v["name"]]
        out = read_output(work / f"{v['name']}.tif")
        diff = np.abs(out - base)[np.isfinite(base) & np.isfinite(out)]
        seconds = statistics.median(r["seconds"] for r in mine)
        rows.append({
            "variant": v["name"], "options": v["options"], "env": v["env"], "seconds_runs": [r["seconds"] for r in mine],
            "seconds": seconds, "megapixels_per_second": mine[0]["megapixels"] / seconds,
            "speedup_vs_first": base_s / seconds,
            "cpu_seconds_per_wall_second": statistics.median(r["cpu_seconds"] / r["seconds"] for r in mine),
            "load_cpu_share": statistics.median(r["load_cpu_share"] for r in mine) if mine[0]["load_cpu_share"]
            is not None else None,
            "mean_abs_diff_vs_first": float(diff.mean()), "max_abs_diff_vs_first": float(diff.max()),
            "rmse_after_affine_vs_dem": evaluate_rasters(work / f"{v['name']}.tif", dem)["whole"]["rmse_after_affine"]
            if dem else None,
            **{k: mine[0][k] for k in ("tiles", "tile", "overlap", "batch_size", "workers", "torch_threads",
                                       "inferred_pixels_per_output_pixel", "model")},
        })
    return rows


def to_markdown(result: dict) -> str:
    s = result["settings"]
    headers = ["Variant", "Settings", "Median s", "MP/s", "x vs first", "CPU s per s", "Inferred px / output px",
               "Mean / max abs diff vs first", "RMSE after affine vs DEM (m)"]
    table = [[r["variant"], "; ".join(f"{k}={v}" for k, v in {**r["options"], **r["env"]}.items()) or "defaults",
              common.fmt(r["seconds"]), common.fmt(r["megapixels_per_second"]), common.fmt(r["speedup_vs_first"]),
              common.fmt(r["cpu_seconds_per_wall_second"]), common.fmt(r["inferred_pixels_per_output_pixel"]),
              f"{r['mean_abs_diff_vs_first']:.2g} / {r['max_abs_diff_vs_first']:.2g}",
              common.fmt(r["rmse_after_affine_vs_dem"])] for r in result["rows"]]
    shares = [r["load_cpu_share"] for r in result["rows"] if r["load_cpu_share"] is not None]
    load = (f"{s['load']} competing busy processes ran throughout, each getting {common.fmt(min(shares))}-"
            f"{common.fmt(max(shares))} of a core during the runs" if shares else "no competing load started")
    return "\n".join([
        "# Engine A/B: predict_raster variants, interleaved", "", common.machine_line(result["machine"]), "",
        f"Raster {Path(s['raster']).name}; {s['rounds']} rounds, variants alternated within each round, each run "
        f"a fresh process (model load and one warm-up call untimed); {load}. Load averages seen: "
        f"{sorted({r['load_average_1min'] for r in result['runs']})}. Model: {result['rows'][0]['model']}, "
        f"refine steps {s['steps'] if s['steps'] is not None else 'default'}. Diffs are in the output's relative "
        "units (0..1), against the first variant's last output.", "",
        common.markdown_table(headers, table),
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="base", help="comma-separated variants; the first is the baseline")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--load", type=int, default=0, help="busy processes to run alongside (a competing load)")
    p.add_argument("--megapixels", type=float, default=None, help="a synthetic raster of this size instead of "
                                                                   "the RMNP sample")
    p.add_argument("--weights", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default="build/bench")
    p.add_argument("--name", default="engine_ab", help="file stem of the results: NAME.json, NAME.md")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    result = run(args)
    _, md_path = common.write_results(args.out, args.name, result, to_markdown(result))
    print(md_path.read_text())
    return result


if __name__ == "__main__":
    main()
