"""CoAtNet-0 (Dai et al. 2021, "CoAtNet: Marrying Convolution and Attention for All Data Sizes") as the bundled spec
timm/coatnet_0_224, against timm's coatnet_0_224 measured on the real model (tests/data/timm_hybrid_measured.json,
made by tests/data/measure/timm_measured.py --hybrid --fvcore, run without the tests; timm is not imported here),
and window_attention over a whole grid, with a wider output, against CoAtNet's relative attention written out in
plain torch (eq. 3 of the paper: softmax(Q K^T / sqrt(d) + B) V with B from a (2H-1)(2W-1) table).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_text

from archcalc.core.analyze import analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module
from archcalc.torch.recipes import module_call

MEASURED = json.loads((Path(__file__).parent / "data" / "timm_hybrid_measured.json").read_text(encoding="utf-8"))
ROW = MEASURED["models"]["coatnet_0_224"]


def _spec():  # type: ignore[no-untyped-def]
    return load_spec(bundled()["timm/coatnet_0_224"])


def test_spec_is_timms_model() -> None:
    """Params, buffers (batch norm statistics and counters, 7 relative position indexes of (HW)^2 int64), output,
    FlopCounterMode (meta device: 2 x the MACs) and fvcore (its own count, plus the products of
    scaled_dot_product_attention, which it counts 0 and lists as unsupported)."""
    spec = _spec()
    assert list(spec.input) == ROW["input_shape"][1:]
    report = analyze(spec)
    assert report.totals.params == ROW["params"] == 25_036_820
    assert report.totals.buffers == ROW["float_buffers"] + ROW["int_buffers"] == 210_594
    # 5 blocks at 14 x 14 and 2 at 7 x 7: (HW)^2 int64 each; and 12 + 14 batch norms' num_batches_tracked... as
    # counted: every int64 buffer beside the indexes is a batch norm's counter
    indexes = 5 * 196 ** 2 + 2 * 49 ** 2
    assert ROW["int_buffers"] - indexes == sum(1 for r in report.rows if r.kind == "batchnorm")
    assert list(report.totals.output) == ROW["output_shape"][1:]
    assert 2 * report.totals.macs == report.totals.flops == ROW["flop_counter"] == 2 * ROW["macs"]
    assert ROW["fvcore_unsupported"]["aten::scaled_dot_product_attention"] == ROW["sdpa_calls"] == 7
    assert analyze(spec, convention="fvcore").totals.flops == ROW["fvcore"] + ROW["sdpa_macs"]


def test_the_papers_size() -> None:
    """Table 4 of the paper gives CoAtNet-0 25M parameters (rounded); its 4.2 GFLOPs are its own implementation's,
    which timm's (4.55 GMACs here) does not follow exactly: not asserted."""
    assert round(analyze(_spec()).totals.params / 1e6) == 25


def test_the_attention_blocks() -> None:
    """The transformer stages (Table 3: S3 5 blocks of 384 at 14 x 14, S4 2 of 768 at 7 x 7): one window, the whole
    grid, heads C / 32, the first block of each stage widening with q, k, v of the output's width."""
    report = analyze(_spec())
    rows = [r for r in report.rows if r.kind == "window_attention"]
    assert [(r.input[0], r.output[1], r.op.args["window_size"], r.op.args["num_heads"],
             r.op.args["expand_first"])
            for r in rows] == [(196, 384, 14, 12, True)] + [(196, 384, 14, 12, False)] * 4 + [
                (49, 768, 7, 24, True), (49, 768, 7, 24, False)]
    # the widening block: q, k, v from 192 channels to 3 x 384, the projection 384 -> 384, a 27 x 27 table of 12
    first = rows[0]
    assert first.input[1] == 192
    assert first.params == 192 * 3 * 384 + 3 * 384 + 384 * 384 + 384 + 27 * 27 * 12
    n, c, f = 196, 192, 384
    assert first.macs == n * c * 3 * f + n * f * f + 2 * n * n * f


def _relative_attention(x, qkv, proj, table, heads):  # type: ignore[no-untyped-def]
    """CoAtNet's relative attention over the whole grid, written out (eq. 3): x B x C x H x W; qkv C -> 3D and proj
    D -> F as weight and bias; B from the (2H-1)(2W-1) x heads table at (dy + H - 1)(2W - 1) + dx + W - 1."""
    b, c, h, w = x.shape
    n = h * w
    tokens = x.flatten(2).transpose(1, 2)  # B x N x C
    q, k, v = torch.nn.functional.linear(tokens, *qkv).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    index = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    bias = table[index].permute(2, 0, 1)  # heads x N x N
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias, dim=-1)
    joined = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    out = torch.nn.functional.linear(joined, *proj)
    return out.transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize(("c", "f", "wide", "heads", "size"),
                         [(8, 8, False, 2, (3, 4)), (6, 12, False, 3, (4, 4)), (4, 8, True, 2, (3, 3))])
def test_window_attention_over_the_whole_grid_is_relative_attention(c, f, wide, heads, size) -> None:  # type: ignore[no-untyped-def]
    h, w = size
    args = f"num_heads: {heads}, window_size: [{h}, {w}], out_features: {f}, expand_first: {str(wide).lower()}"
    spec = load_text(f"""name: one
input: [{c}, {h}, {w}]
layers:
  - to_tokens
  - window_attention: {{{args}}}
  - to_grid
""")
    torch.manual_seed(0)
    model = build_module(analyze(spec)).eval()
    attn = next(m for m in model.modules() if type(m).__name__ == "WindowAttention")
    d = f if wide else c
    assert tuple(attn.qkv.weight.shape) == (3 * d, c) and tuple(attn.proj.weight.shape) == (f, d)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
        x = torch.randn(2, c, h, w)
        expected = _relative_attention(x, (attn.qkv.weight, attn.qkv.bias), (attn.proj.weight, attn.proj.bias),
                                       attn.relative_position_bias_table, heads)
        got = model(x)
    assert got.shape == (2, f, h, w)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("index", [i for i, ex in enumerate(REGISTRY["window_attention"].examples)
                                   if ex.args.get("out_features")])
def test_parameter_tensors_of_a_wider_output(index: int) -> None:
    """The sizes of the parameter tensors (what an optimizer walks one by one), which window_attention reads back
    from its output and its parameter count, against the built module's (as sizes: the module registers its table
    before its linear layers)."""
    kind = REGISTRY["window_attention"]
    ex = kind.examples[index]
    args = {a.name: a.default for a in kind.args}
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in ex.args.items()})
    out = kind.output(args, ex.input, lambda message: None)
    module = module_call(kind, args, ex.input).make()
    assert sorted(kind.param_tensors(args, out, kind.cost(args, ex.input, out).params)) == sorted(
        p.numel() for p in module.parameters())
