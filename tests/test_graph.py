"""The graph language: named tensors (`from:`), merges of named tensors, several inputs and outputs, `when:`,
size-matching ops; the bundled U-Net and FPN pinned to their papers and to torchvision; errors that name paths.

Oracles: hand arithmetic from the papers, torchvision's own FPN measured in a separate environment
(tests/data/fpn_resnet50_torchvision.json), plain torch.nn modules written here, torch.profiler's memory events.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module
from archcalc.torch.profile.probes import cpu_peak_bytes
from archcalc.torch.validate import validate

DATA = Path(__file__).resolve().parent / "data"
runner = CliRunner()


def conv(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout + cout  # weights + bias


# ---- U-Net (Ronneberger et al. 2015) -------------------------------------------------------------------------------


def test_unet_matches_the_paper() -> None:
    report = analyze(load_spec(bundled()["unet"]))
    # Fig. 1: 572x572 in, 388x388 x 2 classes out.
    assert report.input == (1, 572, 572) and report.totals.output == (2, 388, 388)
    widths = [64, 128, 256, 512, 1024]
    encoder = conv(1, 64, 3) + conv(64, 64, 3) + sum(conv(a, b, 3) + conv(b, b, 3) for a, b in zip(widths, widths[1:]))
    decoder = sum(conv(b, a, 2) + conv(b, a, 3) + conv(a, a, 3)  # 2x2 up-conv halving, then two 3x3 on the concat
                  for a, b in zip(widths[:-1], widths[1:]))
    assert report.totals.params == encoder + decoder + conv(64, 2, 1) == 31_030_658
    shapes = {r.name: r.output for r in report.rows}
    # Each level: two valid 3x3 convs lose 4 pixels; pooling halves; the crops match the up-convolutions.
    assert shapes["down1.relu2"] == (64, 568, 568) and shapes["bottom.relu2"] == (1024, 28, 28)
    assert shapes["up1.crop"] == (512, 56, 56) and shapes["up1.concat1"] == (1024, 56, 56)
    assert shapes["up4.crop"] == (64, 392, 392)
    rows = {r.name: r for r in report.rows}
    # a row reads the tensor made by a layer (down4 is its block; its last layer made the tensor)
    assert rows["up1.crop"].reads == ("down4.relu2",) and rows["up1.concat1"].reads == ("up1.crop", "up1.upconv")


def test_unet_validates_against_torch_at_a_small_size() -> None:
    # The smallest input the valid convolutions allow is 188 (output 4x4); 16 base channels keep it quick.
    spec = load_spec(bundled()["unet"], overrides={"base": "8"})
    v = validate(spec, "cpu", batch=2, input_shape=(1, 188, 188))
    assert v.ok, [str(c) for c in v.failures]
    assert {c.quantity for c in v.checks} >= {"output_shape", "params", "macs", "fvcore_flops", "saved_bytes"}


def test_unet_encoder_features_live_across_the_decoder() -> None:
    # The liveness model's point about U-Nets: down1 (the largest map) is alive until up4 reads it, so the peak
    # includes it beside the decoder's last level. Checked against the profiler's memory events on a small U-Net.
    spec = load_spec(bundled()["unet"], overrides={"base": "8"})
    report = analyze(spec, input_shape=(1, 188, 188))
    torch.set_num_threads(1)
    model = build_module(report)
    x = torch.randn(1, 1, 188, 188)
    with torch.no_grad():
        model(x)
        measured = cpu_peak_bytes(lambda: model(x))
    t = report.totals
    predicted = t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4
    # CPU convolutions with few channels use im2col workspace, which no analytic model predicts (README):
    # the model is a lower bound here, and the skip tensor is part of it.
    down1 = 8 * 184 * 184 * 4
    assert predicted > down1 and measured >= predicted


# ---- FPN on ResNet-50 (Lin et al. 2017; torchvision.ops.FeaturePyramidNetwork) -------------------------------------


def test_fpn_equals_torchvisions_feature_pyramid() -> None:
    measured = json.loads((DATA / "fpn_resnet50_torchvision.json").read_text())
    report = analyze(load_spec(bundled()["fpn_resnet50"]), convention="fvcore")
    assert report.totals.params == measured["params"] == 26_852_416
    assert report.totals.buffers == measured["buffers"]
    assert report.totals.macs == measured["macs"]
    assert report.totals.flops == measured["fvcore"]
    assert [list(s) for _, s in report.outputs] == [shape[1:] for shape in measured["outputs"].values()]
    assert [n for n, _ in report.outputs] == ["p2", "p3", "p4", "p5"]
    # Outputs at four strides (4, 8, 16, 32) of the 800x800 input.
    assert [800 // s[1] for _, s in report.outputs] == [4, 8, 16, 32]
    feeds = {r.name: r.feeds for r in report.rows}
    assert feeds["fpn.p5"] == ("p5",) and feeds["fpn.inner2"] == ("p2",) and len(feeds["conv1"]) == 4


def test_fpn_validates_on_meta_and_lists_every_output() -> None:
    v = validate(load_spec(bundled()["fpn_resnet50"]), "meta")
    assert v.ok
    result = runner.invoke(app, ["calc", "fpn_resnet50", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["outputs"] == {"p2": [256, 200, 200], "p3": [256, 100, 100], "p4": [256, 50, 50],
                               "p5": [256, 25, 25]}
    assert next(r for r in data["layers"] if r["name"] == "fpn.merged4")["reads"] == ["fpn.inner4", "fpn.up5"]


# ---- the language ---------------------------------------------------------------------------------------------------

TWO_HEADS = """
name: two_heads
inputs: {image: [3, 16, 16], extra: [2, 16, 16]}
args: {aux: 1}
blocks:
  stage:
    args: {out: ~, se: 0}
    layers:
      - conv: {out: out, kernel: 3, padding: 1}
      - relu
      - parallel: [[], [global_avgpool, {conv: {out: out, kernel: 1}}, sigmoid]]
        merge: mul
        when: se > 0
layers:
  - stage: {out: 8, name: s1}
  - stage: {out: 8, se: 1, name: s2}
  - concat: [s2, extra]
    name: joined
  - conv: {out: 4, kernel: 1, name: out}
  - global_avgpool:
    from: s1
    name: pool
    when: aux > 0
  - linear: {out: 3, name: aux}
    when: aux > 0
outputs:
  - out
  - aux: aux
    when: aux > 0
"""


class TwoHeads(nn.Module):
    """TWO_HEADS written in plain torch.nn (aux on): the oracle for the builder, the executor and the counts."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.se = nn.Conv2d(8, 8, 1)
        self.out, self.aux = nn.Conv2d(10, 4, 1), nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = torch.relu(self.c1(image))
        s2 = torch.relu(self.c2(s1))
        s2 = s2 * torch.sigmoid(self.se(s2.mean([2, 3], keepdim=True)))
        out = self.out(torch.cat([s2, extra], 1))
        return {"out": out, "aux": self.aux(s1.mean([2, 3]))}


def test_inputs_outputs_when_against_plain_torch(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(TWO_HEADS)), batch=2)
    ref = TwoHeads()
    assert report.totals.params == sum(p.numel() for p in ref.parameters())
    assert dict(report.outputs) == {"out": (4, 16, 16), "aux": (3,)}
    assert [r.name for r in report.rows if r.kind == "mul"] == ["s2.parallel1.mul"]  # `when` kept only s2's SE
    model = build_module(report)
    # Same function: load the reference's weights by position and compare outputs.
    for mine, theirs in zip([p for p in model.parameters()], [ref.c1.weight, ref.c1.bias, ref.c2.weight,
                                                                ref.c2.bias, ref.se.weight, ref.se.bias,
                                                                ref.out.weight, ref.out.bias, ref.aux.weight,
                                                                ref.aux.bias]):
        mine.data.copy_(theirs.data)
    image, extra = torch.randn(2, 3, 16, 16), torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        got, want = model(image, extra), ref(image, extra)
    assert set(got) == {"out", "aux"}
    assert torch.allclose(got["out"], want["out"], atol=1e-6) and torch.allclose(got["aux"], want["aux"], atol=1e-6)
    v = validate(load_spec(write_spec(TWO_HEADS)), "cpu", batch=2)
    assert v.ok, [str(c) for c in v.failures]


def test_when_false_removes_the_head_and_its_output(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(TWO_HEADS.replace("aux: 1}", "aux: 0}"))))
    assert [n for n, _ in report.outputs] == ["out"]
    assert "aux" not in {r.name for r in report.rows}
    assert report.totals.params == sum(p.numel() for p in TwoHeads().parameters()) - (8 * 3 + 3)


def _error(write_spec, text: str) -> str:  # type: ignore[no-untyped-def]
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        analyze(load_spec(path))
    message = str(info.value)
    assert message.startswith(f"{path}:"), message  # located: file:line:col
    return message


BASE = """
name: t
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1, name: a}
  - conv: {out: 6, kernel: 3, padding: 1, name: b}
"""


def test_reference_errors_are_located_and_explained(write_spec) -> None:  # type: ignore[no-untyped-def]
    msg = _error(write_spec, BASE + "  - relu:\n    from: bb\n")
    assert "no tensor named 'bb'" in msg and "did you mean 'b'" in msg
    msg = _error(write_spec, BASE.replace("name: a}", "name: a}\n    from: b"))
    assert "not computed yet" in msg and "cycle" in msg
    msg = _error(write_spec, BASE + "  - add: [a, b]\n")
    assert "'a' gives 4x8x8 but 'b' gives 6x8x8" in msg and "cannot be added" in msg
    two = BASE + "  - sequence: [{relu: {name: x}}]\n    name: p\n  - sequence: [{relu: {name: x}}]\n    name: q\n"
    msg = _error(write_spec, two + "  - relu:\n    from: x\n")
    assert "ambiguous" in msg and "p.x" in msg and "q.x" in msg
    msg = _error(write_spec, BASE + "outputs: [a, nothing]\n")
    assert "no tensor named 'nothing'" in msg
    msg = _error(write_spec, BASE + "  - relu:\n    from: a\n    name: dead\noutputs: [b]\n")
    assert "dead: no output depends on this layer" in msg and "unused: allow" in msg


def test_unused_allow_warns_and_leaves_the_layer_out(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(BASE + "  - conv: {out: 5, kernel: 1, name: dead}\n    from: a\noutputs: [b]\nunused: allow\n")
    report = analyze(load_spec(path))
    assert report.totals.params == conv(3, 4, 3) + conv(4, 6, 3)
    assert [r.name for r in report.rows if not r.used] == ["dead"]
    assert any("dead" in str(w) for w in report.warnings)


def test_cli_error_exit_code(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(BASE + "  - relu:\n    from: bb\n")
    result = runner.invoke(app, ["calc", str(path)])
    assert result.exit_code == 2 and f"{path}:8:11:" in result.stderr, result.output


# ---- size matching ----------------------------------------------------------------------------------------------

SEG = """
name: seg
input: [3, 20, 20]
layers:
  - conv: {out: 8, kernel: 3, stride: 2, padding: 1, name: enc}
  - conv: {out: 5, kernel: 1, name: cls}
  - upsample: {size_of: input, mode: linear, name: up}
"""


def test_upsample_to_the_input_size_as_torchvisions_segmentation_heads(write_spec) -> None:  # type: ignore
    report = analyze(load_spec(write_spec(SEG)), convention="fvcore")
    assert report.totals.output == (5, 20, 20)
    enc, cls = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 5, 1)
    x = torch.randn(1, 3, 20, 20)
    y = nn.functional.interpolate(cls(enc(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert tuple(y.shape[1:]) == report.totals.output
    assert validate(load_spec(write_spec(SEG)), "cpu", batch=2).ok


def test_a_dag_with_long_skips_has_the_measured_peak(write_spec) -> None:  # type: ignore[no-untyped-def]
    # 64-channel convs take the CPU path without im2col workspace, so the prediction is exact.
    text = """
name: skips
input: [64, 16, 16]
layers:
  - conv: {out: 64, kernel: 1, name: a}
  - conv: {out: 64, kernel: 1, name: b}
  - maxpool: {kernel: 2, name: p}
  - conv: {out: 64, kernel: 1, name: c}
  - upsample: {size_of: a, name: u}
  - concat: [a, b, u]
  - conv: {out: 64, kernel: 1, name: d}
  - add: [d, b]
"""
    report = analyze(load_spec(write_spec(text)))
    torch.set_num_threads(1)
    model = build_module(report)
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        model(x)
        measured = cpu_peak_bytes(lambda: model(x))
    t = report.totals
    assert measured == t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4


# ---- ConvNeXt-Tiny (Liu et al. 2022) ----------------------------------------------------------------------------


def test_convnext_tiny_matches_the_paper() -> None:
    # Liu et al., A ConvNet for the 2020s, CVPR 2022, Table 1 and Sec. 2: ConvNeXt-T, 224^2, 28M parameters and
    # 4.5 G "FLOPs" (multiply-adds); torchvision's convnext_tiny publishes 28,589,128 and 4.456 GMACs.
    report = analyze(load_spec(bundled()["torchvision/convnext_tiny"]))
    assert round(report.totals.params / 1e6, 1) == 28.6 and round(report.totals.macs / 1e9, 1) == 4.5
    kinds = {r.kind for r in report.rows}
    assert {"channel_layernorm", "layer_scale", "stochastic_depth", "gelu", "add"} <= kinds
    # Stages of depth 3, 3, 9, 3 at widths 96, 192, 384, 768: one layer scale per block.
    scales = [r for r in report.rows if r.kind == "layer_scale"]
    assert len(scales) == 18 and [r.params for r in scales[:1] + scales[-1:]] == [96, 768]
