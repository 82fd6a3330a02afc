"""The CLI through typer's CliRunner: formats, options, contracts."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.kinds import REGISTRY

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_calc_json_contract() -> None:
    data = json.loads(invoke("calc", "resnet50", "--format", "json").stdout)
    for key in ("name", "input", "batch", "dtype", "convention", "layers", "totals"):
        assert key in data
    assert data["name"] == "resnet50" and data["input"] == [3, 224, 224] and data["batch"] == 1
    assert data["dtype"] == "float32" and data["convention"] == "torch"
    for layer in data["layers"]:
        for key in ("name", "kind", "output", "params", "macs", "flops", "activation_bytes"):
            assert key in layer
        for key in ("params", "macs", "flops", "activation_bytes"):
            assert isinstance(layer[key], int)
    totals = data["totals"]
    for key in ("params", "trainable_params", "macs", "flops", "activation_bytes", "param_bytes"):
        assert isinstance(totals[key], int)
    # He et al. / torchvision: ResNet-50 has 25,557,032 parameters; 4 bytes each in float32.
    assert totals["params"] == 25_557_032 and totals["param_bytes"] == 4 * 25_557_032
    # He et al. 2016, Table 1: 3.8 x 10^9 multiply-adds, two significant digits (within 2%, as tests/test_zoo.py
    # reads the table); the default convention counts 2 FLOPs per MAC, as FlopCounterMode does.
    assert abs(totals["macs"] - 3.8e9) <= 0.02 * 3.8e9 and totals["flops"] == 2 * totals["macs"]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["conv1"]["params"] == 64 * 3 * 7 * 7  # 7x7/2, 64 filters, no bias (He et al. 2016, Table 1)
    assert layers["conv1"]["macs"] == 64 * 3 * 7 * 7 * 112 * 112
    assert layers["fc"]["params"] == 2048 * 1000 + 1000
    assert [layer["name"] for layer in data["layers"]][:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert "layer1.0.conv1" in [layer["name"] for layer in data["layers"]]


def test_batch_and_dtype_scale_once() -> None:
    one = json.loads(invoke("calc", "vgg16", "-f", "json").stdout)["totals"]
    many = json.loads(invoke("calc", "vgg16", "-f", "json", "--batch", "8", "--dtype", "float16").stdout)["totals"]
    assert many["macs"] == 8 * one["macs"]
    assert many["activation_bytes"] == 8 * one["activation_bytes"] // 2
    assert many["params"] == one["params"] and many["param_bytes"] == one["param_bytes"] // 2


def test_conventions() -> None:
    # Measured on torchvision's resnet50 (tests/data/torchvision_measured.json): forward hooks on every conv and
    # linear module (MACs), FlopCounterMode and fvcore's FlopCountAnalysis.
    totals = {c: json.loads(invoke("calc", "torchvision/resnet50", "-f", "json", "-c", c).stdout)["totals"]
              for c in ("macs", "torch", "fvcore", "full")}
    assert totals["macs"]["flops"] == totals["macs"]["macs"] == 4_089_184_256
    assert totals["torch"]["flops"] == 8_178_368_512
    assert totals["fvcore"]["flops"] == 4_111_512_576
    assert totals["full"]["flops"] > totals["torch"]["flops"]  # per kind: tests/test_full_counted.py
    table = invoke("calc", "resnet50", "-c", "fvcore").stdout
    assert "FLOPs convention 'fvcore'" in table


def test_input_override_rescales() -> None:
    # The lecture notes' rescaling demo: ResNet-50 at 1120x1120 is fully convolutional up to the global pool: MACs of
    # the
    # convolutions grow by (1120/224)^2 = 25, the classifier stays.
    base = json.loads(invoke("calc", "resnet50", "-f", "json").stdout)
    big = json.loads(invoke("calc", "resnet50", "-f", "json", "--input", "3x1120x1120").stdout)
    conv_macs = sum(la["macs"] for la in base["layers"] if la["kind"] == "conv")
    big_conv = sum(la["macs"] for la in big["layers"] if la["kind"] == "conv")
    assert big_conv == 25 * conv_macs
    assert big["totals"]["params"] == base["totals"]["params"]
    assert big["input"] == [3, 1120, 1120]


def test_depth_collapses_blocks() -> None:
    data = json.loads(invoke("calc", "resnet50", "-f", "json", "--depth", "2").stdout)
    names = [la["name"] for la in data["layers"]]
    assert names[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1.0"]
    assert "layer1.0.conv1" not in names and "layer4.2" in names
    # A collapsed row is its block: layer1.0 is torchvision's first bottleneck, by hand (He et al. 2016, Table 1):
    # 1x1 64->64, 3x3 64->64, 1x1 64->256 and the 1x1 64->256 projection, none with a bias, and four batch norms
    # (2 parameters per channel).
    rows = {la["name"]: la for la in data["layers"]}
    assert rows["layer1.0"]["params"] == 64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256 + 2 * (64 + 64 + 256 + 256)
    assert rows["layer1.0"]["macs"] == (64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256) * 56 * 56
    table = invoke("calc", "resnet50", "--depth", "1").stdout
    assert "layer4" in table and "layer4.0" not in table


def test_csv_and_markdown() -> None:
    text = invoke("calc", "vgg16", "-f", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[-1]["name"] == "total"
    assert int(rows[-1]["params"]) == 138_357_544  # torchvision's vgg16 num_params
    assert int(rows[0]["params"]) == 64 * 3 * 3 * 3 + 64  # conv1_1: 3x3, 64 filters with bias (Simonyan & Zisserman)
    md = invoke("calc", "vgg16", "-f", "md").stdout
    assert md.count("\n| ") >= len(rows) and "| **total** |" in md


def test_compare_sort_and_json() -> None:
    data = json.loads(invoke("compare", "vgg16", "resnet50", "-f", "json", "--sort", "params").stdout)
    assert [d["name"] for d in data] == ["resnet50", "vgg16"]
    assert all(isinstance(d["totals"]["params"], int) for d in data)
    data = json.loads(invoke("compare", "vgg16", "resnet50", "-f", "json", "--sort", "params", "--desc").stdout)
    assert [d["name"] for d in data] == ["vgg16", "resnet50"]
    table = invoke("compare", "vgg16", "resnet50").stdout
    assert "138,357,544" in table and "25,557,032" in table
    assert "resnet50" in invoke("compare", "vgg16", "resnet50", "-f", "csv").stdout
    assert "| vgg16 |" in invoke("compare", "vgg16", "resnet50", "-f", "md").stdout


def test_kinds_lists_the_registry() -> None:
    data = json.loads(invoke("kinds", "-f", "json").stdout)
    assert sorted(k["kind"] for k in data if k["category"] == "layer") == sorted(REGISTRY)
    conv = next(k for k in data if k["kind"] == "conv")
    stride = next(a for a in conv["args"] if a["name"] == "stride")
    assert stride["default"] == "1"
    assert "conv" in invoke("kinds").stdout
    assert "#### `conv`" in invoke("kinds", "-f", "md").stdout


def test_warnings_go_to_stderr_and_json_stays_clean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.yaml"
    path.write_text("name: a\ninput: [3, 224, 224]\nlayers:\n  - conv: {out: 96, kernel: 11, stride: 4}\n")
    result = runner.invoke(app, ["calc", str(path), "-f", "json"])
    assert result.exit_code == 0
    assert "213/4" in result.stderr
    assert result.stderr.startswith(f"{path}:4:5: warning: conv1: ")  # FILE:LINE:COL: first, one line
    assert len(result.stderr.splitlines()) == 1
    assert json.loads(result.stdout)["warnings"]
    strict = runner.invoke(app, ["calc", str(path), "--strict"])
    assert strict.exit_code == 2 and "213/4" in strict.stderr


def test_version_and_module_entry_point() -> None:
    from archcalc import __version__

    assert __version__ in invoke("--version").stdout
    proc = subprocess.run([sys.executable, "-m", "archcalc", "calc", "vgg16", "-f", "csv"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name,kind,output")


def test_calc_does_not_import_torch() -> None:
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            "try:\n    app(['calc', 'resnet50', '-f', 'json'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "try:\n    app(['compare', 'vgg16', 'resnet50'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "try:\n    app(['kinds'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "try:\n    app(['schema'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "try:\n    app(['graph', 'resnet50', '-f', 'dot'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fvcore', 'numpy'))\n"
            "print('IMPORTED', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout
