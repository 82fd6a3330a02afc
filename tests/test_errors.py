"""Bad input: every mistake is `path:line:col: message` on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import re

import pytest
from conftest import exits_cleanly
from typer.testing import CliRunner

from archcalc.cli.app import app

runner = CliRunner()

HEADER = "name: bad\ninput: [3, 32, 32]\n"

CASES = [
    # (id, spec text, expected line:col, regex the message must match)
    ("yaml-syntax", "name: x\ninput: [3, 32, 32\nlayers: []\n", None, r"YAML syntax error"),
    ("empty", "", "1:1", r"the spec is empty"),
    ("not-a-mapping", "- conv\n- relu\n", "1:1", r"must be a mapping"),
    ("unknown-top-key", HEADER + "layer:\n  - relu\n", "3:1", r"unknown top-level key 'layer'; did you mean 'layers'"),
    ("missing-layers", HEADER, "1:1", r"no 'layers'"),
    ("unknown-kind", HEADER + "layers:\n  - convv: {out: 8, kernel: 3}\n", "4:5",
     r"unknown layer kind or block 'convv'; did you mean 'conv'"),
    ("misspelled-arg", HEADER + "layers:\n  - conv: {out: 8, kernel: 3, strides: 2}\n", "4:31",
     r"conv: unknown argument 'strides'; did you mean 'stride'"),
    ("wrong-type", HEADER + "layers:\n  - conv: {out: 8, kernel: three}\n", "4:28",
     r"conv 'kernel_size': unknown name 'three' \(no variables are defined here\)"),
    ("wrong-bool", HEADER + "layers:\n  - conv: {out: 8, kernel: 3, bias: 1}\n", "4:37", r"must be true or false"),
    ("zero-stride", HEADER + "layers:\n  - conv: {out: 8, kernel: 3, stride: 0}\n", "4:39",
     r"'stride' must be at least 1, not 0"),
    ("negative-channels", HEADER + "layers:\n  - conv: {out: -8, kernel: 3}\n", "4:17",
     r"'out_channels' must be at least 1, not -8"),
    ("zero-input", "name: x\ninput: [3, 0, 32]\nlayers: [relu]\n", "2:8", r"input sizes must be positive"),
    ("kernel-too-large", HEADER + "layers:\n  - conv: {out: 8, kernel: 40}\n", "4:5",
     r"conv1 \(conv\) on input 3x32x32: conv kernel 40 is larger than the padded input 32"),
    ("groups", HEADER + "layers:\n  - conv: {out: 8, kernel: 3, groups: 2}\n", "4:5",
     r"in_channels 3 is not divisible by groups 2"),
    ("undefined-block", HEADER + "blocks:\n  unit:\n    args: {}\n    layers: [relu]\nlayers:\n  - unti\n", "8:5",
     r"unknown layer kind or block 'unti'; did you mean 'unit'"),
    ("recursive-block", HEADER + "blocks:\n  a:\n    args: {}\n    layers: [b]\n  b:\n    args: {}\n"
     "    layers: [a]\nlayers:\n  - a\n", "9:14", r"block 'a' is recursive \(a -> b -> a\)"),
    ("block-missing-arg", HEADER + "blocks:\n  u:\n    args: {width: ~}\n    layers: [{conv: {out: width, "
     "kernel: 1}}]\nlayers:\n  - u\n", "8:5", r"block 'u' needs argument 'width'"),
    ("block-unknown-arg", HEADER + "blocks:\n  u:\n    args: {width: 8}\n    layers: [{conv: {out: width, "
     "kernel: 1}}]\nlayers:\n  - u: {widht: 3}\n", "8:9", r"block 'u' has no argument 'widht'; did you mean"),
    ("expression-name", HEADER + "layers:\n  - conv: {out: 2 * widht, kernel: 1}\n", "4:17",
     r"unknown name 'widht' in '2 \* widht' \(no variables are defined here\)"),
    ("concat-mismatch", HEADER + "layers:\n  - parallel:\n      - [{conv: {out: 4, kernel: 3}}]\n"
     "      - [{conv: {out: 4, kernel: 1}}]\n", "4:5",
     r"parallel1: parallel1.branch1 gives 4x30x30 but parallel1.branch2 gives 4x32x32; they cannot be "
     r"concatenated"),
    ("add-mismatch", HEADER + "layers:\n  - residual: [{conv: {out: 8, kernel: 3, padding: 1}}]\n", "4:5",
     r"residual1 body gives 8x32x32 but residual1.shortcut gives 3x32x32; they cannot be added"),
    ("python-tag", HEADER + "layers:\n  - !!python/object/apply:os.system ['echo hacked']\n", "4:5",
     r"YAML syntax error: could not determine a constructor"),
    ("duplicate-name", HEADER + "layers:\n  - conv: {out: 4, kernel: 1, name: a}\n  - relu: {name: a}\n", "5:5",
     r"duplicate name 'a'"),
    ("bad-name", HEADER + "layers:\n  - relu: {name: 'a.b'}\n", "4:18", r"layer name 'a.b' must be letters"),
    ("duplicate-key", HEADER + "layers:\n  - conv: {out: 4, out: 5, kernel: 1}\n", "4:20", r"duplicate key 'out'"),
    ("bad-padding", HEADER + "layers:\n  - conv: {out: 4, kernel: 3, padding: smae}\n", "4:40",
     r"did you mean 'same'"),
    ("pool-padding", HEADER + "layers:\n  - maxpool: {kernel: 2, padding: 2}\n", "4:5",
     r"padding 2 is more than half the kernel 2"),
    ("extends-missing", "extends: nosuchspec\n" + HEADER + "layers: [relu]\n", "1:10",
     r"no spec file or bundled spec named 'nosuchspec'"),
]


@pytest.mark.parametrize(("text", "where", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_reports_location_and_exits_2(tmp_path, text, where, pattern) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["calc", str(path)])
    exits_cleanly(result, 2)
    message = result.stderr.strip()
    assert message.startswith(f"{path}:"), message  # FILE:LINE:COL: first, as editors and CI parsers expect
    assert len(message.splitlines()) == 1, message
    if where is not None:
        assert message.startswith(f"{path}:{where}: "), message
    else:
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", message), message
    assert re.search(pattern, message), message
    assert result.stdout == ""


def test_missing_file_and_unknown_bundled_name() -> None:
    result = runner.invoke(app, ["calc", "vgg16x"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")  # no location to start the line with
    assert "no spec file or bundled spec named 'vgg16x'; did you mean 'vgg16'" in result.stderr


def test_bad_input_override() -> None:
    result = runner.invoke(app, ["calc", "vgg16", "--input", "3xbig"])
    assert result.exit_code == 2
    assert "--input" in result.stderr and "3x224x224" in result.stderr


def test_binary_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    result = runner.invoke(app, ["calc", str(path)])
    exits_cleanly(result, 2)
