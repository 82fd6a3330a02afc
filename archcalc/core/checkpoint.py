"""Activation checkpointing: which blocks to recompute (torch.utils.checkpoint) so that a training step fits.

A checkpointed segment keeps only its inputs during the forward and runs its forward again during the backward
(core.memory.training_timeline models both exactly: the recomputation re-creates the segment's saved tensors while
its gradients are computed). This module chooses the segments and prices them.

Candidates are the blocks of the spec: every level of its hierarchy of names (a repeat `layer1`, a residual block
`layer1.0`, a dense layer `features.denseblock1.0`, a branch `...0.branch2`) whose ops run one after another and
whose only tensor read after it is its last op's output, and whose ops write nothing of their inputs in place.

The choice, greedy by bytes saved per extra FLOP:
1. each candidate alone is priced: the bytes it frees at the end of the forward (the saved-tensor bytes its ops
   keep less the inputs the checkpoint keeps instead) and the forward FLOPs its recomputation repeats (torch's
   FlopCounterMode convention; the recomputation stops after the last op that saves anything, so a trailing conv
   that saves only its input is not recomputed);
2. candidates are taken in order of bytes freed per extra FLOP (FLOP-free ones first), each kept only if it
   lowers the step's peak, until the peak fits the limit; one that contains segments already taken replaces them,
   one that overlaps a segment taken otherwise is passed over;
3. then each segment taken, the least efficient first, is dropped again if the peak still fits without it.
The peak is the step's (the larger of the first and a later step: core.training.step_peaks), so the plan is exact
for the timeline archcalc models; it is a good plan, not a proven optimal one (choosing segments optimally is a
knapsack over a non-additive peak).
Nothing here imports torch.
"""

from typing import NamedTuple

from archcalc.core.analyze import Report
from archcalc.core.graph import Op
from archcalc.core.memory import Segment, recomputed, training_timeline
from archcalc.core.training import StepPeak, step_peaks, training_flops


class Checkpointed(NamedTuple):
    """One segment of a plan: the block `name` (ops `first_op`..`last_op`), the bytes checkpointing it alone frees
    at the end of the forward, and the forward FLOPs its recomputation repeats (batch included)."""

    name: str
    first_op: str
    last_op: str
    segment: Segment
    freed_bytes: int
    extra_flops: int


class Plan(NamedTuple):
    """What to checkpoint so that the training step of `report`'s network at `batch` fits `limit` bytes."""

    limit: int
    batch: int
    without: int  # the step's peak without checkpointing
    segments: tuple[Checkpointed, ...]  # in execution order
    peak: StepPeak  # the later step's peak with the plan
    first: StepPeak  # the first step's
    extra_flops: int  # forward FLOPs the recomputations repeat, per step (torch's FlopCounterMode convention)
    candidates: int  # how many blocks could have been checkpointed

    @property
    def bytes(self) -> int:
        return max(self.peak.peak, self.first.peak)

    @property
    def fits(self) -> bool:
        return self.bytes <= self.limit


def candidates(report: Report) -> list[Checkpointed]:
    """Every block of `report`'s spec that torch.utils.checkpoint can wrap as one function (see the module's
    docstring), priced alone. Blocks that would save nothing are left out."""
    graph = report.graph
    ops = graph.ops
    used = graph.used(discarded=False)
    ranges: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        parts = op.name.split(".")
        for j in range(1, len(parts)):
            ranges.setdefault(".".join(parts[:j]), []).append(i)
    readers: list[list[int]] = [[] for _ in graph.tensors]
    for i, op in enumerate(ops):
        for t in op.inputs:
            readers[t].append(i)
    outputs = {t for _, t in graph.outputs}
    settings = report.settings
    device = settings.device if settings else "cpu"
    grad = settings.input_requires_grad if settings else False
    forward = {f.name: f.forward for f in training_flops(report).layers}
    base = _forward_end(report, ())
    found: list[Checkpointed] = []
    for name, indices in ranges.items():
        first, last = indices[0], indices[-1]
        if len(indices) != last - first + 1 or len(indices) < 2 or not all(used[first:last + 1]):
            continue
        made = {ops[i].output for i in range(first, last + 1)}
        if any(t != ops[last].output and (t in outputs or any(r > last for r in readers[t])) for t in made):
            continue  # a tensor other than its output is read after it
        outside = {graph.tensors[t].train_storage for i in range(first, last + 1) for t in ops[i].inputs
                   if t not in made}
        if any(_in_place(ops[i]) and graph.tensors[ops[i].output].train_storage in outside
               for i in range(first, last + 1)):
            continue  # writes an input in place (the checkpoint must keep it as it was)
        segment = Segment(first, last)
        again = recomputed(graph, segment, device, grad)
        if not again:
            continue
        freed = base - _forward_end(report, (segment,))
        if freed > 0:
            found.append(Checkpointed(name, ops[first].name, ops[last].name, segment, freed,
                                      sum(forward.get(ops[i].name, 0) for i in again)))
    return found


def _in_place(op: Op) -> bool:
    return op.kind is not None and op.kind.inplace(op.args)


def _forward_end(report: Report, segments: tuple[Segment, ...]) -> int:
    """Bytes alive at the end of the forward (what autograd keeps, the checkpoints' inputs, the outputs)."""
    settings = report.settings
    size = report.itemsize
    grad_bytes = tuple(row.trainable_params * size if row.used else 0 for row in report.rows)
    timeline = training_timeline(report.graph, size, report.batch, settings.device if settings else "cpu",
                                 grad_bytes, settings.input_requires_grad if settings else False, segments,
                                 forward_only=True)
    return timeline[-1].after  # the loss's step


def plan(report: Report, limit: int, optimizer: str | None = None) -> Plan:
    """The checkpointing plan for `report`'s network at its batch (the module's docstring gives the algorithm).
    With no segments when the step already fits; `Plan.fits` is false when no choice of blocks makes it fit
    (the plan then lowers the peak as far as the greedy pass got)."""

    def peaks(chosen: list[Checkpointed]) -> tuple[StepPeak, StepPeak]:
        return step_peaks(report, optimizer, tuple(sorted(c.segment for c in chosen)))

    def worst(p: tuple[StepPeak, StepPeak]) -> int:
        return max(p[0].peak, p[1].peak)

    base = peaks([])
    without = worst(base)
    found = candidates(report) if without > limit else []
    order = sorted(found, key=lambda c: (-c.freed_bytes / c.extra_flops if c.extra_flops else float("-inf"),
                                         c.segment.first))
    chosen: list[Checkpointed] = []
    best, now = base, without
    for c in order:
        if now <= limit:
            break
        inside = [o for o in chosen if c.segment.first <= o.segment.first and o.segment.last <= c.segment.last]
        if any(c.segment.first <= o.segment.last and o.segment.first <= c.segment.last for o in chosen
               if o not in inside):
            continue  # overlaps a segment taken without containing it
        rest = [o for o in chosen if o not in inside]
        trial = peaks([*rest, c])
        if worst(trial) < now:  # a block containing segments already taken replaces them
            chosen = [*rest, c]
            best, now = trial, worst(trial)
    if now <= limit:
        for c in sorted(chosen, key=lambda c: (c.freed_bytes / c.extra_flops if c.extra_flops else float("inf"),
                                               -c.segment.first)):
            rest = [o for o in chosen if o is not c]
            trial = peaks(rest)
            if worst(trial) <= limit:
                chosen, best = rest, trial
    chosen.sort(key=lambda c: c.segment.first)
    return Plan(limit, report.batch, without, tuple(chosen), best[0], best[1], sum(c.extra_flops for c in chosen),
                len(found))
