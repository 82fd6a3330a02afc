"""The library's front door (issue 27): archcalc.summary / archcalc.analyze on an nn.Module written here in plain
torch.nn, on a bundled name, a path and a Spec; str() is calc's table, to_json() calc's JSON, repr() one line,
_repr_html_ a notebook table. Expected figures come from torch (parameters, FlopCounterMode) and from
torchvision's published metadata (tests/data/torchvision_published.json), never from archcalc."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

import archcalc
from archcalc.cli.app import app
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import open_spec

DATA = Path(__file__).parent / "data"
PUBLISHED = json.loads((DATA / "torchvision_published.json").read_text(encoding="utf-8"))["models"]
runner = CliRunner()


class Basic(nn.Module):
    """A torchvision-style residual network: stem, two basic blocks (one projecting), pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.a1, self.abn1 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.a2, self.abn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.b1, self.bbn1 = nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)
        self.b2, self.bbn2 = nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.abn2(self.a2(self.relu(self.abn1(self.a1(x))))) + x)
        x = self.relu(self.bbn2(self.b2(self.relu(self.bbn1(self.b1(x))))) + self.down(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_summary_of_a_module_matches_torch() -> None:
    model = Basic().eval()
    s = archcalc.summary(model, (3, 224, 224))
    assert s.totals.params == sum(p.numel() for p in model.parameters())
    assert s.totals.buffers == sum(b.numel() for b in model.buffers())
    with FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 224, 224))
    assert s.totals.flops == counter.get_total_flops()  # convention 'torch' by default: FlopCounterMode's
    assert s.totals.macs * 2 == counter.get_total_flops()
    assert s.totals.output == tuple(out.shape[1:])
    batch = archcalc.summary(model, (3, 224, 224), batch=4, convention="macs")
    assert batch.totals.flops == batch.totals.macs == 4 * s.totals.macs


def test_summary_of_a_bundled_name_matches_torchvisions_metadata() -> None:
    s = archcalc.summary("torchvision/resnet50")  # torchvision's ResNet-50 (v1.5: stride in the 3x3 conv)
    published = PUBLISHED["resnet50"]
    assert s.totals.params == published["num_params"] == 25_557_032
    assert f"{s.totals.macs / 1e9:.3f}" == published["gmacs"]  # torchvision's "GFLOPS" are GMACs
    assert s.report.input == tuple(published["input"])
    assert archcalc.summary("resnet50").totals.params == 25_557_032  # the paper's v1: the same parameters


def test_analyze_accepts_what_summary_accepts(tmp_path: Path) -> None:
    by_name = archcalc.analyze("lenet5")  # raised AttributeError before the front door
    spec = open_spec("lenet5")
    assert archcalc.analyze(spec).totals == by_name.totals
    assert archcalc.analyze(spec.path).totals == by_name.totals
    assert archcalc.analyze(Path(spec.path)).totals == by_name.totals
    bigger = archcalc.analyze("lenet5", (1, 64, 64))  # input_size overrides a spec's own input
    assert bigger.input == (1, 64, 64) and bigger.totals.macs > by_name.totals.macs
    assert archcalc.analyze(Basic(), (3, 64, 64)).totals.params == sum(p.numel() for p in Basic().parameters())
    with pytest.raises(ArchcalcError, match="needs input_size"):
        archcalc.summary(Basic())
    with pytest.raises(ArchcalcError, match="cannot analyze a int"):
        archcalc.summary(3)
    with pytest.raises(ArchcalcError, match="did you mean"):
        archcalc.summary("resnet5O")


@pytest.mark.parametrize("args,kwargs", [
    ([], {}),
    (["--batch", "8", "--dtype", "float16", "--optimizer", "adam", "--depth", "2", "--convention", "full"],
     {"batch": 8, "dtype": "float16", "optimizer": "adam", "depth": 2, "convention": "full"}),
    (["--fit", "1GiB", "--amp", "bf16"], {"fit": 1 << 30, "amp": "bf16"}),
])
def test_to_json_is_the_clis_json(args: list[str], kwargs: dict) -> None:  # type: ignore[type-arg]
    result = runner.invoke(app, ["calc", "resnet18", "--format", "json", *args])
    assert result.exit_code == 0, result.output
    s = archcalc.summary("resnet18", **kwargs)
    assert s.to_json() + "\n" == result.output
    assert s.to_dict() == json.loads(result.output)


def test_str_is_the_table_and_repr_one_line() -> None:
    result = runner.invoke(app, ["calc", "lenet5", "--batch", "2"], env={"COLUMNS": ""})
    assert result.exit_code == 0, result.output
    s = archcalc.summary("lenet5", batch=2)
    assert str(s) + "\n" == result.output
    text = repr(s)
    assert "\n" not in text and len(text) < 250
    assert "'lenet5'" in text and "61,750 params" in text and "batch 2" in text
    assert "61,750" in str(s)  # the parameter total, as the table's footer writes it


def test_html_for_notebooks() -> None:
    s = archcalc.summary("lenet5", batch=2)
    page = s._repr_html_()
    assert page.startswith("<table>") and page.count("<table>") == 1 and "</table>" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert len(rows) == 1 + len(s.rows) + 1  # the header, one row per layer, the total
    heads = re.findall(r"<th>(.*?)</th>", rows[0])
    assert heads[:2] == ["name", "kind"] and "params" in heads and "macs" in heads
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows[1:]]
    assert [c[0] for c in cells] == [r.name for r in s.rows] + ["total"]
    params = heads.index("params")
    assert sum(int(c[params]) for c in cells[:-1]) == int(cells[-1][params]) == 61_750
    assert "lenet5 — input 1×32×32, batch 2" in page and "convention &#x27;torch&#x27;" in page
    assert "training memory" in page  # the summary lines under the table


def test_html_escapes_names(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: '<b>x</b> & y'\ninput: [3, 8, 8]\nlayers:\n  - conv: {out: 4, kernel: 3}\n")
    page = archcalc.summary(str(path))._repr_html_()
    assert "<b>" not in page and "&lt;b&gt;x&lt;/b&gt; &amp; y" in page


def test_front_door_does_not_import_torch_for_a_spec() -> None:
    code = ("import sys, archcalc; s = archcalc.summary('resnet50'); str(s); s._repr_html_(); s.to_json(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_reports_repr_is_one_line() -> None:
    report = archcalc.analyze("resnet50", batch=2)
    text = repr(report)
    assert "\n" not in text and len(text) < 300  # the tuple's own repr was 179,835 characters
    assert "'resnet50'" in text and "batch=2" in text and f"params={25_557_032}" in text
    assert f"{len(report.rows)} rows" in text
