"""TinyViT's window attention (Wu et al. 2022, "TinyViT: Fast Pretraining Distillation for Small Vision
Transformers"; timm's tiny_vit.py): window_attention with `position_bias: offsets` (one learned bias per head and
absolute offset |dy|, |dx| of two tokens of a window, gathered by an index: LeViT's attention biases), and the
import of TinyViT's blocks (the channels-last grid cut into windows by views, the attention module with its own
layer norm, the views back). The stand-ins are written here from plain torch (timm is never imported): the counts
of the import are FlopCounterMode's and the module's own parameters and buffers; the real models are
tests/test_import_timm_hybrid.py's."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc import analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer import from_module
from archcalc.torch.importer.trace import ImportFailure

TINY_VIT = "timm.models.tiny_vit"


class Attention(nn.Module):
    """TinyViT's attention, written out: a layer norm, qkv (C -> heads x (2 key_dim + val_dim)) viewed per head and
    split, softmax(q k^T / sqrt(key_dim) + biases) v with the biases a heads x (w_h w_w) table gathered by an index
    of the offsets, the heads joined and projected back to C."""

    def __init__(self, c: int, key_dim: int, heads: int, attn_ratio: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = heads, key_dim, attn_ratio * key_dim
        self.resolution = resolution
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(heads * self.val_dim, c)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}  # numbered in the order first met (as TinyViT does)
        idxs = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.randn(heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).split(
            [self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        attn = (q * self.key_dim ** -0.5) @ k.transpose(-2, -1) + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


Attention.__module__, Attention.__qualname__ = TINY_VIT, "Attention"


class Block(nn.Module):
    """TinyViT's block on a B x H x W x C grid: the attention over windows (the grid cut by views; a grid that is
    one window attended whole), a residual, a depthwise conv on the grid, an MLP on the tokens."""

    def __init__(self, c: int, heads: int, window: int, attn_ratio: int = 1) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(c, c // heads, heads, attn_ratio, (window, window))
        self.local_conv = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        shortcut = x
        if h == s and w == s:
            x = self.attn(x.reshape(b, h * w, c)).view(b, h, w, c)
        else:
            pad_b, pad_r = (s - h % s) % s, (s - w % s) % s
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            x = x.view(b, ph // s, s, pw // s, s, c).transpose(2, 3).reshape(b * (ph // s) * (pw // s), s * s, c)
            x = self.attn(x)
            x = x.view(b, ph // s, pw // s, s, s, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
        x = shortcut + x
        x = self.local_conv(x.permute(0, 3, 1, 2)).reshape(b, c, h * w).transpose(1, 2)
        x = x + self.fc(self.norm(x))
        return x.view(b, h, w, c)


class Net(nn.Module):
    def __init__(self, windows: tuple[int, int], attn_ratio: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 2, 2)
        self.blocks = nn.Sequential(Block(12, 3, windows[0], attn_ratio), Block(12, 2, windows[1]))
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_offsets_cost_is_the_written_out_formula() -> None:
    """Params 4C^2 + 4C (qkv and proj) + heads x w_h w_w (one bias per absolute offset, not Swin's
    (2w_h - 1)(2w_w - 1)); the index M^2 int64; MACs per padded token 4C^2 and per window 2 M^2 C."""
    kind = REGISTRY["window_attention"]
    c, heads, (wh, ww), grid = 12, 3, (2, 3), (4, 6)
    a = {arg.name: arg.default for arg in kind.args} | {"num_heads": heads, "window_size": [wh, ww],
                                                        "position_bias": "offsets"}
    t = Tokens(24, c, grid)
    cost = kind.cost(a, t, kind.output(a, t, lambda m: None))
    m, windows = wh * ww, 24 // (wh * ww)
    assert cost.params == 4 * c * c + 4 * c + heads * wh * ww
    assert cost.int_buffers == m * m
    assert cost.macs == 24 * 4 * c * c + windows * 2 * m * m * c
    swin = kind.cost(a | {"position_bias": "table"}, t, t)
    assert cost.params == swin.params - heads * ((2 * wh - 1) * (2 * ww - 1) - wh * ww)
    assert cost.macs == swin.macs


def test_the_built_index_is_the_absolute_offset() -> None:
    """archcalc's built module gathers the table by |dy| w_w + |dx| (a numbering of the offsets; TinyViT's is
    another, in the order first met: the same partition of the pairs)."""
    from archcalc.torch.modules import WindowAttention

    m = WindowAttention(6, (4, 6), 2, (2, 3), (0, 0), position_bias="offsets")
    assert tuple(m.relative_position_bias_table.shape) == (6, 2)
    points = list(itertools.product(range(2), range(3)))
    want = [abs(a[0] - b[0]) * 3 + abs(a[1] - b[1]) for a in points for b in points]
    assert m.relative_position_index.tolist() == want
    ours = Attention(6, 3, 2, 1, (2, 3)).attention_bias_idxs.flatten().tolist()
    assert len(set(zip(ours, want))) == len(set(want)) == 6  # one to one


def test_tinyvit_blocks_import_exact() -> None:
    """A block over 4 windows of 3 x 3 on a 6 x 6 grid, and one whose window is the grid: layernorm and
    window_attention (position_bias offsets) each; params, buffers, output and FlopCounterMode's FLOPs the
    stand-in's."""
    model = Net((3, 6)).eval()
    imported = from_module(model, (3, 12, 12))
    report = analyze(imported.spec)
    attn = [r for r in report.rows if r.kind == "window_attention"]
    assert [r.config for r in attn] == ["3 heads, 4 windows of 3x3", "2 heads, 1 windows of 6x6"]
    assert imported.text.count("position_bias: offsets") == 2
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 12, 12))
    assert counter.get_total_flops() == report.totals.flops
    assert [list(report.graph.tensors[t].shape) for _, t in report.graph.outputs] == [list(out.shape[1:])]
    assert imported.warnings == ()


class PermutedCut(Block):
    """The windows cut with a permute of six axes (GCViT's window_partition), not TinyViT's transpose."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        x = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        x = self.attn(x).view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x


def test_another_cut_is_refused_at_its_view() -> None:
    """Only TinyViT's cut (the view, transpose(2, 3), the reshape to windows) is read; another network's view of
    its channels-last grid is refused at the view, as a view of a channels-last tensor is."""
    model = Net((3, 6)).eval()
    model.blocks[0] = PermutedCut(12, 3, 3)
    with pytest.raises(ImportFailure, match=r"cannot import Tensor.view .*view of something other than a "
                                            "channels-first tensor"):
        from_module(model, (3, 12, 12))


@pytest.mark.parametrize(("windows", "attn_ratio", "message"), [
    ((4, 6), 1, "F.pad"),  # a 6 x 6 grid padded to 8 x 8
    ((3, 6), 2, "key/value dims"),  # val_dim 2 key_dim: not window_attention's
])
def test_what_it_refuses_is_an_import_failure(windows: tuple[int, int], attn_ratio: int, message: str) -> None:
    with pytest.raises(ImportFailure, match=message):
        from_module(Net(windows, attn_ratio).eval(), (3, 12, 12))


STEP = ("name: t\ninput: [5, {grid}]\nlayers:\n  - to_tokens\n  - linear: {{out: 8}}\n"
        "  - layernorm: {{normalized_shape: 8}}\n"
        "  - window_attention: {{num_heads: 2, window_size: {w}, position_bias: offsets}}\n  - linear: {{out: 3}}\n")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("grid", "window"), [("6, 6", 3), ("5, 6", "[2, 3]"), ("4, 4", 4)])
def test_the_step_peak_with_offsets_is_exact(grid: str, window: Any, optimizer: str) -> None:
    """The training step's peak (the table's timeline with the smaller table) against a real step of the built
    module on the CPU, measured by storage (tests/measure.step_peak_bytes), the first step and a later one."""
    from conftest import load_text
    from measure import step_peak_bytes

    from archcalc.core.training import step_peaks
    from archcalc.torch.build import build_module

    spec = load_text(STEP.format(grid=grid, w=window))
    for batch in (2, 3):
        report = analyze(spec, batch=batch, device="cpu")
        later, first = step_peaks(report, optimizer)
        measured = []
        for steps in (1, 2):
            torch.manual_seed(0)
            model = build_module(report)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-3) if optimizer == "sgd" else torch.optim.Adam(params, lr=1e-3)
            measured.append(step_peak_bytes(model, (torch.randn(batch, *spec.inputs[0].shape),), opt, steps)[1])
        assert (first.peak, later.peak) == tuple(measured), (batch, first.peak - measured[0], later.peak - measured[1])
