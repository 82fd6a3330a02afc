"""The training step's timeline and peak (core.training.step_peak) against a real step on the CPU: zero_grad,
a training-mode forward, the sum of the outputs as the loss, backward, optimizer.step(), measured by storage as
the ops create and free them (tests/measure.step_peak_bytes: a TorchDispatchMode and weakref finalizers, no
archcalc arithmetic). What a kernel allocates and frees inside itself is not seen by either side.

Fast tier: a network written here in plain torch.nn, worked by hand, and a few bundled specs at batch 1 and 8,
for sgd, momentum and adam, the first step and a later one. The exhaustive tier (`-m exhaustive`) measures every
bundled spec.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import report_of
from measure import cuda_step_peak_bytes, step_peak_bytes
from torch import nn

from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec
from archcalc.core.training import step_peak, step_peaks
from archcalc.torch.build import build_module

OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=1e-3),
              "momentum": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
              "adam": lambda p: torch.optim.Adam(p, lr=1e-3)}

SMALL = """
name: small
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1}
  - relu
  - maxpool: {kernel: 2}
  - flatten
  - linear: {out: 10}
"""


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def test_the_step_of_a_small_network_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    # batch 2, float32. Parameters: conv 3*4*9 + 4 = 112, linear 64*10 + 10 = 650: 762 * 4 = 3,048 bytes; input
    # 2*3*64 * 4 = 1,536. Forward: conv out 2,048 (freed after relu: conv keeps the input, relu its output), relu
    # out 2,048, max-pool out 512 + int64 indices 1,024, linear out 80; the loss 4 (the output freed), the seed 4.
    # Backward of the linear layer: grad input 512, weight 2,560, bias 40 -> 6,704 alive; then max pooling's grad
    # input 2,048 beside them: 8,752 - 512 (linear kept the pool's output) -> the peak is the ReLU's backward: its
    # grad input 2,048 while the max-pool's (2,048) and the ReLU's output (2,048) are alive:
    # 4 + 4 + 2,560 + 40 (linear grads) + 2,048 (relu out) + 2,048 (pool grad in) + 2,048 (relu grad in) = 8,752.
    report = analyze(load_spec(write_spec(SMALL)), batch=2, device="cpu")
    fixed = 3_048 + 1_536
    sgd = step_peak(report, "sgd")
    assert (sgd.peak, sgd.phase, sgd.op) == (fixed + 8_752, "backward", "relu1")
    torch.manual_seed(0)
    model = _small()
    before, measured = step_peak_bytes(model, (torch.randn(2, 3, 8, 8),), OPTIMIZERS["sgd"](model.parameters()))
    assert (before, measured) == (fixed, sgd.peak)
    # Adam's first step: exp_avg, exp_avg_sq (2 * 3,048) and a 4-byte `step` per parameter tensor (4) made; then,
    # for the linear weight (2,560 bytes), sqrt and its quotient beside the conv bias's denom (16): at that moment
    # the gradients 3,048 are alive: 3,048 + 6,096 + 16 + 2 * 2,560 + 16 = 14,296 > 8,752
    adam = step_peak(report, "adam", first=True)
    assert (adam.peak, adam.phase) == (fixed + 3_048 + 6_096 + 16 + 2 * 2_560 + 16, "optimizer")


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 2])
def test_the_small_network_in_plain_torch(write_spec, optimizer: str, steps: int) -> None:  # type: ignore
    report = analyze(load_spec(write_spec(SMALL)), batch=2, device="cpu")
    torch.manual_seed(0)
    model = _small()
    before, measured = step_peak_bytes(model, (torch.randn(2, 3, 8, 8),), OPTIMIZERS[optimizer](model.parameters()),
                                       steps)
    predicted = step_peak(report, optimizer, first=steps == 1)
    assert (predicted.before, predicted.peak) == (before, measured)


@pytest.mark.parametrize("batch", [1, 3])
def test_local_response_norm_in_plain_torch(write_spec, batch: int) -> None:  # type: ignore[no-untyped-def]
    # F.local_response_norm is a composite of eight ops: its backward holds four input-sized tensors at once
    report = analyze(load_spec(write_spec("name: t\ninput: [3, 4, 4]\nlayers:\n  - conv: {out: 6, kernel: 1}\n"
                                          "  - lrn: {size: 5}\n  - conv: {out: 2, kernel: 1}\n")),
                     batch=batch, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.LocalResponseNorm(5), nn.Conv2d(6, 2, 1))
    before, measured = step_peak_bytes(model, (torch.randn(batch, 3, 4, 4),), OPTIMIZERS["sgd"](model.parameters()),
                                       2)
    predicted = step_peak(report, "sgd")
    assert (predicted.before, predicted.peak, predicted.op) == (before, measured, "norm1")


def _measured_and_predicted(name: str, batch: int, optimizer: str, steps: int) -> tuple[int, int]:
    report = report_of(name, batch=batch, device="cpu")
    torch.manual_seed(0)
    model = build_module(report)
    x = tuple(torch.randn(batch, *report.graph.tensors[t].shape) for _, t in report.graph.inputs)
    _, measured = step_peak_bytes(model, x, OPTIMIZERS[optimizer](model.parameters()), steps)
    return measured, step_peak(report, optimizer, first=steps == 1).peak


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("steps", [1, 2])
def test_lenet5_step_peak_is_exact(optimizer: str, batch: int, steps: int) -> None:
    measured, predicted = _measured_and_predicted("lenet5", batch, optimizer, steps)
    assert predicted == measured


RESIDUAL = """
name: proj
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1}
  - relu: {inplace: true}
  - residual:
      - conv: {out: 8, kernel: 3, stride: 2, padding: 1, bias: false}
      - batchnorm
      - relu
      - conv: {out: 8, kernel: 3, padding: 1, bias: false}
      - batchnorm
    shortcut: projection
    after: [relu]
  - residual: [{conv: {out: 8, kernel: 3, padding: 1}}, relu, {conv: {out: 8, kernel: 3, padding: 1}}]
  - conv: {out: 4, kernel: 3, padding: 1}
"""


class Residual(nn.Module):
    """RESIDUAL in plain torch.nn: an in-place ReLU, a projection block and an identity block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.body2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.stem(x))
        x = torch.relu(self.body(x) + self.shortcut(x))
        x = self.body2(x) + x
        return self.head(x)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 2])
def test_residual_blocks_in_plain_torch(write_spec, optimizer: str, steps: int) -> None:  # type: ignore
    # gradients that meet (a shortcut and a body) are summed into a new tensor; an in-place ReLU's backward makes
    # a new gradient; batch norm keeps its input and statistics
    report = analyze(load_spec(write_spec(RESIDUAL)), batch=2, device="cpu")
    torch.manual_seed(0)
    model = Residual()
    assert sum(p.numel() for p in model.parameters()) == report.totals.params
    before, measured = step_peak_bytes(model, (torch.randn(2, 3, 8, 8),), OPTIMIZERS[optimizer](model.parameters()),
                                       steps)
    predicted = step_peak(report, optimizer, first=steps == 1)
    assert (predicted.before, predicted.peak) == (before, measured)


@pytest.mark.parametrize("name", ["alphago_policy", "nin", "resnet18", "torchvision/squeezenet1_1"])
def test_bundled_step_peaks_are_exact(name: str) -> None:
    measured, predicted = _measured_and_predicted(name, 1, "sgd", 2)
    assert predicted == measured


@functools.cache
def _zoo() -> list[tuple[str, int]]:
    """(bundled spec, batch) for batch 1 and 8 where one measured step stays small: a predicted peak of at most
    1.5 GiB and at most 20 G MACs forward (101 of the 226 pairs; the rest -- DeepLab at 520x520, the video networks,
    EfficientNet-B7, ... -- would take CI's memory and hours, and are the same kinds and pairs of kinds)."""
    from archcalc.core.resolve import bundled
    from archcalc.core.training import step_unfollowed

    pairs = []
    for name in sorted(bundled()):
        for batch in (1, 8):
            report = report_of(name, batch=batch, device="cpu")
            if step_unfollowed(report):  # (a kind whose backward is not modelled; calc says so)
                continue
            if step_peak(report, "adam", first=False).peak <= 3 * 2**29 and report.totals.macs <= 20 * 10**9:
                pairs.append((name, batch))
    return pairs


@pytest.mark.exhaustive
@pytest.mark.parametrize(("optimizer", "steps"), [("sgd", 1), ("momentum", 2), ("adam", 1), ("adam", 2)])
@pytest.mark.parametrize(("name", "batch"), _zoo())
def test_every_bundled_step_peak(name: str, batch: int, optimizer: str, steps: int) -> None:
    # the bar: within 1 % (the goal, and what the fast tier holds: the byte)
    try:
        measured, predicted = _measured_and_predicted(name, batch, optimizer, steps)
    except ValueError as exc:  # DeepLabV3's ASPP pooling branch: batch norm over 1 x 1 maps cannot train at batch 1
        assert batch == 1 and "Expected more than 1 value per channel when training" in str(exc), exc
        pytest.skip("torch cannot train batch norm on one value per channel (batch 1, a 1x1 map)")
    assert abs(predicted - measured) <= measured // 100, (predicted, measured, predicted - measured)


def test_calc_shows_the_measured_peak_and_where() -> None:
    import json

    from typer.testing import CliRunner

    from archcalc.cli.app import app

    result = CliRunner().invoke(app, ["calc", "lenet5", "--device", "cpu", "-b", "8", "--optimizer", "adam",
                                      "-f", "json"])
    assert result.exit_code == 0, result.output
    peak = json.loads(result.stdout)["training_peak"]
    measured = {steps: _measured_and_predicted("lenet5", 8, "adam", steps)[0] for steps in (1, 2)}
    assert peak["later_step"] == {"bytes": measured[2], "phase": "backward", "op": "tanh1",
                                  "before_bytes": peak["later_step"]["before_bytes"]}
    assert (peak["first_step"]["bytes"], peak["first_step"]["phase"]) == (measured[1], "optimizer")
    amp = CliRunner().invoke(app, ["calc", "lenet5", "--amp", "bf16", "-f", "json"])
    assert json.loads(amp.stdout)["training_peak"] is None  # autocast's step is followed on the CPU only
    amp = CliRunner().invoke(app, ["calc", "lenet5", "--amp", "bf16", "--device", "cpu", "-b", "8", "--optimizer",
                                   "adam", "-f", "json"])
    measured = _autocast_measured_and_predicted("lenet5", 8, "adam", 2)[0]
    assert json.loads(amp.stdout)["training_peak"]["later_step"]["bytes"] == measured


# ---- bf16 autocast on the CPU ---------------------------------------------------------------------------------

MLP = "name: mlp\ninput: [4, 4]\nlayers:\n  - linear: {out: 32}\n  - relu\n  - linear: {out: 256}\n"


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 256))



def test_the_step_under_autocast_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    # SMALL at batch 2 under torch.autocast("cpu", bfloat16), sgd. Before the step, float32 as without autocast:
    # parameters 3,048 and the input 1,536. Forward, bfloat16: conv1 casts its bias (8), weight (216) and the input
    # (768), and makes its output (1,024); relu's output 1,024 (conv1's output freed after it); max pooling's output
    # 256 and int64 indices 1,024; the linear layer casts its bias (20) and weight (1,280), output 40; the loss 2.
    # The autocast region ends: the cached bias copies (28) are freed; then the output (40). Kept: conv1's weight
    # and input copies (984), relu's output, the indices, pool's output (the linear layer's input), the linear
    # weight's copy: 984 + 1,024 + 1,024 + 256 + 1,280 + 2 (loss) = 4,570, + the seed 2 = 4,572.
    # The linear layer's backward: its input's gradient 256, its weight's 1,280 and bias's 20, in bfloat16 (6,128);
    # it frees what it kept (pool's output 256, the weight copy 1,280: 4,592); then the weight's gradient is copied
    # to float32 (2,560) beside its bfloat16 one: 7,152, the peak, at the backward of fc1.
    report = analyze(load_spec(write_spec(SMALL)), batch=2, device="cpu", dtype="bfloat16")
    later, first = step_peaks(report, "sgd", amp="bf16")
    assert (later.peak, later.before, later.phase, later.op) == (3_048 + 1_536 + 7_152, 3_048 + 1_536, "backward",
                                                                 "fc1")
    later.check()
    torch.manual_seed(0)
    model = _small()
    before, measured = step_peak_bytes(model, (torch.randn(2, 3, 8, 8),), OPTIMIZERS["sgd"](model.parameters()), 2,
                                       autocast=torch.bfloat16)
    assert (before, measured) == (later.before, later.peak)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("network", ["small", "residual", "mlp"])
def test_autocast_in_plain_torch(write_spec, optimizer: str, steps: int, network: str) -> None:  # type: ignore
    # mlp: the first linear layer's input needs no gradient, so its node does not keep the weight's copy: the
    # autocast cache holds it until the forward ends, not until that layer's backward
    text, make, shape = {"small": (SMALL, _small, (3, 8, 8)), "residual": (RESIDUAL, Residual, (3, 8, 8)),
                         "mlp": (MLP, _mlp, (4, 4))}[network]
    report = analyze(load_spec(write_spec(text)), batch=2, device="cpu", dtype="bfloat16")
    torch.manual_seed(0)
    model = make()
    before, measured = step_peak_bytes(model, (torch.randn(2, *shape),), OPTIMIZERS[optimizer](model.parameters()),
                                       steps, autocast=torch.bfloat16)
    predicted = step_peaks(report, optimizer, amp="bf16")[0 if steps > 1 else 1]
    assert (predicted.before, predicted.peak) == (before, measured)


def _autocast_measured_and_predicted(name: str, batch: int, optimizer: str, steps: int) -> tuple[int, int]:
    report = report_of(name, batch=batch, device="cpu")
    low = report_of(name, batch=batch, device="cpu", dtype="bfloat16")
    torch.manual_seed(0)
    model = build_module(report)
    x = tuple(torch.randn(batch, *report.graph.tensors[t].shape) for _, t in report.graph.inputs)
    _, measured = step_peak_bytes(model, x, OPTIMIZERS[optimizer](model.parameters()), steps, autocast=torch.bfloat16)
    return measured, step_peaks(low, optimizer, amp="bf16")[0 if steps > 1 else 1].peak


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("batch", [1, 8])
def test_lenet5_under_autocast_is_exact(optimizer: str, batch: int) -> None:
    measured, predicted = _autocast_measured_and_predicted("lenet5", batch, optimizer, 2)
    assert predicted == measured


@pytest.mark.parametrize("name", ["nin", "torchvision/squeezenet1_1"])
def test_bundled_step_peaks_under_autocast(name: str) -> None:
    measured, predicted = _autocast_measured_and_predicted(name, 1, "sgd", 2)
    assert predicted == measured


def test_where_autocast_is_not_followed_it_says_why(write_spec) -> None:  # type: ignore[no-untyped-def]
    from archcalc.core.training import autocast_unfollowed

    first_norm = analyze(load_spec(write_spec("name: t\ninput: [3, 8, 8]\nlayers:\n  - batchnorm\n"
                                              "  - conv: {out: 4, kernel: 3}\n")), device="cpu", dtype="bfloat16")
    assert "reads the float32 input" in autocast_unfollowed(first_norm, "bf16")
    assert "norm1: it runs in float32" in autocast_unfollowed(report_of("alexnet", device="cpu", dtype="bfloat16"),
                                                              "bf16")
    scaled = analyze(load_spec(write_spec("name: t\ninput: [3, 8, 8]\nlayers:\n  - conv: {out: 4, kernel: 3}\n"
                                          "  - layer_scale\n")), device="cpu", dtype="bfloat16")
    assert "float32 parameter makes its output float32" in autocast_unfollowed(scaled, "bf16")
    assert "CPU only" in autocast_unfollowed(report_of("lenet5", dtype="bfloat16"), "bf16")  # cuda's lists differ
    assert "bf16 only" in autocast_unfollowed(report_of("lenet5", device="cpu", dtype="float16"), "fp16")
    with pytest.raises(ValueError, match="norm1"):
        step_peaks(report_of("alexnet", device="cpu", dtype="bfloat16"), "sgd", amp="bf16")


def _autocast_zoo() -> list[tuple[str, int]]:
    """_zoo()'s pairs whose step autocast is followed in (core.training.autocast_unfollowed)."""
    from archcalc.core.training import autocast_unfollowed

    followed = {name for name in {n for n, _ in _zoo()}
                if not autocast_unfollowed(report_of(name, device="cpu", dtype="bfloat16"), "bf16")}
    return [(name, batch) for name, batch in _zoo() if name in followed]


@pytest.mark.exhaustive
@pytest.mark.parametrize(("optimizer", "steps"), [("sgd", 2), ("adam", 1)])
@pytest.mark.parametrize(("name", "batch"), _autocast_zoo())
def test_every_bundled_step_peak_under_autocast(name: str, batch: int, optimizer: str, steps: int) -> None:
    try:
        measured, predicted = _autocast_measured_and_predicted(name, batch, optimizer, steps)
    except ValueError as exc:  # as in test_every_bundled_step_peak
        assert batch == 1 and "Expected more than 1 value per channel when training" in str(exc), exc
        pytest.skip("torch cannot train batch norm on one value per channel (batch 1, a 1x1 map)")
    assert abs(predicted - measured) <= measured // 100, (predicted, measured, predicted - measured)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 2])
def test_the_step_peak_on_cuda(write_spec, optimizer: str, steps: int) -> None:  # type: ignore[no-untyped-def]
    """The same step on CUDA (foreach torch.optim, CUDA's saved statistics), measured with the caching allocator's
    statistics. Every allocation is rounded up to 512 bytes there and convolutions may take cuDNN workspace from
    the allocator, so the measured peak may exceed the prediction by those, never fall below it. (Written without
    a GPU at hand: not yet run.)"""
    torch.backends.cudnn.deterministic = True  # no benchmark search for workspace-hungry algorithms
    report = analyze(load_spec(write_spec(RESIDUAL)), batch=2, device="cuda")
    torch.manual_seed(0)
    model = Residual().cuda()
    before, measured = cuda_step_peak_bytes(model, (torch.randn(2, 3, 8, 8, device="cuda"),),
                                            OPTIMIZERS[optimizer](model.parameters()), steps)
    predicted = step_peak(report, optimizer, first=steps == 1)
    tensors = 64  # at most this many tensors alive at once here: their rounding to 512-byte blocks
    assert predicted.before <= before <= predicted.before + 511 * tensors
    assert predicted.peak <= measured <= predicted.peak + 511 * tensors + 32 * 2**20  # + cuDNN workspace


def test_the_step_peak_equals_pytorchs_memtracker_on_resnets() -> None:
    """PyTorch's own MemTracker (torch.distributed._tools.mem_tracker, FakeTensor mode, CPU: exact bytes) around
    one Adam step of torchvision's ResNet-18 at batch 16 and ResNet-50 at batch 8, the first step and a later one,
    recorded by tests/data/measure/memtracker_step.py (torch 2.14.1, torchvision 0.29.1; tests/data/README.md).
    The training memory upper bound was 4.96 % and 5.46 % above; the step's peak is the byte."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "data" / "memtracker_step.json").read_text(encoding="utf-8"))
    assert len(recorded["cases"]) == 4
    for case in recorded["cases"]:
        report = report_of(case["spec"], batch=case["batch"], device="cpu")
        predicted = step_peak(report, case["optimizer"], first=case["step"] == "first")
        tracked = case["memtracker"]
        assert predicted.peak == tracked["peak"], case
        # MemTracker's categories: parameters, buffers and the input ("Other") are archcalc's `before`, with the
        # optimizer state of a later step
        fixed = tracked["by_kind"]["Parameter"] + tracked["by_kind"]["Buffer"] + tracked["by_kind"]["Other"]
        assert predicted.before == fixed + (tracked["by_kind"]["Optstate"] if case["step"] != "first" else 0)
