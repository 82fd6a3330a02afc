"""`archcalc graph`: Mermaid and DOT diagrams of the analysed graph (nodes, labels, edges), --depth, SVG."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, load_text, report_of
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.diagram import diagram
from archcalc.core.resolve import bundled
from archcalc.render.diagram import dot, mermaid

runner = CliRunner()

# A stem, a residual (identity shortcut, a relu after the sum), a concat of a branch with an identity branch, a head.
TINY = """
name: tiny
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1, name: stem}
  - residual:
      - conv: {out: 4, kernel: 3, padding: 1, name: c1}
      - relu: {name: r1}
    name: res
    after: [{relu: {name: act}}]
  - parallel:
      - [{conv: {out: 2, kernel: 1, name: a}}]
      - []
    name: mix
  - global_avgpool: {name: pool}
  - linear: {out: 5, name: fc}
"""

# By hand. Params: stem 4*3*3*3 + 4 = 112; c1 4*4*3*3 + 4 = 148; a 2*4 + 2 = 10; fc 6*5 + 5 = 35.
# MACs: stem 4*8*8 * 27 = 6,912; c1 4*8*8 * 36 = 9,216; a 2*8*8 * 4 = 512; fc 6*5 = 30.
TINY_NODES = {
    "input": ["input", "3×8×8"],
    "stem": ["stem", "conv 3/1 p1", "4×8×8", "112 params, 6.91 K MACs"],
    "res.c1": ["res.c1", "conv 3/1 p1", "4×8×8", "148 params, 9.22 K MACs"],
    "res.r1": ["res.r1", "relu", "4×8×8", "0 params, 0 MACs"],
    "res.add": ["res.add", "add 2 inputs", "4×8×8", "0 params, 0 MACs"],
    "res.act": ["res.act", "relu", "4×8×8", "0 params, 0 MACs"],
    "mix.branch1.a": ["mix.branch1.a", "conv 1/1 p0", "2×8×8", "10 params, 512 MACs"],
    "mix.concat": ["mix.concat", "concat 2 inputs", "6×8×8", "0 params, 0 MACs"],
    "pool": ["pool", "global_avgpool global", "6×1×1", "0 params, 0 MACs"],
    "fc": ["fc", "linear 6 -> 5", "5", "35 params, 30 MACs"],
    "output:output": ["output", "5"],
}
TINY_EDGES = {
    ("input", "stem"), ("stem", "res.c1"), ("res.c1", "res.r1"), ("res.r1", "res.add"), ("stem", "res.add"),
    ("res.add", "res.act"), ("res.act", "mix.branch1.a"), ("mix.branch1.a", "mix.concat"), ("res.act", "mix.concat"),
    ("mix.concat", "pool"), ("pool", "fc"), ("fc", "output:output"),
}


# ---- reading the text back (independent parsers of the two languages) -------------------------------------------

_DOT_STRING = r'"((?:[^"\\]|\\.)*)"'


def dot_unescape(text: str) -> str:
    """What graphviz draws for a quoted string: backslash escapes undone, then HTML entities (`&amp;` is `&`)."""
    return html.unescape(re.sub(r"\\(.)", lambda m: m.group(1), text))


def parse_dot(text: str) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """node id -> label lines, and the edges, from DOT text (quoted ids, labels with \\n line breaks)."""
    nodes, edges = {}, set()
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    for line in text.splitlines()[1:-1]:
        if m := re.fullmatch(rf"  {_DOT_STRING} -> {_DOT_STRING};", line):
            edges.add((dot_unescape(m.group(1)), dot_unescape(m.group(2))))
        elif m := re.fullmatch(rf"  {_DOT_STRING} \[label={_DOT_STRING}(, [^\]\"]*(?:\"[^\"]*\"[^\]\"]*)*)?\];", line):
            label = m.group(2)
            assert not re.search(r'(?<!\\)(?:\\\\)*"', label)  # no unescaped quote inside
            nodes[dot_unescape(m.group(1))] = [dot_unescape(part) for part in re.split(r"(?<!\\)\\n", label)]
        else:
            assert line.startswith(("  graph [", "  node [", "  edge [")), line
    return nodes, edges


_MERMAID_ENTITIES = {"quot": '"', "lt": "<", "gt": ">", "amp": "&"}


def mermaid_unescape(text: str) -> str:
    return re.sub(r"#(\w+);", lambda m: _MERMAID_ENTITIES.get(m.group(1)) or chr(int(m.group(1))), text)


def parse_mermaid(text: str) -> tuple[dict[str, list[str]], set[tuple[str, str]], str]:
    """Mermaid node id -> label lines, the edges by label-derived name, and the title."""
    head, body = text.split("\n---\n", 1)
    title = json.loads(head.removeprefix("---\ntitle: "))
    lines = body.splitlines()
    assert lines[0] == "flowchart TB"
    labels: dict[str, list[str]] = {}
    edges = set()
    for line in lines[1:]:
        if m := re.fullmatch(r'  (n\d+)(\(\["|\["|\{\{"|\[\[")([^"]*)("\]\)|"\]|"\}\}|"\]\])', line):
            labels[m.group(1)] = [mermaid_unescape(part) for part in m.group(3).split("<br>")]
        elif m := re.fullmatch(r"  (n\d+) --> (n\d+)", line):
            edges.add((m.group(1), m.group(2)))
        else:
            assert line.startswith(("  classDef unused", "  class ")), line
    return labels, edges, title


def mermaid_by_name(text: str) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """As parse_mermaid, with nodes keyed by the name on their label's first line (output nodes: output:NAME)."""
    labels, edges, _ = parse_mermaid(text)

    def key(lines: list[str]) -> str:
        first = lines[0]
        if first.startswith("output") and len(lines) == 2:
            return "output:" + (first.removeprefix("output ") if first != "output" else "output")
        return first.removeprefix("input ") if len(lines) == 2 else first

    names = {i: key(lines) for i, lines in labels.items()}
    return {names[i]: lines for i, lines in labels.items()}, {(names[a], names[b]) for a, b in edges}


# ---- the hand-written spec --------------------------------------------------------------------------------------


def test_tiny_at_full_depth_has_the_hand_derived_nodes_labels_and_edges() -> None:
    d = diagram(analyze(load_text(TINY)))
    nodes, edges = parse_dot(dot(d))
    assert nodes == TINY_NODES
    assert edges == TINY_EDGES
    nodes, edges = mermaid_by_name(mermaid(d))
    assert nodes == TINY_NODES
    assert edges == TINY_EDGES


def test_tiny_collapsed_to_depth_1() -> None:
    # res: c1 alone has cost (148 params, 9,216 MACs); mix: a (10, 512). The identity branch is no node.
    nodes, edges = parse_dot(dot(diagram(analyze(load_text(TINY)), depth=1)))
    assert nodes == {
        "input": ["input", "3×8×8"], "stem": TINY_NODES["stem"],
        "res": ["res", "residual", "4×8×8", "148 params, 9.22 K MACs"],
        "mix": ["mix", "parallel", "6×8×8", "10 params, 512 MACs"],
        "pool": TINY_NODES["pool"], "fc": TINY_NODES["fc"], "output:output": TINY_NODES["output:output"],
    }
    assert edges == {("input", "stem"), ("stem", "res"), ("res", "mix"), ("mix", "pool"), ("pool", "fc"),
                     ("fc", "output:output")}


def test_tiny_at_depth_2_keeps_the_branch_as_a_node_and_drops_the_identity_branch() -> None:
    nodes, edges = parse_dot(dot(diagram(analyze(load_text(TINY)), depth=2)))
    assert set(nodes) == {"input", "stem", "res.c1", "res.r1", "res.add", "res.act", "mix.branch1", "mix.concat",
                          "pool", "fc", "output:output"}
    assert nodes["mix.branch1"] == ["mix.branch1", "branch", "2×8×8", "10 params, 512 MACs"]
    assert ("res.act", "mix.branch1") in edges and ("mix.branch1", "mix.concat") in edges
    assert ("res.act", "mix.concat") in edges  # the identity branch: the merge reads the block's input itself


def test_labels_are_escaped_for_dot_and_mermaid() -> None:
    # The spec's name and output names may hold any character; layer names cannot (letters, digits, _ and -).
    weird = 'we"ird \\N <b> #1; & 100% `x`'
    text = TINY.replace("name: tiny", f"name: {json.dumps(weird)}") + f"outputs:\n  - {json.dumps(weird)}: fc\n"
    d = diagram(analyze(load_text(text)))
    dot_text = dot(d)
    nodes, _ = parse_dot(dot_text)
    assert nodes["output:" + weird] == ["output " + weird, "5"]
    m = re.match(rf"digraph {_DOT_STRING} {{", dot_text)
    assert m and dot_unescape(m.group(1)) == weird
    assert "\\N" not in dot_text.replace("\\\\", "")  # a backslash in a label never starts an escString sequence
    labels, _, title = parse_mermaid(mermaid(d))
    assert title == f"{weird} — input 3×8×8"
    assert ["output " + weird, "5"] in labels.values()


@pytest.mark.parametrize(("name", "shown"), [
    ("R&amp;D", "R&amp;D"),  # graphviz reads entities in strings: written as is it was drawn as 'R&D'
    ("a&lt;b &#65;", "a&lt;b &#65;"),
    ("nul\x00here", "nul\\x00here"),  # a NUL ended graphviz's input; YAML refuses it
    ("del\x7fc1\x9bbell\x07", "del\\x7fc1\\x9bbell\\x07"),  # DEL and C1 made the Mermaid front matter invalid YAML
    ("tab\there", "tab here"),
])
def test_entities_and_control_characters_in_names(name: str, shown: str) -> None:
    text = TINY.replace("name: tiny", f"name: {json.dumps(name)}") + f"outputs:\n  - {json.dumps(name)}: fc\n"
    d = diagram(analyze(load_text(text)))
    dot_text = dot(d)
    assert all(c == "\n" or c.isprintable() for c in dot_text)
    nodes, _ = parse_dot(dot_text)  # as graphviz reads it: entities decoded
    assert nodes["output:" + shown] == ["output " + shown, "5"]
    m = re.match(rf"digraph {_DOT_STRING} {{", dot_text)
    assert m and dot_unescape(m.group(1)) == shown
    mermaid_text = mermaid(d)
    front = yaml.safe_load(mermaid_text.split("\n---\n", 1)[0].removeprefix("---\n"))  # YAML refuses DEL and C1
    assert front == {"title": f"{shown} — input 3×8×8"}
    labels, _, _ = parse_mermaid(mermaid_text)
    assert ["output " + shown, "5"] in labels.values()


def test_unused_layers_are_marked() -> None:
    text = TINY + "unused: allow\noutputs: [pool]\n"
    d = diagram(analyze(load_text(text)))
    assert [n.id for n in d.nodes if not n.used] == ["fc"]
    assert re.search(r'"fc" \[.*style="rounded,dashed".*color=gray', dot(d))
    assert re.search(r"class n\d+ unused", mermaid(d))


# ---- every bundled spec -----------------------------------------------------------------------------------------

SPECS = sorted(bundled())


@pytest.mark.parametrize("name", SPECS)
def test_every_bundled_spec_has_one_node_per_row_and_its_reads_as_edges(name: str) -> None:
    report = report_of(name)
    data = json.loads(runner.invoke(app, ["calc", name, "-f", "json"]).stdout)  # the JSON contract's reads
    rows = {layer["name"] for layer in data["layers"]}
    inputs = set(data["inputs"]) if data.get("inputs") else {"input"}
    expected_edges = {(r, layer["name"]) for layer in data["layers"] for r in layer["reads"]}
    outputs = {"output:" + o for o in data["outputs"]} if data.get("outputs") else {"output:output"}
    d = diagram(report)
    nodes, edges = parse_dot(dot(d))
    assert set(nodes) == rows | inputs | outputs
    assert len(nodes) == len(data["layers"]) + len(inputs) + len(outputs)
    assert {e for e in edges if not e[1].startswith("output:")} == expected_edges
    assert {e[1] for e in edges if e[1].startswith("output:")} == outputs
    labels, m_edges, _ = parse_mermaid(mermaid(d))
    assert len(labels) == len(nodes) and len(m_edges) == len(edges)


# ---- the command ------------------------------------------------------------------------------------------------


def test_graph_command_formats_and_files(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["graph", "resnet18", "--depth", "1"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("---\ntitle: ") and "flowchart TB" in shown.stdout
    for suffix, start in ((".mmd", "---\n"), (".dot", "digraph "), (".gv", "digraph ")):
        out = tmp_path / f"net{suffix}"
        result = runner.invoke(app, ["graph", "resnet18", "-d", "1", "-o", str(out)])
        assert result.exit_code == 0 and result.stdout == "", result.output
        assert out.read_text(encoding="utf-8").startswith(start)
    dot_out = runner.invoke(app, ["graph", "resnet18", "-d", "1", "-f", "dot"]).stdout
    assert dot_out == (tmp_path / "net.dot").read_text(encoding="utf-8")


def test_graph_of_an_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["graph", "lenet5", "-o", str(tmp_path / "net.png")])
    assert result.exit_code == 2
    assert result.output.startswith("error: --output ") and "give --format mermaid, dot or svg" in result.output
    assert not (tmp_path / "net.png").exists()


def _fake_dot(folder: Path, script: str) -> None:
    folder.mkdir()
    program = folder / "dot"
    program.write_text(f"#!{sys.executable}\nimport sys\n{script}\n", encoding="utf-8")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(sys.platform == "win32", reason="a fake dot script on PATH")
def test_svg_without_graphviz_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "net.svg"
    result = runner.invoke(app, ["graph", "lenet5", "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: rendering SVG needs graphviz's dot program")
    assert "use --format dot or mermaid" in result.output
    assert not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="a fake dot script on PATH")
def test_svg_pipes_the_dot_text_through_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for graphviz: checks it is asked for SVG, and wraps the DOT text it was given.
    _fake_dot(tmp_path / "bin", "assert sys.argv[1:] == ['-Tsvg'], sys.argv\n"
                                "sys.stdout.write('<svg>' + sys.stdin.read() + '</svg>')")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    out = tmp_path / "net.svg"
    result = runner.invoke(app, ["graph", "lenet5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    dot_text = runner.invoke(app, ["graph", "lenet5", "-f", "dot"]).stdout
    assert out.read_text(encoding="utf-8") == f"<svg>{dot_text}</svg>\n"


@pytest.mark.skipif(sys.platform == "win32", reason="a fake dot script on PATH")
def test_a_failing_dot_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dot(tmp_path / "bin", "sys.stderr.write('Error: syntax error in line 1\\n'); sys.exit(1)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    out = tmp_path / "net.svg"
    result = runner.invoke(app, ["graph", "lenet5", "-f", "svg", "-o", str(out)])
    assert result.exit_code == 2
    assert "-Tsvg failed: Error: syntax error in line 1" in result.output and not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="a fake dot script on PATH")
def test_svg_of_a_huge_diagram_is_refused_before_running_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6,000-layer chain: graphviz's layout of a graph that size runs for minutes (60,000 layers never finished),
    so it is refused before dot starts; --depth that collapses it is drawn."""
    ran = tmp_path / "dot-ran"
    _fake_dot(tmp_path / "bin", f"open({str(ran)!r}, 'w').close()\nsys.stdout.write('<svg/>')")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    spec = tmp_path / "chain.yaml"
    spec.write_text("name: chain\ninput: 8x8\nlayers:\n  - {repeat: 6000, block: relu, name: chain}\n",
                    encoding="utf-8")
    out = tmp_path / "chain.svg"
    result = runner.invoke(app, ["graph", str(spec), "-o", str(out)])
    assert result.exit_code == 2, result.output
    # 6,000 relus, the input and the output
    assert result.output.startswith("error: --format svg: the diagram has 6,002 nodes, more than the 5,000")
    assert "--depth N" in result.output and "--format dot" in result.output
    assert not ran.exists() and not out.exists()
    result = runner.invoke(app, ["graph", str(spec), "-d", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert ran.exists() and out.read_text(encoding="utf-8") == "<svg/>\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_svg_with_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "net.svg"
    result = runner.invoke(app, ["graph", "resnet18", "-d", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "<svg" in text and "layer1.0" in text


def test_manual_shows_what_graph_prints() -> None:
    text = (ROOT / "docs" / "graph.md").read_text(encoding="utf-8")
    block = text.split("`archcalc graph unet --depth 1`", 1)[1].split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == runner.invoke(app, ["graph", "unet", "--depth", "1"]).stdout
