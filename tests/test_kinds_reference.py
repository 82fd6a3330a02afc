"""Every kind's examples against a reference module written here from plain torch.nn, not by archcalc's builder.

tests/test_kinds.py measures the module archcalc's recipe builds; if the analysis and the recipe misread an
argument the same way, both agree. Here each kind has its own reference, written from the PyTorch documentation
of the layer it names, and the test checks: archcalc's output shape, params, buffers and MACs against the
reference (torch's FlopCounterMode counts 2 per MAC), the builder's parameter and buffer shapes against the
reference's, and the builder's output against the reference's on the same input with the same weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.torch.recipes import module_call


class Lambda(nn.Module):
    """A parameter-free reference written as a function of x."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class AddBias(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scale(nn.Module):
    """ConvNeXt's layer scale (Liu et al. 2022; torchvision's CNBlock): a learned factor per channel (C x 1 x 1), or
    of another broadcast shape."""

    def __init__(self, shape: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full(shape, init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x


class ChannelsLastLayerNorm(nn.LayerNorm):
    """torchvision's LayerNorm2d (convnext.py): permute to channels-last, layer norm over C, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _nd(prefix: str, rank: int) -> Any:
    return getattr(nn, f"{prefix}{rank}d")


def _tf_same(sizes: tuple[int, ...], kernels: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """TensorFlow's SAME padding per axis: total max((ceil(W / S) - 1) * S + F - W, 0), the odd one after."""
    pads = []
    for w, k, s in zip(sizes, kernels, strides):
        total = max((-(-w // s) - 1) * s + k - w, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _f_pad(pads: list[tuple[int, int]]) -> list[int]:
    """F.pad's order: the last axis first, (before, after) each."""
    return [p for before_after in reversed(pads) for p in before_after]


def _axes(v: Any, rank: int) -> list[int]:
    return [v] * rank if isinstance(v, int) else list(v)


def _windowed(a: dict[str, Any], shape: tuple[int, ...], make: Callable[[Any], nn.Module], fill: float) -> nn.Module:
    """A pooling or conv module, with 'same' or [before, after] padding written as an explicit pad first."""
    rank = len(shape) - 1
    k = _axes(a["kernel_size"], rank)
    stride = a.get("stride") or a["kernel_size"]
    s = _axes(stride, rank)
    padding = a["padding"]
    if padding == "same":
        pads = _tf_same(shape[1:], [a.get("dilation", 1) * (ki - 1) + 1 if isinstance(a.get("dilation", 1), int)
                                    else ki for ki in k], s)
    elif padding == "valid":
        pads = [(0, 0)] * rank
    elif isinstance(padding, int):
        return make(padding)
    else:
        pads = [(p, p) if isinstance(p, int) else (p[0], p[1]) for p in padding]
    if all(p0 == p1 for p0, p1 in pads):
        return make(tuple(p0 for p0, _ in pads))
    return nn.Sequential(Lambda(lambda x: F.pad(x, _f_pad(pads), value=fill)), make(0))


def _conv(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    return _windowed(a, shape, lambda p: _nd("Conv", rank)(shape[0], a["out_channels"], a["kernel_size"],
                                                           stride=a["stride"], padding=p, dilation=a["dilation"],
                                                           groups=a["groups"], bias=a["bias"]), 0.0)


class WeightStandardized(nn.Module):
    """Weight standardisation (Qiao et al. 2019, eq. 5-6): each filter's weights less their mean, over their
    standard deviation (the biased one, eps added to the variance); with a gain, times a learned gain per filter
    and gamma / sqrt(fan-in) (Brock et al. 2021, "Characterizing signal propagation", Sec. 3, eq. 3). The
    convolution is `conv` (a plain torch module) called with the standardised weight in place of its own."""

    def __init__(self, conv: nn.Module, a: dict[str, Any], shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = conv
        self.eps, self.gamma = a["eps"], a["gamma"]
        # one gain per filter, shaped like the weight's first axis (registered after the convolution's weight)
        ones = torch.ones(a["out_channels"], *[1] * len(shape))
        self.gain = nn.ParameterList([nn.Parameter(ones)] if a["gain"] else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name, w = next((n, p) for n, p in self.conv.named_parameters() if n.endswith("weight"))
        flat = w.flatten(1)
        mean = flat.mean(1, keepdim=True)
        var = flat.var(1, unbiased=False, keepdim=True)
        standard = (flat - mean) / torch.sqrt(var + self.eps)
        if len(self.gain):
            standard = standard * self.gain[0].flatten(1) * self.gamma / math.sqrt(flat.shape[1])
        return torch.func.functional_call(self.conv, {name: standard.reshape_as(w)}, (x,))


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN (Woo et al. 2023, eq. 1-3 and Algorithm 1): Gx = ||X_i|| over the spatial axes per channel,
    Nx = Gx / (mean of Gx over channels + eps), X + gamma * (X * Nx) + beta."""

    def __init__(self, c: int, eps: float) -> None:
        super().__init__()
        self.gamma, self.beta, self.eps = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.dim()))
        shape = (1, -1, *[1] * len(spatial))
        gx = torch.sqrt((x * x).sum(spatial, keepdim=True))
        nx = gx / (gx.mean(1, keepdim=True) + self.eps)
        return self.gamma.view(shape) * (x * nx) + self.beta.view(shape) + x


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020, Fig. 4 / Algorithm 2): x * sigmoid(v * x) / s_{b,g}(x) * gamma + beta, with
    s_{b,g} the group standard deviation sqrt(var + eps) over each group's channels and positions; without v, x
    over s alone."""

    def __init__(self, c: int, groups: int, eps: float, act: bool) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.gamma, self.beta = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.v = nn.Parameter(torch.ones(c)) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *[1] * (x.dim() - 2))
        g = x.unflatten(1, (self.groups, -1))
        s = torch.sqrt(g.var(dim=tuple(range(2, g.dim())), correction=0, keepdim=True) + self.eps)
        s = s.expand_as(g).flatten(1, 2)
        top = x * torch.sigmoid(self.v.view(shape) * x) if self.v is not None else x
        return top / s * self.gamma.view(shape) + self.beta.view(shape)


class ChannelRMSNorm(nn.Module):
    """RMSNorm (Zhang and Sennrich 2019, eq. 4) over the channels of each position: x / RMS(x) * g, RMS(x) =
    sqrt(mean of x^2 + eps); or x / sqrt(unbiased variance + eps) * g (timm's SimpleNorm)."""

    def __init__(self, c: int, a: dict[str, Any]) -> None:
        super().__init__()
        self.a = a
        self.g = nn.Parameter(torch.ones(c)) if a["elementwise_affine"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a["statistic"] == "variance":
            stat = x.var(dim=1, keepdim=True)
        else:
            stat = (x * x).mean(dim=1, keepdim=True)
        y = x / torch.sqrt(stat + self.a["eps"])
        return y if self.g is None else y * self.g.view(1, -1, *[1] * (x.dim() - 2))


class FilterResponseNorm(nn.Module):
    """FRN and TLU (Singh and Krishnan 2019, eq. 1-3): nu2 = mean of x^2 over the spatial extent per channel,
    x / sqrt(nu2 + eps) * gamma + beta, then max(., tau) with TLU."""

    def __init__(self, c: int, eps: float, tlu: bool) -> None:
        super().__init__()
        self.eps = eps
        self.gamma, self.beta = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.tau = nn.Parameter(torch.zeros(c)) if tlu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *[1] * (x.dim() - 2))
        nu2 = (x * x).mean(dim=tuple(range(2, x.dim())), keepdim=True)
        y = x / torch.sqrt(nu2 + self.eps) * self.gamma.view(shape) + self.beta.view(shape)
        return y if self.tau is None else torch.max(y, self.tau.view(shape))


def _std_conv(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    return WeightStandardized(_conv(a, shape), a, shape)


def _maxpool(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    return _windowed(a, shape, lambda p: _nd("MaxPool", rank)(a["kernel_size"], a["stride"], p, a["dilation"],
                                                              ceil_mode=a["ceil_mode"]), -math.inf)


def _avgpool(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    return _windowed(a, shape, lambda p: _nd("AvgPool", rank)(a["kernel_size"], a["stride"], p,
                                                              ceil_mode=a["ceil_mode"],
                                                              count_include_pad=a["count_include_pad"]), 0.0)


def _per(per: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(shape, Tokens):  # N x C tokens (B x N x C in torch): the channels are the last axis
        n, c = shape
        return {"channel": (1, c), "position": (n, 1), "tensor": (1, 1)}.get(per, (n, c))
    rank = len(shape) - 1
    return {"channel": (shape[0], *[1] * rank), "position": (1, *shape[1:]), "tensor": (1,) * len(shape)}.get(
        per, shape)


def _bias(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    return AddBias(_per(a["per"], shape))


class Constant(nn.Module):
    """x + c, x - c, c - x, x * c, x / c, x ** c."""

    def __init__(self, op: str, value: float) -> None:
        super().__init__()
        self.op, self.value = op, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.value
        if self.op == "add":
            return x + c
        if self.op == "sub":
            return x - c
        if self.op == "rsub":
            return c - x
        if self.op == "pow":
            return torch.pow(x, c)
        return x * c if self.op == "mul" else x / c


def _crop(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    size = _axes(a["size"], len(shape) - 1)

    starts = None if a.get("start") is None else _axes(a["start"], len(shape) - 1)

    def crop(x: torch.Tensor) -> torch.Tensor:
        for axis, want in enumerate(size):
            start = (x.shape[2 + axis] - want) // 2  # the odd row or column is cut after
            x = x.narrow(2 + axis, start if starts is None else starts[axis], want)
        return x
    return Lambda(crop)


def _upsample(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    mode = a["mode"] if a["mode"] == "nearest" else {1: "linear", 2: "bilinear", 3: "trilinear"}[rank]
    scale = a["scale_factor"]
    return nn.Upsample(size=a["size"], scale_factor=tuple(float(s) for s in scale) if isinstance(scale, (list, tuple))
                       else None if scale is None else float(scale), mode=mode,
                       align_corners=a["align_corners"] if mode != "nearest" else None)


def _zeropad(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    p = a["padding"]
    pads = [(p, p)] * rank if isinstance(p, int) else [(q, q) if isinstance(q, int) else tuple(q) for q in p]
    return _nd("ZeroPad", rank)(tuple(_f_pad(pads)))  # type: ignore[arg-type]


class _TokenBatchNorm(nn.Module):
    """Batch norm of B x N x C tokens per channel: BatchNorm1d over (B, C, N), the tokens as its length axis."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


def _batchnorm(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    if isinstance(shape, Tokens):
        return _TokenBatchNorm(nn.BatchNorm1d(shape[1], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                                              track_running_stats=a["track_running_stats"]))
    rank = max(len(shape) - 1, 1)  # a flattened (C,) input is BatchNorm1d over (N, C)
    return _nd("BatchNorm", rank)(shape[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                                  track_running_stats=a["track_running_stats"])


def _linear(a: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    if isinstance(shape, Tokens):  # N x C tokens: nn.Linear on each token's channels
        return nn.Linear(shape[1], a["out_features"], bias=a["bias"])
    linear = nn.Linear(math.prod(shape), a["out_features"], bias=a["bias"])
    return nn.Sequential(nn.Flatten(), linear) if len(shape) > 1 else linear


class _Blur(nn.Module):
    """Zhang 2019's BlurPool: pad (reflected or zeros), then convolve each channel with the outer product of the
    binomial rows [C(k-1, i)] normalised to sum 1 (a buffer: a fixed filter)."""

    def __init__(self, a: dict[str, Any], shape: tuple[int, ...]) -> None:
        super().__init__()
        k, self.stride = _axes(a["kernel_size"], 2), _axes(a["stride"], 2)
        rows = [torch.tensor([math.comb(n - 1, i) for i in range(n)], dtype=torch.float32) for n in k]
        filt = torch.outer(rows[0] / rows[0].sum(), rows[1] / rows[1].sum())
        self.register_buffer("filt", filt.expand(shape[0], 1, *k).clone())
        p = a["padding"]
        pads = [(p, p)] * 2 if isinstance(p, int) else [(q, q) if isinstance(q, int) else tuple(q) for q in p]
        self.pads = _f_pad(pads)  # type: ignore[arg-type]
        self.mode = "reflect" if a["padding_mode"] == "reflect" else "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads, mode=self.mode), self.filt, stride=self.stride, groups=x.shape[1])


class Attention(nn.Module):
    """Multi-head self-attention as Vaswani et al. write it (nn.MultiheadAttention's parameters in its order),
    every product a matmul: softmax(Q K^T / sqrt(d)) V per head."""

    def __init__(self, c: int, heads: int, bias: bool, qkv_bias: bool = True, key_dim: int = 0, value_dim: int = 0,
                 grid: tuple[int, ...] | None = None, score_bias: bool = False, norm: str = "none", act: str = "none",
                 stride: int = 1, out: int = 0, reduce: tuple[str, int] = ("", 0), tokens_grid: tuple[int, ...] = (),
                 kv_norm: bool = True, proj: bool = True) -> None:
        super().__init__()
        self.heads, self.grid, self.stride = heads, grid, stride
        self.reduce, self.tokens_grid = reduce, tokens_grid
        self.kd, self.vd = key_dim or c // heads, value_dim or c // heads  # (LeViT: q, k of key_dim; v attn_ratio x)
        keys, values, out = heads * self.kd, heads * self.vd, out or c
        projections = []  # (LeViT, Graham et al. 2021, section 4: q from the grid subsampled by the stride)
        if reduce[0]:  # keys and values from a reduced sequence (PVT, Twins, Next-ViT): q and kv projections
            self.q = nn.Linear(c, c, bias=bias and qkv_bias)
            self.kv = nn.Linear(c, 2 * c, bias=bias and qkv_bias)
            if reduce[0] != "avg":  # PVT's spatial reduction: a conv of kernel = stride r (1x1 after a pool)
                r = reduce[1] if reduce[0] == "sr" else 1
                self.sr = nn.Conv2d(c, c, r, stride=r)
            self.norm: nn.Module | None = nn.LayerNorm(c) if reduce[0] != "avg" else (
                nn.BatchNorm1d(c) if kv_norm else None)
        else:
            if stride > 1:
                self.q = nn.Linear(c, keys, bias=bias and qkv_bias)
                self.q_bn = nn.BatchNorm1d(keys) if norm == "batchnorm" else None
                projections.append(keys)
            self.in_proj = nn.Linear(c, keys * (1 if stride > 1 else 2) + values, bias=bias and qkv_bias)
            self.in_bn = nn.BatchNorm1d(self.in_proj.out_features) if norm == "batchnorm" else None
        self.act = {"hardswish": nn.Hardswish(), "silu": nn.SiLU()}.get(act, nn.Identity())
        # (qkv_bias false: the output's bias only; proj false: no output projection, the joined heads are the output)
        self.out_proj: nn.Module = nn.Linear(values, out, bias=bias) if proj else nn.Identity()
        self.out_bn = nn.BatchNorm1d(out) if norm == "batchnorm" and proj else None  # (its norm with it)
        if score_bias:  # LeViT (section 4.2): a bias per head and |offset| on the grid, queries at (s y, s x)
            assert grid is not None
            self.table = nn.Parameter(torch.randn(heads, grid[0] * grid[1]))
            ys, xs = torch.arange(grid[0]).repeat_interleave(grid[1]), torch.arange(grid[1]).repeat(grid[0])
            on = ((ys % stride == 0) & (xs % stride == 0)).nonzero().flatten()
            self.register_buffer("index", (ys[on, None] - ys).abs() * grid[1] + (xs[on, None] - xs).abs())
        else:
            self.table = None

    @staticmethod
    def _bn(bn: nn.Module | None, t: torch.Tensor) -> torch.Tensor:
        return t if bn is None else bn(t.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if self.reduce[0]:
            how, size = self.reduce
            if how == "avg":  # runs of `size` tokens averaged, then the batch norm over the channels
                s = F.avg_pool1d(x.transpose(1, 2), size)
                s = (self.norm(s) if self.norm is not None else s).transpose(1, 2)
            else:
                g = x.transpose(1, 2).reshape(b, c, *self.tokens_grid)
                g = self.sr(F.adaptive_avg_pool2d(g, size) if how == "pool" else g)
                s = self.norm(g.flatten(2).transpose(1, 2))  # type: ignore[misc]
                s = F.gelu(s) if how == "pool" else s
            q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
            k, v = (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in self.kv(s).split(c, -1))
            weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(c // self.heads), dim=-1)
            return self.out_proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, n, c))
        h, kd, vd = self.heads, self.kd, self.vd
        if self.stride > 1:
            assert self.grid is not None
            grid = x.reshape(b, self.grid[0], self.grid[1], c)
            q = self._bn(self.q_bn, self.q(grid[:, ::self.stride, ::self.stride].reshape(b, -1, c)))
            k, v = self._bn(self.in_bn, self.in_proj(x)).split([h * kd, h * vd], dim=-1)
        else:
            q, k, v = self._bn(self.in_bn, self.in_proj(x)).split([h * kd, h * kd, h * vd], dim=-1)
        nq = q.shape[1]
        q = q.reshape(b, nq, h, kd).transpose(1, 2)
        k, v = (t.reshape(b, n, h, -1).transpose(1, 2) for t in (k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(kd)
        if self.table is not None:
            rows = self.index.flatten()[None].expand(h, -1)
            scores = scores + torch.gather(self.table, 1, rows).view(h, nq, n)
        joined = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, nq, h * vd)
        return self._bn(self.out_bn, self.out_proj(self.act(joined)))


class CrossCovariance(nn.Module):
    """XCiT's cross-covariance attention as El-Nouby et al. write it (2021, sec. 3.2, eq. 4): per head
    softmax(tau * K_hat^T Q_hat) over the channels, Q_hat and K_hat L2-normalised along the tokens, applied to V;
    parameters in timm's order (temperature, qkv, proj)."""

    def __init__(self, c: int, heads: int, qkv_bias: bool, normalize: bool = True, scale: str = "head") -> None:
        super().__init__()
        self.heads, self.normalize, self.scale = heads, normalize, scale
        if normalize:
            self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(c, 3 * c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q, k, v = (t.reshape(b, n, self.heads, d).permute(0, 2, 3, 1) for t in self.qkv(x).split(c, dim=-1))
        if not self.normalize:  # DaViT's channel attention (Ding et al. 2022): no norms, no temperature
            q = q * (1 / math.sqrt(d if self.scale == "head" else n))
            weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
            return self.proj(torch.matmul(weights, v).permute(0, 3, 1, 2).reshape(b, n, c))
        q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.temperature, dim=-1)
        return self.proj(torch.matmul(weights, v).permute(0, 3, 1, 2).reshape(b, n, c))


class SeparableSelfAttention(nn.Module):
    """MobileViT-v2's separable self-attention as Mehta & Rastegari write it (2022, sec. 3.2, fig. 1c): the grid
    unfolded into P = ph x pw sequences of N = (H / ph)(W / pw) tokens (the same position in every patch); a 1 x 1
    conv to 1 + 2C channels (the scores, k, v); per sequence the context scores softmax(scores) over its N tokens,
    the context vector sum_n k_n x score_n, ReLU(v) x the context vector, a 1 x 1 output conv; folded back.
    Parameters in the paper's order (the input branches, then the output projection)."""

    def __init__(self, c: int, patch: tuple[int, int], bias: bool) -> None:
        super().__init__()
        self.patch = patch
        self.qkv_proj = nn.Conv2d(c, 1 + 2 * c, 1, bias=bias)
        self.out_proj = nn.Conv2d(c, c, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ph, pw = self.patch
        nh, nw = h // ph, w // pw

        def unfold(t: torch.Tensor) -> torch.Tensor:  # B x C' x H x W -> B x C' x P x N
            return t.reshape(b, -1, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4).reshape(b, -1, ph * pw, nh * nw)

        y = unfold(self.qkv_proj(x))
        scores, k, v = y[:, :1], y[:, 1:1 + c], y[:, 1 + c:]
        context = (k * torch.softmax(scores, dim=-1)).sum(dim=-1, keepdim=True)  # B x C x P x 1
        out = F.relu(v) * context  # B x C x P x N
        out = out.reshape(b, c, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.out_proj(out)


class AdditiveAttn(nn.Module):
    """SwiftFormer's efficient additive attention as Shaker et al. write it (2023, sec. 3.2, eq. 4-6): the
    normalised queries' scores against a learned vector w_a, scaled by 1/sqrt(d) and normalised over the tokens,
    pool the queries into one global query; its elementwise product with each normalised key is transformed and
    added to the queries, then a final linear; parameters in timm's order (to_query, to_key, w_g, proj, final)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.to_query, self.to_key = nn.Linear(c, c), nn.Linear(c, c)
        self.w_g = nn.Parameter(torch.randn(c, 1))
        self.proj, self.final = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def unit(t: torch.Tensor, dim: int) -> torch.Tensor:
            return t / t.norm(dim=dim, keepdim=True).clamp(min=1e-12)

        q, k = unit(self.to_query(x), -1), unit(self.to_key(x), -1)
        alpha = unit(torch.einsum("bnc,co->bno", q, self.w_g) / math.sqrt(x.shape[-1]), 1)
        pooled = (alpha * q).sum(dim=1, keepdim=True)
        return self.final(self.proj(pooled * k) + q)


class ClassAttn(nn.Module):
    """CaiT's class attention as Touvron et al. write it (2021, sec. 3, eq. 5-6): the class token's query against
    every token's key, softmax(q K^T / sqrt(d)) V per head, projected; q, k, v and the projection in timm's order."""

    def __init__(self, c: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(c, c, bias=qkv_bias) for _ in range(3))
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x[:, :1]).reshape(b, 1, self.heads, d).transpose(1, 2)
        k, v = (f(x).reshape(b, n, self.heads, d).transpose(1, 2) for f in (self.k, self.v))
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d), dim=-1)
        return self.proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, 1, c))


class FourierPositions(nn.Module):
    """The sine-cosine position encoding of Vaswani et al. (2017, sec. 3.5) on a 2-D grid as XCiT uses it: per
    position y, x in 1..H, 1..W, scaled to (0, 2 pi], the features sin / cos(pos / T^(2 floor(i / 2) / D)) for
    i < D alternating sin (even i) and cos (odd i), rows' then columns', projected by a 1 x 1 conv and added."""

    def __init__(self, a: dict[str, Any], s: Any) -> None:
        super().__init__()
        self.grid, self.dim, self.temperature, self.once = s.grid, a["hidden_dim"], a["temperature"], a["once"]
        self.token_projection = nn.Conv2d(2 * self.dim, s[1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        ys = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * 2 * math.pi
        xs = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * 2 * math.pi
        i = torch.arange(self.dim)
        freq = self.temperature ** (2 * (i // 2) / self.dim)

        def encode(p: torch.Tensor) -> torch.Tensor:  # H x W -> D x H x W
            angle = p[None] / freq[:, None, None]
            return torch.where((i % 2 == 0)[:, None, None], torch.sin(angle), torch.cos(angle))

        pos = torch.cat([encode(ys), encode(xs)])[None]
        if not self.once:
            pos = pos.expand(x.shape[0], -1, -1, -1)
        return x + self.token_projection(pos).flatten(2).transpose(1, 2)


class ContextPool(nn.Module):
    """GCNet's attention pooling (Cao et al. 2019, Fig. 4(a), "context modeling"): a logit per position from a
    weighted sum of its channels, softmax over all positions, then each channel's softmax-weighted sum."""

    def __init__(self, c: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c, *(1,) * rank))  # (a 1x1 conv's weight: 1 x C x 1 ...)
        self.bias = nn.Parameter(torch.randn(1)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # B x C x P
        logits = torch.bmm(self.weight.flatten().expand(x.shape[0], 1, -1), flat)  # B x 1 x P
        if self.bias is not None:
            logits = logits + self.bias
        weights = torch.softmax(logits, dim=2)
        return torch.bmm(flat, weights.transpose(1, 2)).reshape(*x.shape[:2], *(1,) * (x.dim() - 2))


class LinearAttention(nn.Module):
    """EfficientViT's ReLU linear attention (Cai et al. 2023, eq. 3 and 4: O_i = ReLU(Q_i) (sum_j ReLU(K_j)^T V_j) /
    ReLU(Q_i) (sum_j ReLU(K_j)^T), the sums over positions computed once), per head of [q, k, v] channels."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.d, self.eps = d, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d = x.shape[0], x.shape[1], self.d
        heads = x.flatten(2).reshape(b, c // (3 * d), 3, d, -1)  # B x h x [q, k, v] x d x N
        q, k, v = torch.relu(heads[:, :, 0]), torch.relu(heads[:, :, 1]), heads[:, :, 2]
        v1 = torch.cat([v, torch.ones_like(v[:, :, :1])], dim=2)  # the row of ones gives the normaliser
        kv = k @ v1.transpose(2, 3)  # B x h x d x (d + 1): sum_j K_j^T [V_j, 1]
        out = (q.transpose(2, 3) @ kv).transpose(2, 3)  # B x h x (d + 1) x N
        return (out[:, :, :d] / (out[:, :, d:] + self.eps)).reshape(b, c // 3, *x.shape[2:])


class MeanToken(nn.Module):
    """The mean of the tokens put before them (CLIP's attention pool, Radford et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.sum(1, keepdim=True) / x.shape[1], x], dim=1)


class HeadPool(nn.Module):
    """MViT's pooling of one of q, k, v (Fan et al. 2021, section 3.1; padding kernel // 2): per head, the grid
    tokens convolved depthwise over a head's channels (no bias), the class token left as it is, then a layer norm
    over the head's channels of every token."""

    def __init__(self, d: int, kernel: tuple[int, ...], stride: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, 1, *kernel))
        self.norm = nn.LayerNorm(d, eps=eps)
        self.stride = stride

    def forward(self, x: torch.Tensor, grid: tuple[int, ...], cls: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        b, h, n, d = x.shape
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(grid) - 1]
        cells = x[:, :, cls:].permute(0, 1, 3, 2).reshape(b * h, d, *grid)
        pooled = conv(cells, self.weight, None, self.stride, [k // 2 for k in self.weight.shape[2:]], 1, d)
        out_grid = tuple(pooled.shape[2:])
        pooled = pooled.reshape(b, h, d, -1).permute(0, 1, 3, 2)
        return self.norm(torch.cat([x[:, :, :cls], pooled], dim=2)), out_grid


def _offsets(q: int, k: int) -> torch.Tensor:
    """MViTv2 (Li et al. 2022, section 3.1): the table row of query position i and key position j along one axis,
    with the coarser grid's positions scaled to the finer one's: i * max(k / q, 1) - j * max(q / k, 1), shifted by
    (k - 1) * max(q / k, 1) so that the first row is 0."""
    rows = [[round(i * max(k / q, 1) - j * max(q / k, 1) + (k - 1) * max(q / k, 1)) for j in range(k)]
            for i in range(q)]
    return torch.tensor(rows)


class PooledAttention(nn.Module):
    """Multiscale attention (Fan et al. 2021; MViTv2, Li et al. 2022): q, k, v from one linear layer, each pooled
    (HeadPool), per head softmax(Q K^T / sqrt(d) + the decomposed relative position term) V, plus the pooled q
    on the grid tokens (residual pooling), the heads joined and projected."""

    def __init__(self, a: dict[str, Any], s: Any) -> None:
        super().__init__()
        c, grid = s[1], tuple(s.grid)
        self.cls = s[0] - math.prod(grid)
        self.dim = a["output_dim"] or c
        self.heads = a["num_heads"]
        d = self.dim // self.heads
        rank = len(grid)

        def axes(v: Any) -> tuple[int, ...]:
            return tuple(v) if isinstance(v, tuple) else (v,) * rank

        def out(kernel: Any, stride: Any) -> tuple[int, ...]:
            return tuple((w + 2 * (k // 2) - k) // st + 1 for w, k, st in zip(grid, axes(kernel), axes(stride)))

        self.grid, self.a = grid, a
        gq, gk = out(a["kernel_q"], a["stride_q"]), out(a["kernel_kv"], a["stride_kv"])
        if a["rel_pos"]:
            self.rel_t = nn.Parameter(torch.randn(2 * max(gq[0], gk[0]) - 1, d))
            self.rel_h = nn.Parameter(torch.randn(2 * max(gq[1], gk[1]) - 1, d))
            self.rel_w = nn.Parameter(torch.randn(2 * max(gq[2], gk[2]) - 1, d))
        self.qkv = nn.Linear(c, 3 * self.dim)
        self.proj = nn.Linear(self.dim, self.dim)

        def pool(kernel: Any, stride: Any) -> HeadPool | None:
            if math.prod(axes(kernel)) == 1 and math.prod(axes(stride)) == 1:
                return None
            return HeadPool(d, axes(kernel), axes(stride), a["eps"])

        self.pool_q = pool(a["kernel_q"], a["stride_q"])
        self.pool_k = pool(a["kernel_kv"], a["stride_kv"])
        self.pool_v = pool(a["kernel_kv"], a["stride_kv"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d, cls = self.heads, self.dim // self.heads, self.cls
        q, k, v = (t.reshape(b, n, h, d).transpose(1, 2) for t in self.qkv(x).split(self.dim, dim=-1))
        gq = gk = self.grid
        if self.pool_k is not None and self.pool_v is not None:
            (k, gk), (v, _) = self.pool_k(k, self.grid, cls), self.pool_v(v, self.grid, cls)
        if self.pool_q is not None:
            q, gq = self.pool_q(q, self.grid, cls)
        scores = torch.matmul(q / math.sqrt(d), k.transpose(-1, -2))
        if self.a["rel_pos"]:
            (qt, qh, qw), (kt, kh, kw) = gq, gk
            rq = q[:, :, cls:].reshape(b, h, qt, qh, qw, d)
            on_t = torch.einsum("bntijd,tsd->bntijs", rq, self.rel_t[_offsets(qt, kt)])
            on_h = torch.einsum("bntijd,isd->bntijs", rq, self.rel_h[_offsets(qh, kh)])
            on_w = torch.einsum("bntijd,jsd->bntijs", rq, self.rel_w[_offsets(qw, kw)])
            term = (on_t[..., :, None, None] + on_h[..., None, :, None] + on_w[..., None, None, :])
            scores = scores.clone()
            scores[:, :, cls:, cls:] = scores[:, :, cls:, cls:] + term.reshape(b, h, qt * qh * qw, kt * kh * kw)
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        if self.a["residual_pool"]:
            y = torch.cat([y[:, :, :cls], y[:, :, cls:] + q[:, :, cls:]], dim=2)
        return self.proj(y.transpose(1, 2).reshape(b, -1, self.dim))


class TokenMaxPool(nn.Module):
    """Max pooling of the grid tokens (nn.MaxPool by the grid's rank), the class token put back first."""

    def __init__(self, a: dict[str, Any], s: Any) -> None:
        super().__init__()
        self.grid, self.cls = tuple(s.grid), s[0] - math.prod(s.grid)
        pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[len(self.grid) - 1]
        self.pool = pool(a["kernel_size"], a["stride"], a["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        grid = self.pool(x[:, self.cls:].transpose(1, 2).reshape(b, c, *self.grid))
        return torch.cat([x[:, :self.cls], grid.flatten(2).transpose(1, 2)], dim=1)


class SeparablePositions(nn.Module):
    """MViT's position embedding (Fan et al. 2021, sec. 4.1): token (t, p) of the T x P grid gets temporal[t] +
    spatial[p]; the class token its own vector."""

    def __init__(self, s: Any) -> None:
        super().__init__()
        t, p = s.grid[0], math.prod(s.grid[1:])
        self.spatial = nn.Parameter(torch.randn(p, s[1]))
        self.temporal = nn.Parameter(torch.randn(t, s[1]))
        self.cls = nn.Parameter(torch.randn(s[1])) if s[0] > t * p else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = (self.temporal[:, None, :] + self.spatial[None, :, :]).flatten(0, 1)
        if self.cls is not None:
            table = torch.cat([self.cls[None], table])
        return x + table


class Tokenized(nn.Module):
    """A learned tensor of the given shape, put before the tokens (a class token) or added to them."""

    def __init__(self, shape: tuple[int, ...], first: bool) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(*shape))
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            return torch.cat([self.value.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.value


class _WindowAttention(nn.Module):
    """Swin's window attention (Liu et al. 2021, Sec. 3.2: W-MSA and SW-MSA with a relative position bias; V2, Liu
    et al. 2022, Sec. 3.1-3.2: scaled cosine attention and the log-spaced continuous position bias), written the
    slow way: the grid padded with zeros and rolled, then each window attends on its own in a loop, the bias looked
    up pair by pair, the shifted windows' mask from each token's region of the rolled grid. On a T x H x W grid the
    same with 3-D windows (the video Swin, Liu et al. 2022, Sec. 3.2: a (2P-1)(2M-1)(2M-1) table); `shrink`: a
    window longer than the grid cut to it, the bias read from the configured window's index's first M rows and
    columns (torchvision's SwinTransformer3d)."""

    def __init__(self, c: int, grid: tuple[int, ...], heads: int, window: tuple[int, ...], shift: tuple[int, ...],
                 bias: bool, v2: bool, shrink: bool = False) -> None:
        super().__init__()
        full = window
        if shrink:
            window = tuple(min(w, g) for w, g in zip(window, grid))
        self.c, self.grid, self.heads, self.window, self.v2 = c, grid, heads, window, v2
        self.padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, window))
        self.shift = tuple(0 if w >= p else s for w, s, p in zip(window, shift, self.padded))  # torchvision's rule
        if v2:
            self.logit_scale = nn.Parameter(torch.ones(heads, 1, 1))
        else:
            self.table = nn.Parameter(torch.randn(math.prod(2 * w - 1 for w in full), heads))
        self.qkv = nn.Linear(c, 3 * c, bias=bias)
        self.proj = nn.Linear(c, c, bias=bias)
        if v2:
            wh, ww = window
            self.cpb = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads, bias=False))
            coords = torch.zeros(1, 2 * wh - 1, 2 * ww - 1, 2)
            for dy in range(1 - wh, wh):
                for dx in range(1 - ww, ww):
                    for axis, (d, w) in enumerate(((dy, wh), (dx, ww))):
                        r = 8 * d / (w - 1)
                        coords[0, dy + wh - 1, dx + ww - 1, axis] = math.copysign(math.log2(abs(r) + 1) / 3, r)
            self.register_buffer("coords", coords)
        pos = list(itertools.product(*(range(w) for w in full)))

        def relative(p: tuple[int, ...], q: tuple[int, ...]) -> int:
            index = 0
            for a, b, w in zip(p, q, full):
                index = index * (2 * w - 1) + a - b + w - 1
            return index

        self.register_buffer("index", torch.tensor([relative(p, q) for p in pos for q in pos]))
        self.m, self.full = math.prod(window), len(pos)

    def region(self, axis: int) -> list[int]:
        size, w, s = self.padded[axis], self.window[axis], self.shift[axis]
        return [0 if not s or r < size - w else 1 if r < size - s else 2 for r in range(size)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads, d, m, rank = self.heads, c // self.heads, self.m, len(self.grid)
        g = torch.zeros(b, *self.padded, c)
        g[(slice(None), *(slice(0, s) for s in self.grid))] = x.view(b, *self.grid, c)
        g = torch.roll(g, tuple(-s for s in self.shift), tuple(range(1, rank + 1)))
        regions = [self.region(axis) for axis in range(rank)]
        table = self.cpb(self.coords).view(-1, heads) if self.v2 else self.table
        index = self.index.view(self.full, self.full)[:m, :m].flatten()  # type: ignore[operator]
        bias = table[index].view(m, m, heads).permute(2, 0, 1)
        if self.v2:
            bias = 16 * torch.sigmoid(bias)
        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:
            qkv_bias = qkv_bias * torch.cat([torch.ones(c), torch.zeros(c), torch.ones(c)])
        out = torch.zeros(b, *self.padded, c)
        inside = list(itertools.product(*(range(w) for w in self.window)))  # a window's tokens, in order
        for origin in itertools.product(*(range(0, p, w) for p, w in zip(self.padded, self.window))):
            at = (slice(None), *(slice(o, o + w) for o, w in zip(origin, self.window)))
            t = g[at].reshape(b, m, c)
            q, k, v = (z.view(b, m, heads, d).transpose(1, 2) for z in F.linear(t, self.qkv.weight,
                                                                                 qkv_bias).split(c, -1))
            if self.v2:
                logits = torch.matmul(q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                                      (k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)).transpose(-1, -2))
                logits = logits * self.logit_scale.clamp(max=math.log(100)).exp()
            else:
                logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
            label = torch.tensor([sum(regions[a][o + p[a]] * 3 ** (rank - 1 - a) for a, o in enumerate(origin))
                                  for p in inside])
            mask = (label[:, None] != label[None, :]).float() * -100.0
            weights = torch.softmax(logits + bias + mask, dim=-1)
            out[at] = self.proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, m, c)).view(
                b, *self.window, c)
        out = torch.roll(out, self.shift, tuple(range(1, rank + 1)))
        return out[(slice(None), *(slice(0, s) for s in self.grid))].reshape(b, n, c)


def _patch_merging(a: dict[str, Any], s: Any) -> nn.Module:
    """Each 2 x 2 block of the zero-padded grid, its four tokens' channels in the order (0, 0), (1, 0), (0, 1),
    (1, 1) (row, column: torchvision's _patch_merging_pad); on a T x H x W grid, each frame's (the video Swin)."""
    *t, h, w = s.grid

    def merge(x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        g = torch.zeros(b, *t, h + h % 2, w + w % 2, c)
        g[..., :h, :w, :] = x.view(b, *t, h, w, c)
        blocks = [g[..., dy::2, dx::2, :] for dx in (0, 1) for dy in (0, 1)]
        return torch.cat(blocks, dim=-1).reshape(b, -1, 4 * c)

    return Lambda(merge)


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(2, len(shape) + 1))




class _PartitionAttention(nn.Module):
    """Swin's window attention (Liu et al. 2021, Sec. 3.2: W-MSA and SW-MSA with a relative position bias; V2, Liu
    et al. 2022, Sec. 3.1-3.2: scaled cosine attention and the log-spaced continuous position bias), written the
    slow way: the grid padded with zeros and rolled, then each window attends on its own in a loop, the bias looked
    up pair by pair, the shifted windows' mask from each token's region of the rolled grid. `offsets`: TinyViT's
    LeViT-style biases (Wu et al. 2022; Graham et al. 2021, sec. 4.2), one learned bias per head and absolute offset
    (|dy|, |dx|), a w_h w_w x heads table read at |dy| w_w + |dx|; `none`: no position bias (DaViT, Twins-SVT);
    `out_features` F: the output projection C -> F, or with `expand_first` q, k, v of F channels (qkv C -> 3F,
    proj F -> F: CoAtNet's dim_out in timm)."""

    def __init__(self, c: int, grid: tuple[int, ...], heads: int, window: tuple[int, int], shift: tuple[int, int],
                 bias: bool, v2: bool, partition: str = "window", position_bias: str = "table", out: int = 0,
                 expand_first: bool = False, hidden: int = 512) -> None:
        super().__init__()
        out = out or c
        width = out if expand_first else c  # q's, k's, v's and the joined heads' channels
        self.c, self.grid, self.heads, self.window, self.v2 = c, grid, heads, window, v2
        self.width, self.out = width, out
        self.partition, self.kind = partition, "v2" if v2 else position_bias
        wh, ww = window
        self.padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, window))
        self.shift = tuple(0 if w >= p else s for w, s, p in zip(window, shift, self.padded))  # torchvision's rule
        if v2:
            self.logit_scale = nn.Parameter(torch.ones(heads, 1, 1))
        elif position_bias == "lookup":  # MaxViT's TF table (timm's RelPosBiasTf): heads x rows x columns
            self.table = nn.Parameter(torch.randn(heads, 2 * wh - 1, 2 * ww - 1))
            for name, w in (("height_lookup", wh), ("width_lookup", ww)):
                self.register_buffer(name, torch.tensor([[[float(v == x - i + w - 1) for v in range(2 * w - 1)]
                                                          for x in range(w)] for i in range(w)]))
        elif position_bias == "table":
            self.table = nn.Parameter(torch.randn((2 * wh - 1) * (2 * ww - 1), heads))
        elif position_bias == "offsets":
            self.table = nn.Parameter(torch.randn(wh * ww, heads))
        self.qkv = nn.Linear(c, 3 * width, bias=bias)
        self.proj = nn.Linear(width, out, bias=bias)
        if v2:
            self.cpb = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads, bias=False))
            coords = torch.zeros(1, 2 * wh - 1, 2 * ww - 1, 2)
            for dy in range(1 - wh, wh):
                for dx in range(1 - ww, ww):
                    for axis, (d, w) in enumerate(((dy, wh), (dx, ww))):
                        r = 8 * d / (w - 1)
                        coords[0, dy + wh - 1, dx + ww - 1, axis] = math.copysign(math.log2(abs(r) + 1) / 3, r)
            self.register_buffer("coords", coords)
        if position_bias == "mlp" and not v2:  # timm's RelPosMlp ('cr'): sign(d) ln(1 + |d|), Linear, ReLU, Linear
            coords = torch.tensor([[[math.copysign(math.log1p(abs(dy)), dy), math.copysign(math.log1p(abs(dx)), dx)]
                                    for dx in range(1 - ww, ww)] for dy in range(1 - wh, wh)])
            self.register_buffer("coords", coords)
            self.cpb = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads))
        pos = [(y, x) for y in range(wh) for x in range(ww)]
        if self.kind == "offsets":
            self.register_buffer("index", torch.tensor([abs(p[0] - q[0]) * ww + abs(p[1] - q[1])
                                                        for p in pos for q in pos]))
        elif self.kind not in ("lookup", "none"):
            self.register_buffer("index", torch.tensor([(p[0] - q[0] + wh - 1) * (2 * ww - 1) + p[1] - q[1] + ww - 1
                                                        for p in pos for q in pos]))

    def region(self, axis: int) -> list[int]:
        size, w, s = self.padded[axis], self.window[axis], self.shift[axis]
        return [0 if not s or r < size - w else 1 if r < size - s else 2 for r in range(size)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        (h, w), (hp, wp), (wh, ww), heads = self.grid, self.padded, self.window, self.heads
        width, f = self.width, self.out
        d, m = width // heads, wh * ww
        g = torch.zeros(b, hp, wp, c)
        g[:, :h, :w] = x.view(b, h, w, c)
        g = torch.roll(g, (-self.shift[0], -self.shift[1]), (1, 2))
        rows, cols = self.region(0), self.region(1)
        if self.kind == "lookup":  # B[h, (i, j), (x, y)] = table[h, x - i + wh - 1, y - j + ww - 1], as MaxViT's TF
            # code computes it: the table times the one-hot row lookup, then the column lookup (two einsums)
            rows_ = torch.einsum("nhw,ixh->nixw", self.table, self.height_lookup)
            bias = torch.einsum("nixw,jyw->nijxy", rows_, self.width_lookup).reshape(heads, m, m)
        elif self.kind == "none":
            bias = torch.zeros(heads, m, m)
        else:
            table = self.cpb(self.coords).view(-1, heads) if self.kind in ("v2", "mlp") else self.table
            bias = table[self.index].view(m, m, heads).permute(2, 0, 1)
        if self.v2:
            bias = 16 * torch.sigmoid(bias)
        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:
            qkv_bias = qkv_bias * torch.cat([torch.ones(width), torch.zeros(width), torch.ones(width)])
        out = torch.zeros(b, hp, wp, f)
        sh, sw = hp // wh, wp // ww  # a grid partition's stride (MaxViT): its groups are the tokens that far apart
        for i in range(0, hp, wh):
            for j in range(0, wp, ww):
                if self.partition == "grid":  # group (i / wh, j / ww): rows i / wh + k sh, columns j / ww + l sw
                    ys, xs = [i // wh + k * sh for k in range(wh)], [j // ww + k * sw for k in range(ww)]
                    t = g[:, ys][:, :, xs].reshape(b, m, c)
                else:
                    t = g[:, i:i + wh, j:j + ww].reshape(b, m, c)
                q, k, v = (z.view(b, m, heads, d).transpose(1, 2) for z in F.linear(t, self.qkv.weight,
                                                                                     qkv_bias).split(width, -1))
                if self.v2:
                    logits = torch.matmul(q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                                          (k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)).transpose(-1, -2))
                    logits = logits * self.logit_scale.clamp(max=math.log(100)).exp()
                else:
                    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
                label = torch.tensor([rows[i + p // ww] * 3 + cols[j + p % ww] for p in range(m)])
                mask = (label[:, None] != label[None, :]).float() * -100.0
                weights = torch.softmax(logits + bias + mask, dim=-1)
                y = self.proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, m, width)).view(b, wh, ww, f)
                if self.partition == "grid":
                    for k, row in enumerate(ys):
                        for l_, col in enumerate(xs):
                            out[:, row, col] = y[:, k, l_]
                else:
                    out[:, i:i + wh, j:j + ww] = y
        out = torch.roll(out, self.shift, (1, 2))
        return out[:, :h, :w].reshape(b, n, f)


def _two(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


class _DFL(nn.Module):
    """Ultralytics' DFL (ultralytics/nn/modules/block.py) on a (B, 4 x reg_max, *spatial) map: its forward on the
    flattened anchors, x.view(b, 4, c1, a).transpose(2, 1).softmax(1) into a 1x1 conv c1 -> 1 with the weights
    0..c1-1; a shared one takes those weights without holding them."""

    def __init__(self, reg_max: int, shared: bool) -> None:
        super().__init__()
        self.c1 = reg_max
        self.conv = None if shared else nn.Conv2d(reg_max, 1, 1, bias=False)
        if self.conv is not None:
            self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, spatial = x.shape[0], x.shape[2:]
        flat = x.flatten(2)
        a = flat.shape[2]
        bins = flat.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)
        weight = (torch.arange(self.c1, dtype=x.dtype).view(1, self.c1, 1, 1) if self.conv is None
                  else self.conv.weight)
        return F.conv2d(bins, weight).view(b, 4, *spatial)


class _PSAAttention(nn.Module):
    """Ultralytics' Attention (ultralytics/nn/modules/block.py), its Conv(act=False) written as conv + BN."""

    def __init__(self, dim: int, num_heads: int, attn_ratio: float) -> None:
        super().__init__()

        def conv_bn(c1: int, c2: int, k: int = 1, g: int = 1) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c1, c2, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2))

        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = conv_bn(dim, dim + self.key_dim * num_heads * 2)
        self.proj = conv_bn(dim, dim)
        self.pe = conv_bn(dim, dim, 3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        q, k, v = self.qkv(x).view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class _RmsNorm2d(nn.Module):
    """timm's RmsNorm2d (eps 1e-6): each position's channels divided by their root mean square, times a weight."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-6) * self.weight.view(1, -1, 1, 1)


class _MultiQueryAttention(nn.Module):
    """timm's MultiQueryAttention2d (timm/layers/attention2d.py) on its math path, written from its description:
    q a 1x1 conv to heads x key_dim; k and v each a 1x1 conv of the grid, or (kv_stride > 1) of the grid through a
    depthwise conv (padding ((s - 1) + (k - 1)) // 2) and a batch norm of their own; one key and value head
    broadcast to every query head; the heads joined (B, N, heads, vd -> channels) and a 1x1 conv."""

    def __init__(self, c: int, heads: int, key: int, value: int, stride: int, kernel: int, out: int,
                 norm: str, proj_norm: bool = False, gate: bool = False, same: bool = False) -> None:
        super().__init__()
        self.heads, self.key_dim, self.value_dim, self.gate = heads, key, value, gate

        def conv(cin: int, cout: int) -> nn.Module:  # (iFormer's ConvNorm with proj_norm)
            return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), *([nn.BatchNorm2d(cout)] if proj_norm else []))

        pad = 0 if same else (stride - 1 + kernel - 1) // 2
        self.same = (kernel, stride) if same and stride > 1 else None
        self.query = conv(c, heads * key)
        kv: list[nn.Module] = []
        for dim in (key, 2 * value if gate else value):
            normed = nn.BatchNorm2d(c) if norm == "batchnorm" else _RmsNorm2d(c)
            down = [nn.Conv2d(c, c, kernel, stride, pad, groups=c, bias=False), normed] if stride > 1 else []
            kv.append(nn.Sequential(*down, conv(c, dim)))
        self.key, self.value = kv
        self.out = conv(heads * value, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).reshape(b, self.heads, self.key_dim, h * w).transpose(-1, -2)  # B x heads x N x kd
        kv_x = x
        if self.same is not None:  # timm's Conv2dSame: (ceil(W / s) - 1) s + k - W, the smaller half before
            kernel, stride = self.same
            ph, pw = (max((math.ceil(t / stride) - 1) * stride + kernel - t, 0) for t in (h, w))
            kv_x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        k = self.key(kv_x).flatten(2).transpose(1, 2).unsqueeze(1)  # B x 1 x M x kd
        v = self.value(kv_x)
        if self.gate:  # iFormer's SHMA: v and the gate from one projection through a sigmoid
            v, gate = v.sigmoid().chunk(2, dim=1)
        v = v.flatten(2).transpose(1, 2).unsqueeze(1)
        attn = ((q * self.key_dim ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, h, w, self.heads * self.value_dim).permute(0, 3, 1, 2)
        return self.out(o * gate if self.gate else o)


class HaloAttn(nn.Module):
    """HaloNet's blocked attention (Vaswani et al. 2021) with Bello et al.'s relative logits, block by block and head
    by head: q . k / sqrt(dk) plus q times every row of the height and width tables, the rows of each key's
    offset taken; softmax; times v; one block over the grid without a halo is BoTNet's. Parameters in the
    builder's order (tables, q, kv)."""

    def __init__(self, a: dict[str, Any], s: tuple[int, ...]) -> None:
        super().__init__()
        c, self.height, self.width = s
        out, self.heads = a["out_channels"] or c, a["num_heads"]
        self.dk, self.dv = a["key_dim"] or out // self.heads, out // self.heads
        self.block = (a["block_size"],) * 2 if a["block_size"] else (self.height, self.width)
        self.halo = a["halo_size"]
        self.pool = a["stride"] == 2 and (a["avg_down"] or not a["block_size"] or a["block_size"] % 2 == 1)
        self.qs = 2 if a["stride"] == 2 and not self.pool else 1
        self.win = (self.block[0] + 2 * self.halo, self.block[1] + 2 * self.halo)
        self.height_rel = nn.Parameter(torch.randn(2 * self.win[0] - 1, self.dk))
        self.width_rel = nn.Parameter(torch.randn(2 * self.win[1] - 1, self.dk))
        self.q = nn.Conv2d(c, self.heads * self.dk, 1, stride=self.qs, bias=a["bias"])
        self.kv = nn.Conv2d(c, self.heads * (self.dk + self.dv), 1, bias=a["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        dk, dv, (bh, bw), (wh, ww) = self.dk, self.dv, self.block, self.win
        q, kv = self.q(x), F.pad(self.kv(x), [self.halo] * 4)
        qh, qw = bh // self.qs, bw // self.qs
        rows, cols = torch.arange(qh).repeat_interleave(qw), torch.arange(qw).repeat(qh)  # each query's place
        idx_h = torch.arange(wh)[None, :] - rows[:, None] + wh - 1  # queries x window rows
        idx_w = torch.arange(ww)[None, :] - cols[:, None] + ww - 1
        out = torch.zeros(b, self.heads * dv, self.height // self.qs, self.width // self.qs)
        for by in range(self.height // bh):
            for bx in range(self.width // bw):
                for h in range(self.heads):
                    qb = q[:, h * dk:(h + 1) * dk, by * qh:(by + 1) * qh, bx * qw:(bx + 1) * qw].flatten(2)
                    win = kv[:, h * (dk + dv):(h + 1) * (dk + dv), by * bh:by * bh + wh, bx * bw:bx * bw + ww]
                    k, v = win[:, :dk].flatten(2), win[:, dk:].flatten(2)
                    qt = qb.transpose(1, 2)  # b x queries x dk
                    rel_h = (qt @ self.height_rel.T).gather(2, idx_h.expand(b, -1, -1))  # b x queries x wh
                    rel_w = (qt @ self.width_rel.T).gather(2, idx_w.expand(b, -1, -1))
                    scores = (qt @ k) * dk ** -0.5 + (rel_h[:, :, :, None] + rel_w[:, :, None, :]).flatten(2)
                    y = torch.softmax(scores, -1) @ v.transpose(1, 2)  # b x queries x dv
                    out[:, h * dv:(h + 1) * dv, by * qh:(by + 1) * qh, bx * qw:(bx + 1) * qw] = y.transpose(
                        1, 2).reshape(b, dv, qh, qw)
        return F.avg_pool2d(out, 2) if self.pool else out


class LambdaRef(nn.Module):
    """A lambda layer as Bello 2021 writes it (sec. 3, 4.2): q, k, v from one 1 x 1 conv, q and v batch-normed, k
    softmax-normalised over the positions; content lambda K V^T; position lambdas from a (r, r, 1) conv over the
    grid and v's channels (the lambda convolution), or from an embedding of the relative offset of every pair of
    positions times v; y = q (content + position) per head. Parameters and buffers in the builder's order."""

    def __init__(self, a: dict[str, Any], s: tuple[int, ...]) -> None:
        super().__init__()
        c, self.height, self.width = s
        self.heads, self.dk, self.r = a["num_heads"], a["key_dim"], a["r"]
        self.dv = c // self.heads
        if not self.r:
            self.pos_emb = nn.Parameter(torch.randn(2 * self.height - 1, 2 * self.width - 1, self.dk))
            ys, xs = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
            pos = torch.stack([ys.flatten(), xs.flatten()])
            offset = pos[:, None, :] - pos[:, :, None]  # [:, n, m]: key m's place less query n's
            self.register_buffer("index", offset + torch.tensor([self.height - 1, self.width - 1])[:, None, None])
        self.qkv = nn.Conv2d(c, self.heads * self.dk + self.dk + self.dv, 1, bias=a["bias"])
        self.norm_q = nn.BatchNorm2d(self.heads * self.dk)
        self.norm_v = nn.BatchNorm2d(self.dv)
        if self.r:
            self.conv = nn.Conv3d(1, self.dk, (self.r, self.r, 1), padding=(self.r // 2, self.r // 2, 0))
        self.pool = a["stride"] == 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        hk, dk = self.heads * self.dk, self.dk
        qkv = self.qkv(x)
        q = self.norm_q(qkv[:, :hk]).reshape(b, self.heads, dk, -1)  # b x h x dk x M
        k = torch.softmax(qkv[:, hk:hk + dk].flatten(2), -1)  # b x dk x M
        v = self.norm_v(qkv[:, hk + dk:])  # b x dv x H x W
        content = torch.einsum("bkm,bvm->bkv", k, v.flatten(2))
        if self.r:
            position = self.conv(v.permute(0, 2, 3, 1)[:, None]).flatten(2, 3)  # b x dk x M x dv
        else:
            emb = self.pos_emb[self.index[0], self.index[1]]  # M x M x dk
            position = torch.einsum("nmk,bvm->bknv", emb, v.flatten(2))
        y = torch.einsum("bhkn,bkv->bhvn", q, content) + torch.einsum("bhkn,bknv->bhvn", q, position)
        y = y.reshape(b, c, height, width)
        return F.avg_pool2d(y, 2) if self.pool else y


class BatRef(nn.Module):
    """BAT's bilinear attention transform (Zheng et al. 2020): per group b x b matrices from the row and column max
    pools of a 1 x 1 conv's output, normalised; per channel y = kron(P, I) x kron(Q, I); a 1 x 1 conv. Parameters
    and buffers in the builder's order (conv1, its norm, conv_p, conv_q, conv2, its norm)."""

    def __init__(self, a: dict[str, Any], s: tuple[int, ...]) -> None:
        super().__init__()
        c = s[0]
        self.g, self.b = a["groups"], a["block_size"]
        self.conv1, self.bn1 = nn.Conv2d(c, self.g, 1, bias=False), nn.BatchNorm2d(self.g)
        self.conv_p = nn.Conv2d(self.g, self.b * self.b * self.g, (self.b, 1))
        self.conv_q = nn.Conv2d(self.g, self.b * self.b * self.g, (1, self.b))
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        g, b = self.g, self.b
        out = torch.relu(self.bn1(self.conv1(x)))
        p = self.conv_p(F.adaptive_max_pool2d(out, (b, 1))).view(n, g, b, b).sigmoid()
        q = self.conv_q(F.adaptive_max_pool2d(out, (1, b))).view(n, g, b, b).sigmoid()
        p, q = p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)
        per = c // g
        big_p = torch.stack([torch.kron(p[i, ch // per], torch.eye(height // b)) for i in range(n) for ch in range(c)])
        big_q = torch.stack([torch.kron(q[i, ch // per], torch.eye(width // b)) for i in range(n) for ch in range(c)])
        y = (big_p @ x.reshape(n * c, height, width) @ big_q).reshape(n, c, height, width)
        return torch.relu(self.bn2(self.conv2(y)))


class _CascadedAttention(nn.Module):
    """EfficientViT's cascaded group attention in local windows (Liu et al. 2023, sec. 3.2, eq. 3-4 and fig. 4):
    the windows are the grid split into w x w tiles after zero-padding; head j attends over x_j + the previous
    head's output (X~_j = Attn(X_j W^Q, X_j W^K, X_j W^V), X_j' = X_j + X~_{j-1}); q, k and v are 1 x 1 conv + BN
    ("Conv-BN" throughout), a depthwise conv + BN refines q ("token interaction"), a learned bias per head and
    relative offset (|dy|, |dx|) joins the scores (LeViT's attention bias); the heads are concatenated and
    projected after ReLU."""

    def __init__(self, c: int, heads: int, kd: int, window: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.heads, self.kd, self.window, self.ci = heads, kd, window, c // heads
        self.biases = nn.Parameter(torch.zeros(heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        dy = (ys.flatten()[:, None] - ys.flatten()[None, :]).abs()
        dx = (xs.flatten()[:, None] - xs.flatten()[None, :]).abs()
        self.register_buffer("offset", dy * window + dx, persistent=False)

        def conv_bn(cin: int, cout: int, k: int = 1, g: int = 1) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout))
        self.qkv = nn.ModuleList(conv_bn(self.ci, 2 * kd + self.ci) for _ in range(heads))
        self.token = nn.ModuleList(conv_bn(kd, kd, k, kd) for k in kernels)
        self.out = nn.Sequential(nn.ReLU(), conv_bn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.window
        ph, pw = math.ceil(h / s) * s, math.ceil(w / s) * s
        tiles = F.pad(x, (0, pw - w, 0, ph - h)).unfold(2, s, s).unfold(3, s, s)  # b, c, nh, nw, s, s
        nh, nw = tiles.shape[2], tiles.shape[3]
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * nh * nw, c, s, s)
        heads, prev = [], None
        for j in range(self.heads):
            xj = tiles[:, j * self.ci:(j + 1) * self.ci]
            if prev is not None:
                xj = xj + prev
            q, k, v = self.qkv[j](xj).split([self.kd, self.kd, self.ci], dim=1)
            q = self.token[j](q)
            scores = torch.einsum("nci,ncj->nij", q.flatten(2), k.flatten(2)) / math.sqrt(self.kd)
            attn = (scores + self.biases[j][self.offset]).softmax(-1)
            prev = torch.einsum("ncj,nij->nci", v.flatten(2), attn).reshape(-1, self.ci, s, s)
            heads.append(prev)
        y = self.out(torch.cat(heads, 1)).reshape(b, nh, nw, c, s, s).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(b, c, ph, pw)[:, :, :h, :w]


class TalkingHeadsAttention(nn.Module):
    """EfficientFormer-V2's attention, from the paper (Li et al. 2023, Sec. 3 and Fig. 2: "MHSA with ... talking
    heads", a local value branch, and for downsampling the local-global query: Q = pooled x + depthwise-conv x),
    on a B x C x H x W grid. Its parameters and buffers are registered in archcalc's order (q's local conv first
    with downsample; then q, k, v, v_local, each a conv with bias and a batch norm; the two talking-head convs; the
    table and its index); the scores and A V as matrix products of q^T k and V A^T, the bias a dense matrix
    indexed from the table."""

    def __init__(self, c: int, heads: int, key: int, value: int, size: tuple[int, int], talking: bool,
                 down: bool) -> None:
        super().__init__()
        self.heads, self.key, self.talking, self.down = heads, key, talking, down
        if down:
            self.local_q = nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c)
        self.q_conv, self.q_bn = nn.Conv2d(c, heads * key, 1), nn.BatchNorm2d(heads * key)
        self.k_conv, self.k_bn = nn.Conv2d(c, heads * key, 1), nn.BatchNorm2d(heads * key)
        self.v_conv, self.v_bn = nn.Conv2d(c, heads * value, 1), nn.BatchNorm2d(heads * value)
        self.l_conv = nn.Conv2d(heads * value, heads * value, 3, stride=2 if down else 1, padding=1,
                                groups=heads * value)
        self.l_bn = nn.BatchNorm2d(heads * value)
        if talking:
            self.pre = nn.Conv2d(heads, heads, 1)
            self.post = nn.Conv2d(heads, heads, 1)
        h, w = size
        self.table = nn.Parameter(torch.randn(heads, h * w))
        step = 2 if down else 1
        keys = [(i, j) for i in range(h) for j in range(w)]
        queries = [(i, j) for i in range(0, h, step) for j in range(0, w, step)]
        self.register_buffer("offsets", torch.tensor([[abs(a - y) * w + abs(b - x) for (y, x) in keys]
                                                      for (a, b) in queries]))
        self.grid = ((h + 1) // 2, (w + 1) // 2) if down else (h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        query = self.local_q(x) + F.avg_pool2d(x, 1, 2) if self.down else x
        q = self.q_bn(self.q_conv(query)).reshape(b, self.heads, self.key, -1)
        k = self.k_bn(self.k_conv(x)).reshape(b, self.heads, self.key, -1)
        v_grid = self.v_bn(self.v_conv(x))
        v = v_grid.reshape(b, self.heads, -1, k.shape[-1])
        local = self.l_bn(self.l_conv(v_grid))
        scores = q.transpose(-2, -1) @ k / math.sqrt(self.key) + self.table[:, self.offsets]  # type: ignore[index]
        if self.talking:
            scores = self.pre(scores)
        weights = scores.softmax(-1)
        if self.talking:
            weights = self.post(weights)
        out = (v @ weights.transpose(-2, -1)).reshape(b, -1, *self.grid)
        return out + local


class _GlobalQueryAttention(nn.Module):
    """GCViT's global query attention (Hatamizadeh et al. 2023, Sec. 3.2, Fig. 4: "global query tokens ... shared
    across all local windows"; keys and values from each local window; Swin's relative position bias), written the
    slow way: the input is [the M global query tokens ; the grid's N tokens]; each w_h x w_w window of the grid in a
    loop, its keys and values from one linear (C -> 2C), the queries the global tokens unchanged, per head
    softmax(q k^T / sqrt(d) + B) v with B looked up pair by pair from a (2w_h-1)(2w_w-1) x heads table, the heads
    joined and projected (C -> C), each token written back to its place in the grid."""

    def __init__(self, c: int, grid: tuple[int, ...], heads: int, window: tuple[int, int], qkv_bias: bool) -> None:
        super().__init__()
        self.c, self.grid, self.heads, self.window = c, grid, heads, window
        self.kv = nn.Linear(c, 2 * c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        wh, ww = window
        self.table = nn.Parameter(torch.randn((2 * wh - 1) * (2 * ww - 1), heads))
        pos = [(y, x) for y in range(wh) for x in range(ww)]
        self.register_buffer("index", torch.tensor([(p[0] - r[0] + wh - 1) * (2 * ww - 1) + p[1] - r[1] + ww - 1
                                                    for p in pos for r in pos]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        (wh, ww), (h, w), heads = self.window, self.grid, self.heads
        m, d = wh * ww, c // heads
        queries, grid = x[:, :m], x[:, m:].reshape(b, h, w, c)
        bias = self.table[self.index].view(m, m, heads).permute(2, 0, 1)
        out = torch.empty(b, h, w, c)
        for i in range(0, h, wh):
            for j in range(0, w, ww):
                k, v = self.kv(grid[:, i:i + wh, j:j + ww].reshape(b, m, c)).chunk(2, dim=-1)
                heads_out = []
                for n in range(heads):
                    part = slice(n * d, (n + 1) * d)
                    scores = queries[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d) + bias[n]
                    heads_out.append(scores.softmax(-1) @ v[..., part])
                out[:, i:i + wh, j:j + ww] = self.proj(torch.cat(heads_out, -1)).view(b, wh, ww, c)
        return out.reshape(b, h * w, c)


REFERENCES: dict[str, Callable[[dict[str, Any], tuple[int, ...]], nn.Module]] = {
    "adaptive_avgpool": lambda a, s: _nd("AdaptiveAvgPool", len(s) - 1)(a["output_size"]),
    "adaptive_maxpool": lambda a, s: _nd("AdaptiveMaxPool", len(s) - 1)(a["output_size"]),
    "avgpool": _avgpool,
    "batchnorm": _batchnorm,
    "bias": _bias,
    "channel_layernorm": lambda a, s: ChannelsLastLayerNorm(s[0], eps=a["eps"],
                                                            elementwise_affine=a["elementwise_affine"],
                                                            bias=a["bias"]),
    "blur_pool": lambda a, s: _Blur(a, s),
    "channel_shuffle": lambda a, s: nn.ChannelShuffle(a["groups"]),
    "channel_slice": lambda a, s: Lambda(lambda x: x[:, a["start"]:a["stop"]]),
    "conv": _conv,
    "conv_transpose": lambda a, s: _nd("ConvTranspose", len(s) - 1)(
        s[0], a["out_channels"], a["kernel_size"], stride=a["stride"], padding=a["padding"],
        output_padding=a["output_padding"], groups=a["groups"], bias=a["bias"], dilation=a["dilation"]),
    "crop": _crop,
    "dfl": lambda a, s: _DFL(a["reg_max"], a["shared"]),
    "dropout": lambda a, s: nn.Dropout(a["p"]),
    "elu": lambda a, s: nn.ELU(a["alpha"]),
    "flatten": lambda a, s: nn.Flatten(),
    "reshape": lambda a, s: Lambda(lambda x: x.view(x.shape[0], *a["shape"], *s[len(s) - a["keep"]:])),
    "gelu": lambda a, s: nn.GELU(approximate=a["approximate"]),
    "global_avgpool": lambda a, s: _nd("AdaptiveAvgPool", len(s) - 1)(1),
    "global_maxpool": lambda a, s: _nd("AdaptiveMaxPool", len(s) - 1)(1),
    "grn": lambda a, s: GlobalResponseNorm(s[0], a["eps"]),
    "frn": lambda a, s: FilterResponseNorm(s[0], a["eps"], a["tlu"]),
    "rmsnorm": lambda a, s: ChannelRMSNorm(s[0], a),
    "evonorm_s0": lambda a, s: EvoNormS0(s[0], a["groups"], a["eps"], a["act"]),
    "groupnorm": lambda a, s: nn.GroupNorm(a["num_groups"], s[0], eps=a["eps"], affine=a["affine"],
                                           bias=a["bias"]),
    "hardsigmoid": lambda a, s: nn.Hardsigmoid(),
    "hardswish": lambda a, s: nn.Hardswish(),
    "identity": lambda a, s: nn.Identity(),
    "layer_scale": lambda a, s: Scale(_per(a["per"], s), a["init"]),
    "scalar": lambda a, s: Constant(a["op"], a["value"]),
    "layernorm": lambda a, s: nn.LayerNorm((s[1] if isinstance(s, Tokens) else s) if a["normalized_shape"] is None
                                           else a["normalized_shape"], eps=a["eps"],
                                           elementwise_affine=a["elementwise_affine"], bias=a["bias"]),
    "to_tokens": lambda a, s: Lambda(lambda x: x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)),
    "to_grid": lambda a, s: Lambda(lambda x: x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], *(
        s.grid if a["size"] is None else (a["size"],) if isinstance(a["size"], int) else a["size"]))),
    "class_token": lambda a, s: MeanToken() if a["mean"] else Tokenized((1, a["count"], s[1]), first=True),
    "pos_embed": lambda a, s: Tokenized((1, *s), first=False),
    "take_token": lambda a, s: Lambda(lambda x: x[:, a["index"]] if a["stop"] is None else x.narrow(
        1, a["index"], a["stop"] - a["index"])),
    "self_attention": lambda a, s: Attention(s[1], a["num_heads"], a["bias"], a["qkv_bias"], a["key_dim"],
                                             a["value_dim"], s.grid, a["score_bias"], a["norm"], a["act"],
                                             a["stride"], a["out_features"], (
        ("sr", a["sr_ratio"]) if a["sr_ratio"] > 1 else ("pool", a["kv_pool"]) if a["kv_pool"] else
        ("avg", a["kv_avgpool"]) if a["kv_avgpool"] else ("", 0)), s.grid, a["kv_norm"], a["proj"]),
    "pooled_attention": PooledAttention,
    "token_maxpool": TokenMaxPool,
    "separable_pos_embed": lambda a, s: SeparablePositions(s),
    "xca": lambda a, s: CrossCovariance(s[1], a["num_heads"], a["qkv_bias"], a["normalize"], a["scale"]),
    "halo_attention": HaloAttn,
    "lambda_layer": LambdaRef,
    "bilinear_attention": BatRef,
    "channel_dropout": lambda a, s: nn.Dropout2d(a["p"]),
    "effv2_attention": lambda a, s: TalkingHeadsAttention(s[0], a["num_heads"], a["key_dim"], a["value_dim"],
                                                          (s[1], s[2]), a["talking_heads"], a["downsample"]),
    "fourier_pos_embed": FourierPositions,
    "additive_attention": lambda a, s: AdditiveAttn(s[1]),
    "separable_attention": lambda a, s: SeparableSelfAttention(s[0], _two(a["patch"]), a["bias"]),
    "class_attention": lambda a, s: ClassAttn(s[1], a["num_heads"], a["qkv_bias"]),
    "context_pool": lambda a, s: ContextPool(s[0], len(s) - 1, a["bias"]),
    "linear_attention": lambda a, s: LinearAttention(a["head_dim"], a["eps"]),
    "leaky_relu": lambda a, s: nn.LeakyReLU(a["negative_slope"]),
    "linear": _linear,
    "lrn": lambda a, s: nn.LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"]),
    "maxout": lambda a, s: Lambda(lambda x: x.unflatten(1, (s[0] // a["pieces"], a["pieces"])).amax(2)),
    "maxpool": _maxpool,
    "mean": lambda a, s: Lambda(lambda x: x.mean(_spatial(s), keepdim=a["keepdim"])),
    "pixel_shuffle": lambda a, s: nn.PixelShuffle(a["upscale_factor"]),
    "pixel_unshuffle": lambda a, s: nn.PixelUnshuffle(a["downscale_factor"]),
    "sum": lambda a, s: Lambda(lambda x: torch.sum(x, a["dim"], keepdim=a["keepdim"])),
    "transpose": lambda a, s: Lambda(lambda x: torch.transpose(x, a["dim0"], a["dim1"])),
    # tf.nn.space_to_depth's order: block row, block column, then channel (TResNet's SpaceToDepth)
    "space_to_depth": lambda a, s: Lambda(lambda x: x.unflatten(3, (-1, a["block_size"])).unflatten(
        2, (-1, a["block_size"])).permute(0, 3, 5, 1, 2, 4).flatten(1, 3)),
    "prelu": lambda a, s: nn.PReLU(a["num_parameters"], a["init"]),
    "psa_attention": lambda a, s: _PSAAttention(a["dim"], a["num_heads"], a["attn_ratio"]),
    "multi_query_attention": lambda a, s: _MultiQueryAttention(
        s[0], a["num_heads"], a["key_dim"] or s[0] // a["num_heads"], a["value_dim"] or s[0] // a["num_heads"],
        a["kv_stride"], a["kv_kernel"], a["out_features"] or s[0], a["kv_norm"], a["norm"] == "batchnorm", a["gate"],
        a["kv_padding"] == "same"),
    "cascaded_attention": lambda a, s: _CascadedAttention(
        s[0], a["num_heads"], a["key_dim"], min(a["window_size"], s[1], s[2]),
        a["kernels"] if isinstance(a["kernels"], tuple) else (a["kernels"],) * a["num_heads"]),
    "window_attention": lambda a, s: _WindowAttention(s[1], s.grid, a["num_heads"],
                                                      tuple(_axes(a["window_size"], len(s.grid))),
                                                      tuple(_axes(a["shift_size"], len(s.grid))), a["bias"], a["v2"],
                                                      a["shrink"])
    if a["partition"] == "window" and a["position_bias"] == "table" and not a["out_features"] else
    _PartitionAttention(s[1], s.grid, a["num_heads"], _two(a["window_size"]), _two(a["shift_size"]), a["bias"],
                        a["v2"], a["partition"], a["position_bias"], a["out_features"], a["expand_first"],
                        a["mlp_hidden"]),
    "patch_merging": _patch_merging,
    "global_query_attention": lambda a, s: _GlobalQueryAttention(s[1], s.grid, a["num_heads"], _two(a["window_size"]),
                                                                 a["qkv_bias"]),
    "relu": lambda a, s: nn.ReLU(),
    "relu6": lambda a, s: nn.ReLU6(),
    # Klambauer et al. 2017, eq. 2, with their alpha_01 and lambda_01
    "selu": lambda a, s: Lambda(lambda x: 1.0507009873554804934193349852946 * torch.where(
        x > 0, x, 1.6732632423543772848170429916717 * (torch.exp(x) - 1))),
    "sigmoid": lambda a, s: nn.Sigmoid(),
    "silu": lambda a, s: nn.SiLU(),
    "softmax": lambda a, s: nn.Softmax(a["dim"]),
    "std_conv": _std_conv,
    "stochastic_depth": lambda a, s: nn.Identity(),  # torchvision's StochasticDepth is the identity in eval
    "tanh": lambda a, s: nn.Tanh(),
    "upsample": _upsample,
    "zeropad": _zeropad,
}

CASES = [(name, i, ex) for name, kind in sorted(REGISTRY.items()) for i, ex in enumerate(kind.examples)]


def _args(name: str, given: Any) -> dict[str, Any]:
    args = {a.name: a.default for a in REGISTRY[name].args}
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})  # as the spec loader does
    return args


def test_every_kind_has_a_reference() -> None:
    assert set(REFERENCES) == set(REGISTRY)


@pytest.mark.parametrize(("name", "index", "example"), CASES, ids=[f"{n}-{i}" for n, i, _ in CASES])
def test_kind_example_against_a_plain_torch_reference(name, index, example) -> None:  # type: ignore[no-untyped-def]
    kind = REGISTRY[name]
    a = _args(name, example.args)
    shape = example.input
    out = kind.output(a, shape, lambda message: None)
    cost = kind.cost(a, shape, out)
    torch.manual_seed(0)
    reference = REFERENCES[name](a, shape).eval()
    built = module_call(kind, a, shape).make().eval()
    # archcalc's analysis against the reference
    assert sum(p.numel() for p in reference.parameters()) == cost.params
    assert sum(b.numel() for b in reference.buffers()) == cost.buffers + cost.int_buffers
    x = torch.randn(2, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = reference(x)
    assert tuple(y.shape) == (2, *out)
    assert counter.get_total_flops() == 2 * (cost.macs * 2 + cost.macs_once)  # (once: whatever the batch)
    # archcalc's builder against the reference: the same weights in the same shapes, the same function
    ref_state = [t for t in [*reference.parameters(), *reference.buffers()]]
    built_state = [t for t in [*built.parameters(), *built.buffers()]]
    assert [tuple(t.shape) for t in built_state] == [tuple(t.shape) for t in ref_state]
    with torch.no_grad():
        for r, b in zip(ref_state, built_state):
            if r.is_floating_point():
                r.uniform_(0.5, 1.5)
            b.copy_(r)
        # (position_bias mlp: a bias summed over 512 hidden units of weights near 1 saturates the softmax; float32's
        # rounding of the two orders of summation then differs by up to about 1e-4 relative)
        mlp = name == "window_attention" and a["position_bias"] == "mlp"
        torch.testing.assert_close(built(x), reference(x), **({"atol": 5e-3, "rtol": 2e-4} if mlp else {}))
