"""From PyTorch to archcalc: the lookup of module classes, functions and tensor methods -> a layer kind and its
arguments, or a merge.

The rules that read each kind live beside its recipe, in archcalc.torch.recipes (the kind's torch half, in one
place); this module finds the rule for a module or a call. The binary merges are recognised from their Python
operator (core.merges' `symbol`). Third-party classes and functions (torchvision's LayerNorm2d, StochasticDepth,
channel_shuffle, Permute, SqueezeExcitation's pieces are plain torch.nn) are named by their qualified names and
matched only when their module is imported. Anything without a rule is an `Unmapped` error naming what it is and
why it has no kind.
"""

from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archcalc.core.kinds import REGISTRY
from archcalc.core.merges import MERGES
from archcalc.torch import modules as own
from archcalc.torch import modules_byoa, recipes_byoa
from archcalc.torch.importer import mqa
from archcalc.torch.recipes import (  # noqa: F401  (Mapped, Unmapped, is_integral, per_of: the importer's names)
    COMPOSITIONS,
    FUNCTIONS,
    METHODS,
    MODULE_KINDS,
    MODULES,
    NAMED_FUNCTIONS,
    NAMED_MODULES,
    OPERATORS,
    FunctionRule,
    Mapped,
    ModuleRule,
    Param,
    Ref,
    Step,
    Unmapped,
    is_integral,
    per_of,
)

NAMED_MODULES.update(recipes_byoa.NAMED_MODULES)  # timm's byoanet attention (halo_attention)

# Modules that only move axes: the importer follows the layout instead of mapping them (see Layout in trace.py).
PERMUTES = ("torchvision.ops.misc.Permute",)
# Modules whose input is a token grid held channels-last (B x H x W x C, Swin's layout): in a network that has one,
# the move of a grid's channels last is the move to tokens, and the move back is `to_grid`.
TOKEN_GRID_MODULES = ("torchvision.models.swin_transformer.ShiftedWindowAttention",
                      "torchvision.models.swin_transformer.ShiftedWindowAttentionV2",
                      "timm.models.maxxvit.PartitionAttentionCl", "timm.models.maxxvit.ParallelPartitionAttention",
                      "torchvision.models.video.swin_transformer.ShiftedWindowAttention3d")
# torchvision's video MViT modules, called with the tokens and their grid's size (T, H, W), returning the tokens and
# the new grid (trace.py's `mvit`); and its fx-wrapped helper that adds a T axis to an image (a clip passes as it is).
MVIT = ("torchvision.models.video.mvit.MultiscaleAttention", "torchvision.models.video.mvit.Pool",
        "torchvision.models.video.mvit.PositionalEncoding")
MVIT_UNSQUEEZE = "torchvision.models.video.mvit._unsqueeze"
# torchvision's MaxViT modules, kept whole and read by trace.py's `maxvit`: the partition of a grid into groups of
# tokens (WindowPartition, then for the grid attention SwapAxes(-2, -3)), the attention over the groups, the way back.
MAXVIT = ("torchvision.models.maxvit.WindowPartition", "torchvision.models.maxvit.WindowDepartition",
          "torchvision.models.maxvit.SwapAxes", "torchvision.models.maxvit.RelativePositionalMultiHeadAttention",
          "timm.models.maxxvit.AttentionCl", "timm.models.maxxvit.Attention2d")
# timm's MaxViT partitions (maxxvit.py), wrapped by the tracer (each one call) and read by trace.py's `maxvit`: a
# B x H x W x C token grid cut into windows or grids (the groups of AttentionCl), and put back.
TIMM_PARTITIONS = ("timm.models.maxxvit.window_partition", "timm.models.maxxvit.grid_partition",
                   "timm.models.maxxvit.window_reverse", "timm.models.maxxvit.grid_reverse")


# Attention modules kept whole and read by their family's reader (timm's TinyViT: importer/tinyvit.py).
WINDOWED = ("timm.models.tiny_vit.Attention",)
# timm's EfficientFormer-V2 attention, kept whole and read by importer/effv2.py.
EFFV2 = ("timm.models.efficientformer_v2.Attention2d", "timm.models.efficientformer_v2.Attention2dDownsample")


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
    if module_rule(m) is not None or qualname(type(m)) in (*PERMUTES, *MAXVIT, *WINDOWED, *mqa.CLASSES, *EFFV2):
        return True
    return type(m).__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList,
                                                                            nn.ModuleDict))


_OWN = {cls.__name__: cls for cls in MODULES  # for _own_copy (archcalc's own modules, the byoanet ones included)
        if cls.__module__ in (own.__name__, modules_byoa.__name__)}

# Modules whose output has their input's shape (the tracer's shape pass does not run them).
SAME_SHAPE = tuple(cls for cls, kind in MODULE_KINDS.items() if REGISTRY[kind].same_shape)

# Functions whose output has their first argument's shape (the tracer need not run them on shapes).
SAME_SHAPE_FUNCTIONS = {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm}

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
# A power with a constant exponent (`x ** 2`, x.pow(c), x.square()) is the scalar kind's pow.
POWER = {operator.pow, torch.pow, torch.square}  # (the in-place forms have no kind: scalar makes a new tensor)
POWER_METHODS = {"pow", "__pow__", "square"}
# Division has no merge: `x / c` is the scalar kind, `x / y` no kind.
DIVIDE = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
DIVIDE_METHODS = {"div", "div_", "true_divide", "__itruediv__", "__truediv__"}
# What a forward may do to a parameter and still have the parameter (a view, a cast): what an op then reads counts
# it. Anything else computed from parameters alone is refused (its cost would be left out).
PARAM_VIEWS = {"reshape", "view", "view_as", "reshape_as", "to", "type", "float", "half", "bfloat16", "contiguous",
               "permute", "transpose", "flatten", "squeeze", "unsqueeze", "expand", "expand_as", "__getitem__",
               "detach", "clone"}
PARAM_VIEW_FUNCTIONS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                        operator.getitem}
CAT = {torch.cat, torch.concat}
CONV_2D = {F.conv2d, torch.conv2d}
MAX_POOL = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d}
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


def timm_partitions() -> dict[Callable[..., Any], str]:
    """The TIMM_PARTITIONS functions, when timm is imported: function -> its name."""
    found = {}
    for name in TIMM_PARTITIONS:
        module, _, attr = name.rpartition(".")
        fn = getattr(sys.modules.get(module), attr, None)
        if fn is not None:
            found[fn] = attr
    return found


def bind(names: tuple[str, ...], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args))
    if len(args) > len(names):
        raise Unmapped(f"{len(args)} positional arguments, expected at most {len(names)}")
    for key, value in kwargs.items():
        bound["x" if key == "input" else key] = value
    return bound

