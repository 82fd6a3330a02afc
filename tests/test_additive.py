"""SwiftFormer's efficient additive attention (`additive_attention`; Shaker et al. 2023, "SwiftFormer: Efficient
Additive Attention for Transformer-based Real-time Mobile Vision Applications", sec. 3.2).

The modules here are written in the test as timm writes them (timm/models/swiftformer.py's
EfficientAdditiveAttention and Block), from plain torch: timm is never imported. The expected figures are PyTorch's
own (parameter counts, FlopCounterMode, the module's outputs), fvcore's and the paper's cost rule written out, never
archcalc's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import archcalc
from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError


class AdditiveAttn(nn.Module):
    """timm's EfficientAdditiveAttention (num_heads 1, token_dim = dim): grid in, grid out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = dim ** -0.5
        self.to_query = nn.Linear(dim, dim)
        self.to_key = nn.Linear(dim, dim)
        self.w_g = nn.Parameter(torch.randn(dim, 1))
        self.proj = nn.Linear(dim, dim)
        self.final = nn.Linear(dim, dim)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return F.normalize(query @ self.w_g * self.scale_factor, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.flatten(2).permute(0, 2, 1)
        query = F.normalize(self.to_query(x), dim=-1)
        key = F.normalize(self.to_key(x), dim=-1)
        attn = torch.sum(self.scores(query) * query, dim=1, keepdim=True)
        out = self.proj(attn * key) + query
        return self.final(out).permute(0, 2, 1).reshape(b, -1, h, w)


class Softmaxed(AdditiveAttn):
    """The same block with a softmax over the tokens in place of the scores' L2 normalisation: another computation
    (archcalc must not read it as additive_attention)."""

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return (query @ self.w_g * self.scale_factor).softmax(dim=1)


class TinySwift(nn.Module):
    """A SwiftFormer-like net: a conv stem, timm's Block (a local representation: depthwise conv, batch norm, 1 x 1
    convs and a layer scale; the attention with its layer scale; a conv MLP with its layer scale), a head."""

    def __init__(self, attn: type[AdditiveAttn] = AdditiveAttn, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1, self.pwconv2 = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.gamma_local = nn.Parameter(torch.ones(dim, 1, 1))
        self.attn = attn(dim)
        self.gamma_attn = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.mlp = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, 4 * dim, 1), nn.GELU(),
                                 nn.Conv2d(4 * dim, dim, 1))
        self.gamma_mlp = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.gamma_local * self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        x = x + self.gamma_attn * self.attn(x)
        x = x + self.gamma_mlp * self.mlp(x)
        return self.head(x.mean((2, 3)))


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(*shape))
    return counter.get_total_flops() // 2


def _kinds(imported: Any) -> list[str]:
    return [r.kind for r in analyze(imported.spec).rows]


def test_costs_are_the_papers_rule_and_what_torch_counts() -> None:
    """Shaker et al., sec. 3.2: four C x C linear maps per token and one C-vector product per token (the scores),
    4NC^2 + NC MACs; parameters the four linears' and w_g's, 4C^2 + 5C."""
    c, h, w = 12, 5, 7
    n = h * w
    m = AdditiveAttn(c).eval()
    imported = archcalc.from_module(m, (c, h, w))
    assert _kinds(imported) == ["to_tokens", "additive_attention", "to_grid"]
    totals = analyze(imported.spec).totals
    assert totals.params == sum(p.numel() for p in m.parameters()) == 4 * c * c + 5 * c
    assert totals.macs == _macs(m, (1, c, h, w)) == 4 * n * c * c + n * c


@pytest.mark.parametrize("batch", [2, 3])
def test_tiny_swiftformer_validates_exact(batch: int) -> None:
    """`archcalc validate` of the module itself: output shape, params, buffers, MACs (FlopCounterMode), fvcore's
    FLOPs and the bytes autograd saves all equal archcalc's figures for the imported spec."""
    from archcalc.torch.validate_model import validate_model

    torch.manual_seed(0)
    result = validate_model(TinySwift(), (3, 16, 16), "tiny_swift", batch=batch)
    failed = [(c.quantity, c.predicted, c.measured) for c in result.checks if not c.ok]
    assert not failed
    assert {c.quantity for c in result.checks} >= {"macs", "fvcore_flops", "params", "saved_bytes"}


def test_at_batch_one_the_projections_read_the_tokens_in_place() -> None:
    """At batch 1 the tokens' transposed view folds into a matrix without a copy, so q's and k's projections keep
    the grid itself (one N x C storage) where from two images on each keeps its own contiguous copy (two): archcalc
    models the larger batches, one N x C (8 x 8 x 16 floats) above the measure at batch 1, and agrees on the rest."""
    from archcalc.torch.validate_model import validate_model

    torch.manual_seed(0)
    checks = {c.quantity: c for c in validate_model(TinySwift(), (3, 16, 16), "tiny_swift", batch=1).checks}
    assert all(c.ok for q, c in checks.items() if q != "saved_bytes")
    assert checks["saved_bytes"].predicted - checks["saved_bytes"].measured == 8 * 8 * 16 * 4


def test_built_module_computes_what_timms_does() -> None:
    """archcalc's module for the kind, given the written-out block's weights, gives its output."""
    from archcalc.torch.modules import AdditiveAttention

    torch.manual_seed(0)
    timm_like = AdditiveAttn(8)
    built = AdditiveAttention(8)
    built.load_state_dict(timm_like.state_dict())
    x = torch.randn(2, 8, 3, 5)
    expected = timm_like(x)
    got = built(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 8, 3, 5)
    torch.testing.assert_close(got, expected)


def test_another_normalisation_of_the_scores_is_not_read_as_it() -> None:
    """A softmax over the tokens in place of the L2 normalisation is not SwiftFormer's attention: archcalc does not
    read it as additive_attention (it refuses the block, naming the op it cannot read)."""
    with pytest.raises(ArchcalcError) as info:
        archcalc.from_module(Softmaxed(8).eval(), (8, 4, 4))
    assert "normalize" in str(info.value)


def test_receptive_field_is_every_token() -> None:
    """Back-propagating from one output token reaches every input token (the global query sums over all)."""
    torch.manual_seed(0)
    m = AdditiveAttn(8)
    x = torch.randn(1, 8, 5, 6, requires_grad=True)
    m(x)[0, :, 0, 0].sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(1) > 0).all())
    report = analyze(archcalc.from_module(m.eval(), (8, 5, 6)).spec)
    assert report.totals.rf == (5, 6)
