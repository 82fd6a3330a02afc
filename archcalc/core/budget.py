"""Budgets for CI: limits on a network's figures, and which of them a Report exceeds (and by how much)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from archcalc.core.analyze import Report, analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.settings import Settings
from archcalc.core.spec import Spec
from archcalc.core.training import (
    TrainingMemory,
    step_memory,
    step_peaks,
    step_unfollowed,
    training_flops,
    training_memory,
)

BUDGETS: dict[str, tuple[str, str]] = {
    # name: (what it limits, unit: count | bytes)
    "params": ("parameters", "count"),
    "macs": ("multiply-accumulates (batch included)", "count"),
    "flops": ("FLOPs under the report's convention (batch included)", "count"),
    "peak_memory": ("inference peak: activations alive at once plus parameters and buffers", "bytes"),
    "train_memory": ("training memory: the training step's peak (the larger of the first and a later step; under "
                     "--amp the upper bound: weights, gradients, optimizer state, buffers, saved activations)",
                     "bytes"),
    "train_flops": ("FLOPs of one training step, as FlopCounterMode counts them", "count"),
}


class Verdict(NamedTuple):
    name: str
    limit: int
    actual: int
    unit: str  # count | bytes

    @property
    def exceeded(self) -> bool:
        return self.actual > self.limit

    @property
    def over(self) -> int:
        """How far beyond the limit (0 within it)."""
        return max(self.actual - self.limit, 0)


def check(report: Report, limits: Mapping[str, int], memory: TrainingMemory | None = None) -> list[Verdict]:
    """One verdict per limit given, in BUDGETS order. `memory` (the step's training memory: core.training) is
    needed for train_memory under amp (its upper bound is the figure there); otherwise train_memory is the
    training step's exact peak, the larger of the first and a later step (core.training.step_peaks)."""
    actual: dict[str, int] = {}
    for name in limits:
        if name not in BUDGETS:
            raise ValueError(f"unknown budget {name!r}")
    t = report.totals
    if "params" in limits:
        actual["params"] = t.params
    if "macs" in limits:
        actual["macs"] = t.macs
    if "flops" in limits:
        actual["flops"] = t.flops
    if "peak_memory" in limits:
        actual["peak_memory"] = t.peak_bytes
    if "train_memory" in limits:
        if memory is None and step_unfollowed(report):  # (attention: the upper bound, as under amp)
            memory = training_memory(report)
        actual["train_memory"] = memory.total if memory is not None else max(p.peak for p in step_peaks(report))
    if "train_flops" in limits:
        actual["train_flops"] = training_flops(report).total
    return [Verdict(name, limits[name], actual[name], BUDGETS[name][1]) for name in BUDGETS if name in limits]


def check_spec(spec: Spec, limits: Mapping[str, int], settings: Settings | None = None) -> tuple[Report, list[Verdict]]:
    """The report of `spec` under `settings` and its verdicts (`archcalc check`)."""
    if not limits:
        raise ArchcalcError("check: give at least one budget (" + ", ".join(f"--max-{n.replace('_', '-')}"
                                                                           for n in BUDGETS) + ")")
    s = settings or Settings()
    report = analyze(spec, s)
    memory = step_memory(spec, s) if s.amp and "train_memory" in limits else None
    return report, check(report, limits, memory)
