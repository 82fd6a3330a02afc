"""GCViT's window attention (Hatamizadeh et al. 2023, "Global Context Vision Transformers"; timm's gcvit.py):
`global_query_attention` (keys and values from each window, the queries a window-sized grid made once per stage
and shared by every window), and the import of GCViT's blocks (the channels-last grid cut into windows by views,
timm's WindowAttentionGlobal, the views back): the even blocks as window_attention, the odd ones as a token concat
[queries ; tokens] and global_query_attention. The stand-ins are written here from plain torch (timm is never
imported): the counts of the import are FlopCounterMode's and the module's own parameters and buffers; the real
models are tests/test_import_timm_hybrid.py's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc import analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer import from_module
from archcalc.torch.importer.trace import ImportFailure

GCVIT = "timm.models.gcvit"


class RelPosBias(nn.Module):
    """Swin's relative position bias: a (2w-1)^2 x heads table gathered by a w^2 x w^2 index, added to the
    scores."""

    def __init__(self, window: int, heads: int) -> None:
        super().__init__()
        self.m = window * window
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        pos = [(y, x) for y in range(window) for x in range(window)]
        self.register_buffer("relative_position_index", torch.tensor(
            [(p[0] - r[0] + window - 1) * (2 * window - 1) + p[1] - r[1] + window - 1 for p in pos for r in pos]))

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        table = self.relative_position_bias_table[self.relative_position_index]
        return attn + table.view(self.m, self.m, -1).permute(2, 0, 1).unsqueeze(0).contiguous()


RelPosBias.__module__, RelPosBias.__qualname__ = "timm.layers.pos_embed_rel", "RelPosBias"


class WindowAttentionGlobal(nn.Module):
    """GCViT's attention on windows: local (qkv C -> 3C) or global (kv C -> 2C, the queries the stage's grid
    repeated for every window)."""

    def __init__(self, dim: int, heads: int, window: int, use_global: bool, proj_bias: bool = True) -> None:
        super().__init__()
        self.window_size, self.num_heads, self.use_global = (window, window), heads, use_global
        self.head_dim = dim // heads
        self.rel_pos = RelPosBias(window, heads)
        self.qkv = nn.Linear(dim, dim * (2 if use_global else 3))
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, q_global: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        if self.use_global:
            k, v = self.qkv(x).reshape(b, n, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            q = q_global.repeat_interleave(b // q_global.shape[0], dim=0).reshape(b, n, h, d).permute(0, 2, 1, 3)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.rel_pos((q * d ** -0.5) @ k.transpose(-2, -1).contiguous()).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


WindowAttentionGlobal.__module__, WindowAttentionGlobal.__qualname__ = GCVIT, "WindowAttentionGlobal"


class GlobalContextVitBlock(nn.Module):
    """GCViT's block on a B x H x W x C grid: the windows cut by views, attended, put back; a residual; an MLP."""

    def __init__(self, dim: int, heads: int, window: int, use_global: bool, proj_bias: bool = True) -> None:
        super().__init__()
        self.window = window
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttentionGlobal(dim, heads, window, use_global, proj_bias)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        y = self.norm1(x).view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, s, s, c)
        y = self.attn(y.view(-1, s * s, c), q)
        y = y.view(-1, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


GlobalContextVitBlock.__module__, GlobalContextVitBlock.__qualname__ = GCVIT, "GlobalContextVitBlock"


class Net(nn.Module):
    """A stem, one stage (its query grid: a depthwise conv and a max pool of the stage's input, one window), a local
    and a global block, a head."""

    def __init__(self, proj_bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, 2)
        self.global_block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.ModuleList([GlobalContextVitBlock(8, 2, 3, False),
                                     GlobalContextVitBlock(8, 2, 3, True, proj_bias)])
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        q = self.global_block(x).permute(0, 2, 3, 1)
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x, q)
        return self.head(x.permute(0, 3, 1, 2).mean((2, 3)))


def test_global_query_cost_is_timms() -> None:
    """Stage 1 of gcvit_xxtiny's global attention (64 channels, 2 heads, 7 x 7 windows on a 28 x 28 grid: 16
    windows), against timm's WindowAttentionGlobal measured in the reference environment (parameters, the index
    buffer, FlopCounterMode's FLOPs / 2): 12,818 params (3C^2 + 3C + 13^2 x 2), 2,401 int64, 14,551,040 MACs."""
    kind = REGISTRY["global_query_attention"]
    a = {arg.name: arg.default for arg in kind.args} | {"num_heads": 2, "window_size": 7}
    t = Tokens(49 + 784, 64, (28, 28))
    out = kind.output(a, t, lambda m: None)
    cost = kind.cost(a, t, out)
    assert out == Tokens(784, 64, (28, 28))
    assert (cost.params, cost.int_buffers, cost.macs, cost.fvcore) == (12818, 2401, 14551040, 14551040)


@pytest.mark.parametrize(("grid", "message"), [
    (Tokens(16, 8, (4, 4)), "4 query tokens put before the grid's 16"),  # no queries before the grid
    (Tokens(4 + 36, 8, (6, 6)), "not a multiple of the window"),  # a 6 x 6 grid, 4 x 4 windows (the queries: 16)
])
def test_the_input_is_checked(grid: Tokens, message: str) -> None:
    from archcalc.core.kinds.base import LayerError

    kind = REGISTRY["global_query_attention"]
    size = 4 if "multiple" in message else 2
    a = {arg.name: arg.default for arg in kind.args} | {"num_heads": 2, "window_size": size}
    if size == 4:
        grid = Tokens(16 + 36, 8, (6, 6))
    with pytest.raises(LayerError, match=message):
        kind.output(a, grid, lambda m: None)


def test_gcvit_blocks_import_exact() -> None:
    """A local and a global block over 4 windows of 3 x 3 on a 6 x 6 grid: window_attention, and a token concat
    of the stage's queries before the grid's tokens with global_query_attention; params, buffers, output and
    FlopCounterMode's FLOPs the stand-in's."""
    model = Net().eval()
    imported = from_module(model, (3, 12, 12))
    report = analyze(imported.spec)
    kinds = [r.kind for r in report.rows]
    assert kinds.count("window_attention") == 1 and kinds.count("global_query_attention") == 1
    attn = [r for r in report.rows if r.kind == "global_query_attention"]
    assert [r.config for r in attn] == ["2 heads, 4 windows of 3x3, global queries"]
    assert "concat: [queries, to_tokens]" in imported.text  # the queries first (global_query_attention's order)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 12, 12))
    assert counter.get_total_flops() == report.totals.flops
    assert [list(report.graph.tensors[t].shape) for _, t in report.graph.outputs] == [list(out.shape[1:])]
    assert imported.warnings == ()


def test_what_it_refuses_is_an_import_failure() -> None:
    """A global block whose output projection has no bias is not global_query_attention's."""
    with pytest.raises(ImportFailure, match="WindowAttentionGlobal whose projections"):
        from_module(Net(proj_bias=False).eval(), (3, 12, 12))
