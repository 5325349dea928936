"""benchmarks/gpu_check.sh --cpu-smoke: the GPU proof's stages, tiny and on the CPU, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_cpu_smoke_runs_every_stage_and_writes_results(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], env=env, capture_output=True, text=True,
                         timeout=600)
    out = tmp_path / "out"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["mode"] == "cpu-smoke" and summary["ok"]
    assert [s["stage"] for s in summary["stages"]] == ["imports", "pytest-cuda", "speed", "raster"]
    assert "skipped" in (out / "logs" / "pytest-cuda.log").read_text()  # collected under the marker, no CUDA here
    speed = {r["name"] for r in json.loads((out / "speed" / "speed.json").read_text())["rows"]}
    assert speed == {"D3-RSMDE tiny T=6 @64", "Marigold v1.0: 50 steps x 10 @64", "Marigold LCM: 1 step x 1 @64"}
    raster = json.loads((out / "raster" / "raster.json").read_text())["rows"]
    assert [r["width"] for r in raster] == [100] and raster[0]["megapixels_per_second"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "all stages passed" in md and "| Marigold |" in md and "(raster/raster.png)" in md


def test_unknown_option_is_refused(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--gpu"], env={**os.environ, "OUT": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "usage" in run.stderr
