"""Speed of the analytic path on DAGs with long skips: does analysis stay linear in the number of layers?

    python benchmarks/bench_graph.py [--repeat 5]

Generates specs of 1,000 and 10,000 layers where every 8th item is an `add` of the current tensor and one made 40
layers earlier (a skip held alive across 40 layers, as U-Net's encoder features are), then measures
  1. whole `archcalc calc SPEC -f json` processes (start-up included), median of --repeat runs;
  2. in-process load + analyze (parse once, then analyze), median of --repeat runs.
Prints the growth factor 1k -> 10k beyond start-up (linear: ~10x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def generated(n: int, folder: Path) -> Path:
    lines = [f"name: dag{n}", "input: [16, 32, 32]", "layers:"]
    for i in range(n):
        if i % 8 == 7 and i >= 40:
            lines.append(f"  - add: [l{i - 1}, l{i - 40}]\n    name: l{i}")
        elif i % 2 == 0:
            lines.append(f"  - conv: {{out: 16, kernel: 3, padding: 1, name: l{i}}}")
        else:
            lines.append(f"  - relu: {{name: l{i}}}")
    path = folder / f"dag{n}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def process(path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([PY, "-m", "archcalc", "calc", str(path), "-f", "json"], check=True,
                       stdout=subprocess.DEVNULL, env=ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(path: Path, repeat: int) -> float:
    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        analyze(load_spec(path))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = {n: generated(n, folder) for n in (10, 1000, 10000)}
        whole = {n: process(p, args.repeat) for n, p in specs.items()}
        inside = {n: in_process(p, args.repeat) for n, p in specs.items()}
    print(f"{'layers':>8} {'calc -f json (s)':>17} {'load+analyze (s)':>17}")
    for n in specs:
        print(f"{n:8,} {whole[n]:17.3f} {inside[n]:17.4f}")
    growth = (whole[10000] - whole[10]) / (whole[1000] - whole[10])
    print(f"\nwhole process beyond start-up: 10,000 layers cost {growth:.1f}x what 1,000 do (linear: ~10x)")
    print(f"in-process load + analyze: {inside[10000] / inside[1000]:.1f}x")


if __name__ == "__main__":
    main()
