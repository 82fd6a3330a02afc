"""`$input`: inside a block or group, the input of the innermost enclosing one — how a block adds its own input
(ResNet's identity shortcut, He et al. 2016, Fig. 2) without naming the tensor that happens to precede it.

Oracles: plain torch.nn modules written here, and hand arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module
from archcalc.torch.validate import validate

runner = CliRunner()

BASIC = """
name: t
input: [8, 6, 6]
blocks:
  basic:
    args: {out: ~}
    layers:
      - conv: {out: out, kernel: 3, padding: 1, name: conv1}
      - relu: {name: relu}
      - add: [relu, $input]
layers:
  - conv: {out: 8, kernel: 1, name: stem}
  - repeat: 2
    name: layer1
    block: {basic: {out: 8}}
  - add: [layer1, $input]
"""


class Basic(nn.Module):
    """BASIC in plain torch.nn: each copy adds its own input; the last add is the network's input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(8, 8, 1)
        self.c = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for conv in self.c:
            y = torch.relu(conv(y)) + y
        return y + x


def test_a_block_adds_its_own_input(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(BASIC)))
    reads = {r.name: r.reads for r in report.rows}
    assert reads["layer1.0.add1"] == ("layer1.0.relu", "stem")  # copy 0's input is the stem
    # copy 1's input is copy 0's output (tensors are named after the op that made them)
    assert reads["layer1.1.add1"] == ("layer1.1.relu", "layer1.0.add1")
    assert reads["add1"] == ("layer1.1.add1", "input")  # at the top, `$input` is the network's input
    assert report.totals.params == (8 * 8 + 8) + 2 * (8 * 8 * 9 + 8)
    assert report.totals.rf == (5, 5)  # two 3x3 convs in series; the identity paths are narrower
    ref = Basic()
    model = build_module(report)
    for mine, theirs in zip(model.parameters(), ref.parameters()):
        mine.data.copy_(theirs.data)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-6)
    v = validate(load_spec(write_spec(BASIC)), "cpu", batch=2)
    assert v.ok, [str(c) for c in v.failures]


NESTED = """
name: t
input: [4, 5, 5]
blocks:
  outer:
    layers:
      - conv: {out: 4, kernel: 1, name: a}
      - sequence:
          - conv: {out: 4, kernel: 1, name: b}
          - add: [b, $input]           # the group's input: a
        name: g
      - add: [g, $input]               # the block's input
layers:
  - outer: {name: o}
"""


def test_the_innermost_enclosing_input(write_spec) -> None:  # type: ignore[no-untyped-def]
    reads = {r.name: r.reads for r in analyze(load_spec(write_spec(NESTED))).rows}
    assert reads["o.g.add1"] == ("o.g.b", "o.a")
    assert reads["o.add1"] == ("o.g.add1", "input")


def test_several_inputs_top_level_is_the_first(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = ("name: t\ninputs: {image: [3, 4, 4], mask: [3, 4, 4]}\nlayers:\n  - relu: {name: r}\n"
            "    from: mask\n  - add: [r, $input]\n")
    reads = {r.name: r.reads for r in analyze(load_spec(write_spec(text))).rows}
    assert reads["add1"] == ("r", "image")


def test_a_misspelt_block_input_is_located_and_suggested(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(BASIC.replace("[relu, $input]", "[relu, $inptu]"))
    with pytest.raises(SpecError) as info:
        analyze(load_spec(path))
    message = str(info.value)
    assert message.startswith(f"{path}:10:21:") and "no tensor named '$inptu'" in message
    assert "did you mean '$input'" in message
    # the per-scope bindings behind `$input` are not offered as names
    assert "layer1.0.$input" not in message
    result = runner.invoke(app, ["calc", str(path)])
    assert result.exit_code == 2 and f"{path}:10:21:" in result.stderr and "Traceback" not in result.stderr
