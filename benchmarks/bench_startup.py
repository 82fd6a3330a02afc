"""Start-up of the analytic path against the import floor, measured in one run (ratios, not absolute times).

    python benchmarks/bench_startup.py [--repeat 41] [--baseline DIR] [--cpu 0]

Measures whole processes on one CPU (this process pins itself, its children inherit the pin; one thread each):
  - the floor: `python -c "import yaml, rich, typer"`;
  - `archcalc calc resnet50 --format json`, `archcalc calc resnet50` (the table) and `archcalc --help`
    (every command built: the cost that lazy commands avoid on the other runs);
  - with --baseline DIR, the same archcalc runs from another checkout (its root; e.g. a git worktree of main), so a
    before/after comparison comes from the same run on the same machine.
Every round runs each command once, in a rotated order (a busy machine slows all alike), and divides by the floor of
the same round; the figures are medians over the rounds. Goals: calc --format json <= 1.3x the floor; the JSON run
no slower than the table (JSON / table <= 1.0).
Where the time goes: each round also runs `calc resnet50 --format json` twice inside one process: the first run
imports and builds everything it needs, the second only parses, builds the command and works (the modules are loaded).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
# Measure what an installed copy does: bytecode compiled (pip compiles it at install time), whatever
# PYTHONDONTWRITEBYTECODE says in this shell; one thread, as the goals are stated.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
FLOOR = "import yaml, rich, typer"
RUNS = {"calc resnet50 -f json": ["calc", "resnet50", "--format", "json"],
        "calc resnet50 (table)": ["calc", "resnet50"], "--help": ["--help"]}


# In a fresh interpreter: the floor's imports, then `calc` twice in the same process; prints the spans in seconds.
SPLIT = """
import contextlib, io, json, time
t0 = time.perf_counter()
import yaml, rich, typer
t1 = time.perf_counter()
from archcalc.cli.app import app
def calc():
    with contextlib.redirect_stdout(io.StringIO()):
        app(["calc", "resnet50", "--format", "json"], prog_name="archcalc", standalone_mode=False)
calc()
t2 = time.perf_counter()
calc()
print(json.dumps({"floor": t1 - t0, "first": t2 - t1, "second": time.perf_counter() - t2}))
"""


def jobs(baseline: Path | None) -> dict[str, tuple[list[str], Path]]:
    """name -> (command, working directory). `python -m archcalc` imports the package from its working directory
    first, so each checkout runs its own code."""
    out = {FLOOR: ([PY, "-c", FLOOR], ROOT)}
    for label, root in [("", ROOT)] + ([("baseline ", baseline)] if baseline else []):
        for name, args in RUNS.items():
            out[f"{label}{name}"] = ([PY, "-m", "archcalc", *args], root)
    return out


def once(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(todo: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, list[float]]:
    """Seconds per round for every job, the jobs interleaved in a rotated order each round."""
    names = list(todo)
    for name in names:  # one warm-up round: page cache, bytecode
        once(*todo[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(once(*todo[name]))
    return times


def split(repeat: int) -> dict[str, float]:
    """Medians of SPLIT's spans, in seconds."""
    runs = [json.loads(subprocess.run([PY, "-c", SPLIT], cwd=ROOT, env=ENV, check=True, capture_output=True,
                                      text=True).stdout) for _ in range(repeat)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median of the per-round ratios top / bottom."""
    return statistics.median(a / b for a, b in zip(times[top], times[bottom]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=41, help="rounds (each runs every command once)")
    parser.add_argument("--baseline", type=Path, help="another checkout's root, measured in the same rounds")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    for root in [ROOT] + ([args.baseline] if args.baseline else []):
        compileall.compile_dir(root / "archcalc", quiet=1)
    times = measure(jobs(args.baseline), args.repeat)
    spans = split(args.repeat)
    pinned = f"pinned to CPU {args.cpu}" if args.cpu >= 0 and hasattr(os, "sched_setaffinity") else "not pinned"
    print(f"{len(times[FLOOR])} rounds, {pinned}, one thread; medians\n")
    print(f"{'what':34} {'median s':>9} {'x floor':>8}")
    for name, seconds in times.items():
        print(f"{name:34} {statistics.median(seconds):9.3f} {ratio(times, name, FLOOR):8.2f}")
    for label in [""] + (["baseline "] if args.baseline else []):
        json_run, table_run = f"{label}calc resnet50 -f json", f"{label}calc resnet50 (table)"
        print(f"\n{label or 'this checkout: '}calc resnet50 -f json: {ratio(times, json_run, FLOOR):.2f}x the floor "
              f"(goal <= 1.3x); JSON / table {ratio(times, json_run, table_run):.2f} (goal <= 1.0)")
    first, second = spans["first"] * 1e3, spans["second"] * 1e3
    print(f"\nin one process (this checkout; medians): the floor's imports {spans['floor'] * 1e3:.1f} ms; then "
          f"calc resnet50 -f json {first:.1f} ms, of which {first - second:.1f} ms imports and start-up, and "
          f"{second:.1f} ms the run itself (a second run in the same process: parsing the options, building the "
          "command, loading, analysing, writing)")


if __name__ == "__main__":
    main()
