"""Multi-query attention on a grid (MobileNetV4's Mobile MQA, MobileNetV5; timm's MultiQueryAttention2d):
`multi_query_attention` against hand-written arithmetic, and `archcalc import` of timm's module against a copy of its
structure written here from plain torch (timm is not imported: the stand-in classes carry timm's qualified names,
which is what the importer reads). The real models' figures: tests/test_import_timm_hybrid.py."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.torch.importer import ImportFailure, from_module


class RmsNorm2d(nn.Module):
    """timm's RmsNorm2d (timm/layers/norm.py): each position's channels over their root mean square, a weight."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.normalized_shape = (c,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.mean(x.pow(2), dim=1, keepdim=True)
        return x * torch.rsqrt(v + self.eps) * self.weight.reshape(1, -1, 1, 1)


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame (timm/layers/conv2d_same.py): TF-'same' padding from the input's size, (ceil(W / s) - 1) s +
    k - W in all, the smaller half before, then the conv without padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MultiQueryAttention2d(nn.Module):
    """The structure of timm's MultiQueryAttention2d (timm/layers/attention2d.py), its math path: q a 1x1 conv
    (C -> heads x key_dim), k and v each (a depthwise conv of stride kv_stride and a norm, then) a 1x1 conv to one
    head, the heads joined (B, N, heads, value_dim -> channels) and a 1x1 conv."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, key_dim: int, value_dim: int, kv_stride: int = 1,
                 norm: type = nn.BatchNorm2d, query_strides: int = 1, proj_drop: float = 0.0,
                 dw_padding: int = 1, same: bool = False) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.query_strides = (query_strides, query_strides)
        self.kv_stride = kv_stride
        self.query = nn.Sequential()
        if query_strides > 1:
            self.query.add_module("down_pool", nn.AvgPool2d(query_strides))
            self.query.add_module("norm", nn.BatchNorm2d(dim))
        self.query.add_module("proj", nn.Conv2d(dim, num_heads * key_dim, 1, bias=False))
        for name, out in (("key", key_dim), ("value", value_dim)):
            seq = nn.Sequential()
            if kv_stride > 1:
                seq.add_module("down_conv", Conv2dSame(dim, dim, 3, kv_stride, 0, groups=dim, bias=False) if same
                               else nn.Conv2d(dim, dim, 3, kv_stride, dw_padding, groups=dim, bias=False))
                seq.add_module("norm", norm(dim))
            seq.add_module("proj", nn.Conv2d(dim, out, 1, bias=False))
            setattr(self, name, seq)
        self.attn_drop = nn.Dropout(0.0)
        self.output = nn.Sequential()
        if query_strides > 1:
            self.output.add_module("upsample", nn.Upsample(scale_factor=query_strides, mode="bilinear"))
        self.output.add_module("proj", nn.Conv2d(num_heads * value_dim, dim_out, 1, bias=False))
        self.output.add_module("drop", nn.Dropout(proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x)
        q = q.reshape(b, self.num_heads, self.key_dim, -1).transpose(-1, -2).contiguous()
        k = self.key(x).reshape(b, self.key_dim, -1).transpose(1, 2).unsqueeze(1).contiguous()
        v = self.value(x).reshape(b, self.value_dim, -1).transpose(1, 2).unsqueeze(1).contiguous()
        attn = ((q * self.key_dim ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2)
        o = o.reshape(b, h // self.query_strides[0], w // self.query_strides[1], -1).permute(0, 3, 1, 2).contiguous()
        return self.output(o)


class ConvNorm(nn.Sequential):
    """iFormer's ConvNorm (timm/models/iformer.py): a 1x1 conv without bias, a batch norm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, 1, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class SHMA(nn.Module):
    """The structure of iFormer's single-head modulation attention (timm/models/iformer.py: SHMA), its math path:
    q and k ConvNorm(C, C / 2), v_gate ConvNorm(C, 2 mid) through a sigmoid, split into v and the gate; one head's
    softmax(q^T k / sqrt(C / 2)) over the positions, its output times the gate, proj ConvNorm(mid, C)."""

    def __init__(self, dim: int, ratio: int = 1, window_size: int = 0) -> None:
        super().__init__()
        mid, attn = dim * ratio, dim // 2
        self.scale = attn ** -0.5
        self.window_size = window_size
        self.q, self.k = ConvNorm(dim, attn), ConvNorm(dim, attn)
        self.v_gate = ConvNorm(dim, 2 * mid)
        self.gate_act = nn.Sigmoid()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = ConvNorm(mid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        v, gate = self.gate_act(self.v_gate(x)).chunk(2, dim=1)
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), v.flatten(2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).view(b, -1, h, w) * gate)


# timm's qualified names: what archcalc's importer recognises
MultiQueryAttention2d.__module__ = "timm.layers.attention2d"
RmsNorm2d.__module__ = "timm.layers.norm"
Conv2dSame.__module__ = "timm.layers.conv2d_same"
SHMA.__module__ = "timm.models.iformer"


def _block(**kwargs: object) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), MultiQueryAttention2d(24, **kwargs)).eval()  # type: ignore


CASES = [
    ({"dim_out": 24, "num_heads": 4, "key_dim": 8, "value_dim": 8}, (3, 6, 6)),
    ({"dim_out": 24, "num_heads": 4, "key_dim": 8, "value_dim": 6, "kv_stride": 2}, (3, 8, 6)),
    ({"dim_out": 32, "num_heads": 3, "key_dim": 5, "value_dim": 7, "kv_stride": 2, "norm": RmsNorm2d}, (3, 7, 9)),
    ({"dim_out": 24, "num_heads": 2, "key_dim": 6, "value_dim": 5, "kv_stride": 2, "norm": RmsNorm2d, "same": True},
     (3, 8, 7)),  # (MobileNetV5-300M's encoder: TF-'same' padding, 0 before and 1 after on 8)
]


@pytest.mark.parametrize(("kwargs", "shape"), CASES)
def test_import_of_timms_module_is_exact(kwargs: dict, shape: tuple[int, ...]) -> None:
    """Params, buffers, output shape, FlopCounterMode (every product a conv or a bmm: 2 per MAC) and fvcore of the
    module as it runs, against the imported spec's analysis."""
    model = _block(**kwargs)
    imported = from_module(model, shape, "mqa")
    assert "multi_query_attention" in imported.text
    t = analyze(imported.spec).totals
    x = torch.randn(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    assert t.params == sum(p.numel() for p in model.parameters())
    assert t.buffers == sum(b.numel() for b in model.buffers())
    assert list(t.output) == list(y.shape[1:])
    assert 2 * t.macs == counter.get_total_flops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fv = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
    assert analyze(imported.spec, convention="fvcore").totals.flops == fv


def test_the_imported_arguments() -> None:
    text = from_module(_block(**CASES[2][0]), (3, 7, 9), "mqa").text  # type: ignore[arg-type]
    assert ("multi_query_attention: {num_heads: 3, key_dim: 5, value_dim: 7, kv_stride: 2, kv_norm: rmsnorm, "
            "out_features: 32") in text
    text = from_module(_block(**CASES[3][0]), (3, 8, 7), "mqa").text  # type: ignore[arg-type]
    assert ("multi_query_attention: {num_heads: 2, key_dim: 6, value_dim: 5, kv_stride: 2, kv_norm: rmsnorm, "
            "kv_padding: same") in text


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"query_strides": 2}, "query_strides"),
    ({"proj_drop": 0.1}, "dropout"),
    ({"kv_stride": 2, "norm": lambda c: nn.GroupNorm(1, c)}, "norm is GroupNorm"),
    ({"kv_stride": 2, "dw_padding": 0}, "depthwise conv of stride 2"),
])
def test_what_is_not_multi_query_attention_is_refused(kwargs: dict, why: str) -> None:
    with pytest.raises(ImportFailure, match=why):
        from_module(_block(dim_out=24, num_heads=4, key_dim=8, value_dim=8, **kwargs), (3, 8, 8), "mqa")


def test_mobilenetv4_hybrid_medium_block_by_hand() -> None:
    """MobileNetV4-Hybrid-M's stage-4 MQA block at 256 x 256 (timm's mqa_r1_k3_h4_s1_v2_d64_c160: 160 channels on
    16 x 16, 4 query heads of 64, one key and value head of 64, keys and values from a 3x3 depthwise conv of stride 2
    and a batch norm: 8 x 8 = 64 keys), written out."""
    spec = load_text("name: m\ninput: 160x16x16\nlayers:\n  - multi_query_attention: {num_heads: 4, key_dim: 64, "
                     "value_dim: 64, kv_stride: 2}\n")
    t = analyze(spec).totals
    c, n, m = 160, 256, 64
    q, kv, dw, out = c * 256, 2 * c * 64, 2 * (9 * c + 2 * c), 256 * c  # weights: q, k and v 1x1, dw + BN, output
    assert t.params == q + kv + dw + out
    assert t.buffers == 2 * (2 * c + 1)
    assert t.macs == (n * c * 256 + m * c * 128 + 2 * m * c * 9  # projections, depthwise convs
                      + 4 * n * m * 64 * 2 + n * 256 * c)  # Q K^T and A V per head, output
    assert list(t.output) == [160, 16, 16]


@pytest.mark.parametrize(("same", "grid"), [(False, (7, 9)), (True, (8, 7))])
def test_the_built_module_is_timms_function(same: bool, grid: tuple[int, int]) -> None:
    """archcalc's module (the heads' queries as the rows of one matrix) computes what timm's does, weights copied
    in order; with TF-'same' padding too (more after than before on an even side)."""
    from archcalc.core.kinds import REGISTRY
    from archcalc.torch.recipes import module_call

    kind = REGISTRY["multi_query_attention"]
    a = {arg.name: arg.default for arg in kind.args} | {"num_heads": 3, "key_dim": 5, "value_dim": 7,
                                                        "kv_stride": 2, "out_features": 32, "kv_norm": "rmsnorm",
                                                        "kv_padding": "same" if same else "symmetric"}
    built = module_call(kind, a, (24, *grid)).make().eval()
    timm_like = MultiQueryAttention2d(24, 32, 3, 5, 7, kv_stride=2, norm=RmsNorm2d, same=same).eval()
    with torch.no_grad():
        for mine, theirs in zip(built.parameters(), timm_like.parameters(), strict=True):
            theirs.uniform_(-0.5, 0.5)
            mine.copy_(theirs)
        x = torch.randn(2, 24, *grid)
        torch.testing.assert_close(built(x), timm_like(x))
        assert F.mse_loss(built(x), timm_like(x)).item() < 1e-10


@pytest.mark.parametrize(("ratio", "shape"), [(1, (3, 5, 4)), (2, (3, 6, 6))])
def test_import_of_iformers_attention_is_exact(ratio: int, shape: tuple[int, ...]) -> None:
    """iFormer's SHMA reads as `multi_query_attention` with one head, `norm: batchnorm` and `gate: true`: params,
    buffers, output, FlopCounterMode and fvcore of the module as it runs."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SHMA(16, ratio)).eval()
    imported = from_module(model, shape, "shma")
    assert (f"multi_query_attention: {{num_heads: 1, key_dim: 8, value_dim: {16 * ratio}, norm: batchnorm, "
            "gate: true") in imported.text
    t = analyze(imported.spec).totals
    x = torch.randn(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    assert t.params == sum(p.numel() for p in model.parameters())
    assert t.buffers == sum(b.numel() for b in model.buffers())
    assert list(t.output) == list(y.shape[1:])
    assert 2 * t.macs == counter.get_total_flops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fv = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
    assert analyze(imported.spec, convention="fvcore").totals.flops == fv


def test_iformers_windowed_attention_is_refused() -> None:
    with pytest.raises(ImportFailure, match="window_size"):
        from_module(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SHMA(16, window_size=4)).eval(), (3, 8, 8))


def test_the_built_module_is_iformers_function() -> None:
    from archcalc.core.kinds import REGISTRY
    from archcalc.torch.recipes import module_call

    kind = REGISTRY["multi_query_attention"]
    a = {arg.name: arg.default for arg in kind.args} | {"num_heads": 1, "key_dim": 8, "value_dim": 32,
                                                        "norm": "batchnorm", "gate": True}
    built = module_call(kind, a, (16, 5, 6)).make().eval()
    reference = SHMA(16, 2).eval()
    with torch.no_grad():
        for mine, theirs in zip([*built.parameters(), *built.buffers()], [*reference.parameters(),
                                                                          *reference.buffers()], strict=True):
            if theirs.is_floating_point():
                theirs.uniform_(0.5, 1.0)
            mine.copy_(theirs)
        x = torch.randn(2, 16, 5, 6)
        torch.testing.assert_close(built(x), reference(x))
