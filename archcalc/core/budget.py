"""Budgets for CI: limits on a network's figures, and which of them a Report exceeds (and by how much)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from archcalc.core.analyze import Report
from archcalc.core.training import training_flops, training_memory

BUDGETS: dict[str, tuple[str, str]] = {
    # name: (what it limits, unit: count | bytes)
    "params": ("parameters", "count"),
    "macs": ("multiply-accumulates (batch included)", "count"),
    "flops": ("FLOPs under the report's convention (batch included)", "count"),
    "peak_memory": ("inference peak: activations alive at once plus parameters and buffers", "bytes"),
    "train_memory": ("training memory: weights, gradients, optimizer state, buffers, saved activations", "bytes"),
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


def check(report: Report, limits: Mapping[str, int], optimizer: str = "sgd", amp: str | None = None,
          train_report: Report | None = None) -> list[Verdict]:
    """One verdict per limit given, in BUDGETS order. `train_report` (the report in amp's activation dtype) is
    needed for train_memory under amp; otherwise `report` serves."""
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
        actual["train_memory"] = training_memory(train_report or report, optimizer, amp).total
    if "train_flops" in limits:
        actual["train_flops"] = training_flops(report).total
    return [Verdict(name, limits[name], actual[name], BUDGETS[name][1]) for name in BUDGETS if name in limits]
