"""Trace a torch module with torch.fx and turn its graph into archcalc ops: layers (a kind and its arguments on one
tensor) and merges (add / concat / mul of several), in execution order, with per-sample shapes.

The module is traced symbolically (modules in archcalc's table are kept whole, torch.nn's own too), then run once
by an fx Interpreter on shape-only tensors (the meta device, or fake tensors for a module with real weights), so
every node has its concrete value: the shapes of tensors, the ints of `x.shape[-2:]`. Each node is then mapped by
mapping.py; views that change nothing archcalc counts (`contiguous`, a permute to channels-last and back around
channel-wise layers, as torchvision's ConvNeXt does) are followed, not mapped. What cannot be mapped raises
ImportFailure naming the op, the module path and the source line.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archcalc.core.errors import ArchcalcError
from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import LayerError, Tokens, resolve_padding
from archcalc.core.merges import MERGES
from archcalc.torch.importer import (
    additive,
    attention,
    coatnet,
    davit,
    effv2,
    gcvit,
    linattn,
    mapping,
    mobilevit,
    mqa,
    tinyvit,
)
from archcalc.torch.importer.mapping import Mapped, Unmapped

Shape = tuple[int, ...]


class ImportFailure(ArchcalcError):
    """An op the importer cannot map: `cannot import <op> at <module path> (<file>:<line>): <why>`."""


class Where(NamedTuple):
    op: str  # what the op is: nn.Dropout2d, F.conv2d, x.permute, +
    path: str  # the module path ('' for the top level)
    file: str
    line: int

    def __str__(self) -> str:
        at = self.path or "the top level"
        place = f" ({self.file}:{self.line})" if self.file else ""
        return f"{self.op} at {at}{place}"


class SizeOf(NamedTuple):
    """An upsample's `size_of`: the spatial size of another tensor."""

    tensor: int


class Op(NamedTuple):
    """One archcalc op: a layer (kind set) or a merge (merge set)."""

    name: str  # local name: the module's attribute name, or the kind / merge name
    scope: tuple[str, ...]  # module path of the level it belongs to
    fixed: bool  # scope is the op's own module path (a module call); else the innermost module running it
    kind: str | None
    merge: str | None
    args: dict[str, Any]
    inputs: tuple[int, ...]
    output: int
    where: Where
    unknown: str | None = None  # --allow-unknown: what the placeholder stands for
    trainable: bool = True  # False: the module's parameters all have requires_grad=False
    discard: bool = False  # it runs but no output depends on it: written `discard: true` (computed and counted)


class Traced(NamedTuple):
    input_shape: Shape
    shapes: list[Shape]  # per tensor id; 0 is the input
    ops: list[Op]
    outputs: list[tuple[str, int]]
    warnings: list[str]
    unknown: list[str]  # --allow-unknown: the ops left out, with what they leave out
    types: dict[tuple[str, ...], str]  # module path -> the module's class name (names the blocks)


class _Tensor(NamedTuple):
    id: int
    shape: Shape  # per sample, channels first (archcalc's layout, also for a channels-last view)
    channels_last: bool = False


def _token_shape(kind: str | None, inputs: Sequence[_Tensor], out: Shape) -> Tokens | None:
    """The output's shape as a token sequence where the layout makes it one: the output of `to_tokens`, and a
    per-sample N x C output of an op on tokens (a per-token linear, a layer norm, an add), not `to_grid`'s."""
    if kind == "to_tokens" and inputs:
        return Tokens(out[0], out[1], tuple(inputs[0].shape[1:]))
    if inputs and isinstance(inputs[0].shape, Tokens) and len(out) == 2 and kind != "to_grid":
        return Tokens(out[0], out[1], inputs[0].shape.grid)
    if inputs and isinstance(inputs[0].shape, Tokens) and len(out) == len(inputs[0].shape.grid) + 1 > 2 \
            and kind != "to_grid":  # tokens held as a grid, B x H x W x C (Swin): the grid is the leading axes
        if math.prod(out[:-1]) == inputs[0].shape[0]:  # (or as groups x tokens, MaxViT's: the grid they came from)
            return Tokens(inputs[0].shape[0], out[-1], inputs[0].shape.grid)
        return Tokens(math.prod(out[:-1]), out[-1], tuple(out[:-1]))
    return None


class _Param(NamedTuple):
    """A parameter or buffer the forward reads, or a tensor computed from them alone (weight standardisation's
    weight, `self.weight.to(x.dtype)`): the parameters and buffers it is made from."""

    sources: tuple[str, ...]
    shape: Shape  # the tensor's full shape
    standardized: tuple[tuple[str, Any], ...] = ()  # a standardised weight: std_conv's eps, gain and gamma


class _Scaled(NamedTuple):
    """A parameter times a constant (ScaledStdConv2d's `gain * scale`): only weight standardisation reads it."""

    param: _Param
    factor: float
    shape: Shape


class _Chunks(NamedTuple):
    source: _Tensor
    bounds: tuple[tuple[int, int], ...]


# Tensor methods that change no value archcalc counts (a cast, a copy): a composition's rule does not see them.
_CASTS = {"float", "to", "type", "contiguous", "clone", "double", "half", "bfloat16", "detach"}


class _NotComposed(Exception):
    """A module call's ops are not a composition (an argument the rules cannot read)."""


class _Blocks(NamedTuple):
    """Space-to-depth half done: `source` viewed as (C, H/r, r, W/r, r) and permuted to (r, r, C, H/r, W/r)."""

    source: _Tensor
    block_size: int


class _Padded(NamedTuple):
    """An F.pad whose one reader takes it into its own op: reflection or zeros before a depthwise conv with a fixed
    filter (a blur pool), -inf before a max pool (TensorFlow's "same" max pooling, timm's MaxPool2dSame)."""

    source: _Tensor
    pads: tuple[tuple[int, int], ...]  # (before, after) per spatial axis
    mode: str  # "reflect", "zeros" or "-inf"


class _Flat(NamedTuple):
    """A grid whose spatial axes were flattened into one (C x N: torchvision's ViT reshapes before it permutes):
    tokens once the channels move last, nothing archcalc has a kind for otherwise."""

    source: _Tensor


class _MeanToken(NamedTuple):
    """The mean of a token sequence kept as one token, x.mean(1, keepdim=True): class_token with `mean` once it is
    put before the same sequence (CLIP's attention pool: torch.cat([x.mean(1, keepdim=True), x], dim=1)), nothing
    archcalc has a kind for otherwise."""

    source: _Tensor


class _TokensT(NamedTuple):
    """A token sequence with its two axes swapped (C x N: FastViT's `x.transpose(-2, -1)` before it reshapes to
    the grid): to_grid once it is viewed as C x H x W, nothing archcalc has a kind for otherwise."""

    source: _Tensor


class _Const(NamedTuple):
    """A tensor made without the input's values or a parameter (torch.arange, torch.zeros of its size, and
    arithmetic on them): a constant of the input's shape, such as a Fourier position encoding's sines and cosines.
    Only a learned projection of it (a 1 x 1 conv) added to the tokens has an archcalc kind: fourier_pos_embed."""

    shape: Shape  # its full shape (the batch axis first)
    batched: bool  # its size follows the batch (made from x.shape[0])
    temperature: float | None  # the base of `number ** constant` in it (the encoding's frequencies), if one


_CONSTANT = "a tensor made without the input (a constant); archcalc has no kind for it"


class _Projected(NamedTuple):
    """A 1 x 1 conv of a constant (`_Const`) and views of it: a position encoding made at forward time, which an
    addition to the tokens makes fourier_pos_embed."""

    conv: str  # the conv's module path
    hidden: int  # its input channels / 2
    channels: int
    grid: tuple[int, ...]
    layout: str  # "grid" (1 x C x H x W), "flat" (1 x C x N) or "tokens" (1 x N x C)
    once: bool  # made once whatever the batch (not from x.shape[0]): broadcast or repeated over it
    temperature: float | None


class _Failed(Exception):
    """Raised inside fx's tracing with the finished message (fx's own errors pass through it unchanged)."""


class _Concrete(fx.Proxy):
    """A proxy that knows the concrete value of its node (shapes are concrete at import time): where Python needs
    a plain value (an `if`, `len`, `int`, an index), it gets this input's, and the trace is specialised to it."""

    def value(self) -> Any:
        return self.node.meta[_VALUE]

    def plain(self, what: str) -> Any:
        value = self.value()
        if isinstance(value, torch.Tensor):
            raise _Failed(_located(f"{what} of a tensor's values (control flow on data) cannot be traced: archcalc "
                                   "follows shapes, not values"))
        return value

    def __len__(self) -> int:
        return len(self.value())

    def __index__(self) -> int:
        return operator.index(self.plain("an index"))

    def __int__(self) -> int:
        return int(self.plain("int()"))

    def __float__(self) -> float:
        return float(self.plain("float()"))

    def __ceil__(self) -> Any:  # math.ceil(size / stride): a node, so the size stays traceable
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})

    def __floor__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __getattr__(self, k: str) -> Any:
        return _ConcreteAttribute(self, k)


class _ConcreteAttribute(_Concrete, fx.proxy.Attribute):
    pass


_VALUE = "archcalc_value"


def _value_of(a: Any) -> Any:
    return fx.node.map_arg(a, lambda n: n.meta[_VALUE])


class _Tracer(fx.Tracer):
    """torch.fx's symbolic tracer, specialised to one input: every node is run as it is made (on meta or fake
    tensors: shapes only), so Python control flow over shapes (`if x.shape[-1] % 2`, `len(x.shape)`, `math.ceil`,
    `list(x.split(...))`) takes this input's branch instead of failing, while the sizes that reach an op are still
    nodes (so a padding computed from `.size()` can be written as a reference to that tensor). A module's parameters
    are found from one index, not by searching all of them on each attribute access."""

    def __init__(self, autowrap: Sequence[Any], x: torch.Tensor, mode: Any) -> None:
        super().__init__(autowrap_functions=tuple(autowrap))
        self.input = x
        self.mode = mode  # a FakeTensorMode for a module with real weights, else None (meta tensors)
        self.index: dict[int, str] = {}  # id(parameter or buffer) -> its path
        self.tensors: dict[str, torch.Tensor] = {}
        self.running = False  # a node is running for its value: fx's patched module calls and attributes pass through

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        self.tensors = dict(root.named_buffers())
        self.tensors.update(root.named_parameters())
        self.index = {id(t): name for name, t in self.tensors.items()}
        return super().trace(root, concrete_args)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Concrete(node, self)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.running:  # a leaf module running for its value: its own submodules just run
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.running:  # (a leaf module running for its value reads its own weights)
            return attr_val
        name = self.index.get(id(attr_val)) if isinstance(attr_val, torch.Tensor) else None
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["archcalc_line"] = _caller()
        if node.op != "output":
            node.meta[_VALUE] = self.run(node)
        return node

    def run(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.input
        if node.op == "get_attr":
            found = self.tensors.get(str(node.target))
            if found is not None:
                return found
            value: Any = self.root
            self.running = True
            try:
                for part in str(node.target).split("."):
                    value = getattr(value, part)
            finally:
                self.running = False
            return value
        args, kwargs = _value_of(node.args), _value_of(node.kwargs)
        self.running = True
        try:
            if self.mode is None:
                return self._run(node, args, kwargs)
            with self.mode:
                return self._run(node, args, kwargs)
        except _Failed:
            raise
        except Exception as exc:  # the model's own op on this input (a shape that does not fit, an op fx can't size)
            raise _Failed(_run_failure(self.root, node, exc)) from None
        finally:
            self.running = False

    def _run(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            m = self.root.get_submodule(str(node.target))
            # A layer that keeps its input's shape need not run (batch norm's meta kernel is a slow decomposition).
            if type(m) in mapping.SAME_SHAPE and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                return torch.empty_like(args[0])
            return m(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.target in mapping.SAME_SHAPE_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            return torch.empty_like(args[0])  # (their meta kernels are slow decompositions)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.plain("a branch on the value") if isinstance(obj, _Concrete) else super().to_bool(obj))

    def iter(self, obj: fx.Proxy) -> Any:
        value = obj.node.meta[_VALUE]
        items: Any = obj
        count = int(value.shape[0]) if isinstance(value, torch.Tensor) else len(value)
        return iter([items[i] for i in range(count)])

    def keys(self, obj: fx.Proxy) -> Any:
        return obj.node.meta[_VALUE].keys()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return mapping.is_leaf(m)


class _Root(nn.Module):
    """The traced root: the module's submodules, parameters and buffers under their own paths, and a forward of
    one tensor that calls the module's forward (so a forward(*xs) traces as forward(x))."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.whole = mapping.is_leaf(module)  # a single layer: trace a call of it, as a child named after its class
        if self.whole:
            self.add_module(type(module).__name__.lower(), module)
        else:
            self._modules = module._modules
            self._parameters = module._parameters
            self._buffers = module._buffers
        object.__setattr__(self, "_inner", module)

    def forward(self, x: torch.Tensor) -> Any:
        inner: Any = self._inner
        return inner(x) if self.whole else type(inner).forward(inner, x)


def _run_failure(root: Any, n: fx.Node, exc: Exception) -> str:
    """Where and why the model does not run on the input: the node (a module by its path and class, a function by
    name) and the first line of torch's message (the rest is torch's own traceback)."""
    if n.op == "call_module":
        try:
            what = f"module '{n.target}' ({type(root.get_submodule(str(n.target))).__name__})"
        except AttributeError:
            what = f"module '{n.target}'"
    else:
        what = f"{n.op} {getattr(n.target, '__name__', n.target)}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    file, line = n.meta.get("archcalc_line", ("", 0))
    place = f" ({file}:{line})" if file else ""
    return (f"the model does not run on this input: {what}{place}: {type(exc).__name__}: {first} (check --input: "
            "one sample's shape, channels first)")


def _located(why: str) -> str:
    """`why`, at the model's source line now running (the innermost frame outside torch and the importer)."""
    file, line = _caller()
    return f"cannot import the forward at {file}:{line}: {why}" if file else f"cannot import the forward: {why}"


def _user_frame(tb: Any) -> tuple[str, int]:
    """The innermost frame of a traceback in the model's own code (not torch's, not the importer's)."""
    found = ("", 0)
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not any(part in name for part in _SKIP) and f"{os.sep}typing.py" not in name:
            found = (name, tb.tb_lineno)
        tb = tb.tb_next
    return found


# Frames that are not the model's: torch's own (fx, overrides.py's handling of a function on a proxy, nn's modules)
# and the importer's.
_SKIP = (os.path.dirname(torch.__file__) + os.sep, f"{os.sep}archcalc{os.sep}torch{os.sep}importer{os.sep}")


def _caller() -> tuple[str, int]:
    """The innermost frame outside fx and the importer: the model's source line that made the node (cheaper than
    fx's record_stack_traces, which symbolizes a whole traceback per node)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not _Root.forward.__code__:  # the model's code runs below it
        name = frame.f_code.co_filename
        if not any(part in name for part in _SKIP):
            return name, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return "", 0


def _where(node: fx.Node, op: str) -> Where:
    path = ""
    if node.op == "call_module":
        path = str(node.target)
    else:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            last = list(stack.values())[-1]
            path = last[0] if isinstance(last, tuple) else str(last)
    file, line = node.meta.get("archcalc_line", ("", 0))
    return Where(op, path, file, line)


def _scope_of(node: fx.Node) -> tuple[str, ...]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ()
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return tuple(path.split(".")) if path else ()


def _op_name(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"{type(root.get_submodule(str(node.target))).__name__} ({node.target})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    if target in (operator.add, operator.iadd):
        return "+"
    if target in (operator.mul, operator.imul):
        return "*"
    if target is operator.getitem:
        return "[] (indexing)"
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"{module}.{name}" if module else name


class _Converter:
    def __init__(self, root: nn.Module, graph: fx.Graph, values: dict[fx.Node, Any], allow_unknown: bool) -> None:
        self.root = root
        self.graph = graph
        self.values = values
        self.allow_unknown = allow_unknown
        self.shapes: list[Shape] = []
        self.ops: list[Op] = []
        self.vals: dict[fx.Node, Any] = {}
        self.warnings: list[str] = []
        self.unknown: list[str] = []
        self.called: set[str] = set()
        self.named_functions = mapping.named_functions()
        self.parameters = dict(root.named_parameters())
        self.buffers = dict(root.named_buffers())
        self.same: dict[int, tuple[_Tensor, fx.Node]] = {}  # a pad computed from its input's size -> (input, node)
        self.current: Any = None  # the node being converted
        self.consumed: set[str] = set()  # the parameters and buffers an op has counted
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.nodes = list(graph.nodes)
        self.composed: set[fx.Node] = set()  # the nodes of a module call read as one kind (a composition)
        self.tried: set[fx.Node] = set()  # first nodes of module calls a composition was tried on
        # a network of token grids held channels-last (Swin): moving the channels last makes tokens
        self.tokens_last = any(mapping.qualname(type(m)) in mapping.TOKEN_GRID_MODULES for m in root.modules())
        # MaxViT: the grid partition open (its WindowPartition's p, and whether its axes are swapped: the grid
        # attention's groups), from the partition to the departition (`maxvit`)
        self.partition: tuple[int, bool, tuple[int, ...]] | None = None
        # timm's MaxViT: the partition open (window or grid, its size, the tensor it cut; then the attention's output)
        self.timm_partitions = mapping.timm_partitions()
        self.timm_open: tuple[str, tuple[int, int], int, bool] | None = None
        self.unfolded: mobilevit.Unfolded | None = None  # MobileViT: a block's unfolding into patches in force

    # -- helpers --
    def tensor_of(self, value: Any, node: fx.Node) -> _Tensor:
        shape = mobilevit.per_sample(self.unfolded, tuple(int(s) for s in value.shape))
        if not shape or shape[0] != 1:
            raise self.fail(node, f"a tensor of shape {list(shape)}; archcalc's tensors have a batch axis first")
        t = len(self.shapes)
        self.shapes.append(shape[1:])
        return _Tensor(t, shape[1:])

    def fail(self, node: fx.Node, why: str) -> ImportFailure:
        return ImportFailure(f"cannot import {_where(node, _op_name(node, self.root))}: {why}")

    def arg(self, a: Any) -> Any:
        """An fx argument as a value: tensors as _Tensor/_Param, everything else as the concrete value."""
        if isinstance(a, fx.Node):
            if a in self.vals:
                return self.vals[a]
            return self.values.get(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(v) for v in a) if not hasattr(a, "_fields") else a
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.arg(a.start), self.arg(a.stop), self.arg(a.step))
        return a

    def emit(self, node: fx.Node, name: str, kind: str | None, merge: str | None, args: dict[str, Any],
             inputs: Sequence[_Tensor], fixed: bool, channels_last: bool = False, unknown: str | None = None,
             shape: Shape | None = None, trainable: bool = True) -> _Tensor:
        out = self.tensor_of(self.values[node], node) if shape is None else self._new(shape)
        tokens = _token_shape(kind, inputs, out.shape) if shape is None else None
        if tokens is not None:  # the layout torch's shapes do not show: N x C tokens, not a C x L grid
            self.shapes[out.id] = tokens
            out = _Tensor(out.id, tokens)
        if channels_last:
            out = _Tensor(out.id, out.shape, True)
        if node.op == "call_module":
            scope = tuple(str(node.target).split("."))[:-1]
        else:
            scope = _scope_of(node)
        self.ops.append(Op(name, scope, fixed, kind, merge, args, tuple(t.id for t in inputs), out.id,
                           _where(node, _op_name(node, self.root)), unknown, trainable))
        return out

    def _new(self, shape: Shape) -> _Tensor:
        self.shapes.append(shape)
        return _Tensor(len(self.shapes) - 1, shape)

    # -- the walk --
    def run(self) -> tuple[list[tuple[str, int]], Shape]:
        input_shape: Shape | None = None
        outputs: list[tuple[str, int]] = []
        for node in self.graph.nodes:
            if node.op == "placeholder":
                if input_shape is not None:
                    raise ImportFailure(f"cannot import {node.name}: the module takes several inputs; "
                                        "`archcalc import` traces a forward of one tensor")
                value = self.values[node]
                self.vals[node] = self.tensor_of(value, node)
                input_shape = self.shapes[0]
            elif node.op == "get_attr":
                value = self.values[node]
                self.vals[node] = _Param((str(node.target),), tuple(value.shape)) if isinstance(value, torch.Tensor) \
                    else value
            elif node.op == "output":
                outputs = self.outputs(node)
            elif node not in self.composed:
                self.current = node
                if node.op == "call_module" and (self.attention_pattern(node) or self.context_pattern(node)
                                                 or self.grid_attention_pattern(node)
                                                 or self.additive_pattern(node)):
                    continue  # (a module's ops read as one kind by what they compute: attention)
                if node.op == "call_function" and node.target is operator.getitem and self.class_pattern(node):
                    continue
                if mobilevit.layout(self, node) or mobilevit.separable(self, node):  # (MobileViT's unfolding)
                    continue
                if node.op == "call_method" and linattn.linear_attention_pattern(self, node):
                    continue
                if self.composition(node):  # (its nodes are one op now; their values are set)
                    continue
                try:
                    if gcvit.pattern(self, node):  # GCViT's window attention (importer/gcvit.py)
                        continue
                    if self.davit_pattern(node):  # DaViT's and Twins-SVT's windows, DaViT's channel attention
                        continue
                    result = self.node(node)
                except Unmapped as exc:
                    result = self.unmapped(node, str(exc))
                if result is not None:
                    self.vals[node] = result
        assert input_shape is not None
        return outputs, input_shape

    # -- compositions: a module call whose ops are one kind's formula (recipes.COMPOSITIONS) --
    def composition(self, node: fx.Node) -> bool:
        """When `node` starts a call of a module (not one of the table's), the call's ops read as one kind if a
        composition rule recognises them: the call's nodes are then that kind's op, from its input to its result."""
        if node.op not in ("call_function", "call_method") or not mapping.COMPOSITIONS:
            return False
        path = ".".join(_scope_of(node))
        if not path or node in self.tried:
            return False
        run = self._module_run(node, path)
        self.tried.update(n for n in run if ".".join(_scope_of(n)) == path)  # (a module inside gets its own try)
        found = self._steps(run)
        if found is None:
            return False
        steps, x, params, last = found
        for kind, rule in mapping.COMPOSITIONS.items():
            mapped = rule(steps, x.shape, x.channels_last)
            if mapped is None:
                continue
            self.current = last
            self.consume(last, params, kind, mapped.args, x)
            self.called.add(path)
            self.composed.update(run)
            out = self._new(x.shape)
            out = _Tensor(out.id, out.shape, x.channels_last)
            m = self.root.get_submodule(path)
            where = Where(type(m).__name__, path, *last.meta.get("archcalc_line", ("", 0)))
            parts = tuple(path.split("."))
            trainable = not list(m.parameters()) or any(p.requires_grad for p in m.parameters())
            self.ops.append(Op(parts[-1], parts[:-1], True, kind, None, dict(mapped.args), (x.id,), out.id, where,
                               None, trainable))
            self.vals[last] = out
            return True
        return False

    def module_op(self, path: str, run: list[fx.Node], kind: str, args: dict[str, Any], x: _Tensor) -> bool:
        """The nodes `run` of one call of the module at `path` as one op of `kind` on `x`, counting the module's
        parameters (False, nothing done, when they are not the kind's)."""
        m = self.root.get_submodule(path) if path else self.root
        params = [_Param((f"{path}.{name}",), tuple(t.shape)) for name, t in m.named_parameters()]
        last = run[-1]
        try:
            self.consume(last, params, kind, args, x)
        except Unmapped:
            return False
        out = self._new(x.shape)
        parts = tuple(path.split("."))
        where = Where(type(m).__name__, path, *last.meta.get("archcalc_line", ("", 0)))
        trainable = not list(m.parameters()) or any(p.requires_grad for p in m.parameters())
        self.ops.append(Op(parts[-1], parts[:-1], True, kind, None, args, (x.id,), out.id, where, None, trainable))
        self.called.update([path, *(str(n.target) for n in run if n.op == "call_module")])
        self.composed.update(run)
        self.vals[last] = out
        return True

    def attention_pattern(self, node: fx.Node) -> bool:
        """Self-attention written out op by op from its fused qkv projection (timm's Attention: attention.py), one
        `self_attention` op from the projections' input to the output projection's result."""
        found = attention.match(self.root, mobilevit.matcher_values(self.unfolded, self.values), node) \
            or linattn.match(self.root, self.values, node)
        if found is None:
            return self.covariance_pattern(node)
        x = self.vals.get(found.x)
        grid_in: _Tensor | None = None
        if found.conv and isinstance(x, _Tensor) and not x.channels_last and not isinstance(x.shape, Tokens) \
                and len(x.shape) == 3:
            # LeViT's conv form on a channels-first grid: to_tokens, the attention, to_grid (views: the same
            # arithmetic, 1 x 1 convs as linear maps of each position's channels)
            grid_in = x
            x = _Tensor(x.id, Tokens(x.shape[1] * x.shape[2], x.shape[0], tuple(x.shape[1:])))
        if not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or x.channels_last:
            return False
        if found.grid and tuple(x.shape.grid) != tuple(found.grid):
            return False  # (strided queries or a reduction of another grid than the tokens' own)
        params = [_Param((f"{path}.{name}",), tuple(t.shape)) for path in (found.qkv, found.proj, *found.more)
                  if path for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        args: dict[str, Any] = {"num_heads": found.num_heads, "bias": found.bias}
        if not found.proj:  # (SHViT's: no output projection)
            args["proj"] = False
        if found.bias and not found.qkv_bias:
            args["qkv_bias"] = False
        c = x.shape[1]
        unprojected = isinstance(self.root.get_submodule(found.proj), nn.Identity)  # (linattn: LowFormer's)
        if found.key_dim and ((found.key_dim, found.value_dim) != (c // found.num_heads,) * 2 or unprojected):
            args.update(key_dim=found.key_dim, value_dim=found.value_dim, **({"proj": False} if unprojected else {}))
        if found.table:
            if not self._offsets_index(found.index_buffer, x.shape, found.stride):
                return False
            params.append(_Param((found.table,), tuple(self.root.get_parameter(found.table).shape)))
            args["score_bias"] = True
        if found.sr_ratio > 1:
            args["sr_ratio"] = found.sr_ratio
        if found.kv_pool:
            args["kv_pool"] = found.kv_pool
        if found.kv_avgpool:
            args["kv_avgpool"] = found.kv_avgpool
            if not found.kv_norm:
                args["kv_norm"] = False
        if found.norm:
            args["norm"] = "batchnorm"
        if found.act != "none":
            args["act"] = found.act
        if found.stride > 1:
            args["stride"] = found.stride
        if found.out_features and found.out_features != c:
            args["out_features"] = found.out_features
        read = mobilevit.attention(self.unfolded, "self_attention", args)  # (within MobileViT's patch positions)
        if read is None:
            return False
        kind_name, args = read
        try:
            self.consume(found.last, params, kind_name, args, x)
        except Unmapped:
            return False
        calls = [str(n.target) for n in found.nodes if n.op == "call_module"]
        self.called.update(calls)
        parts = tuple(found.qkv.split("."))[:-1]  # the attention module: the projections' common parent
        if not found.proj:  # (no output projection: the module whose forward joins the heads)
            parts = _scope_of(found.last)
        proj_parts = tuple(found.proj.split(".")) if found.proj else parts
        while parts and parts != proj_parts[:len(parts)]:
            parts = parts[:-1]
        path = ".".join(parts)
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        trainable = any(p.requires_grad for c in calls for p in self.root.get_submodule(c).parameters())
        kind = REGISTRY[kind_name]
        try:
            shape = kind.output({a.name: args.get(a.name, a.default) for a in kind.args}, x.shape,
                                lambda message: None)
        except LayerError:
            return False
        assert isinstance(shape, Tokens)
        want = (1, shape[1], *shape.grid) if grid_in is not None else (1, *shape)
        if want != mobilevit.per_sample(self.unfolded, tuple(int(s) for s in self.values[found.last].shape)):
            return False
        name = parts[-1] if parts else "attention"
        if grid_in is not None:
            tokens = self._new(x.shape)
            self.ops.append(Op(f"{name}_tokens", parts[:-1], False, "to_tokens", None, {}, (grid_in.id,), tokens.id,
                               where))
            x = tokens
        out = self._new(shape)
        self.ops.append(Op(name, parts[:-1], bool(parts), kind_name, None, args, (x.id,), out.id, where,
                           None, trainable))
        if grid_in is not None:
            grid = self._new((shape[1], *shape.grid))
            size = {"size": list(shape.grid)} if found.table or found.stride > 1 else {}  # (else the tokens' own)
            self.ops.append(Op(f"{name}_grid", parts[:-1], False, "to_grid", None, size, (out.id,), grid.id, where))
            out = grid
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def _offsets_index(self, path: str, tokens: Tokens, stride: int = 1) -> bool:
        """The score bias's index buffer is self_attention's: Nq x N on a 2-D grid of N tokens, and where its values
        are known (not the meta device), |dy| x W + |dx| of each query (on the grid subsampled by the stride) and
        each token."""
        grid = tokens.grid
        if len(grid) != 2 or grid[0] * grid[1] != tokens[0]:
            return False
        index = self.root.get_buffer(path)
        if index.is_meta:
            return True  # (a model built on the meta device: only the shape is known, checked by the matcher)
        ys = torch.arange(grid[0]).repeat_interleave(grid[1])
        xs = torch.arange(grid[1]).repeat(grid[0])
        on = ((ys % stride == 0) & (xs % stride == 0)).nonzero().flatten()
        want = (ys[on, None] - ys[None, :]).abs() * grid[1] + (xs[on, None] - xs[None, :]).abs()
        return tuple(index.shape) == tuple(want.shape) and bool(torch.equal(index.cpu(), want))

    def class_pattern(self, node: fx.Node) -> bool:
        """CaiT's class attention written out op by op from its x[:, 0] (attention.py), one `class_attention` op
        from the tokens to the output projection's result (the class token's, 1 x C)."""
        found = attention.match_class(self.root, self.values, node)
        x = self.vals.get(found.x) if found is not None else None
        if found is None or not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or x.channels_last:
            return False
        params = [_Param((f"{path}.{name}",), tuple(t.shape)) for path in found.projections
                  for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        args: dict[str, Any] = {"num_heads": found.num_heads}
        if not found.qkv_bias:
            args["qkv_bias"] = False
        try:
            self.consume(found.last, params, "class_attention", args, x)
        except Unmapped:
            return False
        calls = [str(n.target) for n in found.nodes if n.op == "call_module"]
        self.called.update(calls)
        parts = tuple(found.projections[0].split("."))[:-1]
        path = ".".join(parts)
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        trainable = any(p.requires_grad for c in calls for p in self.root.get_submodule(c).parameters())
        out = self._new(Tokens(1, x.shape[1], x.shape.grid))
        self.ops.append(Op(parts[-1] if parts else "class_attention", parts[:-1], bool(parts), "class_attention",
                           None, args, (x.id,), out.id, where, None, trainable))
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def context_pattern(self, node: fx.Node) -> bool:
        """GCNet's attention pooling from its logits' conv (timm's GlobalContext: attention.match_context), one
        `context_pool` op from the grid to the pooled context."""
        found = attention.match_context(self.root, self.values, node)
        x = self.vals.get(found.x) if found is not None else None
        if found is None or not isinstance(x, _Tensor) or isinstance(x.shape, Tokens) or x.channels_last:
            return False
        conv = self.root.get_submodule(found.conv)
        params = [_Param((f"{found.conv}.{name}",), tuple(t.shape)) for name, t in conv.named_parameters()]
        args = {} if found.bias else {"bias": False}
        try:
            self.consume(found.last, params, "context_pool", args, x)
        except Unmapped:
            return False
        self.called.add(found.conv)
        parts = tuple(found.conv.split("."))  # (named after the conv: its module holds the rest of the block)
        path = ".".join(parts[:-1])
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        out = self._new((x.shape[0], 1, 1))
        self.ops.append(Op(parts[-1], parts[:-1], True, "context_pool", None, args,
                           (x.id,), out.id, where, None, any(p.requires_grad for p in conv.parameters())))
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def covariance_pattern(self, node: fx.Node) -> bool:
        """XCiT's cross-covariance attention written out op by op from its fused qkv projection (attention.py),
        one `xca` op from the projections' input to the output projection's result."""
        found = attention.match_covariance(self.root, self.values, node)
        x = self.vals.get(found.x) if found is not None else None
        if found is None or not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or x.channels_last:
            return False
        params = [_Param((found.temperature,), tuple(self.parameters[found.temperature].shape))] \
            if found.temperature in self.parameters else []
        params += [_Param((f"{path}.{name}",), tuple(t.shape)) for path in (found.qkv, found.proj)
                   for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        args: dict[str, Any] = {"num_heads": found.num_heads}
        if not found.qkv_bias:
            args["qkv_bias"] = False
        try:
            self.consume(found.last, params, "xca", args, x)
        except Unmapped:
            return False
        calls = [str(n.target) for n in found.nodes if n.op == "call_module"]
        self.called.update(calls)
        parts = tuple(found.qkv.split("."))[:-1]
        path = ".".join(parts)
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        trainable = any(p.requires_grad for c in calls for p in self.root.get_submodule(c).parameters())
        out = self._new(x.shape)
        self.ops.append(Op(parts[-1] if parts else "xca", parts[:-1], bool(parts), "xca", None, args, (x.id,),
                           out.id, where, None, trainable))
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def additive_pattern(self, node: fx.Node) -> bool:
        """SwiftFormer's efficient additive attention written out op by op from its query projection
        (importer/additive.py), one `additive_attention` op from the tokens to the final projection's result."""
        found = additive.match(self.root, self.values, node)
        x = self.vals.get(found.x) if found is not None else None
        if found is None or not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or x.channels_last:
            return False
        params = [_Param((f"{path}.{name}",), tuple(t.shape)) for path in found.projections[:2]
                  for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        params.append(_Param((found.vector,), tuple(self.parameters[found.vector].shape)))
        params += [_Param((f"{path}.{name}",), tuple(t.shape)) for path in found.projections[2:]
                   for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        try:
            self.consume(found.last, params, "additive_attention", {}, x)
        except Unmapped:
            return False
        self.called.update(found.projections)
        parts = tuple(found.projections[0].split("."))[:-1]
        path = ".".join(parts)
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        trainable = any(p.requires_grad for c in found.projections for p in self.root.get_submodule(c).parameters())
        out = self._new(x.shape)
        self.ops.append(Op(parts[-1] if parts else "additive_attention", parts[:-1], bool(parts),
                           "additive_attention", None, {}, (x.id,), out.id, where, None, trainable))
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def module_params(self, path: str) -> list[_Param]:
        """The parameters of the module at `path`, as an op that reads them all lists them (consume)."""
        module = self.root.get_submodule(path)
        return [_Param((f"{path}.{name}",), tuple(t.shape)) for name, t in module.named_parameters()]

    def davit_pattern(self, node: fx.Node) -> bool:
        """DaViT's windows and channel attention, Twins-SVT's locally-grouped attention (importer/davit.py): the
        span `node` starts as one op of the module the span's parameters are in."""
        found = davit.match(self.root, self.values, self.vals, self.nodes, self.order, node)
        if found is None:
            return False
        x, m = self.vals[found.x], self.root.get_submodule(found.path)
        self.current = found.last
        params = [_Param((f"{found.path}.{name}",), tuple(t.shape)) for name, t in m.named_parameters()]
        self.consume(found.last, params, found.kind, found.args, x)
        self.called.update(found.calls)
        parts = tuple(found.path.split("."))
        where = Where(type(m).__name__, found.path, *found.last.meta.get("archcalc_line", ("", 0)))
        out = self._new(x.shape)
        self.ops.append(Op(parts[-1], parts[:-1], True, found.kind, None, found.args, (x.id,), out.id, where, None,
                           any(p.requires_grad for p in m.parameters())))
        self.composed.update(found.span)
        self.vals[found.last] = out
        return True

    def grid_attention_pattern(self, node: fx.Node) -> bool:
        """Self-attention on a channels-first grid with 1x1 conv projections (Visformer's: attention.match_grid):
        `to_tokens`, one `self_attention` and `to_grid`, the same products."""
        found = attention.match_grid(self.root, self.values, node)
        x = self.vals.get(found.x) if found is not None else None
        if found is None or not isinstance(x, _Tensor) or isinstance(x.shape, Tokens) or x.channels_last \
                or len(x.shape) != 3:
            return False
        c, h, w = x.shape
        tokens = _Tensor(-1, Tokens(h * w, c, (h, w)))
        params = [_Param((f"{path}.{name}",), tuple(t.shape)) for path in (found.qkv, found.proj)
                  for name, t in self.root.get_submodule(path).named_parameters(recurse=False)]
        args: dict[str, Any] = {"num_heads": found.num_heads, "bias": found.bias}
        if found.bias and not found.qkv_bias:
            args["qkv_bias"] = False
        try:
            self.consume(found.last, params, "self_attention", args, tokens)
        except Unmapped:
            return False
        self.called.update((found.qkv, found.proj))
        parts = tuple(found.qkv.split("."))[:-1]
        path = ".".join(parts)
        m = self.root.get_submodule(path) if path else self.root
        where = Where(type(m).__name__, path, *found.last.meta.get("archcalc_line", ("", 0)))
        trainable = any(p.requires_grad for q in (found.qkv, found.proj)
                        for p in self.root.get_submodule(q).parameters())
        name, scope = (parts[-1], parts[:-1]) if parts else ("attention", ())
        seq = self._new(tokens.shape)
        att = self._new(tokens.shape)
        out = self._new(x.shape)
        fixed = bool(parts)
        self.ops += [Op(f"{name}_tokens", scope, fixed, "to_tokens", None, {}, (x.id,), seq.id, where, None, True),
                     Op(name, scope, fixed, "self_attention", None, args, (seq.id,), att.id, where, None, trainable),
                     Op(f"{name}_grid", scope, fixed, "to_grid", None, {}, (att.id,), out.id, where,
                        None, True)]
        self.composed.update(found.nodes)
        self.vals[found.last] = out
        return True

    def _module_run(self, node: fx.Node, path: str) -> list[fx.Node]:
        """The nodes of this call of the module at `path`: from `node`, while they run inside it."""
        run = []
        for n in self.nodes[self.order[node]:]:
            if n.op == "get_attr":
                continue
            stack = n.meta.get("nn_module_stack") or {}
            paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
            if n.op not in ("call_function", "call_method") or path not in paths:
                break
            run.append(n)
        return run

    def _steps(self, run: list[fx.Node]) -> tuple[list[Any], _Tensor, list[_Param], fx.Node] | None:
        """The run as composition steps (recipes.Step), with its one input tensor, the parameters it reads and its
        last node; None unless it takes one tensor of the network and only its last node is read after it."""
        inside = set(run)
        refs: dict[fx.Node, Any] = {}
        inputs: set[fx.Node] = set()
        params: dict[str, _Param] = {}
        steps: list[Any] = []

        def convert(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a in refs:
                    return refs[a]
                value = self.vals.get(a, self.values.get(a))
                if a.op == "get_attr" and isinstance(value, torch.Tensor):  # (read later in the graph than the run)
                    value = _Param((str(a.target),), tuple(value.shape))
                if isinstance(value, _Tensor) and a not in inside:
                    inputs.add(a)
                    return mapping.Ref(-1)
                if isinstance(value, _Param) and len(value.sources) == 1 and not value.standardized:
                    name = value.sources[0]
                    if name not in self.parameters:
                        raise _NotComposed
                    params[name] = value
                    return mapping.Param(name, value.shape, self.parameters[name].numel())
                if isinstance(value, torch.Tensor) or isinstance(value, (_Tensor, _Chunks, _Param, _Scaled)):
                    raise _NotComposed
                return value  # a size or another plain value
            if isinstance(a, (list, tuple)) and not hasattr(a, "_fields"):
                return type(a)(convert(v) for v in a)
            if isinstance(a, dict):
                return {k: convert(v) for k, v in a.items()}
            return a

        try:
            for n in run:
                value = self.values.get(n)
                if not isinstance(value, torch.Tensor):  # shape arithmetic (x.shape, C // groups), an assert
                    refs[n] = value
                    continue
                args, kwargs = convert(n.args), convert(n.kwargs)
                op = str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
                if op in _CASTS and args and isinstance(args[0], mapping.Ref) and tuple(value.shape) == (
                        self._shape_of_ref(args[0], steps, inputs)):
                    refs[n] = args[0]  # a cast (x.float(), .to(x.dtype)) or a copy: the same values for archcalc
                    continue
                operands = [v for v in (*args, *kwargs.values()) if isinstance(v, (mapping.Ref, mapping.Param))]
                if operands and all(isinstance(v, mapping.Param) for v in operands):  # a view of a parameter
                    if len(operands) == 1 and op in mapping.PARAM_VIEWS and args and args[0] is operands[0]:
                        refs[n] = operands[0]._replace(shape=tuple(self.values[n].shape))
                        continue
                    return None
                refs[n] = mapping.Ref(len(steps))
                steps.append(mapping.Step(op, args, kwargs, tuple(int(v) for v in value.shape)))
        except _NotComposed:
            return None
        last = run[-1] if run else None
        if last is None or len(inputs) != 1 or not isinstance(self.values.get(last), torch.Tensor):
            return None
        if any(u not in inside for n in run[:-1] for u in n.users):
            return None
        x = self.vals[next(iter(inputs))]
        if tuple(int(v) for v in self.values[last].shape[1:]) != (
                (*x.shape[1:], x.shape[0]) if x.channels_last else x.shape):
            return None
        return steps, x, list(params.values()), last

    def _shape_of_ref(self, ref: Any, steps: list[Any], inputs: set[fx.Node]) -> tuple[int, ...]:
        if ref.step >= 0:
            return tuple(steps[ref.step].shape)
        return tuple(int(v) for v in self.values[next(iter(inputs))].shape)

    def unmapped(self, node: fx.Node, why: str) -> Any:
        if not self.allow_unknown:
            raise self.fail(node, why)
        value = self.values.get(node)
        tensors = [self.vals[a] for a in node.all_input_nodes if isinstance(self.vals.get(a), _Tensor)]
        where = _where(node, _op_name(node, self.root))
        if not isinstance(value, torch.Tensor) or not tensors:
            raise ImportFailure(f"cannot import {where}: {why}; --allow-unknown cannot stand in for it (it does not "
                                "make one tensor from tensors)")
        first = tensors[0]
        out_shape = tuple(int(s) for s in value.shape[1:])
        if out_shape != first.shape or first.channels_last:
            raise ImportFailure(f"cannot import {where}: {why}; --allow-unknown cannot stand in for it: it changes "
                                f"the shape from {'x'.join(map(str, first.shape))} to "
                                f"{'x'.join(map(str, out_shape))}")
        params = 0
        if node.op == "call_module":
            self.called.add(str(node.target))
            params = sum(p.numel() for p in self.root.get_submodule(str(node.target)).parameters())
        leaves = [f"{params:,} parameters" if params else "", "its MACs, FLOPs, activation memory and saved bytes"]
        if len(tensors) > 1:
            leaves.append(f"its other {len(tensors) - 1} input(s)")
        note = f"{where}: {why}"
        self.unknown.append(f"{note} (the totals leave out {', '.join(x for x in leaves if x)})")
        return self.emit(node, "unknown", "identity", None, {}, [first], node.op == "call_module", unknown=note)

    def outputs(self, node: fx.Node) -> list[tuple[str, int]]:
        result = node.args[0]
        if isinstance(result, fx.Node):
            items: list[tuple[str, Any]] = [("output", result)]
        elif isinstance(result, dict):
            items = [(str(k), v) for k, v in result.items()]
        elif isinstance(result, (tuple, list)):
            fields = getattr(result, "_fields", None)
            items = [(fields[i] if fields else f"output{i}", v) for i, v in enumerate(result)]
        else:
            raise ImportFailure(f"cannot import the module's output: {type(result).__name__} is not a tensor, a tuple "
                                "or a dict of tensors")
        out = []
        for name, v in items:
            value = self.vals.get(v) if isinstance(v, fx.Node) else None
            if not isinstance(value, _Tensor):
                raise ImportFailure(f"cannot import the module's output '{name}': it is not a tensor made by the "
                                    "network")
            if value.channels_last:
                raise ImportFailure(f"cannot import the module's output '{name}': it is a channels-last view")
            out.append((name, value.id))
        return out

    def node(self, node: fx.Node) -> Any:
        if node.op == "call_module":
            return self.module(node)
        target = node.target
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        tensors = [a for a in args if isinstance(a, _Tensor)] + [v for v in kwargs.values() if isinstance(v, _Tensor)]
        if target not in mapping.CAT and any(isinstance(a, _MeanToken) for a in [*args, *kwargs.values()]):
            raise Unmapped("it reads the mean of tokens kept as one token (x.mean(1, keepdim=True)), which archcalc "
                           "reads only put before the same tokens (torch.cat: class_token with mean)")
        value = self.values.get(node)
        method = str(target) if node.op == "call_method" else None
        if args and isinstance(args[0], tinyvit.Windows):  # (TinyViT's windows: the views into them and back)
            return tinyvit.follow(self, node, method, args)
        if not tensors and not any(isinstance(a, (_Tensor, _Chunks, _Padded, _Blocks, _Flat, _Param, list, tuple))
                                   and self._has_tensor(a) for a in [*args, *kwargs.values()]):
            params = self._params([*args, *kwargs.values()])
            if (params or self._scaled([*args, *kwargs.values()])) and isinstance(value, torch.Tensor):
                return self.on_parameters(node, target, method, args, kwargs, params, tuple(value.shape))
            if isinstance(value, torch.Tensor):
                return self.constant(node, target, method, args, kwargs, value)
            return value  # shape arithmetic: x.shape, x.size(0), ...
        adds = (mapping.BINARY_METHODS.get(method) if method else mapping.BINARY.get(target)) == "add"
        if self._constants([*args, *kwargs.values()]) and not adds:  # a constant with the network's tensors
            raise Unmapped(_CONSTANT)  # (an addition: binary() reads a position encoding's, refuses the rest)
        if method in mapping.ALIASES_METHODS:
            return args[0]
        if (target is getattr and not isinstance(value, torch.Tensor)) or method in ("size", "dim", "numel"):
            return value  # x.shape[-2:], x.size(0): concrete values for the arguments of later ops
        if target is operator.getitem:
            return self.getitem(node, args)
        if method in ("expand_as", "expand") and isinstance(args[0], _Tensor):
            return self.expand(node, args[0])
        merge = mapping.BINARY_METHODS.get(method) if method else mapping.BINARY.get(target)
        if method in mapping.DIVIDE_METHODS or target in mapping.DIVIDE:
            merge = "div"
        if merge is not None:
            return self.binary(node, merge, args, kwargs)
        if target in mapping.POWER or method in mapping.POWER_METHODS:
            return self.power(node, args, kwargs, square=target is torch.square or method == "square")
        if target in mapping.CAT:
            return self.cat(node, args, kwargs)
        if target is torch.stack:
            return self.stack(node, args, kwargs)
        if target in mapping.FLATTEN or method in ("flatten", "view", "reshape") or target is torch.reshape:
            return self.reshape(node, args, kwargs, method or "flatten")
        if target in mapping.CHUNK or target in mapping.SPLIT or method in ("chunk", "split"):
            return self.chunks(node, args, kwargs, "chunk" if (target in mapping.CHUNK or method == "chunk")
                               else "split")
        if target is torch.permute or method == "permute":
            dims: Any = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims"))
            return self.permute(node, args[0], tuple(dims))
        if (target is torch.transpose or method == "transpose") and len(args) == 3 and self._to_grid_next(node, args):
            return _TokensT(args[0])
        if (target is torch.transpose or method == "transpose") and isinstance(args[0], _Flat) and len(args) == 3:
            pair = sorted(int(d) % 3 for d in args[1:])
            return self.permute(node, args[0], (0, 2, 1) if pair == [1, 2] else (0, 1, 2))
        fn: Any = target
        if fn in self.timm_partitions:
            return self.timm_partition(node, self.timm_partitions[fn], args)
        if mapping.qualname(fn) == mapping.MVIT_UNSQUEEZE:  # MViT's _unsqueeze(x, 5, 2): a clip passes as it is
            if not (isinstance(args[0], _Tensor) and isinstance(value, tuple) and value[1] == len(value[0].shape)):
                raise Unmapped("torchvision's MViT on an image: archcalc imports it on a clip (C x T x H x W)")
            return (args[0], value[1])
        if (fn is torch.mean or method == "mean") and isinstance(args[0], _Tensor) \
                and isinstance(args[0].shape, Tokens):
            return self.token_mean(node, args, kwargs)
        entry = mapping.METHODS.get(method) if method else (mapping.FUNCTIONS.get(fn) or self.named_functions.get(fn))
        if entry is None:
            raise Unmapped("it has no archcalc kind")
        names, rule = entry
        bound = mapping.bind(names, args, kwargs)
        x = bound.get("x")
        if fn is F.pad and isinstance(x, _Tensor):
            padded = self.padded(node, bound, x)
            if padded is not None:
                return padded
        if fn in mapping.CONV_2D and (isinstance(x, _Padded) or self._fixed_filter(bound.get("weight"))):
            return self.blur_pool(node, bound, x)
        if isinstance(x, _Padded):
            if fn in mapping.MAX_POOL and x.mode == "-inf":
                return self.padded_max_pool(node, rule, bound, x)
            raise Unmapped("its input is a padding that archcalc folds only into a blur pool or a max pool")
        if not isinstance(x, _Tensor):
            raise Unmapped("its first argument is not a tensor of the network")
        if any(isinstance(v, _Tensor) for k, v in bound.items() if k != "x"):
            raise Unmapped("it takes a second tensor, which has no archcalc kind")
        if x.channels_last and fn is F.linear:  # a Linear over the channels of a channels-last view: a 1x1 conv
            w = bound.get("weight")
            if not isinstance(w, _Param) or len(w.shape) != 2 or w.shape[1] != x.shape[0]:
                raise Unmapped("F.linear on a channels-last view over other than its channels")
            conv = {"out_channels": w.shape[0], "kernel_size": 1, "bias": bound.get("bias") is not None}
            self.consume(node, self._params(list(bound.values())), "conv", conv, x)
            return self.emit(node, "conv", "conv", None, conv, [x], False, channels_last=True,
                             shape=(w.shape[0], *x.shape[1:]))
        if x.channels_last and (fn is torch.mean or method == "mean"):
            return self.channels_last_mean(node, rule, bound, x)
        mapped = rule(bound, x.shape)
        if any(self._scaled(list(bound.values()))):
            raise Unmapped("it reads a parameter times a constant (computed at forward time), which has no archcalc "
                           "kind")
        standardized = [p for p in self._params(list(bound.values())) if p.standardized]
        if standardized:  # a convolution of a standardised weight
            weight = standardized[0]
            if mapped.kind != "conv" or bound.get("weight") is not weight \
                    or tuple(self.parameters[weight.sources[0]].shape) != weight.shape:
                raise Unmapped("a standardised weight read by other than a convolution's weight has no archcalc "
                               "kind")
            mapped = Mapped("std_conv", {**mapped.args, **dict(standardized[0].standardized)})
        self.consume(node, self._params(list(bound.values())), mapped.kind, mapped.args, x)
        if mapped.kind == "upsample" and "size" in mapped.args:
            ref = self.size_source(node, mapped.args["size"])
            if ref is not None:
                del mapped.args["size"]
                mapped.args["size_of"] = SizeOf(ref)
        if mapped.kind in ("zeropad", "crop"):
            return self.resize(node, mapped, x)
        if mapped.kind in ("conv", "std_conv") and self.same.get(x.id) is not None \
                and mapped.args["padding"] in (0, "valid"):
            fused = self.same_padding(mapped, x)
            if fused is not None:
                return fused
        return self.layer(node, mapped, x, mapped.kind, fixed=False)

    @classmethod
    def _constants(cls, values: Sequence[Any]) -> list[_Const | _Projected]:
        found: list[_Const | _Projected] = []
        for v in values:
            if isinstance(v, (_Const, _Projected)):
                found.append(v)
            elif isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
                found += cls._constants(v)
        return found

    def constant(self, node: fx.Node, target: Any, method: str | None, args: list[Any], kwargs: dict[str, Any],
                 value: torch.Tensor) -> _Const | _Projected:
        """An op making a tensor from no tensor of the network and no parameter: a constant (`_Const`), or a view
        of a constant's projection (`_Projected`)."""
        found = self._constants([*args, *kwargs.values()])
        projected = [v for v in found if isinstance(v, _Projected)]
        if projected:
            if len(found) != 1:
                raise Unmapped(_CONSTANT)
            return self.projected_view(str(method or getattr(target, "__name__", "")), args, kwargs, projected[0],
                                       tuple(int(v) for v in value.shape))
        consts = [v for v in found if isinstance(v, _Const)]
        number = (int, float)
        if target is operator.pow and len(args) == 2 and isinstance(args[0], number) \
                and not isinstance(args[0], bool) and isinstance(args[1], _Const):
            temperature: float | None = float(args[0])
        else:
            known = {c.temperature for c in consts if c.temperature is not None}
            temperature = known.pop() if len(known) == 1 else None
        batched = any(c.batched for c in consts) or self._batch_derived(node)
        return _Const(tuple(int(v) for v in value.shape), batched, temperature)

    def _batch_derived(self, node: fx.Node) -> bool:
        """Whether a size this node is made from is the batch's (x.shape[0], x.size(0)), through shape arithmetic
        (not through constants, which carry their own flag)."""
        todo, seen = list(node.all_input_nodes), set[fx.Node]()
        while todo and len(seen) < 256:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if isinstance(self.vals.get(n), (_Const, _Projected, _Tensor, _Param)):
                continue
            if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2 and n.args[1] == 0 \
                    and isinstance(n.args[0], fx.Node):
                src = n.args[0]
                if (src.op == "call_function" and src.target is getattr and src.args[1:] == ("shape",)) or (
                        src.op == "call_method" and src.target == "size" and len(src.args) == 1):
                    return True
            if n.op == "call_method" and n.target == "size" and n.args[1:2] == (0,):
                return True
            todo.extend(n.all_input_nodes)
        return False

    def projection(self, node: fx.Node, m: nn.Module, args: list[Any]) -> _Projected:
        """A 1 x 1 conv (bias, no groups) of a constant laid out as 1 x 2h x H x W: a position encoding's learned
        projection."""
        const = args[0]
        if not (len(args) == 1 and not node.kwargs and type(m) is nn.Conv2d and m.kernel_size == (1, 1)
                and m.stride == (1, 1) and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
                and m.bias is not None and m.in_channels % 2 == 0 and len(const.shape) == 4
                and const.shape[:2] == (1, m.in_channels)):
            raise Unmapped(_CONSTANT)
        return _Projected(str(node.target), m.in_channels // 2, m.out_channels, const.shape[2:], "grid",
                          not const.batched, const.temperature)

    def projected_view(self, op: str, args: list[Any], kwargs: dict[str, Any], p: _Projected,
                       shape: Shape) -> _Projected:
        """A view of a projected constant on its way to the tokens: repeated over the batch (one sample here),
        flattened to 1 x C x N, the channels moved last."""
        n = math.prod(p.grid)
        before = {"grid": (1, p.channels, *p.grid), "flat": (1, p.channels, n), "tokens": (1, n, p.channels)}
        if op in _CASTS and shape == before[p.layout]:
            return p
        if op == "repeat" and shape == before[p.layout]:
            return p  # (the batch's copies, of one sample here: the same values)
        if op in ("reshape", "view", "flatten") and p.layout == "grid" and shape == before["flat"]:
            return p._replace(layout="flat")
        if op in ("permute", "transpose") and p.layout == "flat" and shape == before["tokens"]:
            rest: list[Any] = list(args[1:]) or list(kwargs.get("dims", ()))
            if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
                rest = list(rest[0])
            dims = [int(d) % 3 for d in rest if isinstance(d, int)]
            if (op == "permute" and dims == [0, 2, 1]) or (op == "transpose" and sorted(dims) == [1, 2]):
                return p._replace(layout="tokens")
        raise Unmapped(_CONSTANT)

    def fourier(self, node: fx.Node, x: _Tensor, p: _Projected) -> _Tensor:
        """Tokens + a projected constant laid out as the tokens: fourier_pos_embed on their grid."""
        if p.layout != "tokens" or not isinstance(x.shape, Tokens) or x.channels_last \
                or tuple(x.shape.grid) != tuple(p.grid) or tuple(x.shape) != (math.prod(p.grid), p.channels):
            raise Unmapped(_CONSTANT)
        args: dict[str, Any] = {"hidden_dim": p.hidden}
        if p.temperature is not None and p.temperature != 10000.0:
            args["temperature"] = p.temperature
        if p.once:
            args["once"] = True
        params = [_Param((f"{p.conv}.{name}",), tuple(t.shape))
                  for name, t in self.root.get_submodule(p.conv).named_parameters(recurse=False)]
        self.consume(node, params, "fourier_pos_embed", args, x)
        return self.emit(node, "pos", "fourier_pos_embed", None, args, [x], fixed=False)

    @staticmethod
    def _scaled(values: Sequence[Any]) -> list[_Scaled]:
        return [v for v in values if isinstance(v, _Scaled)]

    def on_parameters(self, node: fx.Node, target: Any, method: str | None, args: list[Any],
                      kwargs: dict[str, Any], params: list[_Param], shape: Shape) -> Any:
        """An op on parameters alone. A view or cast is still the parameters. Weight standardisation, recognised by
        what it computes (timm's StdConv2d, ScaledStdConv2d and their "same" forms, or any module written so):
        F.batch_norm with batch statistics over a weight viewed as 1 x filters x fan-in, optionally with a
        parameter times a constant as its weight (the gain), is a standardised weight, which a convolution then
        reads as std_conv. Other arithmetic on parameters is refused: its cost would be left out."""
        values = [*args, *kwargs.values()]
        scaled = self._scaled(values)
        view = method in mapping.PARAM_VIEWS or target in mapping.PARAM_VIEW_FUNCTIONS
        first = values[0] if values else None
        if view and (isinstance(first, _Scaled) or isinstance(first, _Param) and first.standardized) and (
                len(params) + len(scaled) == 1 or method in ("reshape_as", "view_as", "expand_as")):
            return first._replace(shape=shape)  # a standardised weight or a scaled gain, viewed (as another's shape)
        if view and not scaled and not any(p.standardized for p in params):
            return _Param(tuple(dict.fromkeys(s for p in params for s in p.sources)), shape)
        multiply = target in (operator.mul, torch.mul) or method in ("mul", "__mul__", "__rmul__")
        if multiply and len(params) == 1 and not scaled and not params[0].standardized and len(values) == 2:
            factor = values[1] if values[0] is params[0] else values[0]
            if isinstance(factor, (int, float)) and not isinstance(factor, bool):
                return _Scaled(params[0], float(factor), shape)
        if target is F.batch_norm:
            standardized = self.standardized(args, kwargs, shape)
            if standardized is not None:
                return standardized
        raise Unmapped("arithmetic on parameters at forward time (other than weight standardisation) has no "
                       "archcalc kind; its cost would be left out")

    def standardized(self, args: list[Any], kwargs: dict[str, Any], shape: Shape) -> _Param | None:
        names, _ = mapping.FUNCTIONS[F.batch_norm]
        bound = mapping.bind(names, args, kwargs)
        w, gain = bound.get("x"), bound.get("weight")
        if not (isinstance(w, _Param) and len(w.sources) == 1 and not w.standardized and len(w.shape) == 3
                and w.shape[0] == 1 and w.sources[0] in self.parameters):
            return None
        filters, fan_in = w.shape[1], w.shape[2]
        if bound.get("running_mean") is not None or bound.get("running_var") is not None \
                or bound.get("bias") is not None or not bound.get("training"):
            return None
        if isinstance(gain, _Param) and not gain.standardized:  # a gain without a factor: gamma is sqrt(fan-in)
            gain = _Scaled(gain, 1.0, gain.shape)
        if gain is not None and not (isinstance(gain, _Scaled) and gain.shape == (filters,)
                                     and len(gain.param.sources) == 1
                                     and math.prod(gain.param.shape) == filters):
            return None
        gamma = 1.0 if gain is None else float(f"{gain.factor * fan_in ** 0.5:.12g}")  # factor = gamma / sqrt(fan-in)
        sources = w.sources + (gain.param.sources if gain is not None else ())
        return _Param(sources, shape, (("eps", float(bound.get("eps", 1e-5))), ("gain", gain is not None),
                                       ("gamma", gamma)))

    def padded(self, node: fx.Node, bound: dict[str, Any], x: _Tensor) -> _Padded | None:
        """F.pad that the op reading it takes into its own: reflection or zeros read only by a conv with a fixed
        filter (a blur pool), -inf read only by a max pool. None for any other pad (mapped as F.pad is)."""
        mode, value = bound.get("mode", "constant"), bound.get("value")
        readers = [u for u in node.users if not (  # (reads of its shape, x.shape[1], do not count)
            (u.op == "call_function" and u.target is getattr)
            or (u.op == "call_method" and u.target in ("size", "dim")))]
        if x.channels_last or len(readers) != 1 or not isinstance(bound.get("pad"), (list, tuple)):
            return None
        user = readers[0]
        if mode == "reflect" or (mode == "constant" and not value):
            kind = "reflect" if mode == "reflect" else "zeros"
            weight = user.args[1] if len(user.args) > 1 else user.kwargs.get("weight")
            while isinstance(weight, fx.Node) and weight.op == "call_method" and weight.args \
                    and str(weight.target) in mapping.PARAM_VIEWS:  # self.filt.expand(...): still the buffer
                weight = weight.args[0]
            if isinstance(weight, fx.Node) and weight.op == "get_attr":  # (read after the pad: not converted yet)
                weight = _Param((str(weight.target),), tuple(self.values[weight].shape))
            if not (user.op == "call_function" and user.target in mapping.CONV_2D and user.args[0] is node
                    and self._fixed_filter(self.arg(weight))):
                return None
        elif mode == "constant" and value == -math.inf:
            kind = "-inf"
            if not (user.op == "call_function" and user.target in mapping.MAX_POOL and user.args[0] is node):
                return None
        else:
            return None
        flat = [int(p) for p in bound["pad"]]
        pairs = tuple(reversed([(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]))
        rank = len(x.shape) - 1
        if len(pairs) > rank or any(p < 0 for pair in pairs for p in pair):
            return None
        return _Padded(x, ((0, 0),) * (rank - len(pairs)) + pairs, kind)

    def _fixed_filter(self, w: Any) -> bool:
        """A conv weight that is a buffer (or made from buffers alone): a fixed filter, not a learned one."""
        return isinstance(w, _Param) and not any(s in self.parameters for s in w.sources)

    @staticmethod
    def _pads_arg(pads: tuple[tuple[int, int], ...]) -> Any:
        if all(b == a for b, a in pads):
            return pads[0][0] if len({b for b, _ in pads}) == 1 else [b for b, _ in pads]
        return [list(p) for p in pads]

    def blur_pool(self, node: fx.Node, bound: dict[str, Any], x: Any) -> _Tensor:
        """A depthwise conv whose filter is a buffer (timm's BlurPool2d, after its reflect or zero pad): blur_pool.
        Its counts (no parameters, C*prod(F) buffers, a depthwise conv's MACs) do not depend on the filter's
        values."""
        source, pads, mode = (x.source, x.pads, x.mode) if isinstance(x, _Padded) else (x, None, "zeros")
        w, groups = bound.get("weight"), bound.get("groups", 1)
        if not isinstance(source, _Tensor) or source.channels_last or len(source.shape) != 3:
            raise Unmapped("a conv with a fixed filter (a buffer) on other than a C x H x W tensor of the network")
        if not isinstance(w, _Param) or not self._fixed_filter(w):
            raise Unmapped("a conv of a padding folded into it whose filter is a parameter: pad and conv are "
                           "mapped together only for a fixed filter (a blur pool)")
        channels = source.shape[0]
        if w.shape[:2] != (channels, 1) or groups != channels or bound.get("bias") is not None:
            raise Unmapped(f"a conv whose filter ({'x'.join(map(str, w.shape))}) is a buffer, not depthwise over "
                           f"the {channels} channels without a bias: a fixed filter archcalc has no kind for")
        if any(int(d) != 1 for d in _as_tuple(bound.get("dilation", 1), 2)):
            raise Unmapped("a dilated conv with a fixed filter has no archcalc kind")
        stored = sum(self.buffers[s].numel() for s in w.sources if s in self.buffers)
        if stored != channels * math.prod(w.shape[2:]):  # (a filter of one channel expanded: fewer buffer values)
            raise Unmapped(f"a depthwise conv whose fixed filter is {stored:,} buffer values, not one filter per "
                           f"channel ({channels * math.prod(w.shape[2:]):,}) as archcalc's blur_pool counts")
        own = bound.get("padding", 0)
        own_pads = None if isinstance(own, str) else _as_tuple(own, 2)
        if own_pads is None or (pads is not None and any(own_pads)):
            raise Unmapped(f"a conv with a fixed filter and padding {own!r}" + (" after an F.pad" if pads else ""))
        if pads is None:
            pads = tuple((p, p) for p in own_pads)
        args = {"kernel_size": _one(tuple(int(k) for k in w.shape[2:])),
                "stride": _one(_as_tuple(bound.get("stride", 1), 2)), "padding": self._pads_arg(pads),
                "padding_mode": mode}
        self.consume(node, [w], "blur_pool", args, source)
        return self.emit(node, "blur_pool", "blur_pool", None, args, [source], fixed=False)

    def padded_max_pool(self, node: fx.Node, rule: Any, bound: dict[str, Any], x: _Padded) -> _Tensor:
        """A -inf padding, then a max pool: a max pool with that padding; "same" where the padding is TensorFlow's
        "same" at this size (timm's MaxPool2dSame, NASNet's), so the spec keeps it at a new input."""
        mapped = rule({**bound, "x": x.source}, x.source.shape)
        args = dict(mapped.args)
        kind: Any = REGISTRY["maxpool"]
        if kind.geometry(args, x.source.shape)[3] != tuple((0, 0) for _ in x.pads) or args.get("ceil_mode"):
            raise Unmapped("a max pool with padding (or ceil_mode) of its own after a -inf F.pad")
        k, s, d, _ = kind.geometry(args, x.source.shape)
        keff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
        same = resolve_padding("same", x.source.shape[1:], keff, s)
        args["padding"] = "same" if tuple(tuple(p) for p in same) == x.pads else self._pads_arg(x.pads)
        return self.emit(node, "maxpool", "maxpool", None, args, [x.source], fixed=False)

    def channels_last_mean(self, node: fx.Node, rule: Any, bound: dict[str, Any], x: _Tensor) -> _Tensor:
        """The mean over the spatial axes of a channels-last view (dims 1..rank-2: MambaOut's head) is the mean; with
        keepdim it stays a channels-last view."""
        rank = len(x.shape) + 1
        dims = bound.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        first = {**{i: i + 1 for i in range(1, rank - 1)}, rank - 1: 1}  # a channels-last axis -> channels-first
        mapped = rule({**bound, "dim": tuple(first.get(d % rank, 0) for d in dims)}, x.shape)
        keep = mapped.args["keepdim"]
        out = (x.shape[0], *(1,) * (rank - 2)) if keep else (x.shape[0],)
        return self.emit(node, mapped.kind, mapped.kind, None, mapped.args, [x], fixed=False, channels_last=keep,
                         shape=out if keep else None)

    def resize(self, node: fx.Node, mapped: Mapped, x: _Tensor) -> _Tensor:
        """A pad or crop whose sizes were computed from tensors' sizes: `to:` the tensor it takes the size of; from
        the input's own size, it may be a conv's "same" padding (see same_padding); otherwise the numbers of this
        input, with a warning."""
        spatial = tuple(int(v) for v in self.values[node].shape[2:])
        sources = self.size_sources(node)
        if sources and not x.channels_last:
            match = [t for t in sources if t.id != x.id and t.shape[1:] == spatial and not t.channels_last]
            pads = None if mapped.kind == "crop" else mapped.args["padding"]
            centred = (mapped.args.get("start") is None if mapped.kind == "crop"
                       else self._centred(pads, x.shape[1:], spatial))
            if match and centred:
                return self.emit(node, mapped.kind, mapped.kind, None, {"to": SizeOf(match[0].id)}, [x], False)
            out = self.layer(node, mapped, x, mapped.kind, fixed=False)
            if mapped.kind == "zeropad" and any(t.id == x.id for t in sources):
                self.same[out.id] = (x, node)
            else:
                self.warnings.append(f"{_where(node, _op_name(node, self.root))}: a size computed from the tensors' "
                                     "sizes is written as this input's numbers")
            return out
        return self.layer(node, mapped, x, mapped.kind, fixed=False)

    @staticmethod
    def _centred(pads: Any, before: Shape, after: Shape) -> bool:
        rank = len(before)
        pairs = resolve_padding(pads, before, (1,) * rank, (1,) * rank)
        return all(b == (t - w) // 2 for (b, _), w, t in zip(pairs, before, after))

    def same_padding(self, mapped: Mapped, x: _Tensor) -> _Tensor | None:
        """A zero padding computed from the input's size, then a conv without padding: TensorFlow's "same" (timm's
        Conv2dSame) when the pads are the ones "same" gives at this size, so the spec keeps it at a new input."""
        source, pad_node = self.same[x.id]
        prev = self.ops[-1] if self.ops else None
        if prev is None or prev.output != x.id or len(pad_node.users) != 1:
            return None
        args = dict(mapped.args)
        kind: Any = REGISTRY[mapped.kind]
        full = {arg.name: args.get(arg.name, arg.default) for arg in kind.args}
        k, stride, d, pads = kind.geometry(full, source.shape)
        keff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
        if resolve_padding("same", source.shape[1:], keff, stride) != tuple(
                tuple(p) for p in resolve_padding(prev.args["padding"], source.shape[1:], (1,) * len(k),
                                                  (1,) * len(k))):
            return None
        self.ops.pop()  # the pad becomes the conv's padding
        self.shapes.pop()
        pad_node_value = self.current  # (the conv's node)
        args["padding"] = "same"
        return self.emit(pad_node_value, mapped.kind, mapped.kind, None, args, [source], fixed=False)

    def size_sources(self, node: fx.Node) -> list[_Tensor]:
        """The tensors whose sizes the op's arguments (beyond its input) were computed from (x.size(2) - y.size(2))."""
        first = node.args[0] if node.args else None
        todo = [n for n in node.all_input_nodes if n is not first]
        seen: set[fx.Node] = set()
        found: dict[int, _Tensor] = {}
        while todo and len(seen) < 64:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            value = self.vals.get(n)
            if isinstance(value, _Tensor):
                found.setdefault(value.id, value)
                continue
            todo.extend(n.all_input_nodes)
        return list(found.values())

    @classmethod
    def _params(cls, values: Sequence[Any]) -> list[_Param]:
        found: list[_Param] = []
        for v in values:
            if isinstance(v, _Param):
                found.append(v)
            elif isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
                found += cls._params(v)
        return found

    def consume(self, node: fx.Node, params: Sequence[_Param], kind: str, args: dict[str, Any], x: _Tensor) -> None:
        """The op of `kind` counts the parameters it reads: exactly the ones its kind counts, each once."""
        sources = list(dict.fromkeys(s for p in params for s in p.sources))
        for name in sources:
            if name in self.consumed:
                raise Unmapped(f"it reads {name}, which an earlier op read too (a shared parameter would be counted "
                               "twice)")
        got = sum(self.parameters[name].numel() for name in sources if name in self.parameters)
        spec = REGISTRY[kind]
        full = {arg.name: args.get(arg.name, arg.default) for arg in spec.args}
        value = self.values[node]
        try:
            want = spec.cost(full, x.shape, tuple(int(s) for s in value.shape[1:])).params
        except Exception:  # a shape the kind does not take: the op's own mapping reports it
            want = got
        if got != want:
            raise Unmapped(f"its parameters ({', '.join(sources)}: {got:,} values) are not the {want:,} that "
                           f"archcalc's {kind} counts")
        self.consumed.update(sources)

    @staticmethod
    def _has_tensor(a: Any) -> bool:
        if isinstance(a, (_Tensor, _Chunks, _Padded, _Blocks)):
            return True
        if isinstance(a, (list, tuple)) and not isinstance(a, _Padded):
            return any(isinstance(v, (_Tensor, _Chunks)) for v in a)
        return False

    def shift(self, node: fx.Node, pads: tuple[tuple[int, int], ...], x: _Tensor, name: str,
              fixed: bool) -> _Tensor:
        """A pad with negative sizes that is not a centre crop (NASNet's ZeroPad2d((-1, 1, -1, 1)), a shift by
        one): the zero padding of its positive sizes, then a crop from the first kept index, to the input's size
        where it keeps it (so the spec keeps it at another input)."""
        if x.channels_last:
            raise Unmapped("a pad with negative sizes on a channels-last view")
        padded = tuple((max(b, 0), max(a, 0)) for b, a in pads)
        y = x
        if any(p for pair in padded for p in pair):
            y = self.emit(node, name, "zeropad", None, {"padding": [list(p) for p in padded]}, [x], fixed,
                          shape=(x.shape[0], *(w + b + a for w, (b, a) in zip(x.shape[1:], padded))))
        final = tuple(w + b + a for w, (b, a) in zip(x.shape[1:], pads))
        args: dict[str, Any] = {"to": SizeOf(x.id)} if final == x.shape[1:] else {"size": list(final)}
        args["start"] = [max(-b, 0) for b, _ in pads]
        return self.emit(node, f"{name}_crop" if y is not x else name, "crop", None, args, [y], fixed)

    def layer(self, node: fx.Node, mapped: Mapped, x: _Tensor, name: str, fixed: bool) -> _Tensor:
        if mapped.kind == "zeropad" and isinstance(mapped.args.get("padding"), tuple) and any(
                isinstance(p, tuple) and min(p) < 0 for p in mapped.args["padding"]):
            return self.shift(node, mapped.args["padding"], x, name, fixed)
        kind, args = mapped
        trainable = True
        if node.op == "call_module":
            params = list(self.root.get_submodule(str(node.target)).parameters())
            trainable = not params or any(p.requires_grad for p in params)
        if x.channels_last:
            kind, args = self.channels_last(node, mapped, x)
            return self.emit(node, name, kind, None, args, [x], fixed, channels_last=True,
                             shape=(args["out_channels"], *x.shape[1:]) if kind == "conv" else x.shape,
                             trainable=trainable)
        return self.emit(node, name, kind, None, args, [x], fixed, trainable=trainable)

    def channels_last(self, node: fx.Node, mapped: Mapped, x: _Tensor) -> tuple[str, dict[str, Any]]:
        """A channel-wise layer on a channels-last view: LayerNorm over C is channel_layernorm, Linear over C a 1x1
        conv; element-wise layers are layout-free."""
        kind, args = mapped
        if REGISTRY[kind].elementwise:
            return kind, args
        if kind == "layernorm" and args["normalized_shape"] == x.shape[0]:
            return "channel_layernorm", {"eps": args["eps"], "elementwise_affine": args["elementwise_affine"],
                                         "bias": args.get("bias", True)}
        if kind == "linear" and node.op == "call_module":
            m = self.root.get_submodule(str(node.target))
            if m.in_features == x.shape[0]:
                return "conv", {"out_channels": args["out_features"], "kernel_size": 1, "bias": args["bias"]}
        raise Unmapped(f"{kind} on a channels-last view (after a permute) has no archcalc kind")

    def module(self, node: fx.Node) -> Any:
        path = str(node.target)
        m = self.root.get_submodule(path)
        self.called.add(path)
        args = [self.arg(a) for a in node.args]
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(node, m, args, {k: self.arg(v) for k, v in node.kwargs.items()})
        if mapping.qualname(type(m)) in mapping.MVIT:
            return self.mvit(node, m, args)
        if mapping.qualname(type(m)) in mapping.MAXVIT:
            return self.maxvit(node, m, args)
        if mapping.qualname(type(m)) == tinyvit.ATTENTION:
            return tinyvit.attention(self, node, m, args)
        if mapping.qualname(type(m)) in mqa.CLASSES:
            return mqa.convert(self, node, m, args)
        if mapping.qualname(type(m)) in mapping.EFFV2:  # EfficientFormer-V2's attention (importer/effv2.py)
            return effv2.attention(self, node, m, args[0] if len(args) == 1 and isinstance(args[0], _Tensor) else None)
        if args and isinstance(args[0], _Const):
            return self.projection(node, m, args)
        if self._constants([*args, *node.kwargs.values()]):
            raise Unmapped(_CONSTANT)
        if len(args) != 1 or node.kwargs or not isinstance(args[0], _Tensor):
            raise Unmapped("a module call with other than one tensor argument")
        x = args[0]
        if mapping.qualname(type(m)) in mapping.PERMUTES:
            dims: Any = m.dims
            return self.permute(node, x, tuple(dims))
        rule = mapping.module_rule(m)
        if rule is None:
            raise Unmapped(f"archcalc has no kind for {mapping.qualname(type(m))}")
        if x.channels_last and isinstance(m, nn.Linear) and type(m) is nn.Linear:
            mapped = Mapped("linear", {"out_features": m.out_features, "bias": m.bias is not None})
        else:
            mapped = rule(m, (*x.shape[1:], x.shape[0]) if x.channels_last else x.shape)
        return self.layer(node, mapped, x, path.rsplit(".", 1)[-1], fixed=True)

    def attention(self, node: fx.Node, m: nn.MultiheadAttention, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """nn.MultiheadAttention called as self-attention, m(x, x, x, need_weights=False): self_attention, its
        output the first of the pair the module returns (the second, the weights, is None)."""
        q = args[0] if args else kwargs.get("query")
        k = args[1] if len(args) > 1 else kwargs.get("key")
        v = args[2] if len(args) > 2 else kwargs.get("value")
        extra = {key: value for key, value in kwargs.items() if key not in ("query", "key", "value")}
        if not (isinstance(q, _Tensor) and q == k == v):
            raise Unmapped("nn.MultiheadAttention with different query, key and value: archcalc's self_attention "
                           "attends a sequence to itself")
        if len(args) > 3 or extra.pop("need_weights", True) is not False or any(
                value is not None and value is not False for value in extra.values()):
            raise Unmapped("nn.MultiheadAttention with need_weights, a mask or another argument: archcalc's "
                           "self_attention is m(x, x, x, need_weights=False)")
        if not isinstance(q.shape, Tokens):
            raise Unmapped("nn.MultiheadAttention on a tensor that is not a token sequence (N x C)")
        if not m.batch_first or m.bias_k is not None or not m._qkv_same_embed_dim or m.dropout:
            raise Unmapped("nn.MultiheadAttention without batch_first, with add_bias_kv, other kdim/vdim or "
                           "attention dropout: not archcalc's self_attention")
        mapped = Mapped("self_attention", {"num_heads": int(m.num_heads), "bias": m.in_proj_bias is not None})
        out = self.emit(node, str(node.target).rsplit(".", 1)[-1], "self_attention", None, mapped.args, [q],
                        fixed=True, shape=q.shape)
        return (out, None)

    def mvit(self, node: fx.Node, m: nn.Module, args: list[Any]) -> Any:
        """torchvision's video MViT modules (mapping.MVIT): PositionalEncoding(x) is class_token and, with its
        tables (MViTv1), separable_pos_embed; MultiscaleAttention(x, thw) and Pool(x, thw) return the tokens and
        their new grid's size: pooled_attention and token_maxpool, on the tokens' own grid."""
        x = args[0] if args else None
        if not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or node.kwargs:
            raise Unmapped("an MViT module on a tensor that is not a token sequence (N x C)")
        n, c = x.shape
        grid = x.shape.grid
        trainable = not list(m.parameters()) or any(p.requires_grad for p in m.parameters())
        if type(m).__name__ == "PositionalEncoding":
            tables: Any = m
            if len(args) != 1 or tuple(tables.class_token.shape) != (c,):
                raise Unmapped("an MViT PositionalEncoding called with other than the tokens, or of other channels")
            out = self.emit(node, "class_token", "class_token", None, {}, [x], True, shape=Tokens(n + 1, c, grid),
                            trainable=trainable)
            if tables.spatial_pos is not None:
                if len(grid) != 3 or n != math.prod(grid) or tuple(tables.spatial_pos.shape) != (
                        grid[1] * grid[2], c) or tuple(tables.temporal_pos.shape) != (grid[0], c):
                    raise Unmapped("an MViT PositionalEncoding whose tables do not fit the tokens' T x H x W grid")
                out = self.emit(node, "pos", "separable_pos_embed", None, {}, [out], True, shape=out.shape,
                                trainable=trainable)
            return out
        if len(args) != 2 or not isinstance(args[1], (tuple, list)) or tuple(args[1]) != tuple(grid):
            raise Unmapped("an MViT module called with other than the tokens and their grid's size")
        rule = mapping.module_rule(m)
        assert rule is not None
        mapped = rule(m, x.shape)
        kind = REGISTRY[mapped.kind]
        full = {a.name: mapped.args.get(a.name, a.default) for a in kind.args}
        shape: Any
        try:
            shape = kind.output(full, x.shape, lambda message: None)
            params = kind.cost(full, x.shape, shape).params
        except LayerError as exc:
            raise Unmapped(f"archcalc's {mapped.kind} refuses it: {exc}") from None
        value = self.values[node][0]
        if (1, *shape) != tuple(int(v) for v in value.shape) or tuple(self.values[node][1]) != shape.grid:
            raise Unmapped(f"its output ({list(value.shape[1:])}) is not the {list(shape)} of archcalc's "
                           f"{mapped.kind}")
        if sum(p.numel() for p in m.parameters()) != params:
            raise Unmapped(f"its parameters are not the {params:,} of archcalc's {mapped.kind} (relative position "
                           "tables sized for another input are interpolated at run time)")
        out = self.emit(node, str(node.target).rsplit(".", 1)[-1], mapped.kind, None, mapped.args, [x], True,
                        shape=shape, trainable=trainable)
        return (out, tuple(shape.grid))

    def maxvit(self, node: fx.Node, m: Any, args: list[Any]) -> Any:
        """torchvision's MaxViT (maxvit.py), whose PartitionAttentionLayer runs partition_op(x, p), partition_swap
        (SwapAxes(-2, -3) for the grid attention, else nn.Identity), x + attn(norm(x)), x + mlp(norm(x)),
        departition_swap and departition_op(x, p, H / p, W / p). The partition is `to_tokens` (the tokens on the
        grid, in the grid's order: the norms and the MLP act per token) and the departition `to_grid`; the
        attention (RelativePositionalMultiHeadAttention) is window_attention with the partition in force: groups
        of p x p contiguous tokens (window), or, with the axes swapped, of the size x size tokens H / size apart
        (grid, p = H / size). Its products are einsums (`einsum: true`)."""
        name = mapping.qualname(type(m)).rsplit(".", 1)[-1]
        x = args[0] if args else None
        if name == "AttentionCl":
            return self.timm_attention(node, m, args)
        if name == "Attention2d":  # timm's CoAtNet: attention over the whole channels-first grid
            return coatnet.attention2d(self, node, m, x if len(args) == 1 and isinstance(x, _Tensor) else None)
        if not isinstance(x, _Tensor) or x.channels_last or node.kwargs:
            raise Unmapped(f"a MaxViT {name} on something that is not a tensor of the network")
        if name == "WindowPartition":
            if isinstance(x.shape, Tokens) or len(x.shape) != 3 or len(args) != 2 or not isinstance(args[1], int) \
                    or self.partition is not None or any(s % args[1] for s in x.shape[1:]):
                raise Unmapped("a MaxViT WindowPartition of other than a C x H x W grid whose sides p divides, or "
                               "inside another partition")
            grid = tuple(x.shape[1:])
            self.partition = (args[1], False, grid)
            return self.emit(node, "partition_op", "to_tokens", None, {}, [x], fixed=False,
                             shape=Tokens(math.prod(grid), x.shape[0], grid))
        if self.partition is None or not isinstance(x.shape, Tokens) or x.shape.grid != self.partition[2]:
            raise Unmapped(f"a MaxViT {name} outside a WindowPartition's tokens")
        p, swapped, grid = self.partition
        if name == "SwapAxes":
            if len(args) != 1 or {int(m.a) % 4, int(m.b) % 4} != {1, 2}:
                raise Unmapped("a MaxViT SwapAxes of other than the groups and tokens axes (-2, -3)")
            self.partition = (p, not swapped, grid)
            return x
        if name == "WindowDepartition":
            if swapped or len(args) != 4 or tuple(args[1:]) != (p, grid[0] // p, grid[1] // p):
                raise Unmapped("a MaxViT WindowDepartition that does not undo its WindowPartition")
            self.partition = None
            return self.emit(node, "departition_op", "to_grid", None, {"size": grid}, [x], fixed=False,
                             shape=(x.shape[1], *grid))
        # RelativePositionalMultiHeadAttention
        c, heads, size = x.shape[1], int(m.n_heads), int(m.size)
        groups = (p, p) if swapped else (grid[0] // p, grid[1] // p)  # the groups, and the tokens in one
        per = (grid[0] // p, grid[1] // p) if swapped else (p, p)
        table = (2 * size - 1) ** 2
        qkv, merge = m.to_qkv, m.merge
        if (len(args) != 1 or per != (size, size) or int(m.max_seq_len) != size * size or heads * int(m.head_dim) != c
                or not isinstance(qkv, nn.Linear) or not isinstance(merge, nn.Linear)
                or tuple(qkv.weight.shape) != (3 * c, c) or qkv.bias is None
                or tuple(merge.weight.shape) != (c, c) or merge.bias is None
                or tuple(m.relative_position_bias_table.shape) != (table, heads)
                or m.relative_position_index.numel() != size ** 4):
            raise Unmapped(f"a MaxViT {name} whose qkv/merge weights, table, index or groups ({groups[0]} x "
                           f"{groups[1]} of {per[0]} x {per[1]} tokens) are not window_attention's on {c} channels, "
                           f"{heads} heads and a {size} x {size} window")
        args_ = {"num_heads": heads, "window_size": size, **({"partition": "grid"} if swapped else {}),
                 "einsum": True}
        trainable = any(t.requires_grad for t in m.parameters())
        return self.emit(node, str(node.target).rsplit(".", 1)[-1], "window_attention", None, args_, [x], True,
                         shape=x.shape, trainable=trainable)

    def timm_partition(self, node: fx.Node, name: str, args: list[Any]) -> Any:
        """timm's window_partition / grid_partition (x, size) of a B x H x W x C token grid and their reverses
        (windows, size, (H, W)): the tokens pass as they are; the AttentionCl between them is window_attention with
        that partition (`timm_attention`)."""
        x = args[0] if args else None
        kind = "window" if name.startswith("window") else "grid"
        if not isinstance(x, _Tensor) or not isinstance(x.shape, Tokens) or len(x.shape.grid) != 2 or node.kwargs \
                or len(args) != (2 if name.endswith("partition") else 3):
            raise Unmapped(f"timm's {name} of other than a token grid (B x H x W x C) and its sizes")
        size = tuple(int(s) for s in args[1])
        grid = tuple(x.shape.grid)
        if name.endswith("partition"):
            if self.timm_open is not None or len(size) != 2 or any(g % s for g, s in zip(grid, size)):
                raise Unmapped(f"timm's {name} by {list(size)} of the grid {list(grid)}: not a multiple, or inside "
                               "another partition")
            self.timm_open = (kind, (size[0], size[1]), x.id, False)
            return x
        if self.timm_open != (kind, size, x.id, True) or tuple(int(s) for s in args[2]) != grid:
            raise Unmapped(f"timm's {name} of other than the output of an AttentionCl on its partition")
        self.timm_open = None
        return x

    def timm_attention(self, node: fx.Node, m: Any, args: list[Any]) -> _Tensor:
        """timm's AttentionCl on the groups of a window_partition or grid_partition (maxxvit.py): window_attention
        with that partition, its qkv and proj linear layers (C -> 3C, C -> C, biases alike), and the relative
        position bias of its rel_pos module (RelPosBias: a (2w-1)^2 x heads table and an index buffer)."""
        x = args[0] if args else None
        if self.timm_open is None or not isinstance(x, _Tensor) or self.timm_open[2:] != (x.id, False) \
                or len(args) != 1 or node.kwargs:
            raise Unmapped("timm's AttentionCl on other than the groups of a window_partition or grid_partition")
        kind, size, _, _ = self.timm_open
        c, heads = x.shape[1], int(m.num_heads)
        qkv, proj, rel = m.qkv, m.proj, m.rel_pos
        bias = qkv.bias is not None
        d, f = qkv.out_features // 3, proj.out_features  # the attention's width, the output's (dim_out)
        if (heads * int(m.dim_head) != d or tuple(qkv.weight.shape) != (3 * d, c) or tuple(proj.weight.shape) != (f, d)
                or (proj.bias is not None) != bias or d not in (c, f)):
            raise Unmapped(f"timm's AttentionCl whose qkv/proj weights or biases are not window_attention's on {c} "
                           f"channels and {heads} heads (C -> 3D, D -> F, D = C or F)")
        if m.attn_drop.p or m.proj_drop.p:
            raise Unmapped("timm's AttentionCl with dropout: archcalc's window_attention has none")
        position = self.timm_position_bias(rel, heads, size)
        args_: dict[str, Any] = {"num_heads": heads, "window_size": size if size[0] != size[1] else size[0],
                                 "bias": bias, **({"partition": "grid"} if kind == "grid" else {}),
                                 **({"position_bias": position} if position != "table" else {}),
                                 **self.timm_mlp_hidden(rel), **({"out_features": f} if f != c else {}),
                                 **({"expand_first": True} if d != c else {})}
        trainable = any(t.requires_grad for t in m.parameters())
        out = self.emit(node, str(node.target).rsplit(".", 1)[-1], "window_attention", None, args_, [x], True,
                        shape=Tokens(x.shape[0], f, x.shape.grid),  # type: ignore[attr-defined]
                        trainable=trainable)
        self.timm_open = (kind, size, out.id, True)
        return out

    @staticmethod
    def timm_mlp_hidden(rel: Any) -> dict[str, int]:
        """window_attention's mlp_hidden for a RelPosMlp of another hidden width than 512 (timm's rel_pos_dim)."""
        hidden = int(rel.mlp.fc1.out_features) if type(rel).__name__ == "RelPosMlp" else 512
        return {"mlp_hidden": hidden} if hidden != 512 else {}

    @staticmethod
    def timm_position_bias(rel: Any, heads: int, size: tuple[int, int]) -> str:
        """window_attention's position_bias for timm's rel_pos module of an AttentionCl: RelPosBias (a table and an
        index), RelPosMlp in its 'cr' mode (Linear(2, hidden), ReLU, Linear(hidden, heads) on log coordinates; its
        Dropout(0.125) between is the identity at inference, as archcalc describes it), RelPosBiasTf (a heads x
        rows x columns table and one-hot lookups); each sized for the partition (none resized at run time)."""
        name = type(rel).__name__
        wh, ww = size
        table, rows, cols = (2 * wh - 1) * (2 * ww - 1), 2 * wh - 1, 2 * ww - 1
        why = f"timm's AttentionCl whose rel_pos ({name}) is not "
        if name in ("RelPosBias", "RelPosMlp") and (int(rel.prefix_tokens) or tuple(rel.window_size) != size
                                                    or rel.relative_position_index.numel() != (wh * ww) ** 2):
            raise Unmapped(why + f"sized for the {wh} x {ww} partition, without prefix tokens")
        if name == "RelPosBias":
            if tuple(rel.relative_position_bias_table.shape) != (table, heads):
                raise Unmapped(why + f"a {table} x {heads} table")
            return "table"
        if name == "RelPosMlp":
            mlp = rel.mlp
            fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
            if (rel.mode != "cr" or rel.bias_gain is not None or not isinstance(rel.bias_act, nn.Identity)
                    or not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear)
                    or not isinstance(mlp.act, nn.ReLU) or not isinstance(getattr(mlp, "norm", None), nn.Identity)
                    or fc1.in_features != 2 or fc1.bias is None
                    or tuple(fc2.weight.shape) != (heads, fc1.out_features) or fc2.bias is None
                    or tuple(rel.rel_coords_log.shape) != (rows, cols, 2)):
                raise Unmapped(why + "the 'cr' MLP Linear(2, hidden), ReLU, Linear(hidden, heads) on log coordinates "
                               "(window_attention's position_bias mlp)")
            return "mlp"
        if name == "RelPosBiasTf":
            if (tuple(rel.relative_position_bias_table.shape) != (heads, rows, cols)
                    or tuple(rel.height_lookup.shape) != (wh, wh, rows)
                    or tuple(rel.width_lookup.shape) != (ww, ww, cols) or tuple(rel.window_size) != size):
                raise Unmapped(why + "a heads x rows x columns table with its one-hot lookups (position_bias lookup)")
            return "lookup"
        raise Unmapped(why + "RelPosBias, RelPosMlp or RelPosBiasTf")

    def permute(self, node: fx.Node, x: Any, dims: tuple[int, ...]) -> _Tensor | _Blocks | _TokensT:
        if isinstance(x, _Flat):
            if tuple(d % 3 for d in dims) == (0, 2, 1):
                return self.emit(node, "to_tokens", "to_tokens", None, {}, [x.source], fixed=False)
            raise Unmapped(f"permute{list(dims)} of a grid flattened to C x N: archcalc follows the move of the "
                           "channels last (to tokens)")
        if not isinstance(x, _Tensor):
            raise Unmapped("a permute of something that is not a tensor of the network")
        if self.tokens_last:  # Swin: B x C x H x W <-> B x H x W x C, the grid's tokens
            grid = x.shape.grid if isinstance(x.shape, Tokens) else tuple(x.shape[1:])
            spatial = len(grid) + 2
            if isinstance(x.shape, Tokens) and dims == (0, spatial - 1, *range(1, spatial - 1)) \
                    and x.shape[0] == math.prod(grid):
                return self.emit(node, "to_grid", "to_grid", None, {"size": grid}, [x], fixed=False,
                                 shape=(x.shape[1], *grid))
            if not isinstance(x.shape, Tokens) and not x.channels_last and len(x.shape) > 1 \
                    and dims == (0, *range(2, spatial), 1):
                return self.emit(node, "to_tokens", "to_tokens", None, {}, [x], fixed=False,
                                 shape=Tokens(math.prod(grid), x.shape[0], grid))
        if isinstance(x.shape, Tokens) and not x.channels_last and tuple(d % 3 for d in dims) == (0, 2, 1) \
                and self._to_grid_next(node, [x, 1, 2]):
            return _TokensT(x)  # (XCiT's LPI: x.permute(0, 2, 1).reshape(B, C, H, W))
        rank = len(x.shape) + 1
        to_last = (0, *range(2, rank), 1)
        to_first = (0, rank - 1, *range(1, rank - 1))
        dims = tuple(d % rank for d in dims)
        if not x.channels_last and dims == to_last and rank > 2:
            return _Tensor(x.id, x.shape, True)
        if x.channels_last and dims == to_first:
            return _Tensor(x.id, x.shape, False)
        blocks = self.blocks(node, x, dims)
        if blocks is not None:
            return blocks
        raise Unmapped(f"permute{list(dims)}: archcalc follows only a move of the channels to the last axis and back")

    def binary(self, node: fx.Node, merge: str, args: list[Any], kwargs: dict[str, Any]) -> _Tensor:
        if len(args) != 2 or kwargs:
            raise Unmapped(f"{merge} with {len(args)} arguments{' and ' + ', '.join(kwargs) if kwargs else ''}")
        a, b = args
        if merge == "add" and isinstance(a, _Tensor) and isinstance(b, _Projected):
            return self.fourier(node, a, b)
        if merge == "add" and isinstance(b, _Tensor) and isinstance(a, _Projected):
            return self.fourier(node, b, a)
        if isinstance(a, (_Const, _Projected)) or isinstance(b, (_Const, _Projected)):
            raise Unmapped(_CONSTANT)
        number = (int, float)
        if isinstance(a, _Tensor) != isinstance(b, _Tensor) and any(
                isinstance(v, number) and not isinstance(v, bool) for v in (a, b)):  # arithmetic with a constant
            x, c = (a, b) if isinstance(a, _Tensor) else (b, a)
            op = "rsub" if merge == "sub" and x is b else ("div" if merge == "div" else merge)
            if merge == "div" and x is b:
                raise Unmapped("a constant divided by a tensor has no archcalc kind")
            return self.emit(node, "scalar", "scalar", None, {"op": op, "value": float(c)}, [x], fixed=False,
                             channels_last=x.channels_last, shape=x.shape if x.channels_last else None)
        if merge in ("add", "mul") and isinstance(a, _Param) != isinstance(b, _Param):
            # x + a parameter: a learned bias (a position embedding); x * a parameter: a learned scale
            x, p = (b, a) if isinstance(a, _Param) else (a, b)
            kind = "bias" if merge == "add" else "layer_scale"
            per = self.per(p, x) if isinstance(x, _Tensor) else None
            if per is None:
                raise Unmapped(f"a {'sum' if merge == 'add' else 'product'} with a parameter of shape {list(p.shape)}: "
                               "not one value per channel, per position, per element or for the tensor")
            if isinstance(x, _Tensor) and isinstance(x.shape, Tokens) and (merge == "mul" or per != "element"):
                self.consume(node, [p], kind, {"per": per}, x)
                return self.emit(node, kind, kind, None, {"per": per}, [x], fixed=False)
            if isinstance(x, _Tensor) and isinstance(x.shape, Tokens):
                if merge != "add" or per != "element":
                    raise Unmapped(f"a {'sum' if merge == 'add' else 'product'} of tokens with a parameter of shape "
                                   f"{list(p.shape)}: archcalc's pos_embed adds one value per token and channel")
                self.consume(node, [p], "pos_embed", {}, x)
                return self.emit(node, "pos_embed", "pos_embed", None, {}, [x], fixed=False)
            self.consume(node, [p], kind, {"per": per}, x)
            return self.emit(node, kind, kind, None, {"per": per}, [x], fixed=False, channels_last=x.channels_last,
                             shape=x.shape if x.channels_last else None)
        if not (isinstance(a, _Tensor) and isinstance(b, _Tensor)):
            raise Unmapped(f"{merge} with a constant or a parameter has no archcalc kind (merges combine tensors)")
        last = a.channels_last
        if a.channels_last != b.channels_last or (last and a.shape != b.shape):
            # (two channels-last views of one shape combine element by element, in either layout: MambaOut's gate)
            raise Unmapped(f"{merge} of channels-last views" if last == b.channels_last else
                           f"{merge} of a channels-last view and a channels-first tensor")
        if merge not in MERGES:  # (a division of two tensors: BAT's normalisation, a mean's sum / count)
            raise Unmapped(f"{merge} of two tensors has no archcalc merge (merges are {', '.join(MERGES)})")
        try:  # the merge's own shape rule (add: equal shapes; mul: broadcasting)
            MERGES[merge].output((a.shape, b.shape), ("the first operand", "the second"))
        except LayerError as exc:
            raise Unmapped(str(exc)) from None
        inputs = [a, b]
        # A chain (a + b) + c whose partial sum has no other reader is one add of three, as archcalc writes it.
        first = node.args[0]
        if isinstance(first, fx.Node) and len(first.users) == 1 and self.ops and self.ops[-1].output == a.id \
                and self.ops[-1].merge == merge and a.id == len(self.shapes) - 1 and self._fold(first):
            prev = self.ops.pop()
            self.shapes.pop()
            inputs = [_Tensor(t, self.shapes[t]) for t in prev.inputs] + [b]
        return self.emit(node, merge, None, merge, {}, inputs, fixed=False, channels_last=last,
                         shape=a.shape if last else None)

    def power(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any], square: bool) -> _Tensor:
        """x ** c with a constant c (x.square() is c = 2): the scalar kind's pow."""
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        c = 2 if square else (args[1] if len(args) > 1 else kwargs.get("exponent"))
        if not isinstance(x, _Tensor) or isinstance(c, bool) or not isinstance(c, (int, float)):
            raise Unmapped("a power other than a tensor of the network to a constant exponent has no archcalc kind")
        if len(args) > 2 or set(kwargs) - {"input", "self", "exponent"}:
            raise Unmapped("a power with other arguments than the exponent")
        return self.emit(node, "scalar", "scalar", None, {"op": "pow", "value": float(c)}, [x], fixed=False,
                         channels_last=x.channels_last, shape=x.shape if x.channels_last else None)

    @staticmethod
    def per(p: _Param, x: _Tensor) -> str | None:
        """What a parameter broadcast over x has one value per (bias's and layer_scale's `per`)."""
        if x.channels_last:  # a parameter over the last axis of a channels-last view: per channel
            shape = tuple(s for s in p.shape)
            while shape and shape[0] == 1 and len(shape) > 1:
                shape = shape[1:]
            return "channel" if shape == (x.shape[0],) else ("tensor" if all(s == 1 for s in shape) else None)
        return mapping.per_of(p.shape, x.shape)

    def _fold(self, first: fx.Node) -> bool:
        return (first.op == "call_function" and first.target in mapping.BINARY) or (
            first.op == "call_method" and first.target in mapping.FOLDABLE_METHODS)

    def cat(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> _Tensor:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if isinstance(tensors, (list, tuple)) and len(tensors) == 2 and isinstance(tensors[0], _Param) \
                and isinstance(tensors[1], _Tensor) and isinstance(tensors[1].shape, Tokens) and dim % 3 == 1 \
                and len(tensors[0].shape) == 3 and tensors[0].shape[2] == tensors[1].shape[1]:  # learned tokens first
            count = {"count": tensors[0].shape[1]} if tensors[0].shape[1] != 1 else {}
            self.consume(node, [tensors[0]], "class_token", count, tensors[1])
            return self.emit(node, "class_token", "class_token", None, count, [tensors[1]], fixed=False)
        if isinstance(tensors, (list, tuple)) and len(tensors) == 2 and isinstance(tensors[0], _MeanToken) \
                and tensors[0].source is tensors[1] and dim % 3 == 1:  # the mean of the tokens put first
            return self.emit(node, "class_token", "class_token", None, {"mean": True}, [tensors[1]], fixed=False)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, _Tensor) for t in tensors):
            raise Unmapped("torch.cat of something other than a list of the network's tensors")
        if (channels := coatnet.cat_channels(self, node, tensors, dim)) is not None:  # token grids' channels
            return channels
        if all(isinstance(t.shape, Tokens) and not t.channels_last for t in tensors) and dim % 3 == 1:
            if len(tensors) == 1:  # (torch.cat of one sequence: the same values; ViTamin-XL's prefix-free cat)
                return tensors[0]
            final = tensors[-1].shape  # sequences joined along the tokens (PiT: its class tokens, then the grid's)
            joined = Tokens(sum(t.shape[0] for t in tensors), final[1], final.grid)  # type: ignore[attr-defined]
            return self.emit(node, "concat", None, "concat", {}, list(tensors), fixed=False, shape=joined)
        rank = len(tensors[0].shape) + 1
        last = tensors[0].channels_last
        if any(t.channels_last != last for t in tensors):
            raise Unmapped("torch.cat of channels-last views and channels-first tensors")
        if dim % rank != (rank - 1 if last else 1):  # (the channels of a channels-last view are its last axis)
            raise Unmapped(f"torch.cat along dim {dim}: archcalc's concat joins channels (dim 1, or the last axis "
                           "of channels-last views)")
        if len(tensors) == 1:
            return tensors[0]
        shape = (sum(t.shape[0] for t in tensors), *tensors[0].shape[1:])
        return self.emit(node, "concat", None, "concat", {}, list(tensors), fixed=False, channels_last=last,
                         shape=shape if last else None)

    def stack(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> _Tensor:
        """torch.stack(xs, dim=1): the concat of the n tensors' channels, viewed as (n, C, ...) (SKNet's branches;
        the same copy torch makes)."""
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(
                isinstance(t, _Tensor) and not t.channels_last for t in tensors):
            raise Unmapped("torch.stack of something other than a list of the network's channels-first tensors")
        shape = tensors[0].shape
        if any(t.shape != shape for t in tensors) or dim % (len(shape) + 2) != 1:
            raise Unmapped(f"torch.stack along dim {dim}: archcalc stacks tensors of one shape along dim 1 (a concat "
                           "of their channels, viewed as (n, C, ...))")
        joined = self.emit(node, "concat", None, "concat", {}, list(tensors), fixed=False,
                           shape=(len(tensors) * shape[0], *shape[1:])) if len(tensors) > 1 else tensors[0]
        return self.emit(node, "reshape", "reshape", None, {"shape": [len(tensors), shape[0]], "keep": len(shape) - 1},
                         [joined], fixed=False)

    def reshape(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
                how: str) -> _Tensor | _Flat | tinyvit.Windows:
        x = args[0]
        if isinstance(x, _Blocks):
            return self.space_to_depth(node, x)
        if isinstance(x, _TokensT):  # (its one reader, checked by _to_grid_next: C x N viewed as C x H x W)
            return self.emit(node, "to_grid", "to_grid", None, {"size": list(self.values[node].shape[2:])},
                             [x.source], fixed=False)
        out = tuple(int(s) for s in self.values[node].shape[1:])
        if isinstance(x, _Tensor) and x.channels_last and len(x.shape) > 2 and not isinstance(x.shape, Tokens) \
                and out == (self._numel(x.shape[1:]), x.shape[0]):  # B x H x W x C -> B x N x C (PVT-v2)
            return self.emit(node, "to_tokens", "to_tokens", None, {}, [x], fixed=False,
                             shape=Tokens(self._numel(x.shape[1:]), x.shape[0], tuple(x.shape[1:])))
        if isinstance(x, _Tensor) and not x.channels_last and isinstance(x.shape, Tokens) and len(out) > 2 \
                and out[-1] == x.shape[1] and out[:-1] == tuple(x.shape.grid) and x.shape[0] == self._numel(out[:-1]):
            # B x N x C -> B x H x W x C: the tokens on their grid, channels last (a permute then moves them first)
            return self.emit(node, "to_grid", "to_grid", None, {}, [x], fixed=False, channels_last=True,
                             shape=(x.shape[1], *out[:-1]))
        opened = tinyvit.open_windows(self, node, x, out) if isinstance(x, _Tensor) else None
        if opened is not None:  # (TinyViT's channels-last grid cut into windows)
            return opened
        if not isinstance(x, _Tensor) or x.channels_last:
            raise Unmapped(f"{how} of something other than a channels-first tensor of the network")
        if isinstance(x.shape, Tokens):
            normed = self.token_batchnorm(node, x)
            if normed is not None:
                return normed
        if out == x.shape:
            return x
        if isinstance(x.shape, Tokens) and out == (*x.shape.grid, x.shape[1]) and x.shape[0] == math.prod(
                x.shape.grid) and len(out) > 2:  # the tokens viewed as their grid, channels last (EdgeNeXt)
            grid = self.emit(node, "to_grid", "to_grid", None, {"size": list(x.shape.grid)}, [x], fixed=False,
                             shape=(x.shape[1], *x.shape.grid))
            return _Tensor(grid.id, grid.shape, True)
        if isinstance(x.shape, Tokens):
            raise Unmapped(f"{how} of a token sequence (attention written by hand?): archcalc reads attention as "
                           "nn.MultiheadAttention")
        if len(x.shape) > 2 and out == (x.shape[0], self._numel(x.shape[1:])) and self._channels_move_last(node):
            return _Flat(x)  # C x H x W -> C x HW, then the channels moved last: to_tokens
        if len(out) == 1:
            return self.emit(node, "flatten", "flatten", None, {}, [x], fixed=False)
        # Any other shape (the batch axis kept): a reshape; the ops after it are mapped on the shape it makes, so
        # a Conv1d over ECA's view(B, 1, C) is the 1-channel conv torch runs.
        keep = 0  # the trailing axes it leaves as they are (a split of the channels: the spatial axes)
        while keep < min(len(x.shape), len(out)) - 1 and x.shape[-1 - keep] == out[-1 - keep]:
            keep += 1
        view: dict[str, Any] = {"shape": list(out[:len(out) - keep])}
        if keep:
            view["keep"] = keep
        return self.emit(node, "reshape", "reshape", None, view, [x], fixed=False)

    def token_batchnorm(self, node: fx.Node, x: _Tensor) -> _Tensor | None:
        """LeViT's LinearNorm: the batch and the tokens flattened into one axis (x.flatten(0, 1), or a reshape or
        view to (-1, C)), nn.BatchNorm1d(C) on it, and the result shaped back (reshape_as(x), or a reshape or view
        to B x N x C): `batchnorm` on the tokens, per channel. None when the flatten is not that."""
        n, c = x.shape
        if tuple(int(s) for s in self.values[node].shape) != (n, c):  # (batch 1: B x N merged into N)
            return None
        bn = list(node.users)[0] if len(node.users) == 1 else None
        m = self.root.get_submodule(str(bn.target)) if bn is not None and bn.op == "call_module" else None
        if bn is None or type(m) is not nn.BatchNorm1d or len(bn.args) != 1 or bn.kwargs \
                or m.num_features != c:  # type: ignore[union-attr]
            return None
        back = list(bn.users)[0] if len(bn.users) == 1 else None
        source = node.args[0]
        if back is None or not (back.op == "call_method" and str(back.target) in ("reshape_as", "view_as", "reshape",
                                                                                     "view")):
            return None
        if tuple(int(s) for s in self.values[back].shape) != (1, n, c) or (
                str(back.target).endswith("_as") and back.args[1:] != (source,)):
            return None
        mapped = mapping.module_rule(m)(m, x.shape)  # type: ignore[misc, arg-type]
        self.called.add(str(bn.target))
        self.composed.update((bn, back))
        params = list(m.parameters())  # type: ignore[union-attr]
        out = self.emit(bn, str(bn.target).rsplit(".", 1)[-1], "batchnorm", None, mapped.args, [x], True,
                        shape=x.shape, trainable=not params or any(p.requires_grad for p in params))
        self.vals[bn] = out
        self.vals[back] = out
        return out

    def token_mean(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> _Tensor | _MeanToken:
        """The mean over the tokens, x.mean(dim=1) (timm's ViT with global_pool='avg'), of tokens that are their
        grid (no class token): to_grid and the mean over the spatial axes, the same sums and division."""
        x = args[0]
        bound = mapping.bind(("x", "dim", "keepdim", "dtype"), args, kwargs)
        dim = bound.get("dim")
        dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
        n, c = x.shape
        if [d % 3 for d in dims] == [1] and bound.get("keepdim") and bound.get("dtype") is None \
                and len(node.users) == 1:
            return _MeanToken(x)  # (a class token if the one reader puts it before x: cat)
        if [d % 3 for d in dims] != [1] or bound.get("keepdim") or bound.get("dtype") is not None:
            raise Unmapped(f"mean of tokens over dims {list(dims)}: archcalc's is the mean over the tokens (dim 1)")
        if math.prod(x.shape.grid) != n:
            raise Unmapped(f"mean over {n} tokens that are not their grid ({'x'.join(map(str, x.shape.grid))}: a class "
                           "token among them?)")
        grid = self.emit(node, "to_grid", "to_grid", None, {"size": list(x.shape.grid)}, [x], fixed=False,
                         shape=(c, *x.shape.grid))
        return self.emit(node, "mean", "mean", None, {}, [grid], fixed=False)

    def _to_grid_next(self, node: fx.Node, args: list[Any]) -> bool:
        """A transpose of tokens (N x C -> C x N) whose every reader views it as C x H x W (H*W = N): to_grid."""
        x = args[0]
        if not (isinstance(x, _Tensor) and isinstance(x.shape, Tokens) and not x.channels_last
                and all(isinstance(d, int) for d in args[1:]) and sorted(int(d) % 3 for d in args[1:]) == [1, 2]):
            return False
        n, c = x.shape

        def grid(user: fx.Node) -> bool:
            method = str(user.target) if user.op == "call_method" else None
            shape = tuple(int(v) for v in self.values[user].shape[1:]) if isinstance(
                self.values.get(user), torch.Tensor) else ()
            return (method in ("reshape", "view") or user.target is torch.reshape) and user.args[0] is node \
                and len(shape) >= 2 and shape[0] == c and math.prod(shape[1:]) == n
        return bool(node.users) and all(grid(u) for u in node.users)

    @staticmethod
    def _channels_move_last(node: fx.Node) -> bool:
        """Every reader of this C x N view moves the channels last (permute(0, 2, 1), transpose(1, 2)): the view
        is the first half of to_tokens (torchvision's ViT), not a reshape of its own."""
        def moves(user: fx.Node) -> bool:
            method = str(user.target) if user.op == "call_method" else None
            args: list[Any] = list(user.args[1:])
            if user.target is torch.permute or method == "permute":
                given: Any = args[0] if args else user.kwargs.get("dims", ())
                dims: list[Any] = args if len(args) > 1 else list(given)
                return [int(d) % 3 for d in dims] == [0, 2, 1]
            if user.target is torch.transpose or method == "transpose":
                return len(args) == 2 and sorted(int(d) % 3 for d in args) == [1, 2]
            return False
        return bool(node.users) and all(moves(u) for u in node.users)

    def blocks(self, node: fx.Node, x: _Tensor, dims: tuple[int, ...]) -> _Blocks | None:
        """The permute of space-to-depth (TResNet's): a C x H x W tensor viewed as (C, H/r, r, W/r, r) by the op
        just before, the two r axes moved before C; the view that follows makes it r*r*C x H/r x W/r."""
        prev = self.ops[-1] if self.ops else None
        if prev is None or prev.kind != "reshape" or prev.output != x.id or x.id != len(self.shapes) - 1 \
                or dims != (0, 3, 5, 1, 2, 4) or len(node.users) != 1:
            return None
        source = _Tensor(prev.inputs[0], self.shapes[prev.inputs[0]])
        if len(source.shape) != 3 or len(x.shape) != 5:
            return None
        c, h, w = source.shape
        r = x.shape[2]
        if x.shape != (c, h // r, r, w // r, r) or h % r or w % r:
            return None
        self.ops.pop()  # the view becomes part of the space-to-depth
        self.shapes.pop()
        return _Blocks(source, r)

    def space_to_depth(self, node: fx.Node, x: _Blocks) -> _Tensor:
        c, h, w = x.source.shape
        r = x.block_size
        if tuple(int(v) for v in self.values[node].shape[1:]) != (r * r * c, h // r, w // r):
            raise Unmapped("a view of space-to-depth's blocks other than r*r*C x H/r x W/r")
        return self.emit(node, "space_to_depth", "space_to_depth", None, {"block_size": r}, [x.source], fixed=False)

    def expand(self, node: fx.Node, x: _Tensor) -> _Tensor:
        """x.expand_as(y) / x.expand(...) read only by element-wise merges: the merge broadcasts x as the expand
        did (the same arithmetic, no copy), so the source is passed on."""
        if x.channels_last or not node.users or not all(
                (u.op == "call_function" and u.target in mapping.BINARY)
                or (u.op == "call_method" and str(u.target) in mapping.BINARY_METHODS) for u in node.users):
            raise Unmapped("an expand read by other than an element-wise merge (+, *) has no archcalc kind")
        return x

    @staticmethod
    def _numel(shape: Shape) -> int:
        n = 1
        for s in shape:
            n *= s
        return n

    def chunks(self, node: fx.Node, args: list[Any], kwargs: dict[str, Any], how: str) -> _Chunks:
        x = args[0]
        if not isinstance(x, _Tensor):
            raise Unmapped(f"{how} of something other than a tensor of the network")
        size = args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("split_size_or_sections",
                                                                                kwargs.get("split_size")))
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        if isinstance(x.shape, Tokens):
            raise Unmapped(f"{how} of a token sequence: archcalc slices the channels of a grid")
        rank = len(x.shape) + 1
        axis = rank - 1 if x.channels_last else 1  # the channels: the last axis of a channels-last view (MambaOut)
        if dim % rank != axis:
            raise Unmapped(f"{how} along dim {dim}: archcalc slices channels (dim 1, or the last axis of a "
                           "channels-last view)")
        pieces = self.values[node]
        bounds, start = [], 0
        for piece in pieces:
            stop = start + int(piece.shape[axis])
            bounds.append((start, stop))
            start = stop
        del size
        return _Chunks(x, tuple(bounds))

    def getitem(self, node: fx.Node, args: list[Any]) -> Any:
        source, index = args
        if isinstance(source, _Chunks):
            start, stop = source.bounds[index]
            x = source.source
            if (start, stop) == (0, x.shape[0]):
                return x
            return self.emit(node, "channel_slice", "channel_slice", None, {"start": start, "stop": stop}, [x],
                             fixed=False, channels_last=x.channels_last,
                             shape=(stop - start, *x.shape[1:]) if x.channels_last else None)
        if not isinstance(source, _Tensor):
            if isinstance(source, (list, tuple)):
                return source[index]
            raise Unmapped("indexing of something that is not a tensor of the network")
        if source.channels_last:
            raise Unmapped("indexing of a channels-last view")
        index = index if isinstance(index, tuple) else (index,)
        if isinstance(source.shape, Tokens) and len(index) == 2 and index[0] == slice(None, None, None) \
                and isinstance(index[1], int) and not isinstance(index[1], bool):  # x[:, i]: one token
            return self.emit(node, "take_token", "take_token", None, {"index": index[1] % source.shape[0]},
                             [source], fixed=False)
        if isinstance(source.shape, Tokens):  # (its dim 1 is the tokens, not the channels: PiT's x[:, :2])
            if all(i == slice(None, None, None) for i in index):
                return source
            if len(index) == 2 and index[0] == slice(None, None, None) and isinstance(index[1], slice) \
                    and index[1].step in (None, 1):  # x[:, a:b]: a run of tokens, as a sequence
                start, stop, _ = index[1].indices(source.shape[0])
                if (start, stop) == (0, source.shape[0]):
                    return source
                if stop > start:
                    return self.emit(node, "take_token", "take_token", None, {"index": start, "stop": stop},
                                     [source], fixed=False, shape=Tokens(stop - start, source.shape[1],
                                                                         source.shape.grid))
            raise Unmapped(f"indexing [{', '.join(map(str, index))}] of a token sequence: archcalc takes one token "
                           "(x[:, i]: take_token)")
        channels = source.shape[0]
        full = slice(None, None, None)
        if Ellipsis in index and index.count(Ellipsis) == 1:  # x[..., a:b]: the axes the ellipsis stands for
            at = index.index(Ellipsis)
            index = index[:at] + (full,) * (len(source.shape) + 1 - len(index) + 1) + index[at + 1:]
        if len(index) > 2 and index[0] == full and index[1] == full and all(
                isinstance(i, slice) and i.step in (None, 1) for i in index[2:]):  # x[:, :, a:b, c:d]: a crop
            sizes = tuple(int(v) for v in self.values[node].shape[2:])
            starts = [i.indices(w)[0] for i, w in zip(index[2:], source.shape[1:])]
            starts += [0] * (len(sizes) - len(starts))
            if sizes == source.shape[1:]:
                return source
            if all(b == (w - n) // 2 for b, w, n in zip(starts, source.shape[1:], sizes)):
                return self.resize(node, Mapped("crop", {"size": sizes[0] if len(set(sizes)) == 1 else sizes}),
                                   source)
            return self.resize(node, Mapped("crop", {"size": sizes[0] if len(set(sizes)) == 1 else list(sizes),
                                                     "start": starts[0] if len(set(starts)) == 1 else starts}),
                               source)  # off centre: a crop from a start
        if len(index) >= 1 and index[0] == full and all(i == full for i in index[2:]):
            if len(index) == 1:
                return source
            sl = index[1]
            if isinstance(sl, slice) and sl.step in (None, 1):
                start, stop, _ = sl.indices(channels)
                if (start, stop) == (0, channels):
                    return source
                if stop > start:
                    return self.emit(node, "channel_slice", "channel_slice", None, {"start": start, "stop": stop},
                                     [source], fixed=False)
        raise Unmapped(f"indexing [{', '.join(map(str, index))}]: archcalc slices a range of channels only "
                       "(x[:, a:b])")

    def size_source(self, node: fx.Node, size: Any) -> int | None:
        """The tensor whose spatial size an F.interpolate's `size` was read from (x.shape[-2:]), if any."""
        target = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
        sizes = size if isinstance(size, tuple) else None
        seen: set[fx.Node] = set()
        todo = [target] if isinstance(target, fx.Node) else []
        while todo:
            n = todo.pop()
            if n in seen or len(seen) > 8:
                continue
            seen.add(n)
            value = self.vals.get(n)
            if isinstance(value, _Tensor):
                spatial = value.shape[1:]
                want = sizes if sizes is not None else (size,) * len(spatial)
                return value.id if tuple(spatial) == tuple(want) and not value.channels_last else None
            todo.extend(n.all_input_nodes)
        return None


def _as_tuple(value: Any, rank: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * rank


def _one(values: tuple[int, ...]) -> Any:
    """One int where every axis agrees, as archcalc writes kernel sizes and strides."""
    return values[0] if len(set(values)) == 1 else list(values)


def trace_module(module: nn.Module, input_shape: Sequence[int], allow_unknown: bool = False) -> Traced:
    """Trace `module` (in its current mode; from_module puts it in eval) on one sample of `input_shape`."""
    shape = (1, *(int(s) for s in input_shape))
    tensors = [*module.parameters(), *module.buffers()]
    mode = None
    x: torch.Tensor
    if tensors and not all(t.is_meta for t in tensors):
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
        x = mode.from_tensor(torch.empty(shape))
    else:
        x = torch.empty(shape, device="meta")
    tracer = _Tracer([*mapping.named_functions(), *mapping.timm_partitions()], x, mode)
    root = _Root(module)
    try:
        graph = tracer.trace(root)
    except _Failed as exc:
        raise ImportFailure(str(exc)) from None
    except Exception as exc:  # fx's TraceError and whatever the module's forward raises on proxies
        file, line = _user_frame(exc.__traceback__)
        place = f" at {file}:{line}" if file else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ImportFailure(f"cannot trace the module{place}: {type(exc).__name__}: {first}") from None
    values = {n: n.meta[_VALUE] for n in graph.nodes if _VALUE in n.meta}
    converter = _Converter(root, graph, values, allow_unknown)
    outputs, in_shape = converter.run()
    ops, dropped = _discarded(converter.ops, outputs)
    warnings = list(converter.warnings)
    if dropped:
        warnings.append(_dropped(dropped, converter.shapes))
    if not root.whole:
        warnings += _untraced(module, converter.called, graph)
    types = {tuple(path.split(".")) if path else (): type(m).__name__ for path, m in root.named_modules()}
    return Traced(in_shape, converter.shapes, ops, outputs, warnings, converter.unknown, types)


def _discarded(ops: list[Op], outputs: list[tuple[str, int]]) -> tuple[list[Op], list[Op]]:
    """Every op, those no output depends on marked: the ones nothing reads are written `discard: true`, so the spec
    computes and counts them (and what they read) as the model does. Returns the ops and the ones no output needs."""
    needed = {t for _, t in outputs}
    keep = [False] * len(ops)
    for i in range(len(ops) - 1, -1, -1):
        if ops[i].output in needed:
            keep[i] = True
            needed.update(ops[i].inputs)
    read = {t for op in ops for t in op.inputs} | {t for _, t in outputs}
    marked = [op if k or op.output in read else op._replace(discard=True) for op, k in zip(ops, keep)]
    return marked, [op for op, k in zip(ops, keep) if not k]


def _dropped(ops: list[Op], shapes: list[Shape]) -> str:
    """The note on ops that run but feed no output: each by its module path, its kind and its parameters."""
    named, total = [], 0
    for op in ops:
        what = op.kind or op.merge or "?"
        params = 0
        if op.kind is not None:
            spec = REGISTRY[op.kind]
            full = {arg.name: op.args.get(arg.name, arg.default) for arg in spec.args}
            try:
                params = spec.cost(full, shapes[op.inputs[0]], shapes[op.output]).params
            except Exception:  # (a kind whose costs need the written spec's references: no parameters)
                params = 0
        total += params
        path = op.where.path if op.fixed else ".".join((*op.scope, op.name))
        line = f", {os.path.basename(op.where.file)}:{op.where.line}" if op.where.file else ""
        named.append(f"{path} ({what}{f', {params:,} parameters' if params else ''}{line})")
    shown = ", ".join(named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8 else "")
    return (f"{len(ops)} op(s) run but feed no output: {shown}; written with `discard: true`, they are computed and "
            "counted in every figure")


def _untraced(module: nn.Module, called: set[str], graph: fx.Graph) -> list[str]:
    """Parameters of modules the traced forward never calls (an auxiliary head that runs only in training)."""
    used = set(called) | {str(n.target) for n in graph.nodes if n.op == "get_attr"}
    reached: set[str] = set()  # every module path at or above a used one
    for u in used:
        parts = u.split(".")
        reached.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    missing: dict[str, int] = {}
    for name, p in module.named_parameters():
        parts = name.split(".")
        if any(".".join(parts[:i]) in used for i in range(1, len(parts) + 1)):
            continue  # the parameter, or a module above it, was used
        top = next((".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in reached),
                   name.rpartition(".")[0])  # the outermost module none of whose parts was called
        missing[top] = missing.get(top, 0) + p.numel()
    if not missing:
        return []
    listed = ", ".join(f"{k or 'the module'} ({v:,})" for k, v in missing.items())
    return [f"parameters of modules the forward never calls are not in the spec: {listed}; "
            f"{sum(missing.values()):,} in all"]
