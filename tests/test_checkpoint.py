"""Activation checkpointing (core.checkpoint.plan) and the exact --fit, checked by running them.

The plan is run as planned: the spec's module (archcalc.torch.build) with the planned segments wrapped in
torch.utils.checkpoint(use_reentrant=False), one real training step on the CPU (zero_grad, forward, the sum of the
outputs as the loss, backward, optimizer.step()) measured by storage as the ops create and free them
(tests/measure.step_peak_bytes, as tests/test_training_step.py measures) and under FlopCounterMode. Measured: the
peak is at most the limit and equal to the predicted one; the FLOPs of the checkpointed step exceed those of the
plain step by the predicted extra forward FLOPs. Expected values come from torch's run, never from archcalc.

Fast tier: a small residual network and U-Net-like spec written here. Exhaustive tier: ResNet-50, DenseNet-121 and
U-Net (bundled specs) at reduced inputs and a batch that does not fit the stated limit.
"""

from __future__ import annotations

import pytest
import torch
from conftest import report_of
from measure import step_peak_bytes
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.checkpoint import candidates, plan
from archcalc.core.spec import load_spec
from archcalc.core.training import fit_batch, memory_line, step_line, step_peaks
from archcalc.torch.build import build_module

SGD = {"sgd": lambda p: torch.optim.SGD(p, lr=1e-3), "adam": lambda p: torch.optim.Adam(p, lr=1e-3)}

BLOCKS = """
name: blocks
input: [3, 32, 32]
blocks:
  basic:
    residual:
      - conv: {out: 8, kernel: 3, padding: 1, bias: false}
      - batchnorm
      - relu
      - conv: {out: 8, kernel: 3, padding: 1, bias: false}
      - batchnorm
    after: [relu]
layers:
  - conv: {out: 8, kernel: 3, padding: 1}
  - repeat: 3
    block: basic
    name: stage
  - maxpool: {kernel: 2}
  - residual:
      - conv: {out: 16, kernel: 3, padding: 1}
      - relu
      - conv: {out: 16, kernel: 3, padding: 1}
    shortcut: projection
  - sequence: [{conv: {out: 16, kernel: 3, padding: 1}}, relu, {conv: {out: 16, kernel: 1}}]
    name: tail
  - flatten
  - linear: {out: 10}
"""


def _step(report, segments, optimizer: str = "sgd", steps: int = 2) -> tuple[int, int]:  # type: ignore
    """(measured peak, measured FLOPs) of a later (or with `steps` 1 the first) training step of `report`'s network
    with `segments` (first -> last op index) run under torch.utils.checkpoint."""
    torch.manual_seed(0)
    model = build_module(report)
    model.checkpoint = {s.first: s.last for s in segments}
    x = tuple(torch.randn(report.batch, *report.graph.tensors[t].shape) for _, t in report.graph.inputs)
    _, measured = step_peak_bytes(model, x, SGD[optimizer](model.parameters()), steps)
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(*x)
        (out if torch.is_tensor(out) else sum(o.sum() for o in out.values())).sum().backward()
    return measured, counter.get_total_flops()


def _check_plan(report, limit: int, optimizer: str = "sgd") -> None:  # type: ignore[no-untyped-def]
    planned = plan(report, limit, optimizer)
    assert planned.without > limit and planned.segments and planned.fits, planned
    plain_peak, plain_flops = _step(report, (), optimizer)
    assert plain_peak > limit  # torch agrees: the batch does not fit without checkpointing
    peak, flops = _step(report, tuple(c.segment for c in planned.segments), optimizer)
    assert peak <= limit
    assert peak == planned.peak.peak, (peak, planned.peak.peak, peak - planned.peak.peak)
    assert flops - plain_flops == planned.extra_flops
    if optimizer != "sgd":  # the first step too (the optimizer makes its state in it)
        first, _ = _step(report, tuple(c.segment for c in planned.segments), optimizer, 1)
        assert first == planned.first.peak <= limit


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_plan_for_residual_blocks_runs_as_predicted(write_spec, optimizer: str) -> None:  # type: ignore
    report = analyze(load_spec(write_spec(BLOCKS)), batch=4, device="cpu")
    # the limit: the plain step's peak less 60 KiB (its saved activations are about 600 KiB)
    _check_plan(report, max(p.peak for p in step_peaks(report, optimizer)) - 60 * 1024, optimizer)


def test_each_candidate_alone_runs_as_predicted(write_spec) -> None:  # type: ignore[no-untyped-def]
    # every block the planner may choose (a repeat, a residual block, a residual body), checkpointed alone
    report = analyze(load_spec(write_spec(BLOCKS)), batch=2, device="cpu")
    found = candidates(report)
    assert {c.name for c in found} >= {"stage", "stage.0", "stage.1", "stage.2", "tail"}
    # the tail's last conv saves only its input, before it computes: the recomputation stops there
    tail = next(c for c in found if c.name == "tail")
    assert tail.extra_flops == 2 * 2 * (16 * 16) * (16 * 9) * 16  # 2 per MAC, batch 2, a 16x16 map, 3x3x16 -> 16
    _, plain_flops = _step(report, ())
    for c in found:
        peak, flops = _step(report, (c.segment,))
        assert (peak, flops - plain_flops) == (step_peaks(report, "sgd", (c.segment,))[0].peak, c.extra_flops), c


def test_no_plan_when_it_fits_and_none_when_nothing_helps(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(BLOCKS)), batch=2, device="cpu")
    peak = max(p.peak for p in step_peaks(report, "sgd"))
    assert plan(report, peak).segments == ()
    hopeless = plan(report, step_peaks(report, "sgd")[0].before)  # not even the parameters' own bytes
    assert not hopeless.fits and hopeless.bytes < peak


# ---- --fit with the exact peak ------------------------------------------------------------------------------------


def test_fit_is_the_largest_batch_torch_fits(write_spec) -> None:  # type: ignore[no-untyped-def]
    # the limit is stated; torch decides: the batch --fit gives fits, one more does not
    spec = load_spec(write_spec(BLOCKS))
    limit = 3_000_000
    found = fit_batch(spec, limit, device="cpu", optimizer="adam")
    assert found.exact and found.batch > 1
    measured = {}
    for b in (found.batch, found.batch + 1):
        report = analyze(spec, batch=b, device="cpu")
        torch.manual_seed(0)
        model = build_module(report)
        x = (torch.randn(b, 3, 32, 32),)
        optimizer = SGD["adam"](model.parameters())
        # the larger of the first step (Adam makes its state) and a later one
        measured[b] = max(step_peak_bytes(model, x, optimizer, 1)[1], step_peak_bytes(model, x, optimizer, 1)[1])
    assert measured[found.batch] <= limit < measured[found.batch + 1]
    assert (found.at, found.next_at) == (measured[found.batch], measured[found.batch + 1])


@pytest.mark.parametrize("name", ["resnet50", "torchvision/densenet121", "unet", "torchvision/mobilenet_v2"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_step_line_is_the_step_peak_at_every_batch(name: str, optimizer: str) -> None:
    line = step_line(report_of(name, device="cpu"), optimizer)
    for batch in (1, 2, 3, 5, 16):
        peaks = step_peaks(report_of(name, batch=batch, device="cpu"), optimizer)
        assert line.at(batch) == max(p.peak for p in peaks)
    limit = line.at(5) + 1
    assert memory_line(load_spec_of(name), device="cpu", optimizer=optimizer).largest_batch(limit) == 5


def load_spec_of(name: str):  # type: ignore[no-untyped-def]
    from archcalc.core.resolve import bundled

    return load_spec(bundled()[name])


# ---- the bundled networks named in issue 29 ---------------------------------------------------------------------

# (spec, input, batch, limit): a batch that does not fit the stated limit without checkpointing (torch checks it)
BUNDLED = [
    ("resnet50", (3, 128, 128), 4, 280_000_000),
    ("torchvision/densenet121", (3, 96, 96), 2, 85_000_000),
    ("unet", (1, 188, 188), 2, 340_000_000),
]


@pytest.mark.exhaustive
@pytest.mark.parametrize(("name", "shape", "batch", "limit"), BUNDLED)
def test_the_plan_for_a_bundled_network(name: str, shape: tuple[int, ...], batch: int, limit: int) -> None:
    _check_plan(report_of(name, batch=batch, device="cpu", input_shape=shape), limit)


# ---- the command ----------------------------------------------------------------------------------------------------


def test_calc_fit_prints_the_plan_and_its_json(write_spec) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from archcalc.cli.app import app

    path = str(write_spec(BLOCKS))
    report = analyze(load_spec(path), batch=4, device="cpu")
    limit = step_peaks(report, "sgd")[0].peak - 60 * 1024
    runner = CliRunner()
    result = runner.invoke(app, ["calc", path, "-b", "4", "--device", "cpu", "--fit", str(limit), "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batch"] == 4 and data["fit"]["batch"] < 4  # the figures stay at the batch asked
    planned = plan(report, limit)
    checkpoint = data["fit"]["checkpoint"]
    assert checkpoint["fits"] and checkpoint["peak_bytes"] == planned.bytes <= limit
    assert [s["name"] for s in checkpoint["segments"]] == [c.name for c in planned.segments]
    assert checkpoint["extra_flops"] == sum(s["extra_flops"] for s in checkpoint["segments"]) > 0
    table = runner.invoke(app, ["calc", path, "-b", "4", "--device", "cpu", "--fit", str(limit)])
    assert table.exit_code == 0 and "checkpoint      recompute" in table.stdout, table.output
    # the batch fits: no plan; nothing fits, checkpointing included: exit 1, saying so
    fits = json.loads(runner.invoke(app, ["calc", path, "--device", "cpu", "--fit", str(limit), "-f", "json"]).stdout)
    assert fits["fit"]["checkpoint"] is None and fits["batch"] == fits["fit"]["batch"]
    none = runner.invoke(app, ["calc", path, "--device", "cpu", "--fit", "10KiB"])
    assert none.exit_code == 1 and "no choice of blocks makes batch 1 fit" in none.output, none.output
