"""The values `archcalc profile` produces (frozen, built once) and its user-facing errors. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from archcalc.core.errors import ArchcalcError
from archcalc.torch.profile.machine import Load
from archcalc.torch.profile.stats import Stats


class ProfileError(ArchcalcError):
    """A profiling request that cannot be carried out (no such device, unsupported option or dtype)."""


class OutOfMemory(ArchcalcError):
    """Predicted or actual memory exceeds what the device or the process may use."""


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A large matmul and a large device-to-device copy in the run's dtype, measured once per machine, torch
    version, dtype and thread count, then cached."""

    matmul_flops: float  # FLOP/s
    copy_bandwidth: float  # bytes/s (read + write)
    matmul_n: int
    copy_bytes: int
    cached: bool = False


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
class MemoryReading:
    """What a memory probe measured: the peak bytes allocated (None: not measured, `note` says why) and the
    measured-side terms (requested peak, allocator rounding, reserved)."""

    peak: int | None
    terms: tuple[tuple[str, int], ...]
    note: str


@dataclass(frozen=True, slots=True)
class MemoryResult:
    measured: int | None
    predicted: int
    terms: tuple[tuple[str, int], ...]  # the prediction's terms (their sum is `predicted`)
    extra: tuple[tuple[str, int], ...]  # measured-side terms: workspace and transients, allocator rounding, reserved
    note: str


@dataclass(frozen=True, slots=True)
class Phase:
    """One pass of a point's run and what it cost (wall seconds)."""

    name: str  # 'ceiling', 'warm-up', 'timing', 'memory', 'layers', 'CUDA graphs'
    seconds: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One measured point: a batch size at a thread count."""

    spec: str
    device: str
    device_name: str
    batch: int
    threads: int
    interop_threads: int
    dtype: str
    train: bool
    optimizer: str | None
    channels_last: bool
    compiled: bool
    stats: Stats
    iterations_per_sample: int
    warmup_iterations: int
    stop: str  # 'converged' or 'budget'
    budget_s: float  # of the whole run
    share_s: float  # this point's part of it
    timed_s: float
    flops: int
    flops_rule: str
    roofline: Roofline
    datasheet: str | None
    ceiling: Ceiling
    memory: MemoryResult
    layers: tuple[LayerTiming, ...]
    layers_note: str
    load_start: Load
    load_end: Load
    phases: tuple[Phase, ...]
    finished_s: float  # seconds from the budget's start to the end of this point (the last one's: the whole run)
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

    @property
    def loaded(self) -> bool:
        return self.load_start.busy(self.threads)
