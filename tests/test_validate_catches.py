"""`validate` catches a wrong figure, whichever it is: every comparison, per layer and in total, fails on its own.

The analytic side is made wrong on purpose (a doctored Report, or a doctored training-FLOPs count) and the check for
exactly that figure must disagree, naming the layer, the wrong prediction and what torch measured; the CLI exits 1.
What torch measures is checked against hand arithmetic and against fvcore run on the same network written in plain
torch.nn, so the measuring side cannot drift with the analytic side either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import load_text
from fvcore.nn import FlopCountAnalysis
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core import training
from archcalc.core.analyze import Report, analyze
from archcalc.torch import validate as validate_module
from archcalc.torch.validate import QUANTITIES, Measurement, Validation, compare, measure, validate

runner = CliRunner()

SPEC = """
name: small
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3}
  - batchnorm
  - relu
  - residual:
      - conv: {out: 4, kernel: 3, padding: 1}
  - maxpool: {k: 2}
  - linear: {out: 5}
"""
BATCH = 2


class Plain(nn.Module):
    """SPEC in plain torch.nn: the oracle for what validate must measure."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.res = nn.Conv2d(4, 4, 3, padding=1)
        self.pool1, self.fc1 = nn.MaxPool2d(2), nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = x + self.res(x)
        return self.fc1(torch.flatten(self.pool1(x), 1))


# The rows (leaf layers and the residual's add) in execution order, and the torch module of each leaf.
ROWS = ["conv1", "bn1", "relu1", "residual1.conv1", "residual1.add", "pool1", "fc1"]
LEAVES = {"conv1": "conv1", "bn1": "bn1", "relu1": "relu1", "residual1.conv1": "res", "pool1": "pool1",
          "fc1": "fc1"}

# Hand arithmetic, batch 2, float32 (4 bytes an element).
SHAPES = {name: [BATCH, 4, 6, 6] for name in ROWS} | {"pool1": [BATCH, 4, 3, 3], "fc1": [BATCH, 5]}
PARAMS = {"conv1": 4 * 3 * 3 * 3 + 4, "bn1": 2 * 4, "relu1": 0, "residual1.conv1": 4 * 4 * 3 * 3 + 4, "pool1": 0,
          "fc1": 36 * 5 + 5}
BUFFERS = {name: 0 for name in LEAVES} | {"bn1": 4 + 4 + 1}  # running mean, running var, num_batches_tracked
MACS = {name: 0 for name in LEAVES} | {"conv1": BATCH * 4 * 6 * 6 * 3 * 3 * 3,
                                        "residual1.conv1": BATCH * 4 * 6 * 6 * 4 * 3 * 3, "fc1": BATCH * 5 * 36}
ACTIVATION = {name: 4 * BATCH * 4 * 6 * 6 for name in ROWS} | {"pool1": 4 * BATCH * 4 * 3 * 3, "fc1": 4 * BATCH * 5}
# FlopCounterMode's training step: 2 FLOPs a MAC forward, as many for the weight's gradient, and as many again for
# the input's gradient except in the first layer (the batch needs no gradient).
TRAINING = {name: 0 for name in LEAVES} | {"conv1": 2 * 2 * MACS["conv1"], "residual1.conv1": 3 * 2 * MACS[
    "residual1.conv1"], "fc1": 3 * 2 * MACS["fc1"]}


def _fvcore_oracle() -> tuple[dict[str, int], int]:
    model = Plain().eval()
    analysis = FlopCountAnalysis(model, torch.randn(BATCH, 3, 8, 8))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    return {row: int(by_module[module]) for row, module in LEAVES.items()}, int(analysis.total())


def expected_checks() -> list[tuple[str, str | None, Any]]:
    """(quantity, layer, measured) of every check validate makes on SPEC, in its order: per layer, then the total."""
    fvcore, fvcore_total = _fvcore_oracle()
    per_leaf = {"params": PARAMS, "buffers": BUFFERS, "macs": MACS, "fvcore_flops": fvcore,
                "training_flops": TRAINING}
    totals = {"params": sum(PARAMS.values()), "buffers": sum(BUFFERS.values()), "macs": sum(MACS.values()),
              "fvcore_flops": fvcore_total, "training_flops": sum(TRAINING.values())}
    checks: list[tuple[str, str | None, Any]] = []
    for quantity in QUANTITIES:
        if quantity == "output_shape":
            checks += [(quantity, row, SHAPES[row]) for row in ROWS] + [(quantity, None, SHAPES["fc1"])]
        elif quantity == "activation_bytes":
            checks += [(quantity, row, ACTIVATION[row]) for row in ROWS]
            checks.append((quantity, None, sum(ACTIVATION.values())))
        elif quantity == "saved_bytes":
            checks.append((quantity, None, None))  # measured: see test_saved_bytes_measured
        else:
            checks += [(quantity, row, per_leaf[quantity][row]) for row in LEAVES] + [(quantity, None,
                                                                                      totals[quantity])]
    return checks


@pytest.fixture(scope="module")
def small() -> tuple[Report, Measurement]:
    """SPEC analysed as validate analyses it, and measured once on the CPU."""
    report = analyze(load_text(SPEC), batch=BATCH, convention="fvcore", device="cpu")
    return report, measure(report, "cpu")


def test_every_figure_is_compared_and_measured_right(small: tuple[Report, Measurement]) -> None:
    report, m = small
    v = compare(report, m)
    assert v.ok, [c for c in v.checks if not c.ok]
    want = expected_checks()
    assert [(c.quantity, c.layer) for c in v.checks] == [(q, layer) for q, layer, _ in want]
    for check, (quantity, layer, measured) in zip(v.checks, want):
        if measured is not None:
            assert check.measured == measured, (quantity, layer)
        assert isinstance(check.measured, list if quantity == "output_shape" else int), (quantity, layer)
        assert check.predicted == check.measured
    assert (v.name, v.device, v.batch, v.dtype, v.input) == ("small", "cpu", BATCH, "float32", (3, 8, 8))
    assert v.failures == ()


def autograd_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The bytes saved_tensors_hooks sees packed in a training forward of `model`, parameters and buffers left
    out, each storage once."""
    model.train()
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}
    kept: list[torch.Tensor] = []  # nothing freed mid-count, so no address is reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t)
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def test_saved_bytes_measured(small: tuple[Report, Measurement]) -> None:
    _, m = small
    assert m.saved_bytes == autograd_saved_bytes(Plain(), torch.randn(BATCH, 3, 8, 8)) > 0


def _off_by_one(value: Any) -> Any:
    return [*value[:-1], value[-1] + 1] if isinstance(value, (list, tuple)) else value + 1


FIELDS = {"output_shape": "output", "params": "params", "buffers": "buffers", "macs": "macs",
          "fvcore_flops": "flops", "activation_bytes": "activation_bytes", "saved_bytes": "saved_bytes"}


def _wrong(value: Any) -> Any:
    """`value` off by one, of the same type (a shape: its last axis)."""
    return type(value)(_off_by_one(value))


def doctor(report: Report, quantity: str, layer: str | None) -> Report:
    """`report` with one figure wrong by one."""
    field = FIELDS[quantity]
    if layer is None:
        return report._replace(totals=report.totals._replace(**{field: _wrong(getattr(report.totals, field))}))
    rows = tuple(r._replace(**{field: _wrong(getattr(r, field))}) if r.name == layer else r for r in report.rows)
    assert rows != report.rows
    return report._replace(rows=rows)


def _wrong_training_flops(layer: str | None) -> Callable[[Report], training.TrainingFlops]:
    real = training.training_flops

    def wrong(report: Report) -> training.TrainingFlops:
        step = real(report)
        if layer is None:
            return step._replace(forward=step.forward + 1)
        if all(f.name != layer for f in step.layers):  # a layer without FLOPs: listed with one
            return step._replace(layers=(*step.layers, training.LayerFlops(layer, 1, 0, 0)))
        return step._replace(layers=tuple(f._replace(forward=f.forward + 1) if f.name == layer else f
                                          for f in step.layers))
    return wrong


CASES = [(q, layer) for q, layer, _ in expected_checks()]
# A layer's MACs also give its training FLOPs (2 per MAC forward, and its gradients): both disagree then.
ALSO = {("macs", layer): {("training_flops", layer), ("training_flops", None)} for layer in LEAVES}


@pytest.mark.parametrize(("quantity", "layer"), CASES, ids=[f"{q}-{layer or 'total'}" for q, layer in CASES])
def test_one_wrong_figure_is_reported(small: tuple[Report, Measurement], monkeypatch: pytest.MonkeyPatch,
                                      quantity: str, layer: str | None) -> None:
    report, m = small
    good = {(c.quantity, c.layer): c for c in compare(report, m).checks}
    if quantity == "training_flops":
        monkeypatch.setattr(training, "training_flops", _wrong_training_flops(layer))
    else:
        report = doctor(report, quantity, layer)
    v = compare(report, m)
    assert not v.ok
    failed = {(c.quantity, c.layer) for c in v.failures}
    assert failed == {(quantity, layer)} | ALSO.get((quantity, layer), set())
    check = next(c for c in v.failures if (c.quantity, c.layer) == (quantity, layer))
    right = good[quantity, layer]
    assert check.measured == right.measured
    assert check.predicted == _off_by_one(right.predicted) != check.measured
    # everything else is still compared, and agrees
    assert [(c.quantity, c.layer) for c in v.checks] == list(good)


@pytest.mark.parametrize("quantity", [q for q in QUANTITIES])
@pytest.mark.parametrize("layer", ["fc1", None], ids=["layer", "total"])
def test_cli_exits_1_on_a_wrong_figure(monkeypatch: pytest.MonkeyPatch, write_spec, quantity: str,
                                       layer: str | None) -> None:  # type: ignore[no-untyped-def]
    """Through the command: a wrong prediction of any figure, for a layer or the total, fails validate."""
    if quantity == "saved_bytes" and layer is not None:
        pytest.skip("saved bytes are compared in total only")
    real = validate_module.analyze
    if quantity == "training_flops":
        monkeypatch.setattr(training, "training_flops", _wrong_training_flops(layer))
    else:
        monkeypatch.setattr(validate_module, "analyze", lambda *a, **k: doctor(real(*a, **k), quantity, layer))
    path = write_spec(SPEC)
    result = runner.invoke(app, ["validate", str(path), "--batch", str(BATCH), "-f", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert [(c["quantity"], c["layer"]) for c in data["checks"] if not c["ok"]][0] == (quantity, layer)
    table = runner.invoke(app, ["validate", str(path), "--batch", str(BATCH), "--failed"])
    assert table.exit_code == 1, table.output
    assert quantity in table.stdout and "✗" in table.stdout and "disagree" in table.stdout


TWO_OUTPUTS = """
name: two
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, name: a}
  - conv: {out: 2, kernel: 1, name: b}
  - global_avgpool:
    from: a
    name: pool
  - linear: {out: 3, name: c}
outputs: [b, c]
"""


def test_every_output_is_compared_by_name() -> None:
    report = analyze(load_text(TWO_OUTPUTS), batch=BATCH, convention="fvcore", device="cpu")
    m = measure(report, "cpu")
    v = compare(report, m)
    assert v.ok, v.failures
    outputs = {c.layer: c.measured for c in v.checks if c.quantity == "output_shape" and c.layer
               and c.layer.startswith("output ")}
    assert outputs == {"output b": [BATCH, 2, 6, 6], "output c": [BATCH, 3]}
    wrong = report._replace(outputs=tuple((n, (*s[:-1], s[-1] + 1)) if n == "c" else (n, s)
                                          for n, s in report.outputs))
    assert [(c.layer, c.predicted, c.measured) for c in compare(wrong, m).failures] == [
        ("output c", [BATCH, 4], [BATCH, 3])]
    unseen = m.__class__(**{f: getattr(m, f) for f in m.__slots__} | {  # type: ignore[attr-defined]
        "outputs": {k: v for k, v in m.outputs.items() if k != "c"}})
    assert [(c.layer, c.measured) for c in compare(report, unseen).failures] == [("output c", None)]


def test_one_output_is_not_compared_twice(small: tuple[Report, Measurement]) -> None:
    report, m = small
    assert not any(c.layer and c.layer.startswith("output") for c in compare(report, m).checks)


def test_a_missing_measurement_is_a_disagreement(small: tuple[Report, Measurement]) -> None:
    """A row that execution never showed (no hook fired) disagrees, for its shape and its bytes."""
    report, m = small
    m = m.__class__(**{f: getattr(m, f) for f in m.__slots__} | {  # type: ignore[attr-defined]
        "shapes": {k: v for k, v in m.shapes.items() if k != "pool1"},
        "output_bytes": {k: v for k, v in m.output_bytes.items() if k != "pool1"}})
    failed = {(c.quantity, c.layer, c.measured) for c in compare(report, m).failures}
    assert failed == {("output_shape", "pool1", None), ("activation_bytes", "pool1", None),
                      ("activation_bytes", None, sum(ACTIVATION.values()) - ACTIVATION["pool1"])}


def test_validation_reports_its_failures() -> None:
    from archcalc.torch.validate import Check

    good, bad = Check("params", "a", 1, 1, True), Check("macs", None, 2, 3, False)
    v = Validation("n", "cpu", 1, "float32", (3, 4, 4), (good, bad))
    assert not v.ok and v.failures == (bad,)
    assert Validation("n", "cpu", 1, "float32", (3, 4, 4), (good,)).ok
    data = v.as_dict()
    assert data == {"name": "n", "device": "cpu", "batch": 1, "dtype": "float32", "input": [3, 4, 4], "ok": False,
                    "checks": [{"quantity": "params", "layer": "a", "predicted": 1, "measured": 1, "ok": True},
                               {"quantity": "macs", "layer": None, "predicted": 2, "measured": 3, "ok": False}],
                    "notes": []}


def test_validate_runs_at_the_batch_dtype_and_input_asked_for() -> None:
    v = validate(load_text(SPEC), "cpu", batch=3, dtype="float64", input_shape=(3, 10, 10))
    assert v.ok, v.failures
    assert (v.batch, v.dtype, v.input) == (3, "float64", (3, 10, 10))
    shape = {c.layer: c.measured for c in v.checks if c.quantity == "output_shape"}
    assert shape["conv1"] == [3, 4, 8, 8] and shape[None] == [3, 5]
    assert {c.layer: c.measured for c in v.checks if c.quantity == "activation_bytes"}["conv1"] == 8 * 3 * 4 * 8 * 8


def test_validate_defaults_to_a_batch_that_needs_no_gradient() -> None:
    """By default the input needs no gradient (a batch from a data loader): a max pool before the first trainable
    layer is not recorded by autograd and keeps nothing; with input_requires_grad it keeps its input and indices."""
    text = "name: t\ninput: [2, 6, 6]\nlayers:\n  - maxpool: {k: 2}\n  - conv: {out: 2, kernel: 1}\n"
    plain = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 1))
    x = torch.randn(BATCH, 2, 6, 6)
    for kwargs, needs_grad in (({}, False), ({"input_requires_grad": True}, True)):
        v = validate(load_text(text), "cpu", batch=BATCH, **kwargs)  # type: ignore[arg-type]
        assert v.ok, v.failures
        saved = next(c.measured for c in v.checks if c.quantity == "saved_bytes")
        assert saved == autograd_saved_bytes(plain, x.clone().requires_grad_(needs_grad)), kwargs
    assert autograd_saved_bytes(plain, x.requires_grad_()) > autograd_saved_bytes(plain, x.detach())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "tpu"}, "--device must be one of cpu, cuda, meta, not 'tpu'"),
    ({"dtype": "int8"}, "--dtype int8 cannot run a model; use one of float32, float16, bfloat16, float64"),
])
def test_validate_names_what_it_accepts(kwargs: dict[str, str], message: str) -> None:
    from archcalc.core.errors import ArchcalcError

    with pytest.raises(ArchcalcError) as info:
        validate(load_text(SPEC), **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


class _Measured(Exception):
    """Raised in place of measuring: carries the report validate predicted from."""


@pytest.mark.parametrize(("device", "stats_itemsize"), [("cpu", 2), ("cuda", 4), ("meta", 4)])
def test_predictions_follow_the_kernels_of_the_device(monkeypatch: pytest.MonkeyPatch, device: str,
                                                      stats_itemsize: int) -> None:
    """float16 batch norm keeps its batch mean and 1/std in float16 on the CPU, in float32 on CUDA
    (base.itemsize_for); validate predicts with the rules of the device it runs on (meta: CUDA's)."""
    def stop(report: Report, *args: Any, **kwargs: Any) -> Measurement:
        raise _Measured(report)

    monkeypatch.setattr(validate_module, "measure", stop)
    text = "name: t\ninput: [4, 2, 2]\nlayers:\n  - batchnorm\n"
    with pytest.raises(_Measured) as info:
        validate(load_text(text), device, batch=BATCH, dtype="float16")
    report = info.value.args[0]
    # the input (2 bytes an element) and two statistics per channel
    assert report.totals.saved_bytes == BATCH * 4 * 2 * 2 * 2 + 2 * 4 * stats_itemsize
