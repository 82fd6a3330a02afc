"""The worst inputs: each reproducer exits 2 with a located `file:line:col:` message, fast, never a
traceback, a hang or a silently different network."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import exits_cleanly
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.conventions import CONVENTIONS
from archcalc.core.expr import ExprError, evaluate

runner = CliRunner()
HEADER = "name: bad\ninput: [3, 32, 32]\n"


def fails(path: Path, *args: str, where: str | None = None, pattern: str = "", seconds: float = 5.0) -> str:
    """Run calc on a bad spec: exit 2, no traceback, a `path:line:col: ` message matching `pattern`."""
    start = time.perf_counter()
    result = runner.invoke(app, ["calc", str(path), "-f", "json", *args])
    elapsed = time.perf_counter() - start
    exits_cleanly(result, 2)
    assert result.stdout == ""
    message = result.stderr.strip()
    location = re.escape(f"{path}:{where}: ") if where else re.escape(f"{path}:") + r"\d+:\d+: "
    assert re.match(r"(error: )?" + location, message), message
    assert re.search(pattern, message), message
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    return message


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def layer_with(value: str) -> str:
    return HEADER + f"layers:\n  - conv: {{out: {json.dumps(value)}, kernel: 1}}\n"


# ---- the evaluator --------------------------------------------------------------------------------------------

HOSTILE = [
    ("ceil_div(4, 0)", r"division by zero"),
    ("round_to(8, 0)", r"division by zero"),
    ("0**-1", r"division by zero"),
    ("1e300**2", r"exceeds 2\*\*63"),
    ("round_to(1e308*10, 8)", r"exceeds 2\*\*63|overflows"),
    ("((((2**64)**64)**64)**64)", r"exceeds 2\*\*63"),
    ("((((((2**64)**64)**64)**64)**64)**64)", r"exceeds 2\*\*63"),  # hung before: stacked powers
    ("(" * 200 + "1" + ")" * 200, r"nested more than 64 levels"),
    ("**".join(["1"] * 5000), r"too long"),
    ("**".join(["1"] * 500), r"nested more than 64 levels"),
    ("2**62 * 4", r"exceeds 2\*\*63"),
    ("9 ** (2 ** 62)", r"exceeds 2\*\*63"),  # bounded before computing: the result would have 2**63 digits
    ("2 ** 100000000 // 2 ** 99999999", r"exceeds 2\*\*63"),
    ("9" * 400 + " + 1", r"exceeds 2\*\*63"),
    ("(-8) ** 0.5", r"does not give a real number"),
    ("1e400 * 1", r"overflows|not finite"),
]


@pytest.mark.parametrize(("text", "pattern"), HOSTILE, ids=[h[0][:30] for h in HOSTILE])
def test_hostile_arithmetic_is_a_located_error(tmp_path, text, pattern) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExprError, match=pattern):
        evaluate(text, {})
    fails(write(tmp_path, layer_with(text)), where="4:17", pattern=pattern, seconds=3)


def test_bounded_arithmetic_still_works() -> None:
    assert evaluate("10**15", {}) == 10**15
    assert evaluate("2**62", {}) == 2**62
    assert evaluate("((((((1)))))) + 2 ** 3 ** 2", {}) == 1 + 2**9  # right-associative, as Python
    assert evaluate("0.5 ** 10000", {}) == 0.0


def test_other_scripts_digits_are_not_numbers() -> None:
    with pytest.raises(ExprError, match="unexpected character"):
        evaluate("٣ * 2", {})


# ---- YAML -------------------------------------------------------------------------------------------------------

def test_yaml_nested_300_deep(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, HEADER + "layers: [relu]\nnotes: " + "[" * 300 + "]" * 300 + "\n")
    fails(path, where="4:107", pattern=r"YAML nested more than 100 levels deep")


def test_800_nested_sequences(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text, indent = HEADER + "layers:\n", "  "
    for _ in range(800):
        text += indent + "- sequence:\n"
        indent += "    "
    fails(write(tmp_path, text + indent + "- relu\n"), pattern=r"nest", seconds=5)


def test_40_nested_sequences_are_fine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text, indent = HEADER + "layers:\n", "  "
    for _ in range(40):
        text += indent + "- sequence:\n"
        indent += "    "
    result = runner.invoke(app, ["calc", str(write(tmp_path, text + indent + "- relu\n")), "-f", "json"])
    assert result.exit_code == 0, result.output


def test_blocks_calling_each_other_300_deep(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = HEADER + "blocks:\n  b0:\n    layers: [relu]\n"
    text += "".join(f"  b{i}:\n    layers: [b{i - 1}]\n" for i in range(1, 300))
    fails(write(tmp_path, text + "layers: [b299]\n"), pattern=r"layers nested more than 64 levels deep "
                                                                 r"\(composites and blocks inside each other: b299")


def test_tab_says_tab(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fails(write(tmp_path, HEADER + "layers:\n\t- relu\n"), where="4:1",
          pattern=r"tab character at 4:1; .*indent with spaces")
    fails(write(tmp_path, HEADER + "layers:\n  - conv:\n  \t  out: 3\n"), where="5:3", pattern=r"tab character")


def test_flow_mapping_comma_trap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, HEADER + "args: {ch: 64}\nlayers:\n  - conv: {out: round_to(ch / 4, 8), kernel: 1}\n")
    fails(path, where="5:17", pattern=r"a comma ends the value.*quote it: out: \"round_to\(ch / 4, 8\)\"")


def test_non_utf8_gives_the_byte_offset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "latin1.yaml"
    path.write_bytes((HEADER + "description: caf\xe9\nlayers: [relu]\n").encode("latin-1"))
    fails(path, where="3:17", pattern=r"not UTF-8 text: byte 0xe9 at byte offset 45")


# ---- expansion bombs ----------------------------------------------------------------------------------------------

BOMBS = [
    ("repeat-1e9", "layers:\n  - repeat: 1000000000\n    block: relu\n", "4:5",
     r"expands to 1,000,000,000 layers \(blocks and repeats expanded\), more than the limit of 100,000"),
    ("nested-repeats", "layers:\n  - relu\n  - repeat: 1000\n    block: {repeat: 1000, block: relu}\n", "5:5",
     r"expands to 1,000,001 layers .*more than the limit of 100,000; raise it with --max-layers"),
    ("args-depth", "args: {depth: 10**15}\nblocks:\n  u:\n    args: {n: 2}\n    repeat: n\n    block: relu\n"
     "layers:\n  - u: {n: depth}\n", "10:5", r"expands to 1,000,000,000,000,000 layers"),
    ("blocks-4^14", "blocks:\n  b0:\n    layers: [relu]\n"
     + "".join(f"  b{i}:\n    layers: [b{i - 1}, b{i - 1}, b{i - 1}, b{i - 1}]\n" for i in range(1, 15))
     + "layers: [b14]\n", None, r"expands to 268,435,456 layers"),
    # Checked again while expanding, before a repeat's copies are made: the count before expanding takes copy 1
    # as the pattern of a repeat's copies, so a count that grows with `i` is caught here.
    ("while-expanding", "layers:\n  - repeat: 3\n    block: {repeat: 'max(1, (i - 1) * 1000000)', block: relu}\n",
     "5:21", r"repeat 1,000,000 expands the spec to at least 1,000,00\d layers"),
]


@pytest.mark.parametrize(("text", "where", "pattern"), [b[1:] for b in BOMBS], ids=[b[0] for b in BOMBS])
def test_expansion_bombs_fail_fast_with_the_figure(tmp_path, text, where, pattern) -> None:  # type: ignore
    fails(write(tmp_path, HEADER + text), where=where, pattern=pattern, seconds=2)


def test_max_layers_raises_the_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, HEADER + "layers:\n  - repeat: 200\n    block: relu\n")
    fails(path, "--max-layers", "100", pattern=r"limit of 100\b")
    assert runner.invoke(app, ["calc", str(path), "-f", "json", "--max-layers", "200"]).exit_code == 0


# ---- overrides and inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["224x224", "3x224x224x224"])
def test_input_of_another_rank_is_an_error(shape) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["calc", "resnet18", "--input", shape, "-f", "json"])
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert re.search(r"resnet18\.yaml:\d+:\d+: --input " + shape, message), message
    assert "is written for [C, H, W] input (3x224x224" in message and "e.g. --input 3x224x224" in message


def test_channels_last_input_warns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "name: cl\ninput: [32, 32, 3]\nlayers:\n  - conv: {out: 8, kernel: 1}\n")
    result = runner.invoke(app, ["calc", str(path), "-f", "json"])
    assert result.exit_code == 0
    assert result.stderr.startswith(f"{path}:2:8: warning: input: 32x32x3 looks channels-last")
    assert "write 3x32x32" in result.stderr
    assert runner.invoke(app, ["calc", str(path), "--strict"]).exit_code == 2


@pytest.mark.parametrize("value", ["٣x32x32", "3x32x٣٢", "1_0x32x32"])
def test_input_takes_ascii_digits_only(value) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["calc", "vgg16", "--input", value])
    assert result.exit_code == 2 and "--input" in result.stderr


def test_batch_is_bounded() -> None:
    result = runner.invoke(app, ["calc", "vgg16", "--batch", str(10**12)])
    assert result.exit_code == 2 and "1<=x<=1048576" in result.output


# ---- messages ---------------------------------------------------------------------------------------------------

def test_huge_literals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fails(write(tmp_path, HEADER + "layers:\n  - conv: {out: " + "9" * 400 + ", kernel: 1}\n"), where="4:17",
          pattern=r"exceeds 2\*\*63")
    fails(write(tmp_path, HEADER + "layers:\n  - dropout: {p: 1.0e+400}\n"), where="4:18", pattern=r"finite")


def test_unused_block_argument(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = HEADER + ("blocks:\n  u:\n    args: {width: 8, se: 0}\n    layers: [{conv: {out: width, kernel: 1}}]\n"
                     "layers:\n")
    fails(write(tmp_path, base + "  - u: {se: 1}\n"), where="8:9", pattern=r"block 'u' never uses its argument 'se'")
    fails(write(tmp_path, base + "  - u: {sse: 1}\n"), where="8:9",
          pattern=r"block 'u' has no argument 'sse'; did you mean 'se'")


@pytest.mark.parametrize(("written", "meant"), [("Relu", "relu"), ("convolution", "conv"), ("Conv2d", "conv"),
                                                ("MaxPool2d", "maxpool"), ("fc", "linear"), ("dense", "linear"),
                                                ("bn", "batchnorm"), ("BatchNorm2d", "batchnorm"),
                                                ("LeakyReLU", "leaky_relu"), ("swish", "silu")])
def test_kind_names_other_case_and_synonyms(tmp_path, written, meant) -> None:  # type: ignore[no-untyped-def]
    fails(write(tmp_path, HEADER + f"layers:\n  - {written}\n"), where="4:5",
          pattern=rf"unknown layer kind or block '{written}'; did you mean '{meant}'\?")
    fails(write(tmp_path, HEADER + f"layers:\n  - {written}: {{}}\n"), where="4:5", pattern=rf"'{meant}'")


def test_one_rule_for_undefined_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    alone = fails(write(tmp_path, HEADER + "args: {filters: 8}\nlayers:\n  - conv: {out: num_filters, kernel: 1}\n"),
                  where="5:17", pattern=r"unknown name 'num_filters'; did you mean 'filters'")
    inside = fails(write(tmp_path, HEADER + "args: {filters: 8}\nlayers:\n  - conv: {out: 2 * num_filters, "
                                            "kernel: 1}\n"), where="5:17", pattern=r"unknown name 'num_filters'")
    assert "must be an integer" not in alone + inside


def test_locations_are_printed_verbatim(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = HEADER + "layers:\n" + "  - relu\n" * 96 + "  - conv: {out: 8, kernel: 3, strides: 2}\n"
    assert text.count("\n") == 100
    message = fails(write(tmp_path, text), where="100:31", pattern=r"unknown argument 'strides'")
    assert "💯" not in message


def test_user_text_is_not_markup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["calc", str(write(tmp_path, HEADER + "layers:\n  - conv: {out: 8, kernel: 3, "
                                                                  "'[bold]x': 2}\n"))])
    assert result.exit_code == 2 and "'[bold]x'" in result.stderr
    kinds = runner.invoke(app, ["kinds"])
    assert kinds.exit_code == 0 and "out_channels [out/filters]" in kinds.stdout


def test_help() -> None:
    short = runner.invoke(app, ["calc", "-h"])
    assert short.exit_code == 0 and re.match(r"Usage: \S+ calc \[OPTIONS\] SPEC\n", short.stdout), short.stdout
    assert "{spec}" not in short.stdout and "{SPEC}" not in short.stdout
    assert runner.invoke(app, ["-h"]).exit_code == 0
    assert "compare [OPTIONS] SPEC...\n" in runner.invoke(app, ["compare", "-h"]).stdout
    help_text = " ".join(short.stdout.split())
    for name in CONVENTIONS:
        assert f"{name} =" in help_text, name
    assert "--max-layers" in help_text


# ---- the receptive field on the actual input -------------------------------------------------------------------

def calc_json(*args: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["calc", *args, "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_receptive_field_clipped_and_where_it_turns_global(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Hand arithmetic: three 3x3 convs (stride 1) see 3, 5, 7 pixels; on a 5x5 input the second covers it all.
    path = write(tmp_path, "name: rf\ninput: [1, 5, 5]\nlayers:\n" + "  - conv: {out: 1, kernel: 3, padding: 1}\n" * 3,
                 "rf.yaml")
    totals = calc_json(str(path))["totals"]
    assert totals["receptive_field"] == [7, 7]  # the theoretical figure is kept
    assert totals["receptive_field_clipped"] == [5, 5] and totals["receptive_field_global_at"] == "conv2"
    # Measured physically: back-propagate from the centre output and count the inputs that get a gradient.
    import torch

    net = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=1) for _ in range(3)])
    for conv in net:
        torch.nn.init.constant_(conv.weight, 1.0)
    x = torch.ones(1, 1, 5, 5, requires_grad=True)
    net(x)[0, 0, 2, 2].backward()
    assert x.grad is not None
    seen = (x.grad[0, 0] != 0).nonzero()
    assert seen[:, 0].max() - seen[:, 0].min() + 1 == 5 and seen[:, 1].max() - seen[:, 1].min() + 1 == 5
    table = runner.invoke(app, ["calc", str(path)]).stdout
    assert "receptive field 7 in theory, 5 on this input (the whole input from conv2 on)" in table
    wide = calc_json(str(path), "--input", "1x9x9")["totals"]  # 7 < 9: nothing to clip, never global
    assert wide["receptive_field_clipped"] == [7, 7] and wide["receptive_field_global_at"] is None
    assert "on this input" not in runner.invoke(app, ["calc", str(path), "--input", "1x9x9"]).stdout


def test_global_layers_make_the_receptive_field_global() -> None:
    data = calc_json("torchvision/efficientnet_b0")
    totals = data["totals"]
    assert totals["receptive_field"] == [4345, 4345]  # grows through every global pool, as before
    assert totals["receptive_field_clipped"] == [224, 224]
    first_global_pool = next(la["name"] for la in data["layers"] if la["kind"] == "global_avgpool")
    assert totals["receptive_field_global_at"] == first_global_pool  # the first squeeze-excitation


# ---- tables that fit --------------------------------------------------------------------------------------------

def table(*args: str, columns: int | None = None) -> str:
    env = {"COLUMNS": str(columns)} if columns else {}
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def body_cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
    split = [[c.strip() for c in line.strip("┃│").split("┃" if line.startswith("┃") else "│")] for line in lines]
    return split[0], split[1:]


@pytest.mark.parametrize("width", [60, 80, 100])
@pytest.mark.parametrize(("spec", "depth"), [("resnet50", "1"), ("resnet50", None), ("torchvision/efficientnet_b0",
                                                                                       None), ("vgg16", None)])
def test_calc_table_fits_and_never_cuts_numbers(spec, depth, width) -> None:  # type: ignore[no-untyped-def]
    args = ["calc", spec] + (["--depth", depth] if depth else [])
    text = table(*args, columns=width)
    grid = text[:text.index("parameters ")]
    assert all(len(line) <= width for line in grid.splitlines()), grid
    headers, rows = body_cells(text)
    assert "params" in headers and "MACs" in headers and "layer" in headers
    data = json.loads(runner.invoke(app, args + ["-f", "json"]).stdout)
    params = [r[headers.index("params")] for r in rows if r[headers.index("params")]]
    # Every row's params printed in full (wrapped names add lines with empty cells), and they sum to the total.
    assert params[:-1] == [f"{layer['params']:,}" for layer in data["layers"]]
    assert params[-1] == f"{data['totals']['params']:,}"
    long = {"k/s/p": "kernel/stride/pad", "mem": "memory", "FLOPs": "FLOPs (torch)"}
    left_out = {"kind", "kernel/stride/pad", "memory", "RF", "output", "FLOPs (torch)"} - {long.get(h, h)
                                                                                          for h in headers}
    if width < 120:
        assert "(left out to fit" in text
    note = " ".join(grid.split("(left out to fit", 1)[-1].split())
    for name in left_out:
        assert name in note, (name, note)


@pytest.mark.parametrize(("sort", "header"), [("macs", "MACs"), ("receptive_field", "RF"),
                                              ("peak_inference_bytes", "inference peak")])
def test_compare_keeps_the_sorted_column(sort, header) -> None:  # type: ignore[no-untyped-def]
    text = table("compare", "resnet50", "vgg16", "torchvision/efficientnet_b0", "--sort", sort, columns=60)
    headers, _ = body_cells(text)
    assert header in headers or {"inference peak": "peak"}[header] in headers
    assert all(len(line) <= 60 for line in text.splitlines() if line.startswith(("┃", "│", "┏", "└")))


def test_piped_tables_take_their_natural_width() -> None:
    text = table("calc", "vgg16")
    widths = {len(line) for line in text.splitlines() if line.startswith(("┏", "└"))}
    assert widths == {len(text.splitlines()[1])} and max(widths) < 150  # not padded out to 200
    assert "(left out" not in text
    assert len(table("calc", "vgg16", columns=100).splitlines()[1]) <= 100


def test_table_cost_per_row() -> None:
    import tempfile

    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec
    from archcalc.render import report as render

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.yaml"
        path.write_text("name: rows\ninput: [16, 32, 32]\nlayers:\n" + "  - conv: {out: 16, kernel: 3, padding: 1}\n"
                        "  - relu\n" * 2500, encoding="utf-8")
        report = analyze(load_spec(path))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        "\n".join(render.calc_table(report, None, 80).lines)
        best = min(best, time.perf_counter() - start)
    assert best / len(report.rows) < 100e-6, f"{best / len(report.rows) * 1e6:.0f} us per row"
