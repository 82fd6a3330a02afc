"""Measure a spec's model on a device and set the measurements beside the analytic Report.

Layout: pure functions first (statistics, the stopping rule, FLOP and memory models, the pre-flight check, the
roofline), then the device-specific pieces behind two small interfaces (a Timer and a MemoryProbe, one CPU and one
CUDA implementation each), then the driver `run_profile`. torch is imported inside functions only, so importing
this module (and the CLI) stays torch-free.

Methodology (learned from torch.utils.benchmark's blocked/adaptive autorange and triton's do_bench):
- warm-up iterations first (cuDNN autotuning with `cudnn.benchmark`, torch.compile and allocator growth happen
  there and are not timed); their mean gives the block size: enough iterations per sample that a sample lasts
  at least MIN_BLOCK_S, so the timer's own overhead is negligible;
- samples are taken in rounds (on CUDA: events around each block, one synchronize per round, as do_bench does);
  after each round the stopping rule looks at all samples: stop when IQR/median <= the target (2 %) with at least
  MIN_SAMPLES samples, or when the time budget is spent (the result then says it did not converge).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from archcalc.core.analyze import Report, analyze
from archcalc.core.devices import DevicePeak, lookup
from archcalc.core.errors import ArchcalcError
from archcalc.core.kinds.base import numel
from archcalc.core.spec import Spec

MIN_SAMPLES = 10
TARGET_REL_IQR = 0.02
MIN_BLOCK_S = 1e-3  # a sample lasts at least this long (timer overhead: ~0.1 us for perf_counter, ~5 us events)
ROUND_S = 0.1  # samples taken between two looks at the stopping rule (and, on CUDA, between synchronizations)
LAYER_ITERATIONS = 5  # iterations recorded by torch.profiler for the per-layer breakdown
OPTIMIZER_STATE = {"sgd": 1, "adam": 2}  # state tensors per parameter: SGD momentum buffer; Adam exp_avg, exp_avg_sq
TRAIN_FLOPS_FACTOR = 3  # forward + backward; backward of conv/linear = 2x forward (grad input + grad weight)
FLOPS_RULE = {
    False: "forward: 2 FLOPs per MAC of conv/linear for the whole batch (convention 'torch')",
    True: "training step: 3x forward FLOPs (backward of conv/linear is 2x forward; convention 'torch'); the "
          "optimizer step is not counted",
}


class ProfileError(ArchcalcError):
    """A profiling request that cannot be carried out (no such device, unsupported option or dtype)."""


class OutOfMemory(ArchcalcError):
    """Predicted or actual memory exceeds what the device has."""


# ---- statistics (pure) ----------------------------------------------------------------------------------------


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
    """Summary of per-iteration times in seconds."""

    n: int
    median: float
    p10: float
    p90: float
    q1: float
    q3: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf


def summarize(samples: Sequence[float]) -> Stats:
    return Stats(len(samples), percentile(samples, 50), percentile(samples, 10), percentile(samples, 90),
                 percentile(samples, 25), percentile(samples, 75), min(samples), max(samples))


def stop_reason(samples: Sequence[float], elapsed_s: float, budget_s: float, target: float = TARGET_REL_IQR,
                min_samples: int = MIN_SAMPLES) -> str | None:
    """'converged' when IQR/median <= target over at least min_samples samples, 'budget' when the time is spent
    (checked second: a run that converges in its last round counts as converged), else None (keep going)."""
    if len(samples) >= min_samples and summarize(samples).rel_iqr <= target:
        return "converged"
    if elapsed_s >= budget_s:
        return "budget"
    return None


def block_size(iteration_s: float, min_block_s: float = MIN_BLOCK_S) -> int:
    """Iterations per sample so that a sample lasts at least min_block_s."""
    if iteration_s <= 0:
        return 1000
    return max(1, math.ceil(min_block_s / iteration_s))


def round_blocks(sample_s: float, remaining_s: float, round_s: float = ROUND_S) -> int:
    """Samples to take before the next look at the stopping rule: about round_s worth (at most MIN_SAMPLES, at
    least 1), and no more than what fits in the remaining budget, so a run overshoots its budget by one sample at
    most. sample_s is the latest estimate of one sample's duration (the running median)."""
    if sample_s <= 0:
        return MIN_SAMPLES
    return max(1, min(MIN_SAMPLES, math.floor(min(round_s, remaining_s) / sample_s)))


# ---- models of work and memory (pure) --------------------------------------------------------------------------


def step_flops(report: Report, train: bool) -> int:
    """FLOPs of one timed iteration for the whole batch (report analyzed under the 'torch' convention)."""
    if report.convention != "torch":
        raise ValueError("profile FLOPs use the 'torch' convention")
    return report.totals.flops * (TRAIN_FLOPS_FACTOR if train else 1)


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """Predicted peak bytes as named terms (their sum is the prediction)."""

    terms: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.terms)


def predicted_memory(report: Report, train: bool, optimizer: str = "sgd") -> MemoryModel:
    """Inference: the liveness peak of an eager forward under no_grad, parameters and buffers included
    (report.totals.peak_bytes). Training: parameters + buffers + gradients + optimizer state + activations saved
    for backward; workspace and transient backward tensors are not modelled (the measurement shows them)."""
    t = report.totals
    if not train:
        return MemoryModel((("activations + parameters (inference liveness)", t.peak_bytes),))
    grads = t.trainable_params * report.itemsize
    return MemoryModel((
        ("parameters", t.param_bytes),
        ("buffers", t.buffer_bytes),
        ("gradients", grads),
        (f"optimizer state ({optimizer})", OPTIMIZER_STATE[optimizer] * grads),
        ("saved activations", t.saved_bytes),
    ))


def preflight(predicted_bytes: int, free_bytes: int | None, force: bool, where: str) -> None:
    """Refuse a run whose predicted memory exceeds the device's free memory (unless forced)."""
    if free_bytes is None or force or predicted_bytes <= free_bytes:
        return
    from archcalc.core.units import nbytes

    raise OutOfMemory(f"{where}: predicted memory {nbytes(predicted_bytes)} exceeds the {nbytes(free_bytes)} free "
                      "on the device; use a smaller batch, or --force to try anyway")


@dataclass(frozen=True, slots=True)
class Roofline:
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    source: str

    def seconds(self, flops: int, nbytes: int) -> float:
        """max(FLOPs / peak, bytes / bandwidth): the time if the layer ran at the binding roof."""
        return max(flops / self.peak_flops, nbytes / self.bandwidth)

    def bound(self, flops: int, nbytes: int) -> str:
        return "compute" if flops / self.peak_flops >= nbytes / self.bandwidth else "memory"


def layer_work(report: Report, train: bool) -> dict[str, tuple[int, int]]:
    """(FLOPs, bytes moved) per module row: FLOPs under 'torch'; bytes = input + output activations + parameters.
    Training: 3x both (backward reads the output gradient, input and weights and writes their gradients)."""
    factor = TRAIN_FLOPS_FACTOR if train else 1
    work = {}
    for r in report.rows:
        if not r.module:
            continue
        moved = numel(r.input) * report.batch * report.itemsize + r.activation_bytes + r.params * report.itemsize
        work[r.name] = (r.flops * factor, moved * factor)
    return work


# ---- results ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ceiling:
    """Measured once per run: a large matmul and a large device-to-device copy in the run's dtype."""

    matmul_flops: float  # FLOP/s
    copy_bandwidth: float  # bytes/s (read + write)
    matmul_n: int
    copy_bytes: int


@dataclass(frozen=True, slots=True)
class LayerTiming:
    name: str
    kind: str
    median_ms: float
    forward_ms: float
    backward_ms: float | None
    predicted_ms: float
    flops: int
    bytes: int
    bound: str


@dataclass(frozen=True, slots=True)
class MemoryResult:
    measured: int | None
    predicted: int
    terms: tuple[tuple[str, int], ...]
    extra: tuple[tuple[str, int], ...]  # measured-side terms: workspace, allocator rounding, reserved
    note: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    spec: str
    device: str
    device_name: str
    batch: int
    dtype: str
    train: bool
    optimizer: str | None
    channels_last: bool
    compiled: bool
    stats: Stats
    iterations_per_sample: int
    stop: str  # 'converged' or 'budget'
    budget_s: float
    timed_s: float
    flops: int
    flops_rule: str
    roofline: Roofline
    datasheet: str | None
    ceiling: Ceiling
    memory: MemoryResult
    layers: tuple[LayerTiming, ...]
    layers_note: str
    graph_stats: Stats | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def throughput(self) -> float:
        """Samples per second."""
        return self.batch / self.stats.median

    @property
    def achieved_flops(self) -> float:
        return self.flops / self.stats.median

    @property
    def fraction_of_peak(self) -> float:
        return self.achieved_flops / self.roofline.peak_flops


@dataclass(frozen=True, slots=True)
class Options:
    device: str = "cpu"
    batches: tuple[int, ...] = (1,)
    dtype: str = "float32"
    train: bool = False
    optimizer: str = "sgd"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    warmup: int = 5
    budget_s: float = 5.0
    force: bool = False
    target: float = TARGET_REL_IQR
    layers: bool = True
    input_shape: tuple[int, ...] | None = None


Progress = Callable[[int, str, float], None]  # (batch index, stage, fraction done of this batch)


# ---- device interfaces ------------------------------------------------------------------------------------------


class Timer(Protocol):
    def run(self, fn: Callable[[], Any], number: int, blocks: int) -> list[float]:
        """Run fn number*blocks times; return the mean seconds per iteration of each block."""


class MemoryProbe(Protocol):
    def free(self) -> int | None: ...

    def reset(self) -> None: ...

    def read(self) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        """The peak allocated bytes since reset (None where it cannot be measured) and measured-side terms."""


class CpuTimer:
    def run(self, fn: Callable[[], Any], number: int, blocks: int) -> list[float]:
        out = []
        for _ in range(blocks):
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            out.append((time.perf_counter_ns() - start) / number / 1e9)
        return out


class CudaTimer:
    """CUDA events around each block; one synchronize per call (a round), so blocks queue back to back."""

    def run(self, fn: Callable[[], Any], number: int, blocks: int) -> list[float]:
        import torch

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(blocks)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            for _ in range(number):
                fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 / number for start, end in events]


class CpuMemory:
    NOTE = ("CPU (inference): parameters, buffers and input, plus the peak of one forward's allocations as "
            "torch.profiler's memory events record them; 'workspace and transients' = measured - prediction. "
            "Training steps on CPU are not measured (their persistent state, gradients and optimizer moments, is not "
            "visible to the profiler)")

    def free(self) -> int | None:
        import os

        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None

    def reset(self) -> None:
        pass

    def read(self) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        return None, ()


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """The most bytes `fn` holds allocated at once on the CPU beyond what existed before it ran.

    torch.profiler with profile_memory=True attributes each allocation and free to the op that made it (its
    self_cpu_memory_usage) or to a bare '[memory]' event for frees outside any op; replaying these deltas in time
    order gives the running total and its peak. Temporaries an op frees before it returns are netted inside that
    op, so op-internal workspace is not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    deltas = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start if delta > 0 else event.time_range.end, delta))
    live = peak = 0
    for _, delta in sorted(deltas):
        live += delta
        peak = max(peak, live)
    return peak


class CudaMemory:
    NOTE = ("torch.cuda.max_memory_allocated over the timed iterations (after warm-up); 'workspace and "
            "transients' = requested peak - prediction, 'allocator rounding' = allocated peak - requested peak")

    def free(self) -> int | None:
        import torch

        return int(torch.cuda.mem_get_info()[0])

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def read(self) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        import torch

        torch.cuda.synchronize()
        stats = torch.cuda.memory_stats()
        allocated = int(stats.get("allocated_bytes.all.peak", torch.cuda.max_memory_allocated()))
        requested = int(stats.get("requested_bytes.all.peak", allocated))
        reserved = int(stats.get("reserved_bytes.all.peak", torch.cuda.max_memory_reserved()))
        return allocated, (("requested peak", requested), ("allocator rounding", allocated - requested),
                           ("reserved by the caching allocator (peak)", reserved))


# ---- the driver -------------------------------------------------------------------------------------------------


def run_profile(spec: Spec, options: Options, progress: Progress | None = None,
                timer: Timer | None = None, probe: MemoryProbe | None = None) -> list[BatchResult]:
    """Profile the spec's model once per batch size. Raises ProfileError/OutOfMemory for user-facing failures."""
    import torch

    _check_options(options)
    cuda = options.device == "cuda"
    timer = timer or (CudaTimer() if cuda else CpuTimer())
    probe = probe or (CudaMemory() if cuda else CpuMemory())
    reports = {b: analyze(spec, b, options.dtype, "torch", options.input_shape) for b in options.batches}

    free = probe.free()
    for b in options.batches:
        preflight(predicted_memory(reports[b], options.train, options.optimizer).total, free, options.force,
                  f"batch {b}")

    from archcalc.torch.build import build_module

    dtype = getattr(torch, options.dtype)
    device = torch.device(options.device)
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    device_name = torch.cuda.get_device_name(device) if cuda else _cpu_name()
    datasheet = lookup(device_name) if cuda else None
    old_benchmark = torch.backends.cudnn.benchmark
    if cuda:
        torch.backends.cudnn.benchmark = True  # autotuning happens during warm-up, which is not timed
    try:
        with _friendly_errors(options):
            ceiling = measure_ceiling(timer, device, dtype)
            roofline = _roofline(datasheet, options.dtype, ceiling, cuda)
            model = build_module(reports[options.batches[0]]).to(device=device, dtype=dtype)
            if options.channels_last:
                model = model.to(memory_format=fmt)  # type: ignore[call-overload]  # accepted at runtime
            if options.train:
                model.train()
            results = []
            for index, b in enumerate(options.batches):
                results.append(_profile_batch(index, reports[b], model, options, timer, probe, roofline, ceiling,
                                              datasheet, device_name, progress))
                if cuda:
                    torch.cuda.empty_cache()
            return results
    finally:
        torch.backends.cudnn.benchmark = old_benchmark


def _check_options(o: Options) -> None:
    import torch

    if o.device not in ("cpu", "cuda"):
        raise ProfileError(f"unknown device '{o.device}'; expected cpu or cuda")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise ProfileError(f"--device cuda: no CUDA device is available (torch {torch.__version__}"
                           f"{'' if torch.version.cuda else ', built without CUDA'})")
    if o.cuda_graphs and o.device != "cuda":
        raise ProfileError("--cuda-graphs needs --device cuda")
    if o.cuda_graphs and o.compile:
        raise ProfileError("--cuda-graphs and --compile together: use one (torch.compile's "
                           "mode='reduce-overhead' already replays CUDA graphs)")
    if o.optimizer not in OPTIMIZER_STATE:
        raise ProfileError(f"unknown optimizer '{o.optimizer}'; expected one of {', '.join(OPTIMIZER_STATE)}")
    if not o.batches or min(o.batches) < 1:
        raise ProfileError("--batch: give one or more positive batch sizes")
    if o.warmup < 1:
        raise ProfileError("--warmup must be at least 1")
    if o.budget_s <= 0:
        raise ProfileError("--budget must be positive")


class _friendly_errors:
    """CUDA out-of-memory and dtype kernels missing on this device become user-facing errors, not tracebacks."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            first = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
            raise OutOfMemory(f"the device ran out of memory ({first}); use a smaller --batch") from None
        if isinstance(exc, (RuntimeError, NotImplementedError)) and "not implemented for" in str(exc):
            raise ProfileError(f"--dtype {self.options.dtype} on {self.options.device}: {str(exc).splitlines()[0]}"
                               ) from None


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def measure_ceiling(timer: Timer, device: Any, dtype: Any) -> Ceiling:
    """A large square matmul (2 n^3 FLOPs) and a large copy (bytes read + written); the fastest of 7 runs each,
    since a ceiling is the best the device shows, not its typical speed."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    size = (1 << 28) if cuda else (1 << 26)  # 256 MiB / 64 MiB: well beyond the last-level cache
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    src = torch.empty(size // dtype.itemsize, device=device, dtype=dtype).fill_(1)
    dst = torch.empty_like(src)
    timer.run(lambda: torch.mm(a, b), 1, 2)  # warm-up
    mm = min(timer.run(lambda: torch.mm(a, b), 1, 7))
    timer.run(lambda: dst.copy_(src), 1, 2)
    cp = min(timer.run(lambda: dst.copy_(src), 1, 7))
    return Ceiling(2 * n**3 / mm, 2 * size / cp, n, size)


def _roofline(datasheet: DevicePeak | None, dtype: str, ceiling: Ceiling, cuda: bool) -> Roofline:
    if cuda and datasheet is not None:
        import torch

        tflops, unit = datasheet.tflops(dtype, tf32=torch.backends.cudnn.allow_tf32)
        if tflops is not None:
            return Roofline(tflops * 1e12, datasheet.bandwidth, f"{datasheet.name} datasheet ({unit} peak, "
                                                                 f"{datasheet.bandwidth_gbs:g} GB/s)")
    return Roofline(ceiling.matmul_flops, ceiling.copy_bandwidth,
                    f"measured ceiling ({ceiling.matmul_n}^2 matmul, {ceiling.copy_bytes >> 20} MiB copy)")


def _make_step(model: Any, x: Any, options: Options) -> Callable[[], Any]:
    import torch

    if not options.train:
        def infer() -> Any:
            with torch.no_grad():
                return model(x)

        return infer
    params = [p for p in model.parameters() if p.requires_grad]
    capturable = options.cuda_graphs
    if options.optimizer == "adam":
        opt: Any = torch.optim.Adam(params, lr=1e-3, capturable=capturable)
    else:
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        out.float().mean().backward()  # a cheap scalar loss; the step's cost is the model's
        opt.step()

    return train


def _capture_graph(step: Callable[[], Any]) -> Callable[[], Any]:
    """Capture one step into a CUDA graph (warm-up on a side stream first, as torch.cuda.graphs documents)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _measure(step: Callable[[], Any], timer: Timer, options: Options, report_progress: Callable[[str, float], None],
             after_warmup: Callable[[], None] | None = None) -> tuple[Stats, int, str, float]:
    """Warm up, pick the block size, then sample in rounds until the stopping rule says stop.

    Returns the statistics, iterations per sample, the stop reason and the total timed seconds."""
    warm = timer.run(step, 1, options.warmup)
    if after_warmup:
        after_warmup()
    estimate = sum(warm[len(warm) // 2:]) / len(warm[len(warm) // 2:])  # the later half: past one-off costs
    number = block_size(estimate)
    samples: list[float] = []
    start = time.perf_counter()
    elapsed = 0.0
    while True:
        sample_s = number * (percentile(samples, 50) if samples else estimate)
        samples += timer.run(step, number, round_blocks(sample_s, options.budget_s - elapsed))
        elapsed = time.perf_counter() - start
        reason = stop_reason(samples, elapsed, options.budget_s, options.target)
        rel = summarize(samples).rel_iqr
        report_progress(f"timing, IQR/median {rel:.1%}" if len(samples) > 1 else "timing",
                        min(0.9, 0.9 * elapsed / options.budget_s))
        if reason:
            return summarize(samples), number, reason, sum(samples) * number


def _profile_batch(index: int, report: Report, model: Any, options: Options, timer: Timer, probe: MemoryProbe,
                   roofline: Roofline, ceiling: Ceiling, datasheet: DevicePeak | None, device_name: str,
                   progress: Progress | None) -> BatchResult:
    import torch

    def say(stage: str, fraction: float) -> None:
        if progress:
            progress(index, stage, fraction)

    dtype = getattr(torch, options.dtype)
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    x = torch.randn(report.batch, *report.input, device=options.device, dtype=dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=fmt)
    runner = torch.compile(model) if options.compile else model
    step = _make_step(runner, x, options)
    notes = []

    say("warm-up", 0.0)
    stats, number, reason, timed = _measure(step, timer, options, say, after_warmup=probe.reset)
    measured, extra = probe.read()
    graph_stats = None
    if options.cuda_graphs:
        say("CUDA graph", 0.0)
        graph_stats, _, _, _ = _measure(_capture_graph(step), timer, options, say)
    if reason == "budget":
        why = (f"IQR/median {stats.rel_iqr:.1%} > {options.target:.0%}" if stats.rel_iqr > options.target
               else f"only {stats.n} samples (at least {MIN_SAMPLES} are needed)")
        notes.append(f"did not converge: {why} when the {options.budget_s:g} s budget ended")

    memory = predicted_memory(report, options.train, options.optimizer)
    if options.device == "cpu" and not options.train and not options.compile:
        import torch

        state = sum(t.untyped_storage().nbytes() for t in (*model.parameters(), *model.buffers(), x))
        with torch.no_grad():
            measured = state + cpu_peak_bytes(step)
        extra = (("requested peak", measured),)
    if measured is not None:
        requested = dict(extra)["requested peak"]
        extra = (("workspace and transients", requested - memory.total),) + tuple(
            t for t in extra if t[0] != "requested peak")
    mem = MemoryResult(measured, memory.total, memory.terms, extra,
                       CudaMemory.NOTE if options.device == "cuda" else CpuMemory.NOTE)

    layers: tuple[LayerTiming, ...] = ()
    if not options.layers:
        layers_note = "per-layer breakdown not requested"
    elif options.compile:
        layers_note = "no per-layer breakdown with --compile: the compiled graph fuses layers"
    else:
        say("per-layer profile", 0.95)
        layers = _layer_breakdown(model, step, report, options, roofline)
        layers_note = ("torch.profiler, median over {} iterations; {} time of each leaf module's ops{}; "
                       "predicted = max(FLOPs / peak, bytes / bandwidth) with {}").format(
            LAYER_ITERATIONS, "GPU kernel" if options.device == "cuda" else "CPU",
            " (backward: autograd ops linked by sequence number)" if options.train else "", roofline.source)
    say("done", 1.0)
    return BatchResult(report.name, options.device, device_name, report.batch, options.dtype, options.train,
                       options.optimizer if options.train else None, options.channels_last, options.compile, stats,
                       number, reason, options.budget_s, timed, step_flops(report, options.train),
                       FLOPS_RULE[options.train], roofline, datasheet.name if datasheet else None, ceiling, mem,
                       layers, layers_note, graph_stats, tuple(notes))


class _quiet_native_stderr:
    """Point file descriptor 2 at /dev/null for a moment (only around the profiler's start and stop)."""

    def __enter__(self) -> None:
        import os
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc: Any) -> None:
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)


def _layer_breakdown(model: Any, step: Callable[[], Any], report: Report, options: Options,
                     roofline: Roofline) -> tuple[LayerTiming, ...]:
    """Per-layer times from torch.profiler: a record_function range per leaf module (entered and left by forward
    hooks); in training, backward ops are attributed to the layer whose forward op has the same sequence number."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    from archcalc.torch.build import leaf_modules

    prefix = "archcalc::"
    leaves = leaf_modules(model, report)
    open_ranges: dict[str, Any] = {}
    handles = []
    for name, module in leaves.items():
        def pre(_m: Any, _i: Any, name: str = name) -> None:
            rf = record_function(prefix + name)
            rf.__enter__()
            open_ranges[name] = rf

        def post(_m: Any, _i: Any, _o: Any, name: str = name) -> None:
            open_ranges.pop(name).__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    cuda = options.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        step()  # one untimed pass with the hooks in place
        prof = profile(activities=activities)
        with _quiet_native_stderr():  # kineto prints 'profiler_start' lines straight to file descriptor 2
            prof.__enter__()
        try:
            for _ in range(LAYER_ITERATIONS):
                step()
            if cuda:
                torch.cuda.synchronize()
        finally:
            with _quiet_native_stderr():
                prof.__exit__(None, None, None)
    finally:
        for h in handles:
            h.remove()

    def duration(event: Any) -> float:  # microseconds
        return float(event.device_time_total if cuda else event.cpu_time_total)

    forward: dict[str, list[float]] = {n: [] for n in leaves}
    backward: dict[str, list[float]] = {n: [] for n in leaves}
    owner: dict[int, tuple[str, int]] = {}  # forward op sequence number -> (layer, occurrence)
    events = prof.events()
    for event in events:
        # The CPU-side range (on CUDA the profiler also reports a device-side copy of each range: skip it).
        if event.device_type == DeviceType.CPU and event.name.startswith(prefix) \
                and event.name[len(prefix):] in forward:
            name = event.name[len(prefix):]
            forward[name].append(duration(event))
            stack = list(event.cpu_children)
            while stack:
                child = stack.pop()
                if child.sequence_nr >= 0:
                    owner[child.sequence_nr] = (name, len(forward[name]) - 1)
                stack.extend(child.cpu_children)
    if options.train:
        per: dict[tuple[str, int], float] = {}
        for event in events:
            if event.device_type == DeviceType.CPU and event.sequence_nr in owner \
                    and event.name.startswith("autograd::engine::evaluate_function:"):
                key = owner[event.sequence_nr]
                per[key] = per.get(key, 0.0) + duration(event)
        for (name, _), us in per.items():
            backward[name].append(us)

    work = layer_work(report, options.train)
    kinds = {r.name: r.kind for r in report.rows}
    out = []
    for name in leaves:
        fwd = percentile(forward[name], 50) / 1e3 if forward[name] else 0.0
        bwd = None
        if options.train:
            runs = backward[name] + [0.0] * (len(forward[name]) - len(backward[name]))
            bwd = percentile(runs, 50) / 1e3 if runs else 0.0
        flops, moved = work[name]
        out.append(LayerTiming(name, kinds[name], fwd + (bwd or 0.0), fwd, bwd, roofline.seconds(flops, moved) * 1e3,
                               flops, moved, roofline.bound(flops, moved)))
    return tuple(out)
