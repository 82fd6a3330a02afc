"""The `full` convention counted on executed torch ops, independently of archcalc's per-kind rules.

For every kind's examples the test runs a formula written here in elementary torch ops -- the arithmetic the kind's
rule names (GELU: x * 0.5 * (1 + erf(x / sqrt 2)); LRN: squares, a window sum, scale, offset, power, division) --
checks that it computes what the kind's real module computes (`torch.testing.assert_close`), and counts the aten
ops it executes with a TorchDispatchMode under the rules below. Conv, transposed conv and linear run their real
module and are counted from the op's own tensor shapes. The expected figure is that count, never archcalc's rule.

Counting rules (per executed aten op):
- an element-wise op (add, sub, mul, div, reciprocal, exp, erf, tanh, pow, rsqrt, a comparison, a clamp bound,
  where a maximum or minimum against a constant is a comparison) counts 1 per output element; a clamp with two
  bounds counts 2. A negation is free (it folds into the op it feeds: exp(-x) is one exp), so is `where` (a select).
- a sum of n terms counts n additions (accumulated from zero, as `2 per MAC` counts each product's addition);
  a mean adds one division per result; a maximum of n terms counts n - 1 comparisons.
- convolution and matrix products count 2 per multiply-accumulate (read from the op's weight and output shapes)
  plus 1 per output element for a bias.
- moving data (views, padding, copies, unfold, cat, nearest upsampling, pixel shuffle) is free.
- an op without a rule fails the test: nothing is silently counted as zero.
- constants of the model that do not depend on the input (batch norm's 1 / sqrt(running_var + eps), an average
  pool's per-window divisor) are computed outside the count: inference computes them once, not per sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.torch.recipes import module_call

aten = torch.ops.aten

ELEMENTWISE = {aten.add, aten.sub, aten.rsub, aten.mul, aten.div, aten.reciprocal, aten.exp, aten.erf, aten.tanh,
               aten.pow, aten.rsqrt, aten.sqrt, aten.gt, aten.lt, aten.ge, aten.le, aten.clamp_min, aten.clamp_max,
               aten.maximum, aten.minimum}
FREE = {aten.neg, aten.where, aten.view, aten._unsafe_view, aten.reshape, aten.unfold, aten.constant_pad_nd,
        aten.reflection_pad2d,
        aten.squeeze, aten.unsqueeze, aten.expand, aten.permute, aten.transpose, aten.t, aten.clone, aten.cat,
        aten.stack, aten.slice, aten.select, aten.alias, aten.detach, aten._to_copy, aten.copy_, aten.empty_like,
        aten.lift_fresh, aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
        aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle, aten.native_channel_shuffle,
        aten.index_select, aten.contiguous, aten.as_strided, aten.split, aten.split_with_sizes, aten.narrow,
        aten.flatten, aten.ones_like, aten.zeros_like, aten.full_like, aten.fill_, aten.movedim}


class Arithmetic(TorchDispatchMode):
    """Counts the arithmetic of executed aten ops under the module's rules; `unknown` collects ops without one."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.unknown: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        first = out[0] if isinstance(out, (tuple, list)) else out
        if packet in ELEMENTWISE:
            self.total += first.numel()
        elif packet is aten.clamp:
            bounds = [b for b in (list(args[1:3]) + [kwargs.get("min"), kwargs.get("max")]) if b is not None]
            self.total += len(bounds) * first.numel()
        elif packet is aten.sum:
            self.total += args[0].numel()
        elif packet is aten.mean:
            self.total += args[0].numel() + first.numel()
        elif packet in (aten.amax, aten.max):
            self.total += args[0].numel() - first.numel()
        elif packet is aten.convolution:
            x, weight, bias = args[0], args[1], args[2]
            transposed = args[6]
            # Each output element of a conv sums in_channels/groups * prod(kernel) products; a transposed conv
            # spreads each input element over out_channels/groups * prod(kernel) outputs (the same products).
            per = weight[0].numel() if not transposed else weight.shape[1] * math.prod(weight.shape[2:])
            macs = first.numel() * per if not transposed else x.numel() * per
            self.total += 2 * macs + (first.numel() if bias is not None else 0)
        elif packet in (aten.mm, aten.addmm):
            a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
            self.total += 2 * a.shape[0] * a.shape[1] * b.shape[1] + (first.numel() if packet is aten.addmm else 0)
        elif packet is aten.bmm:  # batched matrix products: (b, n, k) @ (b, k, m)
            a, b = args[0], args[1]
            self.total += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        elif packet not in FREE:
            self.unknown.add(str(func))
        return out


def counted(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    with Arithmetic() as mode:
        y = fn()
    assert not mode.unknown, f"ops without a counting rule: {sorted(mode.unknown)}"
    return y, mode.total


# ---- the formulas --------------------------------------------------------------------------------------------
# Each takes the input x (batch 1), the kind's arguments a, the kind's real module m (for its parameters), and
# returns a callable that computes the output: constants of the model are prepared outside it.

Formula = Callable[[torch.Tensor, dict[str, Any], torch.nn.Module], Callable[[], torch.Tensor]]


def _channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over x (1, C, *spatial)."""
    return t.reshape(1, -1, *[1] * (x.dim() - 2))


def _windows(x: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int],
             before: list[int], out: list[int], value: float) -> torch.Tensor:
    """Every pooling window as trailing axes: pad with `value` (before, and after as far as the last window
    reaches), then unfold each spatial axis (a view: free)."""
    rank = len(kernel)
    sizes = x.shape[2:]
    after = [(o - 1) * s + d * (k - 1) + 1 - w - b for o, s, d, k, w, b in zip(out, stride, dilation, kernel, sizes,
                                                                               before)]
    pad: list[int] = []
    for b, e in zip(reversed(before), reversed(after)):
        pad += [b, max(e, 0)]
    x = F.pad(x, pad, value=value)
    for axis in range(rank):
        span = dilation[axis] * (kernel[axis] - 1) + 1
        x = x.unfold(2 + axis, span, stride[axis]).narrow(2 + axis, 0, out[axis])
        x = x[..., ::dilation[axis]]
    return x


def _per_axis(v: Any, rank: int) -> list[int]:
    return [v] * rank if isinstance(v, int) else list(v)


def _before(padding: Any, sizes: list[int], kernel: list[int], stride: list[int]) -> list[int]:
    """Padding before each axis: an int, one per axis, [before, after] pairs, or TensorFlow's 'same' (the total
    max((ceil(W / S) - 1) * S + F - W, 0), the odd one after)."""
    rank = len(sizes)
    if padding == "same":
        return [max((-(-w // s) - 1) * s + k - w, 0) // 2 for w, k, s in zip(sizes, kernel, stride)]
    if padding == "valid":
        return [0] * rank
    if isinstance(padding, int):
        return [padding] * rank
    return [p if isinstance(p, int) else p[0] for p in padding]


def _pool(kind: str) -> Formula:
    def formula(x: torch.Tensor, a: dict[str, Any], m: torch.nn.Module) -> Callable[[], torch.Tensor]:
        rank = x.dim() - 2
        k = _per_axis(a["kernel_size"], rank)
        s = _per_axis(a["stride"] if a["stride"] is not None else a["kernel_size"], rank)
        d = _per_axis(a.get("dilation", 1), rank)
        out = list(m(x).shape[2:])
        before = _before(a["padding"], list(x.shape[2:]), k, s)
        dims = tuple(range(-rank, 0))
        if kind == "max":
            return lambda: _windows(x, k, s, d, before, out, -math.inf).amax(dims)
        if a["count_include_pad"]:  # the divisor: the window clipped to the padded input (torch's rule)
            ones = F.pad(torch.ones_like(x), sum(([b, b] for b in reversed(before)), []), value=1.0)
            divisor = _windows(ones, k, s, d, [0] * rank, out, 0.0).sum(dims)
        else:
            divisor = _windows(torch.ones_like(x), k, s, d, before, out, 0.0).sum(dims)
        return lambda: _windows(x, k, s, d, before, out, 0.0).sum(dims) / divisor

    return formula


def _adaptive(kind: str) -> Formula:
    def formula(x: torch.Tensor, a: dict[str, Any], m: torch.nn.Module) -> Callable[[], torch.Tensor]:
        rank = x.dim() - 2
        out = list(m(x).shape[2:])
        sizes = list(x.shape[2:])

        def run() -> torch.Tensor:
            # PyTorch's adaptive windows: start floor(o * W / O), end ceil((o + 1) * W / O).
            cells = []
            for index in itertools.product(*[range(o) for o in out]):
                window = x
                for axis, (o, w, n) in enumerate(zip(index, sizes, out)):
                    start, end = (o * w) // n, -(-((o + 1) * w) // n)
                    window = window.narrow(2 + axis, start, end - start)
                dims = tuple(range(2, 2 + rank))
                cells.append(window.mean(dims) if kind == "avg" else window.amax(dims))
            return torch.stack(cells, dim=-1).reshape(*x.shape[:2], *out)

        return run

    return formula


def _norm(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    mean = x.mean(dims, keepdim=True)
    d = x - mean
    var = (d * d).mean(dims, keepdim=True)
    return d * (var + eps).rsqrt()


def _batchnorm(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    m = getattr(m, "bn", m)  # (on tokens: the BatchNorm1d inside archcalc's TokenBatchNorm)
    if x.dim() == 3 and x.shape[1] != m.num_features == x.shape[2]:  # B x N x C tokens: the channels last
        t = x.transpose(1, 2)
        run_grid = _batchnorm(t, a, m)
        return lambda: run_grid().transpose(1, 2)
    affine = a["affine"]
    if a["track_running_stats"]:
        inv = (m.running_var + a["eps"]).rsqrt()  # a constant of the model

        def run() -> torch.Tensor:
            y = (x - _channel(m.running_mean, x)) * _channel(inv, x)
            return y * _channel(m.weight, x) + _channel(m.bias, x) if affine else y
        return run
    dims = (0, *range(2, x.dim()))
    return lambda: (_norm(x, dims, a["eps"]) * _channel(m.weight, x) + _channel(m.bias, x) if affine
                    else _norm(x, dims, a["eps"]))


def _layernorm(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    shape = a["normalized_shape"]
    n = x.dim() - 1 if shape is None else (1 if isinstance(shape, int) else len(shape))
    dims = tuple(range(-n, 0))
    if a["elementwise_affine"] and a["bias"]:
        return lambda: _norm(x, dims, a["eps"]) * m.weight + m.bias
    if a["elementwise_affine"]:  # bias: false, a scale and no shift
        return lambda: _norm(x, dims, a["eps"]) * m.weight
    return lambda: _norm(x, dims, a["eps"])


def _channel_layernorm(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    if a["elementwise_affine"] and a["bias"]:
        return lambda: _norm(x, (1,), a["eps"]) * _channel(m.weight, x) + _channel(m.bias, x)
    if a["elementwise_affine"]:  # bias: false, a scale and no shift
        return lambda: _norm(x, (1,), a["eps"]) * _channel(m.weight, x)
    return lambda: _norm(x, (1,), a["eps"])


def _std_conv(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """The standardisation written out (each filter's mean and biased variance, (w - mean) / sqrt(var + eps),
    times gain * gamma / sqrt(fan-in) with a gain), then the module's own convolution (counted from its shapes).
    It runs once per forward: at batch 1 the count is the per-sample rule plus the once-per-forward one."""
    def run() -> torch.Tensor:
        w = m.weight.reshape(m.weight.shape[0], -1)
        fan_in = w.shape[1]
        mean = w.sum(1, keepdim=True) / fan_in
        d = w - mean
        var = (d * d).sum(1, keepdim=True) / fan_in
        standard = d * torch.rsqrt(var + a["eps"])
        if a["gain"]:
            standard = standard * (m.gain.reshape(-1, 1) * (a["gamma"] * fan_in ** -0.5))
        padded = F.pad(x, list(m.pad)) if m.pad else x
        return m.conv(padded, standard.reshape_as(m.weight), m.bias, m.stride, m.padding, m.dilation, m.groups)

    return run


def _grn(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    spatial = tuple(range(2, x.dim()))

    def run() -> torch.Tensor:
        gx = torch.sqrt((x * x).sum(spatial, keepdim=True))
        nx = gx / (gx.sum(1, keepdim=True) / gx.shape[1] + a["eps"])
        return x + (_channel(m.bias, x) + _channel(m.weight, x) * (x * nx))

    return run


def _evonorm_s0(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    g = a["groups"]

    def run() -> torch.Tensor:
        grouped = x.reshape(1, g, -1)
        count = grouped.shape[2]
        d = grouped - grouped.sum(2, keepdim=True) / count
        s = torch.sqrt((d * d).sum(2, keepdim=True) / count + a["eps"]).expand_as(grouped).reshape(x.shape)
        top = x * (1 + torch.exp(-(x * _channel(m.v, x)))).reciprocal() if a["act"] else x
        return top / s * _channel(m.weight, x) + _channel(m.bias, x)

    return run


def _rmsnorm(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    c = x.shape[1]

    def run() -> torch.Tensor:
        if a["statistic"] == "variance":  # the unbiased variance: divided by C - 1
            d = x - x.sum(1, keepdim=True) / c
            stat = (d * d).sum(1, keepdim=True) / (c - 1)
        else:
            stat = (x * x).sum(1, keepdim=True) / c
        y = x * torch.rsqrt(stat + a["eps"])
        return y * _channel(m.weight, x) if a["elementwise_affine"] else y

    return run


def _frn(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    spatial = tuple(range(2, x.dim()))
    count = math.prod(x.shape[2:])

    def run() -> torch.Tensor:
        nu2 = (x * x).sum(spatial, keepdim=True) / count
        y = x * torch.rsqrt(nu2 + a["eps"]) * _channel(m.weight, x) + _channel(m.bias, x)
        return torch.maximum(y, _channel(m.tau, x)) if a["tlu"] else y

    return run


def _groupnorm(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    g = a["num_groups"]

    def run() -> torch.Tensor:
        grouped = x.reshape(1, g, -1)
        y = _norm(grouped, (2,), a["eps"]).reshape(x.shape)
        if a["affine"] and not a["bias"]:  # a scale and no shift
            return y * _channel(m.weight, x)
        return y * _channel(m.weight, x) + _channel(m.bias, x) if a["affine"] else y
    return run


def _lrn(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    size = a["size"]

    def run() -> torch.Tensor:
        squares = x * x
        padded = F.pad(squares.movedim(1, -1), (size // 2, (size - 1) // 2))
        window = padded.unfold(-1, size, 1).sum(-1).movedim(-1, 1)  # size terms per element
        return x / (a["k"] + (a["alpha"] / size) * window) ** a["beta"]
    return run


def _upsample(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    if a["mode"] == "nearest":
        return lambda: m(x)  # nearest is a gather: free (counted as such)
    out = list(m(x).shape[2:])
    rank = x.dim() - 2
    # The 2^rank neighbours of every output and their weights, as PyTorch's CPU kernel (UpSampleKernel.cpp)
    # evaluates linear modes: output = sum of weight * neighbour. Source position (align_corners false):
    # (o + 0.5) * W / O - 0.5, clamped at 0. Indices and weights are constants of the shape.
    taps = []
    for axis in range(rank):
        w, o = x.shape[2 + axis], out[axis]
        src = ((torch.arange(o, dtype=torch.float64) + 0.5) * w / o - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=w - 1)
        frac = (src - lo).to(x.dtype).reshape(-1, *[1] * (rank - 1 - axis))
        taps.append(((lo, 1 - frac), ((lo + 1).clamp(max=w - 1), frac)))
    corners = []
    for choice in itertools.product(*taps):
        weight = torch.ones(out, dtype=x.dtype)
        gathered = x
        for axis, (index, wt) in enumerate(choice):
            gathered = gathered.index_select(2 + axis, index)
            weight = weight * wt
        corners.append((gathered, weight))

    def run() -> torch.Tensor:
        total = corners[0][1] * corners[0][0]
        for gathered, weight in corners[1:]:
            total = total + weight * gathered
        return total
    return run


def _elementwise(fn: Callable[[torch.Tensor, dict[str, Any], Any], torch.Tensor]) -> Formula:
    return lambda x, a, m: (lambda: fn(x, a, m))


SQRT2 = math.sqrt(2.0)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
FORMULAS: dict[str, Formula] = {
    "relu": _elementwise(lambda x, a, m: torch.clamp_min(x, 0.0)),
    "relu6": _elementwise(lambda x, a, m: torch.clamp(x, 0.0, 6.0)),
    "hardsigmoid": _elementwise(lambda x, a, m: torch.clamp(x + 3, 0.0, 6.0) / 6),
    "hardswish": _elementwise(lambda x, a, m: x * torch.clamp(x + 3, 0.0, 6.0) / 6),
    "leaky_relu": _elementwise(lambda x, a, m: torch.where(x > 0, x, a["negative_slope"] * x)),
    "prelu": _elementwise(lambda x, a, m: torch.where(x > 0, x, (_channel(m.weight, x) if m.weight.numel() > 1
                                                                 else m.weight) * x)),
    "elu": _elementwise(lambda x, a, m: torch.where(x > 0, x, a["alpha"] * (torch.exp(x) - 1))),
    # Klambauer et al. 2017, eq. 2: lambda * (x if x > 0 else alpha * (exp(x) - 1)), their alpha_01 and lambda_01
    "selu": _elementwise(lambda x, a, m: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1))),
    "gelu": _elementwise(lambda x, a, m: x * 0.5 * (1 + torch.erf(x / SQRT2)) if a["approximate"] == "none" else
                         # tanh form (Hendrycks & Gimpel 2016); the cube is two multiplications
                         0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x))))),
    "silu": _elementwise(lambda x, a, m: x * (1 + torch.exp(-x)).reciprocal()),
    "sigmoid": _elementwise(lambda x, a, m: (1 + torch.exp(-x)).reciprocal()),
    "tanh": _elementwise(lambda x, a, m: torch.tanh(x)),
    # The textbook formula; torch's kernel also subtracts the maximum first, which `full` does not count.
    "softmax": _elementwise(lambda x, a, m: _softmax(x, a["dim"])),
    "maxout": _elementwise(lambda x, a, m: x.reshape(1, x.shape[1] // a["pieces"], a["pieces"],
                                                     *x.shape[2:]).amax(2)),
    "dropout": _elementwise(lambda x, a, m: x),  # eval: the identity
    "channel_dropout": _elementwise(lambda x, a, m: x),  # eval: the identity
    "identity": _elementwise(lambda x, a, m: x),
    "stochastic_depth": _elementwise(lambda x, a, m: x),  # eval: the identity
    "bias": _elementwise(lambda x, a, m: x + m.bias),
    "layer_scale": _elementwise(lambda x, a, m: x * m.gamma),  # gamma's per-sample shape broadcasts over the batch
    "pos_embed": _elementwise(lambda x, a, m: x + m.pos_embedding),
    "self_attention": lambda x, a, m: _self_attention(x, a, m),  # defined below, beside _softmax
    "context_pool": lambda x, a, m: _context_pool(x, a, m),  # (below)
    "linear_attention": lambda x, a, m: _linear_attention(x, a),  # (below)
    "window_attention": lambda x, a, m: _window_attention(x, a, m),  # (below)
    "scalar": _elementwise(lambda x, a, m: {"add": lambda: x + a["value"], "sub": lambda: x - a["value"],
                                            "rsub": lambda: a["value"] - x, "mul": lambda: x * a["value"],
                                            "div": lambda: x / a["value"],
                                            "pow": lambda: torch.pow(x, a["value"])}[a["op"]]()),
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "channel_layernorm": _channel_layernorm,
    "groupnorm": _groupnorm,
    "std_conv": _std_conv,
    "grn": _grn,
    "frn": _frn,
    "rmsnorm": _rmsnorm,
    "evonorm_s0": _evonorm_s0,
    "lrn": _lrn,
    "maxpool": _pool("max"),
    "avgpool": _pool("avg"),
    "adaptive_avgpool": _adaptive("avg"),
    "adaptive_maxpool": _adaptive("max"),
    "global_avgpool": _elementwise(lambda x, a, m: x.mean(tuple(range(2, x.dim())), keepdim=True)),
    "global_maxpool": _elementwise(lambda x, a, m: x.amax(tuple(range(2, x.dim())), keepdim=True)),
    "mean": _elementwise(lambda x, a, m: x.mean(tuple(range(2, x.dim())), keepdim=a["keepdim"])),
    "upsample": _upsample,
    "dfl": lambda x, a, m: _dfl(x, a, m),
    "psa_attention": lambda x, a, m: _psa_attention(x, a, m),
    "multi_query_attention": lambda x, a, m: _multi_query_attention(x, a, m),
    "cascaded_attention": lambda x, a, m: _cascaded_attention(x, a, m),
}


def _cascaded_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    # EfficientViT-MSRA's local window attention written out: the grid zero-padded and cut into w x w windows (a
    # batch of windows: free), per head the cascade's sum, the 1 x 1 conv, each BN from its running statistics
    # (1 / std a constant of the model, and the gathered attention bias, prepared here), the depthwise conv, q's
    # scale, the products, the textbook softmax; ReLU as clamp_min(0); the windows put back and cropped.
    def constants(bn: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t.reshape(1, -1, 1, 1) for t in (bn.running_mean, (bn.running_var + bn.eps).rsqrt(),
                                                        bn.weight, bn.bias))

    def norm(t: torch.Tensor, c: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (t - c[0]) * c[1] * c[2] + c[3]

    with torch.no_grad():  # small scores, so the textbook softmax stays finite
        for qkv in m.qkvs:
            qkv.bn.weight.mul_(0.01)
    heads, kd, c, h, w = a["num_heads"], a["key_dim"], x.shape[1], x.shape[2], x.shape[3]
    ws = min(a["window_size"], h, w)
    ph, pw = -(-h // ws) * ws, -(-w // ws) * ws
    qkv_bn = [constants(q.bn) for q in m.qkvs]
    dw_bn = [constants(d.bn) for d in m.dws]
    proj_bn = constants(m.proj[1].bn)
    bias = m.attention_biases[:, m.attention_bias_idxs].detach()
    ci = c // heads

    def run() -> torch.Tensor:
        g = F.pad(x, (0, pw - w, 0, ph - h)).reshape(1, c, ph // ws, ws, pw // ws, ws)
        win = g.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws, ws)
        outs = []
        feat = win[:, :ci]
        for i in range(heads):
            if i:
                feat = feat + win[:, i * ci:(i + 1) * ci]
            qkv = norm(F.conv2d(feat, m.qkvs[i].conv.weight), qkv_bn[i])
            q, k, v = qkv[:, :kd], qkv[:, kd:2 * kd], qkv[:, 2 * kd:]
            kernel = m.dws[i].conv.kernel_size[0]
            q = norm(F.conv2d(q, m.dws[i].conv.weight, padding=kernel // 2, groups=kd), dw_bn[i])
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            attn = _softmax(torch.bmm((q * kd ** -0.5).transpose(1, 2), k) + bias[i], 2)
            feat = torch.bmm(v, attn.transpose(1, 2)).reshape(-1, ci, ws, ws)
            outs.append(feat)
        y = norm(F.conv2d(torch.cat(outs, 1).clamp_min(0), m.proj[1].conv.weight), proj_bn)
        y = y.reshape(1, ph // ws, pw // ws, c, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(1, c, ph, pw)
        return y[:, :, :h, :w]
    return run


def _dfl(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    # Ultralytics' DFL: the softmax over each side's bins, then the 1x1 conv with the bins' weights
    r = a["reg_max"]
    weight = torch.arange(r, dtype=x.dtype).view(1, r, 1, 1) if a["shared"] else m.weight

    def run() -> torch.Tensor:
        bins = _softmax(x.reshape(1, 4, r, -1).transpose(2, 1), 1)
        return F.conv2d(bins, weight).reshape(1, 4, *x.shape[2:])
    return run


def _psa_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    # Ultralytics' Attention, one head at a time with plain matrix products; each BN from its running statistics
    # (1 / std a constant of the model, prepared here)
    def constants(bn: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_channel(t, x) for t in (bn.running_mean, (bn.running_var + bn.eps).rsqrt(), bn.weight,
                                             bn.bias))

    def norm(t: torch.Tensor, c: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (t - c[0]) * c[1] * c[2] + c[3]

    with torch.no_grad():  # small scores, so the textbook softmax (no maximum subtracted) stays finite
        m.qkv.bn.weight.mul_(0.01)
    qkv_bn, pe_bn, proj_bn = constants(m.qkv.bn), constants(m.pe.bn), constants(m.proj.bn)
    heads, key, head = m.num_heads, m.key_dim, m.head_dim
    _, c, h, w = x.shape

    def run() -> torch.Tensor:
        qkv = norm(F.conv2d(x, m.qkv.conv.weight), qkv_bn).view(1, heads, 2 * key + head, h * w)
        outs = []
        for i in range(heads):
            q, k, v = qkv[0, i, :key], qkv[0, i, key:2 * key], qkv[0, i, 2 * key:]
            attn = _softmax(torch.mm((q * m.scale).t(), k), 1)
            outs.append(torch.mm(v, attn.t()))
        pe = norm(F.conv2d(qkv[:, :, 2 * key:].contiguous().view(1, c, h, w), m.pe.conv.weight, padding=1,
                           groups=c), pe_bn)
        y = torch.cat(outs).view(1, c, h, w) + pe
        return norm(F.conv2d(y, m.proj.conv.weight), proj_bn)
    return run


def _multi_query_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    # timm's MultiQueryAttention2d one head at a time with plain matrix products against the one key and value
    # head; each batch norm from its running statistics (1 / std a constant of the model, prepared here)
    def constants(bn: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_channel(t, x) for t in (bn.running_mean, (bn.running_var + bn.eps).rsqrt(), bn.weight,
                                             bn.bias))

    def source(down: Any, c: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if down is None:
            return x
        y = F.conv2d(F.pad(x, m.kv_pads) if m.kv_pads else x, down.weight, stride=down.stride,
                     padding=down.padding, groups=down.groups)
        if len(c) == 1:  # an RMS norm: the square, the channels' sum and mean, eps, 1/rms, the two products
            return y * torch.rsqrt(torch.mean(y * y, dim=1, keepdim=True) + 1e-6) * c[0]
        return (y - c[0]) * c[1] * c[2] + c[3]

    with torch.no_grad():  # small scores, so the textbook softmax (no maximum subtracted) stays finite
        m.query.weight.mul_(0.1)
    heads, key, value = m.num_heads, m.key_dim, m.value_dim
    _, _, h, w = x.shape
    def norm_constants(norm: Any) -> tuple[torch.Tensor, ...]:
        return constants(norm) if isinstance(norm, torch.nn.BatchNorm2d) else (_channel(norm.weight, x),)

    projected = {id(bn): constants(bn) for bn in (m.query_norm, m.key_proj_norm, m.value_proj_norm, m.out_norm)
                 if isinstance(bn, torch.nn.BatchNorm2d)}

    def proj(t: torch.Tensor, conv: Any, norm: Any) -> torch.Tensor:  # a 1x1 conv (and iFormer's batch norm)
        y = F.conv2d(t, conv.weight)
        if id(norm) in projected:
            c = projected[id(norm)]
            y = (y - c[0]) * c[1] * c[2] + c[3]
        return y

    key_bn, value_bn = ((norm_constants(m.key_norm), norm_constants(m.value_norm)) if m.key_down is not None
                        else ((), ()))

    def run() -> torch.Tensor:
        q = proj(x, m.query, m.query_norm).view(heads, key, h * w)
        k = proj(source(m.key_down, key_bn), m.key, m.key_proj_norm).view(key, -1)
        v = proj(source(m.value_down, value_bn), m.value, m.value_proj_norm).view(-1, h * w if m.gate else k.shape[1])
        if m.gate:  # the sigmoid as 1 / (1 + exp(-x)): exp, add, reciprocal (as `sigmoid`'s formula here)
            v = (1 + torch.exp(-v)).reciprocal()
        gate = v[value:].reshape(1, value, h, w) if m.gate else None
        v = v[:value]
        outs = [torch.mm(v, _softmax(torch.mm((q[i] * key ** -0.5).t(), k), 1).t()) for i in range(heads)]
        joined = torch.cat(outs).view(1, heads * value, h, w)
        return proj(joined * gate if gate is not None else joined, m.out, m.out_norm)
    return run


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(x)
    return e / e.sum(dim, keepdim=True)


def _reduced(x: torch.Tensor, a: dict[str, Any], m: Any, inv: Any) -> torch.Tensor:
    """The reduced sequence keys and values come from (PVT, Twins, Next-ViT), written out: the grid through the
    conv (its own shapes) and a layer norm; or adaptive windows averaged, the 1x1 conv, the norm and GELU's erf
    form; or runs of k tokens summed and divided by k, and batch norm with its constants (1 / sqrt(var + eps))."""
    b, n, c = x.shape
    if a["kv_avgpool"]:
        k = a["kv_avgpool"]
        runs = x[:, :n // k * k].reshape(b, n // k, k, c).sum(2) / k
        if not a["kv_norm"]:
            return runs
        return (runs - m.norm.running_mean) * inv * m.norm.weight + m.norm.bias
    grid = x.transpose(1, 2).reshape(b, c, *a["_grid"])
    if a["kv_pool"]:
        p, (h, w) = a["kv_pool"], a["_grid"]
        cells = [grid.narrow(2, i * h // p, -(-(i + 1) * h // p) - i * h // p)
                 .narrow(3, j * w // p, -(-(j + 1) * w // p) - j * w // p).mean((2, 3))
                 for i in range(p) for j in range(p)]
        grid = torch.stack(cells, dim=-1).reshape(b, c, p, p)
    r = 1 if a["kv_pool"] else a["sr_ratio"]
    t = F.conv2d(grid, m.sr.weight, m.sr.bias, stride=r).flatten(2).transpose(1, 2)
    t = _norm(t, (-1,), 1e-5) * m.norm.weight + m.norm.bias
    return t * 0.5 * (1 + torch.erf(t / math.sqrt(2))) if a["kv_pool"] else t


def _self_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """Vaswani et al.'s attention written out: q, k, v from one projection, per head softmax(Q K^T / sqrt(d)) V,
    the heads joined and projected; with a reduced key/value source, q and kv from projections of their own."""
    if a["key_dim"] or a["value_dim"] or a["score_bias"] or a["norm"] != "none" or a["act"] != "none" \
            or a["stride"] > 1 or a["out_features"] or not a["proj"]:
        return _biased_attention(x, a, m)
    if a["sr_ratio"] > 1 or a["kv_pool"] or a["kv_avgpool"]:
        # the batch norm's 1 / sqrt(var + eps): a constant of the model, outside the count
        inv = (m.norm.running_var + m.norm.eps).rsqrt() if a["kv_avgpool"] and a["kv_norm"] else None

        def reduced() -> torch.Tensor:
            b, n, c = x.shape
            h = a["num_heads"]
            d = c // h
            src = _reduced(x, a, m, inv)
            mm = src.shape[1]
            q = F.linear(x, m.q.weight, m.q.bias).reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)
            kv = F.linear(src, m.kv.weight, m.kv.bias).reshape(b, mm, 2, h, d).permute(2, 0, 3, 1, 4)
            k, v = kv[0].reshape(b * h, mm, d), kv[1].reshape(b * h, mm, d)
            heads = torch.bmm(_softmax(torch.bmm(q * d ** -0.5, k.transpose(1, 2)), -1), v).reshape(b, h, n, d)
            return F.linear(heads.transpose(1, 2).reshape(b, n, c), m.out_proj.weight, m.out_proj.bias)
        return reduced

    def run() -> torch.Tensor:
        b, n, c = x.shape
        h = a["num_heads"]
        d = c // h
        qkv = F.linear(x, m.in_proj.weight, m.in_proj.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.bmm((q * d ** -0.5).reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2))
        heads = torch.bmm(_softmax(scores, -1), v.reshape(b * h, n, d)).reshape(b, h, n, d)
        return F.linear(heads.transpose(1, 2).reshape(b, n, c), m.out_proj.weight, m.out_proj.bias)
    return run


def _biased_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """LeViT's and EfficientFormer's attention written out: q and k of kd channels per head, v of vd (q from the
    grid subsampled by the stride, with its own projection); each projection followed by the batch norm's formula
    (norm); per head softmax(Q K^T / sqrt(kd) + B) V with B[h, i, j] = table[h, |yi - yj| W + |xi - xj|] on the
    tokens' H x W grid; the heads joined (h vd), hardswish's formula (act), projected to the output's channels."""
    norms = [n for n in (getattr(m, "q_norm", None), m.in_norm, m.out_norm) if isinstance(n, torch.nn.BatchNorm1d)]
    invs = {id(bn): (bn.running_var + bn.eps).rsqrt() for bn in norms}  # constants of the model

    def norm(t: torch.Tensor, bn: Any) -> torch.Tensor:
        if a["norm"] != "batchnorm":
            return t
        return (t - bn.running_mean) * invs[id(bn)] * bn.weight + bn.bias

    def run() -> torch.Tensor:
        b, n, c = x.shape
        h, s = a["num_heads"], a["stride"]
        kd, vd = a["key_dim"] or c // h, a["value_dim"] or c // h
        gh, gw = m.grid if m.grid is not None else (n, 1)
        if s > 1:
            sub = torch.stack([x[:, y * gw + z] for y in range(0, gh, s) for z in range(0, gw, s)], dim=1)
            q = norm(F.linear(sub, m.q_proj.weight, m.q_proj.bias), m.q_norm)
            kv = norm(F.linear(x, m.in_proj.weight, m.in_proj.bias), m.in_norm)
            k, v = kv[..., :h * kd], kv[..., h * kd:]
        else:
            qkv = norm(F.linear(x, m.in_proj.weight, m.in_proj.bias), m.in_norm)
            q, k, v = qkv[..., :h * kd], qkv[..., h * kd:2 * h * kd], qkv[..., 2 * h * kd:]
        nq = q.shape[1]
        q = q.reshape(b, nq, h, kd).transpose(1, 2).reshape(b * h, nq, kd)
        k = k.reshape(b, n, h, kd).transpose(1, 2).reshape(b * h, n, kd)
        v = v.reshape(b, n, h, vd).transpose(1, 2).reshape(b * h, n, vd)
        scores = torch.bmm(q * kd ** -0.5, k.transpose(1, 2)).reshape(b, h, nq, n)
        if a["score_bias"]:
            qpos = [(y, z) for y in range(0, gh, s) for z in range(0, gw, s)]
            kpos = [(i // gw, i % gw) for i in range(n)]
            index = torch.tensor([[abs(p[0] - r[0]) * gw + abs(p[1] - r[1]) for r in kpos] for p in qpos])
            scores = scores + m.attention_biases.index_select(1, index.flatten()).reshape(1, h, nq, n)
        heads = torch.bmm(_softmax(scores, -1).reshape(b * h, nq, n), v).reshape(b, h, nq, vd)
        joined = heads.transpose(1, 2).reshape(b, nq, h * vd)
        if a["act"] == "hardswish":  # x * min(max(x + 3, 0), 6) / 6
            joined = joined * torch.clamp(joined + 3, 0.0, 6.0) / 6
        elif a["act"] == "silu":  # x * sigmoid(x) = x / (1 + e^-x)
            joined = joined * (1 + torch.exp(-joined)).reciprocal()
        if not a["proj"]:  # (no output projection: the joined heads are the output)
            return joined
        return norm(F.linear(joined, m.out_proj.weight, m.out_proj.bias), m.out_norm)
    return run


def _context_pool(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """GCNet's attention pooling (Cao et al. 2019): a logit per position from the real 1x1 conv, softmax over the
    positions, each channel's weighted sum (a batched product)."""
    def run() -> torch.Tensor:
        b, c = x.shape[:2]
        weights = _softmax(m.conv_attn(x).reshape(b, 1, -1), -1)
        return torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2)).reshape(b, c, *(1,) * (x.dim() - 2))
    return run


def _linear_attention(x: torch.Tensor, a: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """EfficientViT's ReLU linear attention (Cai et al. 2023, eq. 3): per head, ReLU(q) (ReLU(k)^T [v, 1]) as two
    batched products, each position's values divided by its normaliser plus eps."""
    def run() -> torch.Tensor:
        b, c, d = x.shape[0], x.shape[1], a["head_dim"]
        t = x.reshape(b * c // (3 * d), 3 * d, -1).transpose(1, 2)
        q, k = torch.clamp_min(t[..., :d], 0.0), torch.clamp_min(t[..., d:2 * d], 0.0)
        v = torch.cat([t[..., 2 * d:], torch.ones_like(t[..., :1])], dim=-1)
        out = torch.bmm(q, torch.bmm(k.transpose(1, 2), v))
        return (out[..., :-1] / (out[..., -1:] + a["eps"])).transpose(1, 2).reshape(b, c // 3, *x.shape[2:])
    return run


def _roll(t: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """torch.roll(t, shift, dim) as a concatenation of two slices (data movement)."""
    size = t.shape[dim]
    shift %= size
    if not shift:
        return t
    return torch.cat([t.narrow(dim, size - shift, shift), t.narrow(dim, 0, size - shift)], dim)


def _window_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """Swin's window attention written out (Liu et al. 2021; V2 2022): the grid zero-padded to a multiple of the
    window and rolled by the shift (none along an axis whose window covers the padded grid), cut into windows; the
    qkv projection; per head the scores (v1: q times 1/sqrt(d); v2: q and k divided by their norms, sqrt of the
    sum of squares clamped at 1e-12, then times exp(min(logit scale, ln 100))), plus the gathered position bias
    (v2: 16 sigmoid, 1 / (1 + exp(-t)), of Linear(2, 512), ReLU, Linear(512, heads) on the coordinate table), plus
    the mask, the textbook softmax, A V, the projection; the windows merged, unrolled and cropped. The mask, a
    constant of the grid (-100 between tokens from different regions of the rolled grid), is made outside. On a
    T x H x W grid the same with 3-D windows; `shrink` cuts a window longer than the grid to it, the bias read by
    the configured window's index's first M rows and columns (torchvision's video Swin)."""
    _, n, c = x.shape
    grid, heads, rank = tuple(m.grid), a["num_heads"], len(m.grid)
    full = math.prod(m.window_size)
    win = tuple(min(w, g) for w, g in zip(m.window_size, grid)) if a["shrink"] else tuple(m.window_size)
    width, f = m.proj.in_features, m.proj.out_features  # the attention's channels (expand_first), the output's
    d, size = width // heads, math.prod(win)
    padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, win))
    shift = [0 if w >= p else s for w, s, p in zip(win, m.shift_size, padded)]
    counts = [p // w for p, w in zip(padded, win)]
    windows = math.prod(counts)
    regions = [[0 if not s or r < p - w else 1 if r < p - s else 2 for r in range(p)]
               for p, w, s in zip(padded, win, shift)]
    label = torch.tensor([[sum(regions[i][o[i] * win[i] + t[i]] * 3 ** (rank - 1 - i) for i in range(rank))
                           for t in itertools.product(*(range(w) for w in win))]
                          for o in itertools.product(*(range(k) for k in counts))], dtype=torch.float64)
    mask = torch.where(label[:, :, None] != label[:, None, :], -100.0, 0.0).view(windows, 1, size, size)
    index = (m.relative_position_index.view(full, full)[:size, :size].flatten()
             if hasattr(m, "relative_position_index") else None)  # (none with position_bias lookup)
    split = [e for k, w in zip(counts, win) for e in (k, w)]
    order = (0, *range(1, 2 * rank, 2), *range(2, 2 * rank + 1, 2), 2 * rank + 1)
    back = (0, *(e for i in range(rank) for e in (1 + i, 1 + rank + i)), 2 * rank + 1)
    qkv_bias = m.qkv.bias
    if a["v2"] and qkv_bias is not None:
        qkv_bias = torch.cat([qkv_bias[:c], torch.zeros(c, dtype=x.dtype), qkv_bias[2 * c:]])

    grid_partition = a["partition"] == "grid"  # MaxViT's grid attention: a group is the tokens hp / wh apart
    if a["position_bias"] == "mlp" and not a["v2"]:  # its bias sums 512 hidden units, its example has 32 channels:
        with torch.no_grad():  # with every weight near 1 the scores would overflow the textbook softmax, so the
            m.rel_mlp[2].weight.mul_(1e-3)  # MLP's output layer and qkv are scaled down (the module compared is
            m.rel_mlp[2].bias.mul_(1e-3)  # the same one)
            m.qkv.weight.mul_(0.1)

    def run() -> torch.Tensor:
        g = F.pad(x.view(1, *grid, c), [0, 0, *(e for gs, p in zip(reversed(grid), reversed(padded))
                                                for e in (0, p - gs))])
        for axis, s in enumerate(shift):
            g = _roll(g, -s, axis + 1)
        if grid_partition:
            (wh, ww), (hp, wp) = win, padded
            t = g.view(1, wh, hp // wh, ww, wp // ww, c).permute(0, 2, 4, 1, 3, 5).reshape(windows * size, c)
        else:
            t = g.view(1, *split, c).permute(order).reshape(windows * size, c)
        qkv = F.linear(t, m.qkv.weight, qkv_bias).view(windows, size, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[i].reshape(windows * heads, size, d) for i in range(3))
        if a["v2"]:
            qn = q / torch.clamp_min(torch.sqrt((q * q).sum(-1, keepdim=True)), 1e-12)
            kn = k / torch.clamp_min(torch.sqrt((k * k).sum(-1, keepdim=True)), 1e-12)
            scores = torch.bmm(qn, kn.transpose(1, 2)).view(windows, heads, size, size) * torch.exp(
                torch.clamp(m.logit_scale, max=math.log(100.0)))
            hidden = torch.clamp_min(F.linear(m.relative_coords_table.view(-1, 2), m.cpb_mlp[0].weight,
                                              m.cpb_mlp[0].bias), 0.0)
            table = torch.mm(hidden, m.cpb_mlp[2].weight.t())
            gathered = torch.index_select(table, 0, index)
            bias = (16 * torch.reciprocal(1 + torch.exp(-gathered))).view(size, size, heads).permute(2, 0, 1)
        else:
            scores = torch.bmm(q * d ** -0.5, k.transpose(1, 2)).view(windows, heads, size, size)
            if a["position_bias"] == "mlp":  # timm's RelPosMlp: Linear(2, 512), ReLU, Linear(512, heads), gathered
                hidden = torch.clamp_min(F.linear(m.rel_coords_log.view(-1, 2), m.rel_mlp[0].weight,
                                                  m.rel_mlp[0].bias), 0.0)
                table = torch.mm(hidden, m.rel_mlp[2].weight.t()) + m.rel_mlp[2].bias
                bias = torch.index_select(table, 0, m.relative_position_index).view(size, size, heads).permute(
                    2, 0, 1)
            elif a["position_bias"] == "none":  # no position bias (DaViT, Twins-SVT, MobileViT)
                bias = None
            elif a["position_bias"] == "lookup":  # timm's RelPosBiasTf: the table times one-hot rows, then columns
                wh, ww = win
                t_ = m.relative_position_bias_table  # heads x rows x cols
                rows = torch.bmm(m.height_lookup.reshape(1, wh * wh, -1).expand(heads, -1, -1), t_)
                full_ = torch.bmm(rows.view(heads, wh * wh, -1),
                                  m.width_lookup.reshape(ww * ww, -1).t().expand(heads, -1, -1))
                bias = full_.view(heads, wh, wh, ww, ww).permute(0, 1, 3, 2, 4).reshape(heads, size, size)
            else:
                bias = torch.index_select(m.relative_position_bias_table, 0, index).view(
                    size, size, heads).permute(2, 0, 1)
        if bias is not None:
            scores = scores + bias
        if any(shift):
            scores = scores + mask
        weights = _softmax(scores, -1).reshape(windows * heads, size, size)
        joined = torch.bmm(weights, v).view(windows, heads, size, d).transpose(1, 2).reshape(windows * size, width)
        if grid_partition:
            (wh, ww), (hp, wp) = win, padded
            out = F.linear(joined, m.proj.weight, m.proj.bias).view(1, hp // wh, wp // ww, wh, ww, f)
            out = out.permute(0, 3, 1, 4, 2, 5).reshape(1, hp, wp, f)
        else:
            out = F.linear(joined, m.proj.weight, m.proj.bias).view(1, *counts, *win, f)
            out = out.permute(back).reshape(1, *padded, f)
        for axis, s in enumerate(shift):
            out = _roll(out, s, axis + 1)
        return out[(slice(None), *(slice(0, gs) for gs in grid))].reshape(1, n, f)
    return run


def _pooled_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """MViT's attention written out (Fan et al. 2021; Li et al. 2022): q, k, v from one projection, each pooled
    per head (a depthwise conv of the grid tokens, the class token put back, a layer norm over the head's
    channels), Q K^T / sqrt(d) plus the relative position terms q . R per axis (the tables' rows for each pair
    gathered beforehand: a constant of the weights), softmax, A V plus q's grid tokens, the heads projected."""
    b, n, c = x.shape
    h, cls, grid = a["num_heads"], m.cls, m.grid_q
    dim = m.output_dim
    d = dim // h
    tables = None
    if m.rel_pos_t is not None:
        (qt, qh, qw), (kt, kh, kw) = m.grid_q, m.grid_kv
        tables = [m.rel_pos_t[m.rel_index(qt, kt)], m.rel_pos_h[m.rel_index(qh, kh)],
                  m.rel_pos_w[m.rel_index(qw, kw)]]

    def pool(t: torch.Tensor, p: Any) -> torch.Tensor:
        if p is None:
            return t
        cells = t[:, :, cls:].transpose(2, 3).reshape(b * h, d, *p.grid)
        pooled = F.conv3d(cells, p.pool.weight, None, p.stride, p.padding, 1, d) if len(p.grid) == 3 else \
            F.conv2d(cells, p.pool.weight, None, p.stride, p.padding, 1, d)
        joined = torch.cat([t[:, :, :cls], pooled.reshape(b, h, d, -1).transpose(2, 3)], dim=2)
        return _norm(joined, (-1,), p.norm.eps) * p.norm.weight + p.norm.bias

    def run() -> torch.Tensor:
        qkv = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        k, v, q = pool(qkv[1], m.pool_k), pool(qkv[2], m.pool_v), pool(qkv[0], m.pool_q)
        nq, nk = q.shape[2], k.shape[2]
        scores = torch.bmm((q * d ** -0.5).reshape(b * h, nq, d), k.reshape(b * h, nk, d).transpose(1, 2))
        scores = scores.reshape(b, h, nq, nk)
        if tables is not None:
            (qt, qh, qw), (kt, kh, kw) = m.grid_q, m.grid_kv
            rq = q[:, :, cls:].reshape(b, h, qt, qh, qw, d)
            on_t = torch.einsum("bntijd,tsd->bntijs", rq, tables[0])
            on_h = torch.einsum("bntijd,isd->bntijs", rq, tables[1])
            on_w = torch.einsum("bntijd,jsd->bntijs", rq, tables[2])
            term = (on_h[..., None, :, None] + on_w[..., None, None, :]) + on_t[..., :, None, None]
            grid_scores = scores[:, :, cls:, cls:] + term.reshape(b, h, qt * qh * qw, kt * kh * kw)
            scores = torch.cat([scores[:, :, :cls], torch.cat([scores[:, :, cls:, :cls], grid_scores], dim=3)],
                               dim=2)
        heads = torch.bmm(_softmax(scores.reshape(b * h, nq, nk), -1), v.reshape(b * h, nk, d)).reshape(b, h, nq, d)
        if m.residual_pool:
            heads = torch.cat([heads[:, :, :cls], heads[:, :, cls:] + q[:, :, cls:]], dim=2)
        return F.linear(heads.transpose(1, 2).reshape(b, nq, dim), m.project.weight, m.project.bias)

    _ = grid
    return run


def _token_maxpool(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """The grid tokens laid out on the grid, max-pooled (the windows' maxima), the class token put back."""
    b, _, c = x.shape
    grid = x[:, m.cls:].transpose(1, 2).reshape(b, c, *m.grid)
    pooled = _pool("max")(grid, {**a, "dilation": 1, "count_include_pad": True}, m.pool)
    return lambda: torch.cat([x[:, :m.cls], pooled().flatten(2).transpose(1, 2)], dim=1)


def _separable_pos_embed(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """The tables summed for every (step, position) of the grid, the class token's vector first, then added."""
    def run() -> torch.Tensor:
        table = (m.temporal_pos[:, None, :] + m.spatial_pos[None, :, :]).flatten(0, 1)
        if m.class_pos is not None:
            table = torch.cat([m.class_pos[None], table])
        return x + table
    return run


def _xca(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """XCiT's cross-covariance attention written out (El-Nouby et al. 2021, sec. 3.2): q, k, v from one
    projection laid out per head as d x N; q and k divided by their L2 norms over the tokens (squares, sum, root,
    clamp at 1e-12); per head softmax(temperature Q K^T) over the d x d channel pairs, times V; joined, projected."""
    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / torch.clamp_min(torch.sqrt((t * t).sum(-1, keepdim=True)), 1e-12)

    def run() -> torch.Tensor:
        b, n, c = x.shape
        h = a["num_heads"]
        d = c // h
        qkv = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 4, 1)
        if a["normalize"]:
            q, k, v = unit(qkv[0]), unit(qkv[1]), qkv[2]
        else:  # (DaViT) no normalisation, no temperature: q times a constant
            q = qkv[0] * (d ** -0.5 if a["scale"] == "head" else n ** -0.5)
            k, v = qkv[1], qkv[2]
        scores = torch.bmm(q.reshape(b * h, d, n), k.reshape(b * h, d, n).transpose(1, 2)).reshape(b, h, d, d)
        weights = _softmax(scores * m.temperature if a["normalize"] else scores, -1).reshape(b * h, d, d)
        heads = torch.bmm(weights, v.reshape(b * h, d, n)).reshape(b, h, d, n)
        return F.linear(heads.permute(0, 3, 1, 2).reshape(b, n, c), m.proj.weight, m.proj.bias)
    return run


def _class_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """CaiT's class attention written out: q from the first token only, k and v from all, per head
    softmax(q K^T / sqrt(d)) V, the heads joined and projected."""
    def run() -> torch.Tensor:
        b, n, c = x.shape
        h = a["num_heads"]
        d = c // h
        q = F.linear(x[:, 0], m.q.weight, m.q.bias).reshape(b * h, 1, d)
        k = F.linear(x, m.k.weight, m.k.bias).reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)
        v = F.linear(x, m.v.weight, m.v.bias).reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)
        heads = torch.bmm(_softmax(torch.bmm(q * d ** -0.5, k.transpose(1, 2)), -1), v)
        return F.linear(heads.reshape(b, 1, c), m.proj.weight, m.proj.bias)
    return run


def _fourier_pos_embed(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """The grid's sines and cosines (a constant of the grid, made outside the count), projected by the 1 x 1 conv
    as a matrix product over each position's features, added to the tokens."""
    features = m.features()  # 1 x N x 2 hidden_dim
    return lambda: x + F.linear(features, m.token_projection.weight.flatten(1), m.token_projection.bias)


def _additive_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """SwiftFormer's additive attention written out: q and k projected and divided by their L2 norms over the
    channels (squares, sum, root, clamp at 1e-12); the scores q w_g scaled and divided by their norm over the
    tokens; the scores weight the queries, summed over the tokens; times every key, projected, plus q, projected."""
    def unit(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t / torch.clamp_min(torch.sqrt((t * t).sum(dim, keepdim=True)), 1e-12)

    def run() -> torch.Tensor:
        q = unit(F.linear(x, m.to_query.weight, m.to_query.bias), -1)
        k = unit(F.linear(x, m.to_key.weight, m.to_key.bias), -1)
        scores = unit(torch.matmul(q, m.w_g) * m.scale, 1)
        g = (scores * q).sum(1, keepdim=True)
        return F.linear(F.linear(g * k, m.proj.weight, m.proj.bias) + q, m.final.weight, m.final.bias)
    return run


def _halo_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """HaloNet's attention written out per block and head: q and kv 1 x 1 convs, q . k, the scale, q times every
    row of each table, the rows of each key's offset sliced out (free), their sum and its addition to the scores,
    softmax, times v; a 2 x 2 average pool as a sum of four and a division."""
    b, c, height, width = x.shape
    out = torch.zeros(b, m.heads * m.dv, height // m.query_stride, width // m.query_stride, dtype=x.dtype)  # filled

    def run() -> torch.Tensor:
        heads, dk, dv = m.heads, m.dk, m.dv
        (bh, bw), (wh, ww), halo, qs = m.block, m.win, m.halo, m.query_stride
        q = F.conv2d(x, m.q.weight, m.q.bias, stride=qs)
        kv = F.pad(F.conv2d(x, m.kv.weight, m.kv.bias), [halo] * 4)
        qh, qw = bh // qs, bw // qs
        y_all = out
        for by in range(height // bh):
            for bx in range(width // bw):
                for h in range(heads):
                    qt = q[:, h * dk:(h + 1) * dk, by * qh:(by + 1) * qh, bx * qw:(bx + 1) * qw].flatten(2)
                    qt = qt.transpose(1, 2)  # b x queries x dk
                    win = kv[:, h * (dk + dv):(h + 1) * (dk + dv), by * bh:by * bh + wh, bx * bw:bx * bw + ww]
                    k, v = win[:, :dk].flatten(2), win[:, dk:].flatten(2)
                    all_h, all_w = qt @ m.height_rel.T, qt @ m.width_rel.T  # b x queries x (2w - 1)
                    rel_h = torch.stack([all_h[:, i, wh - 1 - i // qw:2 * wh - 1 - i // qw]
                                         for i in range(qh * qw)], 1)
                    rel_w = torch.stack([all_w[:, i, ww - 1 - i % qw:2 * ww - 1 - i % qw]
                                         for i in range(qh * qw)], 1)
                    rel = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).flatten(2)
                    scores = (qt @ k) * dk ** -0.5 + rel
                    y = _softmax(scores, -1) @ v.transpose(1, 2)
                    y_all[:, h * dv:(h + 1) * dv, by * qh:(by + 1) * qh, bx * qw:(bx + 1) * qw] = y.transpose(
                        1, 2).reshape(b, dv, qh, qw)
        if isinstance(m.pool, torch.nn.AvgPool2d):
            ho, wo = y_all.shape[2] // 2 * 2, y_all.shape[3] // 2 * 2
            return torch.stack([y_all[:, :, i:ho:2, j:wo:2] for i in (0, 1) for j in (0, 1)]).sum(0) / 4
        return y_all
    return run


def _lambda_layer(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """A lambda layer written out: the qkv conv, the batch norms (their constants outside the count), k's softmax,
    the content lambda and its product with q, the position lambdas (the conv3d, or the gathered embedding, a
    constant of the model, times v) and their product with q, the sum; a 2 x 2 average pool as a sum and a
    division."""
    inv = {id(bn): (bn.running_var + bn.eps).rsqrt() for bn in (m.norm_q, m.norm_v)}
    emb = None if m.pos_emb is None else m.pos_emb[m.rel_pos_indices[0], m.rel_pos_indices[1]]  # M x M x dk

    def norm(t: torch.Tensor, bn: Any) -> torch.Tensor:
        return (t - _channel(bn.running_mean, t)) * _channel(inv[id(bn)], t) * _channel(bn.weight, t) \
            + _channel(bn.bias, t)

    def run() -> torch.Tensor:
        b, c, height, width = x.shape
        heads, dk = m.heads, m.dk
        qkv = F.conv2d(x, m.qkv.weight, m.qkv.bias)
        q = norm(qkv[:, :heads * dk], m.norm_q).reshape(b, heads, dk, -1)
        k = _softmax(qkv[:, heads * dk:heads * dk + dk].flatten(2), -1)
        v = norm(qkv[:, heads * dk + dk:], m.norm_v)
        content = torch.einsum("bkm,bvm->bkv", k, v.flatten(2))
        if emb is None:
            position = F.conv3d(v.permute(0, 2, 3, 1)[:, None], m.conv_lambda.weight, m.conv_lambda.bias,
                                padding=m.conv_lambda.padding).flatten(2, 3)
        else:
            position = torch.einsum("nmk,bvm->bknv", emb, v.flatten(2))
        y = torch.einsum("bhkn,bkv->bhvn", q, content) + torch.einsum("bhkn,bknv->bhvn", q, position)
        y = y.reshape(b, c, height, width)
        if isinstance(m.pool, torch.nn.AvgPool2d):
            ho, wo = height // 2 * 2, width // 2 * 2
            y = torch.stack([y[:, :, i:ho:2, j:wo:2] for i in (0, 1) for j in (0, 1)]).sum(0) / 4
        return y
    return run


def _bilinear_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """BAT's transform written out: 1 x 1 conv, batch norm (constants outside), ReLU; the row and column maxima;
    the two convs with bias, sigmoids, sums and divisions; the matrices times the identity where blown up; the two
    products; 1 x 1 conv, batch norm, ReLU."""
    inv = {id(bn): (bn.running_var + bn.eps).rsqrt() for bn in (m.bn1, m.bn2)}

    def conv_bn_relu(t: torch.Tensor, conv: Any, bn: Any) -> torch.Tensor:
        t = F.conv2d(t, conv.weight)
        t = (t - _channel(bn.running_mean, t)) * _channel(inv[id(bn)], t) * _channel(bn.weight, t) \
            + _channel(bn.bias, t)
        return torch.clamp_min(t, 0.0)

    eyes = {t: torch.eye(t, dtype=x.dtype) for t in (x.shape[2] // m.block, x.shape[3] // m.block)}  # constants

    def blow(mat: torch.Tensor, t: int) -> torch.Tensor:  # n x c x s x s -> n x c x s t x s t
        if t == 1:
            return mat
        n, c, s, _ = mat.shape
        eye = eyes[t]
        return (mat[..., None, None] * eye).permute(0, 1, 2, 4, 3, 5).reshape(n, c, s * t, s * t)

    def run() -> torch.Tensor:
        n, c, height, width = x.shape
        g, s = m.groups, m.block
        out = conv_bn_relu(x, m.conv1, m.bn1)
        rows = torch.stack([out[:, :, i * height // s:(i + 1) * height // s].amax((2, 3)) for i in range(s)], 2)
        cols = torch.stack([out[:, :, :, j * width // s:(j + 1) * width // s].amax((2, 3)) for j in range(s)], 2)
        p = F.conv2d(rows[..., None], m.conv_p.weight, m.conv_p.bias).view(n, g, s, s)
        q = F.conv2d(cols[:, :, None], m.conv_q.weight, m.conv_q.bias).view(n, g, s, s)
        p, q = (1 + torch.exp(-p)).reciprocal(), (1 + torch.exp(-q)).reciprocal()
        p, q = p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)
        p, q = p.repeat_interleave(c // g, 1), q.repeat_interleave(c // g, 1)
        y = blow(p, height // s) @ x @ blow(q, width // s)
        return conv_bn_relu(y, m.conv2, m.bn2)
    return run


def _effv2_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    # EfficientFormer-V2's attention written out: each conv with its bias, each batch norm from its running
    # statistics (1 / std a constant of the model, prepared here), one head at a time with plain matrix products,
    # the talking heads a 1 x 1 conv over the heads' maps, the table gathered by index_select (data movement)
    def constants(bn: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_channel(t, x) for t in (bn.running_mean, (bn.running_var + bn.eps).rsqrt(), bn.weight,
                                             bn.bias))

    def norm(t: torch.Tensor, c: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (t - c[0]) * c[1] * c[2] + c[3]

    with torch.no_grad():  # small scores, so the textbook softmax (no maximum subtracted) stays finite
        m.q[1].weight.mul_(0.01)
    norms = [constants(s[1]) for s in (m.q, m.k, m.v, m.v_local)]
    heads, key = a["num_heads"], a["key_dim"]
    _, c, h, w = x.shape
    down = a["downsample"]
    table = m.attention_biases
    index = m.attention_bias_idxs

    def talk(maps: list[torch.Tensor], conv: Any) -> list[torch.Tensor]:  # (a 1 x 1 conv over the heads' maps)
        mixed = F.conv2d(torch.stack(maps)[None], conv.weight, conv.bias)
        return [mixed[0, i] for i in range(heads)]

    def run() -> torch.Tensor:
        query = F.conv2d(x, m.q_local.weight, m.q_local.bias, 2, 1, groups=c) + x[:, :, ::2, ::2] if down else x
        q = norm(F.conv2d(query, m.q[0].weight, m.q[0].bias), norms[0])
        k = norm(F.conv2d(x, m.k[0].weight, m.k[0].bias), norms[1])
        v = norm(F.conv2d(x, m.v[0].weight, m.v[0].bias), norms[2])
        local = norm(F.conv2d(v, m.v_local[0].weight, m.v_local[0].bias, 2 if down else 1, 1,
                              groups=v.shape[1]), norms[3])
        oh, ow = q.shape[2:]
        q, k, v = q.view(heads, key, -1), k.view(heads, key, -1), v.view(heads, v.shape[1] // heads, -1)
        maps = [torch.mm(q[i].t(), k[i]) * key ** -0.5
                + table[i].index_select(0, index.flatten()).view(index.shape) for i in range(heads)]
        if a["talking_heads"]:
            maps = talk(maps, m.talking_head1)
        maps = [_softmax(s, 1) for s in maps]
        if a["talking_heads"]:
            maps = talk(maps, m.talking_head2)
        joined = torch.cat([torch.mm(v[i], maps[i].t()) for i in range(heads)])
        return joined.view(1, -1, oh, ow) + local
    return run


def _global_query_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """GCViT's global query attention written out (Hatamizadeh et al. 2023): [M query tokens ; the grid's N], the
    grid cut into windows, k and v from one linear, the queries repeated for every window and scaled by
    1/sqrt(d), per head the scores plus the gathered position bias, the textbook softmax, A V, the projection; the
    windows merged."""
    c = x.shape[2]
    (wh, ww), (h, w), heads = m.window_size, m.grid, a["num_heads"]
    size, d = wh * ww, c // heads
    windows = (h // wh) * (w // ww)

    def run() -> torch.Tensor:
        t = x[0, size:].reshape(h // wh, wh, w // ww, ww, c).permute(0, 2, 1, 3, 4).reshape(windows * size, c)
        kv = F.linear(t, m.kv.weight, m.kv.bias).view(windows, size, 2, heads, d).permute(2, 0, 3, 1, 4)
        k, v = (kv[i].reshape(windows * heads, size, d) for i in range(2))
        q = x[0, :size].reshape(1, size, heads, d).expand(windows, size, heads, d).transpose(1, 2)
        q = q.reshape(windows * heads, size, d) * d ** -0.5
        scores = torch.bmm(q, k.transpose(1, 2)).view(windows, heads, size, size)
        bias = torch.index_select(m.relative_position_bias_table, 0, m.relative_position_index).view(
            size, size, heads).permute(2, 0, 1)
        weights = _softmax(scores + bias, -1).reshape(windows * heads, size, size)
        joined = torch.bmm(weights, v).view(windows, heads, size, d).transpose(1, 2).reshape(windows * size, c)
        out = F.linear(joined, m.proj.weight, m.proj.bias).view(h // wh, w // ww, wh, ww, c)
        return out.permute(0, 2, 1, 3, 4).reshape(1, h * w, c)
    return run



def _separable_attention(x: torch.Tensor, a: dict[str, Any], m: Any) -> Callable[[], torch.Tensor]:
    """MobileViT-v2's separable self-attention written out: the qkv 1 x 1 conv (C -> 1 + 2C, with its bias), per
    patch position the textbook softmax of q over the N tokens at that position of every patch, k times the scores
    summed over them (the context, C per patch position), ReLU(v) times the context, the output 1 x 1 conv."""
    ph, pw = m.patch

    def run() -> torch.Tensor:
        b, c, h, w = x.shape
        nh, nw = h // ph, w // pw
        qkv = F.conv2d(x, m.qkv_proj.weight, m.qkv_proj.bias)
        q, k, v = qkv[:, :1], qkv[:, 1:1 + c], qkv[:, 1 + c:]
        scores = _softmax(q.reshape(b, nh, ph, nw, pw).permute(0, 2, 4, 1, 3).reshape(b, ph, pw, nh * nw), -1)
        scores = scores.reshape(b, 1, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3)  # B x 1 x nh x ph x nw x pw
        context = (k.reshape(b, c, nh, ph, nw, pw) * scores).sum((2, 4), keepdim=True)
        out = torch.clamp_min(v, 0.0).reshape(b, c, nh, ph, nw, pw) * context
        return F.conv2d(out.reshape(b, c, h, w), m.out_proj.weight, m.out_proj.bias)
    return run

FORMULAS.update({"pooled_attention": _pooled_attention, "additive_attention": _additive_attention,
                 "token_maxpool": _token_maxpool,
                 "separable_pos_embed": _separable_pos_embed, "xca": _xca, "fourier_pos_embed": _fourier_pos_embed,
                 "class_attention": _class_attention, "halo_attention": _halo_attention,
                 "lambda_layer": _lambda_layer, "bilinear_attention": _bilinear_attention,
                 "effv2_attention": _effv2_attention, "separable_attention": _separable_attention,
                 "global_query_attention": _global_query_attention})


# Kinds whose real module is counted directly: its ops are already elementary (a convolution, a matrix product,
# data movement).
REAL = {"conv", "conv_transpose", "linear", "flatten", "zeropad", "crop", "channel_shuffle", "channel_slice",
        "pixel_shuffle", "pixel_unshuffle", "reshape", "transpose", "space_to_depth", "blur_pool", "sum",
        "to_tokens", "to_grid", "class_token", "take_token", "patch_merging"}

EXTRA = {"gelu": [((16, 8, 8), {"approximate": "tanh"})], "batchnorm": [((8, 5, 5), {"track_running_stats": False}),
         ((8, 5, 5), {"track_running_stats": False, "affine": False})],
         "lrn": [((12, 4, 4), {"size": 7})], "groupnorm": [((12, 4, 4), {"num_groups": 4, "affine": False})],
         "layernorm": [((8, 3, 3), {"elementwise_affine": False})], "elu": [((4, 6), {"alpha": 0.5})],
         "upsample": [((3, 4, 5, 6), {"scale_factor": 2, "mode": "linear"})]}

CASES = [(name, i, ex.input, dict(ex.args)) for name, kind in sorted(REGISTRY.items())
         for i, ex in enumerate(kind.examples)]
CASES += [(name, f"x{i}", shape, args) for name, extra in sorted(EXTRA.items()) for i, (shape, args) in
          enumerate(extra)]


def _args(name: str, given: dict[str, Any]) -> dict[str, Any]:
    kind = REGISTRY[name]
    args = {a.name: a.default for a in kind.args}
    args.update({k: tuple(v) if isinstance(v, list) and not any(isinstance(e, list) for e in v) else v
                 for k, v in given.items()})
    return args


def test_every_kind_has_a_formula_or_runs_as_it_is() -> None:
    assert set(REGISTRY) == set(FORMULAS) | REAL, sorted(set(REGISTRY) ^ (set(FORMULAS) | REAL))


@pytest.mark.parametrize(("name", "index", "shape", "given"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_full_is_the_counted_arithmetic(name, index, shape, given) -> None:  # type: ignore[no-untyped-def]
    kind = REGISTRY[name]
    a = _args(name, given)
    out = kind.output(a, shape, lambda message: None)
    cost = kind.cost(a, shape, out)
    predicted = cost.full + cost.full_once  # batch 1: the work on the weights (std_conv's) runs once too
    torch.manual_seed(0)
    # The REAL kinds are counted from their ops' shapes alone, so they run on the meta device: VGG's fc6 example
    # (102.8 M weights) in float64 held 1.2 GB of the test run's memory for numbers nobody reads.
    device = "meta" if name in REAL else "cpu"
    with torch.device(device):
        module = module_call(kind, a, shape).make().eval().double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(0.5, 1.5)
        for b_name, b in module.named_buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5) if "var" in b_name else b.uniform_(-0.5, 0.5)
        x = torch.randn(1, *shape, dtype=torch.float64, device=device)
        if name in REAL:
            y, count = counted(lambda: module(x))
        else:
            given_a = a
            if name == "layernorm" and isinstance(shape, Tokens) and a["normalized_shape"] is None:
                given_a = {**a, "normalized_shape": shape[1]}  # on tokens: each token over its C channels
            if name == "self_attention":
                given_a = {**a, "_grid": shape.grid}  # (a reduced key/value source reads the tokens' grid)
            run = FORMULAS[name](x, given_a, module)
            y, count = counted(run)
            torch.testing.assert_close(y, module(x))
    assert tuple(y.shape[1:]) == out
    assert count == predicted, f"{name} {shape} {given}: counted {count}, archcalc's `full` {predicted}"
