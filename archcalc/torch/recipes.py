"""Where a layer kind meets torch: the module that computes each kind.

A recipe returns a `Call` -- a module class and its constructor arguments -- rather than a module, so the builder
(`Call.make`) and the exporter (which writes the same call as source) cannot disagree. A kind that names its
`torch_class` (plain data on the core kind: "ReLU") is built by the one generic recipe, torch_class(**its
arguments); a kind that needs more (a class chosen by the input's rank, an argument computed from the input shape)
registers its recipe here, under its name, once. A kind with neither is an error when this module is imported, and
fails `tests/test_layers.py`. The core kinds never import torch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from archcalc.core.kinds import REGISTRY, Kind, Shape
from archcalc.core.kinds.base import numel
from archcalc.core.merges import MERGES
from archcalc.torch import modules


class Call(NamedTuple):
    """`cls(**kwargs)`; a value may itself be a Call (a module that wraps another)."""

    cls: type
    kwargs: tuple[tuple[str, Any], ...]

    def make(self) -> nn.Module:
        return self.cls(**{k: v.make() if isinstance(v, Call) else v for k, v in self.kwargs})


def call(cls: type, **kwargs: Any) -> Call:
    return Call(cls, tuple(kwargs.items()))


def torch_class(kind: Kind) -> type | None:
    """The module class a kind names in `torch_class`: archcalc.torch.modules' class of that name, else torch.nn's;
    None when it names none."""
    if not kind.torch_class:
        return None
    cls = getattr(modules, kind.torch_class, None) or getattr(nn, kind.torch_class, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise RuntimeError(f"layer kind '{kind.name}' names torch_class {kind.torch_class!r}, which is neither a "
                           "torch.nn module class nor one of archcalc.torch.modules")
    return cls


Recipe = Callable[[Kind, Mapping[str, Any], Shape], Call]
RECIPES: dict[str, Recipe] = {}


def recipe(*names: str) -> Callable[[Recipe], Recipe]:
    def register(fn: Recipe) -> Recipe:
        for name in names:
            if name in RECIPES:
                raise RuntimeError(f"two recipes for layer kind '{name}'")
            if name not in REGISTRY:
                raise RuntimeError(f"recipe for unknown layer kind '{name}'")
            if REGISTRY[name].torch_class:
                raise RuntimeError(f"layer kind '{name}' names its torch_class: the generic recipe builds it")
            RECIPES[name] = fn
        return fn

    return register


def _generic(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    """torch_class(**the kind's arguments): the kinds' arguments are named like the constructor's."""
    cls = torch_class(kind)
    assert cls is not None
    return Call(cls, tuple((arg.name, a[arg.name]) for arg in kind.args))


def module_call(kind: Kind, args: Mapping[str, Any], inp: Shape) -> Call:
    return RECIPES[kind.name](kind, args, inp)


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


@recipe("mean")
def _mean(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Mean, dims=tuple(range(2, len(inp) + 1)), keepdim=a["keepdim"])


@recipe("crop")
def _crop(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.CenterCrop, offsets=kind.offsets(a, inp), sizes=kind.sizes(a, inp))


# ---- merges -----------------------------------------------------------------------------------------------------


class MergeRecipe(NamedTuple):
    """A merge's torch form: `run(*tensors)` for the builder, and `source(y, args)` the same computation as source
    lines for `export` (y = the result variable, args = the input variables)."""

    run: Callable[..., Any]
    source: Callable[[str, list[str]], list[str]]


MERGE_RECIPES: dict[str, MergeRecipe] = {}


def merge_recipe(name: str, run: Callable[..., Any], source: Callable[[str, list[str]], list[str]]) -> None:
    if name in MERGE_RECIPES:
        raise RuntimeError(f"two recipes for merge '{name}'")
    if name not in MERGES:
        raise RuntimeError(f"recipe for unknown merge '{name}'")
    if MERGES[name].symbol:
        raise RuntimeError(f"merge '{name}' names its operator: the generic recipe runs it")
    MERGE_RECIPES[name] = MergeRecipe(run, source)


# Python's binary operators by symbol: (the operator, its in-place form), as the `operator` module names them.
OPERATORS: dict[str, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    "+": (operator.add, operator.iadd), "-": (operator.sub, operator.isub), "*": (operator.mul, operator.imul),
    "/": (operator.truediv, operator.itruediv),
}


def _operator_recipe(symbol: str, accumulates: bool) -> MergeRecipe:
    """((x0 op x1) op x2) op ...: with `accumulates` the later inputs go in place into the fresh first result."""
    op, in_place = OPERATORS[symbol]
    then = in_place if accumulates else op

    def run(*xs: Any) -> Any:
        y = op(xs[0], xs[1])
        for extra in xs[2:]:
            y = then(y, extra)
        return y

    def source(y: str, args: list[str]) -> list[str]:
        lines = [f"{y} = {args[0]} {symbol} {args[1]}"]
        lines += [f"{y} {symbol}= {a}" if accumulates else f"{y} = {y} {symbol} {a}" for a in args[2:]]
        return lines

    return MergeRecipe(run, source)


def _concat(*xs: Any) -> Any:
    import torch

    return torch.cat(xs, 1)


merge_recipe("concat", _concat, lambda y, args: [f"{y} = torch.cat([{', '.join(args)}], 1)"])


# ---- every kind and merge without a recipe of its own: the generic ones -------------------------------------------

for _kind in REGISTRY.values():
    if _kind.name not in RECIPES:
        if torch_class(_kind) is None:
            raise RuntimeError(f"layer kind '{_kind.name}' has neither a torch_class nor a recipe in "
                               "archcalc.torch.recipes")
        RECIPES[_kind.name] = _generic
for _merge in MERGES.values():
    if _merge.name not in MERGE_RECIPES:
        if _merge.symbol not in OPERATORS:
            raise RuntimeError(f"merge '{_merge.name}' has neither a Python operator nor a recipe in "
                               "archcalc.torch.recipes")
        MERGE_RECIPES[_merge.name] = _operator_recipe(_merge.symbol, _merge.accumulates)
