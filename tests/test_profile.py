"""archcalc profile: statistics, stopping rule, budget plan, machine facts, models, pre-flight, probes, threads, the
JSON contract and the CPU path end to end.

Expected values are written out by hand (the tiny spec's MACs, percentiles of short lists, fake /proc files).
GPU-only checks are marked `gpu` and skipped without a CUDA device.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import exits_cleanly
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.devices import lookup
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import load_spec
from archcalc.render.profile import profile_tables, result_dict
from archcalc.torch.profile import driver as prof
from archcalc.torch.profile import machine, probes, stats, work
from archcalc.torch.profile.machine import Available, Load
from archcalc.torch.profile.results import MemoryReading, OutOfMemory, Roofline

TINY = """\
name: tiny
description: three convs at 3x32x32
input: [3, 32, 32]
layers:
  - conv: {out: 16, kernel: 3, padding: 1, name: conv1}
  - batchnorm: {name: bn1}
  - relu: {name: relu1}
  - conv: {out: 32, kernel: 3, stride: 2, padding: 1, name: conv2}
  - relu: {name: relu2}
  - conv: {out: 32, kernel: 3, padding: 1, name: conv3}
  - global_avgpool: {name: pool}
  - linear: {out: 10, name: fc}
"""
LEAVES = ["conv1", "bn1", "relu1", "conv2", "relu2", "conv3", "pool", "fc"]
# MACs per sample, by hand: out_channels * out_pixels * in_channels * 3 * 3 (and 32 * 10 for fc).
TINY_MACS = 16 * 32 * 32 * 3 * 9 + 32 * 16 * 16 * 16 * 9 + 32 * 16 * 16 * 32 * 9 + 32 * 10
# Parameters: conv weights + biases, BN weight + bias, fc weight + bias.
TINY_PARAMS = (16 * 27 + 16) + 2 * 16 + (32 * 144 + 32) + (32 * 288 + 32) + (32 * 10 + 10)

runner = CliRunner()
FAST = ["--device", "cpu", "--warmup", "0.02", "--budget", "0.3"]


def invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_batches(tiny: Path) -> list[dict[str, Any]]:
    """One real CPU run with two batch sizes, shared by the JSON tests."""
    result = invoke("profile", str(tiny), *FAST, "--batch", "1,2", "--memory", "--layers", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- statistics ---------------------------------------------------------------------------------------------------


def test_percentile_by_hand() -> None:
    # Linear interpolation between closest ranks: position = (n - 1) * q / 100.
    values = [50.0, 10.0, 40.0, 20.0, 30.0]  # unsorted on purpose
    assert stats.percentile(values, 50) == 30.0
    assert stats.percentile(values, 10) == pytest.approx(14.0)  # position 0.4 between 10 and 20
    assert stats.percentile(values, 90) == pytest.approx(46.0)  # position 3.6 between 40 and 50
    assert stats.percentile(values, 0) == 10.0
    assert stats.percentile(values, 100) == 50.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert stats.percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summarize_iqr_by_hand() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert s.has_spread
    assert (s.n, s.median, s.min, s.max) == (9, 5.0, 1.0, 9.0)
    assert (s.q1, s.q3, s.iqr) == (3.0, 7.0, 4.0)  # positions 2 and 6
    assert s.p10 == pytest.approx(1.8) and s.p90 == pytest.approx(8.2)  # positions 0.8 and 7.2
    assert s.rel_iqr == pytest.approx(0.8)


def test_stopping_rule() -> None:
    steady = [1.0] * 10
    assert stats.stop_reason(steady, elapsed_s=0.1, window_s=5) == "converged"
    assert stats.stop_reason(steady[:9], elapsed_s=0.1, window_s=5) is None  # too few samples
    assert stats.stop_reason(steady[:9], elapsed_s=5, window_s=5) == "budget"
    # IQR/median: 10 samples 1.00 .. 1.09: q1 = 1.0225, q3 = 1.0675, median 1.045 -> 4.3 % > 2 %.
    spread = [1.0 + i / 100 for i in range(10)]
    assert stats.stop_reason(spread, elapsed_s=1, window_s=5) is None
    assert stats.stop_reason(spread, elapsed_s=6, window_s=5) == "budget"
    assert stats.stop_reason(spread, elapsed_s=1, window_s=5, target=0.05) == "converged"
    # Converging in the last round counts as converged even when the budget is spent.
    assert stats.stop_reason(steady, elapsed_s=9, window_s=5) == "converged"


def test_block_size() -> None:
    assert stats.block_size(0.5e-3) == 2
    assert stats.block_size(0.3e-3) == 4  # ceil(1 / 0.3)
    assert stats.block_size(2e-3) == 1
    assert stats.block_size(0.0) == 1000


def test_round_blocks() -> None:
    assert stats.round_blocks(1e-3, remaining_s=5) == 10  # 0.1 s round holds 100, capped at MIN_SAMPLES
    assert stats.round_blocks(0.03, remaining_s=5) == 3  # floor(0.1 / 0.03)
    assert stats.round_blocks(0.03, remaining_s=0.05) == 1  # only one fits in what is left
    assert stats.round_blocks(2.0, remaining_s=5) == 1  # always at least one
    assert stats.round_blocks(0.0, remaining_s=5) == 10


def test_no_spread_from_a_handful_of_samples() -> None:
    few = stats.summarize([3.0, 1.0, 2.0, 4.0])
    assert (few.n, few.median, few.min, few.max) == (4, 2.5, 1.0, 4.0)
    assert not few.has_spread and few.p10 is None and few.iqr is None and few.rel_iqr is None
    assert stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0]).rel_iqr == pytest.approx(2.0 / 3.0)  # q1 2, q3 4, median 3
    assert stats.stop_reason([1.0] * 4, elapsed_s=9, window_s=5) == "budget"


def test_budget_plan() -> None:
    assert stats.warmup_seconds(3.0, None) == pytest.approx(0.3)  # a tenth of the point's share
    assert stats.warmup_seconds(30.0, None) == 1.0  # at most a second
    assert stats.warmup_seconds(3.0, 0.5) == 0.5 and stats.warmup_seconds(-1.0, None) == 0.0
    assert stats.iteration_estimate([10.0, 1.0, 3.0, 2.0]) == 2.0  # the first (one-off costs) is left out
    assert stats.iteration_estimate([5.0]) == 5.0
    # Five recorded iterations of 0.1 s over 70 leaf modules, and one plain one.
    assert stats.reserve_seconds(0.1, profiled_iterations=5, plain_iterations=1, leaves=70) == pytest.approx(
        5 * (0.1 + 70 * stats.PROFILED_LEAF_S) + 0.1)
    assert stats.point_share(6.0, 3) == 2.0 and stats.point_share(-1.0, 2) == 0.0
    # 2 points, each short of 10 samples of 0.5 s: 3 + 2 * (5 - 0) = 13 s.
    assert stats.budget_for(3.0, 0.0, 0.5, 2) == 13.0


def test_advice_when_timing_does_not_converge() -> None:
    one = stats.summarize([0.5])
    text = stats.explain_budget_stop(one, 0.02, 0.0, 0.5, budget_s=3, points=2, loaded=False, threads=1)
    assert "1 sample of 0.5 s" in text and "raise --budget to about 13 s" in text
    noisy = stats.summarize([1.0 + (i % 2) * 0.5 for i in range(20)])
    text = stats.explain_budget_stop(noisy, 0.02, 3.0, 1.0, budget_s=3, points=1, loaded=True, threads=4)
    assert "IQR/median" in text and "close other work" in text and "--threads 1" in text and "--budget" in text
    quiet = stats.explain_budget_stop(noisy, 0.02, 3.0, 1.0, budget_s=3, points=1, loaded=False, threads=1)
    assert "close other work" not in quiet and "--threads" not in quiet


# ---- models -------------------------------------------------------------------------------------------------------


def test_step_flops_rule(tiny: Path) -> None:
    report = analyze(load_spec(tiny), batch=4)
    assert report.totals.macs == 4 * TINY_MACS
    assert work.step_flops(report, train=False) == 2 * 4 * TINY_MACS
    # forward + grad input + grad weight of every conv/linear, but conv1 (the first layer) has no grad input
    conv1 = 16 * 32 * 32 * 3 * 9
    assert work.step_flops(report, train=True) == 3 * 2 * 4 * TINY_MACS - 2 * 4 * conv1
    with pytest.raises(ValueError):
        work.step_flops(analyze(load_spec(tiny), convention="macs"), train=False)


@pytest.mark.parametrize("optimizer,state", [("sgd", 0), ("momentum", 1), ("adam", 2), ("adamw", 2)])
def test_predicted_training_memory(tiny: Path, optimizer: str, state: int) -> None:
    report = analyze(load_spec(tiny), batch=4)
    terms = dict(work.predicted_memory(report, True, optimizer).terms)
    assert terms["weights"] == TINY_PARAMS * 4
    assert terms["gradients"] == TINY_PARAMS * 4
    assert terms[f"optimizer state ({optimizer})"] == state * TINY_PARAMS * 4
    # By hand: autograd keeps conv1's input (3x32x32), bn1's input (16x32x32) and its per-channel mean and 1/std
    # (2 x 16, once per batch), relu1's output (16x32x32, also conv2's input), relu2's output (32x16x16, also
    # conv3's input) and fc's input (32); the global average pool keeps nothing. float32, batch 4.
    saved = 4 * (4 * (3 * 32 * 32 + 16 * 32 * 32 + 16 * 32 * 32 + 32 * 16 * 16 + 32) + 2 * 16)
    assert terms["saved activations"] == saved
    buffers = 2 * 16 * 4 + 8  # bn1's running mean and var (float32) and num_batches_tracked (int64)
    assert work.predicted_memory(report, True, optimizer).total == (2 + state) * TINY_PARAMS * 4 + buffers + saved


def test_preflight_with_fake_available_memory() -> None:
    limit = Available(1000, "test limit")
    work.preflight(1000, limit, force=False, where="batch 1")  # fits exactly
    work.preflight(1000, None, force=False, where="batch 1")  # unknown available memory: no check
    work.preflight(10**12, limit, force=True, where="batch 1")  # forced
    with pytest.raises(OutOfMemory, match=r"batch 64: predicted memory 1.00 MiB exceeds the 1000 B available "
                                          r"\(test limit\)"):
        work.preflight(1 << 20, limit, force=False, where="batch 64")
    assert issubclass(OutOfMemory, ArchcalcError)  # the CLI turns it into exit 2


def test_roofline_by_hand() -> None:
    roof = Roofline(peak_flops=100e12, bandwidth=1e12, source="test")
    assert roof.seconds(100 * 10**12, 10**9) == pytest.approx(1.0)  # compute bound: 1 s vs 1 ms
    assert roof.bound(100 * 10**12, 10**9) == "compute"
    assert roof.seconds(0, 2 * 10**12) == pytest.approx(2.0)
    assert roof.bound(0, 10) == "memory"


def test_layer_work(tiny: Path) -> None:
    report = analyze(load_spec(tiny), batch=2)
    per_layer = work.layer_work(report, train=False)
    assert list(per_layer) == LEAVES
    # conv1: input 3x32x32, output 16x32x32, 448 parameters, float32, batch 2.
    assert per_layer["conv1"] == (2 * 2 * 16 * 32 * 32 * 27, 2 * 4 * (3 * 32 * 32 + 16 * 32 * 32) + 4 * 448)
    train = work.layer_work(report, train=True)
    # the first layer computes no input gradient: forward + weight gradient = 2x forward FLOPs; 3x the bytes
    assert train["conv1"] == (2 * per_layer["conv1"][0], 3 * per_layer["conv1"][1])
    assert train["conv2"] == (3 * per_layer["conv2"][0], 3 * per_layer["conv2"][1])


def test_device_table() -> None:
    v100 = lookup("Tesla V100-SXM2-16GB")
    assert v100 is not None and v100.name == "V100 SXM2"
    assert v100.tflops("float32") == (15.7, "float32") and v100.tflops("float16") == (125, "float16")
    assert v100.tflops("float32", tf32=True) == (15.7, "float32")  # no TF32 units on Volta
    assert v100.tflops("bfloat16")[0] is None
    assert lookup("NVIDIA H100 80GB HBM3").name == "H100 SXM"  # type: ignore[union-attr]
    assert lookup("NVIDIA H100 PCIe").name == "H100 PCIe"  # type: ignore[union-attr]
    assert lookup("NVIDIA A100-SXM4-80GB").name == "A100 SXM4 80GB"  # type: ignore[union-attr]
    assert lookup("NVIDIA A10").name == "A10"  # type: ignore[union-attr]
    assert lookup("NVIDIA L4").name == "L4"  # type: ignore[union-attr]
    assert lookup("NVIDIA L40S").name == "L40S"  # type: ignore[union-attr]
    assert lookup("NVIDIA GeForce RTX 4090").bandwidth == 1008e9  # type: ignore[union-attr]
    assert lookup("Tesla T4").tflops("float16") == (65, "float16")  # type: ignore[union-attr]
    assert lookup("NVIDIA H200").tflops("float32", tf32=True)[1] == "tf32"  # type: ignore[union-attr]
    assert lookup("Imaginary GPU 9000") is None


# ---- machine facts (fake /proc and /sys) -------------------------------------------------------------------------


def test_load_busy_and_free_cores() -> None:
    # The 1-minute average counts this process starting up (about 1); the rest is other work.
    assert not Load((1.0, 1.0, 1.0), 2).busy(1)
    assert not Load((1.0, 1.0, 1.0), 2).busy(2)
    assert Load((3.0, 1.0, 1.0), 2).busy(1)  # two other runnable threads on two CPUs
    assert machine.free_cores(Load((2.0, 0, 0), 4), physical=4) == 3
    assert machine.free_cores(Load((0.5, 0, 0), 4), physical=2) == 2
    assert machine.free_cores(Load((9.0, 0, 0), 4), physical=4) == 1  # always at least one


def test_physical_cores_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Four logical CPUs, two cores with two hyper-threads each.
    blocks = [f"processor\t: {p}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: {p // 2}\n"
              for p in range(4)]
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("\n".join(blocks), encoding="utf-8")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert machine.physical_cores(str(tmp_path)) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # both hyper-threads of core 0
    assert machine.physical_cores(str(tmp_path)) == 1
    assert machine.cpu_name(str(tmp_path)) == "Test CPU"


def _fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> str:
    for rel, text in {"proc/meminfo": "MemTotal: 33554432 kB\nMemAvailable: 8388608 kB\n",
                      "proc/self/cgroup": cgroup, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="ascii")
    return str(tmp_path)


def test_available_memory_takes_the_binding_limit(tmp_path: Path) -> None:
    gib = 1 << 30
    host = machine.available_memory(_fake_root(tmp_path / "host", "0::/\n", {}))
    assert host == Available(8 * gib, "host MemAvailable 8.00 GiB")
    # cgroup v2: a limit on a parent of our cgroup binds (2 GiB, 512 MiB in use); 'max' means none.
    v2 = machine.available_memory(_fake_root(tmp_path / "v2", "0::/job/step\n", {
        "sys/fs/cgroup/job/memory.max": f"{2 * gib}\n", "sys/fs/cgroup/job/memory.current": f"{gib // 2}\n",
        "sys/fs/cgroup/job/step/memory.max": "max\n"}))
    assert v2 is not None and v2.bytes == gib * 3 // 2
    assert v2.source == "cgroup memory.max 2.00 GiB, 512 MiB in use"
    # cgroup v1: the memory controller's limit; its 'no limit' (a huge number) loses to the host figure.
    v1 = machine.available_memory(_fake_root(tmp_path / "v1", "4:memory:/box\n", {
        "sys/fs/cgroup/memory/box/memory.limit_in_bytes": f"{4 * gib}\n",
        "sys/fs/cgroup/memory/box/memory.usage_in_bytes": f"{gib}\n"}))
    assert v1 is not None and v1.bytes == 3 * gib and "memory.limit_in_bytes 4.00 GiB" in v1.source
    unlimited = machine.available_memory(_fake_root(tmp_path / "v1u", "4:memory:/\n", {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{gib}\n"}))
    assert unlimited is not None and unlimited.bytes == 8 * gib


# A process whose address space is capped 1 GiB above what it has mapped once torch is loaded.
CAPPED = """\
import resource, sys
import torch
vm = [int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmSize')][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
from archcalc.cli import main
sys.argv = ['archcalc'] + sys.argv[1:]
main()
"""


def _capped(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CAPPED, *args], capture_output=True, text=True, timeout=300)


def test_preflight_honours_the_process_limit() -> None:
    # vgg16 at batch 256 predicts about 9.8 GiB; the host may have that free, the process may not.
    done = _capped("profile", "vgg16", "--device", "cpu", "--batch", "256")
    assert done.returncode == 2, done.stderr
    assert "batch 256: predicted memory" in done.stderr and "RLIMIT_AS" in done.stderr
    assert "Traceback" not in done.stderr


def test_cpu_allocator_failure_exits_2_with_the_figures(tiny: Path) -> None:
    # --force skips the pre-flight; the input alone (100000 x 3 x 32 x 32 float32, 1.14 GiB) cannot be allocated.
    done = _capped("profile", str(tiny), "--device", "cpu", "--batch", "100000", "--force", "--budget", "0.5")
    assert done.returncode == 2, done.stderr
    assert "the CPU ran out of memory: an allocation of 1.14 GiB failed" in done.stderr
    assert "batch 100000 predicted" in done.stderr and "RLIMIT_AS" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the ceiling cache ------------------------------------------------------------------------------------------


def test_ceiling_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "ceilings.json"
    calls = []

    def measure() -> prof.Ceiling:
        calls.append(1)
        return prof.Ceiling(1e11, 2e10, 1024, 1 << 26)

    first = probes.cached_ceiling("cpu: X, 1 threads, float32, torch 9", measure, path)
    again = probes.cached_ceiling("cpu: X, 1 threads, float32, torch 9", measure, path)
    other = probes.cached_ceiling("cpu: X, 2 threads, float32, torch 9", measure, path)
    assert len(calls) == 2 and not first.cached and again.cached and not other.cached
    assert (again.matmul_flops, again.copy_bandwidth, again.matmul_n) == (1e11, 2e10, 1024)
    assert set(json.loads(path.read_text(encoding="utf-8"))) == {"cpu: X, 1 threads, float32, torch 9",
                                                                  "cpu: X, 2 threads, float32, torch 9"}
    path.write_text("{not json", encoding="utf-8")  # a damaged cache is measured over
    assert not probes.cached_ceiling("cpu: X, 1 threads, float32, torch 9", measure, path).cached
    blocked = tmp_path / "file"
    blocked.write_text("", encoding="utf-8")  # its 'folder' is a file: the cache cannot be written, no error
    assert not probes.cached_ceiling("k", measure, blocked / "ceilings.json").cached


def test_ceiling_key_names_device_threads_dtype_and_torch() -> None:
    import torch

    key = probes.ceiling_key("cpu", "EPYC", "float32", 2)
    assert key == f"cpu: EPYC, 2 threads, float32, torch {torch.__version__}"
    assert "threads" not in probes.ceiling_key("cuda", "H100", "float16", 2)


# ---- the driver with a fake timer (exact numbers) -----------------------------------------------------------------


class FakeTimer:
    """Every iteration 'takes' the next value of a cycle, without running anything (the passes still run)."""

    def __init__(self, *cycle: float) -> None:
        self.cycle = cycle
        self.i = 0
        self.threads: list[int] = []

    def run(self, fn: Any, number: int, blocks: int) -> list[float]:
        import torch

        self.threads.append(torch.get_num_threads())
        out = []
        for _ in range(blocks):
            out.append(self.cycle[self.i % len(self.cycle)])
            self.i += 1
        return out


class FakeMemory(probes.CpuMemory):
    """The CPU probe with a fake limit and, optionally, a fake reading (counting its calls)."""

    def __init__(self, available: int | None = None, reading: MemoryReading | None = None) -> None:
        self._available = available
        self.reading = reading
        self.calls = 0

    def available(self) -> Available | None:
        return None if self._available is None else Available(self._available, "fake limit")

    def measure(self, step: Any, state: Any, train: bool, compiled: bool) -> MemoryReading:
        self.calls += 1
        return self.reading or super().measure(step, state, train, compiled)


def test_driver_with_steady_fake_timer(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "load", lambda: Load((0.0, 0.0, 0.0), 2))  # an idle machine: no note about load
    options = prof.Options(batches=(4,), warmup_s=0.01, budget_s=5)
    timer = FakeTimer(2e-3)
    (r,) = prof.run_profile(load_spec(tiny), options, timer=timer)
    assert r.stop == "converged" and r.stats.median == 2e-3 and r.stats.iqr == 0
    assert r.warmup_iterations == 5  # warm-up by time: 0.01 s of 2 ms iterations
    assert r.throughput == pytest.approx(4 / 2e-3)
    assert r.flops == 2 * 4 * TINY_MACS
    assert r.achieved_flops == pytest.approx(2 * 4 * TINY_MACS / 2e-3)
    assert r.layers == () and r.notes == () and r.memory.measured is None  # timing only, by default on CPU
    assert [p.name for p in r.phases] == ["ceiling", "warm-up", "timing"]
    assert r.threads == 1 and set(timer.threads) == {1}


def test_budget_bounds_slow_iterations(tiny: Path) -> None:
    # Iterations of 10 s (a CPU training step) under a 1 s budget: one warm-up iteration and one sample, not five
    # warm-up iterations; no spread is claimed, and the note says what budget would do.
    options = prof.Options(batches=(1,), budget_s=1.0)
    (r,) = prof.run_profile(load_spec(tiny), options, timer=FakeTimer(10.0))
    assert r.warmup_iterations == 1 and r.stats.n == 1 and r.timed_s == 10.0
    assert r.stop == "budget" and not r.stats.has_spread
    assert "1 sample of 10 s" in r.notes[0] and "raise --budget to about" in r.notes[0]
    d = result_dict(r)
    assert d["latency_ms"]["median"] == 10_000.0 and d["latency_ms"]["p10"] is None and d["rel_iqr"] is None
    lines = profile_tables([r])[0].lines
    header, row = (line.split("│" if line.startswith("│") else "┃")[1:-1] for line in (lines[2], lines[4]))
    cells = dict(zip((h.strip() for h in header), (c.strip() for c in row)))
    assert cells["p10-p90 ms"] == "-" and cells["IQR/median"] == "- (budget)" and cells["samples"] == "1"


def test_driver_reports_unconverged_budget(tiny: Path) -> None:
    options = prof.Options(batches=(1,), warmup_s=0.0, budget_s=0.5)
    (r,) = prof.run_profile(load_spec(tiny), options, timer=FakeTimer(1e-3, 3e-3))
    assert r.stop == "budget" and r.stats.n >= stats.MIN_SAMPLES
    assert r.notes and "did not converge: IQR/median" in r.notes[0]


def test_driver_preflight_refuses_and_force_overrides(tiny: Path) -> None:
    spec = load_spec(tiny)
    options = prof.Options(batches=(1, 64))
    with pytest.raises(OutOfMemory, match=r"batch 1: predicted memory .* \(fake limit\)"):
        prof.run_profile(spec, options, timer=FakeTimer(1e-3), probe=FakeMemory(1000))
    forced = prof.Options(batches=(1,), force=True)
    assert prof.run_profile(spec, forced, timer=FakeTimer(1e-3), probe=FakeMemory(1000))


def test_cli_preflight_exit_2(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes.CpuMemory, "available", lambda self: Available(1000, "test limit"))
    result = invoke("profile", str(tiny), *FAST)
    assert result.exit_code == 2, result.output
    assert "exceeds the 1000 B available (test limit)" in result.output and "--force" in result.output
    exits_cleanly(result, 2)


def test_cpu_memory_goes_through_the_probe(tiny: Path) -> None:
    reading = MemoryReading(12_345, (("requested peak", 12_000),), "fake note")
    probe = FakeMemory(reading=reading)
    options = prof.Options(batches=(1, 2), budget_s=1, memory=True)
    results = prof.run_profile(load_spec(tiny), options, timer=FakeTimer(1e-3), probe=probe)
    assert probe.calls == 2
    for r in results:
        assert r.memory.measured == 12_345 and r.memory.note == "fake note"
        assert dict(r.memory.extra)["workspace and transients"] == 12_000 - r.memory.predicted
        assert "memory" in [p.name for p in r.phases]


def test_timing_only_never_starts_the_profiler(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.autograd.profiler

    def refuse(self: Any) -> None:
        raise AssertionError("the profiler started")

    monkeypatch.setattr(torch.autograd.profiler.profile, "__enter__", refuse)
    (r,) = prof.run_profile(load_spec(tiny), prof.Options(budget_s=0.3))  # real timer, real probe
    assert r.memory.measured is None and r.layers == ()
    with pytest.raises(AssertionError, match="the profiler started"):  # the patch is on the path the passes use
        prof.run_profile(load_spec(tiny), prof.Options(budget_s=0.3, memory=True))


def test_thread_sweep_applies_and_reports_threads(tiny: Path) -> None:
    import torch

    before = torch.get_num_threads()
    timer = FakeTimer(1e-3)
    options = prof.Options(batches=(1, 2), threads=(1, 2), budget_s=1)
    results = prof.run_profile(load_spec(tiny), options, timer=timer)
    assert [(r.threads, r.batch) for r in results] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert set(timer.threads) == {1, 2}
    assert all(r.interop_threads == torch.get_num_interop_threads() for r in results)
    assert torch.get_num_threads() == before  # restored
    assert results[0].share_s <= 1.0 / 4  # an equal part of what is left (the fake timer takes no wall time)
    auto = prof.resolve_threads(("auto",))
    assert 1 <= auto[0] <= machine.cpus()


def test_busy_machine_is_reported(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "load", lambda: Load((6.0, 5.0, 4.0), 2))
    (r,) = prof.run_profile(load_spec(tiny), prof.Options(budget_s=0.5), timer=FakeTimer(1e-3, 2e-3))
    assert r.loaded and any("the machine was busy: load average 6 on 2 CPUs" in n for n in r.notes)
    assert result_dict(r)["machine"] == {"cpus": 2, "load_average": [6.0, 5.0, 4.0],
                                         "load_average_after": [6.0, 5.0, 4.0], "busy": True}


def test_budget_bounds_a_real_run(tiny: Path) -> None:
    # Everything run_profile does (analysis, build, ceiling, warm-up, timing, memory and layer passes) for two
    # batch sizes fits in the budget, give or take one sample and the passes' estimate.
    start = time.perf_counter()
    results = prof.run_profile(load_spec(tiny), prof.Options(batches=(1, 2), budget_s=1.5, memory=True,
                                                             layers=True))
    wall = time.perf_counter() - start
    assert wall < 1.5 + 1.0, [r.phases for r in results]
    assert all(r.memory.measured is not None and r.layers for r in results)


# ---- real CPU runs --------------------------------------------------------------------------------------------------


def test_json_contract(two_batches: list[dict[str, Any]]) -> None:
    assert isinstance(two_batches, list) and [d["batch"] for d in two_batches] == [1, 2]
    for d in two_batches:
        assert d["device"] == "cpu" and d["dtype"] == "float32" and d["mode"] == "inference"
        assert set(d["latency_ms"]) >= {"median", "p10", "p90", "iqr", "samples"}
        lat = d["latency_ms"]
        if lat["samples"] >= stats.MIN_SPREAD_SAMPLES:
            assert all(isinstance(v, float) for k, v in lat.items() if k != "samples")
            assert lat["min"] <= lat["p10"] <= lat["median"] <= lat["p90"] <= lat["max"]
        else:
            assert lat["p10"] is None and lat["iqr"] is None and d["rel_iqr"] is None
        assert isinstance(d["flops"], int) and d["flops"] == 2 * d["batch"] * TINY_MACS
        for key in ("throughput", "achieved_tflops", "peak_tflops", "fraction_of_peak"):
            assert isinstance(d[key], float) and d[key] > 0
        assert isinstance(d["converged"], bool)
        assert d["threads"] == 1 and isinstance(d["interop_threads"], int) and d["interop_threads"] >= 1
        assert d["machine"]["cpus"] >= 1 and len(d["machine"]["load_average"]) == 3
        assert set(d["phases_s"]) == {"ceiling", "warm-up", "timing", "memory", "layers"}
        assert d["latency_ms"]["samples"] >= 1 and d["warmup_iterations"] >= 1
        # Inference on CPU is measured with the profiler's memory events; the difference is its own term.
        assert isinstance(d["peak_memory_bytes"], int) and "memory events" in d["memory_note"]
        assert isinstance(d["predicted_peak_memory_bytes"], int) and d["predicted_peak_memory_bytes"] > 0
        assert d["measured_memory_terms"]["workspace and transients"] == \
            d["peak_memory_bytes"] - d["predicted_peak_memory_bytes"]
        assert d["cuda_graph_latency_ms"] is None and d["launch_overhead_ms"] is None
        assert [layer["name"] for layer in d["layers"]] == LEAVES
        for layer in d["layers"]:
            assert isinstance(layer["median_ms"], float) and layer["median_ms"] >= 0
            assert isinstance(layer["predicted_ms"], float) and layer["predicted_ms"] > 0
            assert layer["backward_ms"] is None


def test_json_figures_by_hand(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every iteration takes 2 ms (FakeTimer): the derived figures follow from that and the MACs counted by hand.
    monkeypatch.setattr(machine, "load", lambda: Load((0.0, 0.0, 0.0), 2))
    options = prof.Options(batches=(1, 2), warmup_s=0.01, budget_s=5)
    for r in prof.run_profile(load_spec(tiny), options, timer=FakeTimer(2e-3)):
        d = result_dict(r)
        flops = 2 * d["batch"] * TINY_MACS
        assert d["latency_ms"]["median"] == pytest.approx(2.0) and d["flops"] == flops
        assert d["throughput"] == pytest.approx(d["batch"] / 2e-3)
        assert d["achieved_tflops"] == pytest.approx(flops / 2e-3 / 1e12)
        assert d["fraction_of_peak"] == pytest.approx(flops / 2e-3 / (d["peak_tflops"] * 1e12))


@pytest.mark.parametrize("optimizer,state", [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_train_on_cpu(tiny: Path, optimizer: str, state: int) -> None:
    options = prof.Options(batches=(2,), train=True, optimizer=optimizer, budget_s=0.5, layers=True, memory=True)
    (r,) = prof.run_profile(load_spec(tiny), options)
    assert r.train and r.optimizer == optimizer
    assert r.flops == 3 * 2 * 2 * TINY_MACS - 2 * 2 * 16 * 32 * 32 * 3 * 9  # conv1 computes no input gradient
    assert dict(r.memory.terms)[f"optimizer state ({optimizer})"] == state * TINY_PARAMS * 4
    assert r.memory.measured is None and "not measured" in r.memory.note  # CPU training: said, not guessed
    assert [lt.name for lt in r.layers] == LEAVES
    for lt in r.layers:
        assert lt.backward_ms is not None and lt.median_ms == pytest.approx(lt.forward_ms + lt.backward_ms)
    # Every conv has a backward (at least its weight gradient), attributed through autograd sequence numbers.
    assert all(lt.backward_ms > 0 for lt in r.layers if lt.kind == "conv")  # type: ignore[operator]


def test_table_output(tiny: Path) -> None:
    result = invoke("profile", str(tiny), *FAST, "--channels-last", "--train", "--layers")
    assert result.exit_code == 0, result.output
    for text in ("median ms", "threads", "per layer, batch 1, 1 thread", "conv3", "as FlopCounterMode",
                 "measured ceiling", "FLOPS", "1 intra-op (torch.set_num_threads)", "load average", "cost: "):
        assert text in result.stdout


def test_table_fits_80_columns(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("profile", str(tiny), *FAST, "--train", "--layers", "--memory")
    assert result.exit_code == 0, result.output
    tables = [line for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert tables and all(len(line) <= 80 for line in tables)
    assert "…" not in result.stdout  # numbers are never cut
    assert "left out to fit 80 columns" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--batch", "1,x"], "--batch"),
    (["--batch", "0"], "--batch"),
    (["--cuda-graphs"], "--cuda-graphs needs --device cuda"),
    (["--threads", "0"], "--threads"),
    (["--threads", "1,x"], "--threads"),
    (["--threads", "\u0663"], "--threads"),  # an Arabic-Indic digit three
])
def test_bad_options_exit_2(tiny: Path, args: list[str], message: str) -> None:
    result = invoke("profile", str(tiny), *FAST, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cuda_requested_without_cuda(tiny: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = invoke("profile", str(tiny), "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA device is available" in result.output


def test_cli_module_stays_torch_free() -> None:
    code = "import sys, archcalc.cli.app, archcalc.cli.profile; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- GPU -----------------------------------------------------------------------------------------------------------

try:
    import torch as _torch

    HAS_CUDA = _torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("train", [False, True])
def test_gpu_run(tiny: Path, dtype: str, train: bool) -> None:
    args = ["profile", str(tiny), "--device", "cuda", "--batch", "1,8", "--dtype", dtype, "--budget", "2",
            "--layers", "--format", "json"] + (["--train", "--optimizer", "adam"] if train else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    conv1 = 16 * 32 * 32 * 3 * 9  # the first layer computes no input gradient
    for d in json.loads(result.stdout):
        b = d["batch"]
        assert d["device"] == "cuda" and d["flops"] == (3 * 2 * b * TINY_MACS - 2 * b * conv1 if train
                                                       else 2 * b * TINY_MACS)
        # Measured (the allocator's peak, on by default on CUDA) against predicted: the model leaves out cuDNN's
        # workspace and the allocator's rounding to 512-byte blocks (its own term), so the measurement may exceed
        # the prediction by those, bounded here by 64 MiB; it may not fall short by more than 10%.
        measured, predicted = d["peak_memory_bytes"], d["predicted_peak_memory_bytes"]
        assert 0.9 * predicted <= measured <= predicted + (64 << 20), (measured, predicted)
        assert "allocator rounding" in d["measured_memory_terms"]
        assert [layer["name"] for layer in d["layers"]] == LEAVES
        # No layer runs faster than its roofline time (FLOPs at the peak rate, bytes at the peak bandwidth) allows;
        # half of it leaves room for a peak table that is conservative.
        for layer in d["layers"]:
            assert layer["median_ms"] >= 0.5 * layer["predicted_ms"], layer


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("train", [False, True])
def test_gpu_measured_memory_agrees_with_prediction(train: bool) -> None:
    # ResNet-18 at batch 32: the prediction (liveness peak; or parameters + gradients + optimizer state + saved
    # activations) against the allocator's requested peak. cuDNN workspace and transient backward tensors are not
    # modelled, so the measurement may exceed the prediction by a bounded amount, never fall short by much.
    args = ["profile", "torchvision/resnet18", "--device", "cuda", "--batch", "32", "--budget", "3", "--format",
            "json"] + (["--train", "--optimizer", "adam"] if train else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (d,) = json.loads(result.stdout)
    measured, predicted = d["peak_memory_bytes"], d["predicted_peak_memory_bytes"]
    # cuDNN's workspace (autotuned algorithms may take a few hundred MiB) is the unmodelled part.
    assert 0.9 * predicted <= measured <= 1.25 * predicted + (256 << 20), (measured, predicted)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_median_agrees_with_torch_benchmark() -> None:
    # The same model and batch timed by torch.utils.benchmark.Timer.blocked_autorange (an independent timer).
    import torch
    from torch.utils.benchmark import Timer

    from archcalc.torch.build import build_module

    spec = load_spec(Path(__file__).resolve().parent.parent / "specs" / "torchvision" / "resnet18.yaml")
    (r,) = prof.run_profile(spec, prof.Options(device="cuda", batches=(32,), budget_s=3))
    model = build_module(analyze(spec, batch=32)).cuda().eval()
    x = torch.randn(32, 3, 224, 224, device="cuda")
    saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True  # as profile times it
    try:
        with torch.no_grad():
            timer = Timer("model(x)", globals={"model": model, "x": x})  # synchronizes around CUDA work
            reference = timer.blocked_autorange(min_run_time=2).median
    finally:
        torch.backends.cudnn.benchmark = saved
    assert abs(r.stats.median - reference) / reference < 0.10, (r.stats.median, reference)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("train", [False, True])
def test_gpu_cuda_graphs(tiny: Path, train: bool) -> None:
    args = ["profile", str(tiny), "--device", "cuda", "--batch", "8", "--cuda-graphs", "--budget", "1",
            "--format", "json"] + (["--train", "--optimizer", "adam"] if train else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (d,) = json.loads(result.stdout)
    # Replaying a graph removes the launches, never adds work: at most the eager time (10% for timing noise).
    graph, eager = d["cuda_graph_latency_ms"]["median"], d["latency_ms"]["median"]
    assert 0 < graph <= 1.1 * eager, (graph, eager)
    assert math.isclose(d["launch_overhead_ms"], eager - graph)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_preflight_and_oom(tiny: Path) -> None:
    huge = "4000000"  # the input alone is 49 GB in float32; the activations several times that
    refused = invoke("profile", str(tiny), "--device", "cuda", "--batch", huge)
    assert refused.exit_code == 2 and "exceeds" in refused.output
    forced = invoke("profile", str(tiny), "--device", "cuda", "--batch", huge, "--force")
    assert "ran out of memory" in forced.output and "predicted" in forced.output
    exits_cleanly(forced, 2)
