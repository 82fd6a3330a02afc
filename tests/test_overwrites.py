"""In-place layers that overwrite what autograd keeps for backward (core.overwrites), against torch's own verdict.

torch stamps each saved tensor with its version and refuses the backward when an in-place op has changed it since
("one of the variables needed for gradient computation has been modified by an inplace operation"). Each network
below is built by archcalc's builder and trained one step by torch; archcalc's analysis, which runs nothing, must
name an overwrite exactly when torch refuses. `trains` is written by hand from the rules of torch's autograd
(derivatives.yaml: relu/sigmoid/tanh keep their result, conv keeps its input for the weight's gradient, max pooling
its input and indices, batch norm its input, mul its factors) and is checked against torch too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.overwrites import overwrites
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module

HEAD = "name: t\ninput: [3, 8, 8]\nunused: allow\nlayers:\n  - conv: {out: 4, kernel: 3, pad: 1, name: a}\n"
IP = "{inplace: true}"

# (case, layers after the first conv `a`, torch trains it, (in-place layer, the layer whose saved tensor it overwrites))
CASES = [
    ("two in-place relus", f"  - relu: {IP}\n  - relu: {IP}\n", False, ("relu2", "relu1")),
    ("relu then in-place relu", f"  - relu\n  - relu: {IP}\n", False, ("relu2", "relu1")),
    ("sigmoid keeps its output", f"  - sigmoid\n  - relu: {IP}\n", False, ("relu1", "sigmoid1")),
    ("tanh keeps its output", f"  - tanh\n  - relu: {IP}\n", False, ("relu1", "tanh1")),
    ("conv keeps its input, not its output", f"  - relu: {IP}\n", True, None),
    ("batch norm then in-place relu", f"  - batchnorm\n  - relu: {IP}\n", True, None),
    ("batch norm, two in-place relus", f"  - batchnorm\n  - relu: {IP}\n  - relu: {IP}\n", False, ("relu2", "relu1")),
    ("max pool keeps its input", f"  - maxpool: {{kernel: 2}}\n  - relu: {IP}\n", True, None),
    ("in-place relu on what a conv read",
     f"  - conv: {{out: 4, kernel: 1}}\n    name: b\n  - relu: {IP}\n    from: a\n    name: r\n  - add: [b, r]\n",
     False, ("r", "b")),
    ("in-place relu on a product's factor",
     f"  - mul: [a, a]\n  - relu: {IP}\n    from: a\n    name: r\n  - add: [mul1, r]\n", False, ("r", "mul1")),
    ("in-place relu on a sum's input",
     f"  - add: [a, a]\n  - relu: {IP}\n    from: a\n    name: r\n  - add: [add1, r]\n", True, None),
    # silu_ and hardswish_ need their input for the gradient: autograd keeps a copy of it, not their result
    ("in-place silu then in-place relu", f"  - silu: {IP}\n  - relu: {IP}\n", True, None),
    ("in-place hardswish then in-place relu", f"  - hardswish: {IP}\n  - relu: {IP}\n", True, None),
    ("in-place relu then in-place hardsigmoid", f"  - relu: {IP}\n  - hardsigmoid: {IP}\n", False,
     ("hardsigmoid1", "relu1")),
    ("dropout then in-place relu", f"  - dropout: {{p: 0.5}}\n  - relu: {IP}\n", True, None),
]


def _torch_trains(tmp_path: Path, text: str) -> bool:
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    report = analyze(load_spec(path))
    model = build_module(report).train()
    torch.manual_seed(0)
    out = model(torch.randn(2, 3, 8, 8))
    tensors = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
    try:
        sum(t.sum() for t in tensors).backward()
    except RuntimeError as exc:
        assert "modified by an inplace operation" in str(exc), exc
        return False
    return True


@pytest.mark.parametrize(("case", "layers", "trains", "named"), CASES, ids=[c[0] for c in CASES])
def test_archcalc_names_an_overwrite_exactly_when_torch_refuses_the_backward(
        tmp_path: Path, case: str, layers: str, trains: bool, named: tuple[str, str] | None) -> None:
    text = HEAD + layers
    real = _torch_trains(tmp_path, text)
    assert real is trains, f"torch's verdict is not the one written by hand for {case!r}"
    report = analyze(load_spec(tmp_path / "t.yaml"))
    found = overwrites(report.graph)
    assert (not found) is real
    if named is not None:
        graph = report.graph
        assert (graph.ops[found[0].op].name, graph.ops[found[0].keeper].name) == named
        assert any(w.layer == named[0] and f"overwrites a tensor {named[1]} " in w.message for w in report.warnings)
    else:
        assert not any("cannot train it" in w.message for w in report.warnings)


def test_the_cases_cover_both_verdicts() -> None:
    assert {c[2] for c in CASES} >= {True, False}


def test_calc_warns_and_validate_refuses_before_running(tmp_path: Path) -> None:
    spec = tmp_path / "dbl.yaml"
    spec.write_text(HEAD + f"  - relu: {IP}\n  - relu: {IP}\n", encoding="utf-8")
    runner = CliRunner()
    calc = runner.invoke(app, ["calc", str(spec)])
    assert calc.exit_code == 0
    assert f"{spec}:7:5: warning: relu2: in place, it overwrites a tensor relu1 (relu) keeps" in calc.output
    result = runner.invoke(app, ["validate", str(spec), "--device", "meta"])  # refused before anything runs
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{spec}:7:5: relu2: in place" in result.output and "write 'inplace: false' here" in result.output
