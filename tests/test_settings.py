"""One settings value and one optimizer table (issue 27): the table against torch.optim itself, every command's
--optimizer choices from it, and calc / check / sweep / profile's prediction giving one training-memory figure."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.settings import OPTIMIZERS, Settings
from archcalc.core.spec import open_spec
from archcalc.torch.build import build_module
from archcalc.torch.profile import work
from archcalc.torch.profile.driver import make_optimizer

runner = CliRunner()


def _state_elements(optimizer: torch.optim.Optimizer) -> int:
    """Elements of the per-parameter state tensors torch.optim keeps after one step (scalar `step` counters aside)."""
    return sum(v.numel() for state in optimizer.state.values() for k, v in state.items()
               if torch.is_tensor(v) and k != "step")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_is_what_torch_keeps(name: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model.parameters(), name)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert _state_elements(opt) == OPTIMIZERS[name].state * params
    assert type(opt).__name__ == OPTIMIZERS[name].torch_class


def test_sgd_is_plain_and_momentum_is_not() -> None:
    p = [torch.nn.Parameter(torch.ones(3))]
    assert make_optimizer(p, "sgd").defaults["momentum"] == 0
    assert make_optimizer(p, "momentum").defaults["momentum"] == 0.9


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_calc_and_profile_predict_one_training_memory(name: str) -> None:
    """The disagreement the issue found: on lenet5, calc said 536,736 B for sgd and profile --train 783,736 B.
    Every command now reads one model; the optimizer state is measured on the built module."""
    result = runner.invoke(app, ["calc", "lenet5", "--optimizer", name, "--format", "json"])
    assert result.exit_code == 0, result.output
    calc_total = json.loads(result.output)["training_memory"]["total_bytes"]
    report = analyze(open_spec("lenet5"), optimizer=name)
    assert work.predicted_memory(report, True, name).total == calc_total
    model = build_module(report)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], name)
    model(torch.randn(1, *report.input)).sum().backward()
    opt.step()
    terms = dict(work.predicted_memory(report, True, name).terms)
    assert terms[f"optimizer state ({name})"] == 4 * _state_elements(opt)
    if name == "sgd":
        assert calc_total == 536_736


def test_every_command_offers_the_table() -> None:
    for command in ("calc", "sweep", "check", "profile"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert "<sgd|momentum|adam|adamw>" in result.output, command


POOL_FIRST = """
name: pool_first
input: [3, 8, 8]
layers:
  - maxpool: {kernel: 2}
  - conv: {out: 4, kernel: 3}
  - batchnorm
  - flatten
  - linear: {out: 10}
"""


@pytest.mark.parametrize("command", ["check", "sweep"])
def test_check_and_sweep_take_device_and_input_grad(command: str, write_spec) -> None:  # type: ignore[no-untyped-def]
    """Both reach the one training model with every setting that applies (they had no --device and no
    --input-requires-grad): the figure each prints is calc's."""
    path = str(write_spec(POOL_FIRST))

    def figure(cmd: str, *extra: str) -> int:
        args = [cmd, path, "--format", "json", *extra] + (["--max-train-memory", "1TiB"] if cmd == "check" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        return {"check": lambda: data["budgets"][0]["actual"], "sweep": lambda: data["rows"][0]["training_bytes"],
                "calc": lambda: data["training_memory"]["total_bytes"] if data["training_peak"] is None  # amp
                else max(data["training_peak"]["later_step"]["bytes"], data["training_peak"]["first_step"]["bytes"]),
                }[cmd]()

    for extra in ([], ["--input-requires-grad"], ["--device", "cpu", "--dtype", "float16"],
                  ["--dtype", "float16"], ["--optimizer", "adam", "--amp", "bf16"]):
        assert figure(command, *extra) == figure("calc", *extra), extra
    # an input that needs a gradient makes the max pool save its indices (int64, 3x4x4): autograd records it
    assert figure(command, "--input-requires-grad") - figure(command) >= 8 * 3 * 4 * 4
    # batch norm's saved statistics are float32 on CUDA, float16 on the CPU, for float16 activations (without the
    # max pooling first, whose int64 indices are made and freed at its forward, the step's peak is reached in batch
    # norm's backward, its statistics still alive)
    path = str(write_spec(POOL_FIRST.replace("  - maxpool: {kernel: 2}\n", ""), "bn.yaml"))
    assert figure(command, "--dtype", "float16", "--batch", "8") - \
        figure(command, "--dtype", "float16", "--device", "cpu", "--batch", "8") == 2 * 2 * 4


def test_settings_are_checked_at_the_door() -> None:
    with pytest.raises(ArchcalcError, match="unknown optimizer 'adma'; did you mean 'adam'"):
        Settings(optimizer="adma")
    with pytest.raises(ArchcalcError, match="leave --dtype at float32"):
        Settings(amp="bf16", dtype="float16")
    with pytest.raises(ArchcalcError, match="batch must be a positive integer"):
        Settings(batch=0)
    with pytest.raises(ArchcalcError, match="unknown convention"):
        Settings(convention="flops")
    with pytest.raises(ArchcalcError, match="input shape"):
        Settings(input_shape=(3, 0, 4))
    with pytest.raises(TypeError, match="unknown setting 'bach'; did you mean 'batch'"):
        Settings.of(bach=2)
    s = Settings(batch=2).replace(dtype="float16")
    assert (s.batch, s.dtype, s.activation_dtype) == (2, "float16", "float16")
    assert Settings(amp="fp16").activation_dtype == "float16"
    with pytest.raises(AttributeError):
        s.batch = 3  # type: ignore[misc]  # frozen


def test_analyze_takes_settings_or_keywords_alike() -> None:
    spec = open_spec("lenet5")
    by_value = analyze(spec, Settings(batch=4, dtype="float16", convention="macs"))
    by_keyword = analyze(spec, batch=4, dtype="float16", convention="macs")
    assert by_value.totals == by_keyword.totals and by_value.settings == by_keyword.settings
    assert by_value.totals.macs == 4 * analyze(spec).totals.macs
    assert analyze("lenet5").totals == analyze(spec).totals  # a bundled name, as the CLI takes it
