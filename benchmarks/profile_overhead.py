"""`archcalc profile` on the CPU against torch.utils.benchmark: agreement, spread and overhead.

(a) agreement: in each round, `archcalc profile SPEC --threads T --budget B` in a fresh process, then (interleaved,
    so both see the same machine) a fresh process that builds the same module with archcalc.build_module, calls
    torch.set_num_threads(T) and times `model(x)` under no_grad with
    torch.utils.benchmark.Timer(num_threads=T).blocked_autorange(min_run_time=B). Reported: both medians per
    round, |archcalc - Timer| / Timer per round, and the medians over rounds.
(b) spread: (max - min) / min of each tool's medians over the rounds.
(c) overhead: the wall time of the whole archcalc process minus --budget (a budget bounds the whole run once
    torch is loaded; start-up, importing torch and printing are the rest); the Timer script's wall time minus
    min_run_time; one run each with --memory and --layers, with the cost of each pass as profile reports it;
    importing torch alone in a fresh process, for scale.
The machine's load average (1 min) and CPU count are printed at the start and the end: on a shared machine the
figures are only as steady as the load.

Usage: python benchmarks/profile_overhead.py [--rounds 5] [--budget 3] [--threads 1,2]
       [--spec torchvision/resnet18] [--batch 1] [--input 3x224x224]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TIMER_SCRIPT = """
import json, sys, time
import torch
from torch.utils.benchmark import Timer
import archcalc
from archcalc.cli.options import input_override
spec, batch, threads, seconds, shape = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
report = archcalc.analyze(archcalc.open_spec(spec), batch=batch, input_shape=input_override(shape or None))
model = archcalc.build_module(report).eval()
x = torch.randn(batch, *report.input)
with torch.no_grad():
    m = Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads).blocked_autorange(min_run_time=seconds)
print(json.dumps({"median_ms": m.median * 1e3, "samples": len(m.times), "iqr_ms": m.iqr * 1e3}))
"""


def load() -> str:
    one = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"load average {one:.2f} on {os.cpu_count()} CPUs"


def archcalc_run(args: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "archcalc", "profile", *args, "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, json.loads(out)[0]


def timer_run(spec: str, batch: int, threads: int, seconds: float, shape: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", TIMER_SCRIPT, spec, str(batch), str(threads), str(seconds), shape],
                         capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, json.loads(out)


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--spec", default="torchvision/resnet18")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--input", default="")
    ns = parser.parse_args()
    common = [ns.spec, "--device", "cpu", "--batch", str(ns.batch), "--budget", str(ns.budget)] + \
        (["--input", ns.input] if ns.input else [])
    print(f"{ns.spec}, batch {ns.batch}{', input ' + ns.input if ns.input else ''}, --budget {ns.budget:g} s, "
          f"{ns.rounds} rounds; start: {load()}")
    start = time.perf_counter()
    importing = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import torch; "
                                "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    print(f"importing torch in a fresh process: {float(importing.stdout):.2f} s\n")
    for threads in (int(t) for t in ns.threads.split(",")):
        print(f"threads {threads}:")
        print(f"{'round':>5} {'archcalc ms':>11} {'samples':>7} {'conv':>4} {'wall s':>6} {'overhead s':>10} "
              f"{'Timer ms':>9} {'samples':>7} {'wall s':>6} {'diff':>7} {'load':>5}")
        ours, theirs, diffs, overheads, timer_overheads, runs = [], [], [], [], [], []
        for i in range(ns.rounds):
            wall, d = archcalc_run(common + ["--threads", str(threads)])
            t_wall, t = timer_run(ns.spec, ns.batch, threads, ns.budget, ns.input)
            a, b = d["latency_ms"]["median"], t["median_ms"]
            ours.append(a)
            theirs.append(b)
            diffs.append((a - b) / b)
            overheads.append(wall - ns.budget)
            runs.append(d["finished_s"])
            timer_overheads.append(t_wall - ns.budget)
            print(f"{i + 1:>5} {a:11.2f} {d['latency_ms']['samples']:>7} {'yes' if d['converged'] else 'no':>4} "
                  f"{wall:6.2f} {wall - ns.budget:10.2f} {b:9.2f} {t['samples']:>7} {t_wall:6.2f} "
                  f"{diffs[-1]:+7.1%} {os.getloadavg()[0]:5.2f}")
        agree = abs(statistics.median(ours) - statistics.median(theirs)) / statistics.median(theirs)
        print(f"  agreement: median over rounds {statistics.median(ours):.2f} vs {statistics.median(theirs):.2f} ms "
              f"({agree:.1%}); per round |diff| median {statistics.median(abs(x) for x in diffs):.1%}, "
              f"max {max(abs(x) for x in diffs):.1%}")
        print(f"  spread of medians over rounds: archcalc {spread(ours):.1%}, Timer {spread(theirs):.1%}")
        print(f"  overhead beyond the budget: archcalc median {statistics.median(overheads):.2f} s "
              f"(max {max(overheads):.2f}); Timer script beyond min_run_time "
              f"{statistics.median(timer_overheads):.2f} s")
        print(f"  the run itself (what --budget bounds): median {statistics.median(runs):.2f} s, "
              f"max {max(runs):.2f} s; "
              f"outside it (start-up, importing torch, printing): median "
              f"{statistics.median(w + ns.budget - r for w, r in zip(overheads, runs)):.2f} s\n")
    for extra in (["--memory"], ["--layers"], ["--memory", "--layers"]):
        wall, d = archcalc_run(common + ["--threads", "1", *extra])
        costs = ", ".join(f"{k} {v:.2f} s" for k, v in d["phases_s"].items())
        print(f"{' '.join(extra):18} wall {wall:5.2f} s, beyond the budget {wall - ns.budget:5.2f} s, run "
              f"{d['finished_s']:.2f} s; {costs}")
    print(f"\nend: {load()}; the benchmark took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
