"""Ultralytics' model YAML: `archcalc convert` and the bundled YOLOv8 / YOLO11 specs against Ultralytics' own
models, as measured in tests/data/ultralytics_measured.json (tests/data/measure/ultralytics.py; ultralytics is
not a dependency of archcalc or of these tests).

The model tables below are written here from Ultralytics' architecture (their files are AGPL-3.0; these are our
own minimal YAMLs with the same rows, not copies): [from, repeats, module, args] rows and the scales table."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.api import analyze
from archcalc.cli.app import app
from archcalc.core import yamlsrc
from archcalc.core.errors import SpecError
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec, parse_spec
from archcalc.core.ultralytics import convert_text

DATA = Path(__file__).resolve().parent / "data"
MEASURED = json.loads((DATA / "ultralytics_measured.json").read_text())["models"]
runner = CliRunner()

YOLOV8 = """
nc: 80
scales: {n: [0.33, 0.25, 1024], s: [0.33, 0.50, 1024], m: [0.67, 0.75, 768], l: [1.00, 1.00, 512],
         x: [1.00, 1.25, 512]}
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[15, 18, 21], 1, Detect, [nc]]
"""

YOLO11 = """
nc: 80
scales: {n: [0.50, 0.25, 1024], s: [0.50, 0.50, 1024], m: [0.50, 1.00, 512], l: [1.00, 1.00, 512],
         x: [1.00, 1.50, 512]}
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 2, C3k2, [256, False, 0.25]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 2, C3k2, [512, False, 0.25]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 2, C3k2, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 2, C3k2, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
  - [-1, 2, C2PSA, [1024]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 2, C3k2, [512, False]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 2, C3k2, [256, False]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 13], 1, Concat, [1]]
  - [-1, 2, C3k2, [512, False]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 10], 1, Concat, [1]]
  - [-1, 2, C3k2, [1024, True]]
  - [[16, 19, 22], 1, Detect, [nc]]
"""

YOLOV5U = """
nc: 80
scales: {n: [0.33, 0.25, 1024], s: [0.33, 0.50, 1024], m: [0.67, 0.75, 1024], l: [1.00, 1.00, 1024],
         x: [1.33, 1.25, 1024]}
backbone:
  - [-1, 1, Conv, [64, 6, 2, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C3, [128]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C3, [256]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 9, C3, [512]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C3, [1024]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, Conv, [512, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C3, [512, False]]
  - [-1, 1, Conv, [256, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C3, [256, False]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 14], 1, Concat, [1]]
  - [-1, 3, C3, [512, False]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 10], 1, Concat, [1]]
  - [-1, 3, C3, [1024, False]]
  - [[17, 20, 23], 1, Detect, [nc]]
"""


YOLOV3U = """
nc: 80
depth_multiple: 1.0
width_multiple: 1.0
backbone:
  - [-1, 1, Conv, [32, 3, 1]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Bottleneck, [64]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 2, Bottleneck, [128]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 8, Bottleneck, [256]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 8, Bottleneck, [512]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 4, Bottleneck, [1024]]
head:
  - [-1, 1, Bottleneck, [1024, False]]
  - [-1, 1, Conv, [512, 1, 1]]
  - [-1, 1, Conv, [1024, 3, 1]]
  - [-1, 1, Conv, [512, 1, 1]]
  - [-1, 1, Conv, [1024, 3, 1]]
  - [-2, 1, Conv, [256, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 8], 1, Concat, [1]]
  - [-1, 1, Bottleneck, [512, False]]
  - [-1, 1, Bottleneck, [512, False]]
  - [-1, 1, Conv, [256, 1, 1]]
  - [-1, 1, Conv, [512, 3, 1]]
  - [-2, 1, Conv, [128, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 1, Bottleneck, [256, False]]
  - [-1, 2, Bottleneck, [256, False]]
  - [[27, 22, 15], 1, Detect, [nc]]
"""


def _task(table: str, head: str, nc: int, extra: str = "", scales: str | None = None) -> str:
    """A detection table with another head row (the tasks' files differ from detect's only there, in nc and in
    the classifier's scales and rows)."""
    text = re.sub(r"\[\[(\d+, \d+, \d+)\], 1, Detect, \[nc\]\]", rf"[[\1], 1, {head}]", table)
    text = text.replace("nc: 80", f"nc: {nc}{extra}")
    if scales is not None:
        text = re.sub(r"scales: \{[^}]*\}", scales, text)
    return text


def _classifier(table: str, last: int, scales: str) -> str:
    """The backbone up to row `last`, then Classify (Ultralytics' -cls files: nc 1000, 224x224)."""
    rows = table.split("head:")[0].splitlines()
    keep = [r for r in rows if not r.startswith("  - ")] + [r for r in rows if r.startswith("  - ")][:last + 1]
    text = "\n".join(keep).replace("nc: 80", "nc: 1000")
    return re.sub(r"scales: \{[^}]*\}", scales, text) + "\nhead:\n  - [-1, 1, Classify, [nc]]\n"


CLS_V8 = ("scales: {n: [0.33, 0.25, 1024], s: [0.33, 0.50, 1024], m: [0.67, 0.75, 1024], l: [1.00, 1.00, 1024], "
          "x: [1.00, 1.25, 1024]}")
CLS_11 = ("scales: {n: [0.50, 0.25, 1024], s: [0.50, 0.50, 1024], m: [0.50, 1.00, 512], l: [1.00, 1.00, 512], "
          "x: [1.00, 1.50, 512]}")
TABLES = {"yolov8": YOLOV8, "yolo11": YOLO11}
# Every family measured, by its measured name's stem: the table, written here
FAMILIES = {
    "yolov8": YOLOV8, "yolo11": YOLO11, "yolov5": YOLOV5U, "yolov3": YOLOV3U,
    "yolov8-seg": _task(YOLOV8, "Segment, [nc, 32, 256]", 80),
    "yolo11-seg": _task(YOLO11, "Segment, [nc, 32, 256]", 80),
    "yolov8-pose": _task(YOLOV8, "Pose, [nc, kpt_shape]", 1, "\nkpt_shape: [17, 3]"),
    "yolo11-pose": _task(YOLO11, "Pose, [nc, kpt_shape]", 80, "\nkpt_shape: [17, 3]"),  # 80 in their file, too
    "yolov8-cls": _classifier(YOLOV8, 8, CLS_V8),
    "yolo11-cls": _classifier(YOLO11.replace("  - [-1, 1, SPPF, [1024, 5]]\n", ""), 9, CLS_11),  # no SPPF
}
# Ultralytics' scales, written out (the tables above): scale -> --set values
SCALES = {
    "yolov8": {"n": (0.33, 0.25, 1024), "s": (0.33, 0.5, 1024), "m": (0.67, 0.75, 768), "l": (1.0, 1.0, 512),
               "x": (1.0, 1.25, 512)},
    "yolo11": {"n": (0.5, 0.25, 1024), "s": (0.5, 0.5, 1024), "m": (0.5, 1.0, 512), "l": (1.0, 1.0, 512),
               "x": (1.0, 1.5, 512)},
}
CASES = [(family, scale) for family in SCALES for scale in "nsmlx"]


def sets(family: str, scale: str) -> dict[str, str]:
    depth, width, max_channels = SCALES[family][scale]
    out = {"depth": str(depth), "width": str(width), "max_channels": str(max_channels)}
    if family == "yolo11":  # parse_model: scales m, l and x make every C3k2 use C3k blocks
        out["c3k"] = "true" if scale in "mlx" else "false"
    return out


def printed_params(line: str) -> int:
    """The parameter count in Ultralytics' own summary line ('YOLOv8n summary: 129 layers, 3,157,200 parameters')."""
    match = re.search(r"([\d,]+) parameters", line)
    assert match, line
    return int(match.group(1).replace(",", ""))


def test_the_figures_were_measured_for_every_scale() -> None:
    for family, scale in CASES:
        assert f"{family}{scale}" in MEASURED
    # the count the issue quotes, as Ultralytics prints it (unfused)
    assert MEASURED["yolov8n"]["printed"] == ["YOLOv8n summary: 129 layers, 3,157,200 parameters, 3,157,184 "
                                              "gradients, 8.9 GFLOPs"]


@pytest.mark.parametrize(("family", "scale"), CASES, ids=[f"{f}{s}" for f, s in CASES])
def test_bundled_spec_is_exact(family: str, scale: str) -> None:
    measured = MEASURED[f"{family}{scale}"]
    report = analyze(load_spec(bundled()[f"ultralytics/{family}"], overrides=sets(family, scale)))
    t = report.totals
    assert t.params == measured["params"] == printed_params(measured["printed"][0])
    assert t.trainable_params == measured["gradients"]  # the DFL's fixed weights are frozen
    assert t.buffers == measured["float_buffers"] + measured["int_buffers"]
    # FlopCounterMode on Ultralytics' model in eval mode at 640x640 (2 per MAC of conv and matmul, DFL included)
    assert t.macs == measured["flop_counter_eval"]["macs"]
    assert t.flops == measured["flop_counter_eval"]["flop_counter"]
    # Ultralytics' output (1, 4 + nc, anchors): archcalc decodes each level, (4 + nc) x H x W
    _, channels, anchors = measured["flop_counter_eval"]["output"][0]
    shapes = [shape for _, shape in report.outputs]
    assert {s[0] for s in shapes} == {channels}
    assert sum(s[1] * s[2] for s in shapes) == anchors
    assert [list(s[1:]) for s in shapes] == [f[2:] for f in measured["flop_counter_eval"]["output"][1]["feats"]]


THOP = [name for name in sorted(MEASURED) if "thop_macs" in MEASURED[name]]


@pytest.mark.parametrize("name", THOP)
def test_what_ultralytics_prints_as_gflops(name: str) -> None:
    # Ultralytics prints 2 x thop's count as GFLOPs. Fused (BN folded into the convs) thop counts the convs'
    # MACs, archcalc's figure; unfused it adds 4 per BatchNorm output element.
    stem, scale = (name[:-1], name[-1]) if name[-1] in "nsmlx" else (name, "")
    measured = MEASURED[name]
    report = analyze(parse_spec(yamlsrc.load(convert_text(FAMILIES[stem], f"{name}.yaml").text, "<c>"), "<c>"))
    assert measured["thop_macs_fused"] == report.totals.macs
    bn = sum(math.prod(row.output) for row in report.rows if row.kind == "batchnorm")
    for row in report.rows:  # the three BatchNorms inside C2PSA's attention: qkv's C + 2 x heads x key_dim, 2 x C
        if row.kind == "psa_attention":
            c, heads = row.output[0], row.op.args["num_heads"]
            key = int(c // heads * row.op.args["attn_ratio"])
            bn += (c + 2 * heads * key + 2 * c) * math.prod(row.output[1:])
    assert measured["thop_macs"] - measured["thop_macs_fused"] == 4 * bn
    assert measured["printed"][0].endswith(f", {2 * measured['thop_macs'] / 1e9:.1f} GFLOPs")


@pytest.mark.parametrize("family", SCALES)
def test_converting_the_model_yaml_gives_the_bundled_spec(family: str, tmp_path: Path) -> None:
    converted = convert_text(TABLES[family], f"{family}.yaml")
    bundled_text = bundled()[f"ultralytics/{family}"].read_text()
    # the same spec below the header lines (name, description, family, source and the comment above them)
    body = converted.text.split("\ninput:", 1)[1]
    assert bundled_text.split("\ninput:", 1)[1] == body


@pytest.mark.parametrize(("family", "scale"), [("yolov8", "m"), ("yolo11", "s"), ("yolo11", "x")])
def test_the_scale_letter_picks_the_defaults(family: str, scale: str) -> None:
    # yolov8m.yaml is Ultralytics' yolov8.yaml at scale m: the spec's defaults are that scale's figures
    converted = convert_text(TABLES[family], f"{family}{scale}.yaml")
    report = analyze(parse_spec(yamlsrc.load(converted.text, "<converted>"), "<converted>"))
    assert converted.name == family
    assert report.totals.params == MEASURED[f"{family}{scale}"]["params"]
    assert report.totals.macs == MEASURED[f"{family}{scale}"]["flop_counter_eval"]["macs"]


FAMILY_CASES = [(stem, scale) for stem in FAMILIES for scale in ("nsmlx" if stem != "yolov3" else [""])
                if (stem.replace("-", f"{scale}-", 1) if "-" in stem else f"{stem}{scale}") in MEASURED]


@pytest.mark.parametrize(("stem", "scale"), FAMILY_CASES, ids=[f"{s}-{c}" for s, c in FAMILY_CASES])
def test_every_converted_family_is_exact(stem: str, scale: str) -> None:
    # named as Ultralytics' files are (yolov8s-seg.yaml: yolov8-seg.yaml at scale s), so the scale is the file's
    file = stem.replace("-", f"{scale}-", 1) if "-" in stem else f"{stem}{scale}"
    converted = convert_text(FAMILIES[stem], f"{file}.yaml")
    report = analyze(parse_spec(yamlsrc.load(converted.text, "<converted>"), "<converted>"))
    measured = MEASURED[file]
    t = report.totals
    assert t.params == measured["params"] == printed_params(measured["printed"][0])
    assert t.trainable_params == measured["gradients"]
    assert t.buffers == measured["float_buffers"] + measured["int_buffers"]
    assert t.macs == measured["flop_counter_eval"]["macs"]
    assert list(report.input) == measured["input"]


def test_cli_convert_writes_a_spec_that_calc_reads(tmp_path: Path) -> None:
    model = tmp_path / "yolov8.yaml"
    model.write_text(YOLOV8)
    result = runner.invoke(app, ["convert", str(tmp_path / "yolov8s.yaml"), "-o", str(tmp_path / "out.yaml")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["calc", str(tmp_path / "out.yaml"), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["params"] == MEASURED["yolov8s"]["params"]
    again = runner.invoke(app, ["convert", str(model), "-o", str(tmp_path / "out.yaml")])
    assert again.exit_code == 2 and "exists; use --force" in again.output
    stdout = runner.invoke(app, ["convert", str(model)])
    assert stdout.exit_code == 0 and stdout.output.startswith("name: yolov8\n")


def test_convert_never_imports_torch(tmp_path: Path) -> None:
    model = tmp_path / "yolo11.yaml"
    model.write_text(YOLO11)
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            f"try:\n    app(['convert', {str(model)!r}], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules\nassert 'ultralytics' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _error(text: str, name: str = "m.yaml") -> str:
    with pytest.raises(SpecError) as info:
        convert_text(text, name)
    return str(info.value)


def test_an_unknown_module_is_a_located_error_naming_the_row() -> None:
    text = YOLOV8.replace("[-1, 1, SPPF, [1024, 5]]", "[-1, 1, SPPFX, [1024, 5]]")
    line = text.splitlines().index("  - [-1, 1, SPPFX, [1024, 5]]") + 1
    assert _error(text) == (f"m.yaml:{line}:5: row 9: Ultralytics module 'SPPFX' is not known to archcalc convert; "
                            "it knows Conv, C2f, C3, C3k2, SPPF, C2PSA, Bottleneck, nn.Upsample, Concat, Detect, "
                            "Segment, Pose, Classify; did you mean 'SPPF'?")


def test_yolo12s_area_attention_is_refused_with_a_reason() -> None:
    text = YOLO11.replace("[-1, 2, C2PSA, [1024]]", "[-1, 4, A2C2f, [1024, True, 1]]")
    message = _error(text)
    assert "row 10: A2C2f (YOLO12's area attention) is not supported yet" in message
    assert re.match(r"m\.yaml:\d+:5: ", message)


@pytest.mark.parametrize(("old", "new", "wanted"), [
    ("[-1, 1, Conv, [64, 3, 2]]", "[-1, 1, Conv]", "row 0: expected [from, repeats, module, args]"),
    ("[[-1, 6], 1, Concat, [1]]", "[[-1, 16], 1, Concat, [1]]", "row 11 (Concat): 'from' [-1, 16] is not an "
                                                                "earlier row"),
    ("[-1, 3, C2f, [512]]", "[-1, 0, C2f, [512]]", "row 12 (C2f): repeats must be a positive integer, not 0"),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 3, 2, None, 1, 2]]", "row 1 (Conv): argument 6 "
                                                                            "(dilation) cannot be 2"),
    ("[[-1, 4], 1, Concat, [1]]", "[[-1, 4], 1, Concat, [2]]", "row 14 (Concat): argument 1 (dimension) cannot be 2"),
])
def test_bad_rows_are_located_errors(old: str, new: str, wanted: str) -> None:
    assert old in YOLOV8
    assert wanted in _error(YOLOV8.replace(old, new, 1))


def test_cli_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(YOLOV8.replace("Detect", "Detekt"))
    result = runner.invoke(app, ["convert", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith(f"{bad}:") and "Traceback" not in result.output
    missing = runner.invoke(app, ["convert", str(tmp_path / "nothing.yaml")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


def test_sweep_over_the_scales() -> None:
    result = runner.invoke(app, ["sweep", "ultralytics/yolov8", "--set", "width=0.25,0.5", "--set", "depth=0.33",
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    got = {row["set"]["width"]: row["params"] for row in rows}
    assert got == {"0.25": MEASURED["yolov8n"]["params"], "0.5": MEASURED["yolov8s"]["params"]}
    result = runner.invoke(app, ["sweep", "ultralytics/yolo11", "--set", "depth=0.5,1.0", "--set", "width=1.0",
                                 "--set", "max_channels=512", "--set", "c3k=true", "-f", "json"])
    assert result.exit_code == 0, result.output
    macs = {row["set"]["depth"]: row["macs"] for row in json.loads(result.output)["rows"]}
    assert macs == {"0.5": MEASURED["yolo11m"]["flop_counter_eval"]["macs"],
                    "1.0": MEASURED["yolo11l"]["flop_counter_eval"]["macs"]}
