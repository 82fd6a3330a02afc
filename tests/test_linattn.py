"""The conv attention of CPUBone and LowFormer (timm/models/cpubone.py and lowformer.py, `ConvAttention`), written here
from plain torch (timm is not imported): a strided depthwise conv and a batch norm reduce the grid, a 1 x 1 conv
makes q, k and v laid out per head (h heads of d channels each, h d about half the channels), the tokens of the
reduced grid attend, and the joined heads go back to the grid, through a 1 x 1 output projection and an upsampling
to the input's size. It imports as archcalc's kinds (`conv`, `batchnorm`, `to_tokens`, `self_attention` with
`key_dim` and `value_dim`, `to_grid`, `upsample`) exact to torch's own counts; a module that computes something
else is not read so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import load_spec
from archcalc.torch.importer import from_module
from tests.import_check import check


class ConvAttention(nn.Module):
    """timm 1.0.31's cpubone.ConvAttention forward (small_kernels, nearest upsampling; `fused_out`: the output
    projection folded into the upsampling's first layer, o_proj an nn.Identity), written out; with `transpose`,
    lowformer.ConvAttention's upsampling (fuse_out_proj: a transposed conv from the joined heads, no 1 x 1 conv).
    `fused` picks scaled_dot_product_attention or the explicit products; `variant` breaks it in one place."""

    def __init__(self, c: int, stride: int = 2, fused: bool = False, fused_out: bool = True,
                 variant: str = "", transpose: bool = False) -> None:
        super().__init__()
        self.heads = max(1, (c // 2) // 30) if variant != "heads" else 2
        self.d = (c // self.heads) // 2
        self.fused, self.variant, self.stride = fused, variant, stride
        self.scale = self.d**-0.5 * (2.0 if variant == "scale" else 1.0)
        self.conv_proj = nn.Sequential(nn.Conv2d(c, c, 2, stride, groups=c, bias=False), nn.BatchNorm2d(c))
        inner = self.heads * self.d
        self.pwise = nn.Conv2d(c, 3 * inner, 1, bias=False)
        self.o_proj: nn.Module = nn.Identity() if fused_out else nn.Conv2d(inner, c, 1)
        first = [nn.Conv2d(inner, c, 3 if variant == "proj3x3" else 1, padding=1 if variant == "proj3x3" else 0)] \
            if fused_out else []
        self.upsampling = nn.Sequential(*first, nn.Upsample(scale_factor=stride, mode="nearest"))
        if transpose:  # lowformer.ConvAttention (fuse_out_proj): a transposed conv maps the joined heads to C
            self.upsampling = nn.Sequential(nn.ConvTranspose2d(inner, c, 2 * stride, stride, stride // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        xout = self.pwise(self.conv_proj(x))
        b, _, h, w = xout.size()
        qkv = xout.reshape(b, self.heads, 3 * self.d, h * w).permute(0, 1, 3, 2)
        q, k, v = qkv.chunk(3, dim=3 if self.variant != "order" else 3)
        if self.variant == "order":
            q, k = k, q
            k = k * 1.0
        if self.fused:
            values = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            values = attn.softmax(dim=-1) @ v
        o = self.o_proj(values.permute(0, 1, 3, 2).reshape(b, self.heads * self.d, h, w))
        return self.upsampling(o)[..., :height, :width]


class Net(nn.Module):
    def __init__(self, c: int = 64, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.attn = ConvAttention(c, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.attn(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("fused_out", [True, False])
def test_cpubone_conv_attention_imports_exact(fused_out: bool) -> None:
    net = Net(fused_out=fused_out)
    heads, d, c = net.attn.heads, net.attn.d, 64
    assert (heads, d) == (1, 32)  # (timm's head_dim_mul 0.5: h d = C / 2)
    text, report = check(net, (3, 16, 16), (3, 12, 20), (3, 8, 8))
    assert "self_attention: {num_heads: 1, qkv_bias: false, key_dim: 32, value_dim: 32" in text, text
    assert "to_tokens" in text and "to_grid" in text and "upsample" in text, text
    n, inner = 4 * 4, heads * d  # the 8 x 8 grid reduced by the stride-2 conv
    row = next(r for r in report.rows if r.kind == "self_attention")
    # q, k, v: C -> 3 h d (no bias); the output projection h d -> C with bias; Q K^T and A V over the 16 tokens
    assert row.params == c * 3 * inner + inner * c + c
    assert row.macs == n * c * 3 * inner + 2 * n * n * inner + n * inner * c


def test_more_heads_import_exact() -> None:
    net = Net(c=16, variant="heads")
    assert (net.attn.heads, net.attn.d) == (2, 4)
    text, _ = check(net, (3, 16, 16), (3, 12, 20))
    assert "num_heads: 2" in text and "key_dim: 4, value_dim: 4" in text, text


def test_fused_attention_imports_as_the_same_spec() -> None:
    torch.manual_seed(0)
    fused, explicit = Net(fused=True), Net()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x))
    assert from_module(fused, (3, 16, 16)).text == from_module(explicit, (3, 16, 16)).text


@pytest.mark.parametrize("variant", ["scale", "proj3x3", "order"])
def test_other_conv_attention_is_not_read_as_self_attention(variant: str) -> None:
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(Net(variant=variant), (3, 16, 16))


def test_lowformer_conv_attention_without_projection_imports_exact() -> None:
    net = Net(transpose=True)
    heads, d, c = net.attn.heads, net.attn.d, 64
    text, report = check(net, (3, 16, 16), (3, 12, 20), (3, 8, 8))
    assert "self_attention: {num_heads: 1, bias: false, key_dim: 32, value_dim: 32, proj: false" in text, text
    assert "conv_transpose" in text, text
    n, inner = 4 * 4, heads * d
    row = next(r for r in report.rows if r.kind == "self_attention")
    # q, k, v: C -> 3 h d without bias; Q K^T and A V over the 16 tokens; the joined heads (h d channels) are its
    # output, which the transposed conv reads
    assert (row.params, row.macs) == (c * 3 * inner, n * c * 3 * inner + 2 * n * n * inner)
    assert row.output == (n, inner)


@pytest.mark.parametrize(("args", "message"), [
    ("{num_heads: 2, key_dim: 4, value_dim: 4, proj: false, out_features: 6}",
     r"spec.yaml:5:5: .*\(proj: false\) takes no act or out_features"),
    ("{num_heads: 2, key_dim: 4, value_dim: 4, proj: false, act: silu}",
     r"spec.yaml:5:5: .*\(proj: false\) takes no act or out_features"),
])
def test_an_attention_without_projection_takes_no_output_arguments(write_spec, args: str, message: str) -> None:  # type: ignore
    text = f"name: bad\ninput: [8, 4, 4]\nlayers:\n  - to_tokens\n  - self_attention: {args}\n"
    with pytest.raises(ArchcalcError, match=message):
        analyze(load_spec(write_spec(text)))


def test_an_attention_without_projection_in_a_spec_outputs_its_joined_heads(write_spec) -> None:  # type: ignore
    text = ("name: ok\ninput: [8, 4, 4]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 2, key_dim: 3, value_dim: 5, bias: false, proj: false}\n  - to_grid\n")
    report = analyze(load_spec(write_spec(text)))
    row = next(r for r in report.rows if r.kind == "self_attention")
    n, c, k, v = 16, 8, 6, 10  # 2 heads of q/k 3 and v 5
    assert report.totals.output == (v, 4, 4)
    assert (row.params, row.macs) == ((2 * k + v) * c, n * c * (2 * k + v) + n * n * (k + v))


# ---- EfficientViT-MIT's ReLU linear attention (timm's LiteMLA) ----------------------------------------------------


class LiteMLA(nn.Module):
    """timm 1.0.31's efficientvit_mit.LiteMLA forward (one extra scale, the 1 x 1 qkv conv without norm or bias, the
    projection a 1 x 1 conv and a batch norm), written out. `variant` breaks it in one place."""

    def __init__(self, c: int, dim: int = 4, variant: str = "") -> None:
        super().__init__()
        self.dim, self.variant = dim, variant
        heads = c // dim
        total = heads * dim
        self.qkv = nn.Conv2d(c, 3 * total, 1, bias=False)
        self.aggreg = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3 * total, 3 * total, 5, padding=2, groups=3 * total, bias=False),
            nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False))])
        self.kernel_func = nn.ReLU(inplace=False) if variant != "gelu" else nn.GELU()
        self.proj = nn.Sequential(nn.Conv2d(2 * total, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = self.kernel_func(q), self.kernel_func(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0 if self.variant != "zeros" else 0.0)
        dtype = v.dtype
        q, k, v = q.float(), k.float(), v.float()
        kv = k.transpose(-1, -2) @ v
        out = q @ kv
        if self.variant == "first":
            out = out[..., 1:] / (out[..., :1] + 1e-5)
        else:
            out = out[..., :-1] / (out[..., -1:] + 1e-5)
        out = out.to(dtype).transpose(-1, -2).reshape(b, -1, h, w)
        return self.proj(out)


class EfficientVitBlock(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.attn = LiteMLA(16, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.attn(x)
        return self.head(x.mean((2, 3)))


def test_efficientvit_linear_attention_imports_exact() -> None:
    text, report = check(EfficientVitBlock(), (3, 12, 16), (3, 8, 8), (3, 10, 6))
    assert "linear_attention: {head_dim: 4" in text, text
    row = next(r for r in report.rows if r.kind == "linear_attention")
    h, n, d = 2 * 16 // 4, 6 * 8, 4  # 4 heads of each scale; 6 x 8 positions
    # k^T [v, 1] and q (k^T [v, 1]): h d (d + 1) N MACs each, linear in N; no params
    assert (row.params, row.macs) == (0, 2 * h * n * d * (d + 1))
    assert row.output == (h * d, 6, 8)


def test_linear_attention_in_a_spec_equals_the_written_out_block(write_spec) -> None:  # type: ignore
    torch.manual_seed(0)
    block = LiteMLA(16).eval()
    spec = ("name: litemla\ninput: [16, 6, 8]\nlayers:\n  - conv: {out: 48, kernel: 1, bias: false, name: qkv}\n"
            "  - conv: {out: 48, kernel: 5, padding: 2, groups: 48, bias: false}\n"
            "  - conv: {out: 48, kernel: 1, groups: 12, bias: false, name: agg}\n"
            "  - concat: [qkv, agg]\n  - linear_attention: {head_dim: 4}\n"
            "  - conv: {out: 16, kernel: 1, bias: false}\n  - batchnorm\n")
    report = analyze(load_spec(write_spec(spec)))
    x = torch.randn(1, 16, 6, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = block(x)
    assert report.totals.output == tuple(out.shape[1:])
    assert report.totals.params == sum(p.numel() for p in block.parameters())
    assert 2 * report.totals.macs == counter.get_total_flops()


@pytest.mark.parametrize("variant", ["gelu", "zeros", "first"])
def test_other_linear_attention_is_not_read_as_linear_attention(variant: str) -> None:
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(EfficientVitBlock(variant=variant), (3, 12, 16))
