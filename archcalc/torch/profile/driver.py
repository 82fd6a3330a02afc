"""Measure a spec's model on a device and set the measurements beside the analytic Report.

The pieces: `stats` (percentiles, the stopping rule, block sizing, the budget plan; pure), `work` (FLOP and memory
models, the pre-flight check; pure), `machine` (CPUs, load, memory limits), `probes` (CPU and CUDA timers and memory
probes behind one interface, the cached device ceiling), `layers` (the per-layer profiler pass). This module runs
them in order for each (threads, batch) point:

1. the ceiling (cached per machine, torch version, dtype and thread count);
2. warm-up by time (at least one iteration; cuDNN autotuning, compilation and allocator growth happen here);
3. timing, first and alone: blocks long enough for the timer, rounds, the stopping rule;
4. only then, and only when asked for or cheap, the memory pass and the per-layer pass, each with its own cost;
5. with --cuda-graphs, last, the replay of a captured step (timed in the other half of the timing window).

`--budget` bounds the whole run from the moment run_profile starts (torch is loaded by then): analysis, model build,
ceiling, warm-up, timing and passes. Each point gets an equal part of what is left, and the passes asked for are kept
back from its timing. torch is imported inside functions only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from archcalc.core.analyze import Report, analyze
from archcalc.core.devices import DevicePeak, lookup
from archcalc.core.settings import OPTIMIZERS
from archcalc.core.spec import Spec
from archcalc.torch.profile import machine
from archcalc.torch.profile.layers import LAYER_ITERATIONS, layer_breakdown, layers_note
from archcalc.torch.profile.probes import (
    CpuMemory,
    CpuTimer,
    CudaMemory,
    CudaTimer,
    MemoryProbe,
    Timer,
    cached_ceiling,
    ceiling_key,
    measure_ceiling,
)
from archcalc.torch.profile.results import (
    BatchResult,
    Ceiling,
    LayerTiming,
    MemoryResult,
    OutOfMemory,
    Phase,
    ProfileError,
    Roofline,
)
from archcalc.torch.profile.stats import (
    TARGET_REL_IQR,
    Stats,
    block_size,
    explain_budget_stop,
    iteration_estimate,
    percentile,
    plural,
    point_share,
    reserve_seconds,
    round_blocks,
    stop_reason,
    summarize,
    warmup_seconds,
)
from archcalc.torch.profile.work import FLOPS_RULE, predicted_memory, preflight, step_flops

AUTO = "auto"  # --threads auto: the physical cores not kept busy by other work
DEFAULT_THREADS = 1  # see README, "How threads are chosen"
GRAPH_CAPTURE_ITERATIONS = 4  # three warm-up steps on a side stream and the captured one


@dataclass(frozen=True, slots=True)
class Options:
    device: str = "cpu"
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | str, ...] = (DEFAULT_THREADS,)  # ints, or AUTO
    dtype: str = "float32"
    train: bool = False
    optimizer: str = "sgd"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    warmup_s: float | None = None  # None: a share of each point's time (stats.warmup_seconds)
    budget_s: float = 5.0  # the whole run, from started_at
    started_at: float | None = None  # time.perf_counter() the budget counts from; None: when run_profile starts
    force: bool = False
    target: float = TARGET_REL_IQR
    layers: bool = False
    memory: bool | None = None  # None: where the probe is cheap (CUDA)
    input_shape: tuple[int, ...] | None = None


Progress = Callable[[int, str, float], None]  # (point index, stage, fraction done of this point)


@dataclass(frozen=True, slots=True)
class _Session:
    """What every point of one run shares."""

    options: Options
    model: Any
    timer: Timer
    probe: MemoryProbe
    device_name: str
    datasheet: DevicePeak | None
    started: float
    deadline: float
    points: int
    progress: Progress | None

    @property
    def cuda(self) -> bool:
        return self.options.device == "cuda"


def run_profile(spec: Spec, options: Options, progress: Progress | None = None,
                timer: Timer | None = None, probe: MemoryProbe | None = None) -> list[BatchResult]:
    """Profile the spec's model at every (threads, batch) point, threads outermost. Raises ProfileError or
    OutOfMemory for user-facing failures. torch's thread count is restored afterwards."""
    import torch

    started = options.started_at if options.started_at is not None else time.perf_counter()
    _check_options(options)
    cuda = options.device == "cuda"
    timer = timer or (CudaTimer() if cuda else CpuTimer())
    probe = probe or (CudaMemory() if cuda else CpuMemory())
    # The training terms use saved bytes of a real step (the input batch needs no gradient) on this device's kernels.
    reports = {b: analyze(spec, batch=b, dtype=options.dtype, convention="torch", input_shape=options.input_shape,
                          device="cuda" if cuda else "cpu", optimizer=options.optimizer)
               for b in options.batches}
    predicted = {b: predicted_memory(reports[b], options.train, options.optimizer).total for b in options.batches}
    available = probe.available()
    for b in options.batches:
        preflight(predicted[b], available, options.force, f"batch {b}")
    threads = resolve_threads(options.threads)

    from archcalc.torch.build import build_module

    device_name = torch.cuda.get_device_name(torch.device("cuda")) if cuda else machine.cpu_name()
    old_threads, old_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if cuda:
        torch.backends.cudnn.benchmark = True  # autotuning happens during warm-up, which is not timed
    try:
        with _allocator_errors(options, predicted, available):
            model = build_module(reports[options.batches[0]]).to(device=options.device,
                                                                  dtype=getattr(torch, options.dtype))
            if options.channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if options.train:
                model.train()
            points = [(t, b) for t in threads for b in options.batches]
            session = _Session(options, model, timer, probe, device_name, lookup(device_name) if cuda else None,
                               started, started + options.budget_s, len(points), progress)
            results = []
            for index, (t, b) in enumerate(points):
                share = point_share(session.deadline - time.perf_counter(), len(points) - index)
                results.append(_profile_point(session, index, t, reports[b], share))
                if cuda:
                    torch.cuda.empty_cache()
            return results
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark


def resolve_threads(threads: tuple[int | str, ...]) -> tuple[int, ...]:
    """Thread counts as given, `auto` replaced by the physical cores not busy now."""
    out = []
    for t in threads:
        if t == AUTO:
            out.append(machine.free_cores(machine.load(), machine.physical_cores()))
        elif isinstance(t, int) and t >= 1:
            out.append(t)
        else:
            raise ProfileError(f"--threads: expected positive integers or 'auto', got '{t}'")
    return tuple(out)


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
    if o.optimizer not in OPTIMIZERS:
        raise ProfileError(f"unknown optimizer '{o.optimizer}'; expected one of {', '.join(OPTIMIZERS)}")
    if not o.batches or min(o.batches) < 1:
        raise ProfileError("--batch: give one or more positive batch sizes")
    if not o.threads:
        raise ProfileError("--threads: give one or more thread counts")
    if o.warmup_s is not None and o.warmup_s < 0:
        raise ProfileError("--warmup must not be negative")
    if o.budget_s <= 0:
        raise ProfileError("--budget must be positive")


_CPU_ALLOC = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")


class _allocator_errors:
    """An allocator failure on any device becomes OutOfMemory (exit 2) with the figures; a dtype kernel missing
    on this device becomes ProfileError. Anything else stays a traceback (a bug)."""

    def __init__(self, options: Options, predicted: dict[int, int], available: machine.Available | None) -> None:
        self.options, self.predicted, self.available = options, predicted, available

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import torch

        from archcalc.core.units import nbytes

        figures = ", ".join(f"batch {b} predicted {nbytes(p)}" for b, p in self.predicted.items())
        if self.available is not None:
            figures += f"; {nbytes(self.available.bytes)} available before the run ({self.available.source})"
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            first = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
            raise OutOfMemory(f"the device ran out of memory ({first}); {figures}; use a smaller --batch") from None
        cpu = _CPU_ALLOC.search(str(exc)) if isinstance(exc, RuntimeError) else None
        if cpu or isinstance(exc, MemoryError):
            tried = f"an allocation of {nbytes(int(cpu.group(1)))} failed" if cpu else "an allocation failed"
            raise OutOfMemory(f"the CPU ran out of memory: {tried}; {figures}; use a smaller --batch") from None
        if isinstance(exc, (RuntimeError, NotImplementedError)) and "not implemented for" in str(exc):
            raise ProfileError(f"--dtype {self.options.dtype} on {self.options.device}: {str(exc).splitlines()[0]}"
                               ) from None


def _roofline(datasheet: DevicePeak | None, dtype: str, ceiling: Ceiling, cuda: bool) -> Roofline:
    if cuda and datasheet is not None:
        import torch

        tflops, unit = datasheet.tflops(dtype, tf32=torch.backends.cudnn.allow_tf32)
        if tflops is not None:
            return Roofline(tflops * 1e12, datasheet.bandwidth, f"{datasheet.name} datasheet ({unit} peak, "
                                                                 f"{datasheet.bandwidth_gbs:g} GB/s)")
    return Roofline(ceiling.matmul_flops, ceiling.copy_bandwidth,
                    f"measured ceiling ({ceiling.matmul_n}^2 matmul, {ceiling.copy_bytes >> 20} MiB copy)")


def make_optimizer(params: Any, name: str, capturable: bool = False) -> Any:
    """The torch.optim optimizer the table (core.settings.OPTIMIZERS) names: the one training memory counts the
    state of. `capturable` (CUDA graphs) where the optimizer takes it (Adam, AdamW)."""
    import inspect

    import torch

    entry = OPTIMIZERS[name]
    cls = getattr(torch.optim, entry.torch_class)
    kwargs = dict(entry.torch_kwargs)
    if capturable and "capturable" in inspect.signature(cls).parameters:
        kwargs["capturable"] = True
    return cls(params, **kwargs)


def _make_step(model: Any, x: Any, options: Options) -> Callable[[], Any]:
    import torch

    if not options.train:
        def infer() -> Any:
            with torch.no_grad():
                return model(*x)

        return infer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, options.optimizer, capturable=options.cuda_graphs)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(*x)
        outs = out.values() if isinstance(out, dict) else (out,)  # several outputs: a loss over all of them
        sum(o.float().mean() for o in outs).backward()  # a cheap scalar loss; the step's cost is the model's
        opt.step()

    return train


def _capture_graph(step: Callable[[], Any]) -> Callable[[], Any]:
    """Capture one step into a CUDA graph (warm-up on a side stream first, as torch.cuda.graphs documents)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(GRAPH_CAPTURE_ITERATIONS - 1):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _elapsed(start: float, reported: float) -> float:
    """Seconds spent since start: the wall clock, or what the timer reported when that is more (a fake timer's
    iterations take no wall time)."""
    return max(time.perf_counter() - start, reported)


def _warm_up(step: Callable[[], Any], timer: Timer, seconds: float) -> list[float]:
    """Single iterations until `seconds` have passed (at least one); returns their durations."""
    start = time.perf_counter()
    durations: list[float] = []
    while True:
        durations += timer.run(step, 1, 1)
        if _elapsed(start, sum(durations)) >= seconds:
            return durations


@dataclass(frozen=True, slots=True)
class _Timing:
    stats: Stats
    number: int
    stop: str
    timed_s: float
    seconds: float  # wall time of the timing pass


def _sample(step: Callable[[], Any], timer: Timer, iteration_s: float, window_s: float, target: float,
            say: Callable[[str, float], None]) -> _Timing:
    """Blocks of `number` iterations (a block lasts >= MIN_BLOCK_S) in rounds until the stopping rule says stop;
    at least one block, even when the window is already spent."""
    number = block_size(iteration_s)
    samples: list[float] = []
    start = time.perf_counter()
    elapsed = 0.0
    while True:
        sample_s = number * (percentile(samples, 50) if samples else iteration_s)
        samples += timer.run(step, number, round_blocks(sample_s, window_s - elapsed))
        elapsed = _elapsed(start, sum(samples) * number)
        reason = stop_reason(samples, elapsed, window_s, target)
        rel = summarize(samples).rel_iqr
        say(f"timing, IQR/median {rel:.1%}" if rel is not None else f"timing, {len(samples)} samples",
            min(0.9, 0.9 * elapsed / window_s) if window_s > 0 else 0.9)
        if reason:
            return _Timing(summarize(samples), number, reason, sum(samples) * number, time.perf_counter() - start)


def _profile_point(s: _Session, index: int, threads: int, report: Report, share_s: float) -> BatchResult:
    """One point: ceiling, warm-up, timing (first and alone), then the passes asked for."""
    import torch

    o = s.options

    def say(stage: str, fraction: float) -> None:
        if s.progress:
            s.progress(index, stage, fraction)

    torch.set_num_threads(threads)
    begin = time.perf_counter()
    load_start = machine.load()
    phases: list[Phase] = []

    say("ceiling", 0.0)
    ceiling = _timed(phases, "ceiling", lambda: cached_ceiling(
        ceiling_key(o.device, s.device_name, o.dtype, threads),
        lambda: measure_ceiling(s.timer, torch.device(o.device), getattr(torch, o.dtype))),
        lambda c: "cached" if c.cached else "measured")
    roofline = _roofline(s.datasheet, o.dtype, ceiling, s.cuda)
    x, step = _step_for(s, report)

    say("warm-up", 0.0)
    warm = _timed(phases, "warm-up", lambda: _warm_up(step, s.timer, warmup_seconds(share_s, o.warmup_s)),
                  lambda w: plural(len(w), "iteration"))
    estimate = iteration_estimate(warm)
    measure_memory = s.probe.cheap if o.memory is None else o.memory
    leaves = sum(1 for r in report.rows if r.module)
    window = _timing_window(s, share_s - (time.perf_counter() - begin), estimate, measure_memory, leaves)

    say("timing", 0.0)
    timing = _sample(step, s.timer, estimate, window, o.target, say)
    phases.append(Phase("timing", timing.seconds,
                        f"{plural(timing.stats.n, 'sample')} x {plural(timing.number, 'iteration')}"))
    load_end = machine.load()
    notes = _timing_notes(s, timing, window, threads, load_start)

    memory = _memory_pass(s, step, x, report, measure_memory, phases, say)
    layers, note = _layers_pass(s, step, report, roofline, phases, say)
    graph_stats = None
    if o.cuda_graphs:  # last: a captured graph keeps a private memory pool, which the memory pass would count
        say("CUDA graph", 0.97)
        graph_stats = _timed(phases, "CUDA graphs", lambda: _graph_timing(step, s.timer, window, o.target, say),
                             lambda g: plural(g.n, "sample"))
    say("done", 1.0)
    return BatchResult(report.name, o.device, s.device_name, report.batch, threads, torch.get_num_interop_threads(),
                       o.dtype, o.train, o.optimizer if o.train else None, o.channels_last, o.compile, timing.stats,
                       timing.number, len(warm), timing.stop, o.budget_s, share_s, timing.timed_s,
                       step_flops(report, o.train), FLOPS_RULE[o.train], roofline,
                       s.datasheet.name if s.datasheet else None, ceiling, memory, layers, note, load_start,
                       load_end, tuple(phases), time.perf_counter() - s.started, graph_stats, tuple(notes))


T = TypeVar("T")


def _timed(phases: list[Phase], name: str, run: Callable[[], T], detail: Callable[[T], str]) -> T:
    """Run one pass and record its wall time as a Phase."""
    mark = time.perf_counter()
    out = run()
    phases.append(Phase(name, time.perf_counter() - mark, detail(out)))
    return out


def _step_for(s: _Session, report: Report) -> tuple[Any, Callable[[], Any]]:
    """The point's input and the step to time (compiled when asked; compilation happens in warm-up)."""
    import torch

    o = s.options
    shapes = [report.input] + [report.graph.tensors[t].shape for _, t in report.graph.inputs[1:]]
    xs = [torch.randn(report.batch, *shape, device=o.device, dtype=getattr(torch, o.dtype)) for shape in shapes]
    if o.channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]
    x = tuple(xs)  # one tensor per named input
    return x, _make_step(torch.compile(s.model) if o.compile else s.model, x, o)


def _timing_window(s: _Session, left_s: float, iteration_s: float, measure_memory: bool, leaves: int) -> float:
    """What is left of the point's share once the passes that follow timing are kept back (halved with CUDA
    graphs, whose replay is timed in the other half)."""
    o = s.options
    layers = o.layers and not o.compile
    profiled = (1 if measure_memory and not s.probe.cheap else 0) + (LAYER_ITERATIONS if layers else 0)
    plain = (1 if measure_memory and s.probe.cheap else 0) + (1 if layers else 0) + \
        (GRAPH_CAPTURE_ITERATIONS if o.cuda_graphs else 0)
    window = max(0.0, left_s - reserve_seconds(iteration_s, profiled, plain, leaves))
    return window / 2 if o.cuda_graphs else window


def _timing_notes(s: _Session, timing: _Timing, window: float, threads: int, load: machine.Load) -> list[str]:
    notes = []
    if timing.stop == "budget":
        notes.append(explain_budget_stop(timing.stats, s.options.target, window, timing.number * timing.stats.median,
                                         budget_s=s.options.budget_s, points=s.points, loaded=load.busy(threads),
                                         threads=threads))
    if load.busy(threads):
        notes.append(f"the machine was busy: load average {load.averages[0]:g} on {load.cpus} CPUs before timing "
                     f"{plural(threads, 'thread')}; other work competes for the CPUs, so times are inflated and noisy "
                     "(close it, or use fewer --threads)")
    return notes


def _graph_timing(step: Callable[[], Any], timer: Timer, window: float, target: float,
                  say: Callable[[str, float], None]) -> Stats:
    replay = _capture_graph(step)
    return _sample(replay, timer, iteration_estimate(timer.run(replay, 1, 2)), window, target, say).stats


def _layers_pass(s: _Session, step: Callable[[], Any], report: Report, roofline: Roofline, phases: list[Phase],
                 say: Callable[[str, float], None]) -> tuple[tuple[LayerTiming, ...], str]:
    if not s.options.layers:
        return (), "per-layer breakdown not requested (--layers: one pass of torch's profiler)"
    if s.options.compile:
        return (), "no per-layer breakdown with --compile: the compiled graph fuses layers"
    say("per-layer profile", 0.95)
    layers = _timed(phases, "layers", lambda: layer_breakdown(s.model, step, report, s.options.train, s.cuda,
                                                              roofline),
                    lambda _: f"{LAYER_ITERATIONS} profiled iterations")
    return layers, layers_note(s.cuda, s.options.train, roofline)


def _memory_pass(s: _Session, step: Callable[[], Any], x: Any, report: Report, wanted: bool, phases: list[Phase],
                 say: Callable[[str, float], None]) -> MemoryResult:
    """The prediction always; the measurement through the device's probe when wanted (one step)."""
    model = predicted_memory(report, s.options.train, s.options.optimizer)
    if not wanted:
        why = "not measured (--memory: one step under torch's profiler)" if not s.probe.cheap else \
            "not measured (--no-memory)"
        return MemoryResult(None, model.total, model.terms, (), why)
    say("memory", 0.92)
    state = (*s.model.parameters(), *s.model.buffers(), *x)
    reading = _timed(phases, "memory", lambda: s.probe.measure(step, state, s.options.train, s.options.compile),
                     lambda _: "one step")
    if reading.peak is None:
        return MemoryResult(None, model.total, model.terms, (), reading.note)
    requested = dict(reading.terms).get("requested peak", reading.peak)
    extra = (("workspace and transients", requested - model.total),) + tuple(
        t for t in reading.terms if t[0] != "requested peak")
    return MemoryResult(reading.peak, model.total, model.terms, extra, reading.note)
