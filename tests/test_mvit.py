"""Attention over pooled tokens (MViT): torchvision's mvit_v1_b and mvit_v2_s against figures measured on the real
models (tests/data/torchvision_mvit.json; torchvision is not imported here), and the kinds against hand-written
arithmetic and plain torch."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from measure import dispatch_peak_bytes
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import Report, analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.core.receptive import seen
from archcalc.core.spec import load_spec
from archcalc.core.zoo import bundled
from archcalc.torch.recipes import Unmapped, module_call, read_multiscale_attention, read_mvit_pool

DATA = json.loads((Path(__file__).parent / "data" / "torchvision_mvit.json").read_text(encoding="utf-8"))
MVITS = sorted(k for k in DATA if k != "versions")


def _spec(name: str, convention: str = "torch", **kwargs: Any) -> Report:
    return analyze(load_spec(bundled()[f"torchvision/{name}"]), convention=convention, **kwargs)


def test_both_torchvision_mvits_were_measured_and_have_a_spec() -> None:
    assert MVITS == ["mvit_v1_b", "mvit_v2_s"]
    assert {n for n in bundled() if n.startswith("torchvision/mvit")} == {f"torchvision/{m}" for m in MVITS}


@pytest.mark.parametrize("name", MVITS)
def test_mvit_spec_is_torchvisions_model(name: str) -> None:
    """Params, buffers and output measured on the model; torchvision's published num_params and GFLOPS (its _ops:
    GMACs, 3 decimals); FlopCounterMode's count (2 per MAC: every product is a counted op, torchvision's MViT calls
    no fused attention kernel) and fvcore's total, to the unit."""
    m = DATA[name]
    t = _spec(name).totals
    assert m["input_shape"] == [1, 3, 16, 224, 224]
    assert t.params == m["params"] == m["published_params"]
    assert t.buffers == m["float_buffers"] + m["int_buffers"] == 0
    assert [1, *t.output] == m["output_shape"]
    assert f"{t.macs / 1e9:.3f}" == m["published_gmacs"]
    assert 2 * t.macs == m["flop_counter"]
    assert _spec(name, "fvcore").totals.flops == m["fvcore"]
    weights = m["published_weights"][m["weights"]]
    assert (weights["crop_size"], weights["min_temporal_size"]) == (224, 16)


@pytest.mark.parametrize("name", MVITS)
def test_what_each_counter_counts_by_operator(name: str) -> None:
    """FlopCounterMode counts the convolutions (patch embedding and the pooling convs), the linear layers
    (addmm) and the products (bmm: Q K^T, A V, and MViTv2's relative position terms, the einsums included), 2 per
    MAC; fvcore one per MAC of the same (its einsums rounded: below), plus 5 per element of each layer norm (the
    pooling norms included); neither counts the shortcut's max pooling, the softmax, the scale or the additions."""
    m = DATA[name]
    fc, fv = m["flop_counter_by_op"], m["fvcore_by_operator"]
    assert set(fc) == {"aten.addmm", "aten.bmm", "aten.convolution"}
    assert set(fv) == {"conv", "layer_norm", "linear", "matmul"} | ({"einsum"} if name == "mvit_v2_s" else set())
    assert (fc["aten.convolution"], fc["aten.addmm"]) == (2 * fv["conv"], 2 * fv["linear"])
    assert fc["aten.bmm"] == 2 * (fv["matmul"] + _einsum_macs(name))
    unsupported = m["fvcore_unsupported"]
    assert unsupported["aten::max_pool3d"] == 3 and unsupported["aten::softmax"] == 16
    rows = _spec(name, "fvcore").rows
    assert sum(fv.values()) == sum(r.flops for r in rows if r.kind in (
        "layernorm", "pooled_attention", "conv", "linear"))
    assert sum(r.flops for r in rows) == m["fvcore"]


def _einsum_macs(name: str) -> int:
    """MViTv2's H and W relative position terms, written out: D x the q grid's tokens x k's H (or W) per block."""
    total = 0
    for r in _spec(name).rows:
        if r.kind == "pooled_attention" and r.op.args["rel_pos"]:
            total += sum(r.output[1] * math.prod(r.output.grid) * k for k in _kv_grid(r)[1:])
    return total


def test_fvcore_rounds_the_einsums_of_mvit_v2_s() -> None:
    """fvcore counts an einsum from numpy's einsum_path report, printed to 4 significant digits: MViTv2's H and W
    relative position terms (32 einsums) come out off their MACs, and the spec's fvcore figure reproduces it."""
    rounded = 0
    for r in _spec("mvit_v2_s").rows:
        if r.kind == "pooled_attention":
            for k in _kv_grid(r)[1:]:
                rounded += int(float(f"{2 * r.output[1] * math.prod(r.output.grid) * k:.3e}") // 2)
    assert rounded == DATA["mvit_v2_s"]["fvcore_by_operator"]["einsum"] != _einsum_macs("mvit_v2_s")


def _kv_grid(row: Any) -> tuple[int, ...]:
    """k's grid from the row's arguments: (W + 2 (K // 2) - K) // S + 1 per axis, on the input's grid."""
    args = row.op.args
    kernel, stride = args.get("kernel_kv", 3), args["stride_kv"]
    kernel = kernel if isinstance(kernel, (list, tuple)) else [kernel] * 3
    return tuple((w + 2 * (k // 2) - k) // s + 1 for w, k, s in zip(row.input.grid, kernel, stride))


@pytest.mark.parametrize("name", MVITS)
def test_archcalc_import_of_torchvisions_mvit_is_exact(name: str) -> None:
    """`archcalc import` of torchvision's own model (run by the measurement script on the real model): the
    measured params, output, FlopCounterMode MACs and fvcore total, and the same figures as the bundled spec."""
    m, imported = DATA[name], DATA[name]["import"]
    assert "error" not in imported, imported
    assert imported["params"] == m["params"] and imported["buffers"] == 0
    assert 2 * imported["macs"] == m["flop_counter"] and imported["fvcore"] == m["fvcore"]
    assert [1, *imported["output"]] == m["output_shape"]
    assert {"pooled_attention", "token_maxpool", "class_token", "to_tokens", "take_token"} <= set(imported["kinds"])
    assert ("separable_pos_embed" in imported["kinds"]) == (name == "mvit_v1_b")


def _rounded(macs: int) -> int:
    return int(float(f"{2 * macs:.3e}") // 2)  # fvcore's einsum count: numpy's report to 4 digits, halved


@pytest.mark.parametrize("name", MVITS)
def test_validate_agrees_on_the_mvit_specs_at_a_reduced_clip(name: str) -> None:
    """`archcalc validate` on the spec's built modules at the real widths on a 4 x 32 x 32 clip (a 2 x 8 x 8
    grid), batch 2: shapes, params, MACs, fvcore, activations, saved bytes and training FLOPs, per layer and in
    total. fvcore rounds the count of each einsum of the batch (MViTv2's relative positions), the spec's figure
    is the sample's rounded count times the batch: those layers differ by exactly that, nothing else does."""
    from archcalc.torch.validate import validate

    spec = load_spec(bundled()[f"torchvision/{name}"])
    result = validate(spec, batch=2, input_shape=(3, 4, 32, 32))
    rows = {r.name: r for r in analyze(spec, input_shape=(3, 4, 32, 32)).rows}
    expected = {}
    for row in rows.values():
        if row.kind == "pooled_attention" and row.op is not None and row.op.args["rel_pos"]:
            terms = [row.output[1] * math.prod(row.output.grid) * k for k in _kv_grid(row)[1:]]
            off = sum(_rounded(2 * x) - 2 * _rounded(x) for x in terms)
            if off:
                expected[row.name] = -off
    failures = {c.layer: c.predicted - c.measured for c in result.failures if c.quantity == "fvcore_flops"}
    assert [c for c in result.failures if c.quantity != "fvcore_flops"] == []
    assert failures == {**expected, **({None: sum(expected.values())} if expected else {})}
    assert (name == "mvit_v2_s") == bool(expected)
    assert len(result.checks) > 150


# ---- the kinds by hand -----------------------------------------------------------------------------------------


def test_pooled_attention_macs_by_hand() -> None:
    """17 tokens (a class token and a 1 x 4 x 4 grid) of 8 channels, 2 heads, k and v pooled by a 3 x 3 x 3
    depthwise conv with stride (1, 2, 2) to 1 x 2 x 2: qkv 17 * 8 * 24, the two pooling convs 2 * 8 channels *
    4 positions * 27, Q K^T and A V 2 * 17 * 5 * 8, the projection 17 * 8 * 8."""
    kind = REGISTRY["pooled_attention"]
    a = _args("pooled_attention", {"num_heads": 2, "kernel_kv": 3, "stride_kv": (1, 2, 2)})
    inp = Tokens(17, 8, (1, 4, 4))
    out = kind.output(a, inp, lambda m: None)
    assert out == (17, 8) and out.grid == (1, 4, 4)
    cost = kind.cost(a, inp, out)
    assert cost.macs == 17 * 8 * 24 + 2 * 8 * 4 * 27 + 2 * 17 * 5 * 8 + 17 * 8 * 8 == 7440
    # params: qkv 8 * 24 + 24, projection 8 * 8 + 8, per pool a 4-channel 3x3x3 depthwise kernel and a norm of 4
    assert cost.params == 8 * 24 + 24 + 64 + 8 + 2 * (4 * 27 + 8) == 520
    # fvcore: 5 per element of the pooled, normed k and v (5 tokens of 8 each)
    assert cost.fvcore == cost.macs + 5 * 2 * 5 * 8


def _args(name: str, given: dict[str, Any]) -> dict[str, Any]:
    kind = REGISTRY[name]
    a = {x.name: x.default for x in kind.args}
    a.update(given)
    return a


class PlainPooledAttention(torch.nn.Module):
    """MViTv2's attention written from the paper with F.* calls (Li et al. 2022, eq. 1-4), on a class token and a
    T x H x W grid: one head, q and k and v pooled by a depthwise conv + layer norm, relative positions, residual
    pooling."""

    def __init__(self, c: int, grid: tuple[int, int, int], stride_q: tuple[int, ...], stride_kv: tuple[int, ...]
                 ) -> None:
        super().__init__()
        self.grid, self.sq, self.skv = grid, stride_q, stride_kv
        torch.manual_seed(3)
        self.qkv_w, self.qkv_b = torch.randn(3 * c, c) * 0.3, torch.randn(3 * c) * 0.1
        self.proj_w, self.proj_b = torch.randn(c, c) * 0.3, torch.randn(c) * 0.1
        self.pools = [(torch.randn(c, 1, 3, 3, 3) * 0.3, torch.rand(c) + 0.5, torch.randn(c) * 0.1)
                      for _ in range(3)]
        gq = tuple((w - 1) // s + 1 for w, s in zip(grid, stride_q))
        gk = tuple((w - 1) // s + 1 for w, s in zip(grid, stride_kv))
        self.gq, self.gk = gq, gk
        self.tables = [torch.randn(2 * max(a, b) - 1, c) * 0.3 for a, b in zip(gq, gk)]

    def pool(self, x: torch.Tensor, which: int, stride: tuple[int, ...]) -> torch.Tensor:
        w, g, b = self.pools[which]
        c = x.shape[-1]
        cells = x[:, 1:].transpose(1, 2).reshape(x.shape[0], c, *self.grid)
        pooled = F.conv3d(cells, w, None, stride, 1, 1, c).flatten(2).transpose(1, 2)
        return F.layer_norm(torch.cat([x[:, :1], pooled], dim=1), (c,), g, b, 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        q, k, v = F.linear(x, self.qkv_w, self.qkv_b).split(c, dim=-1)
        k, v, q = self.pool(k, 1, self.skv), self.pool(v, 2, self.skv), self.pool(q, 0, self.sq)
        scores = q @ k.transpose(1, 2) / math.sqrt(c)
        # the relative position term: q_i . R[p(i) - p(j)] per axis, positions scaled to the finer grid
        for axis, table in enumerate(self.tables):
            nq, nk = self.gq[axis], self.gk[axis]
            rq, rk = max(nk / nq, 1), max(nq / nk, 1)
            for i, pi in enumerate(_positions(self.gq)):
                for j, pj in enumerate(_positions(self.gk)):
                    row = round(pi[axis] * rq - pj[axis] * rk + (nk - 1) * rk)
                    scores[:, 1 + i, 1 + j] += q[:, 1 + i] @ table[row]
        y = scores.softmax(-1) @ v
        y = torch.cat([y[:, :1], y[:, 1:] + q[:, 1:]], dim=1)
        return F.linear(y, self.proj_w, self.proj_b)


def _positions(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [(t, h, w) for t in range(grid[0]) for h in range(grid[1]) for w in range(grid[2])]


def _load(module: torch.nn.Module, plain: PlainPooledAttention) -> None:
    with torch.no_grad():
        module.qkv.weight.copy_(plain.qkv_w)
        module.qkv.bias.copy_(plain.qkv_b)
        module.project.weight.copy_(plain.proj_w)
        module.project.bias.copy_(plain.proj_b)
        for pool, (w, g, b) in zip((module.pool_q, module.pool_k, module.pool_v), plain.pools):
            pool.pool.weight.copy_(w)
            pool.norm.weight.copy_(g)
            pool.norm.bias.copy_(b)
        for table, mine in zip(plain.tables, (module.rel_pos_t, module.rel_pos_h, module.rel_pos_w)):
            mine.copy_(table)


@pytest.mark.parametrize(("grid", "stride_q", "stride_kv"), [((2, 4, 4), (1, 2, 2), (1, 2, 2)),
                                                            ((3, 4, 2), (1, 1, 1), (1, 2, 1))])
def test_pooled_attention_computes_mvitv2s_attention_and_its_macs(grid: Any, stride_q: Any, stride_kv: Any) -> None:
    """The built module against the plain one (the relative positions as a loop over every pair of tokens), and
    its FlopCounterMode count against archcalc's MACs."""
    c = 6
    inp = Tokens(math.prod(grid) + 1, c, grid)
    a = _args("pooled_attention", {"num_heads": 1, "kernel_q": 3, "stride_q": stride_q, "kernel_kv": 3,
                                   "stride_kv": stride_kv, "rel_pos": True, "residual_pool": True, "eps": 1e-6})
    kind = REGISTRY["pooled_attention"]
    module = module_call(kind, a, inp).make().eval()
    plain = PlainPooledAttention(c, grid, stride_q, stride_kv)
    _load(module, plain)
    x = torch.randn(2, *inp)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        got = module(x)
    torch.testing.assert_close(got, plain(x))
    out = kind.output(a, inp, lambda m: None)
    assert counter.get_total_flops() == 2 * 2 * kind.cost(a, inp, out).macs
    assert tuple(got.shape[1:]) == tuple(out)


@pytest.mark.parametrize("index", range(len(REGISTRY["pooled_attention"].examples)))
def test_pooled_attention_inference_peak_op_by_op(index: int) -> None:
    """What the module's ops make and free at inference (each op's output, followed by a dispatch mode) against
    archcalc's peak for the one-layer network less its input: exact (the profiler also sees the strided 3-D
    convolutions' CPU scratch, which archcalc does not predict: tests/test_kind_rules.py)."""
    kind = REGISTRY["pooled_attention"]
    ex = kind.examples[index]
    a = _args("pooled_attention", {k: tuple(v) if isinstance(v, list) else v for k, v in ex.args.items()})
    module = module_call(kind, a, ex.input).make().eval()
    x = torch.randn(2, *ex.input)
    with torch.no_grad():
        measured = dispatch_peak_bytes(lambda: module(x))
    out = kind.output(a, ex.input, lambda m: None)
    transient = sum(n for n, _ in kind.transient(a, ex.input, out)) * 2
    once = sum(n for n, _ in kind.transient_once(a, ex.input, out))
    assert measured == 4 * (2 * math.prod(out) + transient + once)


def test_token_maxpool_keeps_the_class_token() -> None:
    kind = REGISTRY["token_maxpool"]
    a = _args("token_maxpool", {"kernel_size": (1, 3, 3), "stride": (1, 2, 2), "padding": (0, 1, 1)})
    inp = Tokens(1 + 2 * 4 * 4, 3, (2, 4, 4))
    x = torch.randn(2, *inp)
    y = module_call(kind, a, inp).make()(x)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 3, 2, 4, 4)
    expected = F.max_pool3d(grid, (1, 3, 3), (1, 2, 2), (0, 1, 1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y, torch.cat([x[:, :1], expected], dim=1))
    out = kind.output(a, inp, lambda m: None)
    assert (out, out.grid) == ((9, 3), (2, 2, 2))


def test_separable_pos_embed_by_hand() -> None:
    """MViTv1's embedding: token (t, p) gets temporal[t] + spatial[p]; the class token class_pos."""
    kind = REGISTRY["separable_pos_embed"]
    inp = Tokens(1 + 2 * 3, 4, (2, 1, 3))
    module = module_call(kind, {}, inp).make()
    x = torch.zeros(1, *inp)
    y = module(x)[0]
    torch.testing.assert_close(y[0], module.class_pos)
    torch.testing.assert_close(y[1 + 1 * 3 + 2], module.temporal_pos[1] + module.spatial_pos[2])
    assert kind.cost({}, inp, inp).params == (3 + 2 + 1) * 4


# ---- receptive field, errors, refusals --------------------------------------------------------------------------


def test_after_pooled_attention_every_token_sees_the_whole_clip() -> None:
    text = ("name: p\ninput: [2, 2, 8, 8]\nlayers:\n  - conv: {out: 4, kernel: [1, 2, 2], stride: [1, 2, 2]}\n"
            "  - to_tokens\n  - class_token\n"
            "  - pooled_attention: {num_heads: 2, kernel_kv: 3, stride_kv: [1, 2, 2], kernel_q: 3, "
            "stride_q: [1, 2, 2], name: attn}\n")
    report = analyze(load_text(text))
    field = seen(report.rows, report.input, report.totals.rf)
    assert field.global_at == "attn"
    from archcalc.torch.build import build_module

    model = build_module(report).double()
    x = torch.rand(1, 2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    model(x)[0, 3].sum().backward()  # one grid token of the output
    assert x.grad is not None and bool((x.grad.abs().sum(1) > 0).all())


BAD = [
    ("pooled_attention: {num_heads: 3}", "not divisible by num_heads 3"),
    ("pooled_attention: {num_heads: 2, rel_pos: true}", "rel_pos needs a T x H x W grid"),
    ("token_maxpool: {kernel_size: 9}", "kernel 9 is larger than the padded grid 4"),
    ("pooled_attention: {num_heads: 2, output_dim: [4, 4]}", "output_dim is one number of channels"),
    ("token_maxpool: {kernel_size: 3, padding: 2}", "padding 2 is more than half the kernel 3"),
]


@pytest.mark.parametrize(("layer", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_pooled_layer_that_does_not_fit_is_a_located_error(tmp_path: Path, layer: str, message: str) -> None:
    from typer.testing import CliRunner

    from archcalc.cli.app import app

    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ninput: [4, 4, 4]\nlayers:\n  - to_tokens\n  - class_token\n  - {layer}\n",
                    encoding="utf-8")
    result = CliRunner().invoke(app, ["calc", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and f"{path}:6:" in result.output and "Traceback" not in result.output


class _Stub:
    """The attributes of torchvision's MultiscaleAttention the importer reads (torchvision is not imported here)."""

    def __init__(self, **changes: Any) -> None:
        conv = torch.nn.Conv3d(4, 4, 3, (1, 2, 2), 1, groups=4, bias=False)
        pool = type("Pool", (), {"pool": conv, "norm_act": torch.nn.Sequential(torch.nn.LayerNorm(4, eps=1e-6)),
                                 "norm_before_pool": False})()
        self.qkv = torch.nn.Linear(8, 24)
        self.project = torch.nn.Sequential(torch.nn.Linear(8, 8))
        self.pool_q, self.pool_k, self.pool_v = None, pool, pool
        self.num_heads, self.output_dim, self.residual_pool, self.residual_with_cls_embed = 2, 8, True, False
        self.rel_pos_h = None
        self.__dict__.update(changes)


def test_the_importer_reads_multiscale_attention_and_refuses_what_differs() -> None:
    assert read_multiscale_attention(_Stub(), ()).args == {
        "num_heads": 2, "output_dim": 8, "kernel_q": 1, "stride_q": 1, "kernel_kv": 3, "stride_kv": (1, 2, 2),
        "residual_pool": True, "rel_pos": False, "eps": 1e-6}
    refusals = [({"residual_with_cls_embed": True}, "residual_with_cls_embed"),
                ({"pool_k": None}, "k and v are not pooled"),
                ({"project": torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.1))}, "attention dropout")]
    for changes, message in refusals:
        with pytest.raises(Unmapped, match=message):
            read_multiscale_attention(_Stub(**changes), ())
    avg = type("Pool", (), {"pool": torch.nn.AvgPool3d(3), "norm_act": None})()
    with pytest.raises(Unmapped, match="MaxPool3d alone"):
        read_mvit_pool(avg, ())
    assert "torchvision" not in sys.modules
