"""`archcalc import` of DaViT's spatial and channel blocks and Twins-SVT's locally-grouped attention
(archcalc/torch/importer/davit.py), without timm: the blocks are written here from plain torch.nn, computing what
timm's classes compute (timm/models/davit.py, timm/models/twins.py), under timm's class names (the importer reads a
span by the timm class it runs in). The real models are checked by tests/test_import_timm_hybrid.py against figures
measured with timm (all 8 DaViTs and 3 Twins-SVTs exact); here the cases timm's pretrained sizes never reach: a grid
that is not a multiple of the window (DaViT pads it: exact; Twins projects after its crop: refused), one head, a
channel attention without qkv bias, ChannelAttentionV2's N^-1/2 scale. Expected figures: the module's own parameter
count, FlopCounterMode on the meta device (scaled_dot_product_attention's products counted as bmm) and the output
shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.torch.importer import from_module
from archcalc.torch.importer.trace import ImportFailure


class WindowAttention(nn.Module):  # timm's davit.WindowAttention (fused path): attention within each window
    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window_size, self.num_heads = (window, window), heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class SpatialBlock(nn.Module):  # timm's davit.SpatialBlock, its attention half: norm, pad, windows, crop, residual
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.window_size = (window, window)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        shortcut = x.flatten(2).transpose(1, 2)
        x = self.norm1(shortcut).view(b, h, w, c)
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        _, hp, wp, _ = x.shape
        x = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, wh * ww, c)
        x = self.attn(x)
        x = x.view(-1, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, hp, wp, c)
        x = x[:, :h, :w, :].contiguous().view(b, h * w, c)
        return (shortcut + x).transpose(1, 2).view(b, c, h, w)


class ChannelAttention(nn.Module):  # timm's davit.ChannelAttention: softmax(K^T V) over channels, applied to q
    def __init__(self, dim: int, heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        k = k * self.scale
        weights = (k.transpose(-1, -2) @ v).softmax(dim=-1)
        x = (weights @ q.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ChannelAttentionV2(nn.Module):  # timm's davit.ChannelAttentionV2 (DaViT-FL): q scaled by N^-1/2
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.groups, self.dynamic_scale = heads, True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.groups, c // self.groups).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * n ** -0.5
        weights = (q.transpose(-1, -2) @ k).softmax(dim=-1)
        x = (weights @ v.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ChannelBlock(nn.Module):  # timm's davit.ChannelBlock, its attention half
    def __init__(self, attn: nn.Module, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        return t.transpose(1, 2).view(b, c, h, w)


class LocallyGroupedAttn(nn.Module):  # timm's twins.LocallyGroupedAttn (fused path): ws x ws windows, then proj
    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.num_heads, self.ws = heads, ws
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        ws = self.ws
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        _, hp, wp, _ = x.shape
        gh, gw = hp // ws, wp // ws
        x = x.reshape(b, gh, ws, gw, ws, c).transpose(2, 3)
        q, k, v = self.qkv(x).reshape(b, gh * gw, ws * ws, 3, self.num_heads, c // self.num_heads).permute(
            3, 0, 1, 4, 2, 5).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(2, 3).reshape(b, gh, gw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        x = x[:, :h, :w, :].contiguous().reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class TwinsBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocallyGroupedAttn(dim, heads, ws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t), (h, w))
        return t.transpose(1, 2).view(b, c, h, w)


for _cls in (WindowAttention, SpatialBlock, ChannelAttention, ChannelAttentionV2, ChannelBlock):
    _cls.__module__ = "timm.models.davit"
for _cls in (LocallyGroupedAttn, TwinsBlock):
    _cls.__module__ = "timm.models.twins"


def _net(*blocks: nn.Module, dim: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, dim, 4, 4), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 5))


def _measured(make, shape: tuple[int, ...]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Params and MACs of the plain module: FlopCounterMode on the meta device, halved."""
    with torch.device("meta"):
        model = make().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *shape, device="meta"))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


CASES = {
    # a 6 x 7 grid, windows of 4: padded to 8 x 8 (4 windows)
    "davit_padded": (lambda: _net(SpatialBlock(16, 2, 4), ChannelBlock(ChannelAttention(16, 2), 16)), (3, 24, 28),
                     ("window_attention", "xca")),
    "davit_one_head_one_window": (lambda: _net(SpatialBlock(16, 1, 8), ChannelBlock(ChannelAttention(16, 1, True),
                                                                                    16)), (3, 32, 32),
                                  ("window_attention", "xca")),
    "davit_fl": (lambda: _net(SpatialBlock(16, 4, 3), ChannelBlock(ChannelAttentionV2(16, 4), 16)), (3, 24, 24),
                 ("window_attention", "xca")),
    "twins": (lambda: _net(TwinsBlock(16, 2, 4), TwinsBlock(16, 4, 2)), (3, 32, 32), ("window_attention",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_figures_equal_the_modules(name: str) -> None:
    make, shape, kinds = CASES[name]
    params, macs = _measured(make, shape)
    with torch.device("meta"):
        imported = from_module(make().eval(), shape, name=name)
    report = analyze(imported.spec)
    assert (report.totals.params, report.totals.macs) == (params, macs)
    assert report.totals.output == (5,)
    assert all(f"{kind}:" in imported.text for kind in kinds), imported.text
    assert "position_bias: none" in imported.text


def test_the_spec_says_what_each_attention_is() -> None:
    make, shape, _ = CASES["davit_fl"]
    with torch.device("meta"):
        text = from_module(make().eval(), shape, name="fl").text
    assert "normalize: false" in text and "scale: tokens" in text and "window_size: 3" in text
    make, shape, _ = CASES["davit_padded"]
    with torch.device("meta"):
        text = from_module(make().eval(), shape, name="padded").text
    assert "normalize: false" in text and "qkv_bias: false" in text and "scale:" not in text


def test_twins_on_a_grid_its_window_does_not_divide_is_refused() -> None:
    # Twins projects the cropped tokens (N), window_attention the padded grid's (N'): not the same MACs
    with torch.device("meta"):
        model = _net(TwinsBlock(16, 2, 4)).eval()
    with pytest.raises(ImportFailure, match=r"6 x 7 grid that is not a multiple of its 4 x 4 window"):
        from_module(model, (3, 24, 28))
