"""Speed of the analytic path, measured in one run against peers (ratios, not absolute times).

    python benchmarks/bench_calc.py [--repeat 7]

Measures whole processes (start-up included), each the median of --repeat runs:
  1. `archcalc calc resnet50` (table) and `--format json`;
  2. the route users take today: import torch and fvcore, build ResNet-50, run FlopCountAnalysis(...).total();
  3. the floor: `python -c "import typer, rich, yaml"`;
  4. `archcalc calc` on generated flat specs of 1,000 and 10,000 layers (JSON), to check linear growth;
  5. the same two specs as tables (the table's own cost: table run minus JSON run, per row).
Goals: calc >= 25x faster than the fvcore route; within 1.5x of the import floor; 10,000 layers < 1 s.
Goals: ResNet-50's table within 1.3x the JSON run; the table's cost linear, <= 100 us per row.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
# Measure what an installed copy does: bytecode compiled (pip compiles it at install time), whatever
# PYTHONDONTWRITEBYTECODE says in this shell.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

FVCORE_ROUTE = """
import torch, warnings
from fvcore.nn import FlopCountAnalysis
from archcalc.core.analyze import analyze
from archcalc.torch.build import build_module
from archcalc.core.resolve import resolve_spec
from archcalc.core.spec import load_spec
model = build_module(analyze(load_spec(resolve_spec("resnet50"))))
warnings.simplefilter("ignore")
print(FlopCountAnalysis(model, torch.randn(1, 3, 224, 224)).unsupported_ops_warnings(False).total())
"""


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(first: list[str], second: list[str], repeat: int) -> tuple[float, float, float]:
    """Both commands run alternately (so a busy machine slows both alike): their medians and the median of the
    per-pair differences second - first."""
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(first, 1))
        b.append(timed(second, 1))
    return statistics.median(a), statistics.median(b), statistics.median(y - x for x, y in zip(a, b))


def in_process(spec: Path, repeat: int = 5) -> dict[str, float]:
    """Rendering alone, in this process (no start-up, less noise on a busy machine): best of `repeat`, per row."""
    sys.path.insert(0, str(ROOT))
    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec
    from archcalc.render import report as render

    report = analyze(load_spec(spec))
    jobs = {"json": lambda: render.calc_json(report), "table (natural width)": lambda: render.calc_table(report),
            "table (80 columns)": lambda: render.calc_table(report, None, 80)}
    best = {}
    for name, job in jobs.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        best[name] = min(times) / len(report.rows)
    return best


def generated(n: int, folder: Path) -> Path:
    path = folder / f"gen{n}.yaml"
    lines = [f"name: gen{n}", "input: [16, 32, 32]", "layers:"]
    for i in range(n):
        lines.append("  - conv: {out: 16, kernel: 3, padding: 1}" if i % 2 == 0 else "  - relu")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "archcalc", quiet=1)
    calc = [PY, "-m", "archcalc", "calc"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = {
            "import typer, rich, yaml": timed([PY, "-c", "import typer, rich, yaml"], args.repeat),
            "archcalc calc resnet50": timed(calc + ["resnet50"], args.repeat),
            "archcalc calc resnet50 -f json": timed(calc + ["resnet50", "-f", "json"], args.repeat),
            "torch + fvcore FlopCountAnalysis": timed([PY, "-c", FVCORE_ROUTE], max(3, args.repeat // 2)),
            "archcalc calc 10 layers -f json": timed(calc + [str(generated(10, folder)), "-f", "json"], args.repeat),
            "archcalc calc 1,000 layers -f json": timed(calc + [str(generated(1000, folder)), "-f", "json"],
                                                        args.repeat),
            "archcalc calc 10,000 layers -f json": timed(calc + [str(generated(10000, folder)), "-f", "json"],
                                                         max(3, args.repeat // 2)),
        }
        rendering = in_process(generated(10000, folder))
        pairs = {n: paired(calc + [str(generated(n, folder)), "-f", "json"], calc + [str(generated(n, folder))],
                           args.repeat) for n in (1000, 10000)}
        resnet = paired(calc + ["resnet50", "-f", "json"], calc + ["resnet50"], args.repeat)
    floor = rows["import typer, rich, yaml"]
    fv = rows["torch + fvcore FlopCountAnalysis"]
    print(f"{'what':40} {'median s':>9} {'x floor':>8} {'fvcore / this':>14}")
    for name, seconds in rows.items():
        print(f"{name:40} {seconds:9.3f} {seconds / floor:8.2f} {fv / seconds:14.1f}")
    base = rows["archcalc calc 10 layers -f json"]
    growth = (rows["archcalc calc 10,000 layers -f json"] - base) / (rows["archcalc calc 1,000 layers -f json"] - base)
    print(f"\nbeyond start-up (the 10-layer run), 10,000 layers cost {growth:.1f}x what 1,000 do (linear: ~10x)")
    print("\ntable against JSON, run alternately (median s; table - JSON per pair):")
    print(f"  ResNet-50: JSON {resnet[0]:.3f}, table {resnet[1]:.3f}: the table run takes "
          f"{(resnet[0] + resnet[2]) / resnet[0]:.2f}x the JSON run (goal <= 1.3x)")
    print("  rendering alone, in process, 10,000 rows: " + ", ".join(f"{name} {sec * 1e6:.1f} us/row"
                                                               for name, sec in rendering.items()))
    for n, (json_s, table_s, diff) in pairs.items():
        print(f"  {n:,} layers: JSON {json_s:.3f}, table {table_s:.3f}: the table's own cost {diff / n * 1e6:.0f} us "
              "per row (goal <= 100 us, linear)")


if __name__ == "__main__":
    main()
