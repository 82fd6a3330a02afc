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


# ---- timm's position biases: RelPosMlp ('mlp') and RelPosBiasTf ('lookup') ---------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_position_bias_mlp_and_lookup_by_hand(batch: int) -> None:
    """mlp: Linear(2, 512) + ReLU + Linear(512, heads) with biases on the (2w-1)^2 log coordinates, once per forward
    ((2w-1)^2 x 512 x (2 + heads) MACs), 1024 + 512 + 512 heads + heads params, the coordinates (2 per position) and
    the index (M^2) as buffers; lookup: a heads x (2w-1)^2 table, two einsums once per forward (heads w^2 (2w-1)^2
    and heads w^4 (2w-1) MACs for a square window), the two one-hot lookups (w^2 (2w-1) each) as buffers and no
    index. FlopCounterMode on the built module at batch 1 and 3."""
    c, heads, w, side = 16, 2, 4, 8
    n, m, table = side * side, w * w, (2 * w - 1) ** 2
    per_image = n * 4 * c * c + 2 * n * m * c
    params = 4 * c * c + 4 * c
    for bias, extra, once, buffers in [
        ("mlp", 1024 + 512 + 512 * heads + heads, table * 512 * (2 + heads), 2 * table + m * m),
        ("lookup", table * heads, heads * w * w * (2 * w - 1) ** 2 + heads * w ** 4 * (2 * w - 1),
         2 * w * w * (2 * w - 1)),
    ]:
        report = analyze(_net(f"input: [{c}, {side}, {side}]\nlayers:\n  - to_tokens\n  - window_attention: "
                              f"{{num_heads: {heads}, window_size: {w}, position_bias: {bias}}}\n  - to_grid\n"),
                         batch=batch)
        assert report.totals.params == params + extra, bias
        assert report.totals.buffers == buffers, bias
        assert report.totals.macs == batch * per_image + once, bias
        model = build_module(report).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(batch, c, side, side))
        assert counter.get_total_flops() == 2 * report.totals.macs, bias


def test_lookup_bias_is_the_table_reindexed() -> None:
    """timm's RelPosBiasTf semantics: B[h, (i, j), (x, y)] = table[h, x - i + wh - 1, y - j + ww - 1], the same
    relative positions as the index buffer's gather (written out here)."""
    report = analyze(_net("input: [6, 6, 6]\nlayers:\n  - to_tokens\n  - window_attention: {num_heads: 3, "
                          "window_size: [2, 3], position_bias: lookup}\n  - to_grid\n"))
    attn = next(m for m in build_module(report).modules() if type(m).__name__ == "WindowAttention")
    bias = attn.position_bias()[0]
    t = attn.relative_position_bias_table
    for i in range(2):
        for j in range(3):
            for x in range(2):
                for y in range(3):
                    assert torch.equal(bias[:, i * 3 + j, x * 3 + y], t[:, x - i + 1, y - j + 2])


def test_v2_refuses_another_position_bias() -> None:
    from archcalc.core.errors import SpecError

    with pytest.raises(SpecError, match="v2 makes its own"):
        analyze(_net("input: [8, 8, 8]\nlayers:\n  - to_tokens\n  - window_attention: {num_heads: 2, "
                     "window_size: 4, v2: true, position_bias: mlp}\n"))


# ---- timm's MaxViT (maxxvit.py), stood in for: its partition functions, AttentionCl and rel_pos modules -----------

TIMM = "timm.models.maxxvit"


def timm_window_partition(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // size[0], size[0], w // size[1], size[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, size[0], size[1], c)


def timm_window_reverse(x: torch.Tensor, size: list[int], img: list[int]) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(-1, img[0] // size[0], img[1] // size[1], size[0], size[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, img[0], img[1], c)


def timm_grid_partition(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, size[0], h // size[0], size[1], w // size[1], c)
    return x.permute(0, 2, 4, 1, 3, 5).contiguous().view(-1, size[0], size[1], c)


def timm_grid_reverse(x: torch.Tensor, size: list[int], img: list[int]) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(-1, img[0] // size[0], img[1] // size[1], size[0], size[1], c)
    return x.permute(0, 3, 1, 4, 2, 5).contiguous().view(-1, img[0], img[1], c)


class RelPosBias(torch.nn.Module):  # timm's, by its class name: a table and an index
    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.window_size, self.prefix_tokens = (size, size), 0
        self.relative_position_bias_table = torch.nn.Parameter(torch.randn((2 * size - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.zeros(size ** 4, dtype=torch.long))

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index]
        return attn + bias.view(attn.shape[-1], attn.shape[-1], -1).permute(2, 0, 1)


class _Mlp(torch.nn.Module):  # timm's Mlp: fc1, act, drop1, norm, fc2, drop2
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = torch.nn.Linear(2, 512), torch.nn.ReLU(), torch.nn.Dropout(0.125)
        self.norm, self.fc2, self.drop2 = torch.nn.Identity(), torch.nn.Linear(512, heads), torch.nn.Dropout(0.0)


class RelPosMlp(torch.nn.Module):
    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.window_size, self.prefix_tokens, self.mode = (size, size), 0, "cr"
        self.bias_act, self.bias_gain, self.mlp = torch.nn.Identity(), None, _Mlp(heads)
        self.register_buffer("relative_position_index", torch.zeros(size ** 4, dtype=torch.long))
        self.register_buffer("rel_coords_log", torch.zeros(2 * size - 1, 2 * size - 1, 2))

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        table = self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.rel_coords_log))).view(-1, attn.shape[1])
        n = attn.shape[-1]
        return attn + table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)


class RelPosBiasTf(torch.nn.Module):
    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.window_size = (size, size)
        self.relative_position_bias_table = torch.nn.Parameter(torch.randn(heads, 2 * size - 1, 2 * size - 1))
        self.register_buffer("height_lookup", torch.zeros(size, size, 2 * size - 1))
        self.register_buffer("width_lookup", torch.zeros(size, size, 2 * size - 1))

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        t = torch.einsum("nhw,ixh->nixw", self.relative_position_bias_table, self.height_lookup)
        t = torch.einsum("nixw,jyw->nijxy", t, self.width_lookup)
        return attn + t.reshape(attn.shape[1], attn.shape[-1], attn.shape[-1])


class AttentionCl(torch.nn.Module):  # timm's channels-last attention, with its rel_pos module
    def __init__(self, c: int, heads: int, rel_pos: torch.nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.dim_head = heads, c // heads
        self.qkv, self.proj = torch.nn.Linear(c, 3 * c, bias=bias), torch.nn.Linear(c, c, bias=bias)
        self.rel_pos, self.attn_drop, self.proj_drop = rel_pos, torch.nn.Dropout(0.0), torch.nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        b = x.shape[0]
        q, k, v = self.qkv(x).view(b, -1, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        a = self.rel_pos(q * self.dim_head ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(*shape, -1))


class PartitionAttentionCl(torch.nn.Module):
    def __init__(self, c: int, size: int, kind: str, rel: str) -> None:
        super().__init__()
        self.kind, self.size = kind, [size, size]
        rel_pos = {"bias": RelPosBias, "mlp": RelPosMlp, "tf": RelPosBiasTf}[rel](size, c // 4)
        self.norm1, self.attn = torch.nn.LayerNorm(c), AttentionCl(c, c // 4, rel_pos)
        self.norm2, self.fc = torch.nn.LayerNorm(c), torch.nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = list(x.shape[1:3])
        part, back = (timm_window_partition, timm_window_reverse) if self.kind == "window" else (
            timm_grid_partition, timm_grid_reverse)
        x = x + back(self.attn(part(self.norm1(x), self.size)), self.size, img)
        return x + self.fc(self.norm2(x))


for _cls in (RelPosBias, RelPosMlp, RelPosBiasTf, AttentionCl, PartitionAttentionCl):
    _cls.__module__, _cls.__qualname__ = TIMM, _cls.__name__


class _TimmNet(torch.nn.Module):
    def __init__(self, rel: str) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 2, 2)
        self.block, self.grid = PartitionAttentionCl(8, 3, "window", rel), PartitionAttentionCl(8, 3, "grid", rel)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grid(self.block(self.conv(x).permute(0, 2, 3, 1)))
        return self.head(x.permute(0, 3, 1, 2).mean((2, 3)))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType(TIMM)
    for name in ("window_partition", "window_reverse", "grid_partition", "grid_reverse"):
        fn = globals()[f"timm_{name}"]
        fn.__module__, fn.__qualname__ = TIMM, name
        setattr(module, name, fn)
    monkeypatch.setitem(sys.modules, TIMM, module)
    monkeypatch.setitem(globals(), "timm_window_partition", module.window_partition)  # (the same objects)


@pytest.mark.parametrize(("rel", "bias"), [("bias", "table"), ("mlp", "mlp"), ("tf", "lookup")])
def test_import_reads_timms_partitions(fake_timm: None, rel: str, bias: str) -> None:
    """A window then a grid PartitionAttentionCl on a 12 x 12 grid, each rel_pos kind: window_attention with the
    partition and position_bias in force; params, buffers and FlopCounterMode's count of the stand-in equal the
    imported spec's (the once-per-forward bias work included)."""
    from archcalc.torch.importer import from_module

    model = _TimmNet(rel).eval()
    imported = from_module(model, (3, 24, 24))
    report = analyze(imported.spec)
    attn = [r for r in report.rows if r.kind == "window_attention"]
    assert [r.config for r in attn] == ["2 heads, 16 windows of 3x3", "2 heads, 16 grids of 3x3, stride 4x4"]
    assert imported.text.count(f"position_bias: {bias}") == (2 if bias != "table" else 0)
    assert imported.text.count("partition: grid") == 1
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 24, 24))
    assert counter.get_total_flops() == report.totals.flops
    assert imported.warnings == ()
