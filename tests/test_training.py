"""Training FLOPs (against FlopCounterMode on plain torch.nn models written here) and training memory (against
hand arithmetic); `--fit` against independent `calc` runs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec
from archcalc.core.training import largest_batch, training_flops, training_memory, training_report

runner = CliRunner()

SMALL = """
name: small
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1}
  - batchnorm
  - relu
  - flatten
  - linear: {out: 10}
"""


def _step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode around one training step: train-mode forward, backward of the sum."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


def test_training_memory_terms_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(SMALL)), batch=2)
    params = (3 * 4 * 9 + 4) + 2 * 4 + (4 * 8 * 8 * 10 + 10)  # conv, batch norm, linear = 2690
    m = training_memory(report, "adam")
    assert (m.weights, m.weight_copies, m.gradients, m.optimizer_state) == (4 * params, 0, 4 * params, 8 * params)
    assert m.buffers == 2 * 4 * 4 + 8  # running mean and var (float32), num_batches_tracked (int64)
    # autograd keeps: the conv's input, batch norm's input and its per-channel mean and inverse std, the ReLU's
    # output (the linear layer's input is a view of it): float32, batch 2
    assert m.saved_activations == report.totals.saved_bytes == 4 * (2 * 3 * 64 + 2 * 4 * 64 + 4 + 4 + 2 * 4 * 64)
    saved = 4 * (2 * 3 * 64 + 2 * 4 * 64 + 4 + 4 + 2 * 4 * 64)
    assert [value for _, value, _ in m.terms()] == [4 * params, 0, 4 * params, 8 * params, 2 * 4 * 4 + 8, saved]
    assert m.total == 16 * 2690 + 40 + saved == 48_744
    assert training_memory(report, "sgd").optimizer_state == 0
    assert training_memory(report, "momentum").optimizer_state == 4 * params
    assert training_memory(report, "adamw").optimizer_state == 8 * params


def test_training_memory_with_bf16_autocast(write_spec) -> None:  # type: ignore[no-untyped-def]
    spec = load_spec(write_spec(SMALL))
    m = training_memory(training_report(spec, batch=2, amp="bf16"), "adam", "bf16")
    params = 2690
    assert (m.weights, m.gradients, m.optimizer_state) == (4 * params, 4 * params, 8 * params)  # float32 masters
    assert m.weight_copies == 2 * ((3 * 4 * 9 + 4) + (4 * 8 * 8 * 10 + 10))  # bf16 copies of conv and linear only
    assert m.buffers == 2 * 4 * 4 + 8  # float32
    # bfloat16 activations; batch norm's per-channel statistics stay float32
    assert m.saved_activations == 2 * (2 * 3 * 64 + 2 * 4 * 64 + 2 * 4 * 64) + 4 * (4 + 4)
    with pytest.raises(ValueError):
        training_memory(analyze(spec), "adam", "bf16")  # a float32 report cannot give bf16 activations


SEQUENTIAL = """
name: seq
input: [3, 12, 12]
layers:
  - conv: {out: 8, kernel: 3}
  - relu
  - conv: {out: 8, kernel: 3, groups: 4, bias: false}
  - conv_transpose: {out: 6, kernel: 2, stride: 2, groups: 2}
  - flatten
  - linear: {out: 5}
"""


def test_training_flops_per_layer_against_flop_counter(write_spec) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4, bias=False),
                          nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.Flatten(), nn.Linear(6 * 16 * 16, 5))
    x = torch.randn(2, 3, 12, 12)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counts = counter.get_flop_counts()
    measured = [sum(counts.get(f"Sequential.{i}", {}).values()) for i in (0, 2, 3, 5)]
    step = training_flops(analyze(load_spec(write_spec(SEQUENTIAL)), batch=2))
    assert [f.total for f in step.layers] == measured
    assert step.total == counter.get_total_flops()
    first = step.layers[0]
    assert first.grad_input == 0 and first.grad_weight == first.forward  # the first layer: no input gradient
    grouped = step.layers[1]
    assert grouped.grad_weight == 4 * grouped.forward  # FlopCounterMode's grouped weight gradient: groups x


def test_no_input_gradient_before_the_first_trainable_layer(write_spec) -> None:  # type: ignore[no-untyped-def]
    spec = """
name: frozen
input: [3, 10, 10]
layers:
  - conv: {out: 4, kernel: 3, trainable: false}
  - relu
  - parallel:
      - [conv: {out: 4, kernel: 1}]
      - [maxpool: {kernel: 3, stride: 1, padding: 1}, conv: {out: 2, kernel: 1}]
  - conv: {out: 3, kernel: 3}
"""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3).requires_grad_(False)
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(4, 2, 1))
            self.head = nn.Conv2d(6, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.stem(x))
            return self.head(torch.cat([self.a(y), self.b(y)], 1))

    step = training_flops(analyze(load_spec(write_spec(spec)), batch=3))
    assert step.total == _step_flops(Net(), torch.randn(3, 3, 10, 10))
    frozen, a, b, head = step.layers
    assert frozen.grad_input == frozen.grad_weight == 0
    assert a.grad_input == b.grad_input == 0 and a.grad_weight and b.grad_weight
    assert head.grad_input == head.forward


def test_largest_batch() -> None:
    # memory 107 + 7 (b - 1) = 100 + 7 b: batch 37 needs 359 bytes, batch 38 366
    assert largest_batch(107, 7, 100 + 7 * 37) == 37
    assert largest_batch(107, 7, 100 + 7 * 37 + 6) == 37
    assert largest_batch(107, 7, 100 + 7 * 38) == 38
    assert largest_batch(107, 7, 107) == 1
    assert largest_batch(107, 7, 106) == 0
    assert largest_batch(5, 0, 10, most=1000) == 1000  # memory that does not grow: the cap


@pytest.mark.parametrize("fit_for", ["training", "inference"])
def test_fit_gives_a_batch_that_fits_and_whose_next_does_not(fit_for: str) -> None:
    result = runner.invoke(app, ["calc", "resnet18", "--fit", "3GiB", "--fit-for", fit_for, "--optimizer", "adam",
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    batch = data["fit"]["batch"]
    assert data["batch"] == batch > 1

    def memory(b: int) -> int:
        out = runner.invoke(app, ["calc", "resnet18", "-b", str(b), "--optimizer", "adam", "-f", "json"])
        d = json.loads(out.stdout)
        if fit_for == "inference":
            return d["totals"]["peak_inference_bytes"]  # type: ignore[no-any-return]
        return max(d["training_peak"]["later_step"]["bytes"], d["training_peak"]["first_step"]["bytes"])

    assert memory(batch) <= 3 * 2**30 < memory(batch + 1)


def test_fit_that_nothing_meets_exits_1() -> None:
    result = runner.invoke(app, ["calc", "resnet18", "--fit", "1MiB"])
    assert result.exit_code == 1
    assert "no batch fits" in result.output


def test_amp_needs_float32_master_weights() -> None:
    result = runner.invoke(app, ["calc", "resnet18", "--amp", "bf16", "--dtype", "float16"])
    assert result.exit_code == 2
    assert "float32" in result.output


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_training_memory_terms_against_a_real_step(optimizer: str, write_spec) -> None:  # type: ignore[no-untyped-def]
    """After one optimizer step of the same network in plain torch.nn: bytes of the parameters, their .grad and
    the optimizer's state tensors (Adam's scalar `step` counters excluded, as documented), and of the buffers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "momentum": lambda p: torch.optim.SGD(p, 0.1, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p), "adamw": lambda p: torch.optim.AdamW(p)}[optimizer]
    opt = make(model.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()

    def nbytes(tensors) -> int:  # type: ignore[no-untyped-def]
        return sum(t.numel() * t.element_size() for t in tensors)

    state = [t for s in opt.state.values() for k, t in s.items() if k != "step" and torch.is_tensor(t)]
    m = training_memory(analyze(load_spec(write_spec(SMALL)), batch=2), optimizer)
    assert m.weights == nbytes(model.parameters())
    assert m.gradients == nbytes(p.grad for p in model.parameters())
    assert m.optimizer_state == nbytes(state)
    assert m.buffers == nbytes(model.buffers())


def _calc_json(*args: str) -> dict:
    result = runner.invoke(app, ["calc", "resnet18", "-f", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fit_follows_the_device() -> None:
    # float16 batch norm saves float32 mean and inverse std on CUDA, float16 ones on the CPU: CUDA needs 2 bytes
    # more per statistic, 2 statistics per channel (4,800 channels of batch norm in ResNet-18), whatever the batch.
    def memory(b: int, device: str) -> int:
        return _calc_json("-b", str(b), "--dtype", "float16", "--device", device)["training_memory"]["total_bytes"]

    assert memory(9, "cuda") - memory(9, "cpu") == 2 * 2 * 4800

    def peak(b: int, device: str) -> int:  # what --fit sizes: the step's exact peak, where some are already freed
        step = _calc_json("-b", str(b), "--dtype", "float16", "--device", device)["training_peak"]
        return max(step["later_step"]["bytes"], step["first_step"]["bytes"])  # type: ignore[no-any-return]

    assert 0 < peak(9, "cuda") - peak(9, "cpu") < 2 * 2 * 4800
    limit = peak(9, "cuda") - 1  # batch 9 fits on the CPU only
    fits = {d: _calc_json("--dtype", "float16", "--device", d, "--fit", str(limit))["fit"]["batch"]
            for d in ("cuda", "cpu")}
    assert fits == {"cuda": 8, "cpu": 9}


def test_amp_training_memory_uses_the_devices_saved_bytes() -> None:
    # Under fp16 autocast the saved activations are those of a float16 forward on the chosen device's kernels.
    for device in ("cpu", "cuda"):
        amp = _calc_json("--amp", "fp16", "--device", device)["training_memory"]
        half = _calc_json("--dtype", "float16", "--device", device)["totals"]
        assert amp["terms"]["saved_activations"] == half["saved_activation_bytes"], device


def test_fit_benchmark_agrees_with_a_search() -> None:
    """benchmarks/bench_fit.py solves the memory line and searches over full analyses (its peer) on four specs
    and settings, and exits non-zero when the batches or bytes differ."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fit.py"
    proc = subprocess.run([sys.executable, str(script), "--repeat", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torchvision/resnet50" in proc.stdout and "x" in proc.stdout


# One layer after a trainable 1x1 conv (so its input needs a gradient), as archcalc and as plain torch.nn.
PER_LAYER = [
    ("conv: {out: 32, kernel: 3, padding: 1, groups: 32}", [32, 10, 10],
     lambda: nn.Conv2d(32, 32, 3, padding=1, groups=32)),
    ("conv: {out: 16, kernel: 3, stride: 2, dilation: 2, groups: 4}", [8, 11, 11],
     lambda: nn.Conv2d(8, 16, 3, stride=2, dilation=2, groups=4)),
    ("conv: {out: 12, kernel: 5, groups: 3, bias: false}", [6, 20], lambda: nn.Conv1d(6, 12, 5, groups=3, bias=False)),
    ("conv: {out: 4, kernel: 3, groups: 2}", [4, 5, 6, 7], lambda: nn.Conv3d(4, 4, 3, groups=2)),
    ("conv_transpose: {out: 6, kernel: 2, stride: 2, groups: 2}", [8, 5, 5],
     lambda: nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)),
    ("conv_transpose: {out: 8, kernel: 3, stride: 2, padding: 1, groups: 8}", [8, 6, 6],
     lambda: nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, groups=8)),
    ("conv: {out: 8, kernel: 3}", [8, 6, 6], lambda: nn.Conv2d(8, 8, 3)),
    ("linear: {out: 7}", [8, 3, 3], lambda: nn.Sequential(nn.Flatten(), nn.Linear(72, 7))),
]


@pytest.mark.parametrize(("layer", "shape", "make"), PER_LAYER, ids=[p[0].split(":")[0] + str(i)
                                                                      for i, p in enumerate(PER_LAYER)])
def test_training_flops_per_layer_follow_the_installed_flop_counter(write_spec, layer: str, shape: list[int],
                                                                     make) -> None:  # type: ignore[no-untyped-def]
    """Forward, input gradient and weight gradient of one layer, each from the installed FlopCounterMode: the
    layer trainable after a trainable layer (all three), frozen (no weight gradient), and first (no input
    gradient). A torch whose rule for grouped convs differs from conventions.GROUPED_WEIGHT_GRADIENT fails here."""
    c = shape[0]
    torch.manual_seed(0)
    x = torch.randn(2, *shape)

    def layer_flops(first: bool, frozen: bool) -> int:
        target = make().requires_grad_(not frozen)
        model = target if first else nn.Sequential(nn.Conv2d(c, c, 1) if len(shape) == 3 else
                                                   (nn.Conv1d if len(shape) == 2 else nn.Conv3d)(c, c, 1), target)
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        return counter.get_total_flops() if first else sum(counter.get_flop_counts()["Sequential.1"].values())

    with FlopCounterMode(display=False) as counter:
        make()(x)
    forward = counter.get_total_flops()
    both, no_weight, no_input = layer_flops(False, False), layer_flops(False, True), layer_flops(True, False)

    pre = f"  - conv: {{out: {c}, kernel: 1}}\n"
    spec = f"name: t\ninput: {shape}\nlayers:\n{pre}  - {layer}\n"
    step = training_flops(analyze(load_spec(write_spec(spec)), batch=2))
    predicted = step.layers[1]
    assert (predicted.forward, predicted.grad_input, predicted.grad_weight) == (
        forward, no_weight - forward, both - no_weight)
    alone = training_flops(analyze(load_spec(write_spec(f"name: t\ninput: {shape}\nlayers:\n  - {layer}\n")), batch=2))
    assert alone.layers[0].total == no_input


def test_the_grouped_weight_gradient_rule_is_gated_by_the_torch_release(write_spec) -> None:  # type: ignore
    from archcalc.core.conventions import GROUPED_WEIGHT_GRADIENT, flop_counter_divides_groups

    # every release read (2.13.0, 2.14.1) counts `groups` times the forward; a future entry switches the rule
    assert not flop_counter_divides_groups("2.13.0") and not flop_counter_divides_groups("2.14.1+cpu")
    assert GROUPED_WEIGHT_GRADIENT[0] == ((0, 0), False)
    # depthwise 3x3 on 32 channels, 10x10: forward 2 * 32 * 9 * 100 FLOPs per sample; its weight gradient is 32x
    # that today, 1x under the proposed rule (pytorch PR #183405)
    report = analyze(load_spec(write_spec("name: t\ninput: [32, 10, 10]\nlayers:\n"
                                          "  - conv: {out: 32, kernel: 3, padding: 1, groups: 32}\n")))
    forward = 2 * 32 * 9 * 100
    assert training_flops(report, divide_groups=False).layers[0].grad_weight == 32 * forward
    assert training_flops(report, divide_groups=True).layers[0].grad_weight == forward
