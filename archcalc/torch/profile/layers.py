"""The per-layer pass: torch's profiler ranges around each leaf module, set beside a roofline prediction.

Forward: a record_function range per leaf module, entered and left by forward hooks. Training: each backward op
is attributed to the layer whose forward op has the same autograd sequence number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from archcalc.core.analyze import Report
from archcalc.torch.profile.probes import recording
from archcalc.torch.profile.results import LayerTiming, Roofline
from archcalc.torch.profile.stats import percentile
from archcalc.torch.profile.work import layer_work

LAYER_ITERATIONS = 5  # iterations recorded for the per-layer breakdown
PREFIX = "archcalc::"
BACKWARD_PREFIX = "autograd::engine::evaluate_function:"


@contextmanager
def ranges(leaves: dict[str, Any]) -> Iterator[None]:
    """A named profiler range around every call of each leaf module, while the block runs."""
    from torch.autograd.profiler import record_function

    open_ranges: dict[str, Any] = {}
    handles = []
    for name, module in leaves.items():
        def pre(_m: Any, _i: Any, name: str = name) -> None:
            rf = record_function(PREFIX + name)
            rf.__enter__()
            open_ranges[name] = rf

        def post(_m: Any, _i: Any, _o: Any, name: str = name) -> None:
            open_ranges.pop(name).__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def attribute(events: Any, leaves: dict[str, Any], cuda: bool, train: bool
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Microseconds per layer and occurrence: forward from each range; backward from the autograd ops whose
    sequence number belongs to an op inside that layer's forward range."""
    from torch.autograd import DeviceType

    def duration(event: Any) -> float:
        return float(event.device_time_total if cuda else event.cpu_time_total)

    forward: dict[str, list[float]] = {n: [] for n in leaves}
    owner: dict[int, tuple[str, int]] = {}  # forward op sequence number -> (layer, occurrence)
    for event in events:
        # The CPU-side range (on CUDA the profiler also reports a device-side copy of each range: skip it).
        if event.device_type != DeviceType.CPU or not event.name.startswith(PREFIX):
            continue
        name = event.name[len(PREFIX):]
        if name not in forward:
            continue
        forward[name].append(duration(event))
        stack = list(event.cpu_children)
        while stack:
            child = stack.pop()
            if child.sequence_nr >= 0:
                owner[child.sequence_nr] = (name, len(forward[name]) - 1)
            stack.extend(child.cpu_children)
    backward: dict[str, list[float]] = {n: [] for n in leaves}
    if train:
        per: dict[tuple[str, int], float] = {}
        for event in events:
            if event.device_type == DeviceType.CPU and event.sequence_nr in owner \
                    and event.name.startswith(BACKWARD_PREFIX):
                key = owner[event.sequence_nr]
                per[key] = per.get(key, 0.0) + duration(event)
        for (name, _), us in per.items():
            backward[name].append(us)
    return forward, backward


def layer_breakdown(model: Any, step: Callable[[], Any], report: Report, train: bool, cuda: bool,
                    roofline: Roofline) -> tuple[LayerTiming, ...]:
    """Per-layer medians over LAYER_ITERATIONS profiled steps, each next to max(FLOPs / peak, bytes / bandwidth)."""
    import torch

    from archcalc.torch.build import leaf_modules

    leaves = leaf_modules(model, report)
    with ranges(leaves):
        step()  # one unrecorded pass with the hooks in place
        with recording(cuda=cuda) as events:
            for _ in range(LAYER_ITERATIONS):
                step()
            if cuda:
                torch.cuda.synchronize()
    forward, backward = attribute(events(), leaves, cuda, train)
    work = layer_work(report, train)
    kinds = {r.name: r.kind for r in report.rows}
    out = []
    for name in leaves:
        fwd = percentile(forward[name], 50) / 1e3 if forward[name] else 0.0
        bwd = None
        if train:  # a layer without a backward op in an iteration took 0 there
            runs = backward[name] + [0.0] * (len(forward[name]) - len(backward[name]))
            bwd = percentile(runs, 50) / 1e3 if runs else 0.0
        flops, moved = work[name]
        out.append(LayerTiming(name, kinds[name], fwd + (bwd or 0.0), fwd, bwd, roofline.seconds(flops, moved) * 1e3,
                               flops, moved, roofline.bound(flops, moved)))
    return tuple(out)


def layers_note(cuda: bool, train: bool, roofline: Roofline) -> str:
    return ("torch's profiler, median over {} iterations; {} time of each leaf module's ops{}; predicted = "
            "max(FLOPs / peak, bytes / bandwidth) with {}").format(
        LAYER_ITERATIONS, "GPU kernel" if cuda else "CPU",
        " (backward: autograd ops linked by sequence number)" if train else "", roofline.source)
