"""Training, analytically: the FLOPs of one training step as FlopCounterMode counts them, and training memory term
by term (weights, gradients, optimizer state, saved activations, mixed precision's weight copies).

Nothing here imports torch. Both are computed from a Report: batch and dtype are already applied there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from archcalc.core.analyze import Report, analyze
from archcalc.core.conventions import DTYPES
from archcalc.core.kinds import REGISTRY
from archcalc.core.spec import Spec

# Optimizer state tensors kept per trainable parameter (torch.optim): SGD without momentum keeps none, with
# momentum a momentum buffer; Adam and AdamW exp_avg and exp_avg_sq (plus one scalar `step` per parameter tensor,
# a few bytes, not counted).
OPTIMIZERS: dict[str, int] = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}

# Mixed precision (torch.autocast): parameters, gradients and optimizer state stay float32 ("master weights");
# activations are computed in the low-precision type.
AMP: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16"}

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


def training_flops(report: Report) -> TrainingFlops:
    """FLOPs of one training step (forward + backward) exactly as torch.utils.flop_counter.FlopCounterMode counts
    them: 2 per MAC of conv and linear forward; backward = the input's gradient + the weight's gradient, each the
    size of the forward (a grouped conv's weight gradient `groups` times that: Kind.backward_macs). A layer whose
    input needs no gradient (the first layer, or any layer with only frozen layers before it) computes no input
    gradient; a frozen layer (`trainable: false`) computes no weight gradient. Optimizer steps count nothing."""
    graph = report.graph
    needs_grad = [False] * len(graph.tensors)  # the network's inputs (a batch from a data loader) need none
    layers: list[LayerFlops] = []
    for row in report.rows:  # one per op, in execution order, each with its op
        op = row.op
        assert op is not None  # only a block's summary row (in report.outline) has none
        if not row.used:
            continue
        needed = any(needs_grad[t] for t in op.inputs)
        if op.kind is not None and row.macs:
            grad_in, grad_w = op.kind.backward_macs(op.args, row.macs)
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
    optimizer_state: int  # OPTIMIZERS[optimizer] tensors per trainable parameter, in the parameter dtype
    buffers: int  # batch norm running statistics (float, in the parameter dtype) and counters (int64)
    saved_activations: int  # what autograd keeps for backward (Report.totals.saved_bytes, activation dtype)

    @property
    def total(self) -> int:
        return (self.weights + self.weight_copies + self.gradients + self.optimizer_state + self.buffers
                + self.saved_activations)

    def terms(self) -> tuple[tuple[str, int, str], ...]:
        """(name, bytes, how it is counted) for each term, in the order they are shown."""
        p, a = self.param_dtype, self.activation_dtype
        n = OPTIMIZERS[self.optimizer]
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


def training_memory(report: Report, optimizer: str = "sgd", amp: str | None = None) -> TrainingMemory:
    """Training memory at the report's batch. Without `amp` everything is in the report's dtype; with amp
    ('bf16' or 'fp16') the report must have been analyzed in that type (its activations), and parameters,
    gradients, optimizer state and buffers are float32."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    t = report.totals
    if amp is not None:
        if AMP[amp] != report.dtype:
            raise ValueError(f"amp {amp} needs a report analyzed in {AMP[amp]}, not {report.dtype}")
        param_dtype, size = "float32", DTYPES["float32"]
        copies = sum(r.params for r in report.rows if r.used and r.leaf and r.module and REGISTRY[r.kind].weighted)
        copies *= report.itemsize
    else:
        param_dtype, size, copies = report.dtype, report.itemsize, 0
    # buffer_bytes = float buffers * itemsize + int64 buffers * 8: recover the int64 count to re-price the floats.
    int_buffers = 0 if report.itemsize == 8 else (t.buffer_bytes - t.buffers * report.itemsize) // (8 - report.itemsize)
    buffers = (t.buffers - int_buffers) * size + int_buffers * 8
    return TrainingMemory(
        batch=report.batch, optimizer=optimizer, param_dtype=param_dtype, activation_dtype=report.dtype, amp=amp,
        weights=t.params * size, weight_copies=copies, gradients=t.trainable_params * size,
        optimizer_state=OPTIMIZERS[optimizer] * t.trainable_params * size, buffers=buffers,
        saved_activations=t.saved_bytes)


def training_report(spec: Spec, batch: int, dtype: str, amp: str | None, convention: str = "torch",
                    input_shape: tuple[int, ...] | None = None, device: str = "cuda",
                    input_requires_grad: bool = False) -> Report:
    """The report training memory is computed from: in the activation dtype (amp's type under amp), with the
    saved bytes of `device`'s kernels (see `analyze`)."""
    return analyze(spec, batch, AMP[amp] if amp else dtype, convention, input_shape, device=device,
                   input_requires_grad=input_requires_grad)


# ---- the inverse question: the largest batch that fits ------------------------------------------------------------


def largest_batch(memory_at: Callable[[int], int], limit: int, most: int = 1 << 24) -> int:
    """The largest batch b with memory_at(b) <= limit (0 when batch 1 does not fit), for memory that grows with
    the batch: doubling, then bisection; about 2 log2(b) evaluations."""
    if memory_at(1) > limit:
        return 0
    low, high = 1, 2
    while high <= most and memory_at(high) <= limit:
        low, high = high, high * 2
    if high > most:
        return low
    while high - low > 1:  # memory_at(low) fits, memory_at(high) does not
        mid = (low + high) // 2
        if memory_at(mid) <= limit:
            low = mid
        else:
            high = mid
    return low


def memory_at(spec: Spec, mode: str = "training", dtype: str = "float32", optimizer: str = "sgd",
              amp: str | None = None, input_shape: tuple[int, ...] | None = None, device: str = "cuda",
              input_requires_grad: bool = False) -> Callable[[int], int]:
    """batch -> training memory total, or (mode 'inference') the inference peak (parameters included); training
    memory with the saved bytes of `device`'s kernels."""
    if mode == "inference":
        return lambda b: analyze(spec, b, dtype, "macs", input_shape).totals.peak_bytes
    return lambda b: training_memory(training_report(spec, b, dtype, amp, "macs", input_shape, device,
                                                     input_requires_grad), optimizer, amp).total
