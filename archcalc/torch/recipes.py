"""Where a layer kind meets torch: the kinds' torch half, in one place -- how each kind is built, and how the
importer reads it back from a torch model.

A recipe returns a `Call` -- a module class and its constructor arguments -- rather than a module, so the builder
(`Call.make`) and the exporter (which writes the same call as source) cannot disagree. A kind that names its
`torch_class` (plain data on the core kind: "ReLU") is built by the one generic recipe, torch_class(**its
arguments), and read back by the one generic importer rule (the module's attributes of the same names, and the
torch_functions and torch_methods it names); it needs nothing here. A kind that needs more (a class chosen by the
input's rank, an argument computed from the input shape, a PyTorch argument to normalise) registers its recipe
(`recipe`) and its importer rules (`reads`, FUNCTIONS, METHODS) here, under its name, once. A kind with neither is
an error when this module is imported, and fails tests/test_layers.py and tests/test_kind_torch.py. Merges are
registered the same way: an arithmetic merge is run and written from its Python operator; another registers a
`merge_recipe`. The core kinds never import torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from archcalc.core.kinds import REGISTRY, Arg, Kind, Shape
from archcalc.core.kinds import mqa as kind_mqa
from archcalc.core.kinds.base import Tokens, numel
from archcalc.core.kinds.dense import per_shape
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


@recipe("std_conv")
def _std_conv(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, d, pads = kind.geometry(a, inp)
    return call(modules.StdConv, in_channels=inp[0], out_channels=a["out_channels"], kernel_size=tuple(k),
                stride=tuple(s), pads=tuple(tuple(p) for p in pads), dilation=tuple(d), groups=a["groups"],
                bias=a["bias"], eps=a["eps"], gain=a["gain"], gamma=a["gamma"])


@recipe("conv_transpose")
def _conv_transpose(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, p, op, d = kind._axes(a, inp)
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[len(inp) - 2]
    return call(cls, in_channels=inp[0], out_channels=a["out_channels"], kernel_size=k, stride=s, padding=p,
                output_padding=op, groups=a["groups"], bias=a["bias"], dilation=d)


# ---- dense ----------------------------------------------------------------------------------------------------


@recipe("linear")
def _linear(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    if isinstance(inp, Tokens):  # on each token's channels (B x N x C: nn.Linear acts on the last axis)
        return call(nn.Linear, in_features=inp[1], out_features=a["out_features"], bias=a["bias"])
    return call(modules.FlattenLinear, in_features=numel(inp), out_features=a["out_features"], bias=a["bias"])


@recipe("bias")
def _bias(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Bias, shape=tuple(kind.shape(a, inp)))


# ---- normalization ----------------------------------------------------------------------------------------------


@recipe("batchnorm")
def _batchnorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    if isinstance(inp, Tokens):  # per channel over the batch and the tokens (LeViT's LinearNorm)
        return call(modules.TokenBatchNorm, num_features=inp[1], eps=a["eps"], momentum=a["momentum"],
                    affine=a["affine"], track_running_stats=a["track_running_stats"])
    cls = nn.BatchNorm1d if len(inp) <= 2 else (nn.BatchNorm2d, nn.BatchNorm3d)[len(inp) - 3]
    return call(cls, num_features=inp[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                track_running_stats=a["track_running_stats"])


@recipe("layernorm")
def _layernorm(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.LayerNorm, normalized_shape=tuple(kind.norm_shape(a, inp)), eps=a["eps"],
                elementwise_affine=a["elementwise_affine"], bias=a["bias"])


@recipe("groupnorm")
def _groupnorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(nn.GroupNorm, num_groups=a["num_groups"], num_channels=inp[0], eps=a["eps"], affine=a["affine"],
                bias=a["bias"])


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


@recipe("blur_pool")
def _blur_pool(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, _, pads = kind.geometry(a, inp)
    return call(modules.BlurPool, channels=inp[0], kernel_size=tuple(k), stride=tuple(s), pads=tuple(pads),
                padding_mode=a["padding_mode"])


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
    return call(modules.LayerNorm2d, num_channels=inp[0], eps=a["eps"], elementwise_affine=a["elementwise_affine"],
                bias=a["bias"])


@recipe("grn")
def _grn(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.GRN, channels=inp[0], rank=len(inp) - 1, eps=a["eps"])


@recipe("evonorm_s0")
def _evonorm_s0(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.EvoNormS0, channels=inp[0], rank=len(inp) - 1, groups=a["groups"], eps=a["eps"],
                act=a["act"])


@recipe("rmsnorm")
def _rmsnorm(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.RMSNorm, channels=inp[0], rank=len(inp) - 1, eps=a["eps"],
                elementwise_affine=a["elementwise_affine"], statistic=a["statistic"])


@recipe("frn")
def _frn(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.FRN, channels=inp[0], rank=len(inp) - 1, eps=a["eps"], tlu=a["tlu"])


@recipe("layer_scale")
def _layer_scale(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.LayerScale, shape=tuple(kind.shape(a, inp)), init=a["init"])


@recipe("mean")
def _mean(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.Mean, dims=tuple(range(2, len(inp) + 1)), keepdim=a["keepdim"])


@recipe("context_pool")
def _context_pool(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ContextPool, channels=inp[0], rank=len(inp) - 1, bias=a["bias"])


# ---- tokens and attention ---------------------------------------------------------------------------------------


@recipe("to_tokens")
def _to_tokens(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ToTokens)


@recipe("to_grid")
def _to_grid(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ToGrid, size=tuple(kind.sizes(a, inp)))


@recipe("class_token")
def _class_token(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ClassToken, channels=inp[1], **({"mean": True} if a["mean"] else {}),
                **({"count": a["count"]} if a["count"] != 1 else {}))


@recipe("pos_embed")
def _pos_embed(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.PositionEmbedding, tokens=inp[0], channels=inp[1])


@recipe("take_token")
def _take_token(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.TakeToken, index=a["index"], **({"stop": a["stop"]} if a["stop"] is not None else {}))


@recipe("self_attention")
def _self_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    extra: dict[str, Any] = {"kernel": "fused"} if a["kernel"] == "fused" else {}
    if not kind.plain(a):  # type: ignore[attr-defined]
        extra.update(key_dim=a["key_dim"], value_dim=a["value_dim"], score_bias=a["score_bias"], norm=a["norm"],
                     act=a["act"], stride=a["stride"], out_features=a["out_features"],
                     **({} if a["proj"] else {"proj": False}))
    if a["score_bias"] or a["stride"] > 1:
        extra["grid"] = tuple(inp.grid)  # type: ignore[attr-defined]
    if a["kv_avgpool"]:
        extra.update(kv_avgpool=a["kv_avgpool"], kv_norm=a["kv_norm"])
    elif a["sr_ratio"] > 1 or a["kv_pool"]:
        extra.update(sr_ratio=a["sr_ratio"], kv_pool=a["kv_pool"], grid=tuple(inp.grid))  # type: ignore[attr-defined]
    return call(modules.SelfAttention, embed_dim=inp[1], num_heads=a["num_heads"], bias=a["bias"],
                qkv_bias=a["qkv_bias"], **extra)


@recipe("window_attention")
def _window_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    rank = len(inp.grid)  # type: ignore[attr-defined]
    return call(modules.WindowAttention, channels=inp[1], grid=tuple(inp.grid),  # type: ignore[attr-defined]
                num_heads=a["num_heads"], window_size=_per_axis(a["window_size"], rank),
                shift_size=_per_axis(a["shift_size"], rank), bias=a["bias"], v2=a["v2"],
                **({"shrink": True} if a["shrink"] else {}),
                **({"partition": "grid"} if a["partition"] == "grid" else {}),
                **({"einsum": True} if a["einsum"] else {}),
                **({"position_bias": a["position_bias"]} if a["position_bias"] != "table" else {}),
                **({"out_features": a["out_features"]} if a["out_features"] else {}),
                **({"expand_first": True} if a["expand_first"] else {}),
                **({"mlp_hidden": a["mlp_hidden"]} if a["mlp_hidden"] != 512 else {}))


@recipe("patch_merging")
def _patch_merging(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.PatchMerging, grid=tuple(inp.grid))  # type: ignore[attr-defined]


@recipe("cascaded_attention")
def _cascaded_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    from archcalc.core.kinds.msra import dims

    d = dims(a, inp)
    return call(modules.CascadedAttention, dim=d.c, num_heads=d.h, key_dim=d.kd, window=d.w,
                kernels=d.kernels)


@recipe("xca")
def _xca(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.CrossCovarianceAttention, channels=inp[1], num_heads=a["num_heads"], qkv_bias=a["qkv_bias"],
                **({"normalize": False, "scale": a["scale"]} if not a["normalize"] else {}))


@recipe("global_query_attention")
def _global_query_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    ws = a["window_size"]
    return call(modules.GlobalQueryAttention, channels=inp[1], grid=tuple(inp.grid),  # type: ignore[attr-defined]
                num_heads=a["num_heads"], window_size=(ws, ws) if isinstance(ws, int) else tuple(ws),
                **({} if a["qkv_bias"] else {"qkv_bias": False}))


@recipe("additive_attention")
def _additive_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.AdditiveAttention, channels=inp[1])


@recipe("class_attention")
def _class_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.ClassAttention, channels=inp[1], num_heads=a["num_heads"], qkv_bias=a["qkv_bias"])


@recipe("multi_query_attention")
def _multi_query_attention(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    c, h, kd, vd, d, _, _ = kind.dims(a, inp)
    return call(modules.MultiQueryAttention, channels=c, num_heads=h, key_dim=kd, value_dim=vd,
                kv_stride=a["kv_stride"], kv_kernel=a["kv_kernel"], out_features=d if d != c else 0,
                kv_norm=a["kv_norm"], norm=a["norm"], gate=a["gate"],
                kv_pads=kind_mqa.kv_pads(a, inp[1:]) if a["kv_stride"] > 1 and a["kv_padding"] == "same" else ())


@recipe("fourier_pos_embed")
def _fourier_pos_embed(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.FourierPositionEncoding, channels=inp[1], grid=tuple(inp.grid),  # type: ignore[attr-defined]
                hidden_dim=a["hidden_dim"], temperature=a["temperature"], once=a["once"])


@recipe("separable_attention")
def _separable_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.SeparableAttention, channels=inp[0], patch=_per_axis(a["patch"], 2), bias=a["bias"])


def _per_axis(value: Any, rank: int) -> tuple[int, ...]:
    return (value,) * rank if isinstance(value, int) else tuple(int(v) for v in value)


@recipe("pooled_attention")
def _pooled_attention(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    g = kind.geometry(a, inp)

    def pool(kernel: tuple[int, ...], stride: tuple[int, ...]) -> Call:
        return call(modules.GridPool, channels=g["head"], grid=g["grid"], class_tokens=g["cls"], kernel=kernel,
                    stride=stride, padding=tuple(k // 2 for k in kernel), mode="conv", eps=a["eps"])

    kv = g["pkv"]
    return call(modules.PooledAttention, embed_dim=g["c"], output_dim=g["d"], num_heads=a["num_heads"],
                grid=g["grid"], class_tokens=g["cls"], kernel_q=g["kq"], stride_q=g["sq"], kernel_kv=g["kk"],
                stride_kv=g["sk"], pool_q=pool(g["kq"], g["sq"]) if g["pq"] else None,
                pool_k=pool(g["kk"], g["sk"]) if kv else None, pool_v=pool(g["kk"], g["sk"]) if kv else None,
                residual_pool=a["residual_pool"], rel_rows=kind.rel_rows(g) if a["rel_pos"] else None,
                grid_q=g["gq"], grid_kv=g["gk"], eps=a["eps"])


@recipe("token_maxpool")
def _token_maxpool(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    k, s, p, _ = kind.geometry(a, inp)
    grid = tuple(inp.grid)  # type: ignore[attr-defined]
    return call(modules.GridPool, channels=inp[1], grid=grid, class_tokens=inp[0] - numel(grid), kernel=k, stride=s,
                padding=p, mode="max")


@recipe("separable_pos_embed")
def _separable_pos_embed(kind: Any, a: Mapping[str, Any], inp: Shape) -> Call:
    grid = tuple(inp.grid)  # type: ignore[attr-defined]
    return call(modules.SeparablePositionEmbedding, grid=grid, channels=inp[1], class_tokens=inp[0] - numel(grid))


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
    return torch.cat(xs, 1)


merge_recipe("concat", _concat, lambda y, args: [f"{y} = torch.cat([{', '.join(args)}], 1)"])


@recipe("linear_attention")
def _linear_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.LinearAttention, head_dim=a["head_dim"], **({"eps": a["eps"]} if a["eps"] != 1e-5 else {}))


@recipe("halo_attention")
def _halo_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    from archcalc.core.kinds.byoa import HaloGeometry
    from archcalc.torch import modules_byoa

    g = HaloGeometry(a, inp)
    return call(modules_byoa.HaloAttention, channels=g.c, out=g.out, num_heads=g.heads, key_dim=g.dk,
                block=g.block, halo=g.halo, query_stride=g.query_stride, pool=g.pool, bias=bool(a["bias"]))


@recipe("lambda_layer")
def _lambda_layer(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    from archcalc.torch import modules_byoa

    return call(modules_byoa.LambdaLayer, channels=inp[0], num_heads=a["num_heads"], key_dim=a["key_dim"], r=a["r"],
                grid=tuple(inp[1:]), pool=a["stride"] == 2, bias=bool(a["bias"]))


@recipe("bilinear_attention")
def _bilinear_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    from archcalc.torch import modules_byoa

    return call(modules_byoa.BilinearAttention, channels=inp[0], block=a["block_size"], groups=a["groups"])


@recipe("effv2_attention")
def _effv2_attention(kind: Kind, a: Mapping[str, Any], inp: Shape) -> Call:
    return call(modules.EfficientFormerV2Attention, channels=inp[0], num_heads=a["num_heads"], key_dim=a["key_dim"],
                value_dim=a["value_dim"], size=tuple(inp[1:]), talking_heads=a["talking_heads"],
                downsample=a["downsample"])


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


# ======== reading a kind back: the importer's rules ===================================================================
#
# A module rule reads a kind and its arguments off a module of a registered class; a function rule off a call (see
# FunctionRule). A kind that names its torch_class, torch_functions and torch_methods is read by the generic rules
# (its arguments are the module's attributes, or the call's arguments, of the same names); a kind that needs more
# registers its rules here, under its name (`reads`, FUNCTIONS, METHODS); a class or function is mapped once. Every
# rule reads the arguments the way the recipe above writes them, so a module archcalc builds maps back to the kind
# and arguments it was built from. archcalc.torch.importer.mapping looks them up; trace.py walks the graph.


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


def is_integral(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value))


# ---- modules ------------------------------------------------------------------------------------------------------

ModuleRule = Callable[[Any, tuple[int, ...]], Mapped]


def _read_conv(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.padding_mode != "zeros":
        raise Unmapped(f"padding_mode={m.padding_mode!r}: archcalc's conv pads with zeros only")
    padding = m.padding if isinstance(m.padding, str) else _tup(m.padding)
    return Mapped("conv", {"out_channels": m.out_channels, "kernel_size": _tup(m.kernel_size),
                           "stride": _tup(m.stride), "padding": padding, "dilation": _tup(m.dilation),
                           "groups": m.groups, "bias": m.bias is not None})


def _read_asymmetric_conv(m: Any, inp: tuple[int, ...]) -> Mapped:
    inner = m._conv.__self__  # the wrapped nn.ConvNd (its bound _conv_forward)
    mapped = _read_conv(inner, inp)
    mapped.args["padding"] = _padding(_pairs(m.pad))
    return mapped


def _read_conv_transpose(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.padding_mode != "zeros":
        raise Unmapped(f"padding_mode={m.padding_mode!r}: archcalc's conv_transpose pads with zeros only")
    return Mapped("conv_transpose", {"out_channels": m.out_channels, "kernel_size": _tup(m.kernel_size),
                                     "stride": _tup(m.stride), "padding": _tup(m.padding),
                                     "output_padding": _tup(m.output_padding), "dilation": _tup(m.dilation),
                                     "groups": m.groups, "bias": m.bias is not None})


def _read_linear(m: Any, inp: tuple[int, ...]) -> Mapped:
    if len(inp) != 1 and type(m).__name__ != "FlattenLinear" and not isinstance(inp, Tokens):
        raise Unmapped(f"nn.Linear on a per-sample shape {'x'.join(map(str, inp))} acts on the last axis only; "
                       "archcalc's linear takes a vector (flatten first)")
    return Mapped("linear", {"out_features": m.out_features, "bias": m.bias is not None})


def _read_batchnorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.momentum is None:
        raise Unmapped("momentum=None (a cumulative average) has no archcalc argument")
    return Mapped("batchnorm", {"eps": float(m.eps), "momentum": float(m.momentum), "affine": m.affine,
                                "track_running_stats": m.track_running_stats})


def _read_layernorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("layernorm", {"normalized_shape": _shape_arg(m.normalized_shape), "eps": float(m.eps),
                                "elementwise_affine": m.elementwise_affine,
                                "bias": not m.elementwise_affine or m.bias is not None})


def _shape_arg(shape: Sequence[int]) -> Any:
    values = tuple(int(v) for v in shape)
    return values[0] if len(values) == 1 else values


def _read_channel_layernorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("channel_layernorm", {"eps": float(m.eps), "elementwise_affine": m.elementwise_affine,
                                        "bias": not m.elementwise_affine or m.bias is not None})


def _read_std_conv(m: Any, inp: tuple[int, ...]) -> Mapped:
    pads = _pairs(m.pad) if m.pad else tuple((p, p) for p in m.padding)
    gamma = 1.0 if m.gain is None else float(f"{m.scale * m.weight[0].numel() ** 0.5:.12g}")
    return Mapped("std_conv", {"out_channels": int(m.weight.shape[0]), "kernel_size": _tup(m.weight.shape[2:]),
                               "stride": _tup(m.stride), "padding": _padding(pads), "dilation": _tup(m.dilation),
                               "groups": m.groups, "bias": m.bias is not None, "eps": float(m.eps),
                               "gain": m.gain is not None, "gamma": gamma})


def _read_groupnorm(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("groupnorm", {"num_groups": m.num_groups, "eps": float(m.eps), "affine": m.affine,
                                "bias": not m.affine or m.bias is not None})


def _read_maxpool(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.return_indices:
        raise Unmapped("return_indices=True (max unpooling) has no archcalc kind")
    return Mapped("maxpool", {"kernel_size": _tup(m.kernel_size), "stride": _tup(m.stride),
                              "padding": _tup(m.padding), "dilation": _tup(m.dilation), "ceil_mode": m.ceil_mode})


def _read_avgpool(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "divisor_override", None) is not None:
        raise Unmapped("divisor_override has no archcalc argument")
    return Mapped("avgpool", {"kernel_size": _tup(m.kernel_size), "stride": _tup(m.stride),
                              "padding": _tup(m.padding), "ceil_mode": m.ceil_mode,
                              "count_include_pad": m.count_include_pad})


def _read_padded_pool(m: Any, inp: tuple[int, ...]) -> Mapped:
    padded = tuple(w + b + a for w, (b, a) in zip(inp[1:], _pairs(m.pad)))
    rule = MODULES.get(type(m.pool))
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


def _read_adaptive(kind: str) -> ModuleRule:
    def rule(m: Any, inp: tuple[int, ...]) -> Mapped:
        size = m.output_size
        sizes = size if isinstance(size, (tuple, list)) else (size,) * (len(inp) - 1)
        if any(s is None for s in sizes):
            sizes = tuple(w if s is None else s for s, w in zip(sizes, inp[1:]))
        if getattr(m, "return_indices", False):
            raise Unmapped("return_indices=True has no archcalc kind")
        return _pool_kind(kind, sizes)

    return rule


def _read_zeropad(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "value", 0.0) != 0.0:
        raise Unmapped(f"padding with {m.value}; archcalc's zeropad pads with zeros")
    return _f_pad({"pad": m.padding}, inp)  # (negative sizes crop, as F.pad's)


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


def _read_upsample(m: Any, inp: tuple[int, ...]) -> Mapped:
    if getattr(m, "recompute_scale_factor", None):
        raise Unmapped("recompute_scale_factor=True has no archcalc argument")
    return Mapped("upsample", _upsample_args(m.size, m.scale_factor, m.mode, m.align_corners, inp))


def _read_softmax(m: Any, inp: tuple[int, ...]) -> Mapped:
    dim = m.dim if m.dim is not None else 1
    return Mapped("softmax", {"dim": dim if dim >= 0 else dim + len(inp) + 1})


def _read_flatten(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.start_dim != 1 or m.end_dim != -1:
        raise Unmapped(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): archcalc's flatten keeps the batch "
                       "axis only (start_dim=1, end_dim=-1)")
    return Mapped("flatten", {})


def per_of(shape: Sequence[int], inp: tuple[int, ...]) -> str | None:
    """What a learned tensor of `shape` broadcast over a per-sample input `inp` has one value per (channel,
    position, element, tensor: bias's and layer_scale's `per`); None if none. A leading batch axis of 1 is
    allowed (a (1, C, 1, 1) gamma), and missing leading axes are 1, as broadcasting reads them."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > len(inp) and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > len(inp):
        return None
    shape = (1,) * (len(inp) - len(shape)) + shape
    for per in ("tensor", "channel", "position", "element"):
        if per == "position" and len(inp) == 1:
            continue
        if shape == per_shape("bias", per, inp):
            return per
    return None


def _read_bias(m: Any, inp: tuple[int, ...]) -> Mapped:
    per = per_of(m.bias.shape, inp)
    if per is None:
        raise Unmapped(f"a bias of shape {tuple(m.bias.shape)} on input {inp}")
    return Mapped("bias", {"per": per})


def _read_layer_scale(m: Any, inp: tuple[int, ...]) -> Mapped:
    per = per_of(m.gamma.shape, inp)
    if per is None:
        raise Unmapped(f"a layer scale of shape {tuple(m.gamma.shape)} on input {inp}")
    return Mapped("layer_scale", {"init": float(m.init), "per": per})


def _read_mean(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("mean", {"keepdim": m.keepdim})


def _read_crop(m: Any, inp: tuple[int, ...]) -> Mapped:
    centred = tuple((w - s) // 2 for w, s in zip(inp[1:], m.sizes))
    return Mapped("crop", {"size": _tup(m.sizes)} | ({} if tuple(m.offsets) == centred else
                                                     {"start": _tup(m.offsets)}))


MODULES: dict[type, ModuleRule] = {}
MODULE_KINDS: dict[type, str] = {}  # the kind each class maps to (adaptive pooling to 1 reads as global pooling)


def _read_blur_pool(m: Any, inp: tuple[int, ...]) -> Mapped:
    return Mapped("blur_pool", {"kernel_size": _tup(tuple(m.filt.shape[2:])), "stride": _tup(m.stride),
                                "padding": _padding(_pairs(m.pad)),
                                "padding_mode": "reflect" if m.mode == "reflect" else "zeros"})


def reads(kind: str, rule: ModuleRule, *classes: type) -> None:
    """Register the rule that reads `classes` as layer kind `kind`; a class is mapped once."""
    if kind not in REGISTRY:
        raise RuntimeError(f"importer rule for unknown layer kind '{kind}'")
    for cls in classes:
        if cls in MODULES:
            raise RuntimeError(f"two importer rules for {cls.__module__}.{cls.__qualname__}")
        MODULES[cls] = rule
        MODULE_KINDS[cls] = kind


reads("conv", _read_conv, nn.Conv1d, nn.Conv2d, nn.Conv3d)
reads("conv", _read_asymmetric_conv, modules.AsymmetricPadConv)
reads("conv_transpose", _read_conv_transpose, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
reads("linear", _read_linear, nn.Linear, modules.FlattenLinear)
reads("flatten", _read_flatten, nn.Flatten)
reads("bias", _read_bias, modules.Bias)
reads("batchnorm", _read_batchnorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
reads("batchnorm", lambda m, inp: _read_batchnorm(m.bn, inp), modules.TokenBatchNorm)
reads("layernorm", _read_layernorm, nn.LayerNorm)
reads("channel_layernorm", _read_channel_layernorm, modules.LayerNorm2d)
reads("groupnorm", _read_groupnorm, nn.GroupNorm)
reads("std_conv", _read_std_conv, modules.StdConv)
reads("grn", lambda m, inp: Mapped("grn", {"eps": float(m.eps)}), modules.GRN)
reads("frn", lambda m, inp: Mapped("frn", {"eps": float(m.eps), "tlu": m.tau is not None}), modules.FRN)
reads("rmsnorm", lambda m, inp: Mapped("rmsnorm", {"eps": float(m.eps), "elementwise_affine": m.weight is not None,
                                                   "statistic": m.statistic}), modules.RMSNorm)
reads("evonorm_s0", lambda m, inp: Mapped("evonorm_s0", {"groups": m.groups, "eps": float(m.eps),
                                                         "act": m.v is not None}), modules.EvoNormS0)
reads("maxpool", _read_maxpool, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
reads("avgpool", _read_avgpool, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
reads("maxpool", _read_padded_pool, modules.PaddedPool)  # or avgpool: the rule of the pool it wraps
reads("adaptive_avgpool", _read_adaptive("adaptive_avgpool"), nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
      nn.AdaptiveAvgPool3d)
reads("adaptive_maxpool", _read_adaptive("adaptive_maxpool"), nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
      nn.AdaptiveMaxPool3d)
reads("zeropad", _read_zeropad, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
      nn.ConstantPad3d)  # (a constant pad of zeros: BiT's stem; another value is refused)
reads("upsample", _read_upsample, nn.Upsample)
reads("softmax", _read_softmax, nn.Softmax)
reads("layer_scale", _read_layer_scale, modules.LayerScale)
reads("mean", _read_mean, modules.Mean)
reads("blur_pool", _read_blur_pool, modules.BlurPool)
reads("crop", _read_crop, modules.CenterCrop)
reads("context_pool", lambda m, inp: Mapped("context_pool", {"bias": m.conv_attn.bias is not None}),
      modules.ContextPool)
reads("to_tokens", lambda m, inp: Mapped("to_tokens", {}), modules.ToTokens)
reads("to_grid", lambda m, inp: Mapped("to_grid", {"size": tuple(int(s) for s in m.size)}), modules.ToGrid)
reads("class_token", lambda m, inp: Mapped("class_token", {"mean": True} if m.mean else (
    {"count": int(m.class_token.shape[1])} if m.class_token.shape[1] != 1 else {})), modules.ClassToken)
reads("pos_embed", lambda m, inp: Mapped("pos_embed", {}), modules.PositionEmbedding)
reads("take_token", lambda m, inp: Mapped("take_token", {"index": int(m.index), **(
    {"stop": int(m.stop)} if m.stop is not None else {})}), modules.TakeToken)


def _read_self_attention(m: Any, inp: tuple[int, ...]) -> Mapped:
    first = m.q if m.sr_ratio > 1 or m.kv_pool or m.kv_avgpool else m.in_proj
    proj = isinstance(m.out_proj, nn.Linear)
    bias = m.out_proj.bias is not None if proj else first.bias is not None
    return Mapped("self_attention", {
        "num_heads": int(m.num_heads), "bias": bias,
        **({"qkv_bias": False} if bias and first.bias is None else {}),
        **({} if proj else {"proj": False}),
        **({"kernel": "fused"} if m.kernel == "fused" else {}),
        **({"key_dim": int(m.key_dim)} if m.key_dim != inp[-1] // m.num_heads or not proj else {}),
        **({"value_dim": int(m.value_dim)} if m.value_dim != inp[-1] // m.num_heads or not proj else {}),
        **({"score_bias": True} if m.score_bias else {}),
        **({"norm": m.norm_kind} if m.norm_kind != "none" else {}), **({"act": m.act} if m.act != "none" else {}),
        **({"stride": int(m.stride)} if m.stride > 1 else {}),
        **({"out_features": int(m.out)} if m.out != inp[-1] and proj else {}),
        **({"sr_ratio": int(m.sr_ratio)} if m.sr_ratio > 1 else {}),
        **({"kv_pool": int(m.kv_pool)} if m.kv_pool else {}),
        **({"kv_avgpool": int(m.kv_avgpool)} if m.kv_avgpool else {}),
        **({"kv_norm": False} if m.kv_avgpool and not m.kv_norm else {})})


reads("self_attention", _read_self_attention, modules.SelfAttention)
reads("window_attention", lambda m, inp: Mapped("window_attention", {
    "num_heads": int(m.num_heads), "window_size": _tup(m.window_size), "shift_size": _tup(m.shift_size),
    "bias": m.qkv.bias is not None, "v2": bool(m.v2), **({"partition": "grid"} if m.partition == "grid" else {}),
    **({"einsum": True} if m.einsum else {}),
    **({"position_bias": m.bias_kind} if m.bias_kind != "table" else {}),
    **({"shrink": True} if m.shrink else {}),
    **({"out_features": int(m.proj.out_features)} if m.proj.out_features != m.qkv.in_features else {}),
    **({"expand_first": True} if m.proj.in_features != m.qkv.in_features else {}),
    **({"mlp_hidden": int(m.rel_mlp[0].out_features)} if hasattr(m, "rel_mlp") and m.rel_mlp[0].out_features != 512
       else {})}), modules.WindowAttention)
reads("patch_merging", lambda m, inp: Mapped("patch_merging", {}), modules.PatchMerging)
reads("global_query_attention", lambda m, inp: Mapped("global_query_attention", {
    "num_heads": int(m.num_heads), "window_size": list(m.window_size),
    **({} if m.kv.bias is not None else {"qkv_bias": False})}), modules.GlobalQueryAttention)
reads("pooled_attention", lambda m, inp: Mapped("pooled_attention", {
    "num_heads": int(m.num_heads), "output_dim": int(m.output_dim), "kernel_q": _tup(m.kernel_q),
    "stride_q": _tup(m.stride_q), "kernel_kv": _tup(m.kernel_kv), "stride_kv": _tup(m.stride_kv),
    "residual_pool": bool(m.residual_pool), "rel_pos": m.rel_pos_t is not None, "eps": float(m.eps)}),
    modules.PooledAttention)


reads("xca", lambda m, inp: Mapped("xca", {"num_heads": int(m.num_heads), "qkv_bias": m.qkv.bias is not None,
                                            **({"normalize": False, "scale": m.scale} if not m.normalize else {})}),
      modules.CrossCovarianceAttention)
reads("cascaded_attention", lambda m, inp: Mapped("cascaded_attention", {
    "num_heads": int(m.num_heads), "key_dim": int(m.key_dim), "window_size": int(m.window),
    "kernels": [int(dw.conv.kernel_size[0]) for dw in m.dws]}),
    modules.CascadedAttention)
reads("class_attention", lambda m, inp: Mapped("class_attention", {"num_heads": int(m.num_heads),
                                                                   "qkv_bias": m.q.bias is not None}),
      modules.ClassAttention)
reads("additive_attention", lambda m, inp: Mapped("additive_attention", {}), modules.AdditiveAttention)
reads("separable_attention", lambda m, inp: Mapped("separable_attention", {
    "patch": list(m.patch), "bias": m.qkv_proj.bias is not None}), modules.SeparableAttention)
reads("multi_query_attention", lambda m, inp: Mapped("multi_query_attention", {
    "num_heads": int(m.num_heads), "key_dim": int(m.key_dim), "value_dim": int(m.value_dim),
    **({"kv_stride": int(m.kv_stride), "kv_kernel": int(m.key_down.kernel_size[0]),
        "kv_norm": "batchnorm" if isinstance(m.key_norm, nn.BatchNorm2d) else "rmsnorm"} if m.kv_stride > 1 else {}),
    **({"kv_padding": "same"} if m.kv_pads else {}),
    **({"out_features": int(m.out.out_channels)} if m.out.out_channels != inp[0] else {}),
    **({"norm": "batchnorm"} if isinstance(m.out_norm, nn.BatchNorm2d) else {}), **({"gate": True} if m.gate else {})}),
    modules.MultiQueryAttention)
reads("fourier_pos_embed", lambda m, inp: Mapped("fourier_pos_embed", {
    "hidden_dim": int(m.hidden_dim), "temperature": float(m.temperature), "once": bool(m.once)}),
    modules.FourierPositionEncoding)


def _read_grid_pool(m: Any, inp: tuple[int, ...]) -> Mapped:
    if m.norm is not None:  # (a conv pool exists inside PooledAttention only, which is read whole)
        raise Unmapped("a GridPool with a conv and a norm is part of pooled_attention, not a kind of its own")
    return Mapped("token_maxpool", {"kernel_size": _tup(m.kernel), "stride": _tup(m.stride),
                                    "padding": _tup(m.padding)})


reads("token_maxpool", _read_grid_pool, modules.GridPool)
reads("separable_pos_embed", lambda m, inp: Mapped("separable_pos_embed", {}), modules.SeparablePositionEmbedding)
# nn.MultiheadAttention as self-attention: its call, m(x, x, x, need_weights=False), is read by the importer
# (archcalc.torch.importer.trace: the module returns a pair); this rule makes it a leaf of the trace.
reads("self_attention", lambda m, inp: Mapped("self_attention", {"num_heads": int(m.num_heads),
                                                                 "bias": m.in_proj_bias is not None}),
      nn.MultiheadAttention)


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


def _read_swin_attention(m: Any, inp: tuple[int, ...]) -> Mapped:
    """torchvision's ShiftedWindowAttention(V2) as window_attention: kept whole (its forward calls the fx-wrapped
    shifted_window_attention and _get_relative_position_bias); every tensor it hands them is checked against what
    the kind builds (qkv and proj weights, the bias table or the V2 position-bias MLP, the index buffer). The video
    Swin's ShiftedWindowAttention3d is the same on a T x H x W grid, its windows cut to a shorter grid (`shrink`:
    _get_window_and_shift_size)."""
    v2 = type(m).__name__ == "ShiftedWindowAttentionV2"
    video = type(m).__qualname__ == "ShiftedWindowAttention3d"
    rank = 3 if video else 2
    if not isinstance(inp, Tokens) or len(inp.grid) != rank:
        raise Unmapped(f"{type(m).__name__} on a tensor that is not a token grid "
                       f"({'B x T x H x W x C' if video else 'B x H x W x C'})")
    c, heads = inp[1], int(m.num_heads)
    window = tuple(int(w) for w in m.window_size)
    table = math.prod(2 * w - 1 for w in window)
    bias = m.qkv.bias is not None
    if (tuple(m.qkv.weight.shape) != (3 * c, c) or tuple(m.proj.weight.shape) != (c, c) or c % heads
            or (m.proj.bias is not None) != bias or m.relative_position_index.numel() != math.prod(window) ** 2):
        raise Unmapped(f"{type(m).__name__} whose qkv/proj weights, biases or index are not window_attention's "
                       f"on {c} channels and {heads} heads")
    if m.attention_dropout or m.dropout:
        raise Unmapped(f"{type(m).__name__} with dropout inside the attention: archcalc's window_attention has none")
    if v2:
        wh, ww = window
        mlp = m.cpb_mlp
        shapes = [tuple(p.shape) for p in mlp.parameters()]
        if (len(mlp) != 3 or not isinstance(mlp[1], nn.ReLU) or shapes != [(512, 2), (512,), (heads, 512)]
                or tuple(m.logit_scale.shape) != (heads, 1, 1)
                or tuple(m.relative_coords_table.shape) != (1, 2 * wh - 1, 2 * ww - 1, 2)):
            raise Unmapped("ShiftedWindowAttentionV2 whose position-bias MLP, logit scale or coordinate table is "
                           "not Swin V2's (Linear(2, 512), ReLU, Linear(512, heads, no bias))")
    elif tuple(m.relative_position_bias_table.shape) != (table, heads):
        raise Unmapped(f"{type(m).__name__} whose bias table is not the window's relative positions x heads = "
                       f"{table} x {heads}")
    return Mapped("window_attention", {"num_heads": heads, "window_size": window,
                                       "shift_size": tuple(int(s) for s in m.shift_size), "bias": bias, "v2": v2,
                                       **({"shrink": True} if video else {})})


def _mvit_pool(pool: Any, what: str) -> tuple[Any, Any, float]:
    """The kernel, stride and eps of torchvision's MViT Pool of q, k or v: a depthwise Conv3d without bias,
    padding kernel // 2, then a LayerNorm (affine, with bias) over its channels after the class token is put back;
    anything else is refused."""
    conv, norm = pool.pool, pool.norm_act
    layers = list(norm) if isinstance(norm, nn.Sequential) else []
    if not (isinstance(conv, nn.Conv3d) and conv.groups == conv.in_channels == conv.out_channels
            and conv.bias is None and tuple(conv.dilation) == (1, 1, 1)
            and tuple(conv.padding) == tuple(k // 2 for k in conv.kernel_size)):
        raise Unmapped(f"its pool_{what} is not a depthwise Conv3d without bias padded by kernel // 2 (archcalc's "
                       "pooled_attention)")
    if pool.norm_before_pool or len(layers) != 1 or not isinstance(layers[0], nn.LayerNorm) \
            or not layers[0].elementwise_affine or layers[0].bias is None:
        raise Unmapped(f"its pool_{what} is not followed by an affine LayerNorm alone (archcalc's pooled_attention)")
    return tuple(int(k) for k in conv.kernel_size), tuple(int(v) for v in conv.stride), float(layers[0].eps)


def read_multiscale_attention(m: Any, inp: tuple[int, ...]) -> Mapped:
    """torchvision's MViT MultiscaleAttention (video/mvit.py) as pooled_attention: q, k, v pooled by depthwise
    convs and layer norms, the heads' products, MViTv2's relative positions and residual pooling."""
    project = list(m.project)
    if not (len(project) == 1 and isinstance(project[0], nn.Linear) and project[0].bias is not None
            and m.qkv.bias is not None):
        raise Unmapped("a MultiscaleAttention with attention dropout or without biases is not archcalc's "
                       "pooled_attention")
    if m.pool_k is None or m.pool_v is None:
        raise Unmapped("a MultiscaleAttention whose k and v are not pooled: archcalc's pooled_attention pools them")
    if m.residual_pool and m.residual_with_cls_embed:
        raise Unmapped("residual pooling that adds q's class token too (residual_with_cls_embed) is not archcalc's "
                       "pooled_attention, which leaves the class token out")
    kk, sk, eps = _mvit_pool(m.pool_k, "k")
    if _mvit_pool(m.pool_v, "v") != (kk, sk, eps):
        raise Unmapped("its pool_k and pool_v differ: archcalc's pooled_attention pools k and v alike")
    kq: Any = 1
    sq: Any = 1
    if m.pool_q is not None:
        kq, sq, eps_q = _mvit_pool(m.pool_q, "q")
        if eps_q != eps:
            raise Unmapped("its pools' layer norms have different eps")
    return Mapped("pooled_attention", {
        "num_heads": int(m.num_heads), "output_dim": int(m.output_dim), "kernel_q": _tup(kq), "stride_q": _tup(sq),
        "kernel_kv": _tup(kk), "stride_kv": _tup(sk), "residual_pool": bool(m.residual_pool),
        "rel_pos": m.rel_pos_h is not None, "eps": eps})


def read_mvit_pool(m: Any, inp: tuple[int, ...]) -> Mapped:
    """torchvision's MViT Pool of a block's shortcut (pool_skip: a MaxPool3d alone) as token_maxpool."""
    pool = m.pool
    if m.norm_act is not None or not isinstance(pool, nn.MaxPool3d) or pool.ceil_mode or pool.return_indices \
            or _tup(pool.dilation) != 1:
        raise Unmapped("an MViT Pool other than a MaxPool3d alone (archcalc's token_maxpool)")
    return Mapped("token_maxpool", {"kernel_size": _tup(pool.kernel_size), "stride": _tup(pool.stride),
                                    "padding": _tup(pool.padding)})


# Classes of other libraries, by qualified name: matched when the library is imported (archcalc never imports it).
NAMED_MODULES: dict[str, ModuleRule] = {
    # torchvision's video MViT: the importer calls them with the grid's size and reads back (x, grid) pairs
    # (archcalc.torch.importer.trace); PositionalEncoding is class_token and, in MViTv1, separable_pos_embed.
    "torchvision.models.video.mvit.MultiscaleAttention": read_multiscale_attention,
    "torchvision.models.video.mvit.Pool": read_mvit_pool,
    "torchvision.models.video.mvit.PositionalEncoding": lambda m, inp: Mapped("class_token", {}),
    "torchvision.models.convnext.LayerNorm2d": _read_channel_layernorm,
    "torchvision.ops.stochastic_depth.StochasticDepth": _generic_module(REGISTRY["stochastic_depth"]),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": _read_swin_attention,
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": _read_swin_attention,
    "torchvision.models.video.swin_transformer.ShiftedWindowAttention3d": _read_swin_attention,
}


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
    if any(p < 0 for pair in pairs for p in pair):  # negative padding crops
        sizes = tuple(w + b + e for w, (b, e) in zip(inp[1:], pairs))
        if any(p > 0 for pair in pairs for p in pair) or any(
                -b != (w - n) // 2 for w, n, (b, _) in zip(inp[1:], sizes, pairs)):
            # off centre, or padding one side and cropping another (NASNet's shift): the importer writes a zero pad
            # and a crop from a start (see trace.py's shift)
            return Mapped("zeropad", {"padding": tuple(pairs)})
        return Mapped("crop", {"size": _tup(sizes)})
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


# Functions with weights: the weight and bias come as the traced parameters (anything with a `shape`; a
# parameter computed from parameters, as weight standardisation's, too), and the kind is read from their shapes.


def _weight(a: dict[str, Any], name: str = "weight") -> tuple[int, ...]:
    w = a.get(name)
    if w is None or not hasattr(w, "shape"):
        raise Unmapped(f"its {name} is not a parameter of the module")
    return tuple(int(s) for s in w.shape)


def _present(a: dict[str, Any], name: str) -> bool:
    value = a.get(name)
    if value is not None and not hasattr(value, "shape"):
        raise Unmapped(f"its {name} is not a parameter of the module")
    return value is not None


def _f_conv(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    w = _weight(a)
    padding = a.get("padding", 0)
    return Mapped("conv", {"out_channels": w[0], "kernel_size": _tup(w[2:]), "stride": _tup(a.get("stride", 1)),
                           "padding": padding if isinstance(padding, str) else _tup(padding),
                           "dilation": _tup(a.get("dilation", 1)), "groups": int(a.get("groups", 1)),
                           "bias": _present(a, "bias")})


def _f_conv_transpose(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    w = _weight(a)
    groups = int(a.get("groups", 1))
    return Mapped("conv_transpose", {"out_channels": w[1] * groups, "kernel_size": _tup(w[2:]),
                                     "stride": _tup(a.get("stride", 1)), "padding": _tup(a.get("padding", 0)),
                                     "output_padding": _tup(a.get("output_padding", 0)),
                                     "dilation": _tup(a.get("dilation", 1)), "groups": groups,
                                     "bias": _present(a, "bias")})


def _f_linear(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    w = _weight(a)
    if len(w) != 2 or (len(inp) != 1 and not isinstance(inp, Tokens)):
        raise Unmapped(f"F.linear on a per-sample shape {'x'.join(map(str, inp))} acts on the last axis only; "
                       "archcalc's linear takes a vector (flatten first)")
    return Mapped("linear", {"out_features": w[0], "bias": _present(a, "bias")})


def _f_batch_norm(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    stats = _present(a, "running_mean")
    if stats != _present(a, "running_var") or _present(a, "weight") != _present(a, "bias"):
        raise Unmapped("batch norm with only one of its running statistics or of weight and bias")
    if stats and a.get("training"):
        raise Unmapped("batch norm that updates its running statistics at inference")
    momentum = a.get("momentum", 0.1)
    return Mapped("batchnorm", {"eps": float(a.get("eps", 1e-5)), "momentum": float(momentum or 0.0),
                                "affine": _present(a, "weight"), "track_running_stats": stats})


def _f_layer_norm(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    weight, bias = _present(a, "weight"), _present(a, "bias")
    if bias and not weight:
        raise Unmapped("layer norm with a bias and no weight has no archcalc argument")
    return Mapped("layernorm", {"normalized_shape": _shape_arg(a["normalized_shape"]),
                                "eps": float(a.get("eps", 1e-5)), "elementwise_affine": weight,
                                "bias": bias or not weight})


def _f_group_norm(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    weight, bias = _present(a, "weight"), _present(a, "bias")
    if bias and not weight:
        raise Unmapped("group norm with a bias and no weight has no archcalc argument")
    return Mapped("groupnorm", {"num_groups": int(a["num_groups"]), "eps": float(a.get("eps", 1e-5)),
                                "affine": weight, "bias": bias or not weight})


_CONV = ("x", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("x", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")


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
    F.conv1d: (_CONV, _f_conv), F.conv2d: (_CONV, _f_conv), F.conv3d: (_CONV, _f_conv),
    F.conv_transpose1d: (_CONV_T, _f_conv_transpose), F.conv_transpose2d: (_CONV_T, _f_conv_transpose),
    F.conv_transpose3d: (_CONV_T, _f_conv_transpose),
    F.linear: (("x", "weight", "bias"), _f_linear),
    F.batch_norm: (("x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                   _f_batch_norm),
    F.layer_norm: (("x", "normalized_shape", "weight", "bias", "eps"), _f_layer_norm),
    F.group_norm: (("x", "num_groups", "weight", "bias", "eps"), _f_group_norm),
}
for _name, _fn in (("upsample", "upsample"),):
    if hasattr(F, _fn):
        FUNCTIONS[getattr(F, _fn)] = FUNCTIONS[F.interpolate]

def _f_sum(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    dim, rank = a.get("dim"), len(inp) + 1
    if not isinstance(dim, int) and isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(dim, int) or a.get("dtype") is not None:
        raise Unmapped(f"sum over dims {dim}: archcalc's sum is over one axis of each sample")
    if dim % rank == 0:
        raise Unmapped("sum over the batch axis")
    return Mapped("sum", {"dim": dim % rank, "keepdim": bool(a.get("keepdim", False))})


def _f_transpose(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    rank = len(inp) + 1
    dims = sorted(int(a[k]) % rank for k in ("dim0", "dim1"))
    if dims[0] == 0:
        raise Unmapped("a transpose of the batch axis")
    return Mapped("transpose", {"dim0": dims[0], "dim1": dims[1]})


FUNCTIONS[torch.sum] = (("x", "dim", "keepdim", "dtype"), _f_sum)
FUNCTIONS[torch.transpose] = (("x", "dim0", "dim1"), _f_transpose)

METHODS: dict[str, tuple[tuple[str, ...], FunctionRule]] = {
    "softmax": (("x", "dim"), _f_softmax), "mean": (("x", "dim", "keepdim", "dtype"), _f_mean),
    "sum": (("x", "dim", "keepdim", "dtype"), _f_sum), "transpose": (("x", "dim0", "dim1"), _f_transpose),
}


def _generic_call(kind: Kind, fixed: dict[str, Any]) -> tuple[tuple[str, ...], FunctionRule]:
    """f(x, *the kind's arguments in order): the arguments given, read as the spec parser would, and `fixed`."""
    args = {arg.name: arg for arg in kind.args}

    def rule(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
        return Mapped(kind.name, {n: _value(arg, a[n]) for n, arg in args.items() if n in a} | fixed)

    return ("x", *args), rule


# The byoanet attention kinds: archcalc's own module read back (timm's modules: recipes_byoa, which the importer's
# mapping joins to NAMED_MODULES).
from archcalc.torch import modules_byoa  # noqa: E402


def _read_own_halo(m: Any, inp: tuple[int, ...]) -> Mapped:
    """archcalc's own HaloAttention (archcalc.torch.modules_byoa), as `archcalc export` writes it."""
    whole = len(inp) == 3 and tuple(m.block) == tuple(inp[1:])
    args: dict[str, Any] = {"num_heads": int(m.heads), "out_channels": int(m.heads * m.dv), "key_dim": int(m.dk),
                            "block_size": 0 if whole else int(m.block[0]), "halo_size": int(m.halo),
                            "bias": m.q.bias is not None}
    if m.query_stride == 2:
        args["stride"] = 2
    elif isinstance(m.pool, nn.AvgPool2d):
        args.update(stride=2, avg_down=not whole and m.block[0] % 2 == 0)
    return Mapped("halo_attention", args)


reads("halo_attention", _read_own_halo, modules_byoa.HaloAttention)
reads("lambda_layer", lambda m, inp: Mapped("lambda_layer", {
    "num_heads": int(m.heads), "key_dim": int(m.dk), "r": int(m.conv_lambda.kernel_size[0]) if m.conv_lambda else 0,
    "stride": 2 if isinstance(m.pool, nn.AvgPool2d) else 1, "bias": m.qkv.bias is not None}), modules_byoa.LambdaLayer)
reads("bilinear_attention", lambda m, inp: Mapped("bilinear_attention", {
    "groups": int(m.groups), "block_size": int(m.block)}), modules_byoa.BilinearAttention)


def _torch_function(kind: Kind, name: str) -> Any:
    space, _, attr = name.partition(".")
    fn = getattr({"F": F, "torch": torch}.get(space), attr, None) if attr else None
    if fn is None:
        raise RuntimeError(f"layer kind '{kind.name}' names torch function {name!r}, which is neither F.<name> "
                           "(torch.nn.functional) nor torch.<name>")
    return fn


reads("linear_attention", lambda m, inp: Mapped("linear_attention", {
    "head_dim": int(m.head_dim), **({"eps": float(m.eps)} if m.eps != 1e-5 else {})}), modules.LinearAttention)
reads("effv2_attention", lambda m, inp: Mapped("effv2_attention", {
    "num_heads": int(m.num_heads), "key_dim": int(m.key_dim), "value_dim": int(m.v[0].out_channels) // int(m.num_heads),
    "talking_heads": bool(m.talking_heads), "downsample": bool(m.downsample)}), modules.EfficientFormerV2Attention)


def _register_kinds() -> None:
    """The generic rules of every kind that names its torch class, functions and methods."""
    for kind in REGISTRY.values():
        cls = torch_class(kind)
        if cls is not None and MODULE_KINDS.get(cls) != kind.name:  # (or the kind registered its own rule above)
            reads(kind.name, _generic_module(kind), cls)
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

# ---- compositions: a module's forward read as one kind, by what it computes --------------------------------------
#
# A norm written as several tensor ops (GRN's norm, mean, division and fused multiply-add) is one kind when the ops
# of one module call are exactly its formula. The importer hands a rule the call's ops as Steps, in order: tensors as
# Refs (the module's input, or an earlier step's result), parameters as Params (views of a parameter folded in),
# every other argument as its concrete value; the rule returns the kind and its arguments, or None.


class Ref(NamedTuple):
    """A tensor of the module's forward: its input (step -1) or the result of an earlier step."""

    step: int


class Param(NamedTuple):
    """A parameter the forward reads, viewed as `shape`; `numel` is the parameter's size."""

    name: str
    shape: tuple[int, ...]
    numel: int


class Step(NamedTuple):
    op: str  # the function's or Tensor method's name: norm, mean, add, truediv, mul, addcmul, ...
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, ...] = ()  # the result's full shape (batch first)


CompositionRule = Callable[[Sequence[Step], tuple[int, ...], bool], "Mapped | None"]
COMPOSITIONS: dict[str, CompositionRule] = {}


def composition(kind: str) -> Callable[[CompositionRule], CompositionRule]:
    def register(rule: CompositionRule) -> CompositionRule:
        if kind not in REGISTRY or kind in COMPOSITIONS:
            raise RuntimeError(f"composition rule for unknown or already read kind '{kind}'")
        COMPOSITIONS[kind] = rule
        return rule

    return register


def _dims(value: Any, rank: int) -> tuple[int, ...] | None:
    """Reduction dims (an int or a sequence) as sorted non-negative axes of a rank-`rank` tensor."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value % rank,)
    if isinstance(value, (tuple, list)) and all(isinstance(d, int) for d in value):
        return tuple(sorted(d % rank for d in value))
    return None


def _arg(step: Step, index: int, name: str, default: Any = None) -> Any:
    return step.args[index] if len(step.args) > index else step.kwargs.get(name, default)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@composition("grn")
def _compose_grn(steps: Sequence[Step], inp: tuple[int, ...], channels_last: bool) -> Mapped | None:
    """ConvNeXt-V2's GRN as Woo et al. 2023 (Algorithm 1) and timm write it: gx = ||x||_2 over the spatial axes,
    nx = gx / (mean of gx over channels + eps), x + (bias + weight * (x * nx)), in either layout."""
    if [s.op for s in steps] != ["norm", "mean", "add", "truediv", "mul", "addcmul", "add"]:
        return None
    norm, mean, add, div, mul, fused, out = steps
    rank = len(inp) + 1
    spatial = tuple(range(1, rank - 1)) if channels_last else tuple(range(2, rank))
    channel = (rank - 1,) if channels_last else (1,)
    c = inp[0]
    eps: Any = add.args[1] if len(add.args) == 2 and add.args[0] == Ref(1) else None
    per_channel = all(isinstance(p, Param) and p.numel == c for p in fused.args[:2])
    if not (norm.args[:1] == (Ref(-1),) and _arg(norm, 1, "p", "fro") in (2, "fro")
            and _dims(_arg(norm, 2, "dim"), rank) == spatial and _arg(norm, 3, "keepdim", False)
            and mean.args[:1] == (Ref(0),) and _dims(_arg(mean, 1, "dim"), rank) == channel
            and _arg(mean, 2, "keepdim", False) and _number(eps)
            and div.args == (Ref(0), Ref(2)) and set(mul.args) == {Ref(-1), Ref(3)} and len(mul.args) == 2
            and len(fused.args) == 3 and per_channel and fused.args[2] == Ref(4)
            and fused.kwargs.get("value", 1) == 1 and set(out.args) == {Ref(-1), Ref(5)} and len(out.args) == 2):
        return None
    return Mapped("grn", {"eps": float(eps)})


def _step(steps: Sequence[Step], ref: Any, *ops: str) -> Step | None:
    """The step that made `ref`, if it is one of `ops`."""
    if isinstance(ref, Ref) and 0 <= ref.step < len(steps) and steps[ref.step].op in ops:
        return steps[ref.step]
    return None


def _operands(step: Step, first: Any) -> Any:
    """The other operand of a two-operand step one of whose operands is `first` (a product in either order)."""
    if len(step.args) != 2 or step.kwargs:
        return None
    a, b = step.args
    return b if a == first else (a if b == first else None)


def _channel_param(value: Any, c: int) -> bool:
    return isinstance(value, Param) and value.numel == c and value.shape.count(c) == 1


def _group_std(steps: Sequence[Step], ref: Any, inp: tuple[int, ...]) -> tuple[int, float] | None:
    """timm's group_std (evo_norm.py): x viewed as groups, their biased variance + eps, its square root, expanded
    back to x's shape; (groups, eps)."""
    back = _step(steps, ref, "reshape", "view")
    spread = _step(steps, back.args[0], "expand", "expand_as") if back else None
    root = _step(steps, spread.args[0] if spread else None, "sqrt")
    plus = _step(steps, root.args[0] if root else None, "add")
    var = _step(steps, plus.args[0] if plus and len(plus.args) == 2 else None, "var")
    grouped = _step(steps, var.args[0] if var else None, "reshape", "view")
    if not (back and back.shape[1:] == inp and spread and root and plus and var and grouped
            and grouped.args[:1] == (Ref(-1),) and len(grouped.shape) >= 3 and _number(plus.args[1])):
        return None
    groups = grouped.shape[1]
    unbiased = var.kwargs.get("unbiased", var.kwargs.get("correction", 1))
    if not (inp[0] % groups == 0 and math.prod(grouped.shape[2:]) == math.prod(inp) // groups and not unbiased
            and _dims(_arg(var, 1, "dim"), len(grouped.shape)) == tuple(range(2, len(grouped.shape)))
            and _arg(var, 3, "keepdim", var.kwargs.get("keepdim", False))):
        return None
    return groups, float(plus.args[1])


@composition("evonorm_s0")
def _compose_evonorm_s0(steps: Sequence[Step], inp: tuple[int, ...], channels_last: bool) -> Mapped | None:
    """EvoNorm-S0 (Liu et al. 2020, Fig. 4 and Appendix; timm's EvoNorm2dS0 and S0a, in either order of its
    pieces): y = x * sigmoid(v * x) / group_std(x) * weight + bias; without v (S0a's apply_act=False)
    x / group_std(x) * weight + bias."""
    if channels_last or len(inp) < 2 or not steps:
        return None
    c = inp[0]
    shift = steps[-1]
    scaled = next((_step(steps, a, "mul") for a in shift.args if isinstance(a, Ref)), None) \
        if shift.op == "add" and len(shift.args) == 2 else None
    if scaled is None or not any(_channel_param(a, c) for a in shift.args):
        return None
    divided = next((_step(steps, a, "truediv", "div") for a in scaled.args if isinstance(a, Ref)), None)
    if divided is None or not any(_channel_param(a, c) for a in scaled.args) or len(divided.args) != 2:
        return None
    found = _group_std(steps, divided.args[1], inp)
    if found is None:
        return None
    groups, eps = found
    top = divided.args[0]
    if top == Ref(-1):
        act = False
    else:  # x * sigmoid(x * v)
        gated = _step(steps, top, "mul")
        gate = _step(steps, _operands(gated, Ref(-1)), "sigmoid") if gated else None
        product = _step(steps, gate.args[0], "mul") if gate and gate.args else None
        if product is None or not _channel_param(_operands(product, Ref(-1)), c):
            return None
        act = True
    used = {a.step for step in steps for a in (*step.args, *step.kwargs.values()) if isinstance(a, Ref)}
    if len(steps) - 1 in used or len(steps) != (12 if act else 9):  # nothing else computed on the way
        return None
    return Mapped("evonorm_s0", {"groups": groups, "eps": eps, "act": act})


@composition("rmsnorm")
def _compose_rmsnorm(steps: Sequence[Step], inp: tuple[int, ...], channels_last: bool) -> Mapped | None:
    """RMSNorm over the channels (x * rsqrt(mean(x ** 2) + eps) * weight), or timm's SimpleNorm (the channels'
    unbiased variance, torch.var's default, in place of the mean square), on channels first, a channels-last view,
    or permuted to channels-last inside the module and back."""
    steps = list(steps)
    rank = len(inp) + 1
    to_last, to_first = (0, *range(2, rank), 1), (0, rank - 1, *range(1, rank - 1))
    inner = channels_last
    if steps and steps[0].op == "permute" and not channels_last:  # permuted inside: the steps between see C last
        if tuple(d % rank for d in _permute_dims(steps[0])) != to_last or steps[-1].op != "permute" \
                or tuple(d % rank for d in _permute_dims(steps[-1])) != to_first or steps[-1].args[0] != Ref(
                    len(steps) - 2):
            return None
        steps = [Step(s.op, _shift(s.args), _shift(s.kwargs), s.shape) for s in steps[1:-1]]
        inner = True
    channel = (rank - 1,) if inner else (1,)
    ops = [s.op for s in steps]
    if ops[:1] == ["pow"] and ops[1:2] == ["mean"]:
        statistic, square, mean = "mean_square", steps[0], steps[1]  # (x ** 2, its mean over the channels)
        if not (square.args == (Ref(-1), 2) and mean.args[:1] == (Ref(0),)):
            return None
        reduced = _dims(_arg(mean, 1, "dim"), rank) == channel and _arg(mean, 2, "keepdim", False)
        rest = steps[2:]
    elif ops[:1] == ["var"]:
        statistic, var = "variance", steps[0]
        unbiased = var.kwargs.get("unbiased", var.kwargs.get("correction", 1))  # torch.var's default: C - 1
        reduced = (var.args[:1] == (Ref(-1),) and _dims(_arg(var, 1, "dim"), rank) == channel
                   and unbiased in (True, 1) and var.kwargs.get("keepdim", False) and len(var.args) <= 2)
        rest = steps[1:]
    else:
        return None
    first = len(steps) - len(rest)  # the step index of rest[0]
    if not reduced or [s.op for s in rest[:3]] != ["add", "rsqrt", "mul"] or len(rest) not in (3, 4):
        return None
    add, root, product = rest[:3]
    if not (len(add.args) == 2 and add.args[0] == Ref(first - 1) and _number(add.args[1])
            and root.args == (Ref(first),) and set(product.args) == {Ref(-1), Ref(first + 1)}):
        return None
    affine = len(rest) == 4
    if affine and not (rest[3].op == "mul" and _operands(rest[3], Ref(first + 2)) is not None
                       and _channel_param(_operands(rest[3], Ref(first + 2)), inp[0])):
        return None
    return Mapped("rmsnorm", {"eps": float(add.args[1]), "elementwise_affine": affine, "statistic": statistic})


@composition("frn")
def _compose_frn(steps: Sequence[Step], inp: tuple[int, ...], channels_last: bool) -> Mapped | None:
    """Filter Response Normalization as Singh and Krishnan 2019 (eq. 1-3) and timm write it: nu2 = mean of x^2 over
    the spatial axes, x * rsqrt(nu2 + eps) (expanded or broadcast), * weight + bias, then max(., tau) or not."""
    if channels_last or len(inp) < 2:
        return None
    c, rank = inp[0], len(inp) + 1
    square = _step(steps, Ref(0), "square", "pow")
    if square is None or square.args[:1] != (Ref(-1),) or (square.op == "pow" and square.args[1:] != (2,)):
        return None
    mean, add, root = (steps[i] if i < len(steps) else None for i in (1, 2, 3))
    if not (mean and mean.op == "mean" and mean.args[:1] == (Ref(0),)
            and _dims(_arg(mean, 1, "dim"), rank) == tuple(range(2, rank)) and _arg(mean, 2, "keepdim", False)
            and add and add.op == "add" and len(add.args) == 2 and add.args[0] == Ref(1) and _number(add.args[1])
            and root and root.op == "rsqrt" and root.args == (Ref(2),)):
        return None
    rest, at = steps[4:], 4
    rms = Ref(3)
    if rest and rest[0].op in ("expand", "expand_as") and rest[0].args[0] == Ref(3):
        rms, rest, at = Ref(4), rest[1:], 5
    if [s.op for s in rest[:3]] != ["mul", "mul", "add"] or len(rest) not in (3, 4):
        return None
    normed, scaled, shifted = rest[:3]
    if not (set(normed.args) == {Ref(-1), rms} and len(normed.args) == 2
            and _channel_param(_operands(scaled, Ref(at)), c) and _channel_param(_operands(shifted, Ref(at + 1)), c)):
        return None
    tlu = len(rest) == 4
    if tlu and not (rest[3].op == "maximum" and _channel_param(_operands(rest[3], Ref(at + 2)), c)):
        return None
    return Mapped("frn", {"eps": float(add.args[1]), "tlu": tlu})


def _permute_dims(step: Step) -> tuple[int, ...]:
    dims = step.args[1:] if len(step.args) > 2 else (step.args[1] if len(step.args) > 1 else step.kwargs.get("dims"))
    return tuple(dims) if isinstance(dims, (tuple, list)) else ()


def _shift(value: Any) -> Any:
    """A step's arguments with the first step (a permute of the input) read as the input, the others one earlier."""
    if isinstance(value, Ref):
        return Ref(-1 if value.step == 0 else value.step - 1)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # (a Param stays one)
        return tuple(_shift(v) for v in value)
    if isinstance(value, list):
        return [_shift(v) for v in value]
    if isinstance(value, dict):
        return {k: _shift(v) for k, v in value.items()}
    return value


# Functions of other libraries by qualified name, kept whole by the tracer (fx's autowrap) and mapped here.
def _f_patch_merging(a: dict[str, Any], inp: tuple[int, ...]) -> Mapped:
    if not isinstance(inp, Tokens) or len(inp.grid) not in (2, 3) or inp[0] != numel(inp.grid):
        raise Unmapped("torchvision's _patch_merging_pad on a tensor that is not a token grid (B x H x W x C, or "
                       "the video Swin's B x T x H x W x C)")
    return Mapped("patch_merging", {})


NAMED_FUNCTIONS: dict[str, tuple[tuple[str, ...], FunctionRule]] = {
    "torchvision.models.shufflenetv2.channel_shuffle": _generic_call(REGISTRY["channel_shuffle"], {}),
    "torchvision.models.swin_transformer._patch_merging_pad": (("x",), _f_patch_merging),
}


# ---- EfficientViT-MSRA's cascaded group attention (archcalc.core.kinds.msra) ------------------------------------


def _read_local_window_attention(m: Any, inp: tuple[int, ...]) -> Mapped:
    """timm's efficientvit_msra LocalWindowAttention (kept whole) as cascaded_attention: its CascadedGroupAttention's
    heads, key and value dims, effective window and depthwise kernels; checked to be the structure archcalc
    builds (1 x 1 qkv convs without bias on C / heads channels, depthwise convs on q, ReLU, a 1 x 1 projection)."""
    attn = m.attn
    heads, kd, vd, w = int(attn.num_heads), int(attn.key_dim), int(attn.val_dim), int(attn.resolution)
    c = int(m.dim)
    kernels = tuple(int(dw.conv.kernel_size[0]) for dw in attn.dws)
    plain = all(q.conv.in_channels == c // heads and q.conv.out_channels == 2 * kd + vd
                and tuple(q.conv.kernel_size) == (1, 1) and q.conv.groups == 1 and q.conv.bias is None
                for q in attn.qkvs) and all(
        dw.conv.groups == kd == dw.conv.in_channels == dw.conv.out_channels and dw.conv.bias is None
        and tuple(dw.conv.padding) == (dw.conv.kernel_size[0] // 2,) * 2 and tuple(dw.conv.stride) == (1, 1)
        for dw in attn.dws)
    proj = attn.proj
    if (not plain or len(inp) != 3 or c % heads or vd != c // heads or inp[0] != c or len(proj) != 2
            or type(proj[0]) is not nn.ReLU
            or tuple(proj[1].conv.weight.shape) != (c, heads * vd, 1, 1) or proj[1].conv.bias is not None
            or w != min(int(m.window_resolution), int(m.resolution)) or min(inp[1], inp[2]) < w):
        raise Unmapped("timm's LocalWindowAttention whose convs, projection or window are not cascaded_attention's "
                       "(1 x 1 qkv convs on C / heads channels, depthwise convs on q, ReLU and a 1 x 1 projection, "
                       "a window no larger than the grid)")
    return Mapped("cascaded_attention", {"num_heads": heads, "key_dim": kd, "window_size": w,
                                         "kernels": list(kernels) if len(set(kernels)) > 1 else kernels[0]})


NAMED_MODULES["timm.models.efficientvit_msra.LocalWindowAttention"] = _read_local_window_attention
