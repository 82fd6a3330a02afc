"""Speed of `--fit` (the largest batch whose memory fits): the line solved for the batch against a search.

    python benchmarks/bench_fit.py [--repeat 5]

`calc --fit` used to search: doubling, then bisection, one full analysis per probe (about 2 log2(batch) analyses).
The training step's exact peak is the maximum of lines in the batch (core.training.StepLine; under amp the upper
bound, itself a line: core.training.MemoryLine), so archcalc walks the step's timeline at batch 1 and 2 and
solves each line. This script times both in one process on the same specs and limits — the search written out here
as the peer, over full analyses and the step's peak at each probed batch (`step_peaks`; `training_memory` under
amp) — checks that they give the same batch and the same bytes, and prints the ratio (median of --repeat runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archcalc.core.analyze import analyze  # noqa: E402
from archcalc.core.settings import Settings  # noqa: E402
from archcalc.core.spec import open_spec  # noqa: E402
from archcalc.core.training import fit_batch, step_peaks, training_memory, training_report  # noqa: E402

CASES = (("torchvision/resnet50", 24 << 30, Settings()),
         ("torchvision/mobilenet_v2", 8 << 30, Settings(optimizer="adam", device="cpu", dtype="float16")),
         ("vgg16", 80 << 30, Settings(amp="bf16", optimizer="adamw")),
         ("lenet5", 1 << 30, Settings(input_requires_grad=True)))


def searched(spec, limit: int, s: Settings) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """The peer: doubling then bisection over full analyses (what calc --fit did before)."""
    def at(b: int) -> int:
        if s.amp:
            return training_memory(training_report(spec, s.replace(batch=b)), s.optimizer, s.amp).total
        return max(p.peak for p in step_peaks(analyze(spec, s.replace(batch=b)), s.optimizer))

    if at(1) > limit:
        return 0, at(1)
    low, high = 1, 2
    while at(high) <= limit:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if at(mid) <= limit else (low, mid)
    return low, at(low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'spec':28} {'batch':>7} {'search (s)':>11} {'line (s)':>9} {'ratio':>7}")
    for name, limit, s in CASES:
        spec = open_spec(name)
        t_search, t_line = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            want = searched(spec, limit, s)
            t_search.append(time.perf_counter() - start)
            start = time.perf_counter()
            got = fit_batch(spec, limit, s)
            t_line.append(time.perf_counter() - start)
        if (got.batch, got.at) != want:
            raise SystemExit(f"{name}: the line gives batch {got.batch} ({got.at} B), the search {want}")
        a, b = statistics.median(t_search), statistics.median(t_line)
        print(f"{name:28} {got.batch:>7} {a:>11.3f} {b:>9.3f} {a / b:>6.1f}x")


if __name__ == "__main__":
    main()
