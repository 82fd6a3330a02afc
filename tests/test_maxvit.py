"""torchvision's MaxViT-T (Tu et al. 2022, "MaxViT: Multi-Axis Vision Transformer") as a spec and as an import,
against figures measured on the real model (tests/data/torchvision_maxvit.json, made by
tests/data/measure/torchvision_maxvit.py, run without the tests), and window_attention's grid partition against
plain torch: the groups of strided tokens (outputs equal to attention written out here on gathered tokens), the
receptive field measured by gradient, the fvcore count of einsum products written out by hand, and the importer on
stand-ins for torchvision's classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_text
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module

DATA = json.loads((Path(__file__).parent / "data" / "torchvision_maxvit.json").read_text(encoding="utf-8"))
ROW = DATA["maxvit_t"]
# maxvit_t at 224: the stem halves to 112, each stage halves again: (grid side, channels, layers)
STAGES = [(56, 64, 2), (28, 128, 2), (14, 256, 5), (7, 512, 2)]


def _spec():  # type: ignore[no-untyped-def]
    return load_spec(bundled()["torchvision/maxvit_t"])


def _round4(flops: int) -> int:
    """numpy's einsum_path report prints its FLOP count with '%.3e'; fvcore halves it (MACs) and floors."""
    return int(float(f"{flops:.3e}") // 2)


def test_only_maxvit_t_is_measured() -> None:
    assert sorted(k for k in DATA if k != "versions") == ["maxvit_t"]


def test_spec_is_torchvisions_model() -> None:
    """Params (= torchvision's published 30,919,624), buffers (BN statistics and counters, 22 int64 index buffers
    of 49 x 49), output, FlopCounterMode at batch 1 and 3, fvcore at batch 1, and the published GMACs (5.558)."""
    spec = _spec()
    assert list(spec.input) == ROW["input_shape"][1:]
    one, three = analyze(spec), analyze(spec, batch=3)
    assert one.totals.params == ROW["params"] == ROW["published_params"] == 30_919_624
    assert one.totals.buffers == ROW["float_buffers"] + ROW["int_buffers"]
    assert ROW["int_buffers"] == 22 * 49 * 49 + 34  # the index buffers, and 34 BatchNorm2d num_batches_tracked
    assert list(one.totals.output) == ROW["output_shape"][1:]
    assert 2 * one.totals.macs == one.totals.flops == ROW["flop_counter"]
    assert 2 * three.totals.macs == ROW["flop_counter_batch_3"]
    assert f"{one.totals.macs / 1e9:.3f}" == ROW["published_gmacs"] == "5.558"
    assert analyze(spec, convention="fvcore").totals.flops == ROW["fvcore"]


def test_fvcore_rounds_the_einsums_of_the_whole_batch() -> None:
    """fvcore counts each of the 44 einsums (Q K^T and A V of 22 attention layers) from numpy's einsum_path
    report, to 4 significant digits, of the batch it ran: the measured count at batch 1 and 3 written out here
    from the layers' products (N x 49 x C MACs each); archcalc's fvcore figure is per image (batch 1's rounding,
    times the batch), so at batch 3 it differs from fvcore's by that rounding alone."""
    einsums = [n * n * 49 * c for n, c, d in STAGES for _ in range(4 * d)]  # 2 attentions x 2 products per layer
    assert ROW["fvcore_by_operator"]["einsum"] == sum(_round4(2 * e) for e in einsums)
    rest = ROW["fvcore"] - ROW["fvcore_by_operator"]["einsum"]
    assert ROW["fvcore_batch_3"] == 3 * rest + sum(_round4(2 * 3 * e) for e in einsums)
    ours = analyze(_spec(), convention="fvcore", batch=3).totals.flops
    assert ours == 3 * rest + 3 * sum(_round4(2 * e) for e in einsums)
    assert abs(ours - ROW["fvcore_batch_3"]) < 1e-5 * ROW["fvcore_batch_3"]


def test_maxvit_t_by_hand() -> None:
    """MaxViT-T at 224 written out: the stem; per layer an MBConv (pre-norm BN, 1x1 to 4C, depthwise 3x3 with the
    stage's stride on the first, SE to C/4, 1x1 to C; the first's shortcut a 1x1 conv after a 3x3/2 average pool)
    and two attention layers (window, grid: 4NC^2 + 2N x 49 x C each) with their MLPs (8NC^2); the head."""
    macs = 112 * 112 * (64 * 3 * 9 + 64 * 64 * 9)
    cin = 64
    for side, c, d in STAGES:
        n = side * side
        for i in range(d):
            inp, h = (cin, 2 * side) if i == 0 else (c, side)
            macs += h * h * inp * 4 * c  # conv_a at the input's resolution
            macs += n * 4 * c * 9  # depthwise conv_b
            macs += 2 * 4 * c * (c // 4)  # squeeze-excitation
            macs += n * 4 * c * c  # conv_c
            if i == 0:
                macs += n * inp * c  # the shortcut's 1x1 conv
            macs += 2 * (4 * n * c * c + 2 * n * 49 * c + 8 * n * c * c)
        cin = c
    macs += 512 * 512 + 512 * 1000
    assert analyze(_spec()).totals.macs == macs == ROW["flop_counter"] // 2


def test_import_gives_the_measured_figures() -> None:
    got = ROW["import"]
    assert "error" not in got, got
    assert got["params"] == ROW["params"]
    assert got["buffers"] == ROW["float_buffers"] + ROW["int_buffers"]
    assert 2 * got["macs"] == ROW["flop_counter"] and 2 * got["macs_batch_3"] == ROW["flop_counter_batch_3"]
    assert got["fvcore"] == ROW["fvcore"]
    assert got["output"] == ROW["output_shape"][1:]
    assert got["warnings"] == []  # every parameter and buffer read by an op
    assert {"window_attention", "to_tokens", "to_grid", "tanh"} <= set(got["kinds"])


def test_spec_alternates_window_and_grid_attention() -> None:
    rows = [r for r in analyze(_spec()).rows if r.kind == "window_attention"]
    assert len(rows) == 22
    assert [r.config.split(", ")[1].split(" ")[1] for r in rows] == ["windows", "grids"] * 11
    assert rows[1].config == "2 heads, 64 grids of 7x7, stride 8x8"
    assert rows[-1].config == "16 heads, 1 grids of 7x7, stride 1x1"


# ---- the grid partition against plain torch ------------------------------------------------------------------


def _net(text: str):  # type: ignore[no-untyped-def]
    return load_text("name: t\n" + text)


def _one(c: int, grid: tuple[int, int], window: object, partition: str, heads: int = 2,  # type: ignore[no-untyped-def]
         einsum: bool = False, convention: str = "torch"):
    return analyze(_net(f"input: [{c}, {grid[0]}, {grid[1]}]\nlayers:\n  - to_tokens\n"
                        f"  - window_attention: {{num_heads: {heads}, window_size: {window}, partition: {partition}, "
                        f"einsum: {str(einsum).lower()}}}\n  - to_grid\n"), batch=2, convention=convention)


def _by_hand(attn: torch.nn.Module, x: torch.Tensor, window: tuple[int, int], heads: int) -> torch.Tensor:
    """Grid attention written out: for each offset (a, b) within a stride s = H / w, the tokens (a + i s, b + j s)
    gathered in row-major order, softmax(Q K^T / sqrt(d) + B) V per head with B[h, p, q] = table[index[p, q], h]
    (the built module's own weights), projected, and put back where they came from."""
    b, c, hh, ww = x.shape
    sh, sw = hh // window[0], ww // window[1]
    d = c // heads
    out = torch.zeros_like(x)
    m = window[0] * window[1]
    bias = attn.relative_position_bias_table[attn.relative_position_index].view(m, m, heads).permute(2, 0, 1)
    for a in range(sh):
        for o in range(sw):
            rows = [a + i * sh for i in range(window[0])]
            cols = [o + j * sw for j in range(window[1])]
            t = x[:, :, rows][:, :, :, cols].flatten(2).transpose(1, 2)  # B x M x C
            q, k, v = torch.nn.functional.linear(t, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)
            q, k, v = (z.view(b, m, heads, d).transpose(1, 2) for z in (q, k, v))
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d) + bias, dim=-1)
            y = attn.proj((w @ v).transpose(1, 2).reshape(b, m, c))
            out[:, :, rows[0]::sh, cols[0]::sw] = y.transpose(1, 2).reshape(b, c, *window)
    return out


@pytest.mark.parametrize(("grid", "window"), [((6, 8), (3, 2)), ((4, 4), (2, 2)), ((6, 6), (2, 3)), ((4, 4), (4, 4))])
@pytest.mark.parametrize("einsum", [False, True])
def test_grid_attention_is_attention_over_strided_tokens(grid: tuple[int, int], window: tuple[int, int],
                                                         einsum: bool) -> None:
    """The built module's output equals attention written out over the strided groups; MACs (FlopCounterMode)
    and params are the window partition's."""
    c, heads = 8, 2
    torch.manual_seed(0)
    w = f"[{window[0]}, {window[1]}]"
    report = _one(c, grid, w, "grid", heads, einsum)
    model = build_module(report).double().eval()
    x = torch.randn(2, c, *grid, dtype=torch.float64)
    attn = next(m for m in model.modules() if type(m).__name__ == "WindowAttention")
    with torch.no_grad():
        assert torch.allclose(model(x), _by_hand(attn, x, window, heads), atol=1e-10)
    window_report = _one(c, grid, w, "window", heads)
    assert report.totals.macs == window_report.totals.macs
    assert report.totals.params == window_report.totals.params
    n, m = grid[0] * grid[1], window[0] * window[1]
    assert report.totals.macs == 2 * (4 * n * c * c + 2 * n * m * c)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.float()(x.float())
    assert counter.get_total_flops() == 2 * report.totals.macs


def _dependence(model: torch.nn.Module, c: int, grid: tuple[int, int], at: tuple[int, int]) -> set[tuple[int, int]]:
    model = model.double().eval()
    x = torch.randn(1, c, *grid, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, at[0], at[1]].sum().backward()
    assert x.grad is not None
    g = x.grad[0].abs().sum(0)
    return {(i, j) for i in range(grid[0]) for j in range(grid[1]) if g[i, j] > 0}


def test_grid_receptive_field_is_strided_over_the_grid() -> None:
    """A 12 x 8 grid, grid 3 x 2: stride 4 x 4; token (5, 2) sees (1 + 4i, 2 + 4j): a span of 9 x 5, as the
    receptive field says ((w - 1) x stride + 1 per axis), though not the positions between."""
    report = _one(4, (12, 8), "[3, 2]", "grid", 1)
    seen = _dependence(build_module(report), 4, (12, 8), (5, 2))
    assert seen == {(1 + 4 * i, 2 + 4 * j) for i in range(3) for j in range(2)}
    assert report.rows[1].rf == (9, 5)
    whole = _one(4, (4, 4), 4, "grid", 1)  # one group: the whole grid
    assert whole.rows[1].rf == (4, 4)


def test_einsum_changes_only_fvcore() -> None:
    """The einsum products count the same MACs and params; fvcore's figure is numpy's rounded report per
    product: 2 x (N x M x C) written out here."""
    c, grid = 8, (28, 28)
    plain, einsum = _one(c, grid, 7, "window"), _one(c, grid, 7, "window", einsum=True)
    assert plain.totals.macs == einsum.totals.macs and plain.totals.params == einsum.totals.params
    products = 28 * 28 * 49 * c
    fv_plain = _one(c, grid, 7, "window", convention="fvcore").totals.flops
    fv_einsum = _one(c, grid, 7, "window", einsum=True, convention="fvcore").totals.flops
    assert fv_einsum - fv_plain == 2 * (2 * _round4(2 * products) - 2 * products)  # batch 2, per image x 2
    assert _round4(2 * products) != products  # (a count that rounds)


def test_grid_partition_is_refused_where_it_does_not_fit() -> None:
    from archcalc.core.errors import SpecError

    for layers, message in [
        ("  - to_tokens\n  - window_attention: {num_heads: 2, window_size: 3, partition: grid}\n", "multiple of it"),
        ("  - to_tokens\n  - window_attention: {num_heads: 2, window_size: 4, shift_size: 2, partition: grid}\n",
         "no shift"),
        ("  - to_tokens\n  - window_attention: {num_heads: 2, window_size: 4, partition: grids}\n", "grid"),
    ]:
        with pytest.raises(SpecError, match=message):
            analyze(_net("input: [8, 8, 8]\nlayers:\n" + layers))


# ---- the importer on torchvision's classes, stood in for (torchvision is never imported here) --------------------

MAXVIT = "torchvision.models.maxvit"


class _Partition(torch.nn.Module):  # torchvision's WindowPartition: B x C x H x W -> B x (H/p W/p) x p^2 x C
    def forward(self, x: torch.Tensor, p: int) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h // p * (w // p), p * p, c)


class _Departition(torch.nn.Module):
    def forward(self, x: torch.Tensor, p: int, hp: int, wp: int) -> torch.Tensor:
        b, _, _, c = x.shape
        return x.reshape(b, hp, wp, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp * p, wp * p)


class _Swap(torch.nn.Module):
    def __init__(self, a: int = -2, b: int = -3) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.swapaxes(x, self.a, self.b)


class _Attention(torch.nn.Module):  # torchvision's RelativePositionalMultiHeadAttention, written here
    def __init__(self, c: int, head_dim: int, size: int, table: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.size, self.max_seq_len = c // head_dim, head_dim, size, size * size
        self.to_qkv, self.merge = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        self.relative_position_bias_table = torch.nn.Parameter(
            torch.randn(table or (2 * size - 1) ** 2, self.n_heads))
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + size - 1) * (2 * size - 1) + xs[:, None] - xs[None, :] + size - 1
        self.register_buffer("relative_position_index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, d = x.shape
        q, k, v = (t.reshape(b, g, p, self.n_heads, self.head_dim).transpose(2, 3)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        bias = bias.view(p, p, -1).permute(2, 0, 1)
        w = torch.softmax(torch.einsum("bghid,bghjd->bghij", q, k * d ** -0.5) + bias, dim=-1)
        return self.merge(torch.einsum("bghij,bghjd->bghid", w, v).transpose(2, 3).reshape(b, g, p, d))


for _cls, _name in [(_Partition, "WindowPartition"), (_Departition, "WindowDepartition"), (_Swap, "SwapAxes"),
                    (_Attention, "RelativePositionalMultiHeadAttention")]:
    _cls.__module__, _cls.__qualname__ = MAXVIT, _name


class _Layer(torch.nn.Module):
    """torchvision's PartitionAttentionLayer in small: partition, (swap), x + attn(norm(x)), x + mlp(norm(x)),
    (swap), departition."""

    def __init__(self, c: int, size: int, grid: int, kind: str, attn: torch.nn.Module | None = None,
                 back: int | None = None) -> None:
        super().__init__()
        self.p = size if kind == "window" else grid // size
        self.grid, self.back = grid, back
        self.partition_op, self.departition_op = _Partition(), _Departition()
        self.partition_swap = _Swap() if kind == "grid" else torch.nn.Identity()
        self.departition_swap = _Swap() if kind == "grid" else torch.nn.Identity()
        self.attn_layer = torch.nn.Sequential(torch.nn.LayerNorm(c), attn or _Attention(c, 4, size))
        self.mlp_layer = torch.nn.Sequential(torch.nn.LayerNorm(c), torch.nn.Linear(c, 2 * c), torch.nn.GELU(),
                                             torch.nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid // self.p
        x = self.partition_swap(self.partition_op(x, self.p))
        x = x + self.attn_layer(x)
        x = x + self.mlp_layer(x)
        return self.departition_op(self.departition_swap(x), self.back or self.p, g, g)


def _model(*layers: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 2, 2), *layers, torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10))


def test_import_reads_maxvits_partitions() -> None:
    """Block then grid attention on a 12 x 12 grid with 3 x 3 groups: window_attention with partition window
    (16 windows) and grid (stride 4), einsum products; params, buffers and FlopCounterMode's count of the
    stand-in equal the imported spec's."""
    from archcalc.torch.importer import from_module

    model = _model(_Layer(8, 3, 12, "window"), _Layer(8, 3, 12, "grid")).eval()
    imported = from_module(model, (3, 24, 24))
    report = analyze(imported.spec)
    attn = [r for r in report.rows if r.kind == "window_attention"]
    assert [r.config for r in attn] == ["2 heads, 16 windows of 3x3", "2 heads, 16 grids of 3x3, stride 4x4"]
    assert [r.kind for r in report.rows][:4] == ["conv", "to_tokens", "identity", "layernorm"]  # (the nn.Identity swap)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == 2 * 81
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() == report.totals.flops
    assert imported.warnings == ()
    built = build_module(report).eval()
    assert tuple(built(x).shape) == (1, 10)


def _unswapped() -> torch.nn.Module:
    layer = _Layer(8, 3, 12, "grid")
    layer.departition_swap = torch.nn.Identity()  # the grid's axes not swapped back before the departition
    return layer


def _merge_without_bias() -> torch.nn.Module:
    attn = _Attention(8, 4, 3)
    attn.merge = torch.nn.Linear(8, 8, bias=False)
    return _Layer(8, 3, 12, "window", attn=attn)


@pytest.mark.parametrize(("make", "why"), [
    (lambda: _Layer(8, 3, 12, "window", attn=_Attention(8, 4, 3, table=30)), "not window_attention's"),
    (_merge_without_bias, "not window_attention's"),
    (_unswapped, "does not undo"),
])
def test_import_refuses_what_the_grid_partition_is_not(make: object, why: str) -> None:
    from archcalc.torch.importer import from_module
    from archcalc.torch.importer.trace import ImportFailure

    layer = make()  # type: ignore[operator]

    with pytest.raises(ImportFailure, match=why):
        from_module(_model(layer), (3, 24, 24))
