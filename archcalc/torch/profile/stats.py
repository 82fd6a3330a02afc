"""Pure statistics for `archcalc profile`: percentiles, the stopping rule, block sizing and the budget plan.

No torch and no clock here: every function takes the durations it reasons about, so the tests check them by hand.
Methodology (from torch.utils.benchmark's blocked_autorange and triton's do_bench): a sample is the mean of a block
of iterations long enough that the timer's own cost is negligible; samples are taken in rounds; after each round
the stopping rule looks at all samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SAMPLES = 10  # samples before IQR/median may count as converged
MIN_SPREAD_SAMPLES = 5  # fewer samples than this: no spread is reported (a quartile of 3 values says nothing)
TARGET_REL_IQR = 0.02
MIN_BLOCK_S = 1e-3  # a sample lasts at least this long (timer overhead: ~0.1 us for perf_counter, ~5 us events)
ROUND_S = 0.1  # samples taken between two looks at the stopping rule (and, on CUDA, between synchronizations)
WARMUP_SHARE = 0.1  # automatic warm-up: this share of a point's time ...
WARMUP_MAX_S = 1.0  # ... at most this long (at least one iteration always runs)
PROFILED_LEAF_S = 1.5e-3  # torch's profiler per leaf module and recorded iteration: ranges, ops, event parsing
# (measured: ResNet-18 and ResNet-50 on a 2-core machine at load average 7-9, 0.7-1.8 ms; on an idle one less)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of per-iteration times in seconds. The spread (p10, p90, quartiles) is None below
    MIN_SPREAD_SAMPLES samples: it is not measured, and printing one would be a guess."""

    n: int
    median: float
    min: float
    max: float
    p10: float | None
    p90: float | None
    q1: float | None
    q3: float | None

    @property
    def has_spread(self) -> bool:
        return self.q1 is not None

    @property
    def iqr(self) -> float | None:
        return None if self.q1 is None or self.q3 is None else self.q3 - self.q1

    @property
    def rel_iqr(self) -> float | None:
        iqr = self.iqr
        if iqr is None:
            return None
        return iqr / self.median if self.median > 0 else math.inf


def summarize(samples: Sequence[float]) -> Stats:
    if len(samples) < MIN_SPREAD_SAMPLES:
        return Stats(len(samples), percentile(samples, 50), min(samples), max(samples), None, None, None, None)
    return Stats(len(samples), percentile(samples, 50), min(samples), max(samples), percentile(samples, 10),
                 percentile(samples, 90), percentile(samples, 25), percentile(samples, 75))


def stop_reason(samples: Sequence[float], elapsed_s: float, window_s: float, target: float = TARGET_REL_IQR,
                min_samples: int = MIN_SAMPLES) -> str | None:
    """'converged' when IQR/median <= target over at least min_samples samples, 'budget' when the time is spent
    (checked second: a run that converges in its last round counts as converged), else None (keep going)."""
    if len(samples) >= min_samples:
        rel = summarize(samples).rel_iqr
        if rel is not None and rel <= target:
            return "converged"
    if elapsed_s >= window_s:
        return "budget"
    return None


def block_size(iteration_s: float, min_block_s: float = MIN_BLOCK_S) -> int:
    """Iterations per sample so that a sample lasts at least min_block_s."""
    if iteration_s <= 0:
        return 1000
    return max(1, math.ceil(min_block_s / iteration_s))


def round_blocks(sample_s: float, remaining_s: float, round_s: float = ROUND_S) -> int:
    """Samples to take before the next look at the stopping rule: about round_s worth (at most MIN_SAMPLES, at
    least 1), and no more than what fits in the remaining time, so a run overshoots by one sample at most.
    sample_s is the latest estimate of one sample's duration (the running median)."""
    if sample_s <= 0:
        return MIN_SAMPLES
    return max(1, min(MIN_SAMPLES, math.floor(min(round_s, remaining_s) / sample_s)))


def warmup_seconds(share_s: float, requested_s: float | None) -> float:
    """How long to warm up: as requested, else WARMUP_SHARE of the point's time, at most WARMUP_MAX_S."""
    if requested_s is not None:
        return requested_s
    return min(WARMUP_MAX_S, WARMUP_SHARE * max(0.0, share_s))


def iteration_estimate(warmup: Sequence[float]) -> float:
    """Seconds per iteration after warm-up: the median of the warm-up iterations after the first (which carries
    one-off costs: allocator growth, kernel selection, compilation), or the first when it is the only one."""
    if not warmup:
        raise ValueError("no warm-up iterations")
    return percentile(warmup[1:], 50) if len(warmup) > 1 else warmup[0]


def reserve_seconds(iteration_s: float, profiled_iterations: int, plain_iterations: int = 0, leaves: int = 0) -> float:
    """Time kept back from timing for the passes that follow it: iterations recorded by torch's profiler (each
    slower by PROFILED_LEAF_S per leaf module) and plain ones."""
    return profiled_iterations * (iteration_s + leaves * PROFILED_LEAF_S) + plain_iterations * iteration_s


def point_share(remaining_s: float, points_left: int) -> float:
    """The time one (threads, batch) point gets: an equal part of what is left of the budget."""
    return max(0.0, remaining_s) / max(1, points_left)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def budget_for(budget_s: float, window_s: float, sample_s: float, points: int, samples: int = MIN_SAMPLES) -> float:
    """The --budget that would leave every point time for `samples` samples: the missing timing time added to
    today's budget, rounded up to a whole second."""
    return float(math.ceil(budget_s + points * max(0.0, samples * sample_s - window_s)))


def explain_budget_stop(stats: Stats, target: float, window_s: float, sample_s: float, *, budget_s: float,
                        points: int, loaded: bool, threads: int) -> str:
    """Why timing stopped without converging, in words a user can act on."""
    if not stats.has_spread:
        return (f"did not converge: {plural(stats.n, 'sample')} of {sample_s:.3g} s fit in the {window_s:.2g} s "
                f"left for timing, too few for a spread (at least {MIN_SPREAD_SAMPLES}); raise --budget to about "
                f"{budget_for(budget_s, window_s, sample_s, points):g} s or time a smaller --batch")
    rel = stats.rel_iqr or 0.0
    if stats.n < MIN_SAMPLES:
        why = f"only {stats.n} samples (at least {MIN_SAMPLES} are needed to call it converged)"
        fix = f"raise --budget to about {budget_for(budget_s, window_s, sample_s, points):g} s"
    else:
        why = f"IQR/median {rel:.1%} > {target:.0%} over {stats.n} samples"
        fixes = []
        if loaded:
            fixes.append("close other work (the machine was loaded)")
        if threads > 1:
            fixes.append("use fewer threads (--threads 1 competes least with other work)")
        fixes.append("raise --budget")
        fix = ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
    return f"did not converge: {why} when the {window_s:.2g} s for timing ended; {fix}"
