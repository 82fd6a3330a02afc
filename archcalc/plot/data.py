"""What each picture shows, as plain series: Report / compare reports / sweep rows / profile results -> frozen
dataclasses of numbers and labels. No matplotlib and no torch here (draw.py renders these; tests check them
against the reports' own figures), and nothing is formatted except the titles and labels.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from archcalc.core.analyze import Report, Row, rows_at_depth
from archcalc.core.conventions import CONVENTIONS
from archcalc.core.memory import inference_timeline, saved_timeline
from archcalc.core.training import StepPeak, step_peaks, step_unfollowed
from archcalc.core.units import dims

MAX_LABELS = 45  # x-axis labels across a 12-inch figure: a slot of about 22 px, twice a 7 pt label's height
MAX_PEAK_NAMES = 6  # tensors named at the memory peak (the largest; the rest counted)


@dataclass(frozen=True, slots=True)
class Group:
    """A run of consecutive positions [start, stop) labelled together (a block of a long network)."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Axis:
    """Per-position labels: every position named when they fit, else `groups` (blocks) in their place."""

    names: tuple[str, ...]
    groups: tuple[Group, ...]  # empty: label every position

    @property
    def labels(self) -> tuple[Group, ...]:
        """What the x axis shows: the groups, or one group per position."""
        return self.groups or tuple(Group(n, i, i + 1) for i, n in enumerate(self.names))


@dataclass(frozen=True, slots=True)
class LayerBars:
    axis: Axis
    macs: tuple[int, ...]
    params: tuple[int, ...]
    activation_bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MemoryTimeline:
    """Inference: activation bytes alive while each op runs (the liveness model behind the peak); parameters and
    buffers (`constant`) are alive throughout and drawn as a note, not a series. Training: saved-for-backward bytes
    accumulated after each op of the forward."""

    axis: Axis  # one position per op
    alive: tuple[int, ...]
    start: int  # the inputs, before the first op
    constant: int  # parameter + buffer bytes
    peak: int  # activation bytes at the peak: max(start, *alive)
    peak_index: int  # position of the peak (-1: the inputs alone)
    peak_tensors: tuple[tuple[str, int], ...]  # (name, bytes) alive at the peak, largest first, temporaries included
    saved: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TrainingTimeline:
    """One training step (core.training.step_peaks, a later step): the bytes alive at each moment -- parameters,
    buffers, optimizer state and inputs (`before`) included -- over the forward's ops, the loss, backward's ops in
    reverse and the optimizer step; the peak marked with its phase and op, and the layers holding most at it."""

    axis: Axis  # one position per moment; grouped by phase when they are too many to name
    phases: tuple[Group, ...]  # forward, loss, backward, optimizer: their positions
    running: tuple[int, ...]  # bytes alive at each moment
    before: int  # alive before the step begins
    peak: int
    peak_index: int  # position of the peak (the first, if several)
    where: str  # 'backward of layer4.0.conv1', 'optimizer step'
    first_peak: int  # the first step's peak (the optimizer makes its state in it)
    optimizer: str
    holders: tuple[tuple[str, int], ...]  # (layer, bytes it holds at the peak), largest first; inputs, loss, seed
    # as "(inputs, loss, seed)"


@dataclass(frozen=True, slots=True)
class CalcPlot:
    title: str
    bars: LayerBars
    timeline: MemoryTimeline
    training: TrainingTimeline | None = None  # None under --amp (the step's peak is not modelled there)


def digest(plot: Any) -> str:
    """A fingerprint of a picture's series (sha256 of their JSON): stored in every PNG archcalc writes, so a
    committed picture can be checked against freshly computed data without comparing pixels."""
    payload = [asdict(p) for p in plot] if isinstance(plot, (list, tuple)) else asdict(plot)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def title(report: Report, what: str = "") -> str:
    """The spec, input, batch, dtype and FLOP convention, as every calc/compare picture's title names them."""
    head = f"{report.name}{': ' + what if what else ''}"
    return f"{head}\ninput {dims(report.input)}, batch {report.batch}, {report.dtype}, {_convention(report.convention)}"


def _convention(name: str) -> str:
    return f"FLOPs: '{CONVENTIONS[name].name}' convention"


def calc_plot(report: Report, depth: int | None = None, device: str = "cuda", input_requires_grad: bool = False,
              train: Report | None = None, step: tuple[StepPeak, StepPeak] | None = None) -> CalcPlot:
    """Per-layer bars (the rows `calc --depth` shows), the memory timeline (one position per op) and the training
    step's timeline (`step`, as calc computed it: core.training.step_peaks of `report`; computed here when not
    given and there is no `train` report of its own, None under amp).

    `device` and `input_requires_grad` are the ones `report` was analyzed with; `train`, the report the training
    figures come from (`calc --amp`), defaults to `report`."""
    rows = rows_at_depth(report, depth)
    bars = LayerBars(_axis(report, rows), tuple(r.macs for r in rows), tuple(r.params for r in rows),
                     tuple(r.activation_bytes for r in rows))
    if step is None and (train is None or train is report) and not step_unfollowed(report):
        step = step_peaks(report)
    return CalcPlot(title(report), bars, timeline(report, device, input_requires_grad, train),
                    training_timeline(report, step) if step is not None else None)


def training_timeline(report: Report, step: tuple[StepPeak, StepPeak]) -> TrainingTimeline:
    """The training step's moments as calc's step peak walks them: one position per forward op, the loss, one per
    backward op (reverse order, the ops autograd runs) and the optimizer step."""
    later, first = step
    graph = report.graph
    names: list[str] = []
    phases: list[str] = []
    for moment in later.timeline[:-1]:  # the last is backward's end: the optimizer step stands for it
        names.append(graph.ops[moment.op].name if moment.op >= 0 else "loss")
        phases.append(moment.phase)
    names.append("optimizer.step")
    phases.append("optimizer")
    running = tuple(later.before + m.running for m in later.timeline[:-1]) + (later.before + later.optimizer,)
    peak_index = running.index(later.peak)
    where = f"{later.phase} of {later.op}" if later.op else "optimizer step" if later.phase == "optimizer" \
        else later.phase
    held = sorted(((r.name, n) for r, n in zip(report.rows, later.layers) if n), key=lambda p: -p[1])
    held.append(("(inputs, loss, seed)", later.other))
    groups = tuple(Group(g.name, g.start, g.stop) for g in _runs(phases))
    axis = Axis(tuple(names), groups if len(names) > MAX_LABELS else ())
    return TrainingTimeline(axis, groups, running, later.before, later.peak, peak_index, where, first.peak,
                            report.settings.optimizer if report.settings else "sgd", tuple(held))


def timeline(report: Report, device: str = "cuda", input_requires_grad: bool = False,
             train: Report | None = None) -> MemoryTimeline:
    graph = report.graph
    walk = inference_timeline(graph, report.itemsize, report.batch)  # as analyze() walks it for the peak
    t = train or report
    saved = saved_timeline(t.graph, t.itemsize, t.batch, device, input_requires_grad)
    peak_index = walk.peak_step
    at_peak: list[tuple[str, int]] = []
    if peak_index >= 0:
        at_peak = walk.alive(peak_index)
        step = walk.steps[peak_index]
        if step.temporaries:
            at_peak.append((f"{graph.ops[peak_index].name} (temporaries)", step.temporaries))
    else:
        at_peak = [(graph.tensors[t_].name, walk.sizes[graph.tensors[t_].storage]) for _, t_ in graph.inputs]
    at_peak.sort(key=lambda p: -p[1])
    leaves = [r for r in report.outline if r.leaf]
    return MemoryTimeline(_axis(report, leaves), tuple(s.running for s in walk.steps), walk.start,
                          report.totals.param_bytes + report.totals.buffer_bytes, walk.peak, peak_index,
                          tuple(at_peak), saved)


def _axis(report: Report, rows: Sequence[Row], max_labels: int = MAX_LABELS) -> Axis:
    """Name every row when they fit; else group consecutive rows by their ancestor block at the deepest level whose
    groups fit with few of them too narrow to name alone (ResNet-50's 174 layers: its 16 bottlenecks, the stem and
    the head each under one label)."""
    names = tuple(r.name for r in rows)
    if len(rows) <= max_labels:
        return Axis(names, ())
    ancestors = _ancestors(report)
    chains = [ancestors.get(id(r), ()) for r in rows]
    slot = len(rows) / max_labels
    levels = []
    for level in range(1, max(map(len, chains), default=0) + 1):
        keys = [chain[level - 1] if len(chain) >= level else r.name for chain, r in zip(chains, rows)]
        merged = _merge_narrow(_runs(keys), slot)
        shared = sum(1 for g in merged if " … " in g.name)
        levels.append((merged, shared))
    fitting = [(m, n) for m, n in levels if len(m) <= max_labels]
    readable = [m for m, n in fitting if n <= len(m) // 4]  # at most a quarter of the labels name a range
    if readable:
        return Axis(names, readable[-1])
    if fitting:
        return Axis(names, min(fitting, key=lambda mn: mn[1] / len(mn[0]))[0])
    # no blocks, or too many even at the top: neighbours share labels (a plain 300-layer stack)
    return Axis(names, levels[0][0] if levels else _merge_narrow(_runs(names), slot))


def _merge_narrow(groups: Sequence[Group], slot: float) -> tuple[Group, ...]:
    """Consecutive groups narrower than a label's slot become one ('conv1 … maxpool'), so label centres stay at
    least half a slot apart: two wide neighbours are a slot apart, a narrow one beside a wide one half a slot."""
    out: list[Group] = []
    run: list[Group] = []

    def flush() -> None:
        if run:
            name = run[0].name if len(run) == 1 else f"{run[0].name} … {run[-1].name}"
            out.append(Group(name, run[0].start, run[-1].stop))
            run.clear()

    for g in groups:
        if g.stop - g.start >= slot:
            flush()
            out.append(g)
        else:
            run.append(g)
            if run[-1].stop - run[0].start >= slot:
                flush()
    flush()
    return tuple(out)


def _ancestors(report: Report) -> dict[int, tuple[str, ...]]:
    """For every outline row (by identity), the names of the blocks it sits in, outermost first."""
    stack: list[Row] = []
    out: dict[int, tuple[str, ...]] = {}
    for r in report.outline:
        while stack and stack[-1].depth >= r.depth:
            stack.pop()
        out[id(r)] = tuple(a.name for a in stack)
        if not r.leaf:
            stack.append(r)
    return out


def _runs(keys: Sequence[str]) -> tuple[Group, ...]:
    groups: list[Group] = []
    for i, key in enumerate(keys):
        if groups and groups[-1].name == key:
            groups[-1] = Group(key, groups[-1].start, i + 1)
        else:
            groups.append(Group(key, i, i + 1))
    return tuple(groups)


# ---- compare ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ComparePoint:
    name: str
    macs: int
    params: int
    peak_bytes: int  # inference peak (activations + parameters + buffers): the marker's area


@dataclass(frozen=True, slots=True)
class ComparePlot:
    title: str
    points: tuple[ComparePoint, ...]


def compare_plot(reports: Sequence[Report]) -> ComparePlot:
    first = reports[0]
    inputs = {r.input for r in reports}
    shown = f"input {dims(first.input)}" if len(inputs) == 1 else "each spec's own input"
    head = f"{len(reports)} architectures: MACs vs parameters (marker area: inference peak memory)"
    text = f"{head}\n{shown}, batch {first.batch}, {first.dtype}, {_convention(first.convention)}"
    return ComparePlot(text, tuple(ComparePoint(r.name, r.totals.macs, r.totals.params, r.totals.peak_bytes)
                                   for r in reports))


# ---- sweep --------------------------------------------------------------------------------------------------------

SWEEP_PANELS = ("params", "macs", "peak_inference_bytes", "training_bytes")


@dataclass(frozen=True, slots=True)
class Line:
    label: str  # the other varied values ("" when only one thing varies)
    x: tuple[float, ...]
    y: dict[str, tuple[int, ...]]  # column -> value at each x


@dataclass(frozen=True, slots=True)
class FrontPoint:
    label: str
    x: int
    y: int
    optimal: bool


@dataclass(frozen=True, slots=True)
class SweepPlot:
    title: str
    variable: str  # the swept variable on the x axis
    ticks: tuple[tuple[float, str], ...]  # x positions and their labels
    lines: tuple[Line, ...]
    objectives: tuple[str, str]  # the Pareto panel's axes (minimized; a leading '-' maximizes)
    front: tuple[FrontPoint, ...]


def _point_values(row: Any, varied: Sequence[str]) -> dict[str, str]:
    out = dict(row.point.sets)
    out["input"] = dims(row.input)
    out["batch"] = str(row.point.batch)
    return {k: out[k] for k in varied}


def sweep_plot(rows: Sequence[Any], spec: str, options: Any, pareto: Sequence[str] = ()) -> SweepPlot:
    """The figures of a sweep against its swept variable (the first --set name, input or batch that takes more than
    one value; one line per combination of the others), and a Pareto panel over two columns: the first two of
    `pareto` when both are figures of a row, else macs and params, with the front core.sweep.pareto finds on them.
    Failed rows are left out."""
    from archcalc.core.sweep import COLUMNS
    from archcalc.core.sweep import pareto as front_of

    kept = [r for r in rows if r.values is not None]
    names = [n for n, _ in kept[0].point.sets] if kept else []
    candidates = [*names, "input", "batch"]
    varied = [k for k in candidates if len({_point_values(r, [k])[k] for r in kept}) > 1] or candidates[-1:]
    variable = varied[0]
    order: list[str] = []
    for r in kept:
        v = _point_values(r, [variable])[variable]
        if v not in order:
            order.append(v)
    numeric = variable != "input" and all(_number(v) is not None for v in order)
    if numeric:
        order.sort(key=lambda v: _number(v) or 0.0)
    position = {v: (_number(v) or 0.0) if numeric else float(i) for i, v in enumerate(order)}
    lines: dict[str, list[Any]] = {}
    for r in kept:
        values = _point_values(r, varied)
        label = ", ".join(f"{k}={values[k]}" for k in varied[1:])
        lines.setdefault(label, []).append((position[values[variable]], r))
    out = []
    for label, points in lines.items():
        points.sort(key=lambda p: p[0])
        out.append(Line(label, tuple(x for x, _ in points),
                        {c: tuple(r.values[c] for _, r in points) for c in SWEEP_PANELS}))
    given = [o.strip() for o in pareto if o.strip()]
    a, b = given[:2] if len(given) >= 2 and all(o.lstrip("-") in COLUMNS for o in given[:2]) else ("macs", "params")
    marked: list[Any] = front_of(kept, [a, b], names)
    front = tuple(FrontPoint(", ".join(f"{k}={v}" for k, v in _point_values(r, varied).items()),
                             r.values[a.lstrip("-")], r.values[b.lstrip("-")], bool(r.pareto)) for r in marked)
    head = f"{spec}: sweep of {', '.join(varied)} ({len(kept)} point{'s' if len(kept) != 1 else ''})"
    amp = f", amp {options.amp}" if options.amp else ""
    text = (f"{head}\n{options.dtype}, {_convention(options.convention)}; training memory: {options.optimizer}{amp}; "
            "MACs and memory at each point's batch")
    return SweepPlot(text, variable, tuple((position[v], v) for v in order), tuple(out), (a, b), front)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---- profile ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RooflinePoint:
    name: str
    kind: str
    flops: int
    intensity: float  # FLOP per byte moved
    achieved: float  # FLOP/s measured: flops / median time
    predicted: float  # FLOP/s at the roofline prediction: flops / predicted time


@dataclass(frozen=True, slots=True)
class Roofline:
    title: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    source: str
    points: tuple[RooflinePoint, ...]
    left_out: int  # timed layers without FLOPs or bytes (no place on a log-log roofline)


def roofline(result: Any) -> Roofline:
    """One (threads, batch) point of `archcalc profile`: the device's ceilings and each timed layer with FLOPs and
    bytes (layers without either have no place on a log-log roofline and are left out)."""
    points = tuple(RooflinePoint(lt.name, lt.kind, lt.flops, lt.flops / lt.bytes, lt.flops / (lt.median_ms / 1e3),
                                 lt.flops / (lt.predicted_ms / 1e3))
                   for lt in result.layers if lt.flops > 0 and lt.bytes > 0 and lt.median_ms > 0
                   and lt.predicted_ms > 0)
    mode = "training step" if result.train else "inference"
    text = (f"{result.spec}: roofline on {result.device_name} ({result.device}), {mode}\n"
            f"batch {result.batch}, {result.dtype}, {result.threads} thread{'s' if result.threads != 1 else ''}"
            f"{', channels-last' if result.channels_last else ''}\nFLOPs: {result.flops_rule}")
    return Roofline(text, result.roofline.peak_flops, result.roofline.bandwidth, result.roofline.source, points,
                    len(result.layers) - len(points))
