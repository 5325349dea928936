"""Per-tile latency, throughput, peak memory and achieved FLOP/s: our pipeline against Marigold and DPT-Hybrid.

All rows run in one process on one device, one model resident at a time (so peak memory is that model's), with
random weights where no weights file is given: cost does not depend on weight values.

    python -m benchmarks.speed --out build/bench                         # GPU, full settings
    python -m benchmarks.speed --device cpu --quick --out build/bench    # CPU: smaller tiles, extrapolated peers
    python -m benchmarks.speed --rows marigold --profile "v1.0" --out build/bench
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from benchmarks import common, peers
from d3rsmde.device import is_out_of_memory
from d3rsmde.flops import count_flops

MARIGOLD_SETTINGS = (  # (setting label, steps, ensemble)
    ("v1.0: 50 steps x 10", 50, 10),
    ("4 steps x 1", 4, 1),
    ("LCM: 1 step x 1", 1, 1),
)
MARIGOLD_V1 = MARIGOLD_SETTINGS[0][0]
REFINE_STEPS = (0, 3, 6, 10)  # 0 = coarse model only


@dataclass(frozen=True)
class Case:
    """One row: a model, a setting and a tile size."""

    family: str  # "ours" | "marigold" | "dpt"
    model: str
    setting: str
    tile: int
    steps: int = 0
    ensemble: int = 1
    extrapolated: bool = False

    @property
    def name(self) -> str:
        return f"{self.model} {self.setting} @{self.tile}"


@dataclass
class Family:
    """Cases that share one model, built just before they run and freed after."""

    key: str
    build: Callable[[], Any]
    parts: tuple[str, ...]  # attribute paths of the heavy submodules (channels-last, torch.compile)
    call: Callable[[Any, Tensor, Case], Tensor]
    precision: Callable[[], contextlib.AbstractContextManager]
    cases: list[Case] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", choices=["auto", *common.DTYPES],
                   help="peers' autocast precision (auto: bf16 on GPU, fp32 on CPU); ours follows the pipeline's")
    p.add_argument("--weights", default=None, help="our checkpoint (default: the shipped weights if present)")
    p.add_argument("--config", default=None, help="our config, randomly initialised, instead of weights")
    p.add_argument("--scale", default="full", choices=peers.SCALES, help="peer sizes; tiny is for smoke tests")
    p.add_argument("--tiles", type=_ints, default=None, help="tile sizes for ours and DPT-Hybrid (default: "
                                                             "512 and the weights' tile)")
    p.add_argument("--marigold-tiles", type=_ints, default=None, help="Marigold sizes (default 768,512)")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="throughput search (default 1,2,4,...,32)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-call-s", type=float, default=10.0,
                   help="stop growing the throughput batch once one call takes longer than this")
    p.add_argument("--extrapolate-above", type=int, default=None,
                   help="estimate (not run) Marigold rows with more than this many U-Net calls (steps x ensemble) "
                        "(default: never; 4 with --quick)")
    p.add_argument("--quick", action="store_true", help="CPU-sized run: tile 256, 2 repeats, batches 1,2, "
                                                        "Marigold 50x10 extrapolated")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the heavy submodules (falls back "
                                                          "to eager, and says so, if compiling fails)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak for the %% column (default: known GPUs' dense 16-bit peak)")
    p.add_argument("--rows", default=None, help="comma-separated substrings; run only rows whose name has one")
    p.add_argument("--profile", default=None, metavar="ROW",
                   help="write a torch.profiler table of the first row whose name contains ROW")
    p.add_argument("--out", default="build/bench", help="folder for speed.json, speed.md, speed.png, profile-*.txt")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.batch_sizes = args.batch_sizes or ((1, 2) if args.quick else (1, 2, 4, 8, 16, 32))
    if args.extrapolate_above is None and args.quick:
        args.extrapolate_above = 4
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return common.DTYPES[name]


def _autocast(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def plan(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[Family], dict]:
    """The families and their cases, in table order, with what was chosen for the defaults."""
    ours, ours_source = common.load_ours(args.weights, args.config)
    ours_cfg = ours.config
    tiles = args.tiles or ((256,) if args.quick else tuple(sorted({512, ours_cfg.tile_size})))
    marigold_tiles = args.marigold_tiles or ((256,) if args.quick else (768, 512))
    peer_precision = _autocast(device, dtype)
    # Handed over once and not kept here: once its rows are done, the pipeline leaves the GPU.
    holder: dict[str, Any] = {"ours": ours}

    ours_family = Family(
        "ours", lambda: holder.pop("ours").to(device), ("coarse", "refiner", "codec.vae.encoder", "codec.vae.decoder"),
        lambda pipe, x, case: pipe(x, refine_steps=case.steps), contextlib.nullcontext,
        [Case("ours", f"D3-RSMDE {ours_cfg.name}", "coarse only" if t == 0 else f"T={t}", tile, steps=t)
         for tile in tiles for t in REFINE_STEPS],
    )

    def build_marigold():
        with torch.device(device):  # initialise on the device: an 866M-parameter U-Net is slow to init on CPU
            return peers.build_marigold(args.scale)

    limit = args.extrapolate_above
    marigold = Family(
        "marigold", build_marigold, ("unet", "vae.encoder", "vae.decoder"),
        lambda peer, x, case: peer(x, steps=case.steps, ensemble=case.ensemble), peer_precision,
        [Case("marigold", "Marigold", label, tile, steps=s, ensemble=e,
              extrapolated=limit is not None and s * e > limit)
         for tile in marigold_tiles for label, s, e in MARIGOLD_SETTINGS],
    )

    def build_dpt():
        with torch.device(device):
            return types.SimpleNamespace(model=peers.build_dpt_hybrid(args.scale))

    dpt = Family(
        "dpt", build_dpt, ("model",), lambda ns, x, case: ns.model(x), peer_precision,
        [Case("dpt", "DPT-Hybrid-sized coarse", "(config base)" if args.scale == "full" else "(tiny)", tile)
         for tile in tiles],
    )
    families = [ours_family, marigold, dpt]
    if args.rows:
        wanted = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
        for fam in families:
            fam.cases = [c for c in fam.cases if any(w in c.name.lower() for w in wanted)]
    chosen = {"ours": ours_source, "tiles": list(tiles), "marigold_tiles": list(marigold_tiles),
              "ours_precision": common.pipeline_precision(ours, device)}
    return families, chosen


def _get(root: Any, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _set(root: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    setattr(_get(root, ".".join(parents)) if parents else root, name, value)


class Runner:
    """Measures cases on one device with one set of options."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.notes: list[str] = []
        self.profiled = False

    def images(self, batch: int, tile: int) -> Tensor:
        x = torch.rand(batch, 3, tile, tile, device=self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.args.channels_last else x

    def prepare(self, fam: Family, root: Any) -> None:
        """Channels-last and torch.compile on the family's heavy parts; a failed compile falls back to eager."""
        if self.args.channels_last:
            for path in fam.parts:
                _get(root, path).to(memory_format=torch.channels_last)
        if not self.args.compile:
            return
        eager = {path: _get(root, path) for path in fam.parts}
        for path, module in eager.items():
            _set(root, path, torch.compile(module))
        first = fam.cases[0]
        probe = Case(first.family, first.model, first.setting, first.tile, steps=1, ensemble=1)
        try:
            with fam.precision():
                fam.call(root, self.images(1, probe.tile), probe)
        except Exception as error:  # any compiler failure: measure eager rather than nothing
            for path, module in eager.items():
                _set(root, path, module)
            self.notes.append(f"torch.compile failed for {fam.key} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); measured eager.")

    def run_family(self, fam: Family) -> list[dict]:
        if not fam.cases:
            return []
        root = fam.build()
        self.prepare(fam, root)
        costs: dict[int, MarigoldCost] = {}
        rows = []
        for case in fam.cases:
            run = self._runner(fam, root, case)
            if fam.key == "marigold":
                cost = costs.setdefault(case.tile, MarigoldCost(self, fam, root, case.tile))
                flops = cost.flops(case.steps, case.ensemble)
            else:
                flops = self.eager(lambda: count_flops(lambda: run(self.images(1, case.tile))))
            if case.extrapolated:
                rows.append(self._row(case, flops, latency=cost.seconds(case.steps, case.ensemble)))
                continue
            rows.append(self.measure(case, run, flops))
            if self.args.profile and not self.profiled and self.args.profile.lower() in case.name.lower():
                self.profile(case, run)
                self.profiled = True
        del root, costs
        self._free()
        return rows

    def _runner(self, fam: Family, root: Any, case: Case) -> Callable[[Tensor], Tensor]:
        def run(x: Tensor) -> Tensor:
            with fam.precision():
                return fam.call(root, x, case)

        return run

    def eager(self, fn: Callable[[], Any]) -> Any:
        """Run fn with compiled modules running eagerly: the FLOP counter must see every operator."""
        if self.args.compile and hasattr(torch.compiler, "set_stance"):
            with torch.compiler.set_stance("force_eager"):
                return fn()
        return fn()

    def measure(self, case: Case, run: Callable[[Tensor], Tensor], flops: int) -> dict:
        args, device = self.args, self.device
        x = self.images(1, case.tile)
        common.reset_peak_memory(device)
        try:
            times = common.time_call(lambda: run(x), device, warmup=args.warmup, repeats=args.repeats)
        except Exception as error:
            return self._row(case, flops, error=self._failure(error, 1))
        latency = common.median(times)
        peak = common.peak_memory_bytes(device)
        by_batch: dict[int, float | str] = {1: 1 / latency}
        last_call = latency
        for batch in args.batch_sizes:
            if batch <= 1:
                continue
            if last_call > args.max_call_s:
                break
            xb = self.images(batch, case.tile)
            try:
                call = common.median(common.time_call(lambda: run(xb), device, warmup=1,
                                                      repeats=max(1, min(3, args.repeats))))
            except Exception as error:
                del xb
                by_batch[batch] = self._failure(error, batch)
                break
            by_batch[batch] = batch / call
            last_call = call
        return self._row(case, flops, latency=latency, times=times, peak=peak, by_batch=by_batch)

    def _failure(self, error: Exception, batch: int) -> str:
        """The row's note for a failed call: out of memory, or a compiled graph that would not run; else raise."""
        if is_out_of_memory(error):
            self._free()
            return f"out of memory at batch {batch}"
        if self.args.compile:
            return f"failed under torch.compile at batch {batch}: {type(error).__name__}"
        raise error

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _row(self, case: Case, flops: int, latency: float | None = None, times: list[float] | None = None,
             peak: int | None = None, by_batch: dict | None = None, error: str | None = None) -> dict:
        measured = {b: v for b, v in (by_batch or {}).items() if isinstance(v, float)}
        best_batch = max(measured, key=measured.get) if measured else None
        row = {
            "name": case.name, "family": case.family, "model": case.model, "setting": case.setting,
            "tile": case.tile, "steps": case.steps, "ensemble": case.ensemble,
            "source": "extrapolated" if case.extrapolated else "measured",
            "latency_s": latency, "latency_runs_s": times,
            "throughput_tiles_per_s": measured.get(best_batch), "best_batch": best_batch,
            "throughput_by_batch": {str(b): v for b, v in (by_batch or {}).items()},
            "peak_memory_bytes": peak, "flops_per_tile": flops,
            "achieved_tflops_batch1": flops / latency / 1e12 if latency else None,
            "achieved_tflops_best": flops * measured[best_batch] / 1e12 if measured else None,
        }
        if error:
            row["error"] = error
        return row

    def profile(self, case: Case, run: Callable[[Tensor], Tensor]) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        x = self.images(1, case.tile)
        run(x)
        common.synchronize(self.device)
        with profile(activities=activities) as prof:
            run(x)
            common.synchronize(self.device)
        sort = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", case.name).strip("-").lower()
        path = Path(self.args.out) / f"profile-{slug}.txt"
        common.write_text(path, f"{case.name}: one call at batch 1, sorted by {sort}\n\n{table}\n")
        self.notes.append(f"Profile of {case.name}: {path.name}.")


class MarigoldCost:
    """Marigold's cost at one tile as its parts: encode once, steps x ensemble U-Net steps, ensemble decodes.

    A Marigold call is exactly that composition, so FLOPs summed from the parts (each counted once) are exact,
    and the time of a call too long to measure can be estimated from the parts' measured times.
    """

    def __init__(self, runner: Runner, fam: Family, peer: peers.MarigoldPeer, tile: int):
        self.runner, self.fam, self.peer, self.tile = runner, fam, peer, tile
        self._flops: dict[str, int] | None = None
        self._seconds: dict[str, float] | None = None

    def _parts(self) -> dict[str, Callable[[], Any]]:
        peer = self.peer
        with torch.no_grad(), self.fam.precision():
            z_x = peer.encode(self.runner.images(1, self.tile))
        z_t = torch.randn_like(z_x)
        peer.scheduler.set_timesteps(1, device=z_x.device)
        t = peer.scheduler.timesteps[0]

        def part(fn: Callable[[], Any]) -> Callable[[], Any]:
            def call():
                with torch.no_grad(), self.fam.precision():
                    return fn()
            return call

        return {
            "encode": part(lambda: peer.encode(self.runner.images(1, self.tile))),
            "step": part(lambda: peer.denoise(z_x, z_t, t)),
            "decode": part(lambda: peer.decode(z_t)),
        }

    def _combine(self, parts: dict[str, float], steps: int, ensemble: int) -> float:
        return parts["encode"] + steps * ensemble * parts["step"] + ensemble * parts["decode"]

    def flops(self, steps: int, ensemble: int) -> int:
        if self._flops is None:
            self._flops = {k: self.runner.eager(lambda fn=fn: count_flops(fn))
                           for k, fn in self._parts().items()}
        return int(self._combine(self._flops, steps, ensemble))

    def seconds(self, steps: int, ensemble: int) -> float:
        if self._seconds is None:
            args, device = self.runner.args, self.runner.device
            self._seconds = {k: common.median(common.time_call(fn, device, warmup=args.warmup, repeats=args.repeats))
                             for k, fn in self._parts().items()}
            self.runner.notes.append(
                f"Marigold @{self.tile} parts, measured: encode {self._seconds['encode'] * 1e3:.0f} ms, one U-Net "
                f"step (1 member) {self._seconds['step'] * 1e3:.0f} ms, decode {self._seconds['decode'] * 1e3:.0f} ms."
            )
        return self._combine(self._seconds, steps, ensemble)


def add_ratios(rows: list[dict]) -> None:
    """Speed-up and memory ratio against Marigold v1.0 at the same tile size, where that row exists."""
    refs = {r["tile"]: r for r in rows if r["family"] == "marigold" and r["setting"] == MARIGOLD_V1}
    for row in rows:
        ref = refs.get(row["tile"])
        row["speedup_vs_marigold_v1"] = (ref["latency_s"] / row["latency_s"]
                                         if ref and ref["latency_s"] and row["latency_s"] else None)
        row["memory_ratio_vs_marigold_v1"] = (ref["peak_memory_bytes"] / row["peak_memory_bytes"]
                                              if ref and ref["peak_memory_bytes"] and row["peak_memory_bytes"]
                                              else None)
        row["ratio_basis"] = ref["source"] if ref else None


def plot(result: dict, path: Path) -> bool:
    """Speed-up over Marigold v1.0 per row (log scale), one bar each; False when no row has a ratio or there is no
    matplotlib."""
    Figure = common.figure_class()
    rows = [r for r in result["rows"] if r["speedup_vs_marigold_v1"]]
    if not rows or Figure is None:
        return False
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.2), dpi=120)
    ax = fig.add_subplot()
    labels = [f"{r['model']} {r['setting']} @{r['tile']}" for r in rows]
    colours = {"ours": "tab:green", "marigold": "tab:red", "dpt": "tab:blue"}
    ax.barh(labels, [r["speedup_vs_marigold_v1"] for r in rows], color=[colours[r["family"]] for r in rows])
    for y, r in enumerate(rows):
        estimate = "~" if "extrapolated" in (r["source"], r["ratio_basis"]) else ""
        ax.annotate(f"{estimate}{r['speedup_vs_marigold_v1']:.3g}x", (r["speedup_vs_marigold_v1"], y),
                    textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("x faster per tile than Marigold v1.0 (50 steps x 10) at the same tile; ~ = estimated")
    machine = result["machine"]
    ax.set_title(f"per-tile latency, batch 1, on {machine.get('gpu') or 'CPU ' + machine['cpu']}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    common.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True


def to_markdown(result: dict, plotted: bool) -> str:
    s, peak = result["settings"], result["peak_tflops"]
    on_gpu = any(r["peak_memory_bytes"] for r in result["rows"])
    headers = ["Model", "Setting", "Tile", "Latency ms/tile (batch 1)", "Throughput tiles/s (batch)"]
    headers += ["Peak GPU mem GiB (batch 1)"] if on_gpu else []
    headers += ["GFLOP/tile", "TFLOP/s batch 1 / best"]
    headers += [f"% of {peak:g} TFLOP/s peak (best)"] if peak else []
    headers += ["x faster than Marigold v1.0"] + (["x less memory"] if on_gpu else []) + ["Source"]
    table = []
    for r in result["rows"]:
        estimate = "~" if r["source"] == "extrapolated" or r["ratio_basis"] == "extrapolated" else ""
        latency = common.fmt(r["latency_s"] * 1e3 if r["latency_s"] else None)
        throughput = (f"{common.fmt(r['throughput_tiles_per_s'])} ({r['best_batch']})"
                      if r["throughput_tiles_per_s"] else None)
        achieved = "/".join(common.fmt(v) or "-" for v in (r["achieved_tflops_batch1"], r["achieved_tflops_best"]))
        row = [r["model"], r["setting"], r["tile"], f"~{latency}" if r["source"] == "extrapolated" else latency,
               throughput]
        row += [common.fmt(r["peak_memory_bytes"] / 2**30) if r["peak_memory_bytes"] else None] if on_gpu else []
        row += [common.fmt(r["flops_per_tile"] / 1e9), achieved]
        if peak:
            best = r["achieved_tflops_best"]
            row.append(common.fmt(100 * best / peak, 2) if best else None)
        speedup = common.fmt(r["speedup_vs_marigold_v1"])
        row.append(f"{estimate}{speedup}" if speedup else None)
        row += [common.fmt(r["memory_ratio_vs_marigold_v1"])] if on_gpu else []
        row.append(r.get("error") or r["source"])
        table.append(row)
    lines = [
        "# Speed: D3-RSMDE vs Marigold vs DPT-Hybrid", "",
        common.machine_line(result["machine"]), "",
        f"Ours: {s['ours']}, precision {s['ours_precision']} (the pipeline's own policy). Peers: random weights, "
        f"{s['dtype'] if s['dtype'] == 'float32' else s['dtype'] + ' autocast'}. Channels-last: {s['channels_last']}; "
        f"torch.compile: {s['compile']}. Latency: median of {s['repeats']} calls after {s['warmup']} warm-up; "
        f"throughput: best over batches {s['batch_sizes']}.", "",
        common.markdown_table(headers, table),
        "Notes:",
        "- Marigold runs its inference computation on random weights (cost does not depend on weights): encode "
        "once, `steps` U-Net calls per ensemble member (members batched together), decode each member, median. "
        "The CLIP text encoder is skipped (Marigold runs it once per run for the empty prompt); its output is a "
        "zero 77 x 1024 embedding. The LCM row uses the DDIM scheduler for its single step (same cost: one U-Net "
        "call per step).",
        "- Marigold FLOPs = encode + steps x ensemble x U-Net step + ensemble x decode, each counted once with "
        "torch's FlopCounterMode (exact: a call is that composition). Other rows: one counted call.",
        "- \"x faster\" / \"x less memory\": Marigold v1.0 (50 steps x 10) at the same tile divided by the row.",
        "- Marigold's default processing resolution is 768: run with its defaults, it upsamples a smaller tile to "
        "768 first, so its @768 rows are the cost of a default Marigold run on any tile up to 768.",
    ]
    if any(r["source"] == "extrapolated" for r in result["rows"]):
        lines.append("- Rows marked extrapolated were NOT run: their latency (~) is encode + steps x ensemble x "
                     "one U-Net step + ensemble x decode, from the part times measured below; FLOP/s and ratios "
                     "derived from them (~) are estimates too.")
    lines += [f"- {note}" for note in result["notes"]]
    if plotted:
        lines += ["", "![speed-up over Marigold v1.0](speed.png)"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    from d3rsmde.device import resolve_device

    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    runner = Runner(args, device)
    with torch.no_grad():
        families, chosen = plan(args, device, dtype)
        rows = [row for fam in families for row in runner.run_family(fam)]
    add_ratios(rows)
    if args.profile and not runner.profiled:
        runner.notes.append(f"No measured row matched --profile {args.profile!r}; nothing was profiled.")
    peak = args.peak_tflops or common.default_peak_tflops(device, dtype)
    result = {
        "machine": common.describe_machine(device, dtype),
        "settings": {
            **chosen, "dtype": str(dtype).replace("torch.", ""), "scale": args.scale,
            "channels_last": args.channels_last, "compile": args.compile, "repeats": args.repeats,
            "warmup": args.warmup, "batch_sizes": list(args.batch_sizes), "quick": args.quick,
            "extrapolate_above": args.extrapolate_above, "argv": list(argv if argv is not None else sys.argv[1:]),
        },
        "peak_tflops": peak,
        "rows": rows,
        "notes": runner.notes,
    }
    plotted = plot(result, Path(args.out) / "speed.png")
    json_path, md_path = common.write_results(args.out, "speed", result, to_markdown(result, plotted))
    print(md_path.read_text())
    return result


if __name__ == "__main__":
    main()
