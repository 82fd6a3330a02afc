"""Issue 30: `archcalc compare convnext_tiny swin_t vit_b_16 resnet50` — the comparison ConvNeXt's paper makes (Liu
et al. 2022, "A ConvNet for the 2020s", Table 1: ConvNeXt-T next to Swin-T, ViT-B/16 next to the ResNets) — works by
the bare names, and every figure is the published one: torchvision's parameter counts and GMACs for its three
models (tests/data/torchvision_published.json, torchvision_swin.json and torchvision_vit.json, copied from
torchvision's weights metadata), and for resnet50, the bundled spec of He et al.'s paper, its Table 1's 3.8 x 10^9
multiply-adds (the paper's own stride placement; torchvision's "v1.5" moves the stride and costs 4.09 G)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from archcalc.cli.app import app

DATA = Path(__file__).parent / "data"


def _published() -> dict[str, tuple[int, str]]:
    out = {}
    listed = json.loads((DATA / "torchvision_published.json").read_text())["models"]
    out["torchvision/convnext_tiny"] = (listed["convnext_tiny"]["num_params"], listed["convnext_tiny"]["gmacs"])
    for name, path in (("swin_t", "torchvision_swin.json"), ("vit_b_16", "torchvision_vit.json")):
        row = json.loads((DATA / path).read_text())[name]
        out[f"torchvision/{name}"] = (row["published_params"], row["published_gmacs"])
    return out


def test_convnext_swin_vit_and_resnet_compared_by_their_bare_names() -> None:
    result = CliRunner().invoke(app, ["compare", "convnext_tiny", "swin_t", "vit_b_16", "resnet50", "--format",
                                      "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r["totals"] for r in json.loads(result.output)}
    assert list(rows) == ["torchvision/convnext_tiny", "torchvision/swin_t", "torchvision/vit_b_16", "resnet50"]
    for name, (params, gmacs) in _published().items():
        assert rows[name]["params"] == params, name
        assert f"{rows[name]['macs'] / 1e9:.3f}" == gmacs, name  # torchvision rounds to three decimals
        assert rows[name]["flops"] == 2 * rows[name]["macs"]  # the torch convention, compare's default
    # He et al. 2016, Table 1: ResNet-50, 3.8 x 10^9 multiply-adds (stated to one decimal, cut, not rounded:
    # 3.86 G with the paper's stride placement); its parameters are torchvision's (the stride moves no weight)
    assert 3.8e9 <= rows["resnet50"]["macs"] < 3.9e9
    assert rows["resnet50"]["params"] == json.loads((DATA / "torchvision_published.json").read_text())[
        "models"]["resnet50"]["num_params"]
