"""Attention with q/k of key_dim channels per head, v of value_dim, and a learned bias on the scores per head and
relative offset on the tokens' grid (Graham et al. 2021, "LeViT", section 4.2; Li et al. 2022, "EfficientFormer"):
self_attention's `key_dim`, `value_dim` and `score_bias`. Its counts against formulas written here and against
FlopCounterMode on modules written here from plain torch (timm is never imported), and the import of
EfficientFormer's attention (timm/models/efficientformer.py's forward, written out) as one self_attention."""

from __future__ import annotations

import pytest
import torch
from conftest import load_text
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.torch.importer import from_module
from tests.import_check import check


def offsets(h: int, w: int) -> torch.Tensor:
    """LeViT's index: |dy| x W + |dx| between every two tokens of an H x W grid, row-major."""
    pos = [(i // w, i % w) for i in range(h * w)]
    return torch.tensor([[abs(a[0] - b[0]) * w + abs(a[1] - b[1]) for b in pos] for a in pos])


class BiasedAttention(nn.Module):
    """EfficientFormer's Attention (timm 1.0.31, efficientformer.py), written out: a qkv Linear laid out per head,
    q and k of kd channels, v of vd, (q @ k^T) * kd^-0.5 + table[:, index], softmax, @ v, the heads joined and
    projected. `variant` breaks it in one place."""

    def __init__(self, dim: int, kd: int, heads: int, vd: int, grid: tuple[int, int], variant: str = "",
                 scale_first: bool = False) -> None:
        super().__init__()
        self.heads, self.kd, self.vd, self.variant, self.scale_first = heads, kd, vd, variant, scale_first
        self.qkv = nn.Linear(dim, heads * (2 * kd + vd))
        self.proj = nn.Linear(heads * vd, dim)
        n = grid[0] * grid[1]
        if variant != "no_bias":
            self.attention_biases = nn.Parameter(torch.randn(heads, n + (1 if variant == "table" else 0)))
            index = offsets(*grid)
            if variant == "index":  # a signed offset (Swin's kind of table), not LeViT's |offset|
                index = (torch.arange(n)[:, None] - torch.arange(n)[None, :]) % n
            self.register_buffer("attention_bias_idxs", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, self.heads, -1).permute(0, 2, 1, 3).split(
            [self.kd, self.kd, self.vd], dim=3)
        if self.scale_first:
            attn = (q * self.kd ** -0.5) @ k.transpose(-2, -1)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.kd ** -0.5
        if self.variant != "no_bias":
            attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.vd))


class Former(nn.Module):
    """A patch embedding, tokens, a pre-norm biased attention and an MLP with residuals, the mean token's head."""

    def __init__(self, dim: int = 16, **kw: object) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.attn = BiasedAttention(dim, **kw)  # type: ignore[arg-type]
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm(x))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(dim=1))


def _counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}


# ---- the kind ------------------------------------------------------------------------------------------------------


def test_counts_are_the_written_out_formula_and_flop_counter_s() -> None:
    """N = 3 x 4 tokens of C = 16, h = 2 heads of kd = 4, vd = 12: qkv C x h(2kd + vd) (+ bias), proj h vd x C
    (+ bias), the table h x N and the index N x N; MACs N C h(2kd + vd) + N^2 h kd + N^2 h vd + N h vd C, which is
    what FlopCounterMode counts on the module written here (2 per MAC; 0 for the gather and the add)."""
    n, c, h, kd, vd = 12, 16, 2, 4, 12
    text = ("name: a\ninput: [16, 3, 4]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 2, key_dim: 4, value_dim: 12, score_bias: true}\n")
    t = analyze(load_text(text)).totals
    assert t.params == c * h * (2 * kd + vd) + h * (2 * kd + vd) + h * vd * c + c + h * n
    assert t.buffers == n * n
    macs = n * c * h * (2 * kd + vd) + n * n * h * kd + n * n * h * vd + n * h * vd * c
    assert t.macs == macs
    module = BiasedAttention(c, kd, h, vd, (3, 4))
    by_op = _counts(module, torch.randn(1, n, c))
    assert sum(by_op.values()) == 2 * macs
    assert set(by_op) == {"aten.addmm", "aten.bmm"}  # the gather (aten.index) and the add: no formula, 0
    assert sum(p.numel() for p in module.parameters()) == t.params


def test_levit_downsampling_attention_counts() -> None:
    """stride 2 on a 5 x 7 grid (Nq = 3 x 4 = 12 queries of N = 35 tokens), C = 8, h = 2, kd = 3, vd = 6 (K = 6,
    V = 12), out 16, LinearNorm projections: the counts written out."""
    text = ("name: a\ninput: [8, 5, 7]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 2, key_dim: 3, value_dim: 6, score_bias: true, bias: false, "
            "norm: batchnorm, act: hardswish, stride: 2, out: 16}\n")
    report = analyze(load_text(text))
    n, nq, c, k, v, d, h = 35, 12, 8, 6, 12, 16, 2
    assert report.rows[-1].output == (nq, d) and report.graph.tensors[report.graph.outputs[0][1]].shape.grid == (3, 4)
    t = report.totals
    assert t.macs == n * c * (k + v) + nq * c * k + nq * n * (k + v) + nq * v * d
    assert t.params == c * (2 * k + v) + v * d + 2 * (2 * k + v + d) + h * n
    assert t.buffers == 2 * (2 * k + v + d) + 3 + nq * n  # the norms' statistics and counters, the index


def test_without_score_bias_only_the_dims_change() -> None:
    text = ("name: a\ninput: [6, 3, 3]\nlayers:\n  - to_tokens\n"
            "  - self_attention: {num_heads: 3, key_dim: 2, value_dim: 4, bias: false}\n")
    t = analyze(load_text(text)).totals
    n, c = 9, 6
    assert (t.params, t.buffers) == (c * 3 * (2 * 2 + 4) + 3 * 4 * c, 0)
    assert t.macs == n * c * 24 + n * n * 6 + n * n * 12 + n * 12 * c


@pytest.mark.parametrize(("layer", "message"), [
    ("self_attention: {num_heads: 2, score_bias: true}",
     "score_bias or stride needs tokens laid out on a 2-D grid"),
    ("self_attention: {num_heads: 2, key_dim: 4, kernel: fused}", "use kernel: math"),
    ("self_attention: {num_heads: 2, stride: 2}", "score_bias or stride needs tokens laid out on a 2-D grid"),
    ("self_attention: {num_heads: 2, norm: batchnorm}", "without bias: add bias: false"),
])
def test_what_it_refuses_is_a_located_error(layer: str, message: str) -> None:
    text = f"name: a\ninput: [8, 3, 4]\nlayers:\n  - to_tokens\n  - class_token\n  - {layer}\n"
    with pytest.raises(ArchcalcError, match=r":6:5: .*" + message):
        analyze(load_text(text))


# ---- the import ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_first", [False, True])
def test_efficientformer_attention_imports_as_one_self_attention(scale_first: bool) -> None:
    """The scale after Q K^T (EfficientFormer) or on q: one self_attention with key_dim, value_dim and score_bias,
    its params, buffers, output and FlopCounterMode's FLOPs the module's."""
    model = Former(kd=4, heads=2, vd=12, grid=(3, 4), scale_first=scale_first)
    text, report = check(model, (3, 12, 16))
    assert "self_attention: {num_heads: 2, key_dim: 4, value_dim: 12, score_bias: true, name: attn}" in text, text
    assert "matmul" not in text and "softmax" not in text
    assert report.totals.buffers == 12 * 12


def test_efficientformer_attention_without_bias_imports_with_dims_only() -> None:
    text, _ = check(Former(kd=4, heads=2, vd=8, grid=(3, 4), variant="no_bias"), (3, 12, 16))
    assert "self_attention: {num_heads: 2, key_dim: 4, value_dim: 8, name: attn}" in text, text


def test_the_plain_layout_per_head_imports_without_dims() -> None:
    """kd = vd = C / h laid out per head: self_attention's defaults, only score_bias."""
    text, _ = check(Former(kd=8, heads=2, vd=8, grid=(3, 4)), (3, 12, 16))
    assert "self_attention: {num_heads: 2, score_bias: true, name: attn}" in text, text


@pytest.mark.parametrize("variant", ["index", "table"])
def test_another_bias_is_not_read_as_score_bias(variant: str) -> None:
    """An index that is not |dy| W + |dx| (checked where the buffers hold values), a table of another size: not
    self_attention's score bias; the op-by-op import refuses the block."""
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(Former(kd=4, heads=2, vd=12, grid=(3, 4), variant=variant), (3, 12, 16))


def test_the_index_is_not_checked_on_the_meta_device() -> None:
    """On the meta device (archcalc's load_model builds timm's models there) the index has no values: its shape
    is checked, and the import is the same as with real buffers."""
    real = from_module(Former(kd=4, heads=2, vd=12, grid=(3, 4)), (3, 12, 16)).text
    meta = from_module(Former(kd=4, heads=2, vd=12, grid=(3, 4)).to("meta"), (3, 12, 16)).text
    assert real == meta


# ---- batch norm over tokens (LeViT's LinearNorm) -------------------------------------------------------------------


class LinearNorm(nn.Module):
    """LeViT's LinearNorm (timm 1.0.31, levit.py), written out: a Linear without bias, then BatchNorm1d over the
    batch and the tokens flattened into one axis, shaped back. `how` picks the flatten and the shaping back."""

    def __init__(self, c: int, out: int, how: str = "flatten") -> None:
        super().__init__()
        self.linear, self.bn, self.how = nn.Linear(c, out, bias=False), nn.BatchNorm1d(out), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.how == "flatten":
            return self.bn(x.flatten(0, 1)).reshape_as(x)
        if self.how == "reshape":
            return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        # "other": the batch and token axes shaped back swapped (not the tokens' order from batch 2 on)
        return self.bn(x.flatten(0, 1)).reshape(x.shape[1], x.shape[0], -1).transpose(0, 1)


class LevitMlp(nn.Module):
    def __init__(self, how: str = "flatten") -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.ln1, self.ln2 = LinearNorm(8, 16, how), LinearNorm(16, 8, how)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        return (x + self.ln2(nn.functional.hardswish(self.ln1(x)))).mean(dim=1)


@pytest.mark.parametrize("how", ["flatten", "reshape"])
def test_linear_norm_imports_as_linear_and_batchnorm_on_tokens(how: str) -> None:
    """BatchNorm1d over x.flatten(0, 1) shaped back: `batchnorm` on the tokens (2C params, 2C + 1 buffers each),
    exact on params, buffers, output and FlopCounterMode's count (batch norm: 0)."""
    text, report = check(LevitMlp(how), (3, 12, 16))
    assert text.count("batchnorm: {name: bn}") == 2, text
    assert report.totals.buffers == (2 * 16 + 1) + (2 * 8 + 1)


def test_batchnorm_on_tokens_normalizes_each_channel_over_batch_and_tokens() -> None:
    """The built module against BatchNorm1d over (B, C, N) in training mode: the same statistics (per channel)."""
    from archcalc.torch.modules import TokenBatchNorm

    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    built, plain = TokenBatchNorm(4).train(), nn.BatchNorm1d(4).train()
    torch.testing.assert_close(built(x), plain(x.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(built.bn.running_var, plain.running_var)
    text = "name: a\ninput: [8, 3, 4]\nlayers:\n  - to_tokens\n  - batchnorm\n"
    t = analyze(load_text(text)).totals
    assert (t.params, t.buffers) == (2 * 8, 2 * 8 + 1)


def test_a_flatten_of_tokens_not_shaped_back_is_refused() -> None:
    with pytest.raises(ArchcalcError, match=r"cannot import .* at ln1"):
        from_module(LevitMlp("other"), (3, 12, 16))


# ---- LeViT's attention (token and conv forms) ---------------------------------------------------------------------


def _index(grid: tuple[int, int], stride: int) -> torch.Tensor:
    """|dy| W + |dx| from each query at (s y, s x) to each token of the H x W grid (LeViT's attention_bias_idxs)."""
    h, w = grid
    keys = [(i // w, i % w) for i in range(h * w)]
    queries = [(y, x) for y in range(0, h, stride) for x in range(0, w, stride)]
    return torch.tensor([[abs(q[0] - k[0]) * w + abs(q[1] - k[1]) for k in keys] for q in queries])


class ConvNorm(nn.Sequential):
    def __init__(self, c: int, out: int) -> None:
        super().__init__(nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))


class LevitAttention(nn.Module):
    """LeViT's Attention and AttentionSubsample (timm 1.0.31, levit.py), written out: LinearNorm (token form) or
    ConvNorm (conv form) projections, q/k/v laid out per head, (q @ k^T) * kd^-0.5 + table[:, index], softmax,
    @ v, the activation and the output projection; with a stride the queries from the grid subsampled (the token
    form slices the grid view, the conv form an AvgPool2d(1, stride))."""

    def __init__(self, c: int, out: int, kd: int, heads: int, vd: int, grid: tuple[int, int], stride: int = 1,
                 conv: bool = False, act: type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.kd, self.heads, self.vd, self.grid, self.stride, self.conv = kd, heads, vd, grid, stride, conv
        proj = (lambda i, o: ConvNorm(i, o)) if conv else (lambda i, o: LinearNorm(i, o))
        if stride > 1:
            self.kv = proj(c, heads * (kd + vd))
            self.q = proj(c, heads * kd)
            self.pool = nn.AvgPool2d(1, stride) if conv else None
        else:
            self.qkv = proj(c, heads * (2 * kd + vd))
        self.act = act()
        self.proj = proj(heads * vd, out)
        self.attention_biases = nn.Parameter(torch.randn(heads, grid[0] * grid[1]))
        self.register_buffer("attention_bias_idxs", _index(grid, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, kd, vd, s = self.heads, self.kd, self.vd, self.stride
        bias = self.attention_biases[:, self.attention_bias_idxs]
        if self.conv:
            b, c, gh, gw = x.shape
            if s > 1:
                k, v = self.kv(x).view(b, h, -1, gh * gw).split([kd, vd], dim=2)
                q = self.q(self.pool(x)).view(b, h, kd, -1)  # type: ignore[misc]
            else:
                q, k, v = self.qkv(x).view(b, h, -1, gh * gw).split([kd, kd, vd], dim=2)
            attn = ((q.transpose(-2, -1) @ k) * kd ** -0.5 + bias).softmax(dim=-1)
            return self.proj(self.act((v @ attn.transpose(-2, -1)).view(b, -1, -(-gh // s), -(-gw // s))))
        b, n, c = x.shape
        if s > 1:
            k, v = self.kv(x).view(b, n, h, -1).split([kd, vd], dim=3)
            sub = x.view(b, *self.grid, c)[:, ::s, ::s].reshape(b, -1, c)
            q = self.q(sub).view(b, -1, h, kd).permute(0, 2, 1, 3)
        else:
            q, k, v = self.qkv(x).view(b, n, h, -1).split([kd, kd, vd], dim=3)
            q = q.permute(0, 2, 1, 3)
        attn = (q @ k.permute(0, 2, 3, 1) * kd ** -0.5 + bias).softmax(dim=-1)
        return self.proj(self.act((attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(b, -1, h * vd)))


class Levit(nn.Module):
    """A patch embedding, LeViT's attention block, its downsampling attention (16 -> 24 channels, a 3 x 4 grid
    from 6 x 7), an MLP of LinearNorms (token form) or ConvNorms, the mean's head."""

    def __init__(self, conv: bool = False, act: type[nn.Module] = nn.Hardswish, stride: int = 2) -> None:
        super().__init__()
        self.conv = conv
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = LevitAttention(16, 16, 4, 2, 8, (6, 7), conv=conv, act=act)
        self.down = LevitAttention(16, 24, 4, 4, 16, (6, 7), stride=stride, conv=conv, act=act)
        proj = ConvNorm if conv else LinearNorm
        self.fc1, self.fc2 = proj(24, 48), proj(48, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        if not self.conv:
            x = x.flatten(2).transpose(1, 2)
        x = x + self.attn(x)
        x = self.down(x)
        x = x + self.fc2(nn.functional.hardswish(self.fc1(x)))
        return self.head(x.mean(dim=(2, 3)) if self.conv else x.mean(dim=1))


@pytest.mark.parametrize("conv", [False, True])
def test_levit_attention_imports_exact(conv: bool) -> None:
    """The token form (levit_*) and the conv form (levit_conv_*: to_tokens, self_attention, to_grid around each
    attention) of both attentions: norm, act, stride and out read, the counts the module's (FlopCounterMode's FLOPs,
    params, buffers: the table, the index and the batch norms' statistics)."""
    text, report = check(Levit(conv), (3, 24, 28))
    block = "self_attention: {num_heads: 2, bias: false, key_dim: 4, value_dim: 8, score_bias: true, norm: batchnorm"
    assert f"{block}, act: hardswish, name: attn}}" in text, text
    down = ("self_attention: {num_heads: 4, bias: false, key_dim: 4, value_dim: 16, score_bias: true, "
            "norm: batchnorm, act: hardswish, stride: 2, out_features: 24, name: down}")
    assert down in text, text
    assert ("to_grid: {size: [3, 4], name: down_grid}" in text) == conv, text
    assert "matmul" not in text and "softmax" not in text
    # the batch norms (2C + 1 each) of attn's qkv (2 x (4 + 4 + 8)) and proj (16), down's q (4 x 4), kv
    # (4 x (4 + 16)) and proj (24), fc1 (48), fc2 (24); the indexes 42 x 42 and 12 x 42
    bn = [2 * ch + 1 for ch in (32, 16, 16, 80, 24, 48, 24)]
    assert report.totals.buffers == sum(bn) + 42 * 42 + 12 * 42


def test_levit_with_silu_imports_and_another_activation_does_not() -> None:
    text, _ = check(Levit(act=nn.SiLU), (3, 24, 28))
    assert text.count("act: silu") == 2, text
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(Levit(act=nn.GELU), (3, 24, 28))
