"""`archcalc import` maps what an op computes, not which class it is: the idioms of hand-written networks and of
timm's layers, written here in plain torch (no timm, no ultralytics), each checked against torch itself -- the
module's own parameter and buffer counts, its output shape, FlopCounterMode's count (archcalc's `torch` convention)
-- and, where the forward computes a size, at a second input size too."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from import_check import check, measured
from torch import nn

from archcalc.core.analyze import analyze
from archcalc.torch.importer import ImportFailure, from_module

# ---- functional calls, subclasses and wrappers ---------------------------------------------------------------------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass whose forward checks x.ndim, calls F.batch_norm and an
    activation module."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected a 4-D input")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         0.0 if self.momentum is None else self.momentum, self.eps)
        return self.act(self.drop(x))


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over channels that is not torchvision's class: permute, F.layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Functional(nn.Module):
    """Weights held as parameters, the ops written as functions."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.b = nn.Parameter(torch.randn(8))
        self.gn_w, self.gn_b = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
        self.mix = nn.Parameter(torch.randn(8, 8))  # a Linear over the channels of a channels-last view
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.w, self.b, stride=2, padding=1)
        x = F.group_norm(x, 4, self.gn_w, self.gn_b)
        x = F.linear(x.permute(0, 2, 3, 1), self.mix).permute(0, 3, 1, 2)
        return F.linear(x.mean((2, 3)), self.fc.weight, self.fc.bias)


def test_functional_calls_are_read_from_their_weights() -> None:
    text, report = check(Functional(), (3, 16, 16), (3, 9, 13))
    assert [r.kind for r in report.rows] == ["conv", "groupnorm", "conv", "mean", "linear"]
    # MACs by hand: conv 8*27 per output position on 8x8; the channel mix 8*8 per position; the head 8*5.
    assert report.totals.macs == 8 * 27 * 64 + 8 * 8 * 64 + 8 * 5


def test_norm_and_activation_wrappers_are_the_ops_they_run() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), BatchNormAct2d(8), nn.Conv2d(8, 8, 1), LayerNorm2d(8))
    text, report = check(model, (3, 12, 12), (3, 7, 20))
    assert [r.kind for r in report.rows] == ["conv", "batchnorm", "identity", "silu", "conv", "channel_layernorm"]


class CausalConv1d(nn.Conv1d):
    """WaveNet's causal convolution: an nn.Conv1d subclass that pads on the left only, then runs its base."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__(cin, cout, kernel, dilation=dilation)
        self.left = (kernel - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


def test_a_causal_conv_subclass() -> None:
    text, report = check(nn.Sequential(CausalConv1d(2, 6, 3, 4), nn.ReLU()), (2, 50), (2, 17))
    assert "zeropad: {padding: [[8, 0]]" in text
    assert report.totals.output == (6, 50)


class Conv2dSame(nn.Conv2d):
    """TensorFlow's "same" padding computed from the input's size at every call (timm's Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        k, s, d = self.kernel_size, self.stride, self.dilation
        ph = max((math.ceil(ih / s[0]) - 1) * s[0] + (k[0] - 1) * d[0] + 1 - ih, 0)
        pw = max((math.ceil(iw / s[1]) - 1) * s[1] + (k[1] - 1) * d[1] + 1 - iw, 0)
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def test_same_padding_computed_from_the_input_size_is_same_padding() -> None:
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 4, 4, stride=2))
    text, _ = check(model, (3, 15, 15), (3, 32, 32), (3, 33, 18))
    assert text.count("padding: same") == 2 and "zeropad" not in text


def test_a_branch_on_a_shape_takes_this_inputs_branch() -> None:
    class PadToEven(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] % 2:
                x = F.pad(x, (0, 1))
            return F.max_pool2d(x, 2)

    text, _ = check(nn.Sequential(nn.Conv2d(3, 4, 3), PadToEven()), (3, 13, 13))  # 11 x 11: padded to 12
    assert "zeropad" in text  # (the spec is this input's branch: at 12 x 12 it would not pad)


def test_a_branch_on_values_is_refused_at_the_models_line() -> None:
    class OnValues(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x
            return -x

    line = inspect.getsourcelines(OnValues.forward)[1] + 1
    with pytest.raises(ImportFailure) as info:
        from_module(nn.Sequential(nn.Conv2d(3, 4, 3), OnValues()), (3, 8, 8))
    assert f"{__file__}:{line}" in str(info.value) and "control flow on data" in str(info.value)


def test_a_tracing_error_names_the_models_line_not_torchs() -> None:
    class Loop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(1) + torch.nonzero(x).float().sum()

    with pytest.raises(ImportFailure) as info:
        from_module(nn.Sequential(nn.Conv2d(3, 4, 3), Loop()), (3, 8, 8))
    assert __file__ in str(info.value) and "overrides.py" not in str(info.value)


# ---- constants and parameters --------------------------------------------------------------------------------------


class RepVGGBlock(nn.Module):
    """RepVGG (Ding et al. 2021) without its identity branch: `... + 0`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.one = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.identity = None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        id_out = 0 if self.identity is None else self.identity(x)
        return self.act(self.dense(x) + self.one(x) + id_out)


def test_repvgg_adds_zero() -> None:
    text, report = check(RepVGGBlock(3, 8), (3, 10, 10), (3, 5, 7))
    assert "scalar: {op: add, value: 0.0" in text
    # full: the add of the two branches and the + 0, each one per output element, are in the `full` count.
    full = analyze(from_module(RepVGGBlock(3, 8), (3, 10, 10)).spec, convention="full").rows
    assert [r.flops for r in full if r.kind in ("add", "scalar")] == [8 * 100, 8 * 100]


class Arithmetic(nn.Module):
    """A scale by a constant, `/ 2`, `1 - x`, a position embedding, a learned per-channel scale, pool(x) - x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, 8, 6, 6))
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) * 0.5
        x = (x + self.pos) / 2
        x = 1 - x
        return self.gamma * (self.pool(x) - x)


def test_constants_and_parameters_are_counted() -> None:
    text, report = check(Arithmetic(), (3, 6, 6))
    assert [r.kind for r in report.rows] == ["conv", "scalar", "bias", "scalar", "scalar", "avgpool", "sub",
                                             "layer_scale"]
    assert report.totals.params == (8 * 27 + 8) + 8 * 36 + 8


def test_layer_scale_as_convnext_writes_it() -> None:
    class Block(nn.Module):  # timm's ConvNeXt block: gamma of shape C, reshaped, or applied channels-last
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
            self.norm = nn.LayerNorm(8)
            self.gamma_last = nn.Parameter(torch.ones(8))
            self.gamma = nn.Parameter(torch.ones(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.norm(self.dw(x).permute(0, 2, 3, 1)) * self.gamma_last
            return x + y.permute(0, 3, 1, 2).mul(self.gamma.reshape(1, -1, 1, 1))

    text, report = check(Block(), (8, 9, 9))
    assert [r.kind for r in report.rows] == ["conv", "channel_layernorm", "layer_scale", "layer_scale", "add"]


def test_a_learned_scalar_scale_and_bias() -> None:
    class LearnableAffine(nn.Module):  # HGNetV2's: one learned scale and one learned bias for the whole tensor
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * self.conv(x) + self.bias

    text, report = check(LearnableAffine(), (3, 8, 8))
    assert "layer_scale: {per: tensor" in text and "bias: {per: tensor" in text
    assert report.totals.params == 8 * 27 + 8 + 2


def test_a_parameter_two_ops_read_is_refused() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.conv2d(x, self.w, padding=1), self.w, padding=1)

    with pytest.raises(ImportFailure, match="which an earlier op read too"):
        from_module(Shared(), (4, 8, 8))


def test_an_op_reading_more_parameters_than_its_kind_counts_is_refused() -> None:
    class HalfBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.b = nn.Parameter(torch.randn(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.w, self.b[:4])  # a view of half of b: b's other 4 values are counted nowhere

    with pytest.raises(ImportFailure, match=r"its parameters \(w, b: 116 values\) are not the 112 that archcalc's "
                                            "conv counts"):
        from_module(HalfBias(), (3, 8, 8))


class StdConv2d(nn.Conv2d):
    """BiT's weight-standardised conv (Kolesnikov et al. 2020; Qiao et al. 2019), written as timm writes it: the
    weight standardised per filter by F.batch_norm with batch statistics at each forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-8).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2dSame(nn.Conv2d):
    """NFNet's scaled weight standardisation (Brock et al. 2021) times a learned gain and gamma / sqrt(fan-in),
    after TensorFlow's "same" padding computed from the input's size."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, gamma: float) -> None:
        super().__init__(cin, cout, k, stride)
        self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.scale = gamma * self.weight[0].numel() ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-5)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, 0, self.dilation, self.groups)


def _fvcore_standardisation(model: nn.Module) -> int:
    """What fvcore counts for weight standardisation, written out (fvcore's batchnorm_flop_jit with training=True:
    norm_flop_counter, 5 per element with a weight, 4 without; measured on timm's StdConv2d and ScaledStdConv2d),
    once per forward."""
    return sum(m.weight.numel() * (5 if hasattr(m, "gain") else 4) for m in model.modules()
               if isinstance(m, (StdConv2d, ScaledStdConv2dSame)))


def test_weight_standardisation_is_one_std_conv_with_exact_figures() -> None:
    model = nn.Sequential(StdConv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          ScaledStdConv2dSame(8, 16, 3, 2, gamma=1.7), nn.ReLU())
    text, report = check(model, (3, 16, 16), (3, 13, 11))  # params (the gain's too) and FlopCounterMode, 2 sizes
    assert [row.kind for row in report.rows if row.kind != "relu" and row.module] == ["std_conv", "std_conv"], text
    assert "eps: 1.0e-08" in text and "padding: same" in text and "gain: true" in text and "gamma: 1.7" in text
    for batch in (1, 3):  # fvcore: the convolutions' MACs per sample, the standardisation once per forward
        fvcore = analyze(from_module(model, (3, 16, 16)).spec, batch=batch, convention="fvcore").totals.flops
        assert fvcore == batch * 8 * 27 * 16 * 16 + batch * 16 * 72 * 8 * 8 + _fvcore_standardisation(model)


def test_weight_standardisation_read_other_than_by_a_convolution_is_refused() -> None:
    class StandardisedLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = F.batch_norm(self.weight.reshape(1, self.out_features, -1), None, None, training=True)
            return F.linear(x, w.reshape_as(self.weight), self.bias)

    class ScaledByATensor(nn.Conv2d):  # the gain times a parameter, not a constant: arithmetic with no kind
        def __init__(self) -> None:
            super().__init__(3, 4, 3)
            self.gain, self.scale = nn.Parameter(torch.ones(4, 1, 1, 1)), nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = F.batch_norm(self.weight.reshape(1, 4, -1), None, None, weight=(self.gain * self.scale).view(-1),
                             training=True)
            return F.conv2d(x, w.reshape_as(self.weight), self.bias)

    with pytest.raises(ImportFailure, match="a standardised weight read by other than a convolution"):
        from_module(nn.Sequential(nn.Flatten(), StandardisedLinear(12, 4)), (3, 2, 2))
    with pytest.raises(ImportFailure, match="arithmetic on parameters at forward time"):
        from_module(ScaledByATensor(), (3, 8, 8))


class GRN(nn.Module):
    """ConvNeXt-V2's Global Response Normalization (Woo et al. 2023, Algorithm 1), as its authors write it for
    channels-last input (the official code's GRN), or channels first."""

    def __init__(self, c: int, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        shape = (1, 1, 1, c) if channels_last else (1, c, 1, 1)
        self.gamma, self.beta = nn.Parameter(torch.randn(shape)), nn.Parameter(torch.randn(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2) if self.channels_last else (2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=-1 if self.channels_last else 1, keepdim=True) + 1e-6)
        return torch.addcmul(self.beta, self.gamma, x * nx) + x


class ConvNeXtV2Block(nn.Module):
    """A ConvNeXt-V2 block's MLP: to channels-last, Linear, GELU, GRN, Linear, back; and a GRN channels first."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.act, self.grn, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), GRN(4 * c, True), nn.Linear(4 * c, c)
        self.grn2 = GRN(c, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.grn(self.act(self.fc1(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.grn2(x + y)


def test_grn_in_either_layout_is_one_grn() -> None:
    # (inside a Sequential: the block's own sum right before grn2's ops is not taken for the start of grn2)
    text, report = check(nn.Sequential(ConvNeXtV2Block(8)), (8, 6, 6), (8, 5, 7))
    assert [row.kind for row in report.rows if row.kind == "grn"] == ["grn", "grn"], text


def test_a_module_that_computes_almost_grn_is_not_read_as_it() -> None:
    class NotGRN(GRN):  # the mean over the spatial axes instead of the channels: another formula
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
            nx = gx / (gx.mean(dim=(2, 3), keepdim=True) + 1e-6)
            return torch.addcmul(self.beta, self.gamma, x * nx) + x

    with pytest.raises(ImportFailure, match="Tensor.norm|torch.norm|norm"):
        from_module(nn.Sequential(NotGRN(8, False)), (8, 6, 6))


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020, Algorithm 2) written from the paper: the group deviation first, then the
    sigmoid gate; with act=False x / std alone."""

    def __init__(self, c: int, groups: int, act: bool = True) -> None:
        super().__init__()
        self.groups = groups
        self.v = nn.Parameter(torch.randn(1, c, 1, 1)) if act else None
        self.gamma, self.beta = nn.Parameter(torch.randn(1, c, 1, 1)), nn.Parameter(torch.randn(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = x.view(n, self.groups, c // self.groups, h, w)
        std = (g.var(dim=(2, 3, 4), keepdim=True, unbiased=False) + 1e-5).sqrt().expand(g.shape).reshape(n, c, h, w)
        if self.v is not None:
            x = x * torch.sigmoid(x * self.v)
        return x / std * self.gamma + self.beta


def test_evonorm_s0_is_one_evonorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), EvoNormS0(16, 4), nn.Conv2d(16, 8, 1), EvoNormS0(8, 8, act=False))
    text, report = check(model, (3, 9, 9), (3, 7, 12))
    assert [row.kind for row in report.rows if row.kind.startswith("evo")] == ["evonorm_s0", "evonorm_s0"], text
    assert "groups: 8, act: false" in text


def test_a_module_that_computes_almost_evonorm_is_not_read_as_it() -> None:
    class Unbiased(EvoNormS0):  # the unbiased variance: another formula
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c, h, w = x.shape
            g = x.view(n, self.groups, c // self.groups, h, w)
            std = (g.var(dim=(2, 3, 4), keepdim=True) + 1e-5).sqrt().expand(g.shape).reshape(n, c, h, w)
            return x * torch.sigmoid(x * self.v) / std * self.gamma + self.beta

    with pytest.raises(ImportFailure):
        from_module(nn.Sequential(Unbiased(8, 2)), (8, 5, 5))


class RMSNorm2d(nn.Module):
    """RMSNorm (Zhang and Sennrich 2019) over the channels of an N x C x H x W map, written out."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * self.scale.view(1, -1, 1, 1)


class SimpleNorm2d(nn.Module):
    """timm's SimpleNorm idea: to channels-last, x / sqrt(unbiased variance over C + eps) without centring x, back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = x * torch.rsqrt(torch.var(x, dim=-1, keepdim=True) + 1e-5)
        return x.permute(0, 3, 1, 2)


def test_rms_norm_and_simple_norm_are_one_rmsnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), RMSNorm2d(8), nn.Conv2d(8, 8, 1), SimpleNorm2d())
    text, report = check(model, (3, 9, 9), (3, 7, 12))
    assert [row.kind for row in report.rows if row.kind == "rmsnorm"] == ["rmsnorm", "rmsnorm"], text
    assert "statistic: variance" in text and "elementwise_affine: false" in text


class FRN(nn.Module):
    """Filter Response Normalization with TLU (Singh and Krishnan 2019, Algorithm 1), written as its paper does."""

    def __init__(self, c: int, tlu: bool = True) -> None:
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.randn(1, c, 1, 1)), nn.Parameter(torch.randn(1, c, 1, 1))
        self.tau = nn.Parameter(torch.randn(1, c, 1, 1)) if tlu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nu2 = x.pow(2).mean(dim=[2, 3], keepdim=True)
        x = x * torch.rsqrt(nu2 + 1e-6)
        x = self.gamma * x + self.beta
        return torch.maximum(x, self.tau) if self.tau is not None else x


def test_filter_response_norm_is_one_frn() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), FRN(8), nn.Conv2d(8, 4, 1), FRN(4, tlu=False))
    text, report = check(model, (3, 9, 9), (3, 7, 12))
    assert [row.kind for row in report.rows if row.kind == "frn"] == ["frn", "frn"], text
    assert "eps: 1.0e-06, tlu: false" in text


# ---- the hand-written networks' idioms -------------------------------------------------------------------------------


class ConvBNSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(c, c, 3), ConvBNSiLU(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f (Jocher et al., ultralytics/nn/modules/block.py): split in two, a chain of bottlenecks on the
    second half, every intermediate concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def test_yolov8_c2f_with_list_of_split() -> None:
    text, report = check(C2f(8, 16), (8, 12, 12), (8, 20, 9))
    assert text.count("concat") >= 1 and "channel_slice" in text


class UNetDown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3)
        self.down = nn.Conv2d(4, 8, 3, stride=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv = nn.Conv2d(8, 4, 3)

    def merge(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        x = self.up(self.down(skip))
        return self.conv(torch.cat(self.merge(skip, x), 1))


class CropBySlicing(UNetDown):
    """Ronneberger et al. 2015's crop-and-concat, the skip cropped by slicing to the upsampled size."""

    def merge(self, skip: torch.Tensor, x: torch.Tensor) -> Any:
        dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        return [skip[:, :, dy // 2:dy // 2 + x.size(2), dx // 2:dx // 2 + x.size(3)], x]


class CropByNegativePad(UNetDown):
    def merge(self, skip: torch.Tensor, x: torch.Tensor) -> Any:
        dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        return [F.pad(skip, [-(dx // 2), -(dx - dx // 2), -(dy // 2), -(dy - dy // 2)]), x]


class PadToSkip(UNetDown):
    """The other way round (a common PyTorch U-Net's Up): the upsampled tensor padded to the skip's size, the
    padding computed from `.size()`."""

    def merge(self, skip: torch.Tensor, x: torch.Tensor) -> Any:
        dy, dx = skip.size()[2] - x.size()[2], skip.size()[3] - x.size()[3]
        return [skip, F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])]


@pytest.mark.parametrize("model, kind", [(CropBySlicing, "crop"), (CropByNegativePad, "crop"),
                                         (PadToSkip, "zeropad")])
def test_unet_crop_and_pad_follow_the_other_tensors_size(model: type[nn.Module], kind: str) -> None:
    text, _ = check(model(), (3, 24, 24), (3, 41, 41), (3, 30, 19))  # odd margins at the others
    assert f"{kind}: {{to: " in text


class Residual(nn.Module):
    """A WaveNet residual layer (van den Oord et al. 2016): gated dilated causal conv, a 1x1 to the residual, a 1x1
    to the skip."""

    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.dilated = CausalConv1d(c, 2 * c, 2, d)
        self.res, self.skip = nn.Conv1d(c, c, 1), nn.Conv1d(c, c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.dilated(x).chunk(2, 1)
        h = torch.tanh(a) * torch.sigmoid(b)
        return x + self.res(h), self.skip(h)


class WaveNet(nn.Module):
    def __init__(self, c: int = 16, layers: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, c, 1)
        self.layers = nn.ModuleList(Residual(c, 2 ** i) for i in range(layers))
        self.out = nn.Conv1d(c, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.inp(x), 0
        for layer in self.layers:
            x, s = layer(x)
            skips = skips + s  # the last layer's residual output (its `res` conv) feeds nothing
        return self.out(F.relu(skips))


def test_wavenet_an_op_that_runs_but_feeds_nothing_is_counted() -> None:
    model = WaveNet()
    imported = from_module(model, (1, 64))
    line = inspect.getsourcelines(Residual.forward)[1] + 3
    params = sum(p.numel() for p in model.layers[3].res.parameters())
    assert imported.warnings == (f"2 op(s) run but feed no output: layers.3.res (conv, {params:,} parameters, "
                                 f"test_import_idioms.py:{line}), layers.3.add (add, test_import_idioms.py:{line}); "
                                 "written with `discard: true`, they are computed and counted in every figure",)
    assert "discard: true" in imported.text
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())  # the unused conv's included
    for size in ((1, 64), (1, 100)):
        got = analyze(imported.spec, input_shape=size, convention="torch").totals
        assert (got.output, got.flops) == measured(model, size)


# ---- speed -----------------------------------------------------------------------------------------------------------


def test_parameters_are_found_from_one_index_not_searched_per_access(monkeypatch: pytest.MonkeyPatch) -> None:
    """fx's own tracer searches all of the root's parameters on each attribute access of a traced-into module (so
    timm's ghostnetv3, with 241 BatchNormAct2d, took 25 s to refuse); the importer indexes them once."""
    calls = []
    original = nn.Module.named_parameters

    def counted(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    model = nn.Sequential(*[BatchNormAct2d(4) for _ in range(30)])
    monkeypatch.setattr(nn.Module, "named_parameters", counted)
    from_module(model, (4, 6, 6))
    traced = [c for c in calls if c == "_Root"]
    assert 1 <= len(traced) <= 2, len(traced)  # the index (and the converter's own table), not 30 x 4 searches
