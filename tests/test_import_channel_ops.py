"""`archcalc import` on the channel-attention, split and pooling patterns of timm's CNNs, written here in plain
torch (no timm): ECA's 1-D conv across channels, a channels-last split and gated concat (MambaOut), blur pooling
with a fixed filter held in a buffer, TResNet's space-to-depth, and a max pool after a -inf "same" pad. Each is
checked against torch itself: the module's own parameter and buffer counts, its output shape and FlopCounterMode's
count (archcalc's `torch` convention), at the traced input and at a second one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from import_check import check
from torch import nn

from archcalc.core.kinds import REGISTRY
from archcalc.torch.importer import ImportFailure, from_module
from archcalc.torch.recipes import module_call

# ---- ECA: a Conv1d across the channels of the pooled tensor ---------------------------------------------------------


class Eca(nn.Module):
    """Efficient channel attention (Wang et al. 2020) as timm writes it: mean over H, W; view as one 1-D signal of
    length C; a Conv1d of kernel k; sigmoid; view back as C x 1 x 1; scale the input."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        y = self.gate(y).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


def test_eca_is_a_conv1d_across_the_channels() -> None:
    model = nn.Sequential(nn.Conv2d(3, 24, 3), Eca(5))
    text, report = check(model, (3, 20, 20), (3, 33, 17))
    assert "reshape: {shape: [1, 24]" in text and "reshape: {shape: [24, 1, 1]" in text
    conv1d = [r for r in report.rows if r.kind == "conv"][1]
    assert (conv1d.params, conv1d.macs) == (5, 24 * 5)  # one 5-tap filter slid along the 24 channels


# ---- a split, a gate and a concat on a channels-last tensor ------------------------------------------------------


class GatedConvBlock(nn.Module):
    """MambaOut's gated CNN block (Yu & Wang 2024) as timm writes it, on a channels-last (B, H, W, C) tensor:
    LayerNorm and Linear over C, torch.split along the last axis into a gate, an identity part and a part that a
    depthwise conv sees channels-first, the gate's activation times the concat of the other two, a Linear back."""

    def __init__(self, dim: int, hidden: int, conv_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden * 2)
        self.act = nn.GELU()
        self.split_indices = (hidden, hidden - conv_channels, conv_channels)
        self.conv = nn.Conv2d(conv_channels, conv_channels, 7, padding=3, groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.fc1(self.norm(x))
        g, i, c = torch.split(x, self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return x + shortcut


class MambaOutLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(GatedConvBlock(16, 40, 12), GatedConvBlock(16, 40, 12))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x).permute(0, 2, 3, 1))
        return self.fc(x.mean((1, 2)))  # the mean over the spatial axes of the channels-last tensor


def test_a_channels_last_split_gate_and_concat() -> None:
    text, report = check(MambaOutLike(), (3, 32, 32), (3, 48, 40))
    slices = [r for r in report.rows if r.kind == "channel_slice"]
    assert [r.output for r in slices[:3]] == [(40, 8, 8), (28, 8, 8), (12, 8, 8)]
    assert [r.kind for r in report.rows].count("concat") == 2


def test_split_along_a_spatial_axis_of_a_channels_last_tensor_is_refused() -> None:
    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.split(x.permute(0, 2, 3, 1), 4, dim=1)
            return torch.cat((a, b), dim=-1).permute(0, 3, 1, 2)

    with pytest.raises(ImportFailure, match=r"split along dim 1: archcalc slices channels"):
        from_module(Wrong(), (3, 8, 8))


# ---- blur pooling: a pad, then a depthwise conv with a filter held in a buffer -------------------------------------


class Blur(nn.Module):
    """Anti-aliased downsampling (Zhang 2019) as timm's BlurPool2d computes it: F.pad (reflect, or zeros), then
    F.conv2d with a binomial filter per channel registered as a buffer (not a parameter)."""

    def __init__(self, channels: int, k: int = 3, stride: int = 2, mode: str = "reflect",
                 shared: bool = False) -> None:
        super().__init__()
        row = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=torch.float32)
        filt = (row[:, None] * row[None, :] / row.sum() ** 2)[None, None]
        self.register_buffer("filt", filt if shared else filt.repeat(channels, 1, 1, 1), persistent=False)
        self.k, self.stride, self.mode = k, stride, mode
        self.padding = [(k - 1 + stride - 1) // 2] * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding, mode=self.mode)
        weight = self.filt.expand(x.shape[1], 1, self.k, self.k)
        return F.conv2d(x, weight, stride=self.stride, groups=x.shape[1])


def test_blur_pool_counts_its_filter_as_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Blur(8), nn.Conv2d(8, 16, 1),
                          Blur(16, k=5, mode="constant"))
    text, report = check(model, (3, 32, 32), (3, 45, 29))
    assert text.count("blur_pool: {") == 2  # (kernel 3, stride 2, padding 1, reflect: the defaults)
    assert "blur_pool: {kernel_size: 5, padding: 2, padding_mode: zeros" in text
    blur = [r for r in report.rows if r.kind == "blur_pool"]
    assert [(r.params, r.buffers) for r in blur] == [(0, 8 * 9), (0, 16 * 25)]


def test_a_fixed_filter_shared_by_every_channel_is_refused() -> None:
    # one 3x3 filter expanded over the channels: 9 buffer values, not the 8 x 9 blur_pool counts
    with pytest.raises(ImportFailure, match=r"fixed filter is 9 buffer values, not one filter per channel \(72\)"):
        from_module(nn.Sequential(nn.Conv2d(3, 8, 3), Blur(8, shared=True)), (3, 16, 16))


def test_a_reflect_pad_before_a_learned_conv_is_still_refused() -> None:
    class Reflect(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(F.pad(x, [1, 1, 1, 1], mode="reflect"))

    with pytest.raises(ImportFailure, match=r"F.pad\(mode='reflect'"):
        from_module(Reflect(), (3, 16, 16))


# ---- a -inf pad before a max pool: TensorFlow's "same" max pooling ---------------------------------------------------


class MaxPoolSame(nn.Module):
    """timm's MaxPool2dSame (NASNet, PNASNet): the "same" padding computed from the input's size, filled with
    -inf, then an unpadded max pool."""

    def __init__(self, k: int, stride: int) -> None:
        super().__init__()
        self.k, self.stride = k, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        pad_h = max((math.ceil(ih / self.stride) - 1) * self.stride + self.k - ih, 0)
        pad_w = max((math.ceil(iw / self.stride) - 1) * self.stride + self.k - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=-float("inf"))
        return F.max_pool2d(x, self.k, self.stride, 0)


def test_a_minus_infinity_pad_then_a_max_pool_is_a_same_max_pool() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), MaxPoolSame(3, 2), nn.Conv2d(8, 8, 1), MaxPoolSame(3, 1))
    text, _ = check(model, (3, 20, 20), (3, 27, 14))
    assert text.count("maxpool: {kernel_size: 3, stride: 2, padding: same") == 1
    assert text.count("padding: same") == 2


# ---- space-to-depth written as view, permute, view ---------------------------------------------------------------


class SpaceToDepthStem(nn.Module):
    """TResNet's stem: each 4 x 4 block of positions into the channels (view, permute, contiguous, view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x = x.view(n, c, h // 4, 4, w // 4, 4)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * 16, h // 4, w // 4)


def test_space_to_depth_written_as_view_permute_view() -> None:
    model = nn.Sequential(SpaceToDepthStem(), nn.Conv2d(48, 8, 3, padding=1))
    text, report = check(model, (3, 32, 32), (3, 24, 40))
    assert "space_to_depth: {block_size: 4" in text
    assert [r.kind for r in report.rows] == ["space_to_depth", "conv"]
    # the kind's module computes the same tensor as the hand-written one, channel order included
    built = module_call(REGISTRY["space_to_depth"], {"block_size": 4}, (3, 32, 32)).make()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(built(x), SpaceToDepthStem()(x))


# ---- attention over branches: SKNet's selective kernel, ResNeSt's split attention ----------------------------------


class SelectiveKernel(nn.Module):
    """Selective kernel convolution (Li et al. 2019) as timm writes it: two conv branches stacked as (B, 2, C, H, W),
    their sum pooled, squeezed and expanded by 1x1 convs to 2*C logits viewed as (B, 2, C, 1, 1), a softmax over the
    branches, the branches weighted and summed."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.paths = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False),
                                                  nn.BatchNorm2d(c), nn.ReLU()) for d in (1, 2)])
        self.fc_reduce = nn.Conv2d(c, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc_select = nn.Conv2d(8, 2 * c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([op(x) for op in self.paths], dim=1)
        a = x.sum(1).mean((2, 3), keepdim=True)
        a = self.fc_select(torch.relu(self.bn(self.fc_reduce(a))))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c // 2, h, w), dim=1)
        return torch.sum(x * a, dim=1)


class SplitAttention(nn.Module):
    """ResNeSt's split attention (Zhang et al. 2020) as timm writes it: a grouped conv makes radix x C channels,
    reshaped to (B, radix, C, H, W) and summed over the radix for the pooled gate; the gate's logits, viewed as
    (B, cardinality, radix, -1), transposed and softmaxed over the radix, weight the radix parts, summed."""

    def __init__(self, c: int, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix, self.cardinality = radix, cardinality
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix * cardinality, bias=False)
        self.fc1 = nn.Conv2d(c, 16, 1, groups=cardinality)
        self.fc2 = nn.Conv2d(16, c * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = torch.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True)))
        attn = self.fc2(gap)
        attn = attn.view(b, self.cardinality, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        out = (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)
        return out.contiguous()


def test_selective_kernel_attention_over_stacked_branches() -> None:
    text, report = check(nn.Sequential(nn.Conv2d(3, 16, 3), SelectiveKernel(16)), (3, 18, 18), (3, 25, 13))
    kinds = [r.kind for r in report.rows]
    assert kinds.count("sum") == 2 and "softmax" in kinds
    stacked = report.rows[kinds.index("concat") + 1]  # the stack: a concat of the branches viewed as (2, C, H, W)
    assert (stacked.kind, stacked.output) == ("reshape", (2, 16, 16, 16))


def test_resnest_split_attention() -> None:
    for radix, cardinality in ((2, 1), (4, 2)):
        text, report = check(nn.Sequential(nn.Conv2d(3, 32, 3), SplitAttention(32, radix, cardinality)),
                             (3, 17, 17), (3, 22, 30))
        assert "transpose: {" in text
        assert report.rows[-1].output == (32, 15, 15)


def test_stack_along_another_axis_is_refused() -> None:
    class Stack(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x, x], dim=2).sum(2)

    with pytest.raises(ImportFailure, match=r"torch.stack along dim 2"):
        from_module(Stack(), (3, 8, 8))


# ---- a pad that crops one side and pads the other: NASNet's shift by one ------------------------------------------


class ShiftedPath(nn.Module):
    """NASNet's second path (Zoph et al. 2018, as timm writes it): shift the map by one position (ZeroPad2d((-1, 1,
    -1, 1)): drop the first row and column, add a zero row and column after), subsample, a 1x1 conv; beside it the
    unshifted path; the two concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.path_1 = nn.Sequential(nn.AvgPool2d(1, stride=2, count_include_pad=False), nn.Conv2d(8, 4, 1))
        self.path_2 = nn.Sequential(nn.ZeroPad2d((-1, 1, -1, 1)), nn.AvgPool2d(1, stride=2, count_include_pad=False),
                                    nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.path_1(x), self.path_2(x)], 1)


def test_a_pad_that_crops_one_side_is_a_zero_pad_and_a_crop_from_a_start() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), ShiftedPath())
    text, report = check(model, (3, 14, 14), (3, 21, 12))
    assert "zeropad: {padding: [[0, 1], [0, 1]]" in text and "start: [1, 1]" in text
    # the same tensor: the kinds' modules on the hand-written shift
    x = torch.randn(1, 8, 6, 5)
    pad = module_call(REGISTRY["zeropad"], {"padding": ((0, 1), (0, 1)), "to": None}, (8, 6, 5)).make()
    crop = module_call(REGISTRY["crop"], {"to": (8, 6, 5), "size": None, "start": (1, 1)}, (8, 7, 6)).make()
    assert torch.equal(crop(pad(x)), nn.ZeroPad2d((-1, 1, -1, 1))(x))
