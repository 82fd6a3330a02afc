"""`archcalc import` writes repeated structure as blocks with arguments and stages as `repeat:`.

The models are written here in plain torch.nn, so what the spec must say is known independently of the importer:
which module classes repeat, how many copies each stage has, which numbers differ between copies. The figures are
checked against torch (parameters counted by `.parameters()`, output shapes by running the model) and against the
same import written without blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.spec import Spec, load_spec
from archcalc.torch.importer import from_module
from archcalc.torch.importer.trace import trace_module
from archcalc.torch.importer.write import write_spec


class Bottleneck(nn.Module):
    """He et al. 2016, Fig. 5 (right): 1x1 reduce, 3x3, 1x1 expand to 4x the width; a projection where the shape
    changes (torchvision's layout: the downsample is a Sequential of conv and BN)."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != 4 * width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(4 * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class Net(nn.Module):
    """Three stages of 2, 3 and 2 bottlenecks (widths 8, 16, 32; the first of each projects)."""

    def __init__(self, depths: tuple[int, ...] = (2, 3, 2)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        cin, stages = 16, []
        for i, (width, depth) in enumerate(zip((8, 16, 32), depths)):
            blocks = [Bottleneck(cin, width, 1 if i == 0 else 2)]
            blocks += [Bottleneck(4 * width, width) for _ in range(depth - 1)]
            cin = 4 * width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _spec_data(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _items(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Top-level items by name (given beside the head or inside its mapping)."""
    out = {}
    for item in data["layers"]:
        if isinstance(item, dict):
            head = next(iter(item))
            inner = item[head] if isinstance(item[head], dict) else {}
            out[str(item.get("name", inner.get("name")))] = item
    return out


def _figures(spec: Spec) -> tuple[Any, ...]:
    t = analyze(spec).totals
    return (t.params, t.buffers, t.macs, t.activation_bytes, t.peak_bytes, t.saved_bytes, t.output, t.rf)


def test_bottlenecks_become_blocks_and_stages_repeats() -> None:
    model = Net()
    imported = from_module(model, (3, 32, 32))
    data = _spec_data(imported.text)
    blocks = data["blocks"]
    # The two kinds of bottleneck (with and without the projection) and the projection itself, named after their
    # classes and attributes.
    assert {"Bottleneck", "Bottleneck_1", "downsample"} <= set(blocks)
    projecting, plain = blocks["Bottleneck"], blocks["Bottleneck_1"]
    assert any("downsample" in item for item in projecting["layers"] if isinstance(item, dict))
    assert not any("downsample" in item for item in plain["layers"] if isinstance(item, dict))
    # The width differs between stages (8, 16, 32): an argument, required (three values); the stride of the
    # projecting block is 1 in one stage and 2 in two: an argument with 2 as its default.
    assert plain["args"] == {"out": None}
    assert projecting["args"] == {"out": None, "stride": 2}
    assert blocks["downsample"]["args"] == {"out": None, "stride": 2}
    assert {"downsample": {"out": "4 * out", "stride": "stride", "name": "downsample"}} in projecting["layers"]
    conv3 = next(item["conv"] for item in plain["layers"] if isinstance(item, dict) and "conv" in item
                 and item["conv"].get("name") == "conv3")
    assert conv3["out_channels"] == "4 * out"
    # The identity shortcut reads the block's own input, the projection takes it by `from: $input`.
    assert {"add": ["bn3", "$input"], "name": "add"} in plain["layers"]
    assert any(item.get("from") == "$input" for item in projecting["layers"] if isinstance(item, dict))
    # Stages: copies 1.. of the plain block, copy 0 the projecting one, as many as the model has.
    items = _items(data)
    assert items["layer2"]["repeat"] == 3
    assert items["layer2"]["first"] == {"Bottleneck": {"out": 16}}
    assert items["layer2"]["block"] == {"Bottleneck_1": {"out": 16}}
    # layer1 and layer3 are alike (two copies each, widths 8 and 32; stride 1 and 2): one block for both.
    # (two different calls are written as a list; a repeat needs two alike copies after the first)
    assert blocks["layer"] == {"args": {"out": 8, "stride": 1},
                               "layers": [{"Bottleneck": {"out": "out", "stride": "stride", "name": "0"}},
                                          {"Bottleneck_1": {"out": "out", "name": "1"}}]}
    assert items["layer1"] == {"layer": {"name": "layer1"}}
    assert items["layer3"] == {"layer": {"out": 32, "stride": 2, "name": "layer3"}}


def test_the_blocks_give_torchs_figures_and_the_flat_imports() -> None:
    model = Net().eval()
    imported = from_module(model, (3, 32, 32))
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    with torch.no_grad():
        assert (1, *report.totals.output) == tuple(model(torch.zeros(1, 3, 32, 32)).shape)
    # Layer names are the module paths (as in state_dict), whatever the spec's blocks.
    names = {r.name for r in report.rows if r.module and r.params}
    assert names == {k.rsplit(".", 1)[0] for k in model.state_dict() if k.endswith("weight")}
    flat_text = write_spec(trace_module(model, (3, 32, 32)), "flat", blocks=False)
    assert "blocks:" not in flat_text and "repeat:" not in flat_text
    from archcalc.core import yamlsrc
    from archcalc.core.spec import parse_spec

    flat = parse_spec(yamlsrc.load(flat_text, "<flat>"), "<flat>")
    assert _figures(imported.spec) == _figures(flat)
    for a, b in zip(analyze(imported.spec).rows, analyze(flat).rows):
        assert (a.name, a.kind, a.output, a.params, a.macs) == (b.name, b.kind, b.output, b.params, b.macs)


class Twice(nn.Module):
    """Two stages built from the same class, one with inplace ReLUs: not the same block (a non-number differs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=False))
        self.c = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.single = nn.Sequential(nn.Conv2d(8, 8, 1))
        self.single2 = nn.Sequential(nn.Conv2d(8, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.single2(self.single(self.c(self.b(self.a(x)))))


def test_only_numbers_become_arguments() -> None:
    data = _spec_data(from_module(Twice(), (4, 6, 6)).text)
    items = _items(data)
    # a and c differ in the conv's width only: one block (4 and 8: two values, so 4, the first, is the default);
    # b's ReLU is not in place: written out.
    assert "sequence" in items["b"]
    assert list(data["blocks"]) == ["unit"]  # containers named a and c share no name: a neutral one
    assert data["blocks"]["unit"]["args"] == {"out": 4}
    assert items["a"] == {"unit": {"name": "a"}} and items["c"] == {"unit": {"out": 8, "name": "c"}}
    # A group of one layer stays a group (a block would not make it shorter).
    assert "sequence" in items["single"] and "sequence" in items["single2"]


class Inception(nn.Module):
    """Szegedy et al. 2015, Fig. 2(b) in miniature: four branches on the module's input, concatenated."""

    def __init__(self, cin: int, c1: int, c3: int) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(cin, c1, 1)
        self.branch3 = nn.Sequential(nn.Conv2d(cin, c3 // 2, 1), nn.ReLU(), nn.Conv2d(c3 // 2, c3, 3, padding=1))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.pool(x)], 1)


class SE(nn.Module):
    """Hu et al. 2018: squeeze (global pool), excite (two 1x1 convs), scale the module's input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean([2, 3], keepdim=True)))))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.i1, self.se1 = Inception(8, 4, 8), SE(16)
        self.i2, self.se2 = Inception(16, 8, 16), SE(28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se2(self.i2(self.se1(self.i1(x))))


def test_branches_and_gates_read_the_blocks_input() -> None:
    model = Branchy().eval()
    imported = from_module(model, (8, 6, 6))
    data = _spec_data(imported.text)
    inception, se = data["blocks"]["Inception"], data["blocks"]["SE"]
    # every branch reads the module's input; the concat joins the branches by name
    # branch1 reads it implicitly (it comes first); branch3 and pool by `from: $input`
    assert [item.get("from") for item in inception["layers"]] == [None, "$input", "$input", None]
    assert inception["layers"][-1] == {"concat": ["branch1", "branch3", "pool"], "name": "concat"}
    assert inception["args"] == {"out": 4}  # branch1's width, 4 and 8; branch3's are its multiples (2x)
    assert se["layers"][-1] == {"mul": ["$input", "sigmoid"], "name": "mul"}
    # fc1 is c // 4 (4 and 7), fc2 c (16 and 28): fc2 is written as 4 times fc1's argument
    assert [item["conv"]["out_channels"] for item in se["layers"] if "conv" in item] == ["out", "4 * out"]
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert (1, *report.totals.output) == tuple(model(torch.zeros(1, 8, 6, 6)).shape)


@pytest.mark.parametrize("depths", [(1, 1, 1), (2, 2, 2), (4, 1, 3)])
def test_stage_depths_give_the_right_copies(depths: tuple[int, ...]) -> None:
    model = Net(depths).eval()
    imported = from_module(model, (3, 16, 16))
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    copies = {r.name.split(".")[0]: int(r.name.split(".")[1]) + 1 for r in report.rows if r.name.count(".") >= 2}
    assert copies == {"layer1": depths[0], "layer2": depths[1], "layer3": depths[2]}


class Unit(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


def test_copies_that_differ_stay_calls_and_alike_ones_repeat() -> None:
    widening = nn.Sequential(nn.Sequential(Unit(4, 4), Unit(4, 8), Unit(8, 16)))  # three widths: no repeat
    data = _spec_data(from_module(widening, (4, 5, 5)).text)
    assert data["blocks"]["Unit"]["args"] == {"out": None}
    (stage,) = data["layers"]
    assert stage["name"] == "0" and [item["Unit"]["out"] for item in stage["sequence"]] == [4, 8, 16]
    steady = nn.Sequential(nn.Sequential(Unit(4, 8), Unit(8, 8), Unit(8, 8)))  # copy 0 differs by its input only
    data = _spec_data(from_module(steady, (4, 5, 5)).text)
    (stage,) = data["layers"]
    assert stage == {"repeat": 3, "name": "0", "block": {"Unit": {}}}  # the input width is not an argument


def test_cli_flat_writes_every_layer_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nets.py").write_text("from tests.test_import_blocks import Net\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    for args, stem in (([], "blocks"), (["--flat"], "flat")):
        result = CliRunner().invoke(app, ["import", "nets:Net", "-i", "3x32x32", "-o", str(tmp_path / f"{stem}.yaml"),
                                          *args])
        assert result.exit_code == 0, result.output
    blocked, flat = (load_spec(tmp_path / f"{stem}.yaml") for stem in ("blocks", "flat"))
    flat_data = _spec_data((tmp_path / "flat.yaml").read_text(encoding="utf-8"))
    assert "blocks" not in flat_data
    assert not any("repeat" in item for item in flat_data["layers"] if isinstance(item, dict))
    assert "blocks" in _spec_data((tmp_path / "blocks.yaml").read_text(encoding="utf-8"))
    model = Net()
    assert analyze(flat).totals.params == sum(p.numel() for p in model.parameters())
    assert _figures(flat) == _figures(blocked)
