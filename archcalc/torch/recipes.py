"""Where a layer kind meets torch: one recipe per kind, the module that computes it.

A recipe returns a `Call` — a module class and its constructor arguments — rather than a module, so the builder
(`Call.make`) and the exporter (which writes the same call as source) cannot disagree. The core kinds never import
torch or name its classes; this table is the only place that maps them. A kind without a recipe is an error at
build time and fails `tests/test_layers.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from archcalc.core.kinds import REGISTRY, Kind, Shape
from archcalc.core.kinds.base import numel
from archcalc.torch import modules


class Call(NamedTuple):
    """`cls(**kwargs)`; a value may itself be a Call (a module that wraps another)."""

    cls: type
    kwargs: tuple[tuple[str, Any], ...]

    def make(self) -> nn.Module:
        return self.cls(**{k: v.make() if isinstance(v, Call) else v for k, v in self.kwargs})


def call(cls: type, **kwargs: Any) -> Call:
    return Call(cls, tuple(kwargs.items()))


Recipe = Callable[[Kind, Mapping[str, Any], Shape], Call]
RECIPES: dict[str, Recipe] = {}


def recipe(*names: str) -> Callable[[Recipe], Recipe]:
    def register(fn: Recipe) -> Recipe:
        for name in names:
            if name in RECIPES:
                raise RuntimeError(f"two recipes for layer kind '{name}'")
            if name not in REGISTRY:
                raise RuntimeError(f"recipe for unknown layer kind '{name}'")
            RECIPES[name] = fn
        return fn

    return register


def module_call(kind: Kind, args: Mapping[str, Any], inp: Shape) -> Call:
    try:
        fn = RECIPES[kind.name]
    except KeyError:
        raise RuntimeError(f"layer kind '{kind.name}' has no torch recipe in archcalc.torch.recipes") from None
    return fn(kind, args, inp)


# ---- element-wise: the torch.nn class of the same meaning, called with the kind's arguments ----------------------

_ELEMENTWISE: dict[str, type] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softmax": nn.Softmax, "identity": nn.Identity,
    "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
}


@recipe(*_ELEMENTWISE)
def _elementwise(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(_ELEMENTWISE[kind.name], **a)


@recipe("dropout")
def _dropout(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.Dropout, p=a["p"])


@recipe("maxout")
def _maxout(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Maxout, pieces=a["pieces"])


@recipe("channel_shuffle")
def _channel_shuffle(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.ChannelShuffle, groups=a["groups"])


@recipe("channel_slice")
def _channel_slice(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ChannelSliceModule, start=a["start"], stop=a["stop"])


# ---- convolution ----------------------------------------------------------------------------------------------


@recipe("conv")
def _conv(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, d, pads = kind.geometry(a, inp)
    rank = len(inp) - 1
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
    common = dict(in_channels=inp[0], out_channels=a["out_channels"], kernel_size=tuple(k), stride=tuple(s))
    if modules.symmetric(pads):
        return call(cls, **common, padding=tuple(p for p, _ in pads), dilation=tuple(d), groups=a["groups"],
                    bias=a["bias"])
    inner = call(cls, **common, padding=0, dilation=tuple(d), groups=a["groups"], bias=a["bias"])
    return call(modules.AsymmetricPadConv, conv=inner, pads=tuple(tuple(p) for p in pads))


@recipe("conv_transpose")
def _conv_transpose(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, p, op, d = kind._axes(a, inp)
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[len(inp) - 2]
    return call(cls, in_channels=inp[0], out_channels=a["out_channels"], kernel_size=k, stride=s, padding=p,
                output_padding=op, groups=a["groups"], bias=a["bias"], dilation=d)


# ---- dense ----------------------------------------------------------------------------------------------------


@recipe("linear")
def _linear(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.FlattenLinear, in_features=numel(inp), out_features=a["out_features"], bias=a["bias"])


@recipe("flatten")
def _flatten(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.Flatten)


@recipe("bias")
def _bias(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Bias, shape=tuple(kind.shape(a, inp)))


# ---- normalization ----------------------------------------------------------------------------------------------


@recipe("batchnorm")
def _batchnorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    cls = nn.BatchNorm1d if len(inp) <= 2 else (nn.BatchNorm2d, nn.BatchNorm3d)[len(inp) - 3]
    return call(cls, num_features=inp[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                track_running_stats=a["track_running_stats"])


@recipe("layernorm")
def _layernorm(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.LayerNorm, normalized_shape=tuple(kind.norm_shape(a, inp)), eps=a["eps"],
                elementwise_affine=a["elementwise_affine"])


@recipe("groupnorm")
def _groupnorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.GroupNorm, num_groups=a["num_groups"], num_channels=inp[0], eps=a["eps"], affine=a["affine"])


@recipe("lrn")
def _lrn(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.LocalResponseNorm, size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"])


# ---- pooling ----------------------------------------------------------------------------------------------------


@recipe("maxpool")
def _maxpool(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, d, pads = kind.geometry(a, inp)
    cls = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[len(inp) - 2]
    if modules.symmetric(pads):
        return call(cls, kernel_size=k, stride=s, padding=tuple(p for p, _ in pads), dilation=d,
                    ceil_mode=a["ceil_mode"])
    inner = call(cls, kernel_size=k, stride=s, padding=0, dilation=d, ceil_mode=a["ceil_mode"])
    return call(modules.PaddedPool, pool=inner, pads=kind.explicit_pads(a, inp), value=float("-inf"))


@recipe("avgpool")
def _avgpool(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, _, pads = kind.geometry(a, inp)
    cls = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[len(inp) - 2]
    if modules.symmetric(pads):
        return call(cls, kernel_size=k, stride=s, padding=tuple(p for p, _ in pads), ceil_mode=a["ceil_mode"],
                    count_include_pad=a["count_include_pad"])
    inner = call(cls, kernel_size=k, stride=s, padding=0, ceil_mode=a["ceil_mode"])
    return call(modules.PaddedPool, pool=inner, pads=kind.explicit_pads(a, inp), value=0.0)


_ADAPTIVE = {
    "adaptive_avgpool": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
    "adaptive_maxpool": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
}


@recipe("adaptive_avgpool", "adaptive_maxpool", "global_avgpool", "global_maxpool")
def _adaptive(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    family = "adaptive_avgpool" if kind.mode == "avg" else "adaptive_maxpool"
    return call(_ADAPTIVE[family][len(inp) - 2], output_size=kind.sizes(a, inp))


# ---- padding and resizing -------------------------------------------------------------------------------------------


@recipe("zeropad")
def _zeropad(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    pads = kind.pads(a, inp)
    cls = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)[len(pads) - 1]
    return call(cls, padding=modules.f_pad(pads))


_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@recipe("upsample")
def _upsample(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    mode = a["mode"] if a["mode"] == "nearest" else _LINEAR_MODES[len(inp) - 1]
    extra = {} if mode == "nearest" else {"align_corners": a["align_corners"]}
    if a.get("size_of") is not None:
        return call(nn.Upsample, size=tuple(a["size_of"][1:]), mode=mode, **extra)
    if a["size"] is not None:
        size = a["size"] if isinstance(a["size"], int) else tuple(a["size"])
        return call(nn.Upsample, size=size, mode=mode, **extra)
    scale = a["scale_factor"]
    scale = float(scale) if isinstance(scale, int) else tuple(float(s) for s in scale)
    return call(nn.Upsample, scale_factor=scale, mode=mode, **extra)


# ---- modern kinds ---------------------------------------------------------------------------------------------


@recipe("channel_layernorm")
def _channel_layernorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.LayerNorm2d, num_channels=inp[0], eps=a["eps"], elementwise_affine=a["elementwise_affine"])


@recipe("layer_scale")
def _layer_scale(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.LayerScale, shape=(inp[0],) + (1,) * (len(inp) - 1), init=a["init"])


@recipe("stochastic_depth")
def _stochastic_depth(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.StochasticDepth, p=a["p"], mode=a["mode"])


@recipe("mean")
def _mean(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Mean, dims=tuple(range(2, len(inp) + 1)), keepdim=a["keepdim"])


@recipe("pixel_shuffle")
def _pixel_shuffle(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.PixelShuffle, upscale_factor=a["upscale_factor"])


@recipe("pixel_unshuffle")
def _pixel_unshuffle(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.PixelUnshuffle, downscale_factor=a["downscale_factor"])


@recipe("crop")
def _crop(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.CenterCrop, offsets=kind.offsets(a, inp), sizes=kind.sizes(a, inp))


# ---- merges -----------------------------------------------------------------------------------------------------


def _concat(*xs: Any) -> Any:
    import torch

    return torch.cat(xs, 1)


def _add(*xs: Any) -> Any:
    y = xs[0] + xs[1]
    for extra in xs[2:]:
        y += extra  # y is a fresh tensor: accumulate in place
    return y


def _mul(*xs: Any) -> Any:
    y = xs[0] * xs[1]
    for extra in xs[2:]:
        y = y * extra
    return y


MERGE_FUNCTIONS: dict[str, Callable[..., Any]] = {"concat": _concat, "add": _add, "mul": _mul}


def _chain(sign: str, in_place: bool) -> Callable[[str, list[str]], list[str]]:
    def write(y: str, args: list[str]) -> list[str]:
        lines = [f"{y} = {args[0]} {sign} {args[1]}"]
        lines += [f"{y} {sign}= {a}" if in_place else f"{y} = {y} {sign} {a}" for a in args[2:]]
        return lines

    return write


# The same computations as source lines for `export` (y = result variable, args = input variables): a sum
# accumulates in place on its fresh tensor; a product makes each partial product anew (it keeps them for backward).
MERGE_SOURCE: dict[str, Callable[[str, list[str]], list[str]]] = {
    "concat": lambda y, args: [f"{y} = torch.cat([{', '.join(args)}], 1)"],
    "add": _chain("+", in_place=True),
    "mul": _chain("*", in_place=False),
}
