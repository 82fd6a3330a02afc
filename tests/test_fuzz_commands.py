"""Bad input on every command surface is a message, never a traceback, and never a write over an input.

test_fuzz.py throws random specs at the analyzer; these throw random values at the commands added since: the graph
language (`from:`, merges of named tensors, `when:`, `outputs:`), sweep's and check's budgets and ranges, `--set`,
names drawn in diagrams, `-o` targets (the spec itself by other spellings and links, folders, missing folders), and
import targets. Each run goes through the CLI (typer's runner, in process) and must end in one of:

- exit 0 (or 1 where the command says 1 means "a check failed": check's budgets), with no exception;
- exit 2 with a message that says where: `FILE:LINE:COL: ` for a mistake in a spec, `error: ` for one in an option
  (a value of the wrong type included, which click finds before archcalc sees it);

and every file the command read is unchanged afterwards. The example counts are small so the default run stays
fast; ARCHCALC_FUZZ_EXAMPLES raises them (the `exhaustive` tier runs them at 10x)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from archcalc.cli.app import app

runner = CliRunner()
SCALE = int(os.environ.get("ARCHCALC_FUZZ_EXAMPLES", "0")) or None
FAST = settings(max_examples=SCALE or 40, deadline=None, suppress_health_check=list(HealthCheck))
MORE = settings(max_examples=(SCALE or 40) * 10, deadline=None, suppress_health_check=list(HealthCheck))

LOCATED = re.compile(r"(?m)^(\S[^\n]*?:\d+:\d+: \S|error: \S)")


def run(args: list[str], reads: list[Path], ok: tuple[int, ...] = (0,)) -> str:
    """Run the CLI; check the outcome is an answer or a message that says where, and that no input changed."""
    before = {p: p.read_bytes() for p in reads if p.is_file()}
    result = runner.invoke(app, args)
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (args, result.output, repr(exc))
    assert result.exit_code in (*ok, 2), (args, result.exit_code, result.output)
    if result.exit_code == 2:
        assert LOCATED.search(result.output), (args, result.output)
        assert "Traceback" not in result.output, (args, result.output)
        event("refused: " + (LOCATED.search(result.output).group(0)[:12]))  # type: ignore[union-attr]
    else:
        event(f"exit {result.exit_code}")
    for path, data in before.items():
        assert path.read_bytes() == data, f"{args} changed {path}"
    return result.output


# ---- the graph language -------------------------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d", "input", "$input", "nope", "a.conv1", "b ", "c\n", "", "1", "a.", ".a", "x.y.z"]
WHEN = st.one_of(st.sampled_from(["w > 2", "w and se", "not se", "se or not w", "(w", "w >", "se and", "true", "0",
                                  "x", "w == 4", "not (se > 0)", "w > 2 and w < 100", "[1]", "null"]),
                 st.integers(-2, 3), st.booleans(), st.none(), st.lists(st.integers(0, 2), max_size=2))
REF = st.one_of(st.sampled_from(NAMES), st.integers(0, 3), st.none(), st.lists(st.sampled_from(NAMES), max_size=2))


@st.composite
def graph_item(draw, index: int):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["conv", "relu", "add", "concat", "mul", "maxpool", "upsample", "crop", "unit",
                                 "batchnorm"]))
    name = draw(st.sampled_from(["a", "b", "c", "d", f"n{index}", None]))
    if kind in ("add", "concat", "mul"):
        item: dict = {kind: draw(st.one_of(st.lists(st.sampled_from(NAMES), max_size=4), REF))}
        if name:
            item["name"] = name
    else:
        args: dict = {"conv": {"out": draw(st.sampled_from([4, 8, "w", "w * 2", 0])), "kernel": 1},
                      "maxpool": {"kernel": draw(st.sampled_from([1, 2, 3]))},
                      "upsample": {draw(st.sampled_from(["size_of", "scale"])): draw(REF)},
                      "crop": {"to": draw(REF)}, "unit": {"w": draw(st.sampled_from([2, "w", -1]))}}.get(kind, {})
        if name:
            args["name"] = name
        item = {kind: args} if args else {kind: None} if draw(st.booleans()) else kind  # type: ignore[dict-item]
        if isinstance(item, dict) and item[kind] is None:
            item = kind  # type: ignore[assignment]
    if isinstance(item, dict) and draw(st.integers(0, 3)) == 0:
        item["from"] = draw(REF)
    if isinstance(item, dict) and draw(st.integers(0, 3)) == 0:
        item["when"] = draw(WHEN)
    return item


@st.composite
def graph_spec(draw):  # type: ignore[no-untyped-def]
    items = [draw(graph_item(i)) for i in range(draw(st.integers(1, 6)))]
    spec: dict = {"name": draw(st.sampled_from(["g", "g&amp;", "<b>", 'q"t', "$x^$", "a\x7fb", "\u0085", "é"])),
                  "input": [4, 8, 8], "args": {"w": 4, "se": draw(st.sampled_from([0, 1, "x"]))},
                  "blocks": {"unit": {"args": {"w": 2}, "layers": [{"conv": {"out": "w", "kernel": 1}},
                                                                   {"add": ["$input", "conv1"]}
                                                                   if draw(st.booleans()) else "relu"]}},
                  "layers": items}
    if draw(st.booleans()):
        spec["outputs"] = draw(st.one_of(st.lists(st.sampled_from(NAMES), max_size=3),
                                         st.dictionaries(st.sampled_from(["out", "aux", ""]), REF, max_size=2), REF))
    if draw(st.booleans()):
        spec["unused"] = draw(st.sampled_from(["allow", "error", 3]))
    return spec


def write(tmp: Path, spec: object) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@FAST
@given(graph_spec(), st.sampled_from([["calc", "-f", "json"], ["calc", "--depth", "1"], ["graph"],
                                      ["graph", "-f", "dot"], ["graph", "-d", "1"], ["compare", "lenet5"]]))
def test_graph_language(tmp_path_factory, spec, command) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path_factory.mktemp("g"), spec)
    run([command[0], str(path), *command[1:]], [path])


@pytest.mark.exhaustive
@MORE
@given(graph_spec(), st.sampled_from([["calc", "-f", "json"], ["graph", "-f", "dot"], ["graph", "-d", "1"]]))
def test_graph_language_longer(tmp_path_factory, spec, command) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path_factory.mktemp("g"), spec)
    run([command[0], str(path), *command[1:]], [path])


# ---- budgets, ranges and --set ------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.sampled_from(["5M", "1e400", "-1", "0", "nan", "inf", "1e9999999", "2T", "512MiB", "1.5KB",
                                     "9.3e18", "", "M", "5 M", "0x10", "1_000", "1e-9", "٣", "5MiBB"]),
                    st.integers(-10, 10**20).map(str), st.text(max_size=6))
RANGES = st.one_of(st.sampled_from(["1..8", "1..1e9", "8..1", "1,2,3", "1..", "..4", "0", "-1", "1..100000000",
                                    "1,,2", "1..2..3", "{1,2}", "1e3", "2**63", ""]), st.text(max_size=8))
SETS = st.one_of(st.sampled_from(["d3=2", "d3=1..3", "d3=1e400", "d3=[1,2", "d3=!!int x", "d3=" + "[" * 200,
                                  "nope=1", "=1", "d3", "d3=*a", "d3=&a 1", "d3={a: 1}", "d3=2**64", "d3=1,same",
                                  "d3=" + "9" * 5000, "d3=null", "d3=-1"]),
                 st.text(max_size=10).map(lambda t: "d3=" + t))


@FAST
@given(st.lists(st.tuples(st.sampled_from(["--max-params", "--max-macs", "--max-flops", "--max-peak-memory",
                                           "--max-train-memory", "--max-train-flops"]), NUMBERS), min_size=1,
                max_size=3), st.sampled_from([[], ["--batch", "3"], ["--optimizer", "adam"]]))
def test_check_budgets(budgets, extra) -> None:  # type: ignore[no-untyped-def]
    run(["check", "lenet5", *[x for pair in budgets for x in pair], *extra], [], ok=(0, 1))


@FAST
@given(NUMBERS, st.sampled_from(["resnet18", "lenet5"]))
def test_calc_fit(size, spec) -> None:  # type: ignore[no-untyped-def]
    run(["calc", spec, "--fit", size, "-f", "json"], [], ok=(0, 1))  # 1: no batch fits


@FAST
@given(st.lists(st.tuples(st.sampled_from(["--batch", "--input", "--set"]),
                          st.one_of(RANGES, SETS, st.sampled_from(["3x{8,16}", "3x8}", "3x{8", "3x{1..4}x8"]))),
                max_size=3),
       st.sampled_from([[], ["--pareto", "params,macs"], ["--where", "params < 5e6"], ["--where", "params <"],
                        ["--sort", "macs"], ["--sort", "nope"], ["--pareto", "d3"], ["-f", "json"]]))
def test_sweep_ranges(axes, extra) -> None:  # type: ignore[no-untyped-def]
    args = ["sweep", "resnet18", "--max-points", "16", "-j", "1"]
    for option, value in axes:
        args += [option, value]
    run(args + extra, [])


@FAST
@given(st.lists(SETS, min_size=1, max_size=2),
       st.sampled_from([["calc"], ["check", "--max-params", "1G"], ["graph"], ["compare", "lenet5"]]))
def test_set_values(sets, command) -> None:  # type: ignore[no-untyped-def]
    args = [command[0], "resnet18", *command[1:]]
    for s in sets:
        args += ["--set", s]
    run(args, [], ok=(0, 1) if command[0] == "check" else (0,))


# ---- names drawn in diagrams --------------------------------------------------------------------------------------

NAME_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@FAST
@given(NAME_TEXT, NAME_TEXT, st.sampled_from(["mermaid", "dot"]))
def test_names_in_diagrams(tmp_path_factory, net, layer, fmt) -> None:  # type: ignore[no-untyped-def]
    spec = {"name": net, "input": [3, 8, 8], "layers": [{"conv": {"out": 4, "kernel": 3, "name": layer}}, "relu"]}
    path = write(tmp_path_factory.mktemp("n"), spec)
    out = run(["graph", str(path), "-f", fmt], [path])
    if fmt == "mermaid" and "error" not in out.lower()[:6]:
        # Mermaid front matter and labels: no control characters survive into the diagram text
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", out), out


# ---- -o targets ---------------------------------------------------------------------------------------------------

LENET = "name: lenet\ninput: [1, 32, 32]\nlayers:\n  - conv: {out: 6, kernel: 5}\n  - flatten\n  - linear: {out: 10}\n"
COMMANDS = [["calc", "{spec}"], ["calc", "{spec}", "-f", "json"], ["compare", "lenet5", "{spec}"],
            ["graph", "{spec}"], ["graph", "{spec}", "-f", "dot"], ["export", "{spec}"],
            ["export", "{spec}", "--force"]]


def target(tmp: Path, spec: Path, how: str) -> str:
    """An --output path that is the spec itself spelt another way, or a place a file cannot be written. (Not a name
    with a NUL: no command line can hold one, and click's own path check raises on it before archcalc runs.)"""
    if how == "hardlink":
        os.link(spec, tmp / "hard.yaml")
        return str(tmp / "hard.yaml")
    if how == "symlink":
        (tmp / "soft.yaml").symlink_to(spec)
        return str(tmp / "soft.yaml")
    return {"same": str(spec), "dotted": str(tmp / "." / spec.name), "parent": str(tmp / "sub" / ".." / spec.name),
            "folder": str(tmp), "missing folder": str(tmp / "no" / "such" / "out.txt"), "long": str(tmp / ("a" * 300)),
            "empty": "", "new": str(tmp / "new.out")}[how]


@FAST
@given(st.sampled_from(COMMANDS), st.sampled_from(["same", "dotted", "parent", "hardlink", "symlink", "folder",
                                                   "missing folder", "long", "empty", "new"]))
def test_output_targets(tmp_path_factory, command, how) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("o")
    (tmp / "sub").mkdir()
    spec = tmp / "net.yaml"
    spec.write_text(LENET, encoding="utf-8")
    out = target(tmp, spec, how)
    run([c.format(spec=spec) for c in command] + ["-o", out], [spec])
    assert spec.read_text(encoding="utf-8") == LENET
    if how in ("same", "dotted", "parent", "hardlink", "symlink"):
        assert runner.invoke(app, [c.format(spec=spec) for c in command] + ["-o", out]).exit_code == 2


# ---- import targets -----------------------------------------------------------------------------------------------

MODULES = '''
import torch
from torch import nn


def good():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def not_a_module():
    return 3


def raises():
    raise RuntimeError("no")


class Loop(nn.Module):
    def forward(self, x):
        while x.sum() > 0:
            x = x - 1
        return x


def loop():
    return Loop()
'''


@FAST
@given(st.sampled_from(["{py}:good", "{py}:not_a_module", "{py}:raises", "{py}:loop", "{py}:nothing", "{py}",
                        "{py}:", ":", "no.such.module:f", "torch.nn:Conv2d", "torch.nn:ReLU", "math:sqrt",
                        "{bad}:f", "{tmp}:f", "torch.nn:Conv2d.weight", "torch..nn:ReLU"]),
       st.sampled_from([[], ["--kwargs", "{}"], ["--kwargs", "[1]"], ["--kwargs", "{\"in_channels\": 3}"],
                        ["--kwargs", '{"in_channels": 3, "out_channels": 4, "kernel_size": 3}'],
                        ["--kwargs", "{"], ["--kwargs", '{"x": ' + "9" * 30 + "}"]]),
       st.sampled_from([["-i", "3x8x8"], ["-i", "3x0x8"], ["-i", "x"], ["-i", "3x8x8x8x8x8"], []]))
def test_import_targets(tmp_path_factory, model, kwargs, shape) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("i")
    py, bad = tmp / "models.py", tmp / "broken.py"
    py.write_text(MODULES, encoding="utf-8")
    bad.write_text("def f(:\n", encoding="utf-8")
    out = tmp / "out.yaml"
    run(["import", model.format(py=py, bad=bad, tmp=tmp), *kwargs, *shape, "-o", str(out)], [py, bad])
