"""From PyTorch to archcalc: module classes, functions and tensor methods -> a layer kind and its arguments, or a
merge.

A kind that names its torch_class, torch_functions and torch_methods (plain data on the core kind) is read by one
generic rule: its arguments are the module's attributes, or the call's arguments, of the same names. A kind that
needs more registers its rules here under its name (`_modules`, FUNCTIONS); a class or function is mapped once.
The binary merges are recognised from their Python operator (core.merges' `symbol`). Every rule reads the arguments
off the module (or the call) the way archcalc's recipe (archcalc.torch.recipes) writes them, so a module archcalc
builds maps back to the kind and arguments it was built from. Third-party
classes and functions (torchvision's LayerNorm2d, StochasticDepth, channel_shuffle, Permute, SqueezeExcitation's
pieces are plain torch.nn) are named by their qualified names and matched only when their module is imported.
Anything not in the table is an `Unmapped` error naming what it is and why it has no kind.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archcalc.core.kinds import REGISTRY, Arg, Kind
from archcalc.core.merges import MERGES
from archcalc.torch import modules as own
from archcalc.torch.recipes import OPERATORS, torch_class


class Unmapped(Exception):
    """An op with no archcalc kind (the importer adds where it is)."""


class Mapped(NamedTuple):
    """A layer kind and its arguments (archcalc's canonical names), read off a module or a call."""

    kind: str
    args: dict[str, Any]


def _tup(value: Any) -> Any:
    """An int, or a tuple of ints written as one int when all agree."""
    if isinstance(value, (tuple, list)):
        values = tuple(int(v) for v in value)
        return values[0] if len(set(values)) == 1 else values
    return int(value)


def _pairs(flat: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """F.pad's (last before, last after, second-to-last before, ...) as (before, after) per axis, first axis first."""
    pairs = [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
    return tuple(reversed(pairs))


def _padding(pads: tuple[tuple[int, int], ...]) -> Any:
    if all(b == a for b, a in pads):
        return _tup([b for b, _ in pads])
    return tuple(pads)


# ---- modules ------------------------------------------------------------------------------------------------------

ModuleRule = Callable[[Any, tuple[int, ...]], Mapped]


def _conv(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.padding_mode != "zeros":
        raise Unmapped(f"padding_mode={m.padding_mode!r}: archcalc's conv pads with zeros only")
    padding = m.padding if isinstance(m.padding, str) else _tup(m.padding)
    return Mapped("conv", {"out_channels": m.out_channels, "kernel_size": _tup(m.kernel_size),
                           "stride": _tup(m.stride), "padding": padding, "dilation": _tup(m.dilation),
                           "groups": m.groups, "bias": m.bias is not None})


def _asymmetric_conv(m: Any, inp: tuple[int, ...]) -> Mapped:
    inner = m._conv.__self__  # the wrapped nn.ConvNd (its bound _conv_forward)
    mapped = _conv(inner, inp)
    mapped.args["padding"] = _padding(_pairs(m.pad))
    return mapped


def _conv_transpose(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.padding_mode != "zeros":
        raise Unmapped(f"padding_mode={m.padding_mode!r}: archcalc's conv_transpose pads with zeros only")
    return Mapped("conv_transpose", {"out_channels": m.out_channels, "kernel_size": _tup(m.kernel_size),
                                     "stride": _tup(m.stride), "padding": _tup(m.padding),
                                     "output_padding": _tup(m.output_padding), "dilation": _tup(m.dilation),
                                     "groups": m.groups, "bias": m.bias is not None})


def _linear(m: Any, inp: tuple[int, ...]) -> Mapped:
    if len(inp) != 1 and type(m).__name__ != "FlattenLinear":
        raise Unmapped(f"nn.Linear on a per-sample shape {'x'.join(map(str, inp))} acts on the last axis only; "
                       "archcalc's linear takes a vector (flatten first)")
    return Mapped("linear", {"out_features": m.out_features, "bias": m.bias is not None})


def _batchnorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.momentum is None:
        raise Unmapped("momentum=None (a cumulative average) has no archcalc argument")
    return Mapped("batchnorm", {"eps": float(m.eps), "momentum": float(m.momentum), "affine": m.affine,
                                "track_running_stats": m.track_running_stats})


def _layernorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.elementwise_affine and getattr(m, "bias", True) is None:
        raise Unmapped("LayerNorm(bias=False) has no archcalc argument")
    return Mapped("layernorm", {"normalized_shape": _shape_arg(m.normalized_shape), "eps": float(m.eps),
                                "elementwise_affine": m.elementwise_affine})


def _shape_arg(shape: Sequence[int]) -> Any:
    values = tuple(int(v) for v in shape)
    return values[0] if len(values) == 1 else values


def _channel_layernorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("channel_layernorm", {"eps": float(m.eps), "elementwise_affine": m.elementwise_affine})


def _groupnorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("groupnorm", {"num_groups": m.num_groups, "eps": float(m.eps), "affine": m.affine})


def _maxpool(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.return_indices:
        raise Unmapped("return_indices=True (max unpooling) has no archcalc kind")
    return Mapped("maxpool", {"kernel_size": _tup(m.kernel_size), "stride": _tup(m.stride),
                              "padding": _tup(m.padding), "dilation": _tup(m.dilation), "ceil_mode": m.ceil_mode})


def _avgpool(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "divisor_override", None) is not None:
        raise Unmapped("divisor_override has no archcalc argument")
    return Mapped("avgpool", {"kernel_size": _tup(m.kernel_size), "stride": _tup(m.stride),
                              "padding": _tup(m.padding), "ceil_mode": m.ceil_mode,
                              "count_include_pad": m.count_include_pad})


def _padded_pool(m: Any, inp: tuple[int, ...]) -> Mapped:
    padded = tuple(w + b + a for w, (b, a) in zip(inp[1:], _pairs(m.pad)))
    rule = module_rule(m.pool)
    if rule is None:
        raise Unmapped(f"a padded {type(m.pool).__name__}")
    mapped = rule(m.pool, (inp[0], *padded))
    mapped.args["padding"] = _padding(_pairs(m.pad))
    return mapped


def _pool_kind(kind: str, sizes: Any) -> Mapped:
    """Adaptive pooling to 1 everywhere is archcalc's global pooling (the same op, the same figures)."""
    if all(s == 1 for s in sizes):
        return Mapped(kind.replace("adaptive_", "global_"), {})
    return Mapped(kind, {"output_size": _tup(sizes)})


def _adaptive(kind: str) -> ModuleRule:
    def rule(m: Any, inp: tuple[int, ...]) -> Mapped:
        size = m.output_size
        sizes = size if isinstance(size, (tuple, list)) else (size,) * (len(inp) - 1)
        if any(s is None for s in sizes):
            sizes = tuple(w if s is None else s for s, w in zip(sizes, inp[1:]))
        if getattr(m, "return_indices", False):
            raise Unmapped("return_indices=True has no archcalc kind")
        return _pool_kind(kind, sizes)

    return rule


def _zeropad(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "value", 0.0) != 0.0:
        raise Unmapped(f"padding with {m.value}; archcalc's zeropad pads with zeros")
    return Mapped("zeropad", {"padding": _padding(_pairs(m.padding))})


def _upsample_args(size: Any, scale: Any, mode: str, align_corners: Any, inp: tuple[int, ...]) -> dict[str, Any]:
    if mode not in ("nearest", "linear", "bilinear", "trilinear"):
        raise Unmapped(f"mode={mode!r}: archcalc's upsample is 'nearest' or 'linear'")
    args: dict[str, Any] = {"mode": "nearest" if mode == "nearest" else "linear"}
    if mode != "nearest":
        args["align_corners"] = bool(align_corners)
    if size is not None:
        args["size"] = _tup(size)
    else:
        scales = scale if isinstance(scale, (tuple, list)) else (scale,)
        if any(float(s) != int(s) or s < 1 for s in scales):
            raise Unmapped(f"scale_factor={scale!r}: archcalc's upsample takes integer factors")
        args["scale_factor"] = _tup([int(s) for s in scales])
    return args


def _upsample(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "recompute_scale_factor", None):
        raise Unmapped("recompute_scale_factor=True has no archcalc argument")
    return Mapped("upsample", _upsample_args(m.size, m.scale_factor, m.mode, m.align_corners, inp))


def _softmax(m: Any, inp: tuple[int, ...]) -> Mapped:
    dim = m.dim if m.dim is not None else 1
    return Mapped("softmax", {"dim": dim if dim >= 0 else dim + len(inp) + 1})


def _flatten(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.start_dim != 1 or m.end_dim != -1:
        raise Unmapped(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): archcalc's flatten keeps the batch "
                       "axis only (start_dim=1, end_dim=-1)")
    return Mapped("flatten", {})


def _bias(m: Any, inp: tuple[int, ...]) -> Mapped:
    shape = tuple(m.bias.shape)
    per = {(inp[0], *(1,) * (len(inp) - 1)): "channel", (1, *inp[1:]): "position", tuple(inp): "element"}
    if shape not in per:
        raise Unmapped(f"a bias of shape {shape} on input {inp}")
    return Mapped("bias", {"per": per[shape]})


def _layer_scale(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("layer_scale", {"init": float(m.init)})


def _mean(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("mean", {"keepdim": m.keepdim})


def _crop(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("crop", {"size": _tup(m.sizes)})


MODULES: dict[type, ModuleRule] = {}
MODULE_KINDS: dict[type, str] = {}  # the kind each class maps to (adaptive pooling to 1 reads as global pooling)


def _modules(kind: str, rule: ModuleRule, *classes: type) -> None:
    """Register the rule that reads `classes` as layer kind `kind`; a class is mapped once."""
    if kind not in REGISTRY:
        raise RuntimeError(f"importer rule for unknown layer kind '{kind}'")
    for cls in classes:
        if cls in MODULES:
            raise RuntimeError(f"two importer rules for {cls.__module__}.{cls.__qualname__}")
        MODULES[cls] = rule
        MODULE_KINDS[cls] = kind


_modules("conv", _conv, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_modules("conv", _asymmetric_conv, own.AsymmetricPadConv)
_modules("conv_transpose", _conv_transpose, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_modules("linear", _linear, nn.Linear, own.FlattenLinear)
_modules("flatten", _flatten, nn.Flatten)
_modules("bias", _bias, own.Bias)
_modules("batchnorm", _batchnorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_modules("layernorm", _layernorm, nn.LayerNorm)
_modules("channel_layernorm", _channel_layernorm, own.LayerNorm2d)
_modules("groupnorm", _groupnorm, nn.GroupNorm)
_modules("maxpool", _maxpool, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_modules("avgpool", _avgpool, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_modules("maxpool", _padded_pool, own.PaddedPool)  # or avgpool: the rule of the pool it wraps
_modules("adaptive_avgpool", _adaptive("adaptive_avgpool"), nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
         nn.AdaptiveAvgPool3d)
_modules("adaptive_maxpool", _adaptive("adaptive_maxpool"), nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
         nn.AdaptiveMaxPool3d)
_modules("zeropad", _zeropad, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_modules("upsample", _upsample, nn.Upsample)
_modules("softmax", _softmax, nn.Softmax)
_modules("layer_scale", _layer_scale, own.LayerScale)
_modules("mean", _mean, own.Mean)
_modules("crop", _crop, own.CenterCrop)


def _value(arg: Arg, value: Any) -> Any:
    """A value read off torch as the spec parser would give it: a number as the argument's type."""
    if arg.type == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if arg.type == "int" and is_integral(value) and not isinstance(value, bool):
        return int(value)
    return value


def _generic_module(kind: Kind) -> ModuleRule:
    def rule(m: Any, inp: tuple[int, ...]) -> Mapped:
        return Mapped(kind.name, {arg.name: _value(arg, getattr(m, arg.name)) for arg in kind.args})

    return rule


# Classes of other libraries, by qualified name: matched when the library is imported (archcalc never imports it).
NAMED_MODULES: dict[str, ModuleRule] = {
    "torchvision.models.convnext.LayerNorm2d": _channel_layernorm,
    "torchvision.ops.stochastic_depth.StochasticDepth": _generic_module(REGISTRY["stochastic_depth"]),
}

# Modules that only move axes: the importer follows the layout instead of mapping them (see Layout in trace.py).
PERMUTES = ("torchvision.ops.misc.Permute",)


def qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


_COPIES: dict[type, type | None] = {}


def _own_copy(cls: type) -> type | None:
    """archcalc's module class that `cls` is a copy of: `archcalc export` writes the source of archcalc's own
    module classes into the file, so a class of the same name with the same source is the same module."""
    if cls not in _COPIES:
        found = None
        original = _OWN.get(cls.__name__)
        if original is not None:
            try:
                same = inspect.getsource(cls) == inspect.getsource(original)
            except (OSError, TypeError):
                same = False
            found = original if same else None
        _COPIES[cls] = found
    return _COPIES[cls]


def module_rule(m: nn.Module) -> ModuleRule | None:
    cls = type(m)
    rule = MODULES.get(cls)
    if rule is None:
        rule = NAMED_MODULES.get(qualname(cls))
    if rule is None and cls.__name__ in _OWN:
        copy = _own_copy(cls)
        rule = MODULES.get(copy) if copy is not None else None
    if rule is None:  # a subclass that computes what its base does (torchvision's Conv3DSimple is an nn.Conv3d)
        for base in cls.__mro__[1:]:
            if base in MODULES:
                if all(getattr(cls, f, None) is getattr(base, f, None) for f in ("forward", "_conv_forward")):
                    rule = MODULES[base]
                break
    return rule


def is_leaf(m: nn.Module) -> bool:
    """Modules the tracer keeps whole: those in the table, and torch.nn's own (fx's rule), containers excepted."""
    if module_rule(m) is not None or qualname(type(m)) in PERMUTES:
        return True
    return type(m).__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList,
                                                                            nn.ModuleDict))


# ---- functions and tensor methods -----------------------------------------------------------------------------------
#
# A function rule gets the call's arguments bound to the function's parameter names (the tensor input as `x`,
# everything else as the concrete Python value the trace computed) and the input's per-sample shape, and returns a
# Mapped kind, or raises Unmapped. Merges, views and the like are handled in trace.py, which owns the tensors.

FunctionRule = Callable[[dict[str, Any], tuple[int, ...]], Mapped]


def _f_softmax(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    dim = a.get("dim")
    if dim is None:
        raise Unmapped("softmax without dim")
    return Mapped("softmax", {"dim": dim if dim >= 0 else dim + len(inp) + 1})


def _f_dropout(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    return Mapped("dropout", {"p": float(a.get("p", 0.5))})


def _f_adaptive(kind: str) -> FunctionRule:
    def rule(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
        size = a["output_size"]
        sizes = size if isinstance(size, (tuple, list)) else (size,) * (len(inp) - 1)
        sizes = tuple(w if s is None else s for s, w in zip(sizes, inp[1:]))
        if a.get("return_indices"):
            raise Unmapped("return_indices=True has no archcalc kind")
        return _pool_kind(kind, sizes)

    return rule


def _f_maxpool(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    if a.get("return_indices"):
        raise Unmapped("return_indices=True (max unpooling) has no archcalc kind")
    k = a["kernel_size"]
    stride = a.get("stride") or k
    return Mapped("maxpool", {"kernel_size": _tup(k), "stride": _tup(stride), "padding": _tup(a.get("padding", 0)),
                              "dilation": _tup(a.get("dilation", 1)), "ceil_mode": bool(a.get("ceil_mode", False))})


def _f_avgpool(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    if a.get("divisor_override") is not None:
        raise Unmapped("divisor_override has no archcalc argument")
    k = a["kernel_size"]
    stride = a.get("stride") or k
    return Mapped("avgpool", {"kernel_size": _tup(k), "stride": _tup(stride), "padding": _tup(a.get("padding", 0)),
                              "ceil_mode": bool(a.get("ceil_mode", False)),
                              "count_include_pad": bool(a.get("count_include_pad", True))})


def _f_pad(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    if a.get("mode", "constant") != "constant" or (a.get("value") or 0.0) != 0.0:
        raise Unmapped(f"F.pad(mode={a.get('mode', 'constant')!r}, value={a.get('value')}): archcalc's zeropad pads "
                       "with zeros")
    pairs = _pairs(a["pad"])
    rank = len(inp) - 1
    if len(pairs) > rank:
        raise Unmapped("F.pad of the channel or batch axis")
    pairs = ((0, 0),) * (rank - len(pairs)) + pairs
    return Mapped("zeropad", {"padding": _padding(pairs)})


def _f_interpolate(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    if a.get("recompute_scale_factor") or a.get("antialias"):
        raise Unmapped("recompute_scale_factor / antialias have no archcalc argument")
    return Mapped("upsample", _upsample_args(a.get("size"), a.get("scale_factor"), a.get("mode", "nearest"),
                                             a.get("align_corners"), inp))


def _f_mean(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    dims = a.get("dim")
    rank = len(inp) + 1
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    dims = tuple(sorted(d % rank for d in dims))
    if dims != tuple(range(2, rank)) or a.get("dtype") is not None:
        raise Unmapped(f"mean over dims {list(dims)}: archcalc's mean is over all spatial axes (dims 2..{rank - 1})")
    return Mapped("mean", {"keepdim": bool(a.get("keepdim", False))})


def _signature(*names: str, **defaults: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return names, defaults


# function -> (parameter names in order, rule). `x` is the tensor input. The kinds' own torch_functions join it below.
FUNCTIONS: dict[Any, tuple[tuple[str, ...], FunctionRule]] = {
    F.softmax: (("x", "dim"), _f_softmax), torch.softmax: (("x", "dim"), _f_softmax),
    F.dropout: (("x", "p", "training", "inplace"), _f_dropout),
    F.adaptive_avg_pool1d: (("x", "output_size"), _f_adaptive("adaptive_avgpool")),
    F.adaptive_avg_pool2d: (("x", "output_size"), _f_adaptive("adaptive_avgpool")),
    F.adaptive_avg_pool3d: (("x", "output_size"), _f_adaptive("adaptive_avgpool")),
    F.adaptive_max_pool1d: (("x", "output_size", "return_indices"), _f_adaptive("adaptive_maxpool")),
    F.adaptive_max_pool2d: (("x", "output_size", "return_indices"), _f_adaptive("adaptive_maxpool")),
    F.adaptive_max_pool3d: (("x", "output_size", "return_indices"), _f_adaptive("adaptive_maxpool")),
    F.max_pool1d: (("x", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), _f_maxpool),
    F.max_pool2d: (("x", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), _f_maxpool),
    F.max_pool3d: (("x", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), _f_maxpool),
    F.avg_pool1d: (("x", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"), _f_avgpool),
    F.avg_pool2d: (("x", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                   _f_avgpool),
    F.avg_pool3d: (("x", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                   _f_avgpool),
    F.pad: (("x", "pad", "mode", "value"), _f_pad),
    F.interpolate: (("x", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
                    _f_interpolate),
    torch.mean: (("x", "dim", "keepdim", "dtype"), _f_mean),
}
for _name, _fn in (("upsample", "upsample"),):
    if hasattr(F, _fn):
        FUNCTIONS[getattr(F, _fn)] = FUNCTIONS[F.interpolate]

METHODS: dict[str, tuple[tuple[str, ...], FunctionRule]] = {
    "softmax": (("x", "dim"), _f_softmax), "mean": (("x", "dim", "keepdim", "dtype"), _f_mean),
}


def _generic_call(kind: Kind, fixed: dict[str, Any]) -> tuple[tuple[str, ...], FunctionRule]:
    """f(x, *the kind's arguments in order): the arguments given, read as the spec parser would, and `fixed`."""
    args = {arg.name: arg for arg in kind.args}

    def rule(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
        return Mapped(kind.name, {n: _value(arg, a[n]) for n, arg in args.items() if n in a} | fixed)

    return ("x", *args), rule


def _torch_function(kind: Kind, name: str) -> Any:
    space, _, attr = name.partition(".")
    fn = getattr({"F": F, "torch": torch}.get(space), attr, None) if attr else None
    if fn is None:
        raise RuntimeError(f"layer kind '{kind.name}' names torch function {name!r}, which is neither F.<name> "
                           "(torch.nn.functional) nor torch.<name>")
    return fn


def _register_kinds() -> None:
    """The generic rules of every kind that names its torch class, functions and methods."""
    for kind in REGISTRY.values():
        cls = torch_class(kind)
        if cls is not None and MODULE_KINDS.get(cls) != kind.name:  # (or the kind registered its own rule above)
            _modules(kind.name, _generic_module(kind), cls)
        functions = {_torch_function(kind, name): name for name in kind.torch_functions}  # F.x may be torch.x
        for fn, name in functions.items():
            if fn in FUNCTIONS:
                raise RuntimeError(f"two importer rules for {name}")
            FUNCTIONS[fn] = _generic_call(kind, {})
        for name in kind.torch_methods:
            if name in METHODS:
                raise RuntimeError(f"two importer rules for Tensor.{name}")
            METHODS[name] = _generic_call(kind, {"inplace": True} if name.endswith("_") else {})
    missing = sorted(set(REGISTRY) - set(MODULE_KINDS.values()) - {"global_avgpool", "global_maxpool"})
    if missing:  # (global pooling is read from adaptive pooling to 1)
        raise RuntimeError(f"layer kinds without an importer rule: {', '.join(missing)}")


_register_kinds()
_OWN = {cls.__name__: cls for cls in MODULES if cls.__module__ == own.__name__}  # for _own_copy

# Modules whose output has their input's shape (the tracer's shape pass does not run them).
SAME_SHAPE = tuple(cls for cls, kind in MODULE_KINDS.items() if REGISTRY[kind].same_shape)

# Functions of other libraries by qualified name, kept whole by the tracer (fx's autowrap) and mapped here.
NAMED_FUNCTIONS: dict[str, tuple[tuple[str, ...], FunctionRule]] = {
    "torchvision.models.shufflenetv2.channel_shuffle": _generic_call(REGISTRY["channel_shuffle"], {}),
}

# The binary merges, by their Python operator: the operator and its in-place form, torch's function of the
# operator's name and Tensor's methods (x.add(y), x.add_(y), x.__iadd__(y)) -> the merge's name.
BINARY: dict[Any, str] = {}
BINARY_METHODS: dict[str, str] = {}
FOLDABLE_METHODS: set[str] = set()  # the out-of-place ones: a chain (a.add(b)) + c is one merge of three
for _merge in MERGES.values():
    if _merge.symbol:
        _op, _in_place = OPERATORS[_merge.symbol]
        _word = _op.__name__  # add, mul
        for _target in (_op, _in_place, getattr(torch, _word)):
            BINARY[_target] = _merge.name
        for _method in (_word, _word + "_", f"__i{_word}__"):
            BINARY_METHODS[_method] = _merge.name
        FOLDABLE_METHODS.add(_word)
CAT = {torch.cat, torch.concat}
FLATTEN = {torch.flatten}
CHUNK = {torch.chunk}
SPLIT = {torch.split}
ALIASES_METHODS = ("contiguous",)


def named_functions() -> dict[Callable[..., Any], tuple[tuple[str, ...], FunctionRule]]:
    """The NAMED_FUNCTIONS whose library is imported, as function objects."""
    found = {}
    for name, entry in NAMED_FUNCTIONS.items():
        module, _, attr = name.rpartition(".")
        fn = getattr(sys.modules.get(module), attr, None)
        if fn is not None:
            found[fn] = entry
    return found


def bind(names: tuple[str, ...], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args))
    if len(args) > len(names):
        raise Unmapped(f"{len(args)} positional arguments, expected at most {len(names)}")
    for key, value in kwargs.items():
        bound["x" if key == "input" else key] = value
    return bound


def is_integral(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value))
