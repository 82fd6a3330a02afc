"""torchvision's video Swin Transformers (swin3d_t, swin3d_s, swin3d_b; Liu et al. 2022, "Video Swin Transformer") as
specs and as imports, against figures measured on the real models (tests/data/torchvision_swin3d.json:
tests/data/measure/torchvision_swin3d.py, run without the tests; torchvision is not imported here), and the 3-D case
of window_attention and patch_merging against arithmetic written out and plain torch: 3-D windows and their table,
windows cut to a grid shorter than them (torchvision's _get_window_and_shift_size), the shifted windows' mask on
three axes, and the merge of H and W with T kept.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_text
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec
from archcalc.core.zoo import bundled
from archcalc.torch.build import build_module

DATA = json.loads((Path(__file__).parent / "data" / "torchvision_swin3d.json").read_text(encoding="utf-8"))
MODELS = sorted(k for k in DATA if k != "versions")
CLIP = [1, 3, 16, 224, 224]


def _spec(name: str):  # type: ignore[no-untyped-def]
    return load_spec(bundled()[f"torchvision/{name}"])


def test_every_torchvision_video_swin_is_measured_and_has_a_spec() -> None:
    assert MODELS == ["swin3d_b", "swin3d_s", "swin3d_t"]
    assert {n for n in bundled() if n.startswith("torchvision/swin3d")} == {f"torchvision/{m}" for m in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_torchvisions_model(name: str) -> None:
    """Params (also torchvision's published num_params), the int64 index buffers (M^2 = 392^2 per block), output
    and MACs against the measured model at a 16 x 224 x 224 clip: FlopCounterMode counts 2 per MAC (every product
    an addmm, mm, bmm or convolution), the MACs round to the published GFLOPS (_ops: GMACs, 3 decimals), and the
    fvcore convention gives fvcore's total to the unit."""
    row = DATA[name]
    spec = _spec(name)
    assert row["input_shape"] == CLIP and list(spec.input) == CLIP[1:]
    t = analyze(spec).totals
    assert t.params == row["params"] == row["published_params"]
    assert t.buffers == row["float_buffers"] + row["int_buffers"] and row["float_buffers"] == 0
    assert [1, *t.output] == row["output_shape"] == [1, 400]
    assert 2 * t.macs == row["flop_counter"] == t.flops
    assert f"{t.macs / 1e9:.3f}" == row["published_gmacs"]
    assert analyze(spec, convention="fvcore").totals.flops == row["fvcore"]
    for weights in row["published_weights"].values():  # swin3d_b's two weights entries: one architecture
        assert (weights["num_params"], weights["gmacs"], weights["crop_size"]) == (
            row["published_params"], row["published_gmacs"], 224)


@pytest.mark.parametrize("name", MODELS)
def test_import_gives_the_measured_figures(name: str) -> None:
    row, got = DATA[name], DATA[name]["import"]
    assert "error" not in got, got
    assert got["params"] == row["params"]
    assert got["buffers"] == row["float_buffers"] + row["int_buffers"]
    assert 2 * got["macs"] == row["flop_counter"] and got["fvcore"] == row["fvcore"]
    assert [1, *got["output"]] == row["output_shape"]
    assert got["warnings"] == []  # every parameter and buffer read by an op
    assert {"window_attention", "patch_merging", "to_tokens", "to_grid", "conv"} <= set(got["kinds"])


@pytest.mark.parametrize("name", MODELS)
def test_the_spec_computes_what_torchvision_computes(name: str) -> None:
    """Recorded by the measurement: archcalc's module built from the bundled spec, with the real model's weights
    copied in, gives the real model's output exactly on a 16 x 64 x 64 clip and on a 10 x 96 x 80 one (the patch
    grid 5 x 24 x 20: the T window cut to 5, H and W padded to the window)."""
    assert DATA[name]["spec_output_difference"] == {"3x16x64x64": 0.0, "3x10x96x80": 0.0}


def test_what_fvcore_and_flop_counter_count() -> None:
    """fvcore counts the linears, the windows' products (matmul: Q K^T and A V, 2 windows x M^2 x C per block, M =
    8 x 7 x 7 = 392), the patch conv and layer norm (5 per element); it skips the 3-D average pool, softmax, GELU,
    the adds and the pad. FlopCounterMode: the products, 2 per MAC."""
    t = DATA["swin3d_t"]
    assert set(t["fvcore_by_operator"]) == {"conv", "layer_norm", "linear", "matmul"}
    stages = [(8 * 56 * 56, 96, 2), (8 * 28 * 28, 192, 2), (8 * 14 * 14, 384, 6), (8 * 7 * 7, 768, 2)]
    assert t["fvcore_by_operator"]["matmul"] == sum(2 * n * 392 * c * d for n, c, d in stages)
    assert t["flop_counter_by_op"]["aten.bmm"] == 2 * t["fvcore_by_operator"]["matmul"]
    assert t["fvcore_by_operator"]["conv"] == 8 * 56 * 56 * 96 * 3 * 2 * 4 * 4
    assert {"aten::adaptive_avg_pool3d", "aten::softmax", "aten::gelu", "aten::pad"} <= set(t["fvcore_unsupported"])


@pytest.mark.parametrize(("name", "embed", "depths"), [("swin3d_t", 96, (2, 2, 6, 2)), ("swin3d_s", 96, (2, 2, 18, 2)),
                                                       ("swin3d_b", 128, (2, 2, 18, 2))])
def test_video_swin_by_hand(name: str, embed: int, depths: tuple[int, ...]) -> None:
    """The video Swin at 16 x 224 x 224 written out: the 2 x 4 x 4 patch conv (8 x 56 x 56 tokens), per block
    4 N C^2 (qkv, proj) + 2 N M C (the windows' products, M = 392) + 8 N C^2 (MLP), per merge N/4 x 4C x 2C, the
    head; params 12 C^2 + 13 C + the 15 x 13 x 13 x heads table per block."""
    stages = [(8 * 56 * 56 // 4 ** i, embed * 2 ** i, d) for i, d in enumerate(depths)]
    blocks = sum(d * (12 * n * c * c + 2 * n * 392 * c) for n, c, d in stages)
    merges = sum(n // 4 * 4 * c * 2 * c for n, c, _ in stages[:3])
    macs = 8 * 56 * 56 * embed * 3 * 2 * 4 * 4 + blocks + merges + 8 * embed * 400
    report = analyze(_spec(name))
    assert report.totals.macs == macs
    heads = [embed // 32 * 2 ** i for i in range(4)]
    params = (3 * 2 * 4 * 4 * embed + embed + 2 * embed  # patch conv and its norm
              + sum(d * (12 * c * c + 13 * c + 15 * 13 * 13 * h) for (_, c, d), h in zip(stages, heads))
              + sum(4 * c * 2 * c + 2 * 4 * c for _, c, _ in stages[:3])  # merges: reduction and norm
              + 2 * 8 * embed + 8 * embed * 400 + 400)  # final norm, head
    assert report.totals.params == params


# ---- the 3-D window attention and patch merging against plain torch --------------------------------------------


def _net(text: str):  # type: ignore[no-untyped-def]
    return load_text("name: t\n" + text)


def _counted(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def _attention(c: int, grid: tuple[int, ...], heads: int, window: object, shift: object, shrink: bool) -> str:
    return (f"input: [{c}, {', '.join(map(str, grid))}]\nlayers:\n  - to_tokens\n"
            f"  - window_attention: {{num_heads: {heads}, window_size: {window}, shift_size: {shift}, "
            f"shrink: {str(shrink).lower()}}}\n  - to_grid\n")


@pytest.mark.parametrize(("grid", "window", "shift", "shrink", "effective"), [
    ((4, 8, 8), [2, 4, 4], [1, 2, 2], False, (2, 4, 4)),
    ((5, 9, 7), [2, 4, 3], [1, 2, 1], False, (2, 4, 3)),  # padded to 6 x 12 x 9
    ((3, 8, 8), [4, 4, 4], [2, 2, 2], True, (3, 4, 4)),  # T cut to 3, unshifted there
    ((3, 8, 8), [4, 4, 4], [2, 2, 2], False, (4, 4, 4)),  # without shrink: T padded to 4
    ((2, 3, 2), 4, 2, True, (2, 3, 2)),  # one window, the grid itself
])
def test_3d_window_attention_by_hand(grid: tuple[int, ...], window: object, shift: object, shrink: bool,
                                     effective: tuple[int, ...]) -> None:
    """MACs: padded tokens x 4C^2 + windows x 2 M^2 C with the window in force (cut to the grid with `shrink`);
    params: 4C^2 + 4C + the configured window's (2w_t-1)(2w_h-1)(2w_w-1) x heads table; the int64 index: the
    configured window's M^2 (torchvision keeps it whole and reads its first M rows and columns). Checked with
    FlopCounterMode on the built module at batch 2."""
    c, heads = 12, 3
    configured = (window,) * 3 if isinstance(window, int) else tuple(window)  # type: ignore[arg-type]
    padded = [math.ceil(g / w) * w for g, w in zip(grid, effective)]
    tokens, m = math.prod(padded), math.prod(effective)
    macs = tokens * 4 * c * c + tokens // m * 2 * m * m * c
    report = analyze(_net(_attention(c, grid, heads, window, shift, shrink)), batch=2)
    assert report.totals.macs == 2 * macs
    assert report.totals.params == 4 * c * c + 4 * c + math.prod(2 * w - 1 for w in configured) * heads
    assert report.totals.buffers == math.prod(configured) ** 2
    model = build_module(report).eval()
    x = torch.randn(2, c, *grid)
    assert tuple(model(x).shape) == (2, c, *grid)
    assert _counted(model, x) == 2 * 2 * macs


def _dependence(model: torch.nn.Module, c: int, grid: tuple[int, ...], at: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The input positions one output position depends on (a gradient above 1e-30: the mask is -100, not -inf)."""
    model = model.double().eval()
    x = torch.randn(1, c, *grid, dtype=torch.float64, requires_grad=True)
    where = (0, slice(None), *at)
    model(x)[where].sum().backward()
    assert x.grad is not None
    g = x.grad[0].abs().sum(0)
    return {p for p in itertools.product(*(range(s) for s in grid)) if g[p] > 1e-30}


def _box(*ranges: range) -> set[tuple[int, ...]]:
    return set(itertools.product(*ranges))


def test_3d_shifted_windows_mask_the_wrapped_regions() -> None:
    """Grid 4 x 8 x 8, window 2 x 4 x 4, shift 1 x 2 x 2: after the roll, token (0, 0, 0) sits in the last window
    with frames 3, 0, rows and columns 6, 7, 0, 1; the mask keeps it to its own region, frame 0 and rows and columns
    0, 1. Token (1, 3, 3) is in a window of the rolled grid away from the wrap: frames 1-2, rows and columns 2-5.
    Unshifted, (0, 0, 0) sees its window, frames 0-1, rows and columns 0-3."""
    shifted = build_module(analyze(_net(_attention(4, (4, 8, 8), 2, [2, 4, 4], [1, 2, 2], False))))
    assert _dependence(shifted, 4, (4, 8, 8), (0, 0, 0)) == _box(range(1), range(2), range(2))
    assert _dependence(shifted, 4, (4, 8, 8), (3, 7, 7)) == _box(range(3, 4), range(6, 8), range(6, 8))
    assert _dependence(shifted, 4, (4, 8, 8), (1, 3, 3)) == _box(range(1, 3), range(2, 6), range(2, 6))
    plain = build_module(analyze(_net(_attention(4, (4, 8, 8), 2, [2, 4, 4], 0, False))))
    assert _dependence(plain, 4, (4, 8, 8), (0, 0, 0)) == _box(range(2), range(4), range(4))


def test_a_shrunk_window_is_the_grid_and_unshifted() -> None:
    """A T axis of 3 under a window of 4 with `shrink`: the window covers the 3 frames and is not shifted there
    (torchvision's _get_window_and_shift_size); H and W keep their shifted 4 x 4 windows."""
    model = build_module(analyze(_net(_attention(4, (3, 8, 8), 1, [4, 4, 4], [2, 2, 2], True))))
    assert _dependence(model, 4, (3, 8, 8), (0, 3, 3)) == _box(range(3), range(2, 6), range(2, 6))
    assert _dependence(model, 4, (3, 8, 8), (2, 0, 0)) == _box(range(3), range(2), range(2))


def test_3d_patch_merging_keeps_t() -> None:
    """On a T x H x W grid patch merging takes each frame's 2 x 2 neighbourhoods (torchvision's PatchMerging on
    B x T x H x W x C): 3 x 5 x 6 -> 3 x 3 x 3 (H padded), 4C channels; its receptive field grows on H and W only,
    and an output token depends on its own frame's 2 x 2 block."""
    report = analyze(_net("input: [4, 3, 5, 6]\nlayers:\n  - to_tokens\n  - patch_merging\n  - to_grid\n"))
    merge = report.rows[1]
    assert merge.output == (27, 16) and merge.output.grid == (3, 3, 3)  # type: ignore[attr-defined]
    assert merge.rf == (1, 2, 2) and merge.jump == (1, 2, 2)
    assert report.totals.macs == 0 and report.totals.output == (16, 3, 3, 3)
    model = build_module(report).double()
    x = torch.randn(1, 4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, 1, 2, 1].sum().backward()
    assert x.grad is not None
    g = x.grad[0].abs().sum(0)
    assert {p for p in itertools.product(range(3), range(5), range(6)) if g[p] > 0} == _box(range(1, 2), range(4, 5),
                                                                                           range(2, 4))


@pytest.mark.parametrize(("layers", "message"), [
    ("  - window_attention: {num_heads: 2, window_size: [2, 2], shift_size: 0}\n", "one value per axis of the 3-D"),
    ("  - window_attention: {num_heads: 2, window_size: 2, v2: true}\n", "3-D grid or with shrink"),
    ("  - window_attention: {num_heads: 2, window_size: [2, 2, 2], shift_size: [1, 2, 1]}\n", "smaller than"),
])
def test_3d_window_attention_is_refused_where_it_does_not_fit(layers: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        analyze(_net("input: [8, 4, 4, 4]\nlayers:\n  - to_tokens\n" + layers))


# ---- the importer on torchvision's video classes, stood in for (torchvision is never imported here) --------------

VIDEO = "torchvision.models.video.swin_transformer"


class _Attention3d(torch.nn.Module):
    """Stands for torchvision's ShiftedWindowAttention3d (the importer knows it by its qualified name and keeps it
    whole, reading its attributes and tensors; what its forward computes is not traced)."""

    def __init__(self, c: int, heads: int, window: list[int], shift: list[int], table: int | None = None) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = window, shift, heads
        self.attention_dropout, self.dropout = 0.0, 0.0
        self.qkv, self.proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        relative = table or math.prod(2 * w - 1 for w in window)
        self.relative_position_bias_table = torch.nn.Parameter(torch.zeros(relative, heads))
        m = math.prod(window)
        self.register_buffer("relative_position_index", torch.zeros(m, m, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x T x H x W x C
        return x * 1


_Attention3d.__module__, _Attention3d.__qualname__ = VIDEO, "ShiftedWindowAttention3d"


class _Net(torch.nn.Module):
    """The video Swin's layout in small: a Conv3d patch embedding, channels moved last (B x T x H x W x C), a norm,
    a residual 3-D window attention, channels first again, pooled, a head."""

    def __init__(self, attn: torch.nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.attn = torch.nn.Conv3d(3, 8, (2, 4, 4), (2, 4, 4)), torch.nn.LayerNorm(8), attn
        self.pool, self.head = torch.nn.AdaptiveAvgPool3d(1), torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 4, 1))
        x = x + self.attn(x)
        return self.head(self.pool(x.permute(0, 4, 1, 2, 3)).flatten(1))


def test_import_reads_the_video_swins_attention() -> None:
    """ShiftedWindowAttention3d on the 3 x 6 x 5 token grid of a 6 x 24 x 20 clip: window_attention with its 3-D
    window and shift and `shrink` (torchvision's video Swin cuts its windows to the grid); the 3-D table and the
    M x M index are its parameters and buffers."""
    from archcalc.torch.importer import from_module

    net = _Net(_Attention3d(8, 2, [4, 2, 2], [2, 1, 1]))
    imported = from_module(net, (3, 6, 24, 20))
    report = analyze(imported.spec)
    attn = next(r for r in report.rows if r.kind == "window_attention")
    assert attn.input.grid == (3, 6, 5)  # type: ignore[attr-defined]
    assert attn.config == "2 heads, 9 windows of 3x2x2, shift 0x1x1"  # T cut to 3, unshifted there; W padded to 6
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.buffers == 16 ** 2
    assert imported.warnings == ()


def test_import_refuses_a_table_that_is_not_the_windows() -> None:
    from archcalc.torch.importer import from_module
    from archcalc.torch.importer.trace import ImportFailure

    with pytest.raises(ImportFailure, match="bias table"):
        from_module(_Net(_Attention3d(8, 2, [4, 2, 2], [2, 1, 1], table=10)), (3, 6, 24, 20))
