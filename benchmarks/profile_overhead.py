"""How much `archcalc profile` costs beyond the work it times, and how repeatable its medians are (CPU).

(a) overhead: wall time of the whole command (a fresh process: imports, model build, the ceiling measurement,
    warm-up, the per-layer torch.profiler pass, rendering) minus the sum of the timed iterations it reports
    (`timed_s` in the JSON); with and without the per-layer breakdown.
(b) spread: the same command run N times; min / max of the medians and their relative spread (max - min) / min.

Usage: python benchmarks/profile_overhead.py [--runs 5] [--budget 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = """\
name: tiny
input: [3, 32, 32]
layers:
  - conv: {out: 16, kernel: 3, padding: 1}
  - batchnorm
  - relu
  - conv: {out: 32, kernel: 3, stride: 2, padding: 1}
  - relu
  - conv: {out: 32, kernel: 3, padding: 1}
  - global_avgpool
  - linear: {out: 10}
"""


def archcalc() -> list[str]:
    exe = shutil.which("archcalc", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "archcalc"]


def run(args: list[str], threads: int | None) -> tuple[float, list[dict]]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    start = time.perf_counter()
    out = subprocess.run(archcalc() + ["profile", *args, "--format", "json"], capture_output=True, text=True,
                         check=True, env=env).stdout
    return time.perf_counter() - start, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the profiled process")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny.yaml"
        tiny.write_text(TINY, encoding="utf-8")
        cases = [("tiny 3x32x32, batch 8", [str(tiny), "--batch", "8"]),
                 ("resnet50 3x112x112, batch 1", ["resnet50", "--input", "3x112x112", "--batch", "1"])]
        common = ["--device", "cpu", "--budget", str(ns.budget), "--warmup", "3"]
        rows = []
        for label, args in cases:
            overheads = {}
            for layers in ("--layers", "--no-layers"):
                wall, results = run(args + common + [layers], ns.threads)
                timed = sum(r["timed_s"] for r in results)
                overheads[layers] = (wall, timed)
            medians, converged = [], 0
            for _ in range(ns.runs):
                _, results = run(args + common + ["--no-layers"], ns.threads)
                medians.append(results[0]["latency_ms"]["median"])
                converged += results[0]["converged"]
            rows.append((label, overheads, medians, converged))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU ({os.cpu_count()} cores, load average {load:.1f} at the end), threads "
          f"{ns.threads or 'default'}, {ns.runs} runs per case, --budget {ns.budget:g} s, --warmup 3\n")
    print(f"{'case':30} {'wall s':>7} {'timed s':>8} {'overhead s':>10} {'w/o layers':>10} "
          f"{'median min ms':>14} {'max ms':>8} {'spread':>7} {'converged':>9}")
    for label, overheads, medians, converged in rows:
        wall, timed = overheads["--layers"]
        wall_n, timed_n = overheads["--no-layers"]
        spread = (max(medians) - min(medians)) / min(medians)
        print(f"{label:30} {wall:7.2f} {timed:8.2f} {wall - timed:10.2f} {wall_n - timed_n:10.2f} "
              f"{min(medians):14.3f} {max(medians):8.3f} {spread:7.1%} {converged:>5}/{ns.runs}")


if __name__ == "__main__":
    main()
