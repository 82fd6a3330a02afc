"""Issue 28's patterns that tests/test_import_idioms.py does not already show, written here in plain torch (no timm,
no ultralytics): every functional conv, `F.pad` in every mode, channel slicing, a norm + activation wrapper,
constant and parameter arithmetic of every shape, YOLOv8's C2f as ultralytics writes it (`x.chunk(2, 1)`), Python
control flow over shapes, hand-written `torch.var` / `mean` normalisations, WaveNet at the issue's size (1,283,776
parameters) and a padding computed from `.size()` run at a new `--input` through the CLI. Each is checked against
torch itself: the module's own parameter and buffer counts, its output shape and FlopCounterMode's count (archcalc's
`torch` convention). A pattern the importer may still refuse is checked either way: imported with every figure
exact, or refused with one line that names this file and the line of the op."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from import_check import check, measured
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.torch.importer import ImportFailure, from_module

runner = CliRunner()


def line_of(function: object, text: str) -> int:
    """The line of `function`'s source that contains `text` (the op a refusal must point at)."""
    lines, first = inspect.getsourcelines(function)  # type: ignore[arg-type]
    hits = [first + i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, (text, hits)
    return hits[0]


def exact_or_refused_here(model: nn.Module, shape: tuple[int, ...], line: int) -> str:
    """A pattern the importer may not know yet: imported, every figure is exact; refused, the message is one line
    naming this file and `line` (the user's own op, never torch's). Returns which."""
    try:
        check(model, shape)
    except ImportFailure as exc:
        message = str(exc)
        assert "\n" not in message.strip(), message
        assert f"{__file__}:{line}" in message, message
        assert "torch/" not in message and "overrides.py" not in message, message
        return "refused"
    return "imported"


# ---- functional calls ----------------------------------------------------------------------------------------------


class FunctionalConvs(nn.Module):
    """F.conv1d, F.conv_transpose1d over a sequence; each weight a bare parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3, 3))
        self.b = nn.Parameter(torch.randn(6))
        self.up = nn.Parameter(torch.randn(6, 4, 2))  # conv_transpose weights are (in, out / groups, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(x, self.w, self.b, stride=2, padding=1)
        return F.conv_transpose1d(x, self.up, stride=2)


def test_functional_conv1d_and_its_transpose() -> None:
    text, report = check(FunctionalConvs(), (3, 20), (3, 33))
    assert [r.kind for r in report.rows] == ["conv", "conv_transpose"]
    # MACs by hand at length 20: conv 6 x 3 x 3 per output position on 10; the transpose 6 x 4 x 2 per input position.
    assert report.totals.macs == 6 * 3 * 3 * 10 + 6 * 4 * 2 * 10


class Functional3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3, 3))
        self.up = nn.Parameter(torch.randn(4, 2, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose3d(F.conv3d(x, self.w, stride=(1, 2, 2), padding=1), self.up, stride=(1, 2, 2))


def test_functional_conv3d_and_its_transpose() -> None:
    text, report = check(Functional3d(), (3, 4, 8, 8), (3, 5, 10, 6))
    assert [r.kind for r in report.rows] == ["conv", "conv_transpose"]
    assert report.totals.macs == 4 * 81 * (4 * 4 * 4) + 4 * 2 * 4 * (4 * 4 * 4)


class FunctionalTranspose2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, 3, 3))
        self.b = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.w, self.b, stride=2, padding=1, output_padding=1)


def test_functional_conv_transpose2d() -> None:
    text, report = check(FunctionalTranspose2d(), (3, 7, 7), (3, 5, 9))
    assert [r.kind for r in report.rows] == ["conv_transpose"] and report.totals.output == (4, 14, 14)


class ZeroPads(nn.Module):
    """F.pad's default mode and an explicit zero constant, asymmetric, and nn.ZeroPad2d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pad = nn.ZeroPad2d((0, 1, 2, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 2, 3, 0))
        x = F.pad(x, (1, 1, 1, 1), mode="constant", value=0.0)
        return self.pad(self.conv(x))


def test_zero_padding_in_every_spelling() -> None:
    text, report = check(ZeroPads(), (3, 8, 8), (3, 5, 11))
    assert [r.kind for r in report.rows] == ["zeropad", "zeropad", "conv", "zeropad"]


class PadMode(nn.Module):
    def __init__(self, mode: str, value: float | None) -> None:
        super().__init__()
        self.mode, self.value = mode, value
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 2, 3, 0), mode=self.mode, value=self.value))


@pytest.mark.parametrize("mode, value", [("reflect", None), ("replicate", None), ("circular", None),
                                         ("constant", 1.0)])
def test_padding_of_other_modes_is_exact_or_refused_at_the_call(mode: str, value: float | None) -> None:
    exact_or_refused_here(PadMode(mode, value), (3, 8, 8), line_of(PadMode.forward, "F.pad("))


class PadModule(nn.Module):
    def __init__(self, pad: nn.Module) -> None:
        super().__init__()
        self.pad, self.conv = pad, nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d(1), nn.ReplicationPad2d((1, 0, 2, 1)), nn.CircularPad2d(1),
                                 nn.ConstantPad2d(1, 0.5)], ids=lambda p: type(p).__name__)
def test_padding_modules_of_other_modes_are_exact_or_refused_at_the_call(pad: nn.Module) -> None:
    exact_or_refused_here(PadModule(pad), (3, 8, 8), line_of(PadModule.forward, "self.pad(x)"))


class Slices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.mix = nn.Conv2d(5, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, :3], self.mix(y[:, 3:])], 1)


def test_channel_slicing() -> None:
    text, report = check(Slices(), (3, 8, 8), (3, 6, 9))
    assert [r.kind for r in report.rows] == ["conv", "channel_slice", "channel_slice", "conv", "concat"]


# ---- wrappers ------------------------------------------------------------------------------------------------------


class GroupNormAct(nn.GroupNorm):
    """timm's GroupNormAct: a GroupNorm subclass whose forward calls F.group_norm and then its activation."""

    def __init__(self, groups: int, c: int) -> None:
        super().__init__(groups, c)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


def test_a_group_norm_and_activation_wrapper() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), GroupNormAct(4, 8), nn.Conv2d(8, 4, 1), GroupNormAct(1, 4))
    text, report = check(model, (3, 10, 10), (3, 7, 12))
    assert [r.kind for r in report.rows] == ["conv", "groupnorm", "gelu", "conv", "groupnorm", "gelu"]


# ---- constants and parameters --------------------------------------------------------------------------------------


class Constants(nn.Module):
    """Every spelling of arithmetic with a constant, and parameters of every broadcast shape: a position embedding
    (C x H x W), a learned scale per position (1 x 1 x H x W), per element (C x H x W) and per channel (C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 4, 4))
        self.per_position = nn.Parameter(torch.randn(1, 1, 4, 4))
        self.per_element = nn.Parameter(torch.randn(8, 4, 4))
        self.per_channel = nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x + 3
        x = x - 1
        x = torch.add(x, 2)
        x = x.mul(2)
        x = x / 2
        x = x + self.pos
        x = x * self.per_position
        x = self.per_element * x
        return x * self.per_channel


def test_constant_and_parameter_arithmetic() -> None:
    text, report = check(Constants(), (3, 4, 4))
    assert [r.kind for r in report.rows] == ["conv", "scalar", "scalar", "scalar", "scalar", "scalar", "bias",
                                             "layer_scale", "layer_scale", "layer_scale"]
    assert report.totals.params == 8 * 3 + 8 + 8 * 16 + 16 + 8 * 16 + 8
    # `full` counts one FLOP per output element for each of these nine element-wise ops (8 x 4 x 4 each).
    full = analyze(from_module(Constants(), (3, 4, 4)).spec, convention="full").rows
    assert [r.flops for r in full[1:]] == [8 * 16] * 9


# ---- YOLOv8's C2f as ultralytics writes it -------------------------------------------------------------------------


class ConvBNSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class C2fChunk(nn.Module):
    """YOLOv8's C2f (ultralytics/nn/modules/block.py, its forward): `list(self.cv1(x).chunk(2, 1))`, a chain of
    bottlenecks (here without a shortcut) on the second half, every intermediate concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(nn.Sequential(ConvBNSiLU(self.c, self.c, 3), ConvBNSiLU(self.c, self.c, 3))
                               for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def test_yolov8_c2f_with_chunk() -> None:
    text, report = check(C2fChunk(8, 16), (8, 12, 12), (8, 20, 9))
    assert [r.kind for r in report.rows].count("channel_slice") == 2 and "concat" in text


# ---- Python control flow over shapes -------------------------------------------------------------------------------


class ShapeFlow(nn.Module):
    """Branches and a loop over shapes, as people write them: the trace takes this input's path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3, "three channels"
        x = self.conv(x) if x.ndim == 4 else self.conv(x.unsqueeze(-1))
        while x.shape[-1] > 4:
            x = self.pool(x)
        if len(x.shape) == 4 and x.shape[-2] != x.shape[-1]:
            d = x.shape[-2] - x.shape[-1]
            x = x[:, :, d // 2 : d // 2 + x.shape[-1]]  # square it, centred
        return x


def test_python_control_flow_over_shapes() -> None:
    text, report = check(ShapeFlow(), (3, 16, 16))
    assert [r.kind for r in report.rows] == ["conv", "maxpool", "maxpool"]
    # Not square: centred to a size computed from both sides, which the spec writes as this input's numbers and
    # says so at the slice's line (the figures are exact at this input).
    model = ShapeFlow()
    imported = from_module(model, (3, 24, 12))
    line = line_of(ShapeFlow.forward, "square it")
    assert imported.warnings == (f"[] (indexing) at the top level ({__file__}:{line}): a size computed from the "
                                 "tensors' sizes is written as this input's numbers",)
    report = analyze(imported.spec, convention="torch")
    assert [r.kind for r in report.rows] == ["conv", "maxpool", "maxpool", "crop"]
    assert (report.totals.output, report.totals.flops) == measured(model, (3, 24, 12)) == ((4, 3, 3), 2 * 4 * 3 * 288)
    assert report.totals.params == sum(p.numel() for p in model.parameters())


class TopLeftCrop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, :4, :4]


class OffCentreCrop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, 1:5, 2:8]


def test_an_off_centre_crop_is_a_crop_from_its_start() -> None:
    text, report = check(TopLeftCrop(), (3, 10, 10), (3, 12, 9))
    assert "crop: {size: 4, start: 0, name: crop}" in text
    text, report = check(OffCentreCrop(), (3, 10, 10), (3, 11, 14))
    assert "crop: {size: [4, 6], start: [1, 2], name: crop}" in text
    # the crop archcalc builds keeps the values the slice keeps (counts alone would not see a wrong start)
    from archcalc.torch.build import build_module

    model = OffCentreCrop().eval()
    built = build_module(report).eval()
    built.load_state_dict({f"conv.{k}": v for k, v in model.conv.state_dict().items()}, strict=False)
    x = torch.randn(1, 3, 10, 10)
    crop = [m for name, m in built.named_modules() if name.endswith("crop")][0]
    assert torch.equal(crop(model.conv(x)), model.conv(x)[:, :, 1:5, 2:8])


# ---- normalisations written by hand ----------------------------------------------------------------------------------


class VarNorm(nn.Module):
    """A LayerNorm over channels written with torch.mean and torch.var."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        u = x.mean(1, keepdim=True)
        v = torch.var(x, 1, keepdim=True, unbiased=False)
        return (x - u) / torch.sqrt(v + 1e-6)


class RMSNorm2d(nn.Module):
    """An RMS norm over channels with a learned gain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.gain = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * self.gain


class GRN(nn.Module):
    """ConvNeXt-V2's global response normalisation (Woo et al. 2023, Alg. 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.gamma, self.beta = nn.Parameter(torch.zeros(1, 8, 1, 1)), nn.Parameter(torch.zeros(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


@pytest.mark.parametrize("model, op", [(VarNorm, "x.mean(1"), (RMSNorm2d, "x.pow(2)"), (GRN, "torch.norm(")],
                         ids=["var-mean", "rms", "grn"])
def test_hand_written_normalisations_are_exact_or_refused_at_the_op(model: type[nn.Module], op: str) -> None:
    exact_or_refused_here(model(), (3, 6, 6), line_of(model.forward, op))


class LayerNormNoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 1), nn.LayerNorm(8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class StdConv2d(nn.Conv2d):
    """Weight standardisation at forward time (BiT's StdConv2d): F.batch_norm over the weight itself."""

    def __init__(self) -> None:
        super().__init__(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, 8, -1), None, None, training=True, momentum=0.0, eps=1e-6)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias)


class TokenMix(nn.Module):
    """Channels as tokens: a reshape beyond the batch axis (imported: `reshape`) and a matmul between activations
    (refused: no kind multiplies two tensors of the network outside the attention kinds)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).reshape(x.shape[0], 8, -1)
        return torch.matmul(t, t.transpose(1, 2))


class SelectiveKernel(nn.Module):
    """SKNet's branches stacked on a new axis."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.a(x), self.b(x)], 1).sum(1)


@pytest.mark.parametrize("model, op", [(LayerNormNoBias, "self.norm("), (StdConv2d, "F.batch_norm("),
                                       (TokenMix, "torch.matmul("), (SelectiveKernel, "torch.stack(")],
                         ids=["layernorm-no-bias", "weight-standardisation", "token-reshape", "stack"])
def test_other_timm_patterns_are_exact_or_refused_at_the_op(model: type[nn.Module], op: str) -> None:
    exact_or_refused_here(model(), (3, 6, 6), line_of(model.forward, op))


# ---- WaveNet at the issue's size -------------------------------------------------------------------------------------


class CausalConv1d(nn.Conv1d):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__(cin, cout, kernel, dilation=dilation)
        self.left = (kernel - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class ResidualLayer(nn.Module):
    def __init__(self, res: int, skip: int, dilation: int) -> None:
        super().__init__()
        self.dilated = CausalConv1d(res, 2 * res, 2, dilation)
        self.res, self.skip = nn.Conv1d(res, res, 1), nn.Conv1d(res, skip, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.dilated(x).chunk(2, 1)
        h = torch.tanh(a) * torch.sigmoid(b)
        return x + self.res(h), self.skip(h)


class WaveNet(nn.Module):
    """van den Oord et al. 2016: 256 mu-law classes in and out, a causal input conv, three stacks of ten gated
    residual layers (dilations 1 .. 512), 64 residual and 256 skip channels, two 1x1 convs on the summed skips. The
    last layer's residual output (its `res` conv and the add) feeds nothing."""

    def __init__(self, classes: int = 256, res: int = 64, skip: int = 256, stacks: int = 3, depth: int = 10) -> None:
        super().__init__()
        self.inp = CausalConv1d(classes, res, 2)
        self.layers = nn.ModuleList(ResidualLayer(res, skip, 2 ** i) for _ in range(stacks) for i in range(depth))
        self.out1, self.out2 = nn.Conv1d(skip, skip, 1), nn.Conv1d(skip, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.inp(x), 0
        for layer in self.layers:
            x, s = layer(x)
            skips = skips + s
        return self.out2(F.relu(self.out1(F.relu(skips))))


def test_wavenet_at_the_issues_size_counts_its_unused_last_conv() -> None:
    # The parameters written out: input conv 256 -> 64, kernel 2; per layer the dilated conv 64 -> 128 (kernel 2),
    # the residual 1x1 64 -> 64 and the skip 1x1 64 -> 256, each with a bias; the two 1x1 output convs 256 -> 256.
    per_layer = (64 * 128 * 2 + 128) + (64 * 64 + 64) + (64 * 256 + 256)
    expected = (256 * 64 * 2 + 64) + 30 * per_layer + 2 * (256 * 256 + 256)
    assert expected == 1_283_776  # the issue's figure (it imported as 1,279,616: the last res conv's 4,160 left out)
    model = WaveNet()
    assert sum(p.numel() for p in model.parameters()) == expected
    imported = from_module(model, (256, 64))
    assert len(imported.warnings) == 1, imported.warnings
    warning = imported.warnings[0]
    assert "layers.29.res (conv, 4,160 parameters" in warning and "layers.29.add (add" in warning
    assert "discard: true" in imported.text  # on the add that ends the unused chain (the res conv feeds it)
    report = analyze(imported.spec)
    assert report.totals.params == 1_283_776
    for size in ((256, 64), (256, 100)):
        got = analyze(imported.spec, input_shape=size, convention="torch").totals
        assert (got.output, got.flops) == measured(model, size)


# ---- a size read from .size(), through the CLI ---------------------------------------------------------------------

UNET = '''
import torch
import torch.nn.functional as F
from torch import nn


class Up(nn.Module):
    """A common PyTorch U-Net's Up: upsample, pad to the skip's size read from .size(), concatenate, conv."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3)
        self.down = nn.Conv2d(4, 8, 3, stride=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        skip = self.enc(x)
        x = self.up(self.down(skip))
        dy, dx = skip.size()[2] - x.size()[2], skip.size()[3] - x.size()[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], 1))


def build_model():
    return Up()
'''


def test_a_padding_from_size_runs_at_a_new_input_through_the_cli(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "unet_up.py").write_text(UNET, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["import", "unet_up.py", "--input", "3x24x24", "-o", "up.yaml"])
    assert result.exit_code == 0, result.output
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(UNET), "unet_up.py", "exec"), namespace)  # the same model, built here
    model = namespace["build_model"]()  # type: ignore[operator]
    for size in ("3x24x24", "3x41x41", "3x30x19"):  # odd margins at the new inputs: the pad is not the traced one
        result = runner.invoke(app, ["calc", "up.yaml", "--input", size, "--convention", "torch", "--format", "json"])
        assert result.exit_code == 0, result.output
        totals = json.loads(result.stdout)["totals"]
        output, flops = measured(model, tuple(int(n) for n in size.split("x")))
        assert (tuple(totals["output"]), totals["flops"]) == (output, flops), size
