"""Per layer, one training step (`calc --columns training`, core.training.layer_training): the bytes each layer
saves for backward and its backward FLOPs (input and weight gradient) against torch on networks written here in
plain torch.nn (saved_tensors_hooks while each module runs; FlopCounterMode over a real backward, per module), and
each layer's share of the step's peak, worked by hand and adding up to the measured peak."""

from __future__ import annotations

import json

import pytest
import torch
from measure import backward_flops_by_module, saved_bytes_by_module, step_peak_bytes
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec
from archcalc.core.training import layer_training, step_peaks, training_flops

runner = CliRunner()

CHAIN = """
name: chain
input: [3, 10, 10]
layers:
  - conv: {out: 6, kernel: 3, padding: 1}
  - batchnorm
  - relu
  - maxpool: {kernel: 2}
  - conv: {out: 8, kernel: 3, groups: 2, bias: false}
  - sigmoid
  - conv: {out: 4, kernel: 1}
  - avgpool: {kernel: 3}
  - flatten
  - linear: {out: 5}
  - tanh
  - linear: {out: 3}
"""


def _chain() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, groups=2, bias=False), nn.Sigmoid(), nn.Conv2d(8, 4, 1),
                         nn.AvgPool2d(3), nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


FROZEN = """
name: frozen
input: [2, 9, 9]
layers:
  - conv: {out: 4, kernel: 3, trainable: false}
  - relu
  - conv: {out: 4, kernel: 3, padding: 1}
  - gelu
  - conv: {out: 6, kernel: 3, stride: 2, trainable: false}
  - flatten
  - linear: {out: 2}
"""


def _frozen() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.GELU(),
                          nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(), nn.Linear(54, 2))
    for i in (0, 4):
        model[i].requires_grad_(False)
    return model


NETWORKS = {"chain": (CHAIN, _chain), "frozen": (FROZEN, _frozen)}


def _layers(write_spec, text: str, batch: int, **settings: object):  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(text)), batch=batch, device="cpu", **settings)
    step = step_peaks(report, "sgd")[0]
    return report, layer_training(report, training_flops(report), step), step


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("batch", [1, 3])
def test_saved_bytes_per_layer_against_saved_tensor_hooks(write_spec, name: str, batch: int) -> None:  # type: ignore
    text, make = NETWORKS[name]
    report, layers, _ = _layers(write_spec, text, batch)
    torch.manual_seed(0)
    model = make()
    x = torch.randn(batch, *report.input)
    measured = saved_bytes_by_module(model, x)
    modules = [n for n, m in model.named_modules() if not list(m.children())]
    assert len(modules) == len(layers.rows)  # one module per row, in order
    predicted = {module: row.saved_bytes for module, row in zip(modules, layers.rows) if row.saved_bytes}
    assert predicted == measured
    assert layers.totals.saved_bytes == report.totals.saved_bytes == sum(measured.values())


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("convention", ["torch", "macs"])
def test_backward_flops_per_layer_against_flop_counter(write_spec, name: str, convention: str) -> None:  # type: ignore
    text, make = NETWORKS[name]
    report, layers, _ = _layers(write_spec, text, 2, convention=convention)
    torch.manual_seed(0)
    model = make()
    measured = backward_flops_by_module(model, torch.randn(2, *report.input))
    modules = [n for n, m in model.named_modules() if not list(m.children())]
    per_mac = {"torch": 2, "macs": 1}[convention]  # FlopCounterMode counts 2 FLOPs per MAC
    predicted = {module: (row.grad_input_flops * 2 // per_mac, row.grad_weight_flops * 2 // per_mac)
                 for module, row in zip(modules, layers.rows) if module in measured}
    assert predicted == measured
    assert any(g_in and g_w for g_in, g_w in measured.values())  # the check sees both halves


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


def test_each_layers_share_of_the_peak_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    # batch 2, float32, sgd (tests/test_training_step.py works the step out): the peak is the ReLU's backward.
    # Alive then: conv's parameters (112 * 4 = 448; its output freed after the ReLU ran, its gradients not yet
    # made); the ReLU's output (2,048, kept by the ReLU and by max pooling) and the gradient its backward is making
    # (2,048); max pooling's gradient of its input (2,048, the ReLU's incoming gradient; its indices freed once
    # its backward ran); flatten: a view, nothing; the linear layer's parameters and their gradients
    # (2 * 650 * 4 = 5,200). Not in any layer: the input (1,536), the loss (4) and the seed (4).
    report, layers, step = _layers(write_spec, SMALL, 2)
    assert [row.peak_bytes for row in layers.rows] == [448, 4_096, 2_048, 0, 5_200]
    assert layers.other_peak == 1_536 + 8
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    _, measured = step_peak_bytes(model, (torch.randn(2, 3, 8, 8),), torch.optim.SGD(model.parameters(), lr=1e-3), 2)
    assert layers.totals.peak_bytes + layers.other_peak == step.peak == measured


def test_shares_add_up_to_the_peak_in_every_phase() -> None:
    # the peak in the forward (resnet18 at batch 8 with sgd? no: backward), in backward, at the optimizer step
    # (Adam's first step), on both devices: the rows' shares and the rest add up to the peak
    phases = set()
    for name, optimizer in (("lenet5", "adam"), ("resnet18", "sgd"), ("resnet18", "adam"), ("nin", "momentum")):
        for device in ("cpu", "cuda"):
            report = analyze(name, batch=2, device=device)
            for step in step_peaks(report, optimizer):
                assert sum(step.layers) + step.other == step.peak
                assert all(n >= 0 for n in step.layers)
                phases.add(step.phase)
    assert phases == {"backward", "optimizer"}


def test_calc_columns_training(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = str(write_spec(SMALL))
    table = runner.invoke(app, ["calc", path, "-b", "2", "--device", "cpu", "--columns", "training"])
    assert table.exit_code == 0, table.output
    head = table.output.splitlines()[1:4]
    assert any("saved for backward" in line and "held at the training peak" in line for line in head), head
    data = json.loads(runner.invoke(app, ["calc", path, "-b", "2", "--device", "cpu", "--columns", "training",
                                          "-f", "json"]).stdout)
    assert [layer["training_peak_bytes"] for layer in data["layers"]] == [448, 4_096, 2_048, 0, 5_200]
    assert data["totals"]["training_peak_bytes"] + data["totals"]["training_peak_bytes_not_in_layers"] == \
        data["training_peak"]["later_step"]["bytes"]
    csv = runner.invoke(app, ["calc", path, "-b", "2", "--device", "cpu", "--columns", "training", "-f", "csv"])
    assert csv.stdout.splitlines()[0] == ("name,kind,output,saved_bytes,grad_input_flops,grad_weight_flops,"
                                          "training_peak_bytes")
    default = runner.invoke(app, ["calc", path, "-b", "2", "--device", "cpu", "-f", "json"])
    assert "training_peak_bytes" not in default.stdout  # the default set is unchanged
    amp = json.loads(runner.invoke(app, ["calc", path, "--amp", "bf16", "--columns", "training", "-f",
                                         "json"]).stdout)
    assert "saved_bytes" in amp["layers"][0] and "training_peak_bytes" not in amp["layers"][0]


def test_blocks_collapsed_by_depth_sum_their_layers() -> None:
    result = runner.invoke(app, ["calc", "resnet18", "--columns", "training", "-d", "1", "-f", "json"])
    full = runner.invoke(app, ["calc", "resnet18", "--columns", "training", "-f", "json"])
    collapsed, leaves = json.loads(result.stdout), json.loads(full.stdout)
    for key in ("saved_bytes", "grad_input_flops", "grad_weight_flops", "training_peak_bytes"):
        assert sum(layer[key] for layer in collapsed["layers"]) == sum(layer[key] for layer in leaves["layers"]) \
            == leaves["totals"][key]
    layer1 = next(layer for layer in collapsed["layers"] if layer["name"] == "layer1")
    assert layer1["saved_bytes"] == sum(layer["saved_bytes"] for layer in leaves["layers"]
                                        if layer["name"].startswith("layer1."))
