"""Attention whose keys and values come from a reduced sequence (PVT's spatial-reduction attention: Wang et al.
2021, "Pyramid Vision Transformer"; PVT v2, Wang et al. 2022; Twins-PCPVT's global sub-sampled attention): the
`sr_ratio` and `kv_pool` arguments of `self_attention`, their costs against torch, and their import from modules
written here in plain torch the way timm's pvt_v2.Attention and twins.GlobalSubSampleAttn compute (timm is never
imported). Each kind example is also checked by tests/test_kinds.py (shape, params, MACs, fvcore against torch),
tests/test_kind_rules.py (saved bytes, receptive field, full FLOPs, inference peak, training FLOPs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from measure import saved_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.torch.importer import from_module
from tests.import_check import check


class SRAttention(nn.Module):
    """q from every token; k and v from the tokens, or from their H x W grid reduced by a conv of kernel = stride =
    `sr` and a layer norm, or (`pool`) adaptive-average-pooled, a 1x1 conv, a layer norm and a GELU. `variant`
    breaks the pattern in one place."""

    def __init__(self, dim: int, heads: int, sr: int = 1, pool: int = 0, fused: bool = True, qkv_bias: bool = True,
                 variant: str = "") -> None:
        super().__init__()
        self.heads, self.fused, self.pool, self.variant = heads, fused, pool, variant
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr: nn.Module | None = None
        if pool:
            self.avg = nn.AdaptiveAvgPool2d(pool)
            self.sr = nn.Conv2d(dim, dim, 1)
            self.act = nn.GELU()
        elif sr > 1:
            padding = 1 if variant == "padded" else 0
            self.sr = nn.Conv2d(dim, dim, sr + 2 * padding, stride=sr, padding=padding)
        if self.sr is not None:
            self.norm = nn.LayerNorm(dim, eps=1e-6 if variant == "eps" else 1e-5)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, -1).permute(0, 2, 1, 3)
        if self.sr is not None:
            x = x.permute(0, 2, 1).reshape(b, c, *size)
            if self.pool:
                x = self.avg(x)
            x = self.norm(self.sr(x).reshape(b, c, -1).permute(0, 2, 1))
            if self.pool:
                x = self.act(x)
        kv = self.kv(x).reshape(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        if self.variant == "leak":
            x = x + v.transpose(1, 2).reshape(b, -1, c).mean(dim=1, keepdim=True)  # v read outside the attention
        return self.proj(x)


class TinyPVT(nn.Module):
    """PVT-v2's layout around its attention: an overlapping patch embedding (conv, channels moved last, a layer
    norm, reshaped to tokens), a pre-norm block with the attention and an MLP whose depthwise conv runs on the grid
    (transpose and view to C x H x W, flatten and transpose back), the tokens laid out channels-last on the grid
    again and moved first (reshape, permute, contiguous), a mean and a classifier."""

    def __init__(self, dim: int = 16, heads: int = 2, **kw: object) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 7, stride=4, padding=3)
        self.patch_norm = nn.LayerNorm(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRAttention(dim, heads, **kw)  # type: ignore[arg-type]
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        b, h, w, c = x.shape
        x = x.reshape(b, -1, c)
        x = x + self.attn(self.norm1(x), (h, w))
        y = self.fc1(self.norm2(x))
        y = self.dwconv(y.transpose(1, 2).view(b, 2 * c, h, w)).flatten(2).transpose(1, 2)
        x = x + self.fc2(F.gelu(y))
        x = self.norm(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean((2, 3)))


def meta_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FlopCounterMode on the meta device, where scaled_dot_product_attention runs its math decomposition (its two
    products counted as bmm)."""
    model = model.to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *shape, device="meta"))
    return counter.get_total_flops()


@pytest.mark.parametrize(("kw", "args"), [
    ({"sr": 2}, "sr_ratio: 2"), ({"sr": 4, "qkv_bias": False}, "qkv_bias: false, sr_ratio: 4"),
    ({"pool": 2}, "kv_pool: 2"), ({}, ""),
])
@pytest.mark.parametrize("fused", [False, True])
def test_spatial_reduction_attention_imports_as_self_attention_exact(kw: dict, args: str, fused: bool) -> None:
    """The q projection beside a kv projection that reads a reduced sequence (or the tokens: sr_ratio 1, PVT's
    last stage) is one self_attention: params and buffers the module's, output and FLOPs torch's at the import's
    input and at another (the explicit form on the CPU; the fused one on the meta device, where its math
    decomposition is counted)."""
    model = TinyPVT(fused=fused, **kw)
    if fused:
        imported = from_module(model, (3, 32, 32))
        report = analyze(imported.spec, convention="torch")
        assert report.totals.params == sum(p.numel() for p in model.parameters())
        assert report.totals.flops == meta_flops(model, (3, 32, 32))
        text = imported.text
    else:
        text, _ = check(model, (3, 32, 32))  # (the MLP's to_grid has the grid's size written: one input size)
    attention = f"self_attention: {{num_heads: 2, {args + ', ' if args else ''}name: attn}}"
    assert attention in text, text
    assert "matmul" not in text and "softmax" not in text and "conv: {out_channels: 16, kernel_size: 1" not in text


def test_the_reduction_counts_what_it_computes() -> None:
    """The MACs of one attention with sr_ratio 2 on a 8 x 8 grid of 16 channels (M = 16 reduced tokens), written
    out: q and the output projection 2 N C^2, kv 2 M C^2, the conv M C^2 r^2, Q K^T and A V 2 N M C; params
    4 C^2 + 4 C (biases) + C^2 r^2 + C (the conv) + 2 C (the norm)."""
    text = "name: a\ninput: [16, 8, 8]\nlayers:\n  - to_tokens\n  - self_attention: {num_heads: 2, sr_ratio: 2}\n"
    report = analyze(load_text(text))
    n, m, c, r = 64, 16, 16, 2
    assert report.totals.macs == 2 * n * c * c + 2 * m * c * c + m * c * c * r * r + 2 * n * m * c
    assert report.totals.params == 4 * c * c + 4 * c + c * c * r * r + c + 2 * c
    model = SRAttention(c, 2, sr=r, fused=False)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, n, c), (8, 8))
    assert counter.get_total_flops() == 2 * report.totals.macs


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("reduce", ["sr_ratio: 2", "kv_pool: 3"])
def test_reduced_attention_keeps_what_autograd_keeps(batch: int, reduce: str) -> None:
    """The built module's saved tensors (the input, kept by the reducing conv or pool; q, k, v, the weights, the
    norm's input and statistics; the kv projection's input and the joined heads) at batch 1 and 3
    (tests/test_kind_rules.py checks batch 2)."""
    from archcalc.torch.build import build_module

    text = (f"name: a\ninput: [8, 6, 6]\nlayers:\n  - to_tokens\n  - layernorm\n"
            f"  - self_attention: {{num_heads: 2, {reduce}}}\n")
    report = analyze(load_text(text), batch=batch, device="cpu", input_requires_grad=True)
    model = build_module(report)
    x = torch.randn(batch, 8, 6, 6, requires_grad=True)
    assert report.totals.saved_bytes == saved_bytes(model, x)


@pytest.mark.parametrize(("layer", "message"), [
    ("self_attention: {num_heads: 2, sr_ratio: 2, kv_pool: 2}", "one of sr_ratio, kv_pool and kv_avgpool"),
    ("self_attention: {num_heads: 2, sr_ratio: 8}", "sr_ratio 8 is larger than the grid 6x6"),
    ("self_attention: {num_heads: 2, sr_ratio: 2, kernel: fused}", "kernel 'fused' is not followed"),
])
def test_a_reduction_that_does_not_fit_is_refused_at_its_line(layer: str, message: str) -> None:
    from archcalc.core.errors import SpecError

    text = f"name: a\ninput: [8, 6, 6]\nlayers:\n  - to_tokens\n  - {layer}\n"
    with pytest.raises(SpecError, match=message) as info:
        analyze(load_text(text))
    assert ":5:" in str(info.value)


def test_a_reduction_after_a_class_token_is_refused() -> None:
    from archcalc.core.errors import SpecError

    text = ("name: a\ninput: [8, 4, 4]\nlayers:\n  - to_tokens\n  - class_token\n"
            "  - self_attention: {num_heads: 2, sr_ratio: 2}\n")
    with pytest.raises(SpecError, match=r"reduces the tokens' 2-D grid \(N = H x W\); its input is 17 tokens"):
        analyze(load_text(text))


@pytest.mark.parametrize("variant", ["padded", "eps", "leak"])
def test_other_reductions_are_not_read_as_self_attention(variant: str) -> None:
    """A reducing conv with padding (not kernel = stride), a norm of another eps, a value of the attention read
    outside it: not self_attention; the op-by-op import refuses the block at the op it has no kind for."""
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(TinyPVT(sr=2, variant=variant), (3, 32, 32))


class EfficientAttention(nn.Module):
    """Next-ViT's E-MHSA (timm's nextvit.EfficientAttention) written out: q, k and v projections of their own; k
    and v from the tokens averaged over runs of `avg` consecutive tokens (nn.AvgPool1d) and an nn.BatchNorm1d
    (`norm`; none once folded into the projections)."""

    def __init__(self, dim: int, heads: int, avg: int = 1, norm: bool = True, variant: str = "") -> None:
        super().__init__()
        self.heads, self.variant = heads, variant
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.AvgPool1d(avg, avg, ceil_mode=variant == "ceil") if avg > 1 else None
        self.norm = nn.BatchNorm1d(dim) if avg > 1 and norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        if self.sr is not None:
            x = self.norm(self.sr(x.transpose(1, 2))).transpose(1, 2)
        k = self.k(x).reshape(b, -1, h, c // h).transpose(1, 2)
        v = self.v(x).reshape(b, -1, h, c // h).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyNextViT(nn.Module):
    """Next-ViT's transformer block around E-MHSA: a batch norm on the grid, the grid to tokens (reshape,
    transpose(-1, -2)), the attention, back to the grid (transpose, reshape) and a residual."""

    def __init__(self, dim: int = 16, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1 = nn.BatchNorm2d(dim)
        self.e_mhsa = EfficientAttention(dim, 2, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        out = self.norm1(x).reshape(b, c, -1).transpose(-1, -2)
        x = x + self.e_mhsa(out).transpose(-1, -2).reshape(b, c, h, w)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(("kw", "args"), [({"avg": 4}, "kv_avgpool: 4"), ({"avg": 4, "norm": False},
                                                                         "kv_avgpool: 4, kv_norm: false"),
                                          ({}, "")])
def test_efficient_attention_imports_as_self_attention_exact(kw: dict, args: str) -> None:
    """Separate k and v projections reading the tokens averaged in runs (with or without the batch norm) or the
    tokens themselves: one self_attention; params, buffers (the norm's running statistics) and FLOPs (meta device)
    the module's."""
    model = TinyNextViT(**kw)
    imported = from_module(model, (3, 32, 32))
    report = analyze(imported.spec, convention="torch")
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    assert report.totals.flops == meta_flops(model, (3, 32, 32))
    assert f"self_attention: {{num_heads: 2, {args + ', ' if args else ''}name: e_mhsa}}" in imported.text, \
        imported.text


def test_averaged_runs_count_what_they_compute() -> None:
    """kv_avgpool 4 on 64 tokens of 16 channels (M = 16): MACs 2 N C^2 + 2 M C^2 + 2 N M C, written out; params
    4 C^2 + 4 C + 2 C (the batch norm), buffers 2 C + 1 (its running statistics and count); FlopCounterMode on the
    module written above agrees."""
    text = "name: a\ninput: [16, 8, 8]\nlayers:\n  - to_tokens\n  - self_attention: {num_heads: 2, kv_avgpool: 4}\n"
    report = analyze(load_text(text))
    n, m, c = 64, 16, 16
    assert report.totals.macs == 2 * n * c * c + 2 * m * c * c + 2 * n * m * c
    assert report.totals.params == 4 * c * c + 4 * c + 2 * c
    assert report.totals.buffers == 2 * c + 1
    model = EfficientAttention(c, 2, avg=4).eval()
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.to("meta")(torch.empty(1, n, c, device="meta"))
    assert counter.get_total_flops() == 2 * report.totals.macs


def test_a_ceil_mode_average_is_not_read_as_self_attention() -> None:
    """AvgPool1d with ceil_mode on 25 tokens in runs of 3 (a last, shorter run: 9 averages, not 8) is not
    kv_avgpool: imported op by op, refused there."""
    with pytest.raises(ArchcalcError, match=r"cannot import .* at e_mhsa"):
        from_module(TinyNextViT(avg=3, variant="ceil"), (3, 20, 20))


def test_kv_avgpool_refusals() -> None:
    from archcalc.core.errors import SpecError

    for layer, message in [("self_attention: {num_heads: 2, kv_avgpool: 40}", "kv_avgpool 40 is more than the 36"),
                           ("self_attention: {num_heads: 2, kv_avgpool: 4, sr_ratio: 2}", "one of sr_ratio")]:
        text = f"name: a\ninput: [8, 6, 6]\nlayers:\n  - to_tokens\n  - {layer}\n"
        with pytest.raises(SpecError, match=message):
            analyze(load_text(text))
