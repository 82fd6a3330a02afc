"""What test_kinds leaves out of every kind's examples: the bytes autograd saves, the receptive field, the
full-convention FLOPs, the inference peak and the training FLOPs, each against an oracle of its own.

- Saved bytes: autograd itself (saved_tensors_hooks around a training forward of the kind's torch module, the input
  needing a gradient) against the engine's figure for the one-layer network.
- Receptive field: measured physically. Perturbing the input along one axis (one index at a time, every channel
  and every other position at once) shows which input indices each output index depends on; the widest such span
  is the layer's receptive field on that axis.
- Full FLOPs: the rule each kind states in `archcalc kinds` (full_rule), written out here as arithmetic on the
  example's shapes.
- Inference peak: torch.profiler's CPU memory events; training FLOPs: FlopCounterMode around a training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from conftest import example_spec, load_text
from measure import peak_bytes, saved_bytes

from archcalc.core.analyze import Report, analyze
from archcalc.core.kinds import REGISTRY, Kind
from archcalc.core.kinds.base import Tokens
from archcalc.torch.recipes import module_call

BATCH = 2
CASES = [(name, i) for name, kind in sorted(REGISTRY.items()) for i, _ in enumerate(kind.examples)]
IDS = [f"{n}-{i}" for n, i in CASES]


def _args(kind: Kind, given: Mapping[str, object]) -> dict[str, Any]:
    args = {a.name: a.default for a in kind.args}
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    return args


def _one_layer(kind: Kind, index: int, prefix: tuple[str, ...] = (), **kwargs: Any) -> Report:
    """The example as a one-layer spec (a flattened input is written C x 1 and flattened first), analysed."""
    shape, layers = example_spec(kind, kind.examples[index])
    layers = [*prefix, *layers]
    text = f"name: t\ninput: {shape}\nlayers:\n" + "".join(f"  - {x}\n" for x in layers)
    return analyze(load_text(text), batch=BATCH, **kwargs)


def _module(kind: Kind, index: int) -> torch.nn.Module:
    ex = kind.examples[index]
    torch.manual_seed(0)
    return module_call(kind, _args(kind, ex.args), ex.input).make()


# ---- saved bytes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "index"), CASES, ids=IDS)
def test_saved_bytes_are_what_autograd_keeps(name: str, index: int) -> None:
    kind = REGISTRY[name]
    report = _one_layer(kind, index, device="cpu", input_requires_grad=True)
    x = torch.randn(BATCH, *kind.examples[index].input).requires_grad_()
    if int(kind.contiguous_recorded_input) > 1:  # each of its projections copies a strided view: give it the
        grid = kind.examples[index].input       # spec's, the tokens of a grid (to_tokens)
        x = torch.randn(BATCH, grid[1], *grid.grid).requires_grad_().flatten(2).transpose(1, 2)
    assert report.totals.saved_bytes == saved_bytes(_module(kind, index), x)


# ---- receptive field ---------------------------------------------------------------------------------------------

# Layers whose every output depends on the whole sample through its statistics: the receptive field, by
# convention, follows only the sliding windows (a normalization does not widen it).
NORMALIZING = {"layernorm", "groupnorm", "grn", "evonorm_s0", "frn"}


def measured_rf(module: torch.nn.Module, inp: tuple[int, ...], axis: int) -> int:
    """The widest span of input indices along spatial `axis` that one output index depends on."""
    module = module.double().eval()
    size = inp[1 + axis]
    torch.manual_seed(1)
    base = torch.rand(1, *inp, dtype=torch.float64)
    xs = base.repeat(size + 1, *[1] * len(inp))
    for p in range(size):  # sample p + 1: the input at index p of the axis changed, every channel and position
        where = (p + 1, slice(None), *[p if a == axis else slice(None) for a in range(len(inp) - 1)])
        xs[where] += 10.0 * torch.rand_like(xs[where])  # not a constant shift: a normalization would undo it
    with torch.no_grad():
        ys = module(xs)
    changed = (ys[1:] - ys[:1]).abs() > 1e-9  # (input index, C, *out spatial)
    if changed.dim() == 2 + len(inp) - 1:  # the output keeps the spatial axes: (input index, output index)
        depends = changed.movedim(2 + axis, 1).flatten(2).any(dim=2)
    else:  # flattened: one output (every feature)
        depends = changed.flatten(1).any(dim=1, keepdim=True)
    spans = [int(idx.max() - idx.min() + 1) for idx in (torch.nonzero(depends[:, o]).flatten()
                                                         for o in range(depends.shape[1])) if len(idx)]
    return max(spans)


def _small(name: str, index: int) -> bool:
    """One forward per input index along an axis: only the examples that are cheap to run that often."""
    kind, ex = REGISTRY[name], REGISTRY[name].examples[index]
    args = _args(kind, ex.args)
    macs = kind.cost(args, ex.input, kind.output(args, ex.input, lambda message: None)).macs
    return len(ex.input) > 1 and math.prod(ex.input) <= 60_000 and macs <= 1_000_000


# Token layers: their receptive field is measured through a grid by gradient (tests/test_tokens.py).
RF_CASES = [(n, i) for n, i in CASES if _small(n, i) and n not in NORMALIZING and not isinstance(
    REGISTRY[n].examples[i].input, Tokens) and n != "to_tokens"]


@pytest.mark.parametrize(("name", "index"), RF_CASES, ids=[f"{n}-{i}" for n, i in RF_CASES])
def test_receptive_field_is_the_measured_dependence(name: str, index: int) -> None:
    kind = REGISTRY[name]
    inp = kind.examples[index].input
    report = _one_layer(kind, index)
    module = _module(kind, index)
    for axis in range(len(inp) - 1):
        assert report.totals.rf[axis] == measured_rf(module, inp, axis), f"axis {axis}"


# ---- full FLOPs ----------------------------------------------------------------------------------------------


def _levit(a: Mapping[str, Any]) -> bool:
    return bool(a["key_dim"] or a["value_dim"] or a["score_bias"] or a["norm"] != "none" or a["act"] != "none"
                or a["stride"] > 1 or a["out_features"] or not a["proj"])


def _levit_full(a: Mapping[str, Any], i: tuple[int, ...], o: tuple[int, ...], m: int) -> int:
    """LeViT's / EfficientFormer's attention: 2 per MAC; the projections' biases (q per query token, k and v per
    token, the output per query token, with proj); q's scale; 3 per weight for the softmax and 1 for the score
    bias; with norm 4 per element of each projection's output (batch norm with affine); with act 5 per joined
    element."""
    n, c = i
    nq, d = o[0], o[1] if a["proj"] else 0  # (proj false: no output projection, its bias or its norm)
    h = a["num_heads"]
    k, v = h * (a["key_dim"] or c // h), h * (a["value_dim"] or c // h)
    out = nq * d if a["proj"] else 0  # (proj: false: no output projection, so no bias of its own)
    biases = ((nq * k + n * (k + v) + out) if a["qkv_bias"] else out) if a["bias"] else 0
    weights = h * nq * n
    norm = 4 * (nq * k + n * (k + v) + nq * d) if a["norm"] == "batchnorm" else 0
    act = {"none": 0, "hardswish": 5, "silu": 4}[a["act"]] * nq * v  # (x * min(max(x + 3, 0), 6) / 6; x / (1 + e^-x))
    return 2 * m + biases + nq * k + (4 if a["score_bias"] else 3) * weights + norm + act


def _windows(w: int, o: int) -> list[int]:
    """PyTorch's adaptive pooling windows along one axis: [floor(i W / O), ceil((i + 1) W / O))."""
    return [math.ceil((i + 1) * w / o) - math.floor(i * w / o) for i in range(o)]


def _window_elements(inp: tuple[int, ...], out: tuple[int, ...]) -> int:
    return inp[0] * math.prod(sum(_windows(w, o)) for w, o in zip(inp[1:], out[1:]))


def _reduced_attention(a: Mapping[str, Any], i: Any, macs: int) -> int:
    """Keys and values from M reduced tokens: 2 per MAC; the biases (q's C and kv's 2C per token they make with
    qkv_bias, the projection's C per token), the reducing conv's bias (C per reduced token); the layer norm (7 per
    element, 4 per token); q's scale (1 per element); the softmax (3 per weight, h N M); pooled, the adaptive
    pool's window sums and divisions and the GELU (5 per element)."""
    (tokens, c), (h, w), r, p, k = i, i.grid, a["sr_ratio"], a["kv_pool"], a["kv_avgpool"]
    m = p * p if p else (tokens // k if k else (h // r) * (w // r))
    bias = ((tokens * c + 2 * m * c if a["qkv_bias"] else 0) + tokens * c) if a["bias"] else 0
    if k:  # runs of k tokens averaged (k additions, a division), the eval-mode batch norm (4 per element)
        return (2 * macs + bias + tokens * c + 3 * a["num_heads"] * tokens * m + (k + 1) * m * c
                + (4 * m * c if a["kv_norm"] else 0))
    pool = _window_elements((c, h, w), (c, p, p)) + m * c + 5 * m * c if p else 0
    return 2 * macs + bias + m * c + 7 * m * c + 4 * m + tokens * c + 3 * a["num_heads"] * tokens * m + pool


def _kernel(a: Mapping[str, Any], inp: tuple[int, ...]) -> int:
    k = a["kernel_size"]
    return k ** (len(inp) - 1) if isinstance(k, int) else math.prod(k)


def _gelu(a: Mapping[str, Any]) -> int:
    return 9 if a["approximate"] == "tanh" else 5


def _normalize(elements: int, groups: int, affine: bool, shift: bool = True) -> int:
    """Statistics from the input: per element the mean's addition, the deviation, its square, the variance's
    addition and the multiplication by 1/std, plus scale and shift with affine (the scale only without `shift`);
    per group of statistics the two divisions by the count, eps and the reciprocal square root."""
    return (5 + (2 if shift else 1) if affine else 5) * elements + 4 * groups


def _batchnorm(a: Mapping[str, Any], i: tuple[int, ...]) -> int:
    if a["track_running_stats"]:  # running statistics: (x - mean) * inv_std, then scale and shift with affine
        return (4 if a["affine"] else 2) * n(i)
    return _normalize(n(i), i[0], a["affine"])


def _layernorm_groups(a: Mapping[str, Any], i: tuple[int, ...]) -> int:
    shape = a["normalized_shape"]
    if shape is None and isinstance(i, Tokens):  # each token over its channels
        shape = i[1]
    trailing = len(i) if shape is None else (1 if isinstance(shape, int) else len(shape))
    return n(i[: len(i) - trailing])


def _upsample(a: Mapping[str, Any], inp: tuple[int, ...]) -> int:
    # linear modes: 2^rank neighbours, each weighted (a multiplication) and summed (2^rank - 1 additions)
    return 0 if a["mode"] == "nearest" else 2 ** len(inp[1:]) * 2 - 1


Rule = Callable[[Mapping[str, Any], tuple[int, ...], tuple[int, ...], int], int]
n = math.prod
# kind -> full FLOPs from (arguments, input, output, MACs), per sample, as each kind's full_rule states it
FULL: dict[str, Rule] = {
    "relu": lambda a, i, o, m: n(o), "tanh": lambda a, i, o, m: n(o), "layer_scale": lambda a, i, o, m: n(o),
    "scalar": lambda a, i, o, m: n(o),
    "leaky_relu": lambda a, i, o, m: 2 * n(o), "prelu": lambda a, i, o, m: 2 * n(o),
    "relu6": lambda a, i, o, m: 2 * n(o),
    "elu": lambda a, i, o, m: 4 * n(o), "sigmoid": lambda a, i, o, m: 3 * n(o),
    "selu": lambda a, i, o, m: 5 * n(o),
    "softmax": lambda a, i, o, m: 3 * n(o),
    "silu": lambda a, i, o, m: 4 * n(o), "hardsigmoid": lambda a, i, o, m: 4 * n(o),
    "hardswish": lambda a, i, o, m: 5 * n(o),
    "gelu": lambda a, i, o, m: _gelu(a) * n(o),
    "maxout": lambda a, i, o, m: (a["pieces"] - 1) * n(o),
    **{k: (lambda a, i, o, m: 0) for k in ("dropout", "identity", "flatten", "channel_shuffle", "channel_slice",
                                            "stochastic_depth", "pixel_shuffle", "pixel_unshuffle", "crop",
                                            "zeropad", "reshape", "space_to_depth", "transpose")},
    "conv": lambda a, i, o, m: 2 * m + (n(o) if a["bias"] else 0),
    # the norm's square and sum, x * nx, the weight's product, the bias's and the residual's sums per element; per
    # channel the square root, the mean's sum and the division; the mean's division and eps once
    "grn": lambda a, i, o, m: 6 * n(i) + 3 * i[0] + 2,
    # the square, the sum, x / rms, scale, shift (and tlu's maximum) per element; the division by the count, eps
    # and the reciprocal root per channel
    "frn": lambda a, i, o, m: (6 if a["tlu"] else 5) * n(i) + 3 * i[0],
    # mean square: the square, the sum, x / rms, the weight's product per element; the count's division, eps and
    # the reciprocal root per position. variance: the mean's sum, the deviation, its square, the sum, x / rms, the
    # weight's product per element; two divisions, eps and the reciprocal root per position
    "rmsnorm": lambda a, i, o, m: ((6 if a["statistic"] == "variance" else 4) - (0 if a["elementwise_affine"] else 1))
    * n(i) + (4 if a["statistic"] == "variance" else 3) * n(i[1:]),
    # the group variance (mean's sum, deviation, square, sum: 4), the division, scale and shift per element, and
    # with act v * x, the sigmoid (3) and the product; per group the two divisions by the count, eps, the root
    "evonorm_s0": lambda a, i, o, m: (7 + (5 if a["act"] else 0)) * n(i) + 4 * a["groups"],
    "std_conv": lambda a, i, o, m: 2 * m + (n(o) if a["bias"] else 0),  # (the standardisation: FULL_ONCE)
    "blur_pool": lambda a, i, o, m: 2 * m,
    "sum": lambda a, i, o, m: n(i),
    "conv_transpose": lambda a, i, o, m: 2 * m + (n(o) if a["bias"] else 0),
    "linear": lambda a, i, o, m: 2 * m + (n(o) if a["bias"] else 0),  # a bias per output (per token and output)
    **{k: (lambda a, i, o, m: 0) for k in ("to_tokens", "to_grid", "take_token")},
    "class_token": lambda a, i, o, m: n(i) + i[1] if a["mean"] else 0,  # the mean: N additions, 1 division per channel
    "pos_embed": lambda a, i, o, m: n(o),
    # 2 per MAC (the logits' conv, the weighted sum), the bias per position, softmax's 3 per position
    "context_pool": lambda a, i, o, m: 2 * m + (1 + 3 if a["bias"] else 3) * n(i[1:]),
    # 2 per MAC; the ReLUs of q and k (2 of every 3 input elements), eps per position and head (N h: the output's
    # elements over d), the division per output element
    "linear_attention": lambda a, i, o, m: 2 * m + 2 * n(i) // 3 + n(o) // a["head_dim"] + n(o),
    # 2 per MAC, the biases of qkv (3C) and the projection (C) per token, q's scale, softmax's 3 per weight
    "self_attention": lambda a, i, o, m: _reduced_attention(a, i, m)
    if a["sr_ratio"] > 1 or a["kv_pool"] or a["kv_avgpool"] else
    2 * m + ((4 if a["qkv_bias"] else 1) * n(i) if a["bias"] else 0) + n(i)
    + 3 * a["num_heads"] * i[0] ** 2 if not _levit(a) else _levit_full(a, i, o, m),
    # (bias elements: 3C + C per token, or the output projection's C alone)
    "bias": lambda a, i, o, m: n(o),
    "channel_layernorm": lambda a, i, o, m: _normalize(n(i), n(i[1:]), a["elementwise_affine"], a["bias"]),
    "layernorm": lambda a, i, o, m: _normalize(n(i), _layernorm_groups(a, i), a["elementwise_affine"],
                                               a["bias"]),
    "groupnorm": lambda a, i, o, m: _normalize(n(i), a["num_groups"], a["affine"], a["bias"]),
    "batchnorm": lambda a, i, o, m: _batchnorm(a, i),
    # the square once per element, a window sum of size terms, scale, offset, power, division
    "lrn": lambda a, i, o, m: (a["size"] + 5) * n(o),
    "mean": lambda a, i, o, m: n(i) + n(o),
    "maxpool": lambda a, i, o, m: (_kernel(a, i) - 1) * n(o),
    # a sum of a window's terms (one addition per term, padding included) and one division per output element
    "avgpool": lambda a, i, o, m: (_kernel(a, i) + 1) * n(o),
    "adaptive_avgpool": lambda a, i, o, m: _window_elements(i, o) + n(o),
    "global_avgpool": lambda a, i, o, m: n(i) + n(o),
    "adaptive_maxpool": lambda a, i, o, m: _window_elements(i, o) - n(o),
    "global_maxpool": lambda a, i, o, m: n(i) - n(o),
    "upsample": lambda a, i, o, m: _upsample(a, i) * n(o),
    # softmax over each side's bins (3 per element) and the 1x1 conv's 2 per MAC (reg_max MACs per output)
    "dfl": lambda a, i, o, m: 3 * n(i) + 2 * a["reg_max"] * n(o),
    "psa_attention": lambda a, i, o, m: _psa_attention(a, i, m),
    "multi_query_attention": lambda a, i, o, m: _multi_query_attention(a, i, m),
    "cascaded_attention": lambda a, i, o, m: _cascaded_attention(a, i, m),
    "window_attention": lambda a, i, o, m: _window_attention(a, i, m),
    "patch_merging": lambda a, i, o, m: 0,
    # 2 per MAC; kv's and the projection's biases per token (2C + C, or C); the scale of the repeated queries (1
    # per element: N x C); per attention weight (N x heads x M) the position bias and the softmax's 3
    "global_query_attention": lambda a, i, o, m: 2 * m + (3 if a["qkv_bias"] else 1) * n(o) + n(o)
    + 4 * o[0] * a["num_heads"] * (i[0] - o[0]),
    "pooled_attention": lambda a, i, o, m: _pooled_attention(a, i, o, m),
    # the tables' sum for each grid token's channels, then the addition to every token
    "separable_pos_embed": lambda a, i, o, m: n(i.grid) * i[1] + n(i),
    # 2 per MAC; qkv's and the projection's biases per token (3C + C, or C); q and k normalised over the tokens
    # (square, sum, divide per element; root and clamp per channel of each); per weight (C x d) the temperature and
    # the softmax's 3; normalize false (DaViT): the scale of q (1 per element) and the softmax's 3 per weight alone
    "xca": lambda a, i, o, m: 2 * m + (4 if a["qkv_bias"] else 1) * n(i) + (
        6 * n(i) + 4 * i[1] + 4 * i[1] * (i[1] // a["num_heads"]) if a["normalize"]
        else n(i) + 3 * i[1] * (i[1] // a["num_heads"])),
    # 2 per MAC; the four linears' biases (4C per token); q and k normalised (square, sum, divide per element;
    # root and clamp per token); the scores scaled (1 per token) and normalised over the tokens (3 per token, root
    # and clamp once); the weighting of q, its sum, g * k and the residual (1 per element each)
    "additive_attention": lambda a, i, o, m: 2 * m + 4 * n(i) + 6 * n(i) + 4 * i[0] + i[0] + 3 * i[0] + 2 + 4 * n(i),
    # 2 per MAC; biases: q's and the projection's (C each), k's and v's per token (2NC), or the projection's
    # alone; the scale of q (C); the softmax's 3 per weight (heads x N)
    "class_attention": lambda a, i, o, m: 2 * m + (2 * i[1] + 2 * n(i) if a["qkv_bias"] else i[1]) + i[1]
    + 3 * a["num_heads"] * i[0],
    # 2 per MAC; the convs' biases (1 + 2C and C per position); per position the softmax's 3 on its score; per
    # element of k its product with the score and its addition to the sum; per element of v its ReLU and product
    "separable_attention": lambda a, i, o, m: 2 * m + ((1 + 3 * i[0]) * n(i[1:]) if a["bias"] else 0)
    + 3 * n(i[1:]) + 2 * n(i) + 2 * n(i),
    # the addition per element; per image (not `once`) the projection's 2 per MAC and its bias per element
    "fourier_pos_embed": lambda a, i, o, m: n(i) + (0 if a["once"] else 2 * i[0] * 2 * a["hidden_dim"] * i[1] + n(i)),
    "halo_attention": lambda a, i, o, m: _halo_attention(a, i, o, m),
    "lambda_layer": lambda a, i, o, m: _lambda_layer(a, i, o, m),
    "bilinear_attention": lambda a, i, o, m: _bilinear_attention(a, i, m),
    "channel_dropout": lambda a, i, o, m: 0,  # the identity at inference
    # comparisons per output element of the grid (the class token is copied)
    "token_maxpool": lambda a, i, o, m: (o[0] - (i[0] - n(i.grid))) * o[1] * (_kernel(a, (0, *i.grid)) - 1),
    "effv2_attention": lambda a, i, o, m: _effv2_attention(a, i, o, m),
}


def _halo_attention(a: Mapping[str, Any], i: tuple[int, ...], o: tuple[int, ...], m: int) -> int:
    """2 per MAC; q's biases per query position (K each) and kv's per position (K + V); per attention weight
    (heads x query positions x window positions) 1 for the scale, 2 for the relative logits' additions, 3 for the
    softmax; a 2 x 2 average pool's 4 additions and 1 division per output element."""
    _, height, width = i
    heads, v = a["num_heads"], o[0]
    k = heads * (a["key_dim"] or v // heads)
    bh, bw = (a["block_size"], a["block_size"]) if a["block_size"] else (height, width)
    pooled = a["stride"] == 2 and (a["avg_down"] or not a["block_size"] or a["block_size"] % 2 == 1)
    queries = height * width // (4 if a["stride"] == 2 and not pooled else 1)
    window = (bh + 2 * a["halo_size"]) * (bw + 2 * a["halo_size"])
    biases = queries * k + height * width * (k + v) if a["bias"] else 0
    return 2 * m + biases + 6 * heads * queries * window + (5 * n(o) if pooled else 0)


def _lambda_layer(a: Mapping[str, Any], i: tuple[int, ...], o: tuple[int, ...], m: int) -> int:
    """2 per MAC; the qkv conv's bias per position (heads x dk + dk + dv channels); the batch norms of q and v (4
    per element, eval); k's softmax (3 per element); the position conv's bias (one per element of its dk x H x W x
    dv output); the sum of the content and position outputs (C per position); a 2 x 2 pool's 5 per output."""
    c, height, width = i
    positions, dk, dv = height * width, a["key_dim"], c // a["num_heads"]
    k = a["num_heads"] * dk
    return (2 * m + (positions * (k + dk + dv) if a["bias"] else 0) + 4 * positions * (k + dv) + 3 * dk * positions
            + (positions * dk * dv if a["r"] else 0) + c * positions + (5 * n(o) if a["stride"] == 2 else 0))


def _bilinear_attention(a: Mapping[str, Any], i: tuple[int, ...], m: int) -> int:
    """2 per MAC; the two batch norms (4 per element, g and C channels over H x W) and ReLUs (1); the row and
    column max pools (H W / b - 1 comparisons per output, g b outputs each); per b x b matrix element (b^2 g, two
    sets) the conv's bias, the sigmoid's 3 and the division; the sums' b additions per row (g b rows, two
    sets); the identity's multiplications, C H^2 and C W^2, where the matrices are blown up (t > 1)."""
    c, height, width = i
    g, b = a["groups"], a["block_size"]
    hw = height * width
    blown = (c * height ** 2 if height > b else 0) + (c * width ** 2 if width > b else 0)
    return (2 * m + (4 + 1) * hw * (g + c) + 2 * g * b * (hw // b - 1) + 2 * b * b * g * 5
            + 2 * g * b * b + blown)


def _effv2_attention(a: Mapping[str, Any], i: tuple[int, ...], o: tuple[int, ...], macs: int) -> int:
    """2 per MAC; each conv's bias (1 per output element) and batch norm (4 per element) over q (heads x key_dim
    channels at the output's positions), k (the same at the input's), v (the output's D channels at the input's)
    and v_local (D at the output's); the talking heads' biases (1 per score each); per score the scale, the bias
    and the softmax's 3; v_local's addition (1 per output element); with downsample the strided conv's bias and
    the query's addition (C per output position each)."""
    keys, queries, heads = n(i[1:]), n(o[1:]), a["num_heads"]
    kh, d = heads * a["key_dim"], o[0]
    normed = queries * kh + keys * kh + keys * d + queries * d
    scores = heads * queries * keys
    talking = 2 * scores if a["talking_heads"] else 0
    query = 2 * i[0] * queries if a["downsample"] else 0
    return 2 * macs + 5 * normed + talking + 5 * scores + n(o) + query


def _windows_of(a: Mapping[str, Any], i: Any) -> tuple[int, int, int, bool]:
    """Padded tokens, tokens per window, position-table entries, and whether a shift is in force (torchvision's
    rule: none along an axis whose window covers the padded grid)."""
    rank = len(i.grid)  # 2 or 3 (the video Swin's T x H x W)
    win = a["window_size"] if not isinstance(a["window_size"], int) else (a["window_size"],) * rank
    shift = a["shift_size"] if not isinstance(a["shift_size"], int) else (a["shift_size"],) * rank
    if a.get("shrink"):  # a window longer than the grid is cut to it
        win = [min(w, g) for w, g in zip(win, i.grid)]
    padded = [math.ceil(g / w) * w for g, w in zip(i.grid, win)]
    shifted = any(s and w < p for s, w, p in zip(shift, win, padded))
    return math.prod(padded), math.prod(win), math.prod(2 * w - 1 for w in win), shifted


def _window_attention(a: Mapping[str, Any], i: Any, macs: int) -> int:
    """2 per MAC; the qkv and projection biases (4C per padded token; with out_features F and the attention's
    width D, F with expand_first, 3D + F); v1 the scale of q (1 per element: D per token), v2 the
    normalisation of q and k (3 per element, 2 per head vector) and the logit scale (1 per weight); per attention
    weight the position bias (none with position_bias none), the mask when shifted, and the softmax's 3."""
    tokens, m, _, shifted = _windows_of(a, i)
    c, h = i[1], a["num_heads"]
    f = a["out_features"] or c
    d = f if a["expand_first"] else c
    weights = tokens * m * h
    biases = (3 * d + f) * tokens if a["bias"] else 0
    scaling = 6 * tokens * c + 4 * tokens * h + weights if a["v2"] else tokens * d
    position = 0 if a["position_bias"] == "none" else 1
    return 2 * macs + biases + scaling + weights * (position + (1 if shifted else 0) + 3)


def _window_attention_once(a: Mapping[str, Any], i: Any) -> int:
    """v2's position-bias MLP on the (2w-1)^2 relative positions, once per forward: 2 per MAC of Linear(2, 512) and
    Linear(512, heads), the first's bias and the ReLU (512 each per position); 16 sigmoid of the M^2 x heads
    gathered bias (4 each); the logit scale's clamp and exp (2 per head). position_bias mlp: the MLP with both
    biases, no sigmoid; lookup: 2 per MAC of its two einsums."""
    _, m, table, _ = _windows_of(a, i)
    h = a["num_heads"]
    if not a["v2"] and a["position_bias"] == "mlp":  # timm's RelPosMlp: the same MLP, its second bias, no sigmoid
        hidden = a["mlp_hidden"]
        return 2 * table * (2 * hidden + hidden * h) + 2 * hidden * table + h * table
    if not a["v2"] and a["position_bias"] == "lookup":  # two einsums: heads x rows x cols by (w, w, rows), then cols
        wh, ww = (a["window_size"],) * 2 if isinstance(a["window_size"], int) else a["window_size"]
        return 2 * h * (wh * wh * (2 * wh - 1) * (2 * ww - 1) + wh * wh * ww * ww * (2 * ww - 1))
    if not a["v2"]:
        return 0
    return 2 * table * (2 * 512 + 512 * h) + 2 * 512 * table + 4 * h * m * m + 2 * h


def _pooled_attention(a: Mapping[str, Any], i: tuple[int, ...], o: tuple[int, ...], macs: int) -> int:
    """2 per MAC; qkv's biases (3D per input token) and the projection's (D per output token); each pooled q, k, v
    normalized (7 per element, 4 per token and head); q's scale (1 per element); softmax (3 per weight); with
    rel_pos the sum of the H and W terms (h Mq kh kw), the T term added (h Mq Mk), the sum added to the scores
    (h Mq Mk); with residual_pool one
    addition per element of q's grid tokens."""
    cls, d, h, nq = i[0] - n(i.grid), o[1], a["num_heads"], o[0]
    kk, sk = _tuple(a["kernel_kv"], i), _tuple(a["stride_kv"], i)
    nk = n((w + 2 * (k // 2) - k) // s + 1 for w, k, s in zip(i.grid, kk, sk)) + cls
    pooled_q = n(_tuple(a["kernel_q"], i)) > 1 or n(_tuple(a["stride_q"], i)) > 1
    pooled_kv = n(kk) > 1 or n(sk) > 1
    normed = (nq if pooled_q else 0) + (2 * nk if pooled_kv else 0)
    return (2 * macs + 3 * d * i[0] + d * nq + 7 * normed * d + 4 * normed * h + d * nq + 3 * h * nq * nk
            + (h * (nq - cls) * (_kv(i, kk, sk)[1] * _kv(i, kk, sk)[2] + 2 * (nk - cls)) if a["rel_pos"] else 0)
            + (d * (nq - cls) if a["residual_pool"] else 0))


def _kv(i: Any, kk: tuple[int, ...], sk: tuple[int, ...]) -> list[int]:
    return [(w + 2 * (k // 2) - k) // s + 1 for w, k, s in zip(i.grid, kk, sk)]


def _tuple(v: Any, i: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple) else (v,) * len(i.grid)


def _multi_query_attention(a: Mapping[str, Any], i: tuple[int, ...], macs: int) -> int:
    """2 per MAC; one multiplication by the scale per element of q (heads x key_dim x N), 3 per attention weight
    (heads x N x M) and, with kv_stride, 4 per element of each of the two batch norms (C x M); RMS norms 4 per
    element and 3 per position (rmsnorm's rule); with norm, 4 per element of each projection's batch norm (q's,
    k's, v's and the output's); with the gate, the sigmoid's 3 per element of v's projection (twice value_dim
    channels) and the gate's product (value_dim x N)."""
    c, heads, positions = i[0], a["num_heads"], n(i[1:])
    key = a["key_dim"] or c // heads
    keys = positions
    if a["kv_stride"] > 1:
        k, s = a["kv_kernel"], a["kv_stride"]
        pad = (s - 1 + k - 1) // 2
        keys = math.prod((w + 2 * pad - k) // s + 1 for w in i[1:])
        if a["kv_padding"] == "same":  # TF's: ceil(W / s) outputs
            keys = math.prod(-(-w // s) for w in i[1:])
    norms = 2 * c * keys if a["kv_stride"] > 1 else 0
    rms = 6 * keys if a["kv_stride"] > 1 and a["kv_norm"] == "rmsnorm" else 0
    value = a["value_dim"] or c // heads
    widths = (2 if a["gate"] else 1) * value
    if a["norm"] == "batchnorm":
        norms += heads * key * positions + key * keys + widths * keys + (a["out_features"] or c) * positions
    gate = 3 * widths * keys + value * positions if a["gate"] else 0
    return 2 * macs + heads * key * positions + 3 * heads * positions * keys + 4 * norms + rms + gate


def _psa_attention(a: Mapping[str, Any], i: tuple[int, ...], macs: int) -> int:
    """2 per MAC; per element 4 for each BN (qkv's C + 2 x heads x key_dim channels, pe's and proj's C), one
    multiplication by the scale per element of q, 3 per attention weight (heads x N x N) and pe's sum (C x N)."""
    c, heads, positions = i[0], a["num_heads"], n(i[1:])
    key = int(c // heads * a["attn_ratio"])
    qkv = c + 2 * heads * key
    return (2 * macs + 4 * (qkv + 2 * c) * positions + heads * key * positions + 3 * heads * positions ** 2
            + c * positions)


def _cascaded_attention(a: Mapping[str, Any], i: tuple[int, ...], macs: int) -> int:
    """2 per MAC; on the padded grid (T positions, windows of M = w^2, w = min(window_size, H, W)) 4 per element
    of each BN (per head qkv's 2kd + C_i channels and the depthwise conv's kd, the projection's C), the cascade's
    sums ((h - 1) x C_i x T), q's scale (h kd T), the ReLU (C T), 1 per attention weight for the bias and 3 for
    the softmax (h x T x M weights)."""
    c, h, kd = i[0], a["num_heads"], a["key_dim"]
    w = min(a["window_size"], i[1], i[2])
    t = math.ceil(i[1] / w) * w * math.ceil(i[2] / w) * w
    ci = c // h
    return (2 * macs + 4 * t * (h * (3 * kd + ci) + c) + (h - 1) * ci * t + h * kd * t + c * t
            + 4 * h * t * w * w)


def _standardize(a: Mapping[str, Any], i: tuple[int, ...]) -> int:
    """Weight standardisation, once per forward: per weight the mean's addition, the deviation, its square, the
    variance's addition, the multiplication by 1/std, and with a gain its multiplication; per filter the two
    divisions by the count, eps, the reciprocal square root, and with a gain gain * gamma / sqrt(fan-in)."""
    filters = a["out_channels"]
    weights = filters * i[0] // a["groups"] * _kernel(a, i)
    return (6 if a["gain"] else 5) * weights + (5 if a["gain"] else 4) * filters


def _fourier_once(a: Mapping[str, Any], i: tuple[int, ...]) -> int:
    """With `once`, the projection of the N x 2 hidden_dim features: 2 per MAC and its bias per element."""
    return 2 * i[0] * 2 * a["hidden_dim"] * i[1] + i[0] * i[1] if a["once"] else 0


# kind -> full FLOPs done once per forward whatever the batch (work on the weights); 0 for the others
FULL_ONCE: dict[str, Callable[[Mapping[str, Any], tuple[int, ...]], int]] = {
    "std_conv": _standardize, "window_attention": _window_attention_once, "fourier_pos_embed": _fourier_once}


@pytest.mark.parametrize(("name", "index"), CASES, ids=IDS)
def test_full_once_follows_the_stated_rule(name: str, index: int) -> None:
    kind = REGISTRY[name]
    ex = kind.examples[index]
    args = _args(kind, ex.args)
    out = kind.output(args, ex.input, lambda message: None)
    cost = kind.cost(args, ex.input, out)
    assert cost.full_once == FULL_ONCE.get(name, lambda a, i: 0)(args, ex.input)


def test_every_kind_has_a_full_rule_here() -> None:
    assert set(FULL) == set(REGISTRY)


@pytest.mark.parametrize(("name", "index"), CASES, ids=IDS)
def test_full_flops_follow_the_stated_rule(name: str, index: int) -> None:
    kind = REGISTRY[name]
    ex = kind.examples[index]
    args = _args(kind, ex.args)
    out = kind.output(args, ex.input, lambda message: None)
    cost = kind.cost(args, ex.input, out)
    assert cost.full == FULL[name](args, ex.input, out, cost.macs)


# ---- inference peak ----------------------------------------------------------------------------------------------

# Kinds whose CPU kernels hold scratch the model leaves out (backend detail, not activations): the profiler sees
# at least the prediction. Batch norm's per-channel scale and shift, layer and group norm's statistics, LRN's and
# mean's scalar, transposed convolution's col2im buffer, nearest 2-D upsampling's copy of its input, scalar's
# constant wrapped as a 0-d double tensor, psa_attention's three batch norms' scale and shift, pooled_attention's
# strided depthwise 3-D convolutions (what its ops make is exact: tests/test_mvit.py counts it op by op),
# effv2_attention's four batch norms' scale and shift (the rest exact: tests/test_effv2.py).
SCRATCH = {"batchnorm", "layernorm", "groupnorm", "lrn", "mean", "global_avgpool", "conv_transpose", "upsample",
           "scalar", "psa_attention", "pooled_attention", "bilinear_attention",
           "effv2_attention"}
PEAK_CASES = [(n, i) for n, i in CASES if math.prod(REGISTRY[n].examples[i].input) <= 100_000]


@pytest.mark.parametrize(("name", "index"), PEAK_CASES, ids=[f"{n}-{i}" for n, i in PEAK_CASES])
def test_inference_peak_is_what_the_profiler_sees(name: str, index: int) -> None:
    """The one-layer network's peak beyond its parameters, buffers and input: the output and what the kind
    declares it allocates while it runs (Kind.transient: max pooling's indices, LRN's intermediates, a padding
    copy), against torch.profiler's CPU memory events."""
    from archcalc.torch.build import build_module

    report = _one_layer(REGISTRY[name], index)
    model = build_module(report).eval()
    x = torch.randn(BATCH, *report.input)
    measured = peak_bytes(lambda: model(x))  # one thread: per-thread scratch of parallel kernels would blur it
    t = report.totals
    predicted = t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4
    if name in SCRATCH:
        assert measured >= predicted
    else:
        assert measured == predicted


# ---- training FLOPs ----------------------------------------------------------------------------------------------

TRAIN_CASES = [(n, i) for n, i in CASES if _small(n, i) or len(REGISTRY[n].examples[i].input) == 1]


@pytest.mark.parametrize(("name", "index"), TRAIN_CASES, ids=[f"{n}-{i}" for n, i in TRAIN_CASES])
def test_training_flops_are_what_flop_counter_counts(name: str, index: int) -> None:
    """One training step (train-mode forward, backward of the output's sum, the batch needing no gradient) under
    FlopCounterMode, the layer after a trainable per-channel bias: its input needs a gradient, so both backward
    terms count (a first layer's, without the input's gradient, is checked by tests/test_validate.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from archcalc.core.training import training_flops
    from archcalc.torch.build import build_module

    report = _one_layer(REGISTRY[name], index, ("bias",))
    model = build_module(report).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(BATCH, *report.input)).sum().backward()
    assert training_flops(report).total == counter.get_total_flops()


# ---- integers, storage sharing, crop's window, the grid after a layer ---------------------------------------------

VARIANT_CASES = [("relu", (4, 5, 5), {"inplace": True}), ("hardswish", (4, 5, 5), {"inplace": True}),
                 ("stochastic_depth", (4, 5, 5), {"p": 0.0}), ("stochastic_depth", (4, 5, 5), {"p": 0.3}),
                 ("dropout", (4, 5, 5), {"p": 0.0}), ("pixel_shuffle", (8, 3, 5), {"upscale_factor": 2}),
                 ("pixel_unshuffle", (2, 6, 4), {"downscale_factor": 2})]
ALL_CASES = [(name, ex.input, dict(ex.args)) for name, kind in sorted(REGISTRY.items()) for ex in kind.examples]
ALL_CASES += VARIANT_CASES


@pytest.mark.parametrize(("name", "inp", "given"), ALL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALL_CASES)])
def test_every_figure_is_an_integer(name: str, inp: tuple[int, ...], given: dict[str, Any]) -> None:
    """Integers for every count (STYLE): the shape, the costs, the saved and temporary element counts (a true
    division that happens to divide evenly still gives a float, which then prints as 24.0)."""
    kind = REGISTRY[name]
    args = _args(kind, given)
    out = kind.output(args, inp, lambda message: None)
    saved = kind.saved(args, inp, out)
    figures = [*out, *kind.cost(args, inp, out),
               *(v for pair in (*saved.extra, *saved.per_batch, *saved.extra_for_params) for v in pair),
               *(v for pair in kind.transient(args, inp, out) for v in pair)]
    assert all(type(v) is int for v in figures), figures


@pytest.mark.parametrize(("name", "inp", "given"), ALL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALL_CASES)])
def test_the_output_shares_the_inputs_storage_in_training_exactly_when_the_kind_says(
        name: str, inp: tuple[int, ...], given: dict[str, Any]) -> None:
    """Kind.alias_in_training against the storage torch's train-mode forward returns: views, the identity,
    in-place activations and stochastic depth at p = 0 (torchvision returns its input) share it; dropout, even at
    p = 0, and every computing layer make a new tensor."""
    kind = REGISTRY[name]
    args = _args(kind, given)
    torch.manual_seed(0)
    module = module_call(kind, args, inp).make().train()
    x = torch.randn(BATCH, *inp)
    with torch.no_grad():
        y = module(x)
    assert (y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()) == kind.alias_in_training(args)


@pytest.mark.parametrize(("inp", "size", "rows", "cols"), [
    ((2, 12, 12), (8, 8), slice(2, 10), slice(2, 10)),  # margin 4: 2 before, 2 after
    ((2, 9, 7), (4, 6), slice(2, 6), slice(0, 6)),  # margins 5 and 1: the odd row and column cut after
    ((2, 10, 13), (3, 4), slice(3, 6), slice(4, 8)),  # margins 7 and 9: 3 and 4 before
])
def test_crop_keeps_the_centre(inp: tuple[int, ...], size: tuple[int, int], rows: slice, cols: slice) -> None:
    """U-Net's centre crop, the odd margin's extra row or column cut after (the kind's doc), by hand-written slices."""
    kind = REGISTRY["crop"]
    x = torch.arange(BATCH * math.prod(inp), dtype=torch.float32).reshape(BATCH, *inp)
    y = module_call(kind, _args(kind, {"size": size}), inp).make()(x)
    torch.testing.assert_close(y, x[:, :, rows, cols])


# Chains after which a window sees the grid the layer left (test_receptive_measured measures the finer grids of
# upsampling and transposed convolution; these are the other layers whose step matters only to the next window).
GRID_CHAINS = [
    ([2, 12, 10], ["crop: {size: [8, 6]}", "conv: {out: 2, kernel: 3}"]),
    ([2, 9], ["crop: {size: 5}", "conv: {out: 2, kernel: 3}"]),
    # x2 on H, x4 on W: a 5-wide window spans 3 and 2 input rows / columns (where a window is narrower than a
    # whole number of coarse positions, the formula under-counts: test_receptive_measured.STRADDLING)
    ([2, 8, 6], ["upsample: {size: [16, 24]}", "conv: {out: 2, kernel: 5, padding: 2}"]),
    ([8, 4, 6], ["pixel_shuffle: {upscale_factor: 2}", "conv: {out: 2, kernel: 5, padding: 2}"]),
    ([2, 12, 12], ["pixel_unshuffle: {downscale_factor: 3}", "conv: {out: 4, kernel: 3, padding: 1}"]),
]


@pytest.mark.parametrize(("shape", "layers"), GRID_CHAINS, ids=[" | ".join(c[1]) for c in GRID_CHAINS])
def test_a_window_after_the_layer_sees_what_torch_shows(shape: list[int], layers: list[str]) -> None:
    from test_receptive_measured import _chain, by_gradient, seen_rf

    report, model = _chain(shape, layers)
    assert by_gradient(model, tuple(shape)) == seen_rf(report)
