"""SHViT's single-head attention on part of the channels (Yun & Ro 2024, "SHViT: Single-Head Vision Transformer with
Memory Efficient Macro Design", section 4; timm's shvit.py SHSA): the first p channels normalised, projected by a
1 x 1 conv and a batch norm to q, k (kd each) and v (p), one head, softmax(Q^T K / sqrt(kd)), V A^T; the result
concatenated with the channels passed by and projected after an activation. archcalc writes it as
`self_attention: {proj: false}` (no output projection) between `channel_slice`, `concat` and the 1 x 1 conv.
Counts against formulas written here and against FlopCounterMode on modules written here from plain torch (timm is
never imported)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_text
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from tests.import_check import check


class SingleHead(nn.Module):
    """SHSA (timm 1.0.31, shvit.py), written out: split the channels, a group norm of one group on the first p,
    qkv as a 1 x 1 conv and a batch norm, split on the channels and flattened, (Q^T K) * kd^-0.5, softmax, V A^T
    shaped back to the grid, concatenated with the rest, ReLU, a 1 x 1 conv and a batch norm. `variant` breaks it
    in one place."""

    def __init__(self, dim: int, kd: int, p: int, variant: str = "") -> None:
        super().__init__()
        self.dim, self.kd, self.p, self.variant = dim, kd, p, variant
        self.pre_norm = nn.GroupNorm(1, p)
        self.qkv = nn.Sequential(nn.Conv2d(p, 2 * kd + p, 1, bias=False), nn.BatchNorm2d(2 * kd + p))
        self.proj = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x1, x2 = torch.split(x, [self.p, self.dim - self.p], dim=1)
        q, k, v = torch.split(self.qkv(self.pre_norm(x1)), [self.kd, self.kd, self.p], dim=1)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
        scale = self.kd ** -0.5 if self.variant != "scale" else 0.5 * self.kd ** -0.5
        attn = ((q.transpose(-2, -1) @ k) * scale).softmax(dim=-1)
        if self.variant == "leak":  # the weights read outside the attention
            x2 = x2 + attn.mean()
        x1 = (v @ attn.transpose(-2, -1)).reshape(b, self.p, h, w)
        return self.proj(torch.cat([x1, x2], dim=1))


class Net(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mixer = SingleHead(16, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.mixer(x)
        return self.head(x.mean(dim=(2, 3)))


def test_counts_are_the_written_out_formula_and_flop_counter_s() -> None:
    """N = 3 x 4 tokens of C = 6, one head of kd = 4 and vd = 6, no output projection: params C(2kd + vd) and a
    batch norm per projected channel (2 params, 2 statistics and one counter per norm); MACs N C (2kd + vd) + N^2
    (kd + vd), what FlopCounterMode counts on the SHSA core written here (2 per MAC)."""
    n, c, kd, vd = 12, 6, 4, 6
    text = ("name: a\ninput: [6, 3, 4]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 1, key_dim: 4, value_dim: 6, bias: false, norm: batchnorm, "
            "proj: false}\n")
    report = analyze(load_text(text))
    t = report.totals
    assert report.rows[-1].output == (n, vd)
    assert t.params == c * (2 * kd + vd) + 2 * (2 * kd + vd)
    assert t.buffers == 2 * (2 * kd + vd) + 1
    assert t.macs == n * c * (2 * kd + vd) + n * n * (kd + vd)
    qkv = nn.Sequential(nn.Conv2d(c, 2 * kd + vd, 1, bias=False), nn.BatchNorm2d(2 * kd + vd)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        q, k, v = (p.flatten(2) for p in torch.split(qkv(torch.randn(1, c, 3, 4)), [kd, kd, vd], dim=1))
        v @ ((q.transpose(-2, -1) @ k) * kd ** -0.5).softmax(dim=-1).transpose(-2, -1)
    assert counter.get_total_flops() == 2 * t.macs


def test_several_heads_without_a_projection() -> None:
    """h = 2 heads of kd = 3, vd = 5 on C = 8: the output is the joined heads (h vd = 10 channels)."""
    text = ("name: a\ninput: [8, 3, 3]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 2, key_dim: 3, value_dim: 5, proj: false}\n")
    report = analyze(load_text(text))
    n, c, k, v = 9, 8, 6, 10
    assert report.rows[-1].output == (n, v)
    assert report.totals.params == c * (2 * k + v) + 2 * k + v
    assert report.totals.macs == n * c * (2 * k + v) + n * n * (k + v)


@pytest.mark.parametrize("extra", ["act: hardswish", "out_features: 4"])
def test_what_it_refuses_is_a_located_error(extra: str) -> None:
    text = ("name: a\ninput: [8, 3, 4]\nlayers:\n  - to_tokens\n"
            f"  - self_attention: {{num_heads: 2, proj: false, {extra}}}\n")
    with pytest.raises(ArchcalcError, match=r":5:5: .*without its output projection"):
        analyze(load_text(text))


def test_shvit_attention_imports_exact() -> None:
    """SHSA imports as channel slices, a group norm, to_tokens, self_attention without its projection, to_grid,
    concat and the projection's ReLU, conv and batch norm: params, buffers, output and FlopCounterMode's FLOPs the
    module's, at its input and another."""
    text, report = check(Net(kd=3, p=4), (3, 12, 16), (3, 16, 20))
    assert ("self_attention: {num_heads: 1, bias: false, proj: false, key_dim: 3, value_dim: 4, norm: batchnorm, "
            "name: mixer_1}") in text, text
    assert "to_grid: {name: mixer_grid}" in text and "channel_slice: {start: 4, stop: 16" in text, text
    assert "matmul" not in text and "softmax" not in text


@pytest.mark.parametrize("variant", ["scale", "leak"])
def test_another_computation_is_not_read_as_it(variant: str) -> None:
    """Another scale or the weights read outside: not this attention (imported op by op, or refused)."""
    try:
        text, _ = check(Net(kd=3, p=4, variant=variant), (3, 12, 16))
    except ArchcalcError:
        return
    assert "self_attention" not in text, text
