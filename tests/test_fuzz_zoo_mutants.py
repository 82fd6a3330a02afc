"""Mutated zoo specs all the way to torch: a bundled network with one list changed (an item duplicated, deleted or
moved; a list of parallel branches multiplied, as a careless edit or a YAML alias does) either is refused with a
located message or builds, runs, and agrees with the analysis on every check `validate` makes.

Before issue 32 such mutants reached the torch builder and raised RuntimeError inside a recipe or in validate.
Exit 1 (a check that disagrees) fails the test as surely as a traceback: it is a wrong number."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.resolve import resolve_spec
from archcalc.core.spec import load_merged

runner = CliRunner()
# (bundled spec, the input its mutants run at: small, so each validation takes a few seconds). The default run
# mutates the small networks; the exhaustive tier adds the deep ones (a validation of DenseNet-121 checks every one
# of its 400-odd modules one by one: about 20 s even at 64x64).
SMALL = {"lenet5": "1x32x32", "resnet18": "3x64x64", "torchvision/shufflenet_v2_x1_0": "3x64x64",
         "torchvision/mobilenet_v3_small": "3x64x64", "nin": "3x64x64", "torchvision/squeezenet1_0": "3x64x64"}
ZOO = {**SMALL, "torchvision/densenet121": "3x64x64", "torchvision/googlenet": "3x64x64",
       "torchvision/efficientnet_b0": "3x64x64", "torchvision/lraspp_mobilenet_v3_large": "3x64x64",
       "fpn_resnet50": "3x64x64"}
SCALE = int(os.environ.get("ARCHCALC_FUZZ_EXAMPLES", "0")) or None


def plain(value: Any) -> Any:
    """The loader's located mappings and lists as plain ones, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merged(name: str) -> dict[str, Any]:
    data = plain(load_merged(resolve_spec(name), name, ()))
    data.pop("extends", None)
    return data  # type: ignore[no-any-return]


def lists_in(value: Any, out: list[list[Any]]) -> list[list[Any]]:
    """Every list in the spec that holds items (layers, branches, block bodies), depth first."""
    if isinstance(value, dict):
        for v in value.values():
            lists_in(v, out)
    elif isinstance(value, list):
        if value and all(isinstance(v, (dict, list, str)) for v in value):
            out.append(value)
        for v in value:
            lists_in(v, out)
    return out


@st.composite
def mutant(draw, zoo: dict[str, str]):  # type: ignore[no-untyped-def]
    name = draw(st.sampled_from(sorted(zoo)))
    data = merged(name)
    targets = lists_in(data.get("blocks", {}), []) + lists_in(data["layers"], [data["layers"]])
    target = draw(st.sampled_from(targets))
    i = draw(st.integers(0, len(target) - 1))
    how = draw(st.sampled_from(["duplicate", "delete", "move", "multiply"]))
    if how == "duplicate":
        target.insert(i + 1, yaml.safe_load(yaml.safe_dump(target[i])))
    elif how == "delete" and len(target) > 1:
        del target[i]
    elif how == "move" and len(target) > 1:
        target.insert(draw(st.integers(0, len(target) - 1)), target.pop(i))
    else:
        target.extend(yaml.safe_load(yaml.safe_dump(target)) * draw(st.integers(1, 2)))
        how = "multiply"
    event(how)
    return name, data


def check(tmp: Path, name: str, data: dict[str, Any]) -> None:
    path = tmp / "mutant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path), "--input", ZOO[name], "--device", "cpu"])
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (name, result.output, repr(exc))
    assert result.exit_code in (0, 2), (name, result.output)  # 1: a check disagreed
    if result.exit_code == 2:
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S|error: \S", result.output), result.output
        event("refused")
    else:
        event("validated")


@settings(max_examples=SCALE or 8, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutant(SMALL))
def test_mutated_zoo_specs_validate_or_are_refused(tmp_path_factory, case) -> None:  # type: ignore[no-untyped-def]
    check(tmp_path_factory.mktemp("m"), *case)


@pytest.mark.exhaustive
@settings(max_examples=(SCALE or 8) * 25, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutant(ZOO))
def test_mutated_zoo_specs_longer(tmp_path_factory, case) -> None:  # type: ignore[no-untyped-def]
    check(tmp_path_factory.mktemp("m"), *case)


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_unmutated_specs_validate_at_the_small_input(tmp_path: Path, name: str) -> None:
    # the mutants start from these: each validates at its small input as written
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(merged(name), sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path), "--input", ZOO[name], "--device", "cpu"])
    assert result.exit_code == 0, result.output
