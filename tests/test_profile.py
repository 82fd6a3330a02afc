"""archcalc profile: statistics, stopping rule, models, pre-flight, JSON contract and the CPU path end to end.

Expected values are written out by hand (the tiny spec's MACs, percentiles of short lists). GPU-only checks are
marked `gpu` and skipped without a CUDA device.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.devices import lookup
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import load_spec
from archcalc.torch.profile import driver as prof

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
FAST = ["--device", "cpu", "--warmup", "2", "--budget", "0.2"]


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
    result = invoke("profile", str(tiny), *FAST, "--batch", "1,2", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- statistics ---------------------------------------------------------------------------------------------------


def test_percentile_by_hand() -> None:
    # Linear interpolation between closest ranks: position = (n - 1) * q / 100.
    values = [50.0, 10.0, 40.0, 20.0, 30.0]  # unsorted on purpose
    assert prof.percentile(values, 50) == 30.0
    assert prof.percentile(values, 10) == pytest.approx(14.0)  # position 0.4 between 10 and 20
    assert prof.percentile(values, 90) == pytest.approx(46.0)  # position 3.6 between 40 and 50
    assert prof.percentile(values, 0) == 10.0
    assert prof.percentile(values, 100) == 50.0
    assert prof.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert prof.percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError):
        prof.percentile([], 50)
    with pytest.raises(ValueError):
        prof.percentile([1.0], 101)


def test_summarize_iqr_by_hand() -> None:
    s = prof.summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert (s.n, s.median, s.min, s.max) == (9, 5.0, 1.0, 9.0)
    assert (s.q1, s.q3, s.iqr) == (3.0, 7.0, 4.0)  # positions 2 and 6
    assert s.p10 == pytest.approx(1.8) and s.p90 == pytest.approx(8.2)  # positions 0.8 and 7.2
    assert s.rel_iqr == pytest.approx(0.8)


def test_stopping_rule() -> None:
    steady = [1.0] * 10
    assert prof.stop_reason(steady, elapsed_s=0.1, budget_s=5) == "converged"
    assert prof.stop_reason(steady[:9], elapsed_s=0.1, budget_s=5) is None  # too few samples
    assert prof.stop_reason(steady[:9], elapsed_s=5, budget_s=5) == "budget"
    # IQR/median: 10 samples 1.00 .. 1.09: q1 = 1.0225, q3 = 1.0675, median 1.045 -> 4.3 % > 2 %.
    spread = [1.0 + i / 100 for i in range(10)]
    assert prof.stop_reason(spread, elapsed_s=1, budget_s=5) is None
    assert prof.stop_reason(spread, elapsed_s=6, budget_s=5) == "budget"
    assert prof.stop_reason(spread, elapsed_s=1, budget_s=5, target=0.05) == "converged"
    # Converging in the last round counts as converged even when the budget is spent.
    assert prof.stop_reason(steady, elapsed_s=9, budget_s=5) == "converged"


def test_block_size() -> None:
    assert prof.block_size(0.5e-3) == 2
    assert prof.block_size(0.3e-3) == 4  # ceil(1 / 0.3)
    assert prof.block_size(2e-3) == 1
    assert prof.block_size(0.0) == 1000


def test_round_blocks() -> None:
    assert prof.round_blocks(1e-3, remaining_s=5) == 10  # 0.1 s round holds 100, capped at MIN_SAMPLES
    assert prof.round_blocks(0.03, remaining_s=5) == 3  # floor(0.1 / 0.03)
    assert prof.round_blocks(0.03, remaining_s=0.05) == 1  # only one fits in what is left
    assert prof.round_blocks(2.0, remaining_s=5) == 1  # always at least one
    assert prof.round_blocks(0.0, remaining_s=5) == 10


# ---- models -------------------------------------------------------------------------------------------------------


def test_step_flops_rule(tiny: Path) -> None:
    report = analyze(load_spec(tiny), batch=4)
    assert report.totals.macs == 4 * TINY_MACS
    assert prof.step_flops(report, train=False) == 2 * 4 * TINY_MACS
    assert prof.step_flops(report, train=True) == 3 * 2 * 4 * TINY_MACS
    with pytest.raises(ValueError):
        prof.step_flops(analyze(load_spec(tiny), convention="macs"), train=False)


@pytest.mark.parametrize("optimizer,state", [("sgd", 1), ("adam", 2)])
def test_predicted_training_memory(tiny: Path, optimizer: str, state: int) -> None:
    report = analyze(load_spec(tiny), batch=4)
    terms = dict(prof.predicted_memory(report, True, optimizer).terms)
    assert terms["parameters"] == TINY_PARAMS * 4
    assert terms["gradients"] == TINY_PARAMS * 4
    assert terms[f"optimizer state ({optimizer})"] == state * TINY_PARAMS * 4
    assert terms["saved activations"] == report.totals.saved_bytes
    assert prof.predicted_memory(report, True, optimizer).total == sum(terms.values())
    assert prof.predicted_memory(report, False).total == report.totals.peak_bytes


def test_preflight_with_fake_free_memory() -> None:
    prof.preflight(1000, 1000, force=False, where="batch 1")  # fits exactly
    prof.preflight(1000, None, force=False, where="batch 1")  # unknown free memory: no check
    prof.preflight(10**12, 1000, force=True, where="batch 1")  # forced
    with pytest.raises(prof.OutOfMemory, match="batch 64: predicted memory 1.00 MiB exceeds the 1000 B free"):
        prof.preflight(1 << 20, 1000, force=False, where="batch 64")
    assert issubclass(prof.OutOfMemory, ArchcalcError)  # the CLI turns it into exit 2


def test_roofline_by_hand() -> None:
    roof = prof.Roofline(peak_flops=100e12, bandwidth=1e12, source="test")
    assert roof.seconds(100 * 10**12, 10**9) == pytest.approx(1.0)  # compute bound: 1 s vs 1 ms
    assert roof.bound(100 * 10**12, 10**9) == "compute"
    assert roof.seconds(0, 2 * 10**12) == pytest.approx(2.0)
    assert roof.bound(0, 10) == "memory"


def test_layer_work(tiny: Path) -> None:
    report = analyze(load_spec(tiny), batch=2)
    work = prof.layer_work(report, train=False)
    assert list(work) == LEAVES
    # conv1: input 3x32x32, output 16x32x32, 448 parameters, float32, batch 2.
    assert work["conv1"] == (2 * 2 * 16 * 32 * 32 * 27, 2 * 4 * (3 * 32 * 32 + 16 * 32 * 32) + 4 * 448)
    assert prof.layer_work(report, train=True)["conv1"] == tuple(3 * v for v in work["conv1"])


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


# ---- the driver with a fake timer (exact numbers) -----------------------------------------------------------------


class FakeTimer:
    """Every iteration 'takes' the next value of a cycle, without running anything (the layer profile still runs)."""

    def __init__(self, *cycle: float) -> None:
        self.cycle = cycle
        self.i = 0

    def run(self, fn: Any, number: int, blocks: int) -> list[float]:
        out = []
        for _ in range(blocks):
            out.append(self.cycle[self.i % len(self.cycle)])
            self.i += 1
        return out


class FakeMemory(prof.CpuMemory):
    def __init__(self, free: int | None) -> None:
        self._free = free

    def free(self) -> int | None:
        return self._free


def test_driver_with_steady_fake_timer(tiny: Path) -> None:
    options = prof.Options(batches=(4,), warmup=1, budget_s=5, layers=False)
    (r,) = prof.run_profile(load_spec(tiny), options, timer=FakeTimer(2e-3))
    assert r.stop == "converged" and r.stats.median == 2e-3 and r.stats.iqr == 0
    assert r.throughput == pytest.approx(4 / 2e-3)
    assert r.flops == 2 * 4 * TINY_MACS
    assert r.achieved_flops == pytest.approx(r.flops / 2e-3)
    assert r.layers == () and r.notes == ()


def test_driver_reports_unconverged_budget(tiny: Path) -> None:
    options = prof.Options(batches=(1,), warmup=1, budget_s=1e-9, layers=False)
    (r,) = prof.run_profile(load_spec(tiny), options, timer=FakeTimer(1e-3, 3e-3))
    assert r.stop == "budget"
    assert r.notes and "did not converge" in r.notes[0]


def test_driver_preflight_refuses_and_force_overrides(tiny: Path) -> None:
    spec = load_spec(tiny)
    options = prof.Options(batches=(1, 64), warmup=1, layers=False)
    with pytest.raises(prof.OutOfMemory, match="batch 1: predicted memory"):
        prof.run_profile(spec, options, timer=FakeTimer(1e-3), probe=FakeMemory(1000))
    forced = prof.Options(batches=(1,), warmup=1, layers=False, force=True)
    assert prof.run_profile(spec, forced, timer=FakeTimer(1e-3), probe=FakeMemory(1000))


def test_cli_preflight_exit_2(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prof.CpuMemory, "free", lambda self: 1000)
    result = invoke("profile", str(tiny), *FAST)
    assert result.exit_code == 2, result.output
    assert "exceeds the 1000 B free" in result.output and "--force" in result.output
    assert "Traceback" not in result.output


# ---- real CPU runs --------------------------------------------------------------------------------------------------


def test_json_contract(two_batches: list[dict[str, Any]]) -> None:
    assert isinstance(two_batches, list) and [d["batch"] for d in two_batches] == [1, 2]
    for d in two_batches:
        assert d["device"] == "cpu" and d["dtype"] == "float32" and d["mode"] == "inference"
        assert set(d["latency_ms"]) >= {"median", "p10", "p90", "iqr"}
        assert all(isinstance(v, float) for k, v in d["latency_ms"].items() if k != "samples")
        lat = d["latency_ms"]
        assert lat["min"] <= lat["p10"] <= lat["median"] <= lat["p90"] <= lat["max"]
        assert isinstance(d["flops"], int) and d["flops"] == 2 * d["batch"] * TINY_MACS
        for key in ("throughput", "achieved_tflops", "peak_tflops", "fraction_of_peak"):
            assert isinstance(d[key], float) and d[key] > 0
        assert isinstance(d["converged"], bool)
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


def test_json_consistency(two_batches: list[dict[str, Any]]) -> None:
    for d in two_batches:
        median_s = d["latency_ms"]["median"] / 1e3
        assert d["throughput"] == pytest.approx(d["batch"] / median_s)
        assert d["achieved_tflops"] == pytest.approx(d["flops"] / median_s / 1e12)
        assert d["fraction_of_peak"] == pytest.approx(d["achieved_tflops"] / d["peak_tflops"])
        assert d["latency_ms"]["iqr"] == pytest.approx(d["latency_ms"]["q3"] - d["latency_ms"]["q1"])


@pytest.mark.parametrize("optimizer,state", [("sgd", 1), ("adam", 2)])
def test_train_on_cpu(tiny: Path, optimizer: str, state: int) -> None:
    options = prof.Options(batches=(2,), train=True, optimizer=optimizer, warmup=2, budget_s=0.2)
    (r,) = prof.run_profile(load_spec(tiny), options)
    assert r.train and r.optimizer == optimizer
    assert r.flops == 3 * 2 * 2 * TINY_MACS
    assert dict(r.memory.terms)[f"optimizer state ({optimizer})"] == state * TINY_PARAMS * 4
    assert [lt.name for lt in r.layers] == LEAVES
    for lt in r.layers:
        assert lt.backward_ms is not None and lt.median_ms == pytest.approx(lt.forward_ms + lt.backward_ms)
    # Every conv has a backward (at least its weight gradient), attributed through autograd sequence numbers.
    assert all(lt.backward_ms > 0 for lt in r.layers if lt.kind == "conv")  # type: ignore[operator]


def test_table_output(tiny: Path) -> None:
    result = invoke("profile", str(tiny), *FAST, "--channels-last", "--train")
    assert result.exit_code == 0, result.output
    for text in ("median ms", "per layer, batch 1", "conv3", "3x forward FLOPs", "measured ceiling"):
        assert text in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--batch", "1,x"], "--batch"),
    (["--batch", "0"], "--batch"),
    (["--cuda-graphs"], "--cuda-graphs needs --device cuda"),
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
    args = ["profile", str(tiny), "--device", "cuda", "--batch", "1,8", "--dtype", dtype, "--budget", "1",
            "--format", "json"] + (["--train", "--optimizer", "adam"] if train else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for d in json.loads(result.stdout):
        assert d["device"] == "cuda" and isinstance(d["peak_memory_bytes"], int)
        assert d["peak_memory_bytes"] > 0
        assert "allocator rounding" in d["measured_memory_terms"]
        assert [layer["name"] for layer in d["layers"]] == LEAVES
        assert sum(layer["median_ms"] for layer in d["layers"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("train", [False, True])
def test_gpu_cuda_graphs(tiny: Path, train: bool) -> None:
    args = ["profile", str(tiny), "--device", "cuda", "--batch", "8", "--cuda-graphs", "--budget", "1",
            "--format", "json"] + (["--train", "--optimizer", "adam"] if train else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (d,) = json.loads(result.stdout)
    assert d["cuda_graph_latency_ms"]["median"] > 0
    assert math.isclose(d["launch_overhead_ms"], d["latency_ms"]["median"] - d["cuda_graph_latency_ms"]["median"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_preflight_and_oom(tiny: Path) -> None:
    huge = "4000000"  # the input alone is 49 GB in float32; the activations several times that
    refused = invoke("profile", str(tiny), "--device", "cuda", "--batch", huge)
    assert refused.exit_code == 2 and "exceeds" in refused.output
    forced = invoke("profile", str(tiny), "--device", "cuda", "--batch", huge, "--force", "--no-layers")
    assert forced.exit_code == 2 and "ran out of memory" in forced.output
    assert "Traceback" not in forced.output
