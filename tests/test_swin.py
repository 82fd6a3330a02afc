"""torchvision's Swin Transformers (v1 and v2) as specs and as imports, against figures measured on the real models
(tests/data/torchvision_swin.json: tests/data/measure/torchvision_swin.py, run without the tests), and the window
attention kinds against plain torch: shapes, parameters, MACs written out by hand, the shifted windows' mask, the
padding of a grid that is not a multiple of the window, the receptive field measured by gradient, and the work a
Swin V2 forward does once whatever the batch.
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

DATA = json.loads((Path(__file__).parent / "data" / "torchvision_swin.json").read_text(encoding="utf-8"))
MODELS = sorted(k for k in DATA if k != "versions")


def _spec(name: str):  # type: ignore[no-untyped-def]
    return load_spec(bundled()[f"torchvision/{name}"])


def test_every_torchvision_swin_is_measured() -> None:
    assert MODELS == ["swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t"]


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_torchvisions_model(name: str) -> None:
    """Params, buffers (v1: the int64 relative position index; v2 also the float coordinate table), output and
    MACs at batch 1 and 3 against the measured model; MACs round to the published GMACs at the weights' size."""
    row = DATA[name]
    spec = _spec(name)
    assert list(spec.input) == row["input_shape"][1:]
    one, three = analyze(spec), analyze(spec, batch=3)
    assert one.totals.params == row["params"] == row["published_params"]
    assert one.totals.buffers == row["float_buffers"] + row["int_buffers"]
    assert list(one.totals.output) == row["output_shape"][1:]
    assert 2 * one.totals.macs == row["flop_counter"]
    assert 2 * three.totals.macs == row["flop_counter_batch_3"]
    assert f"{one.totals.macs / 1e9:.3f}".rstrip("0") == row["published_gmacs"].rstrip("0")
    assert one.totals.flops == row["flop_counter"]  # the torch convention: FlopCounterMode
    assert analyze(spec, convention="fvcore").totals.flops == row["fvcore"]
    assert analyze(spec, convention="fvcore", batch=3).totals.flops == row["fvcore_batch_3"]


@pytest.mark.parametrize("name", MODELS)
def test_import_gives_the_measured_figures(name: str) -> None:
    row, got = DATA[name], DATA[name]["import"]
    assert "error" not in got, got
    assert got["params"] == row["params"]
    assert got["buffers"] == row["float_buffers"] + row["int_buffers"]
    assert 2 * got["macs"] == row["flop_counter"] and 2 * got["macs_batch_3"] == row["flop_counter_batch_3"]
    assert got["fvcore"] == row["fvcore"] and got["fvcore_batch_3"] == row["fvcore_batch_3"]
    assert got["output"] == row["output_shape"][1:]
    assert got["warnings"] == []  # every parameter and buffer read by an op
    assert {"window_attention", "patch_merging", "to_tokens", "to_grid"} <= set(got["kinds"])


def test_v2_position_bias_mlp_runs_once_per_forward() -> None:
    """torchvision's swin_v2_t measured at batch 1 and 3: FlopCounterMode's count is 3 x per-sample + the MLP's,
    225 relative positions x 512 x (2 + heads) over its 12 blocks' heads (3, 3, 6, 6, 12 x 6, 24, 24); fvcore
    counts the MLP once too. v1 has no such term."""
    row = DATA["swin_v2_t"]
    once = 225 * 512 * (2 * 12 + 2 * 3 + 2 * 6 + 6 * 12 + 2 * 24)
    assert 3 * row["flop_counter"] - row["flop_counter_batch_3"] == 2 * 2 * once
    assert 3 * row["fvcore"] - row["fvcore_batch_3"] == 2 * once
    v1 = DATA["swin_t"]
    assert 3 * v1["flop_counter"] == v1["flop_counter_batch_3"] and 3 * v1["fvcore"] == v1["fvcore_batch_3"]


def test_what_fvcore_counts_on_torchvisions_swin() -> None:
    """fvcore counts the window products (matmul: Q K^T and A V), the linears, the patch conv, layer norm (5 per
    element) and the average pool; it skips softmax, GELU, the bias and mask adds, the roll and the pad, and v2's
    normalisation (linalg_vector_norm), sigmoid and exp."""
    t, v2 = DATA["swin_t"], DATA["swin_v2_t"]
    assert set(t["fvcore_by_operator"]) == {"adaptive_avg_pool2d", "conv", "layer_norm", "linear", "matmul"}
    # Q K^T and A V: 2 x windows x M^2 x C per block = 2 x 3136 x 49 x 96 x (2 + 2 + 6 + 2) / ... per stage
    stages = [(56 * 56, 96, 2), (28 * 28, 192, 2), (14 * 14, 384, 6), (7 * 7, 768, 2)]
    assert t["fvcore_by_operator"]["matmul"] == sum(2 * n * 49 * c * d for n, c, d in stages)
    assert {"aten::softmax", "aten::gelu", "aten::pad"} <= set(t["fvcore_unsupported"])
    assert {"aten::linalg_vector_norm", "aten::sigmoid", "aten::exp"} <= set(v2["fvcore_unsupported"])


def test_swin_t_by_hand() -> None:
    """Swin-T at 224 written out: per block 4 N C^2 (qkv, proj) + 2 N M C (the windows' products, M = 49) + 8 N C^2
    (MLP), per merge N/4 x 4C x 2C, the 4x4 patch conv and the head."""
    stages = [(56 * 56, 96, 2), (28 * 28, 192, 2), (14 * 14, 384, 6), (7 * 7, 768, 2)]
    blocks = sum(d * (12 * n * c * c + 2 * n * 49 * c) for n, c, d in stages)
    merges = sum(n // 4 * 4 * c * 2 * c for n, c, _ in stages[:3])
    macs = 56 * 56 * 96 * 3 * 16 + blocks + merges + 768 * 1000
    assert analyze(_spec("swin_t")).totals.macs == macs


# ---- window attention against plain torch -------------------------------------------------------------------


def _net(text: str):  # type: ignore[no-untyped-def]
    return load_text("name: t\n" + text)


def _counted(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize(("grid", "window", "shift"), [((8, 8), 4, 0), ((9, 10), 4, 2), ((5, 7), [3, 4], 1),
                                                       ((3, 3), 4, 2)])
def test_window_attention_macs_and_params_by_hand(grid: tuple[int, int], window: object, shift: int) -> None:
    """MACs: padded tokens x 4C^2 + windows x 2 M^2 C, the grid padded up to a multiple of the window; params:
    4C^2 + 4C + the (2w-1)^2 x heads table; the int64 index M^2 (the figures written out here, FlopCounterMode
    on the built module)."""
    c, heads = 12, 3
    w = (window, window) if isinstance(window, int) else tuple(window)  # type: ignore[arg-type]
    padded = [math.ceil(g / s) * s for g, s in zip(grid, w)]
    tokens, m = padded[0] * padded[1], w[0] * w[1]
    macs = tokens * 4 * c * c + tokens // m * 2 * m * m * c
    report = analyze(_net(f"input: [{c}, {grid[0]}, {grid[1]}]\nlayers:\n  - to_tokens\n"
                          f"  - window_attention: {{num_heads: {heads}, window_size: {window}, shift_size: {shift}}}\n"
                          "  - to_grid\n"), batch=2)
    assert report.totals.macs == 2 * macs
    assert report.totals.params == 4 * c * c + 4 * c + (2 * w[0] - 1) * (2 * w[1] - 1) * heads
    assert report.totals.buffers == m * m
    model = build_module(report).eval()
    x = torch.randn(2, c, *grid)
    assert tuple(model(x).shape) == (2, c, *grid)
    assert _counted(model, x) == 2 * 2 * macs


def _dependence(model: torch.nn.Module, c: int, grid: tuple[int, int], at: tuple[int, int]) -> set[tuple[int, int]]:
    """The input positions one output position depends on (a gradient above 1e-30: the mask is -100, not -inf)."""
    model = model.double().eval()
    x = torch.randn(1, c, *grid, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, at[0], at[1]].sum().backward()
    assert x.grad is not None
    g = x.grad[0].abs().sum(0)
    return {(i, j) for i in range(grid[0]) for j in range(grid[1]) if g[i, j] > 1e-30}


def test_shifted_windows_mask_the_wrapped_regions() -> None:
    """Grid 8x8, window 4, shift 2: after the roll, token (0, 0) sits in the last window with rows and columns
    6, 7, 0, 1 of the grid; the mask keeps it to its own region, rows and columns 0, 1. Unshifted, it sees its
    window, rows and columns 0..3."""
    text = "input: [4, 8, 8]\nlayers:\n  - to_tokens\n  - window_attention: {{num_heads: 2, window_size: 4, " \
           "shift_size: {}}}\n  - to_grid\n"
    shifted = build_module(analyze(_net(text.format(2))))
    assert _dependence(shifted, 4, (8, 8), (0, 0)) == {(i, j) for i in (0, 1) for j in (0, 1)}
    assert _dependence(shifted, 4, (8, 8), (7, 7)) == {(i, j) for i in (6, 7) for j in (6, 7)}
    assert _dependence(shifted, 4, (8, 8), (3, 3)) == {(i, j) for i in range(2, 6) for j in range(2, 6)}
    plain = build_module(analyze(_net(text.format(0))))
    assert _dependence(plain, 4, (8, 8), (0, 0)) == {(i, j) for i in range(4) for j in range(4)}


def test_padding_keeps_the_grid_and_pads_with_zeros() -> None:
    """A 5x6 grid with window 4 is padded to 8x8 (4 windows); the last row's tokens attend within their window,
    rows 4..7 of which only row 4 is real, and the output is cropped back to 5x6."""
    report = analyze(_net("input: [4, 5, 6]\nlayers:\n  - to_tokens\n  - window_attention: {num_heads: 1, "
                          "window_size: 4}\n  - to_grid\n"))
    assert report.rows[1].config == "1 heads, 4 windows of 4x4"
    model = build_module(report)
    assert _dependence(model, 4, (5, 6), (4, 5)) == {(4, j) for j in range(4, 6)}


def test_receptive_field_is_the_window() -> None:
    """The receptive field of a window attention: its window per axis (rf + w - 1), the whole axis where the window
    covers the padded grid; a patch merging adds 1 and doubles the jump."""
    report = analyze(_net("input: [4, 16, 16]\nlayers:\n  - to_tokens\n  - window_attention: {num_heads: 1, "
                          "window_size: [4, 16]}\n  - patch_merging\n  - to_grid\n"))
    rows = {r.name: r for r in report.rows}
    assert rows["attn1"].rf == (4, 16)
    assert rows["merge1"].rf == (5, 17) and rows["merge1"].jump == (2, 2)
    assert max(len(_dependence(build_module(analyze(_net(
        "input: [2, 8, 8]\nlayers:\n  - to_tokens\n  - window_attention: {num_heads: 1, window_size: 4}\n"
        "  - to_grid\n"))), 2, (8, 8), (i, 0))) for i in range(8)) == 16  # a 4 x 4 window


@pytest.mark.parametrize("batch", [1, 3])
def test_v2_work_once_per_forward_at_batch_1_and_3(batch: int) -> None:
    """Swin V2's MLP (Linear(2, 512), ReLU, Linear(512, heads)) on the 15 x 15 relative positions of an 8x8 window
    runs once per forward: MACs = batch x per-sample + 225 x 512 x (2 + heads), as FlopCounterMode counts on the
    built module, and `calc`'s MACs, torch FLOPs and fvcore follow."""
    c, heads = 16, 2
    spec = _net(f"input: [{c}, 16, 16]\nlayers:\n  - to_tokens\n  - window_attention: {{num_heads: {heads}, "
                f"window_size: 8, shift_size: 4, v2: true}}\n  - to_grid\n")
    report = analyze(spec, batch=batch)
    per_sample = 256 * 4 * c * c + 4 * 2 * 64 * 64 * c
    once = 225 * 512 * (2 + heads)
    assert report.totals.macs == batch * per_sample + once
    assert report.totals.flops == 2 * (batch * per_sample + once)
    model = build_module(report).eval()
    assert _counted(model, torch.randn(batch, c, 16, 16)) == report.totals.flops
    fvcore = analyze(spec, batch=batch, convention="fvcore")
    assert fvcore.totals.flops == batch * per_sample + once


def test_sweep_adds_the_once_work_once() -> None:
    from archcalc.core.settings import Settings
    from archcalc.core.sweep import Sweep, points

    sweep = Sweep("torchvision/swin_v2_t", Settings(convention="torch"))
    rows = sweep.run(points((), [None], [1, 3]), jobs=1)
    by_batch = {r.point.batch: r.values for r in rows}
    row = DATA["swin_v2_t"]
    assert 2 * by_batch[1]["macs"] == by_batch[1]["flops"] == row["flop_counter"]
    assert 2 * by_batch[3]["macs"] == by_batch[3]["flops"] == row["flop_counter_batch_3"]


def test_swin_is_refused_where_it_does_not_fit() -> None:
    from archcalc.core.errors import SpecError

    for layers, message in [
        ("  - window_attention: {num_heads: 2, window_size: 4}\n", "use `to_tokens` first"),
        ("  - to_tokens\n  - class_token\n  - window_attention: {num_heads: 2, window_size: 4}\n", "2-D grid"),
        ("  - to_tokens\n  - window_attention: {num_heads: 2, window_size: 4, shift_size: 4}\n", "smaller than"),
        ("  - to_tokens\n  - patch_merging\n  - window_attention: {num_heads: 3, window_size: 2}\n", "divisible"),
    ]:
        with pytest.raises(SpecError, match=message):
            analyze(_net("input: [8, 8, 8]\nlayers:\n" + layers))


# ---- the importer on torchvision's classes, stood in for (torchvision is never imported here) --------------------

SWIN = "torchvision.models.swin_transformer"


class _Attention(torch.nn.Module):
    """Stands for torchvision's ShiftedWindowAttention (the importer knows it by its qualified name and keeps it
    whole, reading its attributes and tensors; what its forward computes is not traced)."""

    def __init__(self, c: int, heads: int, window: int, shift: int, dropout: float = 0.0,
                 table: int | None = None) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = [window, window], [shift, shift], heads
        self.attention_dropout, self.dropout = dropout, 0.0
        self.qkv, self.proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        self.relative_position_bias_table = torch.nn.Parameter(torch.zeros(table or (2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.zeros(window ** 4, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x H x W x C
        return x * 1


_Attention.__module__, _Attention.__qualname__ = SWIN, "ShiftedWindowAttention"


def _patch_merging_pad(x: torch.Tensor) -> torch.Tensor:  # torchvision's, by its qualified name
    x = torch.nn.functional.pad(x, (0, 0, 0, x.shape[-2] % 2, 0, x.shape[-3] % 2))
    return torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)


torch.fx.wrap("_patch_merging_pad")  # as torchvision does: fx's trace sees one call_function node


class _Net(torch.nn.Module):
    """Swin's layout in small: patch conv, channels moved last (B x H x W x C), a norm, a residual window attention,
    patch merging and its reduction, channels first again, pooled, a head."""

    def __init__(self, attn: torch.nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.attn = torch.nn.Conv2d(3, 8, 2, 2), torch.nn.LayerNorm(8), attn
        self.reduction = torch.nn.Linear(32, 16, bias=False)
        self.pool, self.head = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        x = x + self.attn(x)
        x = self.reduction(_patch_merging_pad(x))
        return self.head(self.pool(x.permute(0, 3, 1, 2)).flatten(1))


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType(SWIN)
    module._patch_merging_pad = _patch_merging_pad  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, SWIN, module)


def test_import_reads_swins_layout(fake_torchvision: None) -> None:
    from archcalc.torch.importer import from_module

    imported = from_module(_Net(_Attention(8, 2, 4, 2)), (3, 18, 14))
    report = analyze(imported.spec)
    assert [r.kind for r in report.rows] == ["conv", "to_tokens", "layernorm", "window_attention", "add",
                                             "patch_merging", "linear", "to_grid", "global_avgpool", "flatten",
                                             "linear"]
    attn = next(r for r in report.rows if r.kind == "window_attention")
    assert attn.input == (63, 8) and attn.input.grid == (9, 7)  # type: ignore[attr-defined]
    assert next(r for r in report.rows if r.kind == "patch_merging").output.grid == (5, 4)  # type: ignore[attr-defined]
    assert report.totals.params == sum(p.numel() for p in _Net(_Attention(8, 2, 4, 2)).parameters())
    assert report.totals.buffers == 4 ** 4
    assert imported.warnings == ()


@pytest.mark.parametrize(("attn", "why"), [
    (_Attention(8, 2, 4, 2, dropout=0.1), "dropout inside the attention"),
    (_Attention(8, 2, 4, 2, table=10), "bias table"),
    (_Attention(8, 3, 4, 2), "on 8 channels and 3 heads"),
])
def test_import_refuses_what_window_attention_is_not(fake_torchvision: None, attn: torch.nn.Module,
                                                     why: str) -> None:
    from archcalc.torch.importer import from_module
    from archcalc.torch.importer.trace import ImportFailure

    with pytest.raises(ImportFailure, match=why):
        from_module(_Net(attn), (3, 16, 16))
