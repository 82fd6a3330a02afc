"""Training, analytically: the FLOPs of one training step as FlopCounterMode counts them, and training memory term
by term (weights, gradients, optimizer state, saved activations, mixed precision's weight copies).

Nothing here imports torch. Both are computed from a Report: batch and dtype are already applied there.
"""

from typing import Any, NamedTuple

from archcalc.core.analyze import Report, analyze
from archcalc.core.conventions import DTYPES, flop_counter_divides_groups
from archcalc.core.kinds.base import numel
from archcalc.core.memory import (
    Holders,
    Segment,
    TrainStep,
    peak_inference_bytes,
    saved_training_bytes,
    training_timeline,
)
from archcalc.core.settings import AMP, FIT_FOR, OPTIMIZERS, Settings
from archcalc.core.spec import Spec

NOT_MODELLED: tuple[tuple[str, str], ...] = (
    ("CUDA context", "the driver's and the kernels' own memory, outside torch's allocator: typically 300-600 MiB "
                     "per process (more with many libraries loaded); nvidia-smi shows it, "
                     "torch.cuda.memory_allocated does not"),
    ("cuDNN / cuBLAS workspace", "scratch memory of the algorithm each conv or matmul picks: from none to a few "
                                 "hundred MiB per call, capped by the free memory at the time (cuBLAS keeps "
                                 "about 4-32 MiB per handle)"),
    ("allocator fragmentation", "the caching allocator reserves whole blocks: reserved exceeds allocated by "
                                "typically 5-30% in training"),
    ("backward's working set", "the gradient of the activation being back-propagated and the one being produced, "
                               "about twice the largest activation, alive beside the saved tensors"),
)
"""What training memory leaves out, with typical sizes. `archcalc profile --train` on CUDA measures the peak that
includes them (torch.cuda.max_memory_allocated, and reserved memory beside it)."""


# ---- FLOPs --------------------------------------------------------------------------------------------------------


class LayerFlops(NamedTuple):
    """One layer's share of a training step, as FlopCounterMode attributes it to the module (batch included)."""

    name: str
    forward: int
    grad_input: int
    grad_weight: int

    @property
    def total(self) -> int:
        return self.forward + self.grad_input + self.grad_weight


class TrainingFlops(NamedTuple):
    layers: tuple[LayerFlops, ...]  # the layers with FLOPs, in execution order
    forward: int
    grad_input: int
    grad_weight: int

    @property
    def total(self) -> int:
        return self.forward + self.grad_input + self.grad_weight


def training_flops(report: Report, divide_groups: bool | None = None) -> TrainingFlops:
    """FLOPs of one training step (forward + backward) exactly as torch.utils.flop_counter.FlopCounterMode counts
    them: 2 per MAC of conv and linear forward; backward = the input's gradient + the weight's gradient, each the
    size of the forward (a grouped conv's weight gradient `groups` times that: Kind.backward_macs). A layer whose
    input needs no gradient (the first layer, or any layer with only frozen layers before it) computes no input
    gradient; a frozen layer (`trainable: false`) computes no weight gradient. Optimizer steps count nothing.
    `divide_groups`: the grouped-conv rule (None: the installed torch's, conventions.flop_counter_divides_groups)."""
    graph = report.graph
    needs_grad = [False] * len(graph.tensors)  # the network's inputs (a batch from a data loader) need none
    layers: list[LayerFlops] = []
    reaches = graph.used(discarded=False) if graph.discarded else None  # no gradient reaches a discarded item
    divide = divide_groups if divide_groups is not None else flop_counter_divides_groups()
    for i, row in enumerate(report.rows):  # one per op, in execution order, each with its op
        op = row.op
        assert op is not None  # only a block's summary row (in report.outline) has none
        if not row.used:
            continue
        needed = any(needs_grad[t] for t in op.inputs)
        if reaches is not None and not reaches[i]:  # `discard: true` alone depends on it: its forward only
            if op.kind is not None and row.macs:
                layers.append(LayerFlops(op.name, 2 * row.macs, 0, 0))
            needs_grad[op.output] = needed or row.trainable_params > 0
            continue
        if op.kind is not None and row.macs:
            grad_in, grad_w = op.kind.backward_macs(op.args, row.macs, graph.tensors[op.inputs[0]].shape, divide)
            layers.append(LayerFlops(op.name, 2 * row.macs, 2 * grad_in if needed else 0,
                                     2 * grad_w if row.trainable_params else 0))
        needs_grad[op.output] = needed or row.trainable_params > 0
    return TrainingFlops(tuple(layers), sum(f.forward for f in layers), sum(f.grad_input for f in layers),
                         sum(f.grad_weight for f in layers))


# ---- memory -------------------------------------------------------------------------------------------------------


class TrainingMemory(NamedTuple):
    """Bytes held at the end of a training-mode forward, once the optimizer has state (the steady state).

    An upper bound on the step's peak as far as these terms go: with zero_grad(set_to_none=True), torch's default,
    gradients are allocated during backward while saved activations are freed, so a measured peak can be lower by
    up to min(gradients, saved activations). See NOT_MODELLED for what is left out.
    """

    batch: int
    optimizer: str
    param_dtype: str
    activation_dtype: str
    amp: str | None
    weights: int  # every parameter, in the parameter dtype (float32 master weights under amp)
    weight_copies: int  # amp: the low-precision copies autocast makes of conv/linear parameters (kept for backward)
    gradients: int  # trainable parameters, in the parameter dtype
    optimizer_state: int  # OPTIMIZERS[optimizer].state tensors per trainable parameter, in the parameter dtype
    buffers: int  # batch norm running statistics (float, in the parameter dtype) and counters (int64)
    saved_activations: int  # what autograd keeps for backward (Report.totals.saved_bytes, activation dtype)

    @property
    def total(self) -> int:
        return (self.weights + self.weight_copies + self.gradients + self.optimizer_state + self.buffers
                + self.saved_activations)

    def terms(self) -> tuple[tuple[str, int, str], ...]:
        """(name, bytes, how it is counted) for each term, in the order they are shown."""
        p, a = self.param_dtype, self.activation_dtype
        n = OPTIMIZERS[self.optimizer].state
        return (
            ("weights", self.weights, f"all parameters, {p}" + (" (master weights)" if self.amp else "")),
            ("weight copies", self.weight_copies, f"{a} copies of conv/linear parameters made by autocast"
             if self.amp else "none without --amp"),
            ("gradients", self.gradients, f"trainable parameters, {p}"),
            ("optimizer state", self.optimizer_state, f"{self.optimizer}: {n} tensor{'s' if n != 1 else ''} per "
             f"trainable parameter, {p}"),
            ("buffers", self.buffers, f"batch norm running statistics, {p} (counters int64)"),
            ("saved activations", self.saved_activations, f"kept by autograd for backward, {a}, batch "
             f"{self.batch}"),
        )


def training_memory(report: Report, optimizer: str | None = None, amp: str | None = None) -> TrainingMemory:
    """Training memory at the report's batch. Without `amp` everything is in the report's dtype; with amp
    ('bf16' or 'fp16') the report must have been analyzed in that type (its activations: `training_report`), and
    parameters, gradients, optimizer state and buffers are float32. `optimizer` defaults to the report's
    settings' (sgd for a report built by hand)."""
    if optimizer is None:
        optimizer = report.settings.optimizer if report.settings else "sgd"
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if amp is not None and AMP[amp] != report.dtype:
        raise ValueError(f"amp {amp} needs a report analyzed in {AMP[amp]}, not {report.dtype}")
    return _memory(report, optimizer, amp, report.dtype, report.totals.saved_bytes)


def _memory(report: Report, optimizer: str, amp: str | None, activation_dtype: str, saved: int) -> TrainingMemory:
    """The terms, from a report's counts: parameters, gradients, optimizer state and buffers in the report's dtype,
    or float32 under amp (with autocast's copies of conv/linear weights in the activation dtype); `saved`, the bytes
    autograd keeps, in the activation dtype."""
    t = report.totals
    if amp is not None:
        param_dtype, size = "float32", DTYPES["float32"]
        copies = weight_copy_params(report) * DTYPES[activation_dtype]
    else:
        param_dtype, size, copies = report.dtype, report.itemsize, 0
    return TrainingMemory(
        batch=report.batch, optimizer=optimizer, param_dtype=param_dtype, activation_dtype=activation_dtype, amp=amp,
        weights=t.params * size, weight_copies=copies, gradients=t.trainable_params * size,
        optimizer_state=OPTIMIZERS[optimizer].state * t.trainable_params * size,
        buffers=_buffers_in(report, size), saved_activations=saved)


def weight_copy_params(report: Report) -> int:
    """The parameters autocast copies into the low-precision type: those of conv/linear ("weight") layers."""
    return sum(r.params for r in report.rows if r.used and r.op is not None and r.op.kind is not None
               and r.op.kind.weighted)


def _buffers_in(report: Report, size: int) -> int:
    """The report's buffers priced at `size` bytes per float element (int64 counters stay 8 bytes)."""
    t = report.totals
    return (t.buffers - t.int_buffers) * size + t.int_buffers * 8


def training_report(spec: Spec, settings: Settings | None = None, **overrides: object) -> Report:
    """The report training memory is computed from: in the activation dtype (amp's type under amp), with the
    saved bytes of the settings' device's kernels (see `analyze`)."""
    s = Settings.of(settings, **overrides)
    return analyze(spec, s.replace(dtype=s.activation_dtype, amp=None)) if s.amp else analyze(spec, s)


def step_memory(spec: Spec, settings: Settings | None = None, **overrides: object) -> TrainingMemory:
    """Training memory of one step of `spec` under `settings` (optimizer, amp, batch, dtype, device, ...)."""
    s = Settings.of(settings, **overrides)
    return training_memory(training_report(spec, s), s.optimizer, s.amp)


# ---- the training step's timeline and its peak ------------------------------------------------------------------


class StepPeak(NamedTuple):
    """The most bytes alive at once in one training step (zero_grad(set_to_none=True), forward, the sum of the
    outputs as the loss, backward, optimizer.step()), and where: the phase ('forward', 'loss', 'backward',
    'optimizer') and the op (its name; '' for the loss and the optimizer)."""

    peak: int
    phase: str
    op: str
    before: int  # alive before the step: parameters, buffers, optimizer state (after the first step), inputs
    timeline: tuple[TrainStep, ...]  # forward, loss and backward, beyond `before`
    optimizer: int  # the optimizer step's own peak beyond `before`
    layers: tuple[int, ...] = ()  # per row of the report (op): what it holds at the peak moment (`peak_holders`)
    other: int = 0  # the rest of the peak: the network's inputs, the loss and backward's seed

    def check(self) -> None:  # the shares add up to the peak
        assert sum(self.layers) + self.other == self.peak, (sum(self.layers), self.other, self.peak)


def step_peak(report: Report, optimizer: str | None = None, first: bool = False) -> StepPeak:
    """The training-step peak of `report`'s network at its batch and dtype (no amp), on its device's kernels and
    torch.optim's default implementation there: the first step (`first`: the optimizer creates its state inside
    it) or a later one. On the CPU torch.optim runs one parameter at a time (foreach is the default for CUDA
    tensors only): SGD updates in place; with momentum the first step clones each gradient into its buffer;
    Adam's first step makes exp_avg and exp_avg_sq (zeros) and a float32 `step` scalar per parameter tensor, and
    every step, parameter by parameter, denom = exp_avg_sq.sqrt() / c (two temporaries the parameter's size, the
    previous denom still alive). On CUDA (foreach) Adam's square roots are made for all parameters at once, and the
    `step` scalars live on the CPU."""
    return step_peaks(report, optimizer)[1 if first else 0]


def step_peaks(report: Report, optimizer: str | None = None, segments: tuple[Segment, ...] = (),
               batch: int | None = None, moments: tuple[list[int], list[int]] | None = None,
               amp: str | None = None) -> tuple[StepPeak, StepPeak]:
    """`step_peak` of a later step and of the first, from one timeline, with `segments` run under
    torch.utils.checkpoint (core.memory.training_timeline), at `batch` (default: the report's; the graph does not
    depend on it). `moments`, when given, receive every value the later and the first step's peaks are the
    maximum of (each affine in the batch: `StepLine`). With `amp` ('bf16'; the report analyzed in its type:
    `training_report`), the step under torch.autocast on the CPU: float32 parameters, buffers, gradients,
    optimizer state and inputs, low-precision activations and autocast's copies (memory.training_timeline);
    `autocast_unfollowed` says where it is not followed (ValueError here)."""
    if optimizer is None:
        optimizer = report.settings.optimizer if report.settings else "sgd"
    reason = step_unfollowed(report)
    if reason:
        raise ValueError(reason)
    if amp is not None:
        reason = autocast_unfollowed(report, amp)
        if reason:
            raise ValueError(reason)
    graph = report.graph
    act = report.itemsize
    size = DTYPES["float32"] if amp else act  # parameters, gradients, optimizer state, inputs
    batch = report.batch if batch is None else batch
    device = report.settings.device if report.settings else "cpu"
    grad_bytes = tuple(row.trainable_params * size if row.used else 0 for row in report.rows)
    seen: list[int] | None = [] if moments is not None else None
    holders = Holders()
    timeline = training_timeline(graph, act, batch, device, grad_bytes,
                                 report.settings.input_requires_grad if report.settings else False, segments, seen,
                                 holders=holders, autocast=amp is not None)
    t = report.totals
    if amp:  # the report's parameter and buffer bytes are in the activation type: float32 here
        t = t._replace(param_bytes=t.params * size, buffer_bytes=_buffers_in(report, size))
    owned = _param_sizes(report, size, owners=True)
    sizes = [n for _, n in owned]
    trainable = t.trainable_params * size
    adam = optimizer in ("adam", "adamw")
    counters = 4 * len(sizes) if adam and device == "cpu" else 0  # Adam's float32 `step`s (CPU tensors)
    state = OPTIMIZERS[optimizer].state * trainable + counters
    inputs = sum(numel(graph.tensors[i].shape) for _, i in graph.inputs) * batch * size
    end = timeline[-1].after
    # who holds what: each row its parameters and buffers throughout, its optimizer state, and the optimizer's
    # temporaries for its parameters
    rows = len(report.rows)
    fixed = [(r.params * size + (r.buffers - r.int_buffers) * size + r.int_buffers * 8) if r.used else 0
             for r in report.rows]
    state_of = [r.trainable_params * size * OPTIMIZERS[optimizer].state if r.used else 0 for r in report.rows]
    for owner, _ in owned:
        state_of[owner] += 4 if counters else 0
    temporary_of = [0] * rows
    if not adam:
        temporary = 0
    elif device == "cpu":  # one parameter at a time: sqrt and its quotient, beside the previous denom
        temporary, k = max(((2 * n + (sizes[k - 1] if k else 0), k) for k, n in enumerate(sizes)), default=(0, -1),
                           key=lambda c: c[0])
        if k >= 0:
            temporary_of[owned[k][0]] += 2 * sizes[k]
            if k:
                temporary_of[owned[k - 1][0]] += sizes[k - 1]
    else:  # foreach: _foreach_sqrt for all parameters, divided and offset in place
        temporary = trainable
        temporary_of = [r.trainable_params * size if r.used else 0 for r in report.rows]
    result = []
    for first in (False, True):
        before = t.param_bytes + t.buffer_bytes + inputs + (0 if first else state)
        optimizer_peak = end + (state if first else 0) + temporary
        candidates = [(s.running, s.phase, graph.ops[s.op].name if s.op >= 0 else "") for s in timeline]
        candidates.append((optimizer_peak, "optimizer", ""))
        peak, phase, op = max(candidates, key=lambda c: c[0])  # the first of equals
        if phase == "optimizer":
            held = {h: n + (state_of[h] if first and h >= 0 else 0) + (temporary_of[h] if h >= 0 else 0)
                    for h, n in holders.end.items()}
            for h in range(rows):
                if h not in held:
                    held[h] = (state_of[h] if first else 0) + temporary_of[h]
        else:
            held = holders.at_peak
        layers = tuple(fixed[h] + (0 if first else state_of[h]) + held.get(h, 0) for h in range(rows))
        result.append(StepPeak(before + peak, phase, op, before, timeline, optimizer_peak, layers,
                               inputs + held.get(-1, 0)))
        if moments is not None and seen is not None:
            moments[first].extend([before + m for m in seen] + [before + optimizer_peak])
    return result[0], result[1]


def step_unfollowed(report: Report) -> str:
    """Why the training step of `report` is not followed ('' when it is): a layer whose backward the timeline does
    not model yet (Kind.step_unfollowed_for)."""
    graph = report.graph
    used = graph.used(discarded=False)
    for op, u in zip(graph.ops, used):
        reason = op.kind.step_unfollowed_for(op.args, graph.tensors[op.inputs[0]].shape) if u and op.kind else ""
        if reason:
            return f"{op.name} ({op.kind.name}): {reason}"  # type: ignore[union-attr]
    return ""


def autocast_unfollowed(report: Report, amp: str) -> str:
    """Why the training step of `report` under `amp` is not followed ('' when it is): only bf16 autocast on the
    CPU, with inputs that need no gradient and that only ops autocast lowers read, and no op autocast runs in
    float32 or that mixes types inside."""
    s = report.settings
    if amp != "bf16":
        return f"the step under {amp} autocast is not followed (bf16 only)"
    if s is not None and s.device != "cpu":
        return "the step under autocast is followed on the CPU only"
    if s is not None and s.input_requires_grad:
        return "the step under autocast is not followed with an input that requires grad"
    graph = report.graph
    inputs = {t for _, t in graph.inputs}
    for op in graph.ops:
        rule = op.kind.autocast_on(op.args, graph.tensors[op.inputs[0]].shape) if op.kind else ""
        if rule in ("float32", "mixed", "promotes"):
            what = "its float32 parameter makes its output float32" if rule == "promotes" else \
                "it runs in float32 or mixed types"
            return f"{op.name}: {what} under autocast: the step is not followed"
        if inputs.intersection(op.inputs) and rule != "lower":
            return (f"{op.name} reads the float32 input and autocast does not lower it: the step is not followed "
                    "(the network must begin with a convolution or linear layer)")
    return ""


def _param_sizes(report: Report, itemsize: int, owners: bool = False) -> list[Any]:
    """Bytes of each trainable parameter tensor, in the order the optimizer walks them (the model's); with
    `owners`, (row index, bytes)."""
    sizes: list[Any] = []
    for k, row in enumerate(report.rows):
        op = row.op
        if row.used and row.trainable_params and op is not None and op.kind is not None:
            sizes.extend((k, n * itemsize) if owners else n * itemsize
                         for n in op.kind.param_tensors(op.args, row.output, row.params))
    return sizes


# ---- memory as a function of the batch ----------------------------------------------------------------------------


class StepLine(NamedTuple):
    """The training step's peak as a function of the batch: the larger of the first and a later step's
    (`step_peaks`), so that every step fits. Each moment of the timeline is affine in the batch (its tensors scale
    with it; parameters, gradients, optimizer state and the loss do not) and the walk takes the same moments at
    every batch, so the peak is exactly the maximum of these lines, found from the walks at batch 1 and 2."""

    lines: tuple[tuple[int, int], ...]  # (bytes at batch 0, bytes per sample), one per slope, the largest

    def at(self, batch: int) -> int:
        return max(c + batch * s for c, s in self.lines)

    def largest_batch(self, limit: int, most: int = 1 << 24) -> int:
        """The largest batch b <= most with at(b) <= limit (0 when batch 1 does not fit): each line solved."""
        if self.at(1) > limit:
            return 0
        return min([most, *((limit - c) // s for c, s in self.lines if s > 0)])


def step_line(report: Report, optimizer: str | None = None, segments: tuple[Segment, ...] = ()) -> StepLine:
    """The StepLine of `report`'s network (its batch does not matter) under `optimizer`, with `segments`
    checkpointed."""
    ones: tuple[list[int], list[int]] = ([], [])
    twos: tuple[list[int], list[int]] = ([], [])
    step_peaks(report, optimizer, segments, 1, ones)
    step_peaks(report, optimizer, segments, 2, twos)
    best: dict[int, int] = {}
    for a, b in zip(ones[0] + ones[1], twos[0] + twos[1], strict=True):
        slope = b - a
        best[slope] = max(best.get(slope, a - slope), a - slope)
    return StepLine(tuple((c, s) for s, c in sorted(best.items())))


class MemoryLine(NamedTuple):
    """Training memory and the inference peak as functions of the batch, from two walks of the graph.

    Counts scale with the batch and the parameter terms do not; the two memory walks (the inference liveness peak,
    the bytes saved for backward) are affine in the batch, so f(b) = f(1) + (b - 1) (f(2) - f(1)) exactly (tests
    check every figure against an independent `analyze` at that batch). The training step's exact peak is the
    maximum of such lines (`StepLine`). Used by calc --fit, sweep and check."""

    fixed: TrainingMemory  # at batch 1: the batch-independent terms, and saved activations at batch 1
    saved_slope: int  # saved bytes per extra sample (activation dtype)
    peak: tuple[int, int]  # inference peak (activations alive at once) at batch 1 and 2, without parameters
    param_buffer_bytes: int  # parameters and buffers in the report's dtype (part of the inference peak)
    step: StepLine | None = None  # the training step's exact peak (None under amp: not modelled there)

    def memory(self, batch: int) -> TrainingMemory:
        return self.fixed._replace(batch=batch, saved_activations=self.fixed.saved_activations
                                   + (batch - 1) * self.saved_slope)

    def inference_peak(self, batch: int) -> int:
        """The inference peak at `batch`, parameters and buffers included (Totals.peak_bytes)."""
        return self.peak[0] + (batch - 1) * (self.peak[1] - self.peak[0]) + self.param_buffer_bytes

    def training(self, batch: int) -> int:
        """The training bytes --fit, sweep and check use at `batch`: the step's exact peak (the larger of the first
        and a later step), or under amp, where the step is not modelled, the upper bound `memory(batch).total`."""
        return self.step.at(batch) if self.step is not None else self.memory(batch).total

    def at(self, batch: int, fit_for: str = "training") -> int:
        """Bytes at `batch`: the training peak ('training': `training`) or the inference peak ('inference')."""
        return self.training(batch) if fit_for == "training" else self.inference_peak(batch)

    def largest_batch(self, limit: int, fit_for: str = "training", most: int = 1 << 24) -> int:
        """The largest batch whose memory fits `limit` bytes (0 when batch 1 does not), at most `most`."""
        if fit_for == "training" and self.step is not None:
            return self.step.largest_batch(limit, most)
        first = self.at(1, fit_for)
        return largest_batch(first, self.at(2, fit_for) - first, limit, most)


def largest_batch(first: int, slope: int, limit: int, most: int = 1 << 24) -> int:
    """The largest b <= most with first + (b - 1) * slope <= limit, 0 when not even b = 1: the line solved for the
    batch, no search."""
    if first > limit:
        return 0
    return most if slope <= 0 else min(most, 1 + (limit - first) // slope)


def memory_line(spec: Spec, settings: Settings | None = None, **overrides: object) -> MemoryLine:
    """The MemoryLine of `spec` under `settings` (its batch is ignored)."""
    s = Settings.of(settings, **overrides).replace(batch=1)
    return memory_line_of(analyze(spec, s), s)


def memory_line_of(report: Report, settings: Settings) -> MemoryLine:
    """The MemoryLine from a report at batch 1 (analyzed under `settings`, in its dtype): the memory walks again at
    batch 2, and the saved bytes in amp's activation dtype."""
    if report.batch != 1:
        raise ValueError("memory_line_of needs a report at batch 1")
    s, t, graph = settings, report.totals, report.graph
    act = DTYPES[s.activation_dtype]
    saved = (t.saved_bytes if act == report.itemsize else
             saved_training_bytes(graph, act, 1, s.device, s.input_requires_grad))
    saved2 = saved_training_bytes(graph, act, 2, s.device, s.input_requires_grad)
    fixed = _memory(report, s.optimizer, s.amp, s.activation_dtype, saved)
    fixed_bytes = t.param_bytes + t.buffer_bytes
    return MemoryLine(fixed, saved2 - saved, (t.peak_bytes - fixed_bytes, peak_inference_bytes(graph, report.itemsize,
                                                                                               2)), fixed_bytes,
                      None if s.amp or step_unfollowed(report) else step_line(report, s.optimizer))


# ---- the inverse question: the largest batch that fits ------------------------------------------------------------


class Fit(NamedTuple):
    """The answer of `--fit SIZE`: the largest batch whose memory fits, the memory at it and one sample more."""

    limit: int
    fit_for: str  # 'training' or 'inference'
    batch: int  # 0: not even batch 1 fits
    at: int  # bytes at max(batch, 1)
    next_at: int | None  # bytes at batch + 1 (None when batch is 0)
    exact: bool = False  # training: the step's exact peak (MemoryLine.training); else the upper bound (amp)


def fit_batch(spec: Spec, limit: int, settings: Settings | None = None, fit_for: str = "training",
              **overrides: object) -> Fit:
    """The largest batch of `spec` whose training step's peak (MemoryLine.training: exact; the upper bound under
    amp) or inference peak fits `limit` bytes."""
    if fit_for not in FIT_FOR:
        raise ValueError(f"unknown fit_for {fit_for!r}")
    line = memory_line(spec, settings, **overrides)
    batch = line.largest_batch(limit, fit_for)
    return Fit(limit, fit_for, batch, line.at(max(batch, 1), fit_for), line.at(batch + 1, fit_for) if batch else None,
               fit_for == "training" and line.step is not None)


# ---- per layer: what each layer costs a training step ---------------------------------------------------------


class LayerTraining(NamedTuple):
    """One row of `calc --columns training`: a layer's (or a collapsed block's: the sums) part in one training
    step, batch and dtype applied."""

    name: str
    kind: str
    depth: int
    shapes: tuple[tuple[int, ...], ...]
    saved_bytes: int  # kept by its autograd node for backward (a tensor several layers keep: at the first)
    grad_input_flops: int  # its backward's input gradient, in the report's convention (Convention.backward)
    grad_weight_flops: int  # its backward's weight gradient, likewise
    peak_bytes: int | None  # what it holds at a later step's peak moment (StepPeak.layers); None: not modelled


class TrainingLayers(NamedTuple):
    rows: tuple[LayerTraining, ...]  # one per Report.rows
    outline: tuple[LayerTraining, ...]  # one per Report.outline (a block: the sums of its layers)
    totals: LayerTraining  # the used rows' sums
    other_peak: int | None  # the rest of the peak: the network's inputs, the loss, backward's seed


def layer_training(report: Report, flops: TrainingFlops, step: StepPeak | None,
                   amp: str | None = None) -> TrainingLayers:
    """Per layer: the bytes it saves for backward (the forward's saved-bytes walk, `saved_timeline`, op by op:
    a storage kept twice counts at the first layer keeping it, so the layers add up to Totals.saved_bytes), its
    backward FLOPs (`training_flops`' MACs, which FlopCounterMode counts, at the report convention's FLOPs per MAC)
    and its share of `step`'s peak (a later step's: its parameters, buffers and optimizer state, and what it made
    that is alive at the peak moment)."""
    from archcalc.core.conventions import CONVENTIONS
    from archcalc.core.memory import saved_timeline

    graph = report.graph
    s = report.settings
    saved = saved_timeline(graph, report.itemsize, report.batch, s.device if s else "cuda",
                           s.input_requires_grad if s else False, autocast=amp is not None)
    per_mac = CONVENTIONS[report.convention].backward
    by_name = {f.name: f for f in flops.layers}
    rows: list[LayerTraining] = []
    for i, row in enumerate(report.rows):
        f = by_name.get(row.name) if row.used else None
        g_in, g_w = (f.grad_input // 2 * per_mac, f.grad_weight // 2 * per_mac) if f else (0, 0)
        rows.append(LayerTraining(row.name, row.kind, row.depth, row.shapes,
                                  saved[i] - (saved[i - 1] if i else 0) if row.used else 0, g_in, g_w,
                                  step.layers[i] if step is not None else None))
    leaf_of = {id(r): k for k, r in enumerate(report.rows)}
    outline: list[LayerTraining] = []
    stack: list[tuple[int, list[int]]] = []  # open blocks: (depth, rows under them)
    spans: list[tuple[Any, list[int]]] = []
    for r in report.outline:
        while stack and stack[-1][0] >= r.depth:
            stack.pop()
        if r.leaf:
            k = leaf_of[id(r)]
            for _, under in stack:
                under.append(k)
            spans.append((r, [k]))
        else:
            block: list[int] = []
            stack.append((r.depth, block))
            spans.append((r, block))
    for r, under in spans:
        if r.leaf:
            outline.append(rows[under[0]])
        else:
            outline.append(_summed(r.name, r.kind, r.depth, r.shapes, [rows[k] for k in under
                                                                        if report.rows[k].used]))
    totals = _summed("total", "", 0, (report.totals.output,), [row for row, r in zip(rows, report.rows) if r.used])
    return TrainingLayers(tuple(rows), tuple(outline), totals, step.other if step is not None else None)


def _summed(name: str, kind: str, depth: int, shapes: tuple[tuple[int, ...], ...],
            rows: list[LayerTraining]) -> LayerTraining:
    peak = None if any(r.peak_bytes is None for r in rows) else sum(r.peak_bytes or 0 for r in rows)
    return LayerTraining(name, kind, depth, shapes, sum(r.saved_bytes for r in rows),
                         sum(r.grad_input_flops for r in rows), sum(r.grad_weight_flops for r in rows), peak)


def training_rows_at_depth(report: Report, layers: TrainingLayers, depth: int | None) -> list[LayerTraining]:
    """The training rows matching core.analyze.rows_at_depth(report, depth)."""
    if depth is None:
        return list(layers.rows)
    return [t for r, t in zip(report.outline, layers.outline) if r.depth == depth or (r.depth < depth and r.leaf)]
