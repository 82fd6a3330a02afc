"""halo_attention (timm's byoanet: HaloNet's blocked attention with a halo, and BoTNet's bottleneck attention, one
block over the whole grid): the module archcalc builds computes what the papers define — checked against a
reference written here from plain torch (loops over blocks, heads and queries, the relative logits indexed
directly) — and its costs are the rule written out. The 11 timm models import exact: tests/test_import_timm_hybrid.py
against tests/data/timm_hybrid_measured.json."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from torch import nn

import archcalc
from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.kinds import REGISTRY
from archcalc.torch.recipes import module_call

KIND = REGISTRY["halo_attention"]


def _args(**given: Any) -> dict[str, Any]:
    args = {a.name: a.default for a in KIND.args}
    args.update(given)
    return args


def reference(x: torch.Tensor, m: nn.Module, heads: int, dk: int, dv: int, block: tuple[int, int], halo: int,
              qs: int, pool: bool) -> torch.Tensor:
    """Halo attention as Vaswani et al. 2021 define it, with Bello et al.'s relative logits as timm indexes them:
    query (y, x) of a block (in the block's, possibly subsampled, coordinates) and key (i, j) of its window get
    q . T_h[i - y + w_h - 1] + q . T_w[j - x + w_w - 1] added to q . k / sqrt(dk)."""
    b, _, height, width = x.shape
    q = F.conv2d(x, m.q.weight, m.q.bias, stride=qs)
    kv = F.pad(F.conv2d(x, m.kv.weight, m.kv.bias), [halo] * 4)  # per head: dk channels of k, then dv of v
    bh, bw = block
    qh, qw = bh // qs, bw // qs
    wh, ww = bh + 2 * halo, bw + 2 * halo
    out = torch.zeros(b, heads * dv, height // qs, width // qs, dtype=x.dtype)
    for by in range(height // bh):
        for bx in range(width // bw):
            for head in range(heads):
                window = kv[:, head * (dk + dv):(head + 1) * (dk + dv), by * bh:by * bh + wh, bx * bw:bx * bw + ww]
                k, v = window[:, :dk].flatten(2), window[:, dk:].flatten(2)  # b x dk x M, b x dv x M
                for y in range(qh):
                    for xx in range(qw):
                        qv = q[:, head * dk:(head + 1) * dk, by * qh + y, bx * qw + xx]  # b x dk
                        logits = torch.einsum("bd,bdm->bm", qv, k) * dk ** -0.5
                        rel_h = qv @ m.height_rel[torch.arange(wh) - y + wh - 1].T  # b x wh
                        rel_w = qv @ m.width_rel[torch.arange(ww) - xx + ww - 1].T  # b x ww
                        logits = logits + (rel_h[:, :, None] + rel_w[:, None, :]).flatten(1)
                        weights = logits.softmax(-1)
                        out[:, head * dv:(head + 1) * dv, by * qh + y, bx * qw + xx] = torch.einsum(
                            "bm,bdm->bd", weights, v)
    return F.avg_pool2d(out, 2) if pool else out


CASES = [
    ((8, 12, 12), {"num_heads": 2, "block_size": 4, "halo_size": 1}, (4, 4), 1, 1, False),
    ((8, 12, 12), {"num_heads": 2, "block_size": 4, "halo_size": 2, "out_channels": 4, "key_dim": 3}, (4, 4), 2, 1,
     False),
    ((6, 6, 10), {"num_heads": 2, "out_channels": 8}, (6, 10), 0, 1, False),  # BoTNet: one block, not square
    ((6, 6, 10), {"num_heads": 1, "stride": 2, "bias": True}, (6, 10), 0, 1, True),  # BoTNet strided: pooled
    ((4, 12, 12), {"num_heads": 2, "out_channels": 8, "block_size": 4, "halo_size": 1, "stride": 2}, (4, 4), 1, 2,
     False),  # queries subsampled
    ((4, 14, 14), {"num_heads": 2, "block_size": 7, "halo_size": 2, "stride": 2}, (7, 7), 2, 1, True),  # odd: pooled
    ((4, 8, 8), {"num_heads": 2, "block_size": 4, "halo_size": 1, "stride": 2, "avg_down": True}, (4, 4), 1, 1,
     True),
]


@pytest.mark.parametrize(("inp", "given", "block", "halo", "qs", "pool"), CASES)
def test_the_built_module_computes_halo_attention(inp: tuple[int, ...], given: dict[str, Any],
                                                  block: tuple[int, int], halo: int, qs: int, pool: bool) -> None:
    args = _args(**given)
    torch.manual_seed(0)
    m = module_call(KIND, args, inp).make().double().eval()
    out = args["out_channels"] or inp[0]
    heads = args["num_heads"]
    dk = args["key_dim"] or out // heads
    x = torch.randn(2, *inp, dtype=torch.float64)
    with torch.no_grad():
        got, want = m(x), reference(x, m, heads, dk, out // heads, block, halo, qs, pool)
    assert got.shape[1:] == KIND.output(args, inp, lambda message: None)
    torch.testing.assert_close(got, want)


def test_botnet50s_attention_costs_are_the_rule() -> None:
    """BoTNet-50's MHSA on its 16 x 16 grid (512 channels, 4 heads of 128): q, k and v 1 x 1 convs, Q K^T and A V
    over the 256 positions, the relative logits q . T for 31 height and 31 width offsets; tables 2 x 31 x 128."""
    args = _args(num_heads=4)
    inp = (512, 16, 16)
    cost = KIND.cost(args, inp, KIND.output(args, inp, lambda message: None))
    n, c = 256, 512
    assert cost.params == 3 * c * c + 2 * 31 * 128
    assert cost.macs == 3 * n * c * c + 2 * n * n * c + n * c * (31 + 31) == 276_561_920
    assert cost.fvcore == cost.macs  # fvcore counts the same convs and matmuls


def test_halonet_attention_costs_are_the_rule() -> None:
    """HaloNet's attention at 16 x 16 in blocks of 8 with a halo of 3 (windows of 14 x 14 = 196 keys), 8 heads of
    dk 16 on 128 channels, queries subsampled by the stride: 4 blocks of 4 x 4 = 64 queries."""
    args = _args(num_heads=8, block_size=8, halo_size=3, stride=2)
    inp = (128, 16, 16)
    cost = KIND.cost(args, inp, KIND.output(args, inp, lambda message: None))
    assert KIND.output(args, inp, lambda message: None) == (128, 8, 8)
    nq, n, c, m = 64, 256, 128, 196
    assert cost.macs == nq * c * c + n * c * 2 * c + nq * m * c + nq * c * (27 + 27) + nq * m * c
    assert cost.params == 3 * c * c + 2 * 27 * 16


def test_receptive_field_is_the_window_or_the_whole_grid() -> None:
    text = ("name: t\ninput: [4, 24, 24]\nlayers:\n  - halo_attention: {num_heads: 2, block_size: 6, halo_size: 2}\n")
    assert analyze(load_text(text)).totals.rf[0] == 10  # the block and two halos
    text = "name: t\ninput: [4, 24, 24]\nlayers:\n  - halo_attention: {num_heads: 2}\n"
    assert analyze(load_text(text)).totals.rf[0] == 24  # the whole grid


def test_its_own_module_imports_as_itself() -> None:
    """archcalc's module (as `archcalc export` writes it) read back by the importer: the same kind and counts."""
    torch.manual_seed(0)
    for given in ({"num_heads": 2, "block_size": 4, "halo_size": 1, "stride": 2}, {"num_heads": 2, "stride": 2}):
        args = _args(**given)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), module_call(KIND, args, (8, 12, 12)).make()).eval()
        imported = archcalc.from_module(model, (3, 12, 12))
        report = analyze(imported.spec)
        assert "halo_attention" in imported.text
        assert report.totals.params == sum(p.numel() for p in model.parameters())
        assert report.totals.output == tuple(model(torch.randn(1, 3, 12, 12)).shape[1:])


@pytest.mark.parametrize(("layer", "message"), [
    ("{num_heads: 2, block_size: 5}", "not a whole number of 5x5 blocks"),
    ("{num_heads: 3}", "not divisible by num_heads 3"),
    ("{num_heads: 2, stride: 3}", "stride 3: 1 or 2"),
])
def test_bad_arguments_are_refused_at_the_line(layer: str, message: str) -> None:
    text = f"name: t\ninput: [4, 12, 12]\nlayers:\n  - conv: {{out: 8, kernel: 1}}\n  - halo_attention: {layer}\n"
    with pytest.raises(ArchcalcError, match=message) as info:
        analyze(load_text(text))
    assert ":5:" in str(info.value)


def test_tokens_are_refused() -> None:
    text = "name: t\ninput: [4, 12, 12]\nlayers:\n  - to_tokens\n  - halo_attention: {num_heads: 2}\n"
    with pytest.raises(ArchcalcError, match="needs a grid"):
        analyze(load_text(text))


# ---- lambda_layer --------------------------------------------------------------------------------------------------

LAMBDA = REGISTRY["lambda_layer"]


def lambda_reference(x: torch.Tensor, m: nn.Module, heads: int, dk: int, r: int, pool: bool) -> torch.Tensor:
    """A lambda layer as Bello 2021 defines it, position by position: y_n = q_n (lambda_c + lambda_n) per head, the
    content lambda lambda_c = softmax(K) V^T, the position lambda lambda_n = sum over the r x r neighbours m of n of
    w[m - n] v_m (+ the conv's bias), or with r = 0 sum over every position m of E[pos_m - pos_n] v_m^T."""
    b, c, height, width = x.shape
    dv, positions = c // heads, height * width
    qkv = F.conv2d(x, m.qkv.weight, m.qkv.bias)
    q, k, v = qkv[:, :heads * dk], qkv[:, heads * dk:heads * dk + dk], qkv[:, heads * dk + dk:]

    def norm(t: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    q, v = norm(q, m.norm_q), norm(v, m.norm_v)
    k = k.flatten(2).softmax(-1)  # b x dk x M, over the positions
    out = torch.zeros(b, c, height, width, dtype=x.dtype)
    for n in range(positions):
        y, xx = divmod(n, width)
        content = torch.einsum("bdm,bem->bde", k, v.flatten(2))  # b x dk x dv
        position = torch.zeros(b, dk, dv, dtype=x.dtype)
        if r:
            position += m.conv_lambda.bias[None, :, None]
            for i in range(r):
                for j in range(r):
                    yy, xj = y + i - r // 2, xx + j - r // 2
                    if 0 <= yy < height and 0 <= xj < width:
                        position += m.conv_lambda.weight[:, 0, i, j, 0][None, :, None] * v[:, None, :, yy, xj]
        else:
            for mm in range(positions):
                ym, xm = divmod(mm, width)
                e = m.pos_emb[ym - y + height - 1, xm - xx + width - 1]  # dk
                position += e[None, :, None] * v[:, None, :, ym, xm]
        lam = content + position
        for head in range(heads):
            out[:, head * dv:(head + 1) * dv, y, xx] = torch.einsum(
                "bd,bde->be", q[:, head * dk:(head + 1) * dk, y, xx], lam)
    return F.avg_pool2d(out, 2) if pool else out


@pytest.mark.parametrize(("inp", "given"), [
    ((8, 6, 6), {"num_heads": 2, "key_dim": 4, "r": 3}),
    ((8, 5, 7), {"num_heads": 4, "key_dim": 2, "r": 5, "stride": 2, "bias": True}),
    ((8, 4, 6), {"num_heads": 2, "key_dim": 3, "r": 0}),
    ((6, 4, 4), {"num_heads": 1, "key_dim": 4, "r": 0, "stride": 2}),
])
def test_the_built_lambda_layer_computes_lambdas(inp: tuple[int, ...], given: dict[str, Any]) -> None:
    args = {a.name: a.default for a in LAMBDA.args} | given
    torch.manual_seed(0)
    m = module_call(LAMBDA, args, inp).make().double().eval()
    for bn in (m.norm_q, m.norm_v):  # statistics other than the initial ones
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, *inp, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
        want = lambda_reference(x, m, args["num_heads"], args["key_dim"], args["r"], args["stride"] == 2)
    assert got.shape[1:] == LAMBDA.output(args, inp, lambda message: None)
    torch.testing.assert_close(got, want)


def test_lambda_resnets_layer_costs_are_the_rule() -> None:
    """LambdaResNet's layer on 512 channels at 16 x 16, 4 heads of dk 16 (dv 128), r = 9: qkv 1 x 1 conv to
    64 + 16 + 128 channels; the content lambda (16 x 128) and its product with q; the position lambdas from a
    9 x 9 x 1 conv3d over (16, 16, 128) with 16 filters; their product with q. With r = 0 the embedding is
    31 x 31 x 16 and the position lambdas M^2 dk dv."""
    inp, m, c, dk, dv, h = (512, 16, 16), 256, 512, 16, 128, 4
    args = {a.name: a.default for a in LAMBDA.args} | {"num_heads": 4}
    cost = LAMBDA.cost(args, inp, inp)
    products = m * dk * dv + 2 * h * m * dk * dv
    assert cost.macs == m * c * 208 + products + m * dv * dk * 81
    assert cost.params == c * 208 + 2 * (64 + 128) + 16 * 81 + 16
    assert cost.buffers == 2 * (64 + 128) and cost.int_buffers == 2
    assert cost.fvcore == cost.macs + 2 * m * (64 + 128)  # fvcore's 2 per element of each eval batch norm
    args["r"] = 0
    cost = LAMBDA.cost(args, inp, inp)
    assert cost.macs == m * c * 208 + products + m * m * dk * dv
    assert cost.params == c * 208 + 2 * (64 + 128) + 31 * 31 * 16
    assert cost.int_buffers == 2 + 2 * m * m  # the relative index, 2 x M x M


@pytest.mark.parametrize(("layer", "message"), [
    ("{num_heads: 3}", "not divisible by num_heads 3"),
    ("{num_heads: 2, r: 4}", "needs an odd size"),
    ("{num_heads: 2, stride: 3}", "stride 3: 1 or 2"),
])
def test_bad_lambda_arguments_are_refused_at_the_line(layer: str, message: str) -> None:
    text = f"name: t\ninput: [4, 12, 12]\nlayers:\n  - conv: {{out: 8, kernel: 1}}\n  - lambda_layer: {layer}\n"
    with pytest.raises(ArchcalcError, match=message) as info:
        analyze(load_text(text))
    assert ":5:" in str(info.value)


def test_its_own_lambda_layer_imports_as_itself() -> None:
    torch.manual_seed(0)
    for given in ({"num_heads": 2, "key_dim": 4, "r": 3}, {"num_heads": 2, "key_dim": 4, "r": 0, "stride": 2}):
        args = {a.name: a.default for a in LAMBDA.args} | given
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), module_call(LAMBDA, args, (8, 6, 6)).make()).eval()
        imported = archcalc.from_module(model, (3, 6, 6))
        report = analyze(imported.spec)
        assert "lambda_layer" in imported.text
        assert report.totals.params == sum(p.numel() for p in model.parameters())
        assert report.totals.buffers == sum(b.numel() for b in model.buffers())
        assert report.totals.output == tuple(model(torch.randn(1, 3, 6, 6)).shape[1:])


# ---- bilinear_attention, channel_dropout ---------------------------------------------------------------------------

BAT = REGISTRY["bilinear_attention"]


def bat_reference(x: torch.Tensor, m: nn.Module, groups: int, b: int) -> torch.Tensor:
    """BAT's transform as Zheng et al. define it: per group two b x b matrices from row and column max pools,
    normalised, and per channel y = kron(P, I_t) x kron(Q, I_t)."""
    bsz, c, height, width = x.shape

    def conv_bn_relu(t: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        t = F.conv2d(t, conv.weight, conv.bias)
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps).relu()

    out = conv_bn_relu(x, m.conv1, m.bn1)
    rows = torch.stack([out[:, :, i * height // b:(i + 1) * height // b].amax(dim=(2, 3)) for i in range(b)], -1)
    cols = torch.stack([out[:, :, :, j * width // b:(j + 1) * width // b].amax(dim=(2, 3)) for j in range(b)], -1)
    p = F.conv2d(rows[..., None], m.conv_p.weight, m.conv_p.bias).view(bsz, groups, b, b).sigmoid()
    q = F.conv2d(cols[:, :, None], m.conv_q.weight, m.conv_q.bias).view(bsz, groups, b, b).sigmoid()
    p, q = p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)
    y = torch.empty_like(x)
    for n in range(bsz):
        for ch in range(c):
            group = ch // (c // groups)
            big_p = torch.kron(p[n, group], torch.eye(height // b, dtype=x.dtype))
            big_q = torch.kron(q[n, group], torch.eye(width // b, dtype=x.dtype))
            y[n, ch] = big_p @ x[n, ch] @ big_q
    return conv_bn_relu(y, m.conv2, m.bn2)


@pytest.mark.parametrize(("inp", "groups", "b"), [((8, 8, 12), 2, 4), ((6, 6, 6), 3, 3), ((8, 4, 4), 4, 4)])
def test_the_built_bilinear_attention_is_bats_transform(inp: tuple[int, ...], groups: int, b: int) -> None:
    args = {"groups": groups, "block_size": b}
    torch.manual_seed(0)
    m = module_call(BAT, args, inp).make().double().eval()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, *inp, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), bat_reference(x, m, groups, b))


def test_bats_costs_are_the_rule() -> None:
    """bat_resnext26ts's first transform: 16 channels at 64 x 64, 2 groups, b = 8."""
    c, h, g, b = 16, 64, 2, 8
    args = {"groups": g, "block_size": b}
    cost = BAT.cost(args, (c, h, h), (c, h, h))
    assert cost.macs == h * h * c * g + 2 * (b * b * g) * g * b + 2 * c * h ** 3 + h * h * c * c
    assert cost.params == c * g + 2 * g + 2 * (b * b * g * g * b + b * b * g) + c * c + 2 * c
    assert cost.fvcore == cost.macs + 2 * h * h * (g + c)


def test_channel_dropout_zeroes_whole_channels_in_training_only() -> None:
    text = "name: t\ninput: [6, 4, 4]\nlayers:\n  - channel_dropout: {p: 0.5}\n"
    report = analyze(load_text(text))
    assert report.totals.params == 0 and report.totals.macs == 0
    from archcalc.torch.build import build_module

    model = build_module(report)
    x = torch.rand(3, 6, 4, 4) + 1
    assert torch.equal(model.eval()(x), x)
    torch.manual_seed(0)
    y = model.train()(x)
    zeroed = (y == 0).flatten(2)
    assert torch.equal(zeroed.all(2), zeroed.any(2)) and zeroed.any()  # whole channels, some of them
