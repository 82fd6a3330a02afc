"""Timers and memory probes, one CPU and one CUDA implementation of each behind one interface, and the device
ceiling (measured once per machine, then cached).

- `Timer.run(fn, number, blocks)`: the mean seconds per iteration of each of `blocks` blocks of `number` calls.
  CPU: time.perf_counter_ns around each block. CUDA: events recorded around each block and one synchronize per
  call, so the blocks of a round queue back to back (triton's do_bench does the same).
- `MemoryProbe`: `available()` (what the process may still allocate, for the pre-flight check) and
  `measure(step, ...)` (run one step and return its peak). CUDA: the caching allocator's peak statistics around
  one step (cheap: no profiler, so it runs by default). CPU: torch's profiler memory events of one step, replayed
  (a profiler pass: only when asked for).
torch's profiler is entered through `recording()`, which uses torch.autograd.profiler directly: torch.profiler's
wrapper imports torch._inductor on its first start (1.5 s here) for a CUDA-graph setting it only reads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from archcalc.torch.profile.machine import Available, available_memory
from archcalc.torch.profile.results import Ceiling, MemoryReading

# ---- timers -----------------------------------------------------------------------------------------------------


class Timer(Protocol):
    def run(self, fn: Callable[[], Any], number: int, blocks: int) -> list[float]:
        """Run fn number*blocks times; return the mean seconds per iteration of each block."""


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


# ---- torch's profiler, quietly ----------------------------------------------------------------------------------


class quiet_native_stderr:
    """Point file descriptor 2 at /dev/null for a moment (kineto prints 'profiler_start' lines straight to it)."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc: Any) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)


@contextmanager
def recording(cuda: bool = False, memory: bool = False) -> Iterator[Callable[[], Any]]:
    """Record torch's op events inside the block; yields a function that returns them (FunctionEvents) after."""
    from torch.autograd.profiler import profile

    # use_kineto: CUDA kernels through CUPTI, as torch.profiler records them (not the legacy CUDA-event fallback)
    prof = profile(use_cpu=True, use_device="cuda" if cuda else None, use_kineto=True, profile_memory=memory)
    with quiet_native_stderr():
        prof.__enter__()
    try:
        yield lambda: prof.function_events
    finally:
        with quiet_native_stderr():
            prof.__exit__(None, None, None)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """The most bytes `fn` holds allocated at once on the CPU beyond what existed before it ran.

    The profiler with profile_memory=True attributes each allocation and free to the op that made it (its
    self_cpu_memory_usage) or to a bare '[memory]' event for frees outside any op; replaying these deltas in time
    order gives the running total and its peak. Temporaries an op frees before it returns are netted inside that
    op, so op-internal workspace is not seen.
    """
    with recording(memory=True) as events:
        fn()
    deltas = []
    for event in events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start if delta > 0 else event.time_range.end, delta))
    live = peak = 0
    for _, delta in sorted(deltas):
        live += delta
        peak = max(peak, live)
    return peak


# ---- memory probes ----------------------------------------------------------------------------------------------


class MemoryProbe(Protocol):
    cheap: bool  # measuring needs no profiler pass: it runs unless --no-memory

    def available(self) -> Available | None:
        """Bytes the process may still allocate on the device (None: unknown, no pre-flight check)."""

    def measure(self, step: Callable[[], Any], state: Sequence[Any], train: bool, compiled: bool) -> MemoryReading:
        """Run `step` once and return its peak; `state` holds the tensors that exist before it (parameters,
        buffers, input)."""


class CpuMemory:
    cheap = False
    NOTE = ("CPU: parameters, buffers and input, plus the peak of one forward's allocations as torch's profiler "
            "memory events record them (one profiled forward)")

    def available(self) -> Available | None:
        return available_memory()

    def measure(self, step: Callable[[], Any], state: Sequence[Any], train: bool, compiled: bool) -> MemoryReading:
        if train:
            return MemoryReading(None, (), "CPU training steps are not measured: their persistent state (gradients, "
                                           "optimizer moments) is not visible to the profiler's memory events")
        if compiled:
            return MemoryReading(None, (), "not measured with --compile on the CPU")
        base = sum(t.untyped_storage().nbytes() for t in state)
        requested = base + cpu_peak_bytes(step)
        return MemoryReading(requested, (("requested peak", requested),), self.NOTE)


class CudaMemory:
    cheap = True
    NOTE = ("torch.cuda.max_memory_allocated over one step after warm-up; 'allocator rounding' = allocated peak - "
            "requested peak")

    def available(self) -> Available | None:
        import torch

        free, total = torch.cuda.mem_get_info()
        from archcalc.core.units import nbytes

        return Available(int(free), f"free on {torch.cuda.get_device_name()} of {nbytes(int(total))}")

    def measure(self, step: Callable[[], Any], state: Sequence[Any], train: bool, compiled: bool) -> MemoryReading:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        stats = torch.cuda.memory_stats()
        allocated = int(stats.get("allocated_bytes.all.peak", torch.cuda.max_memory_allocated()))
        requested = int(stats.get("requested_bytes.all.peak", allocated))
        reserved = int(stats.get("reserved_bytes.all.peak", torch.cuda.max_memory_reserved()))
        return MemoryReading(allocated, (("requested peak", requested), ("allocator rounding", allocated - requested),
                                         ("reserved by the caching allocator (peak)", reserved)), self.NOTE)


# ---- the device ceiling -----------------------------------------------------------------------------------------


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


def cache_dir() -> Path:
    """$ARCHCALC_CACHE_DIR, else $XDG_CACHE_HOME/archcalc, else ~/.cache/archcalc."""
    if os.environ.get("ARCHCALC_CACHE_DIR"):
        return Path(os.environ["ARCHCALC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "archcalc"


def ceiling_key(device: str, device_name: str, dtype: str, threads: int) -> str:
    import torch

    where = f"{device_name}, {threads} threads" if device == "cpu" else device_name
    return f"{device}: {where}, {dtype}, torch {torch.__version__}"


def cached_ceiling(key: str, measure: Callable[[], Ceiling], path: Path | None = None) -> Ceiling:
    """The ceiling stored under `key` in ceilings.json, else `measure()` stored there. A cache that cannot be
    read is measured over; one that cannot be written is skipped (the result is only slower next time)."""
    path = path or cache_dir() / "ceilings.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        entry = table[key]
        return Ceiling(float(entry["matmul_flops"]), float(entry["copy_bandwidth"]), int(entry["matmul_n"]),
                       int(entry["copy_bytes"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    fresh = measure()
    try:
        table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    table[key] = {"matmul_flops": fresh.matmul_flops, "copy_bandwidth": fresh.copy_bandwidth,
                  "matmul_n": fresh.matmul_n, "copy_bytes": fresh.copy_bytes}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return fresh
