"""The smaller attention forms of timm's hybrid CNNs, each written here from plain torch (timm is not imported):
CLIP's attention pool (timm's AttentionPool2d: the tokens' mean put first, a learned position embedding, attention
with separate q, k and v projections and an output projection to another width, the first token taken) and
GCNet's global context block (timm's GlobalContext: softmax-weighted pooling of the grid, a bottleneck MLP with a
layer norm, added to or gating the input). Each imports as archcalc's kinds (`class_token: {mean: true}`,
`self_attention: {out_features: F}`, `context_pool`, an `add` that broadcasts C x 1 x 1) exact to torch's own
counts; the same kinds written in a spec equal a plain torch module; a module that computes something else is
not read so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from measure import step_peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import load_spec
from archcalc.core.training import step_peaks, step_unfollowed
from archcalc.torch.importer import from_module
from tests.import_check import check
from tests.test_import_attention_pattern import Attention  # timm's Attention, written out

# ---- CLIP's attention pool ----------------------------------------------------------------------------------------


class AttentionPool(nn.Module):
    """timm.layers.AttentionPool2d's forward (timm 1.0, the form CLIP's ResNets use: qkv_separate, token pooling),
    written out. `fused` picks scaled_dot_product_attention or the explicit products; `variant` breaks it."""

    def __init__(self, c: int, tokens: int, heads: int, out: int, fused: bool = False, variant: str = "") -> None:
        super().__init__()
        self.heads, self.fused, self.variant = heads, fused, variant
        self.d = c // heads
        self.scale = self.d**-0.5
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.drop = nn.Dropout(0.0)
        self.proj = nn.Linear(c, out)
        self.pos_embed = nn.Parameter(torch.randn(tokens + 1, c) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = h * w
        x = x.flatten(2).transpose(1, 2)
        first = x.mean(1, keepdim=True)
        if self.variant == "max_token":
            first = x.amax(1, keepdim=True)
        x = torch.cat([first, x], dim=1)
        x = x + self.pos_embed.unsqueeze(0)
        d = self.d
        q = self.q(x).reshape(b, n + 1, self.heads, d).transpose(1, 2)
        k = self.k(x).reshape(b, n + 1, self.heads, d).transpose(1, 2)
        v = self.v(x).reshape(b, n + 1, self.heads, d).transpose(1, 2)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ (k if self.variant == "kk" else v)
        x = x.transpose(1, 2).reshape(b, n + 1, -1)
        x = self.proj(self.drop(x))
        return x[:, 0]


class ClipHead(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.pool = AttentionPool(16, 12, 4, 10, **kw)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.stem(x)))


def test_clip_attention_pool_imports_exact() -> None:
    text, report = check(ClipHead(), (3, 12, 16))
    assert "class_token: {mean: true" in text, text
    assert "self_attention: {num_heads: 4, out_features: 10" in text, text
    assert "take_token" in text and "matmul" not in text
    # by hand: stem 3*16*16 + 16, position embedding 13 x 16, q/k/v 3 x (16*16 + 16), projection 16*10 + 10
    assert report.totals.params == (3 * 16 * 16 + 16) + 13 * 16 + 3 * (16 * 16 + 16) + 16 * 10 + 10
    n, c, f = 13, 16, 10  # 12 grid tokens and the mean token
    assert report.totals.macs == 12 * 3 * 16 * 16 + 3 * n * c * c + 2 * n * n * c + n * c * f


def test_clip_attention_pool_fused_imports_as_the_same_spec() -> None:
    torch.manual_seed(0)
    fused, explicit = ClipHead(fused=True), ClipHead()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x))
    assert from_module(fused, (3, 12, 16)).text == from_module(explicit, (3, 12, 16)).text


@pytest.mark.parametrize("variant", ["max_token", "kk"])
def test_other_pools_are_not_read_as_the_attention_pool(variant: str) -> None:
    """The max of the tokens put first (no kind), or attention whose values are the keys: refused at the op."""
    with pytest.raises(ArchcalcError, match=r"cannot import .* at pool"):
        from_module(ClipHead(variant=variant), (3, 12, 16))


class MeanTokenElsewhere(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        return t.mean(1, keepdim=True) * 2.0


def test_a_kept_mean_token_read_otherwise_is_refused_with_the_reason() -> None:
    with pytest.raises(ArchcalcError, match=r"mean of tokens kept as one token .* only put before the same tokens"):
        from_module(MeanTokenElsewhere(), (4, 3, 3))


class SpecPool(nn.Module):
    """The spec below as plain torch: the mean of the tokens first, a position embedding, one attention (its q, k
    and v in one projection, the heads' products written out) projecting to F channels, the first token."""

    def __init__(self, c: int, n: int, heads: int, f: int) -> None:
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(1, n + 1, c))
        self.qkv, self.out = nn.Linear(c, 3 * c), nn.Linear(c, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        t = torch.cat([t.sum(1, keepdim=True) / t.shape[1], t], dim=1) + self.pos
        b, n, c = t.shape
        q, k, v = (u.reshape(b, n, self.heads, -1).transpose(1, 2) for u in self.qkv(t).split(c, dim=-1))
        a = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, dim=-1) @ v
        return self.out(a.transpose(1, 2).reshape(b, n, c))[:, 0]


def test_the_attention_pool_spec_equals_plain_torch(write_spec) -> None:  # type: ignore[no-untyped-def]
    spec = load_spec(write_spec("name: pool\ninput: [8, 3, 4]\nlayers:\n  - to_tokens\n  - class_token: {mean: true}\n"
                                "  - pos_embed\n  - self_attention: {num_heads: 2, out_features: 6}\n"
                                "  - take_token\n"))
    report = analyze(spec, convention="torch")
    model = SpecPool(8, 12, 2, 6).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 8, 3, 4))
    assert report.totals.output == tuple(out.shape[1:]) == (6,)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.flops == counter.get_total_flops()


# ---- GCNet's global context ---------------------------------------------------------------------------------------


class GlobalContext(nn.Module):
    """timm.layers.GlobalContext's forward (timm 1.0) with its ConvMlp and LayerNorm2d written out: attention
    pooling, then `fuse` 'add' (x + mlp(context)) or 'scale' (x * sigmoid(mlp(context))). `variant` breaks the
    pooling in one place."""

    def __init__(self, c: int, rd: int, fuse: str, variant: str = "") -> None:
        super().__init__()
        self.fuse, self.variant = fuse, variant
        self.conv_attn = nn.Conv2d(c, 1, 1)
        self.fc1, self.norm, self.fc2 = nn.Conv2d(c, rd, 1), nn.LayerNorm(rd, eps=1e-6), nn.Conv2d(rd, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.conv_attn(x).reshape(b, 1, h * w)
        attn = F.softmax(attn, dim=1 if self.variant == "channel_softmax" else -1).unsqueeze(3)
        if self.variant == "square":
            attn = attn * attn
        context = (x.reshape(b, c, h * w).unsqueeze(1) @ attn).view(b, c, 1, 1)
        m = self.fc1(context)
        m = self.norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        m = self.fc2(torch.relu(m))
        return x + m if self.fuse == "add" else x * torch.sigmoid(m)


class GCNet(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.attn = GlobalContext(16, 4, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(torch.relu(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("fuse", ["add", "scale"])
def test_global_context_imports_exact(fuse: str) -> None:
    text, report = check(GCNet(fuse=fuse), (3, 7, 9), (3, 4, 4), (3, 10, 3))
    assert "context_pool: {name: conv_attn}" in text, text
    assert "matmul" not in text and "softmax" not in text, text
    # context_pool: the logits' conv (16 x 7 x 9 MACs) and the weighted sum (as many)
    row = next(r for r in report.rows if r.kind == "context_pool")
    assert (row.params, row.macs, row.output) == (16 + 1, 2 * 16 * 7 * 9, (16, 1, 1))


@pytest.mark.parametrize("variant", ["channel_softmax", "square"])
def test_other_pooling_is_not_read_as_context_pool(variant: str) -> None:
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(GCNet(fuse="add", variant=variant), (3, 5, 5))


class ContextAdd(nn.Module):
    """The spec below as plain torch: a conv, GCNet's pooling written with bmm, a 1x1 conv, added to the grid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.logit, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 1, 1), nn.Conv2d(6, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        weights = torch.softmax(self.logit(y).flatten(1), dim=1).unsqueeze(2)  # B x HW x 1
        context = torch.bmm(y.flatten(2), weights).unsqueeze(3)  # B x C x 1 x 1
        return y + self.fc(context)


class MeanAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + self.fc(y.mean((2, 3), keepdim=True))


SPEC_ADD = ("name: gc\ninput: [3, 4, 5]\nlayers:\n  - conv: {out: 6, kernel: 1}\n  - parallel:\n"
            "      - []\n      - [context_pool, {conv: {out: 6, kernel: 1}}]\n    merge: add\n")


def test_context_pool_and_a_broadcast_add_equal_plain_torch(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(SPEC_ADD)), convention="torch")
    model = ContextAdd().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 4, 5))
    assert report.totals.output == tuple(out.shape[1:]) == (6, 4, 5)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.flops == counter.get_total_flops()


def test_a_broadcast_add_in_a_training_step_is_measured(write_spec) -> None:  # type: ignore[no-untyped-def]
    """A C x 1 x 1 summand (squeeze-excitation's pooling and a 1x1 conv) added to the grid: the step's peak (Adam,
    batch 2, the first and a later step) is what torch allocates. (With context_pool in place of the mean, calc
    says the step is not followed: its backward is not modelled yet.)"""
    spec = SPEC_ADD.replace("[context_pool,", "[{mean: {keepdim: true}},").replace("[3, 4, 5]", "[3, 16, 16]")
    report = analyze(load_spec(write_spec(spec)), batch=2, device="cpu")
    later, first = step_peaks(report, "adam")
    measured = []
    for steps in (1, 2):
        torch.manual_seed(0)
        model = MeanAdd()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        measured.append(step_peak_bytes(model, (torch.randn(2, 3, 16, 16),), optimizer, steps)[1])
    assert (first.peak, later.peak) == tuple(measured)
    assert "context_pool" in step_unfollowed(analyze(load_spec(write_spec(SPEC_ADD)), batch=2, device="cpu"))


def test_a_broadcast_summand_may_come_first(write_spec) -> None:  # type: ignore[no-untyped-def]
    """(x + y with x of C x 1 x 1: the first sum broadcasts either way; torch's result is the full grid.)"""
    spec = "name: gc\ninput: [3, 4, 5]\nlayers:\n  - parallel:\n      - [global_avgpool]\n      - []\n    merge: add\n"
    assert analyze(load_spec(write_spec(spec))).totals.output == (3, 4, 5)
    assert (torch.randn(1, 3, 1, 1) + torch.randn(1, 3, 4, 5)).shape[1:] == (3, 4, 5)


@pytest.mark.parametrize(("body", "message"), [
    ("  - parallel:\n      - [{conv: {out: 4, kernel: 1}}]\n      - [global_avgpool]\n    merge: add\n",
     r"gives 4x4x5 but .* gives 3x1x1; they cannot be added"),
    # a third summand wider than the first two's sum (added in place: it cannot widen it)
    ("  - parallel:\n      - [global_avgpool]\n      - [global_avgpool]\n      - []\n    merge: add\n",
     r"gives 3x1x1 but .* gives 3x4x5; they cannot be added"),
    ("  - to_tokens\n  - parallel:\n      - []\n      - [{take_token: {index: 0}}]\n    merge: add\n",
     r"cannot be added|token|grid"),
])
def test_adds_that_do_not_broadcast_are_refused(write_spec, body: str, message: str) -> None:  # type: ignore
    with pytest.raises(ArchcalcError, match=message):
        analyze(load_spec(write_spec(f"name: bad\ninput: [3, 4, 5]\nlayers:\n{body}")))


# ---- Visformer's attention on a channels-first grid ---------------------------------------------------------------


class GridAttention(nn.Module):
    """timm.models.visformer.Attention's forward (timm 1.0): 1x1 convs for q, k, v and the output, the products on
    the grid's positions, scaled after Q K^T. `variant` breaks it in one place."""

    def __init__(self, c: int, heads: int, fused: bool = False, variant: str = "") -> None:
        super().__init__()
        self.heads, self.d, self.fused, self.variant = heads, c // heads, fused, variant
        self.scale = self.d**-0.5 * (2.0 if variant == "scale" else 1.0)
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Conv2d(c, c, 3 if variant == "proj3x3" else 1, padding="same", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.qkv(x).reshape(b, 3, self.heads, self.d, -1).permute(1, 0, 2, 4, 3)
        q, k, v = x.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), dropout_p=0.0)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.permute(0, 1, 3, 2).reshape(b, -1, h, w)
        return self.proj(x)


class Visformer(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 2, stride=2)
        self.norm = nn.BatchNorm2d(12)
        self.attn = GridAttention(12, 3, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.attn(self.norm(x))
        return self.head(x.mean((2, 3)))


def test_visformer_attention_imports_exact() -> None:
    text, report = check(Visformer(), (3, 8, 10), (3, 6, 6), (3, 4, 12))
    assert "to_tokens: {name: attn_tokens}" in text, text
    assert "self_attention: {num_heads: 3, bias: false, name: attn}" in text, text
    assert "to_grid: {name: attn_grid}" in text, text  # (the tokens' own grid: any input size)
    n, c = 20, 12  # 4 x 5 positions of 12 channels
    row = next(r for r in report.rows if r.kind == "self_attention")
    assert (row.params, row.macs) == (4 * c * c, 4 * n * c * c + 2 * n * n * c)


def test_visformer_fused_attention_imports_as_the_same_spec() -> None:
    torch.manual_seed(0)
    fused, explicit = Visformer(fused=True), Visformer()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 8, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x))
    assert from_module(fused, (3, 8, 10)).text == from_module(explicit, (3, 8, 10)).text


@pytest.mark.parametrize("variant", ["scale", "proj3x3"])
def test_other_grid_attention_is_not_read_as_self_attention(variant: str) -> None:
    with pytest.raises(ArchcalcError, match=r"cannot import .* at attn"):
        from_module(Visformer(variant=variant), (3, 8, 10))


# ---- PiT: class tokens kept apart by slicing, a pooling stage between transformers ----------------------------


class MiniPiT(nn.Module):
    """timm.models.pit's flow (PoolingVisionTransformer, Transformer, Pooling; timm 1.0) at a small size: the class
    token(s) (two when distilled) put before the grid's tokens, a transformer block, the sequence sliced back into
    the class tokens and the grid, the grid pooled by a depthwise strided conv and the class tokens by a linear, a
    second stage, the class tokens' norm and head(s). (timm's Attention, written out: nn.MultiheadAttention's fast
    path on the CPU is a fused kernel FlopCounterMode does not count.)"""

    def __init__(self, tokens: int = 1) -> None:
        super().__init__()
        self.tokens = tokens
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 8, 4, 4))
        self.cls = nn.Parameter(torch.randn(1, tokens, 8))
        self.norm0, self.attn0 = nn.LayerNorm(8), Attention(8, 2)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 16)
        self.norm1, self.attn1 = nn.LayerNorm(16), Attention(16, 2)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)
        self.head_dist = nn.Linear(16, 5) if tokens == 2 else None

    def stage(self, x: torch.Tensor, cls: torch.Tensor, norm: nn.Module, attn: nn.Module, last: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        t = torch.cat((cls, x.flatten(2).transpose(1, 2)), dim=1)
        t = t + attn(norm(t))
        if last:  # (timm lays the last grid out too, unread: archcalc imports it with a warning)
            return x, t[:, :self.tokens]
        cls, x = t[:, :self.tokens], t[:, self.tokens:]
        return x.transpose(1, 2).reshape(b, c, h, w), cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x) + self.pos
        x, cls = self.stage(x, self.cls.expand(x.shape[0], -1, -1), self.norm0, self.attn0)
        x, cls = self.stage(self.conv(x), self.fc(cls), self.norm1, self.attn1, last=True)
        cls = self.norm(cls)
        if self.head_dist is not None:
            return (self.head(cls[:, 0]) + self.head_dist(cls[:, 1])) / 2
        return self.head(cls[:, 0])


@pytest.mark.parametrize("tokens", [1, 2])
def test_pit_imports_exact(tokens: int) -> None:
    text, report = check(MiniPiT(tokens), (3, 16, 16))
    assert ("class_token: {count: 2" in text) == (tokens == 2), text
    assert f"take_token: {{stop: {tokens}" in text, text  # the class tokens
    assert f"take_token: {{index: {tokens}, stop: {tokens + 16}" in text, text  # the grid's 4 x 4 tokens
    assert "concat:" in text, text
    # the last norm runs on the class tokens alone: 2 x 16 parameters, its output tokens x 16
    row = next(r for r in report.rows if r.name == "norm")
    assert (row.params, row.output) == (2 * 16, (tokens, 16))


def test_class_tokens_and_ranges_of_tokens_in_a_spec(write_spec) -> None:  # type: ignore[no-untyped-def]
    """Two learned tokens put first (params 2C), the sequence sliced into them and the grid's, the grid's laid out
    on their grid again and pooled, the tokens joined again on the pooled grid (the last input's), whose tokens
    lay out on it: shapes and parameters by hand."""
    spec = ("name: pit\ninput: [4, 4, 4]\nlayers:\n  - to_tokens\n  - class_token: {count: 2, name: cls}\n"
            "  - take_token: {stop: 2, name: first}\n  - take_token: {index: 2, stop: 18, name: grid_tokens}\n"
            "    from: cls\n  - to_grid: {name: grid}\n  - maxpool: {kernel: 2}\n  - to_tokens: {name: again}\n"
            "  - concat: [first, again]\n    name: joined\n  - take_token: {index: 2, stop: 6}\n"
            "  - to_grid: {name: pooled}\n")
    report = analyze(load_spec(write_spec(spec)))
    assert report.totals.params == 2 * 4
    shapes = {r.name: r.output for r in report.rows}
    assert (shapes["first"], shapes["grid_tokens"], shapes["grid"]) == ((2, 4), (16, 4), (4, 4, 4))
    assert (shapes["joined"], shapes["pooled"]) == ((6, 4), (4, 2, 2))


@pytest.mark.parametrize(("body", "message"), [
    ("  - to_tokens\n  - take_token: {index: 10, stop: 14}\n", r"stop 14 must be one number after index 10"),
    ("  - to_tokens\n  - class_token: {count: 2, mean: true}\n", r"the mean of the tokens is one token"),
])
def test_bad_token_ranges_are_located_errors(write_spec, body: str, message: str) -> None:  # type: ignore
    with pytest.raises(ArchcalcError, match=message):
        analyze(load_spec(write_spec(f"name: bad\ninput: [4, 3, 4]\nlayers:\n{body}")))


@pytest.mark.parametrize(("make", "shape"), [(lambda: MiniPiT(1), (3, 16, 16)), (lambda: MiniPiT(2), (3, 16, 16)),
                                             (lambda: Visformer(), (3, 8, 10))],
                         ids=["pit", "pit_distilled", "visformer"])
def test_the_imported_step_peak_is_measured(make, shape) -> None:  # type: ignore[no-untyped-def]
    """The training step's peak of the imported spec (Adam, batch 2, the first and a later step) is what the module
    allocates: ranges of tokens, token sequences joined, several class tokens, attention on a grid's tokens."""
    report = analyze(from_module(make(), shape).spec, batch=2, device="cpu")
    later, first = step_peaks(report, "adam")
    measured = []
    for steps in (1, 2):
        torch.manual_seed(0)
        model = make()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        measured.append(step_peak_bytes(model, (torch.randn(2, *shape),), optimizer, steps)[1])
    assert (first.peak, later.peak) == tuple(measured)
