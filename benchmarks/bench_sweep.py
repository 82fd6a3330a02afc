"""Speed of design-space sweeps: 10,000 ResNet-50 variants (width x depth x resolution x batch).

    python benchmarks/bench_sweep.py [--fvcore 3] [--naive 40]

Measures, in one run:
  1. the library, in-process: archcalc.core.sweep.Sweep(...).run(points) on one core and on two;
  2. the command line: `archcalc sweep ... -f csv` as a whole process (start-up included);
  3. the route without reuse: open_spec + analyze per variant (what a loop over `calc` does), on a sample;
  4. the fvcore route: build the torch model and run FlopCountAnalysis(...).total() per variant, on a sample, at
     batch 1 (its cheapest: FLOPs scale with the batch, so the ratio is conservative).
Goal: <= 2 ms per ResNet-50-sized variant in-process, so 10,000 variants in <= 20 s.

The grid: base width w in {32, 40, 48, 56, 64} (stage widths w, 2w, 4w, 8w; ResNet-50 is w = 64), stage-3 depth
d3 in {2, 4, 6, 8, 10} (ResNet-50 is 6), resolution 128..280 in steps of 8 (20 sizes), batch 1..20: 500 distinct
networks, 10,000 variants.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTHS = (32, 40, 48, 56, 64)
DEPTHS = (2, 4, 6, 8, 10)
SIZES = tuple(range(128, 281, 8))
BATCHES = tuple(range(1, 21))


def resnet50_with_width(folder: Path) -> Path:
    """specs/resnet50.yaml with the base width as an argument `w` (the stem and the four stages)."""
    text = (ROOT / "specs" / "resnet50.yaml").read_text(encoding="utf-8")
    text = text.replace("args: {num_classes: 1000,", "args: {num_classes: 1000, w: 64,")
    text = text.replace("name: conv1}", "name: conv1}").replace("out: 64, kernel: 7", "out: w, kernel: 7")
    for stage, factor in (("64", "w"), ("128", "2 * w"), ("256", "4 * w"), ("512", "8 * w")):
        text = text.replace(f"bottleneck: {{width: {stage}", f"bottleneck: {{width: {factor}")
    path = folder / "resnet50_w.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fvcore", type=int, default=3, help="variants to build and trace with fvcore")
    parser.add_argument("--naive", type=int, default=40, help="variants to load + analyze one by one")
    args = parser.parse_args()

    from archcalc.core import sweep as sw
    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec = resnet50_with_width(Path(tmp))
        axes = [("w", [str(w) for w in WIDTHS]), ("d3", [str(d) for d in DEPTHS])]
        inputs = [(3, s, s) for s in SIZES]
        points = sw.points(axes, inputs, BATCHES)
        n = len(points)
        structures = len(WIDTHS) * len(DEPTHS) * len(SIZES)
        check = analyze(load_spec(spec))
        assert check.totals.params == 25_557_032, "w = 64 must be ResNet-50"

        results: dict[str, float] = {}
        for jobs in (1, 2):
            start = time.perf_counter()
            rows = sw.Sweep(str(spec)).run(points, jobs=jobs)
            results[f"library, {jobs} process{'es' if jobs > 1 else ''}"] = time.perf_counter() - start
            assert len(rows) == n and all(r.values is not None for r in rows)

        cmd = [sys.executable, "-m", "archcalc", "sweep", str(spec), "--set", f"w={','.join(map(str, WIDTHS))}",
               "--set", f"d3={','.join(map(str, DEPTHS))}", "--input", f"3x{{{SIZES[0]}..{SIZES[-1]}..8}}",
               "--batch", f"{BATCHES[0]}..{BATCHES[-1]}", "-f", "csv"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results["archcalc sweep (process, csv)"] = time.perf_counter() - start
        assert len(out.splitlines()) == n + 1

        # no reuse: parse + analyze every variant (a loop over `calc`, in-process)
        sample = points[:: max(1, n // args.naive)][: args.naive]
        start = time.perf_counter()
        for p in sample:
            analyze(load_spec(spec, overrides=dict(p.sets)), batch=p.batch, input_shape=p.input)
        naive = (time.perf_counter() - start) / len(sample)

        fv = None
        if args.fvcore:
            import warnings

            import torch
            from fvcore.nn import FlopCountAnalysis

            from archcalc.torch.build import build_module

            warnings.simplefilter("ignore")
            # at batch 1, the cheapest the fvcore route gets (its FLOPs scale with the batch): a conservative ratio
            fv_points = [p._replace(batch=1) for p in points[:: max(1, n // args.fvcore)][: args.fvcore]]
            times = []
            for p in fv_points:
                start = time.perf_counter()
                model = build_module(analyze(load_spec(spec, overrides=dict(p.sets)), input_shape=p.input)).eval()
                x = torch.randn(p.batch, *p.input)
                analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                analysis.total()
                times.append(time.perf_counter() - start)
            fv = statistics.median(times)

    print(f"{n:,} ResNet-50 variants: {len(WIDTHS)} widths x {len(DEPTHS)} depths x {len(SIZES)} resolutions x "
          f"{len(BATCHES)} batch sizes ({structures} distinct networks)\n")
    print(f"{'route':34} {'total s':>9} {'ms / variant':>13} {'fvcore / this':>14}")
    for name, seconds in results.items():
        per = seconds / n * 1e3
        ratio = f"{fv * 1e3 / per:14.0f}" if fv else f"{'-':>14}"
        print(f"{name:34} {seconds:9.2f} {per:13.3f} {ratio}")
    print(f"{'parse + analyze each (sample)':34} {naive * n:9.2f} {naive * 1e3:13.3f} "
          + (f"{fv / naive:14.0f}" if fv else f"{'-':>14}") + f"   ({len(sample)} variants, extrapolated)")
    if fv:
        print(f"{'fvcore: build + trace (sample)':34} {fv * n:9.0f} {fv * 1e3:13.1f} {1:14.0f}   "
              f"({len(fv_points)} variants, extrapolated)")
    best = min(v for k, v in results.items() if k.startswith("library"))
    print(f"\nin-process: {best / n * 1e3:.3f} ms per variant (goal <= 2 ms); per distinct network "
          f"{best / structures * 1e3:.1f} ms (one analysis at batch 1; the 20 batch sizes are arithmetic)")


if __name__ == "__main__":
    main()
