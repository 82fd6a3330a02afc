"""`archcalc import` on the channel-attention, split and pooling patterns of timm's CNNs, written here in plain
torch (no timm): ECA's 1-D conv across channels, a channels-last split and gated concat (MambaOut), blur pooling
with a fixed filter held in a buffer, TResNet's space-to-depth, and a max pool after a -inf "same" pad. Each is
checked against torch itself: the module's own parameter and buffer counts, its output shape and FlopCounterMode's
count (archcalc's `torch` convention), at the traced input and at a second one."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import Report, analyze
from archcalc.torch.importer import ImportFailure, from_module


def measured(model: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, *shape))
    return tuple(out.shape[1:]), counter.get_total_flops()


def check(model: nn.Module, shape: tuple[int, ...], *others: tuple[int, ...]) -> tuple[str, Report]:
    imported = from_module(model, shape)
    assert imported.warnings == (), imported.warnings
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    for size in (shape, *others):
        got = analyze(imported.spec, input_shape=size, convention="torch").totals
        output, flops = measured(model, size)
        assert (got.output, got.flops) == (output, flops), (size, imported.text)
    return imported.text, report


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
