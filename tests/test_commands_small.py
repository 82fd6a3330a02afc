"""Small command-line matters of issue 31: `kinds` lists the spec language's merges, composites and keys; a
top-level `when:` is switched by `--set`, as docs/spec.md says; `sweep -o`; a usage mistake reads `error: ...`; the
sweep plot's title is the spec's name; a Mermaid diagram past Mermaid's default limits gets a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


# ---- kinds ------------------------------------------------------------------------------------------------------

# What a spec writer can put in a spec besides a layer kind, written out from docs/spec.md.
WORDS = {"add": "merge", "concat": "merge", "mul": "merge", "repeat": "composite", "residual": "composite",
         "parallel": "composite", "sequence": "composite", "name": "item key", "from": "item key",
         "when": "item key", "trainable": "item key", "args": "block key", "layers": "block key"}


def test_kinds_lists_merges_composites_and_keys() -> None:
    data = json.loads(invoke("kinds", "-f", "json").stdout)
    listed = {k["kind"]: k for k in data if k["category"] != "layer"}
    assert {name: listed[name]["category"] for name in WORDS if name in listed} == WORDS
    keys = {name: [(a["name"], a["default"]) for a in listed[name]["args"]] for name in ("repeat", "residual",
                                                                                        "parallel")}
    assert keys == {"repeat": [("block", "required"), ("first", "none")],
                    "residual": [("shortcut", "none"), ("after", "none")], "parallel": [("merge", "none")]}
    assert all(k["doc"] for k in listed.values())
    table = invoke("kinds").stdout
    assert "merges, composites and keys" in table and "residual" in table and "block (required)" in table
    md = invoke("kinds", "-f", "md").stdout
    assert "| `parallel` | composite |" in md and "| `from` | item key |" in md


# ---- when: at the top level -------------------------------------------------------------------------------------

TOP_WHEN = """\
name: w
input: [3, 8, 8]
args: {aux: 0}
layers:
  - conv: {out: 4, kernel: 3}
  - conv: {out: 2, kernel: 1}
    when: aux > 0
  - relu
"""


def test_a_top_level_when_is_switched_by_set(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = str(write_spec(TOP_WHEN))
    off = json.loads(invoke("calc", path, "-f", "json").stdout)
    on = json.loads(invoke("calc", path, "-f", "json", "--set", "aux=1").stdout)
    assert [r["kind"] for r in off["layers"]] == ["conv", "relu"] and off["totals"]["params"] == 3 * 9 * 4 + 4
    assert [r["kind"] for r in on["layers"]] == ["conv", "conv", "relu"]
    assert on["totals"]["params"] == 3 * 9 * 4 + 4 + 4 * 2 + 2
    spec_md = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    assert "at the top level on the spec's `args`" in spec_md  # the docs say what it does


# ---- sweep -o, usage errors, the plot's title -------------------------------------------------------------------

def test_sweep_writes_its_output_to_a_file(tmp_path: Path) -> None:
    for fmt in ("table", "json", "csv", "md"):
        out = tmp_path / f"sweep.{fmt}"
        result = runner.invoke(app, ["sweep", "lenet5", "--batch", "1,2", "-f", fmt, "-o", str(out)])
        assert result.exit_code == 0 and result.stdout == "", result.output
        assert out.read_text(encoding="utf-8") == invoke("sweep", "lenet5", "--batch", "1,2", "-f", fmt).stdout


def test_sweep_refuses_to_write_over_its_spec(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(TOP_WHEN)
    result = runner.invoke(app, ["sweep", str(path), "--set", "aux=0,1", "-f", "json", "-o", str(path)])
    assert result.exit_code == 2 and "that is the spec this command reads" in result.output, result.output
    assert path.read_text(encoding="utf-8") == TOP_WHEN


@pytest.mark.parametrize("command", ["sweep", "calc", "check"])
def test_an_unknown_option_reads_error_colon(command: str) -> None:
    result = runner.invoke(app, [command, "lenet5", "--frobnicate"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: no such option: --frobnicate"), result.output
    assert "Usage:" not in result.output and "Error:" not in result.output
    bad = runner.invoke(app, [command, "lenet5", "--format", "xml"])
    assert bad.exit_code == 2 and bad.output.startswith("error: invalid value for '--format'"), bad.output


def test_the_sweep_plot_is_titled_with_the_specs_name(write_spec, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from archcalc.plot import data

    seen: list[str] = []
    real = data.sweep_plot

    def spy(rows, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(spec)
        return real(rows, spec, *args, **kwargs)

    monkeypatch.setattr(data, "sweep_plot", spy)
    path = write_spec(TOP_WHEN.replace("name: w", "name: tiny_net"))
    invoke("sweep", str(path), "--set", "aux=0,1", "--plot", str(tmp_path / "s.svg"), "-f", "csv")
    assert seen == ["tiny_net"] and (tmp_path / "s.svg").stat().st_size > 0


# ---- Mermaid's limits -------------------------------------------------------------------------------------------

def _chain(layers: int) -> str:
    return "name: chain\ninput: [1, 4, 4]\nlayers:\n" + "".join("  - relu\n" for _ in range(layers))


@pytest.mark.parametrize(("layers", "warned"), [(498, False), (499, True)])
def test_a_mermaid_diagram_past_500_edges_is_warned(write_spec, layers: int, warned: bool) -> None:  # type: ignore[no-untyped-def]
    # A chain of n layers has n + 1 edges (input -> first ... last -> output): 499 layers make 500, 500 make 501.
    result = runner.invoke(app, ["graph", str(write_spec(_chain(layers + 1)))])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(" --> ") == layers + 2
    assert ("warning: the Mermaid diagram has 501 edges" in result.stderr) is warned, result.stderr


def test_a_mermaid_diagram_past_50000_characters_is_warned(write_spec) -> None:  # type: ignore[no-untyped-def]
    # 200 layers with 200-character names: about 51,000 characters in 201 edges.
    text = "name: wide\ninput: [1, 4, 4]\nlayers:\n" + "".join(f"  - relu: {{name: {'r' * 196}{i:04d}}}\n"
                                                              for i in range(200))
    result = runner.invoke(app, ["graph", str(write_spec(text))])
    assert result.exit_code == 0, result.output
    size = len(result.stdout)
    assert size > 50_000 and f"has {size:,} characters" in result.stderr, (size, result.stderr)
    assert "edges" not in result.stderr
    dot = runner.invoke(app, ["graph", str(write_spec(text)), "-f", "dot"])
    assert dot.exit_code == 0 and "warning" not in dot.stderr
