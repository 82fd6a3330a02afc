"""XCiT's cross-covariance attention (`xca`) and Fourier position encoding (`fourier_pos_embed`), and EdgeNeXt's use
of both (El-Nouby et al. 2021, "XCiT: Cross-Covariance Image Transformers"; Maaz et al. 2022, "EdgeNeXt").

The modules here are written in the test as timm writes them (timm/models/xcit.py's XCA, PositionalEncodingFourier
and LPI; timm/models/edgenext.py's PositionalEncodingFourier and SplitTransposeBlock), from plain torch: timm is
never imported. The expected figures are PyTorch's own (parameter counts, FlopCounterMode) and the paper's cost
rule written out, never archcalc's."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import archcalc
from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError


class XCA(nn.Module):
    """timm's XCA (fused attention off): per head softmax(temperature * norm(q) norm(k)^T) v over channels."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj(x)


class Unnormalised(XCA):
    """The same products without the normalisation of q and k: not XCiT's attention (archcalc refuses it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class XCiTFourier(nn.Module):
    """timm's XCiT PositionalEncodingFourier: made for one image from arange, projected, repeated over the batch."""

    def __init__(self, dim: int, hidden_dim: int = 32, kernel: int = 1) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=kernel, padding=kernel // 2)
        self.hidden_dim = hidden_dim

    def forward(self, b: int, h: int, w: int) -> torch.Tensor:
        device = self.token_projection.weight.device
        y_embed = torch.arange(1, h + 1, device=device).to(torch.float32).unsqueeze(1).repeat(1, 1, w)
        x_embed = torch.arange(1, w + 1, device=device).to(torch.float32).repeat(1, h, 1)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
        dim_t = torch.arange(self.hidden_dim, device=device).to(torch.float32)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.hidden_dim)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack([pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()], dim=4).flatten(3)
        pos_y = torch.stack([pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()], dim=4).flatten(3)
        pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
        return self.token_projection(pos).repeat(b, 1, 1, 1)


class EdgeNeXtFourier(nn.Module):
    """EdgeNeXt's PositionalEncodingFourier: made from a mask of the batch's size (cumsum), projected per image."""

    def __init__(self, dim: int, hidden_dim: int = 32) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim

    def forward(self, shape: tuple[int, int, int]) -> torch.Tensor:
        device = self.token_projection.weight.device
        inv_mask = ~torch.zeros(shape).to(device=device, dtype=torch.bool)
        y_embed = inv_mask.cumsum(1, dtype=torch.float32)
        x_embed = inv_mask.cumsum(2, dtype=torch.float32)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
        dim_t = torch.arange(self.hidden_dim, dtype=torch.int64, device=device).to(torch.float32)
        dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.hidden_dim)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return self.token_projection(torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2))


class LPI(nn.Module):
    """timm's local patch interaction: the tokens on their grid, depthwise 3x3, GELU, batch norm, depthwise 3x3."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.permute(0, 2, 1).reshape(b, c, h, w)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(b, c, n).permute(0, 2, 1)


class TinyXCiT(nn.Module):
    """XCiT's layout: a conv patch embedding, the Fourier encoding added, one XCA block (attention, LPI, MLP, each
    with a layer scale), the tokens' mean and a head."""

    def __init__(self, dim: int = 16, heads: int = 4, pos: nn.Module | None = None, attention: type = XCA) -> None:
        super().__init__()
        self.patch = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.BatchNorm2d(dim), nn.GELU())
        self.pos = pos if pos is not None else XCiTFourier(dim, hidden_dim=8)
        self.norm1, self.norm3, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attention(dim, heads)
        self.local_mp = LPI(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma1, self.gamma3, self.gamma2 = (nn.Parameter(torch.ones(dim)) for _ in range(3))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.patch(x)
        hp, wp = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        x = x + self.pos(b, hp, wp).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = x + self.gamma3 * self.local_mp(self.norm3(x), hp, wp)
        x = x + self.gamma2 * self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class TinySDTA(nn.Module):
    """EdgeNeXt's split depthwise transposed attention block: channel chunks through depthwise convs (each added
    to the next chunk), the Fourier encoding, XCA with a layer scale, then the tokens as a channels-last grid
    through a layer norm, an MLP and a layer scale, and the block's residual."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.convs = nn.ModuleList([nn.Conv2d(dim // 2, dim // 2, 3, padding=1, groups=dim // 2)])
        self.pos_embd = EdgeNeXtFourier(dim, hidden_dim=4)
        self.norm_xca = nn.LayerNorm(dim)
        self.gamma_xca = nn.Parameter(torch.ones(dim))
        self.xca = XCA(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        shortcut = x
        spx = x.chunk(2, dim=1)
        x = torch.cat([self.convs[0](spx[0]), spx[1]], 1)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        x = x + self.pos_embd((b, h, w)).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
        x = x + self.gamma_xca * self.xca(self.norm_xca(x))
        x = x.reshape(b, h, w, c)
        x = (self.gamma * self.mlp(self.norm(x))).permute(0, 3, 1, 2)
        x = shortcut + x
        return self.head(x.mean((2, 3)))


class ClassAttn(nn.Module):
    """timm's ClassAttn (CaiT's): the class token's query against every token; fused (sdpa) or written out."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fused = fused
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.q(x[:, 0]).unsqueeze(1).reshape(b, 1, h, c // h).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        if self.fused:
            x_cls = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        else:
            attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
            x_cls = attn @ v
        return self.proj(x_cls.transpose(1, 2).reshape(b, 1, c))


class ClassAttentionBlock(nn.Module):
    """timm's XCiT ClassAttentionBlock: the class token's attention put before the normed patch tokens, a layer
    scale and a residual; then (tokens_norm) every token or only the class token normed, the class token's MLP."""

    def __init__(self, dim: int, heads: int, tokens_norm: bool, fused: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ClassAttn(dim, heads, fused=fused)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma1, self.gamma2 = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm1 = self.norm1(x)
        x = x + self.gamma1 * torch.cat([self.attn(x_norm1), x_norm1[:, 1:]], dim=1)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, 0:1]), x[:, 1:]], dim=1)
        x_res = x
        cls_token = self.gamma2 * self.mlp(x[:, 0:1])
        return x_res + torch.cat([cls_token, x[:, 1:]], dim=1)


class TinyXCiTHead(TinyXCiT):
    """TinyXCiT with XCiT's head: the class token put first, two class-attention blocks, a norm, x[:, 0]."""

    def __init__(self, tokens_norm: bool, fused: bool = True) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.cls_attn_blocks = nn.ModuleList([ClassAttentionBlock(16, 4, tokens_norm, fused) for _ in range(2)])
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.patch(x)
        hp, wp = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        x = x + self.pos(b, hp, wp).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = x + self.gamma3 * self.local_mp(self.norm3(x), hp, wp)
        x = x + self.gamma2 * self.mlp(self.norm2(x))
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def _macs(model: nn.Module, batch: int, size: int = 32) -> int:
    """FlopCounterMode's count, halved, on the meta device (where scaled_dot_product_attention runs its math
    decomposition: its products counted; on the CPU torch 2.14's fused kernel counts 0)."""
    model = model.eval().to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, 3, size, size, device="meta"))
    return counter.get_total_flops() // 2


def _kinds(imported: Any) -> list[str]:
    return [line.split(":")[0].strip(" -{") for line in imported.text.splitlines() if line.strip().startswith("- ")]


def test_xca_costs_are_the_papers_rule_and_what_torch_counts() -> None:
    """El-Nouby et al., sec. 3.2: per head a d x d attention from N tokens, 2 N d^2 MACs for its two products;
    the projections 4 N C^2; parameters those of the two linear layers and one temperature per head."""
    n, c, h = 49, 24, 3
    d = c // h
    m = XCA(c, h).eval()
    report = archcalc.from_module(nn.Sequential(_Tokens(), m), (c, 7, 7))
    totals = analyze(report.spec).totals
    assert totals.params == sum(p.numel() for p in m.parameters()) == 4 * c * c + 4 * c + h
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.randn(1, n, c))
    assert totals.macs == counter.get_total_flops() // 2 == 4 * n * c * c + h * 2 * n * d * d


class _Tokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_xcit_imports_exact(batch: int) -> None:
    torch.manual_seed(0)
    model = TinyXCiT().eval()
    imported = archcalc.from_module(model, (3, 32, 32))
    kinds = _kinds(imported)
    assert "xca" in kinds and "fourier_pos_embed" in kinds and "to_grid" in kinds
    assert "once: true" in imported.text  # XCiT projects one copy and repeats it over the batch
    report = analyze(imported.spec, batch=batch)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())  # (float and int64)
    assert report.totals.macs == _macs(model, batch)  # the projection counted once whatever the batch
    assert report.totals.output == (10,)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_edgenext_block_imports_exact(batch: int) -> None:
    torch.manual_seed(0)
    model = TinySDTA().eval()
    imported = archcalc.from_module(model, (3, 32, 32))
    kinds = _kinds(imported)
    assert "xca" in kinds and "fourier_pos_embed" in kinds and "once: true" not in imported.text  # per image
    report = analyze(imported.spec, batch=batch)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.macs == _macs(model, batch)


def test_the_fourier_encoding_is_the_constant_timm_makes() -> None:
    """archcalc's built module computes timm's features: the imported spec's fourier_pos_embed, given the same
    projection, adds what XCiT's PositionalEncodingFourier adds."""
    from archcalc.torch.modules import FourierPositionEncoding

    torch.manual_seed(0)
    timm_like = XCiTFourier(12, hidden_dim=8)
    built = FourierPositionEncoding(12, (3, 5), hidden_dim=8, once=True)
    built.load_state_dict(timm_like.state_dict())
    x = torch.randn(2, 15, 12)
    expected = x + timm_like(2, 3, 5).reshape(2, -1, 15).permute(0, 2, 1)
    torch.testing.assert_close(built(x), expected)


def test_xca_receptive_field_is_every_token() -> None:
    """Back-propagating from one output token reaches every input token (the channel weights sum over all)."""
    torch.manual_seed(0)
    m = XCA(8, 2)
    x = torch.randn(1, 12, 8, requires_grad=True)
    m(x)[0, 5].sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(-1) > 0).all())
    spec = archcalc.from_module(nn.Sequential(nn.Conv2d(3, 8, 1), _Tokens(), m), (3, 3, 4)).spec
    assert analyze(spec).totals.rf == (3, 4)


def test_attention_without_the_normalisation_is_refused() -> None:
    with pytest.raises(ArchcalcError, match="reshape of a token sequence"):
        archcalc.from_module(TinyXCiT(attention=Unnormalised), (3, 32, 32))


def test_a_constant_projected_otherwise_is_refused() -> None:
    """Only a 1 x 1 conv of the constant is fourier_pos_embed; a 3 x 3 one is refused where it runs."""
    with pytest.raises(ArchcalcError, match=r"token_projection.*a tensor made without the input \(a constant\)"):
        archcalc.from_module(TinyXCiT(pos=XCiTFourier(16, hidden_dim=8, kernel=3)), (3, 32, 32))


class _Offset(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1], dtype=x.dtype)


def test_a_constant_added_to_the_network_is_refused() -> None:
    with pytest.raises(ArchcalcError, match=r"a tensor made without the input \(a constant\)"):
        archcalc.from_module(nn.Sequential(nn.Conv2d(3, 4, 1), _Offset()), (3, 4, 4))


@pytest.mark.parametrize(("tokens_norm", "fused", "batch"), [(False, True, 1), (True, True, 3), (False, False, 3)])
def test_xcit_class_attention_blocks_import_exact(tokens_norm: bool, fused: bool, batch: int) -> None:
    """CaiT's class attention (q from the class token alone: C^2 + 2NC^2 + C^2 + 2NC MACs, not self-attention's
    4NC^2 + 2N^2 C) and the block's slices and concatenations of tokens."""
    torch.manual_seed(0)
    model = TinyXCiTHead(tokens_norm, fused).eval()
    imported = archcalc.from_module(model, (3, 32, 32))
    report = analyze(imported.spec, batch=batch)
    kinds = [r.kind for r in report.rows]
    assert kinds.count("class_attention") == 2 and "self_attention" not in kinds and kinds.count("concat") >= 4
    assert "stop: 1" in imported.text
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.macs == _macs(model, batch)
    n, c = 65, 16  # 8 x 8 patches and the class token
    rows = [r for r in report.rows if r.kind == "class_attention"]
    assert rows[0].macs == batch * (2 * c * c + 2 * n * c * c + 2 * n * c)


def test_class_attention_output_is_timms() -> None:
    """archcalc's built module, with the imported weights, computes what the written-out ClassAttn does."""
    from archcalc.torch.modules import ClassAttention

    torch.manual_seed(0)
    timm_like = ClassAttn(12, 3, fused=False)
    built = ClassAttention(12, 3)
    built.load_state_dict({k: v for k, v in timm_like.state_dict().items()})
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(built(x), timm_like(x))
