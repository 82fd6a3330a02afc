"""`--set NAME=VALUE`: overrides a spec's `args` on every command that takes a spec; bad names and values are
located errors with exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import exits_cleanly
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.errors import SpecError
from archcalc.core.spec import open_spec

runner = CliRunner()


def _totals(*args: str) -> dict[str, int]:
    result = runner.invoke(app, ["calc", "resnet50", "-f", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["totals"]


def test_set_changes_params_by_hand_arithmetic() -> None:
    base = _totals()["params"]
    # num_classes 1000 -> 10: the fc layer loses (2048 weights + 1 bias) per class.
    assert _totals("--set", "num_classes=10")["params"] == base - 990 * 2049
    # d1 3 -> 2: one identity bottleneck of width 64 on 256 channels goes: 1x1 256->64, 3x3 64->64, 1x1 64->256,
    # three batch norms (2 params per channel).
    bottleneck = 256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)
    assert _totals("--set", "d1=2")["params"] == base - bottleneck
    # repeatable, and values may use the spec's other args
    assert _totals("--set", "d1=2", "--set", "num_classes=10")["params"] == base - bottleneck - 990 * 2049
    assert _totals("--set", "d1=d4 - 1")["params"] == base - bottleneck


def test_set_values_go_through_the_safe_evaluator() -> None:
    assert open_spec("resnet50", {"d3": "2 * d2"}).args["d3"] == 8
    assert open_spec("resnet50", {"d3": "max(d1, d2) + 1"}).args["d3"] == 5
    with pytest.raises(SpecError, match="unexpected character"):
        open_spec("resnet50", {"d3": "os.system(1)"})
    with pytest.raises(SpecError, match="unexpected character"):
        open_spec("resnet50", {"d3": "__import__('os')"})


@pytest.mark.parametrize(("sets", "message"), [
    (["num_clases=10"], "resnet50.yaml:9:7: --set num_clases=10: the spec has no argument 'num_clases'; did you "
                        "mean 'num_classes'?"),
    (["d1=0"], "repeat count must be a positive integer, not 0"),
    (["d1=1.5"], "repeat count must be a positive integer, not 1.5"),
    (["d1=d9 + 1"], "unknown name 'd9'"),
    (["d1"], "--set: expected NAME=VALUE"),
    (["=3"], "--set: expected NAME=VALUE"),
    (["d1=2", "d1=3"], "'d1' is set twice"),
])
def test_set_errors_exit_2_with_a_message(sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    for command in (["calc", "resnet50"], ["compare", "resnet50"], ["export", "resnet50"]):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
        exits_cleanly(result, 2)


def test_a_spec_without_args_says_so(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: t\ninput: [3, 8, 8]\nlayers: [relu]\n")
    result = runner.invoke(app, ["calc", str(path), "--set", "width=2"])
    assert result.exit_code == 2
    assert "the spec declares no args" in result.output


def test_every_spec_command_takes_set() -> None:
    for command in ("calc", "compare", "validate", "export", "profile"):
        result = runner.invoke(app, [command, "--help"])
        assert "--set" in result.output, command
