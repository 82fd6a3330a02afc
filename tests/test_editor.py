"""Editor and shell support: the spec JSON Schema, `--output FILE`, NO_COLOR, shell completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, load_text
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.errors import SpecError
from archcalc.core.grammar import COMPOSITES
from archcalc.core.kinds import REGISTRY
from archcalc.core.merges import MERGES
from archcalc.core.schema import spec_schema
from archcalc.core.spec import TOP_KEYS

runner = CliRunner()
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))


@lru_cache(maxsize=1)
def validator() -> jsonschema.Draft7Validator:
    schema = spec_schema()
    jsonschema.Draft7Validator.check_schema(schema)  # the schema itself is valid draft-07
    return jsonschema.Draft7Validator(schema)


def schema_errors(text: str) -> list[str]:
    return [e.message for e in validator().iter_errors(yaml.safe_load(text))]


# ---- the schema ------------------------------------------------------------------------------------------------


def test_schema_command_prints_the_schema_without_importing_torch() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == spec_schema()
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            "try:\n    app(['schema'], prog_name='archcalc')\nexcept SystemExit as e:\n    assert not e.code\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fvcore', 'numpy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "IMPORTED []" in proc.stdout, proc.stderr


def test_schema_covers_the_spec_grammar_and_every_kind() -> None:
    schema = spec_schema()
    assert set(schema["properties"]) == set(TOP_KEYS)
    defs = schema["definitions"]
    assert {k.split(".", 1)[1] for k in defs if k.startswith("kind.")} == set(REGISTRY)
    item = defs["item.loose"]["anyOf"][0]["properties"]
    assert set(COMPOSITES) | set(MERGES) | set(REGISTRY) <= set(item)
    for name, kind in REGISTRY.items():
        props = defs[f"kind.{name}"]["properties"]
        assert defs[f"kind.{name}"]["description"].startswith(kind.doc)
        for arg in kind.args:
            for key in (arg.name, *arg.aliases):
                assert key in props, (name, key)
                assert arg.doc in props[key]["description"]
            if not arg.required:  # the registry's default, as JSON
                assert props[arg.name]["default"] == (list(arg.default) if isinstance(arg.default, tuple)
                                                      else arg.default)
            if arg.choices:
                assert {"enum": list(arg.choices)} in props[arg.name]["anyOf"]


@pytest.mark.parametrize("path", SPECS, ids=[p.relative_to(ROOT / "specs").as_posix() for p in SPECS])
def test_every_bundled_spec_validates(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(data)]
    assert not errors, "\n".join(errors[:5])


# Every feature of the spec language in one spec the parser accepts: the schema must accept it too.
EVERYTHING = """
name: everything
description: one of each
inputs: {image: "3x32x32", mask: [1, 32, 32]}
args: {w: 8, use_bias: false, act_mode: nearest, half: 0.5}
defaults:
  conv: {bias: false, pad: 1}
  batchnorm: {eps: 0.001}
blocks:
  unit:
    description: conv, norm, optional pooling
    args: {out: ~, pool: 0, stride: 1}
    layers:
      - conv: {out: out, kernel: 3, stride: stride}
      - batchnorm
      - relu: {inplace: true}
      - maxpool: {kernel: 2}
        when: pool > 0
  res:
    args: {ch: ~}
    residual: [{conv: {out: ch, k: 3}}, batchnorm]
    shortcut: projection
    after: relu
  stage:
    args: {n: 2, ch: ~}
    repeat: n
    first: {res: {ch: ch}}
    block: [{res: {ch: ch, name: r}}]
layers:
  - unit: {out: w, name: stem}
  - conv: {out: "2 * w", kernel: [3, 3], padding: [[1, 1], 1], bias: use_bias, trainable: false}
    name: c2
  - repeat: 2
    name: rep
    block: {conv: {out: "w * (i + 2)", kernel: 1}}
  - parallel:
      - [{conv: {out: 4, kernel: 1}}]
      - conv: {out: 4, kernel: 3, padding: same}
      - [{maxpool: {kernel: 3, stride: 1, padding: 1}}, {conv: {filters: 4, kernel: 1}}]
    merge: concat
    name: mix
  - residual:
      - conv: {out: 12, kernel: 3, dilation: 1}
    shortcut: [{conv: {out: 12, kernel: 1}}]
  - stage: {ch: 12, n: 2, name: s1}
  - sequence: [{upsample: {scale_factor: 2, mode: act_mode}}, {avgpool: {kernel: 2}}]
    name: seq
  - concat: [seq, stem]
    name: cat
  - crop: {to: mask, name: crop}
    from: cat
  - mul: {from: [crop, crop], name: sq}
  - add: [sq, crop]
  - dropout: {p: half}
  - global_avgpool
  - linear: {out: 10, bias: true}
    name: fc
  - linear: {out: 2}
    from: fc
    name: aux
outputs:
  - main: aux
  - extra: fc
    when: w > 4
unused: allow
"""


def test_a_spec_with_every_feature_parses_and_validates() -> None:
    load_text(EVERYTHING)  # the parser accepts it
    assert schema_errors(EVERYTHING) == []


def test_specs_the_property_tests_draw_validate() -> None:
    # Random networks and DAGs the parser accepts (the property tests' generators) are accepted by the schema.
    from test_property import networks
    from test_property_graph import dags

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(networks(), dags())
    def check(network: tuple[str, str], dag: str) -> None:
        for text in (network[0], dag):
            assert schema_errors(text) == [], text

    check()


HEAD = "name: t\ninput: [3, 16, 16]\n"
BLOCK = "blocks:\n  b:\n    args: {c: 4}\n    layers: [{conv: {out: c, kernel: 1}}]\n"


@pytest.mark.parametrize("text, parser_says", [
    (HEAD + "layers: [{conv2d: {out: 8, kernel: 3}}]\n", "unknown layer kind or block 'conv2d'"),
    (HEAD + "layers: [relux]\n", "unknown layer kind or block 'relux'"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 3, strides: 2}}]\n", "unknown argument 'strides'"),
    (HEAD + BLOCK + "layers: [{conv: {out: 8, kernel: 3, strides: 2}}, b]\n", "unknown argument 'strides'"),
    (HEAD + "layers: [{conv: {out: true, kernel: 3}}]\n", "must be an integer"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 3, bias: 1}}]\n", "must be true or false"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 3, padding: -1}}]\n", "must be at least 0"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 0}}]\n", "must be at least 1"),
    (HEAD + "layers: [{upsample: {scale_factor: 2, mode: 7}}]\n", "must be one of nearest, linear"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 3}, nmae: c}]\n", "unexpected key 'nmae'"),
    (HEAD + BLOCK + "layers: [{conv: {out: 8, kernel: 3}, nmae: c}]\n", "unexpected key 'nmae'"),
    (HEAD + "layers: [{conv: {out: 8, kernel: 1}, relu: null}]\n", "one layer per list entry"),
    (HEAD + "layers: [relu, {add: [relu1]}]\n", "at least two tensor names"),
    (HEAD + BLOCK + "layers: [{repeat: 2, block: b, trainable: false}]\n", "unexpected key 'trainable'"),
    (HEAD + "layers: [{repeat: 2}]\n", "repeat needs 'block'"),
    (HEAD + "layers: [{parallel: [[relu], [relu]], merge: 3}]\n", "merge must be 'concat', 'add', 'sub' or 'mul'"),
    (HEAD + "defaults: {conv: {strides: 2}}\nlayers: [relu]\n", "unknown argument 'strides'"),
    (HEAD + "layer: [relu]\n", "unknown top-level key 'layer'"),
    ("name: t\ninput: [3, 0, 16]\nlayers: [relu]\n", "input sizes must be positive"),
    ("name: t\ninput: 3x16\nlayers: [relu]\ninputs: {a: [1, 2]}\n", "not both"),
    ("input: [3, 16, 16]\nlayers: [relu]\n", "the spec has no 'name'"),
    (HEAD + "blocks:\n  b:\n    layers: [relu]\n    shortcut: identity\nlayers: [b]\n", "unexpected key 'shortcut'"),
    (HEAD + "layers: [{relu: {name: a.b}}]\n", "must be letters, digits"),
])
def test_wrong_specs_are_rejected_by_the_parser_and_the_schema(text: str, parser_says: str) -> None:
    with pytest.raises(SpecError, match=re.escape(parser_says)):
        load_text(text)
    assert schema_errors(text), f"the schema accepts a spec the parser rejects:\n{text}"


# ---- --output FILE ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["calc", "resnet18"], ["calc", "resnet18", "--depth", "1"],
                                  ["compare", "vgg16", "resnet18", "--sort", "macs"]])
@pytest.mark.parametrize("fmt", ["table", "json", "csv", "md"])
def test_output_file_holds_what_stdout_would(tmp_path: Path, args: list[str], fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    shown = runner.invoke(app, [*args, "-f", fmt], env={"COLUMNS": "60"})  # stdout: fitted to 60 columns
    written = runner.invoke(app, [*args, "-f", fmt, "-o", str(out)], env={"COLUMNS": "60"})
    assert shown.exit_code == 0 and written.exit_code == 0, shown.output + written.output
    assert written.stdout == ""
    text = out.read_text(encoding="utf-8")
    assert "\x1b[" not in text
    if fmt == "table":  # the file has the table's natural width, whatever the terminal's: nothing left out
        natural = runner.invoke(app, [*args, "-f", fmt])
        assert text == natural.stdout and "left out to fit" not in text
        assert max(len(line) for line in text.splitlines()) > 60
    else:
        assert text == shown.stdout


def test_output_replaces_the_file(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("old\n" * 1000, encoding="utf-8")
    result = runner.invoke(app, ["calc", "lenet5", "-f", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == runner.invoke(app, ["calc", "lenet5", "-f", "csv"]).stdout


@pytest.mark.parametrize("args, message", [
    (["calc", "no_such_spec"], "no spec file or bundled spec named 'no_such_spec'"),
    (["compare", "vgg16", "no_such_spec"], "no spec file or bundled spec named 'no_such_spec'"),
    (["calc", "vgg16", "--input", "3x8x8"], "vgg16"),
    (["calc", "vgg16", "--fit", "1KiB"], "batch 1"),  # exit 1: not even batch 1 fits
])
def test_output_creates_nothing_on_error(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.txt"
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert not out.exists()


def test_output_to_an_unwritable_place_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["calc", "lenet5", "-o", str(tmp_path / "missing" / "out.txt")])
    assert result.exit_code == 2
    assert result.output.startswith("error: --output ") and "cannot write" in result.output
    assert "Traceback" not in result.output


# ---- NO_COLOR --------------------------------------------------------------------------------------------------

_SGR = re.compile(rb"\x1b\[([0-9;]*)m")


def _colour_codes(raw: bytes) -> set[str]:
    """SGR parameters that set a colour (30-39, 40-49, 90-97, 100-107; 38/48 extended), from raw output."""
    found = set()
    for params in _SGR.findall(raw):
        for p in params.decode().split(";"):
            if p.isdigit() and (30 <= int(p) <= 49 or 90 <= int(p) <= 107):
                found.add(p)
    return found


def _on_a_terminal(args: list[str], env: dict[str, str]) -> bytes:
    """archcalc's stdout and stderr on a pseudo-terminal, as a user sees them."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS")}
    full_env.update({"TERM": "xterm-256color", "COLUMNS": "150", "PYTHONPATH": str(ROOT), **env})
    proc = subprocess.Popen([sys.executable, "-m", "archcalc", *args], stdout=slave, stderr=slave, env=full_env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks)


def test_rich_consoles_follow_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    # archcalc's consoles leave colour to rich, which drops it under NO_COLOR even on a forced terminal.
    from rich.text import Text

    from archcalc.cli.options import err_console, out_console

    monkeypatch.setenv("FORCE_COLOR", "1")
    for make in (out_console, err_console):
        monkeypatch.delenv("NO_COLOR", raising=False)
        console = make()
        with console.capture() as coloured:
            console.print(Text("x", style="red"))
        assert _colour_codes(coloured.get().encode()) == {"31"}  # the check can see colour
        monkeypatch.setenv("NO_COLOR", "1")
        console = make()
        with console.capture() as plain:
            console.print(Text("x", style="red"))
        assert _colour_codes(plain.get().encode()) == set()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("args", [["calc", "lenet5"], ["compare", "lenet5", "alexnet"], ["kinds"], ["zoo"],
                                  ["calc", "no_such_spec"], ["calc", "--bogus"], ["--help"]])
def test_no_colour_codes_on_a_terminal_with_no_color(args: list[str]) -> None:
    raw = _on_a_terminal(args, {"NO_COLOR": "1", "FORCE_COLOR": "1"})
    assert raw.strip(), "no output"
    assert _colour_codes(raw) == set(), raw[:400]
    if args[0] in ("calc", "compare") and len(args) == 2 and not args[1].startswith(("no_", "--")):
        assert b"\x1b[" not in raw  # nor bold: the tables are written plain under NO_COLOR
        assert b"\x1b[1m" in _on_a_terminal(args, {})  # while a terminal without NO_COLOR gets bold headers


# ---- shell completion ------------------------------------------------------------------------------------------


def test_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def _complete(words: str, cwd: Path = ROOT) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_ARCHCALC_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}
    proc = subprocess.run([sys.executable, "-c", "from archcalc.cli import main; main()"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completion_of_commands_options_and_specs(tmp_path: Path) -> None:
    assert _complete("archcalc sch") == ["schema"]
    assert "--output" in _complete("archcalc calc vgg16 --out")
    assert _complete("archcalc calc resnet1") == ["resnet101", "resnet152", "resnet18"]
    assert "torchvision/resnet50" in _complete("archcalc compare vgg16 torchvision/res")
    (tmp_path / "mynet.yaml").write_text("name: x\n", encoding="utf-8")
    (tmp_path / "mydir").mkdir()
    (tmp_path / "mynotes.txt").write_text("", encoding="utf-8")
    assert _complete("archcalc calc my", cwd=tmp_path) == ["mydir" + os.sep, "mynet.yaml"]
