"""A block with several outputs, collapsed by --depth, shows what its layers show (issue 31): each output's shape,
the tensors it reads, the network outputs it feeds; compare lists every output of a network. The expected values
are written out from the spec below by hand."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from archcalc.cli.app import app

runner = CliRunner()

# `pair` makes two tensors that leave it: `wide` (8x8x8, read by the output `a`) and `narrow` (4x4x4, its result,
# read by `head`); `head` is a one-output block.
SPEC = """\
name: two
input: [3, 8, 8]
blocks:
  pair:
    layers:
      - conv: {out: 8, kernel: 3, padding: 1, name: wide}
      - conv: {out: 4, kernel: 2, stride: 2, name: narrow}
  head:
    layers:
      - conv: {out: 2, kernel: 1}
      - relu
layers:
  - pair: {name: p}
  - head: {name: h}
outputs: {a: p.wide, b: h}
"""


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_collapsed_block_lists_its_outputs_reads_and_feeds(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = str(write_spec(SPEC))
    rows = {r["name"]: r for r in json.loads(run("calc", path, "-d", "1", "-f", "json"))["layers"]}
    assert rows["p"]["outputs"] == {"p.wide": [8, 8, 8], "p.narrow": [4, 4, 4]}
    assert rows["p"]["output"] == [8, 8, 8]  # the first of them
    assert rows["p"]["reads"] == ["input"] and rows["h"]["reads"] == ["p.narrow"]
    assert rows["p"]["feeds"] == ["a", "b"] and rows["h"]["feeds"] == ["b"]
    assert "outputs" not in rows["h"] and rows["h"]["output"] == [2, 4, 4]
    table = run("calc", path, "-d", "1")
    lines = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    assert lines[0][:3] == ["p", "pair", "8×8×8"] and lines[0][-1] == "a,b"  # the feeds column is filled
    assert lines[1][:3] == ["", "", "4×4×4"] and lines[1][-1] == ""
    assert lines[2][:3] == ["h", "head", "2×4×4"] and lines[2][-1] == "b"
    assert "\np,pair,8x8x8 4x4x4," in run("calc", path, "-d", "1", "-f", "csv")
    assert "| p | pair | 8×8×8, 4×4×4 |" in run("calc", path, "-d", "1", "-f", "md")
    mermaid = run("graph", path, "-d", "1")
    assert '["p<br>pair<br>8×8×8<br>4×4×4<br>' in mermaid
    assert 'n1 -->|"4×4×4"| n2' in mermaid and "n1 --> n3" in mermaid  # to h (labelled), to the output a


def test_compare_lists_every_output_of_a_network(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = str(write_spec(SPEC))
    assert "8x8x8 2x4x4" in run("compare", path, "lenet5", "-f", "csv")
    assert "| 8×8×8, 2×4×4 |" in run("compare", path, "-f", "md")
    assert json.loads(run("compare", path, "-f", "json"))[0]["totals"]["output"] == [8, 8, 8]  # the first output
