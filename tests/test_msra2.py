"""EfficientViT-MSRA's cascaded group attention in local windows (Liu et al. 2023, "EfficientViT: Memory Efficient
Vision Transformer with Cascaded Group Attention", sec. 3.2; timm's efficientvit_msra.py LocalWindowAttention):
`cascaded_attention`. Counts against formulas written here, against FlopCounterMode, saved_tensors_hooks and
torch.profiler on modules written here from plain torch (timm is never imported: the classes below carry timm's
module name, as timm's own would, so the importer's rule for them is the one tried)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import load_text
from measure import peak_bytes, saved_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.kinds import REGISTRY
from archcalc.torch.build import build_module
from archcalc.torch.recipes import module_call
from tests.import_check import check


def conv_norm(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class CascadedGroupAttention(nn.Module):
    """The attention in one window batch (timm 1.0.31's structure and attribute names): per head the split plus the
    previous head's output, qkv conv + BN, a depthwise conv + BN on q, scores scaled plus a bias per absolute offset
    (gathered by an index built from a dict of offsets, in the order the points meet them), softmax, V A^T; the heads
    joined, ReLU, conv + BN. `variant` breaks it in one place."""

    def __init__(self, dim: int, key_dim: int, heads: int, resolution: int, kernels: tuple[int, ...],
                 variant: str = "") -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim, self.resolution = heads, key_dim, dim // heads, resolution
        self.scale, self.variant = key_dim ** -0.5, variant
        self.qkvs = nn.ModuleList(conv_norm(dim // heads, 2 * key_dim + dim // heads) for _ in range(heads))
        self.dws = nn.ModuleList(conv_norm(key_dim, key_dim, k, key_dim) for k in kernels)
        self.proj = nn.Sequential(nn.ReLU() if variant != "gelu" else nn.GELU(), conv_norm(dim, dim))
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets: dict[tuple[int, int], int] = {}
        index = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)) for p in points
                 for q in points]
        self.attention_biases = nn.Parameter(torch.randn(heads, len(offsets)) * 0.1)
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        splits = x.chunk(self.num_heads, dim=1)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        outs, feat = [], splits[0]
        for i in range(self.num_heads):
            if i > 0:
                feat = feat + splits[i]
            q, k, v = self.qkvs[i](feat).view(b, -1, h, w).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q, k, v = self.dws[i](q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q * self.scale).transpose(-2, -1) @ k + bias[i]).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(b, self.val_dim, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, 1))


class LocalWindowAttention(nn.Module):
    """The windows: a grid that is the window attended as it is, else padded channels-last, cut, attended, put
    back and cropped."""

    def __init__(self, dim: int, key_dim: int, heads: int, resolution: int, window: int,
                 kernels: tuple[int, ...], variant: str = "") -> None:
        super().__init__()
        self.dim, self.resolution, self.window_resolution = dim, resolution, window
        self.attn = CascadedGroupAttention(dim, key_dim, heads, min(window, resolution), kernels, variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.attn.resolution
        if h == ws and w == ws:
            return self.attn(x)
        x = x.permute(0, 2, 3, 1)
        pb, pr = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = nn.functional.pad(x, (0, 0, 0, pr, 0, pb))
        ph, pw = h + pb, w + pr
        x = x.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws, ws, c).permute(0, 3, 1, 2)
        x = self.attn(x)
        x = x.permute(0, 2, 3, 1).view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].contiguous().permute(0, 3, 1, 2)


for _cls in (CascadedGroupAttention, LocalWindowAttention):
    _cls.__module__ = "timm.models.efficientvit_msra"


class Net(nn.Module):
    def __init__(self, resolution: int, window: int, kernels: tuple[int, ...] = (5, 3), variant: str = "") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mixer = LocalWindowAttention(16, 4, len(kernels), resolution, window, kernels, variant)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.mixer(x)
        return self.head(x.mean(dim=(2, 3)))


def formula(c: int, h: int, w: int, heads: int, kd: int, window: int, kernels: tuple[int, ...]) -> tuple[int, int]:
    """Params and MACs per image written out: T padded positions, M = w^2, C_i = C / heads (v's channels too)."""
    s = min(window, h, w)
    t, m, ci = math.ceil(h / s) * s * math.ceil(w / s) * s, s * s, c // heads
    params = (heads * ci * (2 * kd + ci) + 2 * heads * (2 * kd + ci) + sum(kd * k * k for k in kernels)
              + 2 * heads * kd + heads * m + c * c + 2 * c)
    macs = (heads * t * ci * (2 * kd + ci) + sum(t * kd * k * k for k in kernels) + heads * t * m * (kd + ci)
            + t * c * c)
    return params, macs


SPECS = [((16, 14, 14), 2, 4, 7, (5, 3)), ((16, 10, 13), 4, 3, 4, (3, 3, 1, 1)), ((12, 7, 7), 3, 2, 7, (5, 5, 5)),
         ((8, 4, 4), 2, 2, 7, (3, 3))]


@pytest.mark.parametrize(("shape", "heads", "kd", "window", "kernels"), SPECS)
def test_counts_are_the_written_out_formula_and_flop_counter_s(shape, heads, kd, window, kernels) -> None:  # type: ignore[no-untyped-def]
    text = (f"name: a\ninput: {list(shape)}\nlayers:\n  - cascaded_attention: {{num_heads: {heads}, key_dim: {kd}, "
            f"window_size: {window}, kernels: {list(kernels)}}}\n")
    t = analyze(load_text(text)).totals
    params, macs = formula(*shape, heads, kd, window, kernels)
    assert (t.params, t.macs) == (params, macs)
    block = CascadedGroupAttention(shape[0], kd, heads, min(window, *shape[1:]), kernels)
    plain = LocalWindowAttention(shape[0], kd, heads, min(shape[1:]), window, kernels).eval()
    plain.attn = block.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        plain(torch.randn(1, *shape))
    assert counter.get_total_flops() == 2 * macs
    assert sum(p.numel() for p in plain.parameters()) == params


@pytest.mark.parametrize(("shape", "heads", "kd", "window", "kernels"), SPECS)
def test_the_built_module_computes_the_plain_one(shape, heads, kd, window, kernels) -> None:  # type: ignore[no-untyped-def]
    """archcalc's module, given the plain module's parameters and running statistics (not its index: each builds
    its own), gives the same output."""
    kind = REGISTRY["cascaded_attention"]
    a = {"num_heads": heads, "key_dim": kd, "window_size": window, "kernels": kernels}
    torch.manual_seed(0)
    built = module_call(kind, a, shape).make().eval()
    plain = LocalWindowAttention(shape[0], kd, heads, min(shape[1:]), window, kernels).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.uniform_(0.5, 1.5)
        for b in plain.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
        plain.attn.attention_biases.uniform_(-2, 2)
        for mine, theirs in zip([*built.parameters()], [plain.attn.attention_biases, *(
                p for n, p in plain.attn.named_parameters() if n != "attention_biases")]):
            mine.copy_(theirs)
        for mine, theirs in zip([b for b in built.buffers() if b.is_floating_point()],
                                [b for b in plain.buffers() if b.is_floating_point()]):
            mine.copy_(theirs)
        x = torch.randn(2, *shape)
        torch.testing.assert_close(built(x), plain(x))


@pytest.mark.parametrize(("shape", "heads", "kd", "window", "kernels"), SPECS)
@pytest.mark.parametrize("batch", [1, 3])
def test_memory_at_other_batches(shape, heads, kd, window, kernels, batch) -> None:  # type: ignore[no-untyped-def]
    """The saved bytes (saved_tensors_hooks) and the inference peak (torch.profiler) at batches 1 and 3 (the kind
    rules check batch 2): the once-per-forward bias gather and batch norms' scale and shift stay once."""
    text = (f"name: a\ninput: {list(shape)}\nlayers:\n  - cascaded_attention: {{num_heads: {heads}, key_dim: {kd}, "
            f"window_size: {window}, kernels: {list(kernels)}}}\n")
    report = analyze(load_text(text), batch=batch, device="cpu", input_requires_grad=True)
    torch.manual_seed(0)
    model = build_module(report)
    x = torch.randn(batch, *shape).requires_grad_()
    assert report.totals.saved_bytes == saved_bytes(model, x)
    peak = analyze(load_text(text), batch=batch).totals
    x = torch.randn(batch, *shape)
    model.eval()
    assert peak_bytes(lambda: model(x)) == peak.peak_bytes - peak.param_bytes - peak.buffer_bytes - x.numel() * 4


@pytest.mark.parametrize(("resolution", "window", "shape", "others"), [
    (14, 7, (3, 56, 56), [(3, 64, 48)]),  # 4 windows; another input pads
    (7, 7, (3, 28, 28), [(3, 36, 44)]),   # one window, attended as it is
    (10, 4, (3, 40, 40), [(3, 48, 32)]),  # padded to 12 x 12
    (4, 7, (3, 16, 16), [(3, 20, 24)]),   # a grid smaller than the window: the window is the grid
])
def test_local_window_attention_imports_exact(resolution: int, window: int, shape: tuple[int, ...],
                                               others: list[tuple[int, ...]]) -> None:
    text, _ = check(Net(resolution, window), shape, *others)
    w = min(window, resolution)  # (7 is the default, not written)
    size = f"window_size: {w}, " if w != 7 else ""
    assert f"cascaded_attention: {{num_heads: 2, key_dim: 4, {size}kernels: [5, 3]" in text, text


def test_one_kernel_for_every_head_is_written_once() -> None:
    text, _ = check(Net(14, 7, (3, 3, 3, 3)), (3, 56, 56))
    assert "cascaded_attention: {num_heads: 4, key_dim: 4, kernels: 3" in text, text


def test_another_activation_is_refused() -> None:
    """GELU before the projection is not cascaded_attention's ReLU: refused by the importer's checks of the kept
    module (its convs, activation and projection), with its reason."""
    with pytest.raises(ArchcalcError, match="LocalWindowAttention whose convs"):
        check(Net(14, 7, variant="gelu"), (3, 56, 56))


@pytest.mark.parametrize(("args", "message"), [
    ("num_heads: 3", "not divisible by num_heads 3"),
    ("num_heads: 2, kernels: [3, 3, 3]", "3 kernels for 2 heads"),
    ("num_heads: 2, kernels: 4", "must be odd"),
])
def test_what_it_refuses_is_a_located_error(args: str, message: str) -> None:
    text = f"name: a\ninput: [8, 6, 6]\nlayers:\n  - cascaded_attention: {{{args}}}\n"
    with pytest.raises(ArchcalcError, match=rf":4:5: .*{message}"):
        analyze(load_text(text))


def test_a_token_input_is_refused() -> None:
    text = "name: a\ninput: [8, 6, 6]\nlayers:\n  - to_tokens\n  - cascaded_attention: {num_heads: 2}\n"
    with pytest.raises(ArchcalcError, match=r":5:5: .*cascaded_attention needs a grid"):
        analyze(load_text(text))
