"""EfficientFormer-V2's attention (Li et al. 2023, "Rethinking Vision Transformers for MobileNet Size and Speed";
timm's efficientformer_v2.py): `effv2_attention` on a channels-first grid (q, k, v from 1 x 1 convs and batch
norms, the local value branch, LeViT's score table, talking heads; with `downsample` the local and global query),
and the import of timm's Attention2d and Attention2dDownsample. The stand-ins are written here from plain torch
(timm is never imported): the counts of the import are FlopCounterMode's and the modules' own parameters and
buffers; the real models are tests/test_import_timm_hybrid.py's. The kind's examples are checked against a plain
reference in tests/test_kinds_reference.py, its saved bytes in tests/test_kind_rules.py."""

from __future__ import annotations

import pytest
import torch
from conftest import example_spec, load_text
from measure import peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc import analyze
from archcalc.core.kinds import REGISTRY
from archcalc.torch.importer import from_module
from archcalc.torch.importer.trace import ImportFailure

EFFV2 = "timm.models.efficientformer_v2"


class ConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def offsets(h: int, w: int, step: int) -> torch.Tensor:
    """Row |dy| x W + |dx| of each query (every `step`-th row and column) to each key: the table's index."""
    keys = [(y, x) for y in range(h) for x in range(w)]
    queries = [(y, x) for y in range(0, h, step) for x in range(0, w, step)]
    return torch.tensor([[abs(a - y) * w + abs(b - x) for y, x in keys] for a, b in queries])


class Attention2d(nn.Module):
    """The paper's MHSA block on a grid (Fig. 2): with a stride, a depthwise conv halves the grid first and a
    bilinear upsampling restores it; q, k, v 1 x 1 conv + BN; scores q^T k / sqrt(d) + B; a 1 x 1 conv over the
    heads' maps before the softmax and after; A V plus a depthwise conv of v; GELU; projection conv + BN."""

    def __init__(self, c: int, key_dim: int, heads: int, ratio: int, size: int, stride: int | None,
                 index: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.d = heads, key_dim, ratio * key_dim
        self.dh = self.d * heads
        if stride is not None:
            size = -(-size // stride)
            self.stride_conv: nn.Module | None = ConvNorm(c, c, 3, stride, c)
            self.upsample: nn.Module | None = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.stride_conv, self.upsample = None, None
        self.resolution = (size, size)
        self.N = size * size
        self.q, self.k = ConvNorm(c, heads * key_dim), ConvNorm(c, heads * key_dim)
        self.v = ConvNorm(c, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, 1, self.dh)
        self.talking_head1, self.talking_head2 = nn.Conv2d(heads, heads, 1), nn.Conv2d(heads, heads, 1)
        self.act = nn.GELU()
        self.proj = ConvNorm(self.dh, c)
        self.attention_biases = nn.Parameter(torch.randn(heads, self.N))
        self.register_buffer("attention_bias_idxs", offsets(size, size, 1) if index is None else index,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        h = self.num_heads
        q = self.q(x).flatten(2).reshape(b, h, self.key_dim, -1)
        k = self.k(x).flatten(2).reshape(b, h, self.key_dim, -1)
        v_grid = self.v(x)
        v = v_grid.flatten(2).reshape(b, h, self.d, -1)
        scores = torch.matmul(q.transpose(2, 3), k) / self.key_dim ** 0.5
        scores = scores + self.attention_biases[:, self.attention_bias_idxs]  # type: ignore[index]
        weights = self.talking_head2(self.talking_head1(scores).softmax(-1))
        out = torch.matmul(v, weights.transpose(2, 3)).reshape(b, self.dh, *x.shape[2:]) + self.v_local(v_grid)
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out))


class LocalGlobalQuery(nn.Module):
    def __init__(self, c: int, out: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.proj = ConvNorm(c, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + self.pool(x))


class Attention2dDownsample(nn.Module):
    """The paper's attention downsampling (Sec. 3: "local-global" queries from a pooled and a strided depthwise
    conv of the input, keys and values from the whole grid), with v's depthwise branch of stride 2."""

    def __init__(self, c: int, out: int, key_dim: int, heads: int, ratio: int, size: int) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.d = heads, key_dim, ratio * key_dim
        self.dh = self.d * heads
        self.resolution, self.out_dim = (size, size), out
        self.q = LocalGlobalQuery(c, heads * key_dim)
        self.k = ConvNorm(c, heads * key_dim)
        self.v = ConvNorm(c, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, 2, self.dh)
        self.act = nn.GELU()
        self.proj = ConvNorm(self.dh, out)
        self.attention_biases = nn.Parameter(torch.randn(heads, size * size))
        self.register_buffer("attention_bias_idxs", offsets(size, size, 2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.num_heads
        q = self.q(x)
        grid = q.shape[2:]
        q = q.flatten(2).reshape(b, h, self.key_dim, -1)
        k = self.k(x).flatten(2).reshape(b, h, self.key_dim, -1)
        v_grid = self.v(x)
        v = v_grid.flatten(2).reshape(b, h, self.d, -1)
        scores = torch.matmul(q.transpose(2, 3), k) / self.key_dim ** 0.5
        weights = (scores + self.attention_biases[:, self.attention_bias_idxs]).softmax(-1)  # type: ignore[index]
        out = torch.matmul(v, weights.transpose(2, 3)).reshape(b, self.dh, *grid) + self.v_local(v_grid)
        return self.proj(self.act(out))


for _cls in (Attention2d, Attention2dDownsample, LocalGlobalQuery, ConvNorm):
    _cls.__module__, _cls.__qualname__ = EFFV2, _cls.__name__


class Net(nn.Module):
    """A stem to 8 x 8, a block whose attention halves the grid and upsamples it (stride 2), the stage transition
    (a strided conv + BN beside the downsampling attention) to 4 x 4, a block attending the whole 4 x 4 grid."""

    def __init__(self, first: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.mixer1 = first if first is not None else Attention2d(8, 4, 2, 2, 8, 2)
        self.down = ConvNorm(8, 12, 3, 2)
        self.down_attn = Attention2dDownsample(8, 12, 3, 2, 2, 8)
        self.mixer2 = Attention2d(12, 2, 3, 2, 4, None)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.mixer1(x)
        x = self.down(x) + self.down_attn(x)
        x = x + self.mixer2(x)
        return self.head(x.mean((2, 3)))


def test_the_blocks_import_exact() -> None:
    """Each attention as its layers (the stride conv and norm, effv2_attention, the upsampling, GELU, the projection
    and its norm); params, buffers, output and FlopCounterMode's FLOPs the stand-in's."""
    model = Net().eval()
    imported = from_module(model, (3, 16, 16))
    report = analyze(imported.spec)
    attn = [r for r in report.rows if r.kind == "effv2_attention"]
    assert [r.config for r in attn] == [
        "2 heads, key 4, value 8, 16 queries over 16 keys, talking heads",
        "2 heads, key 3, value 6, 16 queries over 64 keys, downsample",
        "3 heads, key 2, value 4, 16 queries over 16 keys, talking heads"]
    assert [r.kind for r in report.rows].count("upsample") == 1
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 16, 16))
    assert counter.get_total_flops() == report.totals.flops
    assert [list(report.graph.tensors[t].shape) for _, t in report.graph.outputs] == [list(out.shape[1:])]
    assert imported.warnings == ()


def test_the_cost_is_the_written_out_formula() -> None:
    """EfficientFormer-V2-S0's last-stage attention at 7 x 7 (C 176, 8 heads, key_dim 32, attn_ratio 4): q, k
    1 x 1 convs C -> 256 with bias and BN (4 x 256 each), v C -> 1024, v_local 3 x 3 depthwise with bias and BN,
    two 8 x 8 talking-head convs with bias, a 8 x 49 table; the products per head 49 x 49 x 32 and 49 x 49 x 128."""
    kind = REGISTRY["effv2_attention"]
    a = {"num_heads": 8, "key_dim": 32, "value_dim": 128, "talking_heads": True, "downsample": False}
    cost = kind.cost(a, (176, 7, 7), kind.output(a, (176, 7, 7), lambda m: None))
    assert cost.params == (2 * (176 * 256 + 3 * 256) + 176 * 1024 + 3 * 1024 + 9 * 1024 + 3 * 1024
                           + 2 * (64 + 8) + 8 * 49)
    assert cost.buffers == 2 * (256 + 256 + 1024 + 1024) and cost.int_buffers == 4 + 49 * 49
    assert cost.macs == 49 * 176 * (256 + 256 + 1024) + 49 * 9 * 1024 + 8 * 49 * 49 * (32 + 128 + 2 * 8)


def _peaks(index: int) -> tuple[int, int, int]:
    """The built module's measured inference peak at batch 16 and 17, and the one-layer report's prediction at
    16 (a batch large enough that a batch norm's per-channel scratch, a constant, does not decide which moment is
    the peak)."""
    from archcalc.torch.build import build_module

    kind = REGISTRY["effv2_attention"]
    shape, layers = example_spec(kind, kind.examples[index])
    text = "name: t\ninput: [" + ", ".join(map(str, shape)) + "]\nlayers:\n" + "".join(
        f"  - {line}\n" for line in layers)
    report = analyze(load_text(text), batch=16)
    model = build_module(report).eval()
    measured = []
    for batch in (16, 17):
        x = torch.randn(batch, *shape)
        measured.append(peak_bytes(lambda x=x: model(x)))  # type: ignore[misc]
    t = report.totals
    return measured[0], measured[1], t.peak_bytes - t.param_bytes - t.buffer_bytes - 16 * 4 * x[0].numel()


@pytest.mark.parametrize("index", range(len(REGISTRY["effv2_attention"].examples)))
def test_the_inference_peak_per_sample_is_measured(index: int) -> None:
    """What one more sample adds to the profiler's peak is what the kind declares per sample (its output and
    transient): the batch norms' per-channel scratch (tests/test_kind_rules.py's SCRATCH) does not grow with the
    batch. Where the peak is not inside a batch norm (the scores, the softmax, the end) the whole figure is exact."""
    kind = REGISTRY["effv2_attention"]
    ex = kind.examples[index]
    a = {arg.name: ex.args.get(arg.name, arg.default) for arg in kind.args}
    out = kind.output(a, ex.input, lambda m: None)
    per_sample = 4 * (kind.transient(a, ex.input, out)[0][0] + out[0] * out[1] * out[2])
    sixteen, seventeen, predicted = _peaks(index)
    assert seventeen - sixteen == per_sample
    moments = kind.moments(a, ex.input)  # type: ignore[attr-defined]
    if max(moments, key=moments.get) in ("scores", "softmax", "av", "end", "query"):  # type: ignore[arg-type]
        assert sixteen == predicted
    else:
        assert sixteen >= predicted


def test_a_full_local_value_conv_is_refused() -> None:
    """v_local a full 3 x 3 conv (groups 1), not the depthwise one effv2_attention counts: refused."""
    attn = Attention2d(8, 4, 2, 2, 8, 2)
    attn.v_local = ConvNorm(16, 16, 3)
    with pytest.raises(ImportFailure, match="not timm's convs and batch norms"):
        from_module(Net(attn).eval(), (3, 16, 16))


def test_another_score_index_is_refused() -> None:
    """Swin's signed offsets (dy + H - 1)(2W - 1) + dx + W - 1 are another index than |dy| W + |dx|: refused (the
    table then has another size too; here the same index shape, other values)."""
    index = offsets(4, 4, 1).flip(0)
    with pytest.raises(ImportFailure, match="score table index"):
        from_module(Net(Attention2d(8, 4, 2, 2, 8, 2, index=index)).eval(), (3, 16, 16))
