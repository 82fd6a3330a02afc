"""Property: random networks of tokens and attention, written as spec text and, independently, as a plain torch
module (nn.Conv*, nn.LayerNorm, nn.Linear, nn.MultiheadAttention's parameters with the math path written out by
hand), agree on every figure: archcalc analyses the text; torch measures the twin. archcalc's own builder
(archcalc.torch.build, recipes, modules) is not used: the twin is written here from the layer's meaning, so a rule
in archcalc and the module archcalc builds cannot agree with each other and both be wrong unnoticed.

The generator draws a grid of 1, 2 or 3 spatial axes, an optional patch embedding (a conv with kernel = stride),
`to_tokens`, then token layers: `layernorm` (affine or not, bias or not), `linear` (random widths, bias or not),
activations, `dropout`, `self_attention` (heads dividing C, bias or not), `class_token`, `pos_embed`, residuals
over token sub-blocks (pre-norm attention, an MLP, an activation), some of them frozen (`trainable: false`); it
ends as tokens, on one token (`take_token` and a linear head) or back on a grid of 1 to 3 axes (`to_grid`, then
convs, batch norm, pooling and a flattening linear). Shapes are tracked here too, by the generator's own
arithmetic, to draw only valid layers (and as one more check of archcalc's).

Quantities (batch 1 to 3, float32/float64/bfloat16/float16 activations, on the CPU):
  output_shape            the twin's output
  params, buffers         the twin's parameters and buffers (element counts)
  macs                    FlopCounterMode's FLOPs / 2 (eval, no_grad)
  fvcore                  fvcore's FlopCountAnalysis total (float32)
  saved_bytes             bytes autograd packs in a training-mode forward (saved_tensors_hooks, by storage,
  saved_bytes_input_grad  parameters and buffers excluded; tests/measure.saved_bytes), the input needing no
                          gradient / needing one
  peak                    the inference peak beyond parameters, buffers and the input, against the most bytes of
                          op outputs alive at once (tests/measure.dispatch_peak_bytes: a dispatch mode, which sees no
                          workspace inside a kernel, as archcalc predicts none)
  peak_profiler           the same peak from torch.profiler's CPU memory events (tests/measure.peak_bytes), which
                          sees workspace too (a conv's im2col columns, layer norm's copy of a permuted input): at
                          least archcalc's, not equal
  step_peak               the training step's peak with Adam, a later step and the first (tests/measure.
  step_peak_first         step_peak_bytes); where calc declines (self_attention: its backward is not modelled),
  step_declined           that it declines, and only there

What the search found and archcalc does not follow yet is reported, not asserted, for the networks it concerns
(`known`: a permuted layout read by a layer, attention's query at batch 1, a class token's gradient, a taken
token's backward), each pinned by a strict xfail at the end of this file that fails the day archcalc follows it.

The default tier draws a few networks beside three fixed ones (`test_random_token_networks_match_plain_torch`, a
few seconds); the long run is marked `long`: `ARCHCALC_PROPERTY_EXAMPLES=600 pytest -m long
tests/test_property_tokens.py -s` prints the agreement count per quantity.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from measure import dispatch_peak_bytes, fvcore_total, peak_bytes, saved_bytes, step_peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.training import step_peaks, step_unfollowed

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
ASSERTED = ("output_shape", "params", "buffers", "macs", "fvcore", "saved_bytes", "saved_bytes_input_grad", "peak",
            "step_peak", "step_peak_first", "step_declined")


# ---- the layers: spec text and plain torch, from one drawn description -------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One drawn layer: its kind, its spec arguments, whether it learns (`trainable: false` when not), and for a
    residual the layers of its body."""

    kind: str
    args: tuple[tuple[str, Any], ...] = ()
    trainable: bool = True
    body: tuple[Layer, ...] = field(default=())

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def yaml_lines(layer: Layer, indent: int) -> str:
    pad = " " * indent
    if layer.kind == "residual":
        return f"{pad}- residual:\n" + "".join(yaml_lines(b, indent + 4) for b in layer.body)
    args = dict(layer.args)
    if not layer.trainable:
        args["trainable"] = False
    if not args:
        return f"{pad}- {layer.kind}\n"
    return f"{pad}- {layer.kind}: {{" + ", ".join(f"{k}: {_value(v)}" for k, v in args.items()) + "}\n"


class TokenState:
    """The tensor between layers, as this file's own arithmetic sees it: a grid (C, *sizes) or tokens (N, C)."""

    def __init__(self, grid: tuple[int, ...] | None = None, tokens: tuple[int, int] | None = None) -> None:
        self.grid, self.tokens = grid, tokens


class MathAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters (so their count is torch's own), run the
    way docs/tokens.md describes the math path archcalc models: one projection to q, k, v (C -> 3C); q scaled by
    1/sqrt(d); k and v made contiguous per head; softmax(Q K^T) over the keys; A V; the heads joined; the output
    projection. `test_math_attention_is_multihead_attention` checks it computes what nn.MultiheadAttention does."""

    def __init__(self, channels: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(channels, heads, bias=bias, batch_first=True)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)  # B x N x 3C
        q, k, v = qkv.view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # each B x h x N x d
        weights = torch.softmax((q * (1.0 / math.sqrt(d))) @ k.contiguous().transpose(2, 3), dim=3)
        joined = (weights @ v.contiguous()).transpose(1, 2).reshape(b, n, c)
        return F.linear(joined, self.mha.out_proj.weight, self.mha.out_proj.bias)


class Lambda(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class ClassToken(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], 1, x.shape[2]), x], dim=1)


class PositionEmbedding(nn.Module):
    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, tokens, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def twin(layer: Layer, shape: tuple[int, ...], is_tokens: bool) -> tuple[nn.Module, tuple[int, ...], bool]:
    """The plain torch module for `layer` on a per-sample `shape` ((N, C) tokens or (C, *sizes) a grid), with the
    shape after it (this file's arithmetic) and whether that is tokens."""
    k, a = layer.kind, dict(layer.args)
    nd = len(shape) - 1  # spatial axes of a grid
    module: nn.Module
    if k == "residual":
        parts = []
        inner, tok = shape, is_tokens
        for b in layer.body:
            m, inner, tok = twin(b, inner, tok)
            parts.append(m)
        assert inner == shape and tok == is_tokens
        module, out = Residual(nn.Sequential(*parts)), shape
    elif k == "conv":
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
        module = conv(shape[0], a["out"], a["kernel"], stride=a.get("stride", 1), padding=a.get("padding", 0),
                      bias=a.get("bias", True))
        p, s, kk = a.get("padding", 0), a.get("stride", 1), a["kernel"]
        out = (a["out"], *((x + 2 * p - kk) // s + 1 for x in shape[1:]))
    elif k == "to_tokens":
        module, out, is_tokens = Lambda(lambda x: x.flatten(2).transpose(1, 2)), \
            (math.prod(shape[1:]), shape[0]), True
        return module, out, is_tokens
    elif k == "layernorm":
        # each token over its channels; a grid: the whole sample (archcalc's default normalized_shape)
        module = nn.LayerNorm(shape[-1] if is_tokens else shape, elementwise_affine=a["elementwise_affine"],
                              bias=a["bias"])
        out = shape
    elif k == "linear" and is_tokens:
        module, out = nn.Linear(shape[1], a["out"], bias=a["bias"]), (shape[0], a["out"])
    elif k == "linear":  # on a grid: flattened first
        module, out = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), a["out"], bias=a["bias"])), (a["out"],)
    elif k in ACTIVATIONS:
        module = nn.GELU(approximate=a["approximate"]) if k == "gelu" and a else ACTIVATIONS[k]()
        out = shape
    elif k == "dropout":
        module, out = nn.Dropout(a["p"]), shape
    elif k == "self_attention":
        module, out = MathAttention(shape[1], a["num_heads"], a["bias"]), shape
    elif k == "class_token":
        module, out = ClassToken(shape[1]), (shape[0] + 1, shape[1])
    elif k == "pos_embed":
        module, out = PositionEmbedding(*shape), shape
    elif k == "take_token":
        i = a["index"]
        module, out, is_tokens = Lambda(lambda x: x[:, i]), (shape[1],), False
        return module, out, is_tokens
    elif k == "to_grid":
        size = tuple(a["size"])
        module = Lambda(lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size))
        return module, (shape[1], *size), False
    elif k == "batchnorm":
        module, out = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1](shape[0]), shape
    elif k in ("maxpool", "avgpool"):
        pool = {"maxpool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
                "avgpool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)}[k][nd - 1]
        module, out = pool(a["kernel"]), (shape[0], *(x // a["kernel"] for x in shape[1:]))
    elif k == "adaptive_avgpool":
        pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[nd - 1]
        module, out = pool(a["size"]), (shape[0], *(a["size"],) * nd)
    else:
        raise AssertionError(k)
    if not layer.trainable:
        module.requires_grad_(False)
    return module, out, is_tokens


# ---- the generator -------------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def token_layer(draw: st.DrawFn, c: int, n: int, inside: bool = False) -> Layer:
    """A layer on n tokens of c channels that keeps the width c unless it is a `linear` outside a residual."""
    choices = ["layernorm", "linear", "act", "dropout"]
    if n > 1:  # attention over a single token: test_attention_over_a_single_token_at_batch_1
        choices += ["attention", "attention"]
    if not inside:
        choices += ["class_token", "pos_embed", "residual", "residual"]
    what = draw(st.sampled_from(choices))
    frozen = draw(st.integers(0, 4)) == 0
    if what == "layernorm":
        return Layer("layernorm", (("elementwise_affine", draw(st.booleans())), ("bias", draw(st.booleans()))),
                     trainable=not frozen)
    if what == "linear":
        out = c if inside else draw(st.integers(1, 8))
        return Layer("linear", (("out", out), ("bias", draw(st.booleans()))), trainable=not frozen)
    if what == "act":
        act = draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"]))
        return Layer("gelu", (("approximate", "tanh"),)) if act == "gelu_tanh" else Layer(act)
    if what == "dropout":
        return Layer("dropout", (("p", draw(st.sampled_from([0.0, 0.1, 0.5]))),))
    if what == "attention":
        heads = draw(st.sampled_from(_divisors(c)))
        return Layer("self_attention", (("num_heads", heads), ("bias", draw(st.booleans()))), trainable=not frozen)
    if what in ("class_token", "pos_embed"):
        return Layer(what, trainable=not frozen)
    kind = draw(st.sampled_from(["attention", "mlp", "act", "any"] if n > 1 else ["mlp", "act", "any"]))
    if kind == "attention":
        heads = draw(st.sampled_from(_divisors(c)))
        body: tuple[Layer, ...] = (draw(token_layer(c, n, inside=True)) if draw(st.booleans()) else
                                   Layer("layernorm", (("elementwise_affine", True), ("bias", True))),
                                   Layer("self_attention", (("num_heads", heads), ("bias", draw(st.booleans())))))
    elif kind == "mlp":
        hidden = draw(st.integers(1, 8))
        act = draw(st.sampled_from(["gelu", "relu", "silu"]))
        body = (Layer("layernorm", (("elementwise_affine", True), ("bias", draw(st.booleans())))),
                Layer("linear", (("out", hidden), ("bias", draw(st.booleans())))), Layer(act),
                Layer("linear", (("out", c), ("bias", draw(st.booleans())))))
    elif kind == "act":
        body = (Layer(draw(st.sampled_from(["gelu", "relu", "tanh"]))),)
    else:
        body = tuple(draw(st.lists(token_layer(c, n, inside=True), min_size=1, max_size=3)))
    return Layer("residual", body=body)


def _width(layer: Layer, c: int) -> int:
    return layer.arg("out") if layer.kind == "linear" else c


@st.composite
def grid_layer(draw: st.DrawFn, shape: tuple[int, ...]) -> Layer | None:
    what = draw(st.sampled_from(["conv", "conv", "batchnorm", "relu", "maxpool", "avgpool", "adaptive_avgpool"]))
    smallest = min(shape[1:])
    if what == "conv":
        k = draw(st.integers(1, 3))
        p = draw(st.integers(0, k // 2))
        if smallest + 2 * p < k:
            return None
        return Layer("conv", (("out", draw(st.integers(1, 5))), ("kernel", k), ("stride", draw(st.integers(1, 2))),
                              ("padding", p), ("bias", draw(st.booleans()))), trainable=draw(st.integers(0, 4)) > 0)
    if what == "batchnorm":
        return Layer("batchnorm", trainable=draw(st.integers(0, 4)) > 0)
    if what == "maxpool" and len(shape) == 2:
        # 1-D max pooling: under a dispatch mode (the peaks' measurement) torch makes indices a plain call does not
        # (tests/test_property.py, test_untracked_1d_max_pooling_is_reported_not_asserted)
        what = "avgpool"
    if what in ("maxpool", "avgpool"):
        return Layer(what, (("kernel", 2),)) if smallest >= 2 else None
    if what == "adaptive_avgpool":
        return Layer("adaptive_avgpool", (("size", 1),))
    return Layer("relu")


def _factor(draw: st.DrawFn, n: int, rank: int) -> list[int]:
    sizes = []
    for _ in range(rank - 1):
        d = draw(st.sampled_from(_divisors(n)))
        sizes.append(d)
        n //= d
    return [*sizes, n]


@st.composite
def token_networks(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[Layer, ...], str, int]:
    """(input shape, layers, dtype, batch)."""
    batch = draw(st.integers(1, 3))
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    c = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, {1: 12, 2: 6, 3: 3}[rank])) for _ in range(rank)]
    inp = (c, *sizes)
    layers: list[Layer] = []
    if draw(st.booleans()):  # a patch embedding
        patch = draw(st.integers(1, min(3, *sizes)))
        c = draw(st.integers(1, 8))
        layers.append(Layer("conv", (("out", c), ("kernel", patch), ("stride", patch), ("bias", draw(st.booleans()))),
                            trainable=draw(st.integers(0, 4)) > 0))
        sizes = [s // patch for s in sizes]
    layers.append(Layer("to_tokens"))
    n, has_class = math.prod(sizes), False
    if draw(st.booleans()):  # torchvision's ViT: the class token first, which makes the sequence contiguous
        layers.append(Layer("class_token", trainable=draw(st.integers(0, 4)) > 0))
        n, has_class = n + 1, True
    for _ in range(draw(st.integers(1, 6))):
        layer = draw(token_layer(c, n))
        if layer.kind == "class_token":
            if has_class:
                continue
            has_class, n = True, n + 1
        layers.append(layer)
        c = _width(layer, c)
    end = draw(st.sampled_from(["tokens", "take", "grid", "grid"]))
    if end == "take":
        if draw(st.booleans()):
            layers.append(Layer("layernorm", (("elementwise_affine", True), ("bias", True))))
        layers.append(Layer("take_token", (("index", draw(st.integers(0, n - 1))),)))
        layers.append(Layer("linear", (("out", draw(st.integers(1, 5))), ("bias", draw(st.booleans()))),
                            trainable=draw(st.integers(0, 4)) > 0))
    elif end == "grid":
        size = _factor(draw, n, draw(st.integers(1, 3)))
        layers.append(Layer("to_grid", (("size", size),)))
        shape: tuple[int, ...] = (c, *size)
        for _ in range(draw(st.integers(0, 3))):
            layer = draw(grid_layer(shape))
            if layer is None or (layer.kind == "batchnorm" and batch * math.prod(shape[1:]) == 1):
                # torch's batch norm refuses to train on one value per channel
                continue
            layers.append(layer)
            shape = twin(layer, shape, False)[1]
        if draw(st.booleans()):
            layers.append(Layer("linear", (("out", draw(st.integers(1, 5))), ("bias", draw(st.booleans())))))
    dtype = draw(st.sampled_from(["float32", "float32", "float32", "float64", "bfloat16", "float16"]))
    return inp, tuple(layers), dtype, batch


# ---- measurement: the twin in torch, against archcalc's analysis of the text ----------------------------------------


def spec_text(inp: tuple[int, ...], layers: tuple[Layer, ...]) -> str:
    return f"name: tokens\ninput: [{', '.join(map(str, inp))}]\nlayers:\n" + \
        "".join(yaml_lines(layer, 2) for layer in layers)


def build_twin(inp: tuple[int, ...], layers: tuple[Layer, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """The plain torch network and its per-sample output shape (this file's arithmetic)."""
    parts, shape, is_tokens = [], inp, False
    for layer in layers:
        module, shape, is_tokens = twin(layer, shape, is_tokens)
        parts.append(module)
    return nn.Sequential(*parts), shape


MEMORY = ("saved_bytes", "saved_bytes_input_grad", "peak", "peak_profiler", "step_peak", "step_peak_first")


def permuted(inp: tuple[int, ...], layers: tuple[Layer, ...], batch: int, forward: bool = True) -> bool:
    """Whether a layer reads a tensor in a permuted layout: to_tokens' sequence (the grid's storage seen channels
    last) read by anything but a class token (whose concatenation copies it), or to_grid's grid (the tokens'
    storage seen channels first) read by anything. torch lays an element-wise op's output out as its input (a
    permuted tensor stays permuted) and a matrix product folds or copies a permuted input depending on the batch
    and on whether the weight needs a gradient; archcalc follows neither yet
    (test_permuted_layout_is_kept_by_element_wise_layers, test_linear_on_permuted_tokens_at_batch_1)."""
    shape: tuple[int, ...] = inp
    is_tokens = False
    for i, layer in enumerate(layers):
        after = layers[i + 1] if i + 1 < len(layers) else None
        if layer.kind == "to_tokens" and math.prod(shape[1:]) > 1 and shape[0] > 1 and after is not None and \
                after.kind != "class_token":
            # (a trainable linear at batch > 1 copies it, as archcalc's `strided` says, but not always only that:
            # test_a_trainable_linear_copies_permuted_tokens_at_batch_2 and the xfails after it)
            return True
        if layer.kind == "to_grid" and min(shape) > 1 and after is not None and \
                not (forward and after.kind == "linear"):
            return True  # (a flattening linear copies it in its forward, as archcalc's `strided` says)
        shape, is_tokens = twin(layer, shape, is_tokens)[1:]
    return False


def _all(layers: tuple[Layer, ...]) -> list[Layer]:
    return [x for layer in layers for x in (layer, *_all(layer.body))]


def known(inp: tuple[int, ...], layers: tuple[Layer, ...], batch: int) -> dict[str, str]:
    """quantity -> why, for the disagreements this test found that are reported, not asserted (each has its own
    test, marked xfail, that fails the day archcalc follows it)."""
    why: dict[str, str] = {}
    if batch == 1 and any(x.kind == "self_attention" and x.arg("num_heads") > 1 for x in _all(layers)):
        # test_attention_at_batch_1_copies_no_query
        why["peak"] = why["peak_profiler"] = "attention's query at batch 1"
    if batch == 1 and any(x.kind == "class_token" and x.trainable for x in _all(layers)):
        # test_class_token_gradient_at_batch_1
        why["step_peak"] = why["step_peak_first"] = "a class token's gradient at batch 1"
    if batch > 1 and any(x.kind == "linear" and y.kind == "class_token" for x, y in zip(layers, layers[1:])):
        # test_linear_before_a_class_token_copies_its_gradient
        why["step_peak"] = why["step_peak_first"] = "a linear layer's gradient through a class token"
    if any(x.kind == "take_token" for x in layers):  # test_step_peak_of_a_taken_token
        why["step_peak"] = why["step_peak_first"] = "a taken token's backward"
    if permuted(inp, layers, batch):
        why.update(dict.fromkeys(MEMORY, "permuted tokens"))
    elif permuted(inp, layers, batch, forward=False):
        why["step_peak"] = why["step_peak_first"] = "permuted tokens"
    return why


def agreement(inp: tuple[int, ...], layers: tuple[Layer, ...], dtype: str,
              batch: int) -> dict[str, tuple[Any, Any]]:
    """quantity -> (archcalc's figure, the twin's measured one) for one network on the CPU. The memory figures of a
    network that reads permuted tokens (`permuted`) are reported under a key saying so, not asserted."""
    spec = load_text(spec_text(inp, layers))
    report = analyze(spec, batch=batch, dtype=dtype, device="cpu")
    grad_report = analyze(spec, batch=batch, dtype=dtype, device="cpu", input_requires_grad=True)
    torch.manual_seed(0)
    model, shape = build_twin(inp, layers)
    model = model.to(TORCH_DTYPES[dtype]).eval()
    x = torch.randn(batch, *inp, dtype=TORCH_DTYPES[dtype])
    t = report.totals
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    assert tuple(y.shape) == (batch, *shape), "the twin's own shape arithmetic"
    result: dict[str, tuple[Any, Any]] = {
        "output_shape": ((batch, *t.output), tuple(y.shape)),
        "params": (t.params, sum(p.numel() for p in model.parameters())),
        "buffers": (t.buffers, sum(b.numel() for b in model.buffers())),
        "macs": (t.macs, counter.get_total_flops() // 2),
    }
    if dtype == "float32":
        fvcore = analyze(spec, batch=batch, dtype=dtype, convention="fvcore", device="cpu")
        result["fvcore"] = (fvcore.totals.flops, fvcore_total(model, x))
    result["saved_bytes"] = (t.saved_bytes, saved_bytes(model, x))
    result["saved_bytes_input_grad"] = (grad_report.totals.saved_bytes,
                                        saved_bytes(model, x.clone().requires_grad_(True)))
    # the inference peak: what ops return, alive at once (a dispatch mode: no workspace inside a kernel, which
    # archcalc does not predict); torch.profiler's figure, which sees a conv's im2col columns too, is at least it
    peak = t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * x.element_size()
    with torch.no_grad():
        result["peak"] = (peak, dispatch_peak_bytes(lambda: model(x)))
    result["peak_profiler"] = (peak, peak_bytes(lambda: model(x)))
    if any(p.requires_grad for p in model.parameters()):
        # calc declines the step where its backward is not modelled, and only there: attention's math path with
        # one channel per head and several heads (its out_proj runs as a matmul and a bias add; the twin's
        # attention is that math path too)
        one_per_head = any(r.kind == "self_attention" and r.op is not None and r.op.args["num_heads"] > 1
                           and r.input[1] == r.op.args["num_heads"] for r in report.rows)
        declined = step_unfollowed(report)
        result["step_declined"] = (bool(declined) and "self_attention" in declined, one_per_head)
        if not declined:
            later, first = step_peaks(report, "adam")
            for steps, predicted in ((1, first), (2, later)):
                torch.manual_seed(0)
                model = build_twin(inp, layers)[0].to(TORCH_DTYPES[dtype])
                optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
                _, step = step_peak_bytes(model, (x,), optimizer, steps=steps)
                result["step_peak_first" if steps == 1 else "step_peak"] = (predicted.peak, step)
    for quantity, why in known(inp, layers, batch).items():
        if quantity in result:
            result[f"{quantity} ({why})"] = result.pop(quantity)
    return result


def _check(example: tuple[tuple[int, ...], tuple[Layer, ...], str, int]) -> dict[str, tuple[Any, Any]]:
    inp, layers, dtype, batch = example
    try:
        return agreement(inp, layers, dtype, batch)
    except (RuntimeError, NotImplementedError) as exc:
        if "not implemented for" not in str(exc):
            raise
        reject()  # the CPU has no kernel for this dtype: not archcalc's to predict
        raise


def _failures(example: tuple[tuple[int, ...], tuple[Layer, ...], str, int],
              checks: dict[str, tuple[Any, Any]]) -> list[str]:
    inp, layers, dtype, batch = example
    return [f"{q} ({dtype}, batch {batch}): archcalc {p}, torch {m}" for q, (p, m) in checks.items()
            if (q in ASSERTED and p != m) or (q == "peak_profiler" and p > m)]


VIT = (Layer("conv", (("out", 4), ("kernel", 2), ("stride", 2), ("bias", True))), TOKENS := Layer("to_tokens"),
       Layer("class_token"), Layer("pos_embed"),
       Layer("residual", body=(Layer("layernorm", (("elementwise_affine", True), ("bias", True))),
                               Layer("self_attention", (("num_heads", 2), ("bias", True))))),
       Layer("residual", body=(Layer("layernorm", (("elementwise_affine", True), ("bias", True))),
                               Layer("linear", (("out", 8), ("bias", True))), Layer("gelu"),
                               Layer("linear", (("out", 4), ("bias", True))))),
       Layer("layernorm", (("elementwise_affine", True), ("bias", True))), Layer("take_token", (("index", 0),)),
       Layer("linear", (("out", 3), ("bias", True))))


# Beside the drawn networks, every run checks three fixed ones: a small ViT (patch embedding, class token, position
# embedding, pre-norm attention and MLP blocks, its class token's head; 9 tokens of 4 channels, where attention's
# peak is at its softmax), a token network without attention (whose training step's peak archcalc gives), and a
# grid from tokens flattened into a linear layer, so that the few drawn examples cannot all miss a rule.
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@example(((3, 4, 8), VIT, "float32", 2))
@example(((4, 5), (TOKENS, Layer("class_token"), Layer("to_grid", (("size", [2, 3]),)),
                   Layer("linear", (("out", 3), ("bias", True)))), "float32", 2))
@example(((3, 4, 4), (Layer("conv", (("out", 4), ("kernel", 2), ("stride", 2), ("bias", False))), TOKENS,
                      Layer("linear", (("out", 6), ("bias", True))), Layer("layernorm", (("elementwise_affine", True),
                                                                                            ("bias", False))),
                      Layer("gelu"), Layer("dropout", (("p", 0.1),)), Layer("pos_embed"),
                      Layer("to_grid", (("size", [2, 2]),)), Layer("conv", (("out", 2), ("kernel", 1))),
                      Layer("batchnorm"), Layer("linear", (("out", 2), ("bias", True)))), "float32", 2))
@given(token_networks())
def test_random_token_networks_match_plain_torch(example: tuple[tuple[int, ...], tuple[Layer, ...], str, int]) -> None:
    failures = _failures(example, _check(example))
    assert not failures, "\n".join(failures) + "\n" + spec_text(example[0], example[1])


@pytest.mark.parametrize(("channels", "heads", "tokens", "bias"), [(6, 3, 5, True), (4, 1, 7, False), (8, 8, 2, True)])
def test_math_attention_is_multihead_attention(channels: int, heads: int, tokens: int, bias: bool) -> None:
    # The twin's attention is torch's own multi-head self-attention: the same output as nn.MultiheadAttention with
    # the same parameters (called as self-attention, no mask, no dropout), to rounding.
    torch.manual_seed(1)
    attention = MathAttention(channels, heads, bias).double()
    if bias:
        with torch.no_grad():
            attention.mha.in_proj_bias.normal_()
            attention.mha.out_proj.bias.normal_()
    x = torch.randn(3, tokens, channels, dtype=torch.float64)
    expected = attention.mha(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(attention(x), expected)


@pytest.mark.long
def test_long_run_token_agreement_counts() -> None:
    """Hundreds of token networks (600 by default: about a minute); the tally per quantity is printed. Every asserted
    quantity must agree, and torch.profiler's peak be at least archcalc's."""
    tally: Counter[tuple[str, str]] = Counter()
    first: dict[str, str] = {}

    @settings(max_examples=int(os.environ.get("ARCHCALC_PROPERTY_EXAMPLES", "600")), deadline=None,
              database=None, suppress_health_check=list(HealthCheck))
    @given(token_networks())
    def one(example: tuple[tuple[int, ...], tuple[Layer, ...], str, int]) -> None:
        inp, layers, dtype, batch = example
        try:
            checks = agreement(inp, layers, dtype, batch)
        except (RuntimeError, NotImplementedError) as exc:
            if "not implemented for" not in str(exc):
                raise
            tally["accepted_by_torch", "no CPU kernel for the dtype"] += 1
            return
        tally["networks", "run"] += 1
        for quantity, (predicted, measured) in checks.items():
            verdict = "agree" if predicted == measured else "disagree"
            if quantity == "peak_profiler" and predicted != measured:
                verdict = "above" if predicted < measured else "below"  # workspace: the profiler sees more
            tally[quantity, verdict] += 1
            if verdict != "agree":
                first.setdefault(quantity, f"{dtype}, batch {batch}: archcalc {predicted}, torch {measured}\n"
                                 + spec_text(inp, layers))

    one()
    counts = {q: {v: n for (q2, v), n in sorted(tally.items()) if q2 == q} for q in sorted({q for q, _ in tally})}
    print(json.dumps(counts, indent=1))
    for key, text in sorted(first.items()):
        print(f"--- first {key}: {text}")
    assert not any(tally[q, "disagree"] for q in ASSERTED), counts
    assert not tally["peak_profiler", "below"], first.get("peak_profiler")


# ---- what the search found: fixed (regressions) and reported (xfail, strict: they fail the day archcalc follows) ----


def _seq(*layers: Layer) -> tuple[Layer, ...]:
    return layers


CLS = Layer("class_token")


def _ln(affine: bool = True) -> Layer:
    return Layer("layernorm", (("elementwise_affine", affine), ("bias", affine)))


def _linear(out: int, trainable: bool = True, bias: bool = True) -> Layer:
    return Layer("linear", (("out", out), ("bias", bias)), trainable=trainable)


@pytest.mark.parametrize(("inp", "layers", "batch"), [
    ((3, 4, 4), _seq(Layer("layernorm", (("elementwise_affine", True), ("bias", True)))), 2),  # a grid's norm
    ((2, 3, 3), _seq(TOKENS, CLS, _ln(False)), 3),  # each token's
    ((1, 1), _seq(TOKENS, _ln(False)), 1),
])
def test_layer_norm_statistics_are_in_the_inference_peak(inp: tuple[int, ...], layers: tuple[Layer, ...],
                                                          batch: int) -> None:
    # Found by the search: F.layer_norm at inference still returns the mean and 1/std per normalized group beside
    # its output (native_layer_norm), freed as it returns; the peak left them out (the last case: 4 bytes
    # predicted, 12 measured). Fixed: LayerNorm.transient.
    checks = agreement(inp, layers, "float32", batch)
    assert checks["peak"][0] == checks["peak"][1]


@pytest.mark.parametrize(("inp", "layers", "batch"), [
    ((4, 5, 1), _seq(Layer("conv", (("out", 8), ("kernel", 1))), TOKENS, CLS, Layer("relu"),
                     Layer("to_grid", (("size", [2, 3]),))), 3),  # to_grid's backward: a view
    ((1, 1), _seq(TOKENS, CLS, Layer("pos_embed")), 2),  # the class token's: a view (narrow)
    ((3, 2, 2), _seq(Layer("conv", (("out", 8), ("kernel", 1))), TOKENS, CLS, _linear(1, trainable=False)), 3),
    ((1, 1, 1), _seq(TOKENS, _linear(1, bias=False), Layer("pos_embed", trainable=False)), 1),  # x + pos: the same
])
def test_views_and_additions_of_tokens_pass_their_gradient_on(inp: tuple[int, ...], layers: tuple[Layer, ...],
                                                              batch: int) -> None:
    # Found by the search: to_tokens and to_grid (transposes and reshapes), class_token (CatBackward0's narrow) and
    # pos_embed (AddBackward0) hand their input a view of their output's gradient, or the gradient itself; the step
    # timeline made a new one of the input's size for each (the first case: 2,464 bytes predicted, 1,888 measured).
    # Fixed: passes_gradient on the four kinds.
    checks = agreement(inp, layers, "float32", batch)
    assert checks["step_peak_first"][0] == checks["step_peak_first"][1]
    assert checks["step_peak"][0] == checks["step_peak"][1]


def _disagree(inp: tuple[int, ...], layers: tuple[Layer, ...], batch: int, quantity: str,
              dtype: str = "float32") -> None:
    """Assert one quantity as this file's search does; the reported cases below fail here."""
    checks = agreement(inp, layers, dtype, batch)
    key = next(k for k in checks if k == quantity or k.startswith(quantity + " ("))
    predicted, measured = checks[key]
    assert predicted == measured, f"{key}: archcalc {predicted}, torch {measured}"


@pytest.mark.xfail(reason="self_attention's saved rule: over one token at batch 1, k.contiguous() and "
                   "v.contiguous() are views of qkv, so the products keep qkv's storage (3NC), not copies of N x C "
                   "each (attnmem's SelfAttention.saved; the generator draws no attention over one token)")
def test_attention_over_a_single_token_at_batch_1() -> None:
    _disagree((1, 1), _seq(TOKENS, Layer("self_attention", (("num_heads", 1), ("bias", False)))), 1, "saved_bytes")


@pytest.mark.xfail(reason="self_attention's transient rule: at batch 1 the scaled q of several heads folds into "
                   "the batched product as a view, no contiguous copy (N x C less than predicted: 144 bytes "
                   "predicted, 128 measured; attnmem's SelfAttention.transient)")
def test_attention_at_batch_1_copies_no_query() -> None:
    _disagree((2, 1), _seq(TOKENS, CLS, Layer("self_attention", (("num_heads", 2), ("bias", False)))), 1, "peak")


@pytest.mark.xfail(reason="the engine's layout: an element-wise op on a permuted tensor (to_tokens' sequence) "
                   "returns it permuted (TensorIterator keeps the input's layout), so the linear after it copies "
                   "it at batch > 1; archcalc takes the op's output as contiguous (72 bytes predicted, 120 "
                   "measured)")
def test_permuted_layout_is_kept_by_element_wise_layers() -> None:
    _disagree((2, 3), _seq(TOKENS, Layer("gelu"), _linear(1, bias=False)), 2, "peak")


def test_a_trainable_linear_copies_permuted_tokens_at_batch_2() -> None:
    # What archcalc has right of the case below (to_tokens' `strided`): at batch > 1 a linear layer whose weight
    # needs a gradient folds the permuted B x N x C sequence into rows, a copy
    _disagree((4, 6), _seq(TOKENS, _linear(2)), 2, "peak")
    _disagree((4, 6), _seq(TOKENS, _linear(2)), 2, "saved_bytes")


@pytest.mark.xfail(reason="linear on permuted tokens: torch's matmul folds B x N into rows (a copy of the "
                   "permuted input) only where the weight needs a gradient and the batch is above 1; a frozen "
                   "linear, or batch 1, reads it in place; archcalc copies it always (24 bytes predicted, 8 "
                   "measured)")
def test_linear_on_permuted_tokens_at_batch_1() -> None:
    _disagree((2, 2), _seq(TOKENS, _linear(1, bias=False)), 1, "peak")


@pytest.mark.xfail(reason="a trainable class token at batch 1: expand's backward sums nothing, and AccumulateGrad "
                   "takes the narrow view of the concatenation's gradient as the token's .grad, which keeps that "
                   "whole (N+1) x C gradient alive to the optimizer step; the timeline counts a C-element gradient")
def test_class_token_gradient_at_batch_1() -> None:
    _disagree((3, 2, 2), _seq(TOKENS, CLS, _linear(1, trainable=False)), 1, "step_peak_first")


# take_token's backward (SelectBackward0: zeros of the sequence's size, the token's gradient copied in), with or
# without a trainable head after it: found by this file's search below the measured peak (96 bytes predicted, 104
# measured), followed since (`scatters_gradient`)
@pytest.mark.parametrize(("inp", "layers"), [
    ((1, 1), _seq(TOKENS, CLS, _ln(), TAKE := Layer("take_token", (("index", 0),)))),
    ((1, 2), _seq(TOKENS, _linear(1, bias=False), _ln(False), TAKE, _linear(1, bias=False))),  # 108 and 116 bytes
])
def test_step_peak_of_a_taken_token(inp: tuple[int, ...], layers: tuple[Layer, ...]) -> None:
    _disagree(inp, layers, 2, "step_peak_first")



@pytest.mark.xfail(reason="the class token's backward hands the sequence a narrow view of its gradient "
                   "(passes_gradient); what that costs depends on the layer before it, whose backward reads the view "
                   "(a linear layer folds it into rows at batch > 1), which the timeline does not follow: here the "
                   "later step's peak is above the measured one (1,864 bytes predicted, 1,840 measured in "
                   "float64), where without passes_gradient it agreed and the cases of "
                   "test_views_and_additions_of_tokens_pass_their_gradient_on did not")
def test_linear_before_a_class_token_copies_its_gradient() -> None:
    _disagree((4, 2, 1), _seq(Layer("conv", (("out", 7), ("kernel", 1), ("bias", False))), TOKENS,
                              _linear(1, bias=False), Layer("class_token", trainable=False), Layer("gelu")),
              3, "step_peak", "float64")


@pytest.mark.xfail(reason="the input gradient of a linear layer that read permuted tokens is handed back through "
                   "to_tokens' view to the layer before, whose backward copies it (a grid seen channels last): "
                   "the step's peak is below the measured one by that copy (1,296 bytes predicted, 1,584 measured)")
def test_gradient_of_a_linear_reading_permuted_tokens() -> None:
    _disagree((4, 1, 3, 2), _seq(Layer("conv", (("out", 4), ("kernel", 1), ("bias", False))), TOKENS, _linear(4)),
              3, "step_peak_first")


def test_dropout_not_recorded_makes_its_noise() -> None:
    # Found by the long run: dropout in training whose input needs no gradient (a frozen patch embedding and class
    # token before it) is not recorded, yet the CPU's dropout still makes its float noise (input-sized) and frees
    # it as it returns; the step's peak left it out (332 bytes predicted, 428 measured). Fixed:
    # Dropout.untracked_transient.
    _disagree((1, 5), _seq(Layer("conv", (("out", 4), ("kernel", 3), ("stride", 3), ("bias", False)), trainable=False),
                           TOKENS, Layer("class_token", trainable=False), Layer("dropout", (("p", 0.1),)),
                           _linear(1, bias=False), Layer("to_grid", (("size", [2]),))), 3, "step_peak_first")


@pytest.mark.xfail(reason="found by the long run: three linear layers on permuted tokens at batch 3 (the first "
                   "folding a copy of them) peak above archcalc's figure (720 bytes predicted, 1,008 measured in "
                   "float32); not isolated yet")
def test_linear_layers_on_permuted_tokens_at_batch_3() -> None:
    _disagree((2, 6), _seq(TOKENS, _linear(7), _linear(3, bias=False), _linear(4), Layer("silu")), 3, "peak")
