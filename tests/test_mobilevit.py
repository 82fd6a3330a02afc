"""MobileViT (Mehta & Rastegari 2022): its unfolding of a grid into sequences of the tokens at one patch position,
attention within each sequence and the folding back, imported from plain-torch copies of timm's MobileVitBlock and
MobileVitV2Block (timm is not imported here) against torch's own figures (FlopCounterMode, the module's parameters):
v1 read as `to_tokens`, `window_attention` (a grid partition of the grid / the patch, no position bias) and
`to_grid`; v2's LinearSelfAttention as `separable_attention` on the grid, whose every product and sum is checked
here against the formula written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archcalc.core.errors import ArchcalcError
from archcalc.torch.importer import from_module
from tests.import_check import check
from tests.test_import_attention_pattern import Attention  # timm's Attention, written out


class Block(nn.Module):
    """timm's TransformerBlock: pre-norm attention and MLP (SiLU), each with a residual."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused=fused)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class MobileVitBlock(nn.Module):
    """timm's MobileVitBlock's forward (timm 1.0, mobilevit.py), written out; `variant` breaks the folding."""

    def __init__(self, chs: int = 8, dim: int = 12, heads: int = 3, patch: tuple[int, int] = (2, 2),
                 fused: bool = False, variant: str = "") -> None:
        super().__init__()
        self.patch_size, self.patch_area, self.variant = patch, patch[0] * patch[1], variant
        self.conv_kxk = nn.Conv2d(chs, chs, 3, padding=1)
        self.conv_1x1 = nn.Conv2d(chs, dim, 1, bias=False)
        self.transformer = nn.Sequential(Block(dim, heads, fused), Block(dim, heads, fused))
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = nn.Conv2d(dim, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_1x1(self.conv_kxk(x))
        patch_h, patch_w = self.patch_size
        B, C, H, W = x.shape
        num_patch_h, num_patch_w = math.ceil(H / patch_h), math.ceil(W / patch_w)
        num_patches = num_patch_h * num_patch_w
        x = x.reshape(B * C * num_patch_h, patch_h, num_patch_w, patch_w).transpose(1, 2)
        x = x.reshape(B, C, num_patches, self.patch_area).transpose(1, 3).reshape(B * self.patch_area, num_patches, -1)
        x = self.norm(self.transformer(x))
        x = x.contiguous().view(B, self.patch_area, num_patches, -1)
        x = x.transpose(1, 3).reshape(B * C * num_patch_h, num_patch_w, patch_h, patch_w)
        if self.variant != "unfolded_otherwise":
            x = x.transpose(1, 2)
        x = x.reshape(B, C, num_patch_h * patch_h, num_patch_w * patch_w)
        return self.conv_proj(x)


class Net(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = MobileVitBlock(**kw)  # type: ignore[arg-type]
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize(("patch", "shape"), [((2, 2), (3, 16, 12)), ((2, 2), (3, 8, 8)), ((2, 3), (3, 8, 12))])
def test_mobilevit_block_imports_exact(patch: tuple[int, int], shape: tuple[int, int, int]) -> None:
    text, report = check(Net(patch=patch), shape)
    h, w = shape[1] // 2, shape[2] // 2  # after the stem
    window = [h // patch[0], w // patch[1]]
    assert "to_tokens: {name: unfold}" in text, text
    assert f"to_grid: {{size: {[h, w]}, name: fold}}" in text, text
    rows = [r for r in report.rows if r.kind == "window_attention"]
    assert len(rows) == 2, text
    # each of the P = ph pw sequences of N / P tokens attends within itself: 4 N C^2 + P 2 (N / P)^2 C
    n, c, p = h * w, 12, patch[0] * patch[1]
    assert all((r.params, r.macs) == (4 * c * c + 4 * c, 4 * n * c * c + p * 2 * (n // p) ** 2 * c) for r in rows)
    assert f"window_attention: {{num_heads: 3, window_size: {window}, partition: grid, position_bias: none, " \
        in text, text


def test_fused_attention_imports_as_the_same_spec() -> None:
    """timm's fused path (scaled_dot_product_attention, which FlopCounterMode counts 0 on the CPU) reads as the
    same spec as the products written out."""
    torch.manual_seed(0)
    fused, explicit = Net(fused=True), Net()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x))
    assert from_module(fused, (3, 16, 12)).text == from_module(explicit, (3, 16, 12)).text


def test_attention_over_all_tokens_is_not_what_mobilevit_counts() -> None:
    """The MACs of the products are a P-th of attention over all the tokens (the test above would pass for
    self_attention's count too if P were 1: here P = 4 and the two differ)."""
    _, report = check(Net(), (3, 16, 12))
    n, c = 48, 12
    row = next(r for r in report.rows if r.kind == "window_attention")
    assert row.macs != 4 * n * c * c + 2 * n * n * c


def test_another_folding_is_refused() -> None:
    with pytest.raises(ArchcalcError, match="mobilevit|reshape|transpose|token"):
        from_module(Net(variant="unfolded_otherwise"), (3, 16, 12))


class LinearSelfAttention(nn.Module):
    """timm's LinearSelfAttention._forward_self_attn (timm 1.0), written out; `variant` breaks it in one place."""

    def __init__(self, dim: int, variant: str = "") -> None:
        super().__init__()
        self.embed_dim, self.variant = dim, variant
        self.qkv_proj = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.attn_drop = nn.Dropout(0.0)
        self.out_proj = nn.Conv2d(dim, dim, 1)
        self.out_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        query, key, value = qkv.split([1, self.embed_dim, self.embed_dim], dim=1)
        scores = F.softmax(query, dim=-1 if self.variant != "softmax_over_patch" else -2)
        scores = self.attn_drop(scores)
        context = (key * scores).sum(dim=-1, keepdim=True)
        out = F.relu(value) * context.expand_as(value)
        return self.out_drop(self.out_proj(out))


class GroupNorm1(nn.GroupNorm):
    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)


class LinearBlock(nn.Module):
    def __init__(self, dim: int, variant: str) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.attn = LinearSelfAttention(dim, variant)
        self.norm2 = GroupNorm1(dim)
        self.fc1 = nn.Conv2d(dim, 2 * dim, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class MobileVitV2Block(nn.Module):
    """timm's MobileVitV2Block's forward (timm 1.0, not CoreML-exportable), written out."""

    def __init__(self, chs: int = 8, dim: int = 12, patch: tuple[int, int] = (2, 2), variant: str = "") -> None:
        super().__init__()
        self.patch_size = patch
        self.conv_kxk = nn.Conv2d(chs, chs, 3, padding=1, groups=chs)
        self.conv_1x1 = nn.Conv2d(chs, dim, 1, bias=False)
        self.transformer = nn.Sequential(LinearBlock(dim, variant), LinearBlock(dim, variant))
        self.norm = GroupNorm1(dim)
        self.conv_proj = nn.Conv2d(dim, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        patch_h, patch_w = self.patch_size
        num_patch_h, num_patch_w = math.ceil(H / patch_h), math.ceil(W / patch_w)
        num_patches = num_patch_h * num_patch_w
        x = self.conv_1x1(self.conv_kxk(x))
        C = x.shape[1]
        x = x.reshape(B, C, num_patch_h, patch_h, num_patch_w, patch_w).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(B, C, -1, num_patches)
        x = self.norm(self.transformer(x))
        x = x.reshape(B, C, patch_h, patch_w, num_patch_h, num_patch_w).permute(0, 1, 4, 2, 5, 3)
        x = x.reshape(B, C, num_patch_h * patch_h, num_patch_w * patch_w)
        return self.conv_proj(x)


class NetV2(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = MobileVitV2Block(**kw)  # type: ignore[arg-type]
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize(("patch", "shape"), [((2, 2), (3, 16, 12)), ((2, 3), (3, 8, 12))])
def test_mobilevit_v2_block_imports_exact(patch: tuple[int, int], shape: tuple[int, int, int]) -> None:
    text, report = check(NetV2(patch=patch), shape)
    assert f"separable_attention: {{patch: {list(patch)}, name: attn}}" in text, text
    assert "to_tokens" not in text and "to_grid" not in text, text  # (the unfolding is a permutation of the grid)
    rows = [r for r in report.rows if r.kind == "separable_attention"]
    h, w, c = shape[1] // 2, shape[2] // 2, 12
    # the two 1 x 1 convs: C -> 1 + 2C and C -> C, with biases; nothing else has a weight or is counted
    assert len(rows) == 2 and all((r.params, r.macs) == (c * (1 + 2 * c) + 1 + 2 * c + c * c + c,
                                                         h * w * (c * (1 + 2 * c) + c * c)) for r in rows)


def _separable(x: torch.Tensor, m: LinearSelfAttention, patch: tuple[int, int]) -> torch.Tensor:
    """The separable attention on a grid, written out from the paper: per patch position (i mod ph, j mod pw) the
    softmax of its tokens' scores, the context sum(k x scores) over them, ReLU(v) x context, the output conv."""
    c = m.embed_dim
    qkv = m.qkv_proj(x)
    q, k, v = qkv[:, :1], qkv[:, 1:1 + c], qkv[:, 1 + c:]
    out = torch.empty_like(v)
    ph, pw = patch
    for a in range(ph):
        for b in range(pw):
            scores = q[:, :, a::ph, b::pw].flatten(2).softmax(-1)
            context = (k[:, :, a::ph, b::pw].flatten(2) * scores).sum(-1)
            out[:, :, a::ph, b::pw] = F.relu(v[:, :, a::ph, b::pw]) * context[:, :, None, None]
    return m.out_proj(out)


@pytest.mark.parametrize("patch", [(2, 2), (3, 2), (1, 1)])
def test_separable_attention_module_computes_the_papers_attention(patch: tuple[int, int]) -> None:
    """archcalc's module (what `validate` runs) on the grid equals the attention written out per patch position,
    and the unfolded timm form."""
    from archcalc.torch.modules import SeparableAttention

    torch.manual_seed(0)
    ours, theirs = SeparableAttention(6, patch), LinearSelfAttention(6)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 6, 4)
    ph, pw = patch
    unfolded = x.reshape(2, 6, 6 // ph, ph, 4 // pw, pw).permute(0, 1, 3, 5, 2, 4).reshape(2, 6, ph * pw, -1)
    with torch.no_grad():
        folded = theirs(unfolded).reshape(2, 6, ph, pw, 6 // ph, 4 // pw).permute(0, 1, 4, 2, 5, 3).reshape(x.shape)
        torch.testing.assert_close(ours(x), _separable(x, theirs, patch))
        torch.testing.assert_close(ours(x), folded)


def test_a_softmax_over_another_axis_is_not_read_as_separable_attention() -> None:
    with pytest.raises(ArchcalcError):
        from_module(NetV2(variant="softmax_over_patch"), (3, 16, 12))


# ---- the bundled MobileViT-S ----------------------------------------------------------------------------------


def test_bundled_mobilevit_s_is_timms_measured_model() -> None:
    """specs/mobilevit_s.yaml against timm's mobilevit_s as measured (tests/data/timm_hybrid_measured.json: params,
    buffers, FlopCounterMode's MACs on the meta device, fvcore's count on the CPU plus the attention products it
    counts as 0, the output), and the paper's Table 4 (5.6 M parameters)."""
    import json
    from pathlib import Path

    from archcalc.core.analyze import analyze
    from archcalc.core.resolve import bundled
    from archcalc.core.spec import load_spec

    data = Path(__file__).resolve().parent / "data" / "timm_hybrid_measured.json"
    measured = json.loads(data.read_text(encoding="utf-8"))["models"]["mobilevit_s"]
    spec = load_spec(bundled()["mobilevit_s"])
    report = analyze(spec)
    assert list(report.input) == measured["input_shape"][1:]
    assert report.totals.params == measured["params"] == 5_578_632
    assert report.totals.buffers == measured["float_buffers"] + measured["int_buffers"]
    assert report.totals.macs == measured["macs"]
    assert list(report.totals.output) == measured["output_shape"][1:]
    fvcore = analyze(spec, convention="fvcore").totals.flops
    assert fvcore == measured["fvcore"] + measured["sdpa_macs"]  # (fvcore counts scaled_dot_product_attention 0)
    assert measured["fvcore_unsupported"]["aten::scaled_dot_product_attention"] == measured["sdpa_calls"]
    assert round(report.totals.params / 1e6, 1) == 5.6  # Table 4
    # the nine transformer layers: 2 at 32 x 32 (d 144), 4 at 16 x 16 (d 192), 3 at 8 x 8 (d 240), each attending
    # within the 4 patch positions' N = HW / 4 tokens: 4 N d^2 + 4 x 2 (N / 4)^2 d MACs
    attention = sorted(r.macs for r in report.rows if r.kind == "window_attention")
    expected = sorted(4 * n * d * d + 4 * 2 * (n // 4) ** 2 * d for n, d, depth in
                      ((1024, 144, 2), (256, 192, 4), (64, 240, 3)) for _ in range(depth))
    assert attention == expected
