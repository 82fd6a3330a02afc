"""HRNetV2-W18 (bundled as `hrnetv2_w18`) against a plain-PyTorch HRNetV2-W18 written here from the paper (Wang et
al., TPAMI 2020, Sec. 3 and Fig. 2-4) and the structure of the authors' segmentation code: parameters, buffers,
MACs (FlopCounterMode) and the shapes of every stage's branches and of the output are exact; at `--depth 1` and `2`
the table, the JSON and the graph show each stage's several outputs and every tensor that passes between stages."""

from __future__ import annotations

import json
import re

import pytest
from conftest import report_of
from typer.testing import CliRunner

from archcalc.cli.app import app

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

runner = CliRunner()
CHANNELS = (18, 36, 72, 144)
SMALL = (3, 128, 256)  # a quarter of Cityscapes' 512x1024 on each axis: every stride divides it


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv3(c, c), nn.BatchNorm2d(c), conv3(c, c), nn.BatchNorm2d(c)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  conv3(width, width), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width))
        self.down = (nn.Sequential(nn.Conv2d(cin, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width))
                     if cin != 4 * width else nn.Identity())

    def forward(self, x):  # type: ignore[no-untyped-def]
        return F.relu(self.body(x) + self.down(x))


class Module(nn.Module):
    """An exchange unit: four basic blocks per branch, then every output the ReLU of a sum over all branches."""

    def __init__(self, n: int) -> None:
        super().__init__()
        c = CHANNELS[:n]
        self.branches = nn.ModuleList(nn.Sequential(*(Basic(ch) for _ in range(4))) for ch in c)
        self.fuse = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(c[j], c[i], 1, bias=False), nn.BatchNorm2d(c[i])))
                elif j < i:
                    steps: list[nn.Module] = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        steps += [conv3(c[j], c[i] if last else c[j], 2), nn.BatchNorm2d(c[i] if last else c[j])]
                        if not last:
                            steps.append(nn.ReLU())
                    row.append(nn.Sequential(*steps))
                else:
                    row.append(nn.Identity())
            self.fuse.append(row)

    def forward(self, xs):  # type: ignore[no-untyped-def]
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            y = 0
            for j, f in enumerate(row):
                t = f(xs[j])
                if j > i:
                    t = F.interpolate(t, size=xs[i].shape[-2:], mode="bilinear", align_corners=True)
                y = y + t
            out.append(F.relu(y))
        return out


def cbr(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU())


class HRNetV2(nn.Module):
    def __init__(self, classes: int = 19) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 64, 2), cbr(64, 64, 2))
        self.layer1 = nn.Sequential(Bottleneck(64), Bottleneck(256), Bottleneck(256), Bottleneck(256))
        self.t1 = nn.ModuleList([cbr(256, 18, 1), cbr(256, 36, 2)])
        self.stage2 = nn.ModuleList([Module(2)])
        self.t2, self.stage3 = cbr(36, 72, 2), nn.ModuleList(Module(3) for _ in range(4))
        self.t3, self.stage4 = cbr(72, 144, 2), nn.ModuleList(Module(4) for _ in range(3))
        total = sum(CHANNELS)
        self.head = nn.Sequential(nn.Conv2d(total, total, 1), nn.BatchNorm2d(total), nn.ReLU(),
                                  nn.Conv2d(total, classes, 1))
        self.stages: dict[str, list[tuple[int, ...]]] = {}

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.layer1(self.stem(x))
        xs = [t(x) for t in self.t1]
        for name, stage, transition in (("stage2", self.stage2, None), ("stage3", self.stage3, self.t2),
                                        ("stage4", self.stage4, self.t3)):
            if transition is not None:
                xs = [*xs, transition(xs[-1])]
            for module in stage:
                xs = module(xs)
            self.stages[name] = [tuple(t.shape[1:]) for t in xs]
        size = xs[0].shape[-2:]
        ups = [F.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in xs[1:]]
        return self.head(torch.cat([xs[0], *ups], 1))


@pytest.fixture(scope="module")
def measured() -> dict[str, object]:
    torch.manual_seed(0)
    model = HRNetV2().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, *SMALL))
    return {"params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for b in model.buffers()),
            "macs": counter.get_total_flops() // 2,  # FlopCounterMode: 2 per MAC of conv (no linear here)
            "output": tuple(out.shape[1:]), "stages": dict(model.stages)}


def test_hrnetv2_w18_equals_pytorch(measured: dict[str, object]) -> None:
    report = report_of("hrnetv2_w18", input_shape=SMALL)
    assert report.totals.params == measured["params"] == 9_641_119
    assert report.totals.buffers == measured["buffers"]
    assert report.totals.macs == measured["macs"]
    assert report.totals.output == measured["output"] == (19, 32, 64)
    # MACs of convolutions scale with the area when every stride divides the input: at 512x1024, 16 times
    assert report_of("hrnetv2_w18").totals.macs == 16 * measured["macs"]  # type: ignore[operator]
    stages = {r.name: r for r in report.outline if r.depth == 1 and not r.leaf}
    for name, shapes in measured["stages"].items():  # type: ignore[attr-defined]
        assert [shape for _, shape in stages[name].outputs] == shapes, name


def calc_json(*args: str) -> dict[str, object]:
    result = runner.invoke(app, ["calc", "hrnetv2_w18", "-f", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_depth_1_and_2_show_every_output_in_json(measured: dict[str, object]) -> None:
    small = "x".join(map(str, SMALL))
    d1 = {r["name"]: r for r in calc_json("--depth", "1", "--input", small)["layers"]}
    for name, shapes in measured["stages"].items():  # type: ignore[attr-defined]
        assert list(d1[name]["outputs"].values()) == [list(s) for s in shapes], name
        last = {"stage2": "m1", "stage3": "m4", "stage4": "m3"}[name]  # the stage's last module makes them
        assert list(d1[name]["outputs"]) == [f"{name}.{last}.f{k}" for k in range(1, len(shapes) + 1)]
    # what each stage reads: every tensor the one before it made, in the order first read (the transition to the
    # new branch reads the lowest branch first); the head's upsampling and concatenation read stage 4's four
    assert d1["stage2"]["reads"] == ["layer1.3.relu3"]
    assert d1["stage3"]["reads"] == ["stage2.m1.f2", "stage2.m1.f1"]
    assert d1["stage4"]["reads"] == ["stage3.m4.f3", "stage3.m4.f1", "stage3.m4.f2"]
    assert [d1[n]["reads"] for n in ("up2", "up3", "up4", "concat")] == [
        ["stage4.m3.f2"], ["stage4.m3.f3"], ["stage4.m3.f4"], ["stage4.m3.f1", "up2", "up3", "up4"]]
    assert d1["head"]["reads"] == ["concat"]
    assert "outputs" not in d1["layer1"] and "outputs" not in d1["head"]  # one output: "output" says it
    d2 = {r["name"]: r for r in calc_json("--depth", "2", "--input", small)["layers"]}
    assert list(d2["stage3.m4"]["outputs"].values()) == [list(s) for s in measured["stages"]["stage3"]]  # type: ignore[index]
    assert d2["stage3.m2"]["reads"] == ["stage3.m1.f1", "stage3.m1.f2", "stage3.m1.f3"]
    assert d2["stage3.m1"]["reads"] == ["stage2.m1.f1", "stage2.m1.f2", "stage3.t3.relu1"]  # tensors by name
    assert d2["stage3.t3"]["reads"] == ["stage2.m1.f2"] and "outputs" not in d2["stage3.t3"]


def test_depth_1_table_lists_every_output_shape() -> None:
    result = runner.invoke(app, ["calc", "hrnetv2_w18", "--depth", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("│ stage4 "))
    cells = [[cell.strip() for cell in line.split("│")[1:4]] for line in lines[start:start + 4]]
    # one line per output, in the output column; the name and kind only on the first
    assert cells == [["stage4", "sequence", "18×128×256"], ["", "", "36×64×128"], ["", "", "72×32×64"],
                     ["", "", "144×16×32"]], cells
    md = runner.invoke(app, ["calc", "hrnetv2_w18", "--depth", "1", "-f", "md"]).stdout
    assert "| stage3 | sequence | 18×128×256, 36×64×128, 72×32×64 |" in md
    csv = runner.invoke(app, ["calc", "hrnetv2_w18", "--depth", "1", "-f", "csv"]).stdout
    assert "\nstage2,sequence,18x128x256 36x64x128," in csv


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_depth_1_graph_draws_every_tensor_between_stages(fmt: str) -> None:
    result = runner.invoke(app, ["graph", "hrnetv2_w18", "--depth", "1", "-f", fmt])
    assert result.exit_code == 0, result.output
    text = result.stdout
    ids = (dict(re.findall(r'^  (n\d+)[\[{]+"(\w+)<br>', text, flags=re.M)) if fmt == "mermaid"
           else {n: n for n in re.findall(r'^  "(\w+)" \[label=', text, flags=re.M)})
    assert {"stage2", "stage3", "stage4", "up2", "concat", "head"} <= set(ids.values()), ids
    node = {name: id_ for id_, name in ids.items()}
    arrow = "-->" if fmt == "mermaid" else "->"
    edges = re.findall(rf'^  "?(\w+)"? {arrow}(?:\|"([^"]*)"\|)? "?(\w+)"?(?: \[label="([^"]*)"\])?;?$', text,
                       flags=re.M)
    between = [(a, (lm or ld), b) for a, lm, b, ld in edges]

    def of(a: str, b: str) -> list[str]:  # the labels of the edges from a to b (in the order read: sorted here)
        return sorted((label for x, label, y in between if x == node[a] and y == node[b]), key=len)

    # stage 3 reads both outputs of stage 2, stage 4 all three of stage 3, the head all four of stage 4: one edge
    # per tensor, labelled with its shape
    assert sorted(of("stage2", "stage3")) == sorted(["18×128×256", "36×64×128"])
    assert sorted(of("stage3", "stage4")) == sorted(["18×128×256", "36×64×128", "72×32×64"])
    assert [of("stage4", n) for n in ("up2", "up3", "up4", "concat")] == [
        ["36×64×128"], ["72×32×64"], ["144×16×32"], ["18×128×256"]]
    assert of("layer1", "stage2") == [""]  # a block with one output: a plain edge, as before
    label = "<br>" if fmt == "mermaid" else "\\n"
    assert f"stage4{label}sequence{label}18×128×256{label}36×64×128{label}72×32×64{label}144×16×32{label}" in text
