#!/usr/bin/env bash
# One-shot GPU proof (issue 13): the CUDA tests, per-tile speed against the Marigold peers and whole-raster speed,
# each stage bounded by its own timeout (520 s together at most; about 5 minutes expected on an H100/H200), results as
# JSON + markdown in $OUT. A failed stage is recorded and the next one still runs; the exit status is 1 if any
# stage failed.
#
#   OUT=results/h200 bash benchmarks/gpu_check.sh               # on the GPU machine, from the repository root
#   OUT=build/smoke bash benchmarks/gpu_check.sh --cpu-smoke    # the same stages, tiny and on the CPU (CI, < 1 min)
#
# The GPU image has torch, timm, safetensors, numpy, scipy, pillow, tqdm, click and attrs; the rest comes from
# wheels in .whl/, fetched beforehand on a machine with an index (and carried along, .whl/ is git-ignored):
#   ../shared/tools/fetch-gpu-wheels.sh .whl pytest iniconfig pluggy packaging pygments
# (matplotlib is left out to keep .whl under the 64 MiB a device run carries: no PNG plots there, tables only.)
# PYTHON: the interpreter (default python3).
set -uo pipefail

smoke=0
case "${1:-}" in
  --cpu-smoke) smoke=1 ;;
  "") ;;
  *) echo "usage: OUT=dir $0 [--cpu-smoke]" >&2; exit 2 ;;
esac
: "${OUT:?set OUT to the results folder}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export QT_QPA_PLATFORM=offscreen
stages="$OUT/logs/stages.tsv"
: > "$stages"

# stage NAME TIMEOUT_S COMMAND...: run it with its log in $OUT/logs/NAME.log; record rc and wall seconds.
stage() {
  local name=$1 limit=$2 start rc ms
  shift 2
  echo "== $name (limit ${limit}s): $*"
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "${*//$'\n'/ }" >> "$stages"
  tail -n 3 "$OUT/logs/$name.log"
  return 0
}

if [ "$smoke" = 1 ]; then
  speed_args=(--device cpu --scale tiny --config tiny --quick --tiles 64 --marigold-tiles 64 --repeats 1
              --warmup 0 --batch-sizes 1 --rows "T=6,v1.0,LCM")
  raster_args=(--device cpu --config tiny --sizes 0.01)
  imports_limit=120 pytest_limit=240 speed_limit=240 raster_limit=240  # generous: CI machines can be busy
else
  site=${TMPDIR:-/tmp}/d3rsmde-gpu-site
  if compgen -G ".whl/*.whl" > /dev/null; then
    stage install-wheels 40 "$PY" -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  else
    printf 'install-wheels\t1\t0\tno .whl/*.whl: fetch them first (see the head of this script)\n' >> "$stages"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  speed_args=(--tiles 512,768 --marigold-tiles 768,512 --rows "D3-RSMDE,v1.0,LCM,DPT" --repeats 3
              --batch-sizes 1,2,4,8,16 --max-call-s 5)
  raster_args=(--sizes 16,100)
  imports_limit=30 pytest_limit=90 speed_limit=160 raster_limit=200
fi
export PYTHONPATH="$PWD/backend:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; lscpu 2>&1; uptime; } > "$OUT/logs/machine.txt"
stage imports "$imports_limit" "$PY" -c "import torch, diffusers, rasterio, pytest, d3rsmde as d; print(d.__file__, \
  'torch', torch.__version__, torch.version.cuda, torch.cuda.is_available(), *(f'{m.__name__} {m.__version__}' \
  for m in (diffusers, rasterio, pytest)))"
stage pytest-cuda "$pytest_limit" "$PY" -m pytest -q -p no:cacheprovider -p no:pytest_qgis -m cuda tests/test_cuda.py -rs \
  --junitxml="$OUT/pytest-cuda.xml"
stage speed "$speed_limit" "$PY" -m benchmarks.speed "${speed_args[@]}" --out "$OUT/speed"
stage raster "$raster_limit" "$PY" -m benchmarks.raster "${raster_args[@]}" --out "$OUT/raster"

"$PY" - "$OUT" "$smoke" <<'EOF'
"""gpu_check.json / gpu_check.md: each stage's status and time, the machine, and the benchmark tables."""
import json, sys
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
stages = []
for line in (out / "logs" / "stages.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    stages.append({"stage": name, "rc": int(rc), "seconds": float(seconds), "command": command,
                   "timed_out": rc in ("124", "137")})
summary = {"mode": "cpu-smoke" if smoke else "gpu", "ok": all(s["rc"] == 0 for s in stages),
           "total_seconds": round(sum(s["seconds"] for s in stages), 1), "stages": stages,
           "machine": (out / "logs" / "machine.txt").read_text()}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
md = [f"# gpu_check.sh ({summary['mode']}): {'all stages passed' if summary['ok'] else 'SOME STAGES FAILED'}",
      "", f"Total {summary['total_seconds']} s.", "", "| Stage | rc | Seconds |", "|---|---|---|"]
md += [f"| {s['stage']} | {s['rc']}{' (timed out)' if s['timed_out'] else ''} | {s['seconds']} |" for s in stages]
for table in ("speed/speed.md", "raster/raster.md"):
    if (out / table).is_file():
        md += ["", (out / table).read_text().replace("](", f"]({Path(table).parent}/")]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md[:5 + len(stages) + 2]))
sys.exit(0 if summary["ok"] else 1)
EOF
