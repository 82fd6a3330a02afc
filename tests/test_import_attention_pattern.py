"""Self-attention written out op by op (timm's Attention: a fused qkv Linear, reshape, permute, unbind, the scaled
dot product by F.scaled_dot_product_attention or by hand, the heads joined, the output Linear) imports as one
`self_attention`, by what it computes; a block that computes something else is imported op by op, which refuses it
at the op archcalc has no kind for. The modules are written here from plain torch; torch is the oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.torch.importer import from_module
from tests.import_check import check


class Attention(nn.Module):
    """timm.layers.Attention's forward (timm 1.0), written out: `fused` picks scaled_dot_product_attention or the
    explicit q @ k^T * scale, softmax, @ v; `variant` breaks the pattern in one place."""

    def __init__(self, dim: int, heads: int, bias: bool = True, fused: bool = False, variant: str = "",
                 tokens: int = 0) -> None:
        super().__init__()
        self.heads, self.fused, self.variant = heads, fused, variant
        self.scale = (dim // heads) ** -0.5 * (2.0 if variant == "scale" else 1.0)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.qkv = nn.Linear(dim, dim * 3, bias=bias and variant != "proj_bias")
        self.proj = nn.Linear(dim, dim, bias=bias and variant != "qkv_bias_only")
        if variant == "attn_bias":  # LeViT's learned bias on the attention scores
            self.bias = nn.Parameter(torch.zeros(heads, tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.variant != "index" else (qkv[0], qkv[1], qkv[2])
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            if self.variant == "attn_bias":
                attn = attn + self.bias
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        x = self.proj(x)
        if self.variant == "leak":
            x = x + k.transpose(1, 2).reshape(b, n, c)  # a value of the attention read after it
        return x


class TinyViT(nn.Module):
    """A patch embedding, tokens, two pre-norm attention blocks with residuals, the first token's head."""

    def __init__(self, dim: int = 24, heads: int = 3, **kw: object) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, **kw)  # type: ignore[arg-type]
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return self.head(x[:, 0])


def meta_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FlopCounterMode on the meta device: there scaled_dot_product_attention runs its math decomposition, whose
    two batched products are counted (on the CPU its fused kernel is counted as 0: test below)."""
    model = model.to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *shape, device="meta"))
    return counter.get_total_flops()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", ["", "index", "proj_bias"])
def test_explicit_attention_imports_as_self_attention_exact(bias: bool, variant: str) -> None:
    """Biases in both projections, in neither, or in the output projection only (timm's qkv_bias=False, FastViT's
    attention): self_attention's bias and qkv_bias."""
    text, report = check(TinyViT(bias=bias, variant=variant), (3, 16, 16), (3, 24, 20))
    args = ("qkv_bias: false, " if variant == "proj_bias" else "") if bias else "bias: false, "
    for name in ("attn1", "attn2"):
        assert f"self_attention: {{num_heads: 3, {args}name: {name}}}" in text, text
    assert "matmul" not in text and "softmax" not in text


@pytest.mark.parametrize("bias", [True, False])
def test_fused_attention_imports_as_the_same_spec(bias: bool) -> None:
    """F.scaled_dot_product_attention reads as the explicit form does: the same spec, whose counts are the math
    path's (FlopCounterMode on the meta device); on the CPU FlopCounterMode counts the fused kernel as 0 (the two
    products, 2 N^2 C MACs per attention, missing: stated in docs/export.md, never hidden)."""
    torch.manual_seed(0)
    fused, explicit = TinyViT(bias=bias, fused=True), TinyViT(bias=bias)
    explicit.load_state_dict(fused.state_dict())
    shape = (3, 16, 16)
    x = torch.randn(1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x))  # the same computation
    a, b = from_module(fused, shape), from_module(explicit, shape)
    assert a.text == b.text
    got = analyze(a.spec, convention="torch").totals.flops
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fused(x)
    n, c = 16, 24  # 4 x 4 tokens of 24 channels, two attentions
    assert got - counter.get_total_flops() == 2 * 2 * (2 * n * n * c)
    assert got == meta_flops(fused, shape)


@pytest.mark.parametrize("variant", ["attn_bias", "scale", "qkv_bias_only", "leak"])
def test_other_attention_is_not_read_as_self_attention(variant: str) -> None:
    """A bias on the scores (LeViT's), another scale, a bias in the qkv projection only, a value of the attention
    read outside it: not self_attention; the op-by-op import refuses the block at the op it has no kind for."""
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn1"):
        from_module(TinyViT(variant=variant, tokens=16), (3, 16, 16))


class Ratio(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.relu(x)  # two tensors of the network divided (timm's BAT normalises so)


def test_a_division_of_two_tensors_is_refused_not_a_crash() -> None:
    message = r"cannot import _operator.truediv .*: div of two tensors has no archcalc merge"
    with pytest.raises(ArchcalcError, match=message):
        from_module(Ratio(), (3, 4, 4))


class TokenOps(nn.Module):
    """What timm's hybrids do around their attention: a gated MLP on tokens (ViTamin's GeGLU: act(g) * x), the
    tokens laid out on their grid again by a transpose and a reshape (FastViT), and a mean over the tokens (a ViT
    with global_pool='avg')."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.gate, self.value, self.out = nn.Linear(c, 2 * c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.out(F.gelu(self.gate(t)) * self.value(t))
        g = self.conv(t.transpose(-2, -1).reshape(b, c, h, w))
        return g.flatten(2).transpose(1, 2).mean(dim=1)


def test_gated_mlp_to_grid_and_token_mean_import_exact() -> None:
    text, _ = check(TokenOps(), (8, 5, 6))
    assert "  - mul: [gelu, value]" in text, text
    assert "to_grid: {size: [5, 6]" in text and "  - mean: {name: mean}" in text, text


class NotAGrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1).mean(dim=1)


def test_a_mean_over_tokens_with_a_class_token_is_refused() -> None:
    with pytest.raises(ArchcalcError, match=r"mean over 21 tokens that are not their grid \(4x5: a class token"):
        from_module(NotAGrid(), (8, 4, 5))


class ScaledTokens(nn.Module):
    """Parameters on tokens: a layer scale per channel (CaiT's, CAFormer's res_scale: x * gamma, gamma of C), and
    StarReLU's scale and bias of one value each (s * relu(x) ** 2 + b, CAFormer's MLP)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.s, self.b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        t = t + self.gamma * self.fc(t)
        return self.s * F.relu(t) ** 2 + self.b


def test_layer_scale_and_bias_on_tokens_import_exact() -> None:
    text, report = check(ScaledTokens(), (8, 3, 4), (8, 5, 2))
    assert "layer_scale: {name: layer_scale}" in text and "layer_scale: {per: tensor" in text, text
    assert "bias: {per: tensor" in text, text
    assert report.totals.params == 8 * 8 + 8 + 8 + 2


class TokenSlices(nn.Module):
    """PiT keeps its class tokens apart by slicing the sequence (x[:, :n]); a split of tokens along dim 1 is a split
    of the tokens, not of the channels."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        if self.how == "slice":
            return t[:, :2]
        if self.how == "cat":  # timm's ViTamin-XL: torch.cat of a list that holds the sequence alone
            return torch.cat([t], dim=1)
        return t.chunk(2, dim=1)[0]


def test_a_split_of_tokens_is_refused_not_read_as_channels() -> None:
    with pytest.raises(ArchcalcError, match=r"of a token sequence"):
        from_module(TokenSlices("chunk"), (8, 4, 4))


def test_a_slice_of_tokens_is_a_run_of_tokens_not_channels() -> None:
    """x[:, :2] of 16 tokens of 8 channels: 2 tokens of 8 (take_token with stop), not a slice of the channels."""
    imported = from_module(TokenSlices("slice"), (8, 4, 4))
    assert "take_token: {stop: 2" in imported.text, imported.text
    assert analyze(imported.spec).totals.output == (2, 8)


def test_a_cat_of_one_sequence_is_the_sequence() -> None:
    """torch.cat([t], dim=1) of 16 tokens: the same 16 tokens, no concat layer (one input is no concat)."""
    imported = from_module(TokenSlices("cat"), (8, 4, 4))
    assert "concat" not in imported.text, imported.text
    assert analyze(imported.spec).totals.output == (16, 8)
