"""timm's DaViT (Ding et al. 2022, "DaViT: Dual Attention Vision Transformers"; timm/models/davit.py) and Twins-SVT's
locally-grouped self-attention (Chu et al. 2021, "Twins"; timm/models/twins.py), read by the tracer's converter.

Each is read by what the timm class computes, checked against the class's own attributes and the shapes the trace
ran with, and written as one archcalc op:

- DaViT's SpatialBlock, from the tokens viewed as B x H x W x C to their view back as B x N x C: the grid zero-padded
  to a multiple of the window (F.pad), window_partition, the block's WindowAttention on each window (qkv and proj
  C -> 3C, C -> C; softmax(Q K^T / sqrt(d)) V, no position bias), window_reverse and the crop: `window_attention`
  with `position_bias: none` (which pads, partitions, attends, merges and crops the same way).
- Twins' LocallyGroupedAttn, its whole call: the same attention on ws x ws windows, `window_attention` with
  `position_bias: none`. Twins projects after the crop (N tokens, not the padded grid's), so a grid that is not a
  multiple of the window is refused.
- DaViT's ChannelAttention and ChannelAttentionV2, their whole call: `xca` with `normalize: false` (attention over
  each head's d x d channel pairs, no normalisation, no temperature). ChannelAttention scales k by d^-1/2 and
  applies softmax(K^T V) to q: the same products as softmax(Q K^T) V with the roles of q, k and v exchanged (qkv's
  output rows in another order), the same params and MACs; ChannelAttentionV2 scales q by N^-1/2 (`scale: tokens`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import nn

from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer.mapping import Unmapped, qualname

SPATIAL = "timm.models.davit.SpatialBlock"
WINDOW = "timm.models.davit.WindowAttention"
TWINS = "timm.models.twins.LocallyGroupedAttn"
CHANNEL = ("timm.models.davit.ChannelAttention", "timm.models.davit.ChannelAttentionV2")

# The ops a window span may run on its tensors (the partition's views and copies, the attention's products)
_METHODS = {"view", "reshape", "permute", "contiguous", "transpose", "unbind", "softmax", "mul", "__mul__"}
_FUNCTIONS = {"pad", "getitem", "scaled_dot_product_attention", "matmul", "mul", "softmax", "dropout",
              "window_partition", "window_reverse"}


class Found(NamedTuple):
    """A span of the graph that is one archcalc op: from the tensor `x` to `last`, the parameters of the module at
    `path` (the modules in `calls` called)."""

    x: fx.Node
    last: fx.Node
    span: list[fx.Node]
    path: str
    kind: str
    args: dict[str, Any]
    calls: list[str]


class _Graph(NamedTuple):
    root: nn.Module
    values: dict[fx.Node, Any]  # what each node computed on the traced input (meta or fake tensors)
    vals: dict[fx.Node, Any]  # the converter's tensors so far (their archcalc shapes)
    nodes: list[fx.Node]
    order: dict[fx.Node, int]


def match(root: nn.Module, values: dict[fx.Node, Any], vals: dict[fx.Node, Any], nodes: list[fx.Node],
          order: dict[fx.Node, int], node: fx.Node) -> Found | None:
    """The span `node` starts, if it is one this file reads; Unmapped for one of these classes it cannot read."""
    if node.op not in ("call_method", "call_function"):
        return None
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    if not path:
        return None
    g = _Graph(root, values, vals, nodes, order)
    name = qualname(type(root.get_submodule(path)))
    if name == SPATIAL and node.op == "call_method" and node.target == "view":
        return _spatial(g, node, path)
    if name == TWINS or name in CHANNEL:
        return _whole(g, node, path, name)
    return None


def _tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _allowed(n: fx.Node, modules: set[str]) -> bool:
    if n.op == "call_module":
        return str(n.target) in modules
    if n.op == "call_method":
        return str(n.target) in _METHODS
    return getattr(n.target, "__name__", "") in _FUNCTIONS


def _closed(g: _Graph, span: list[fx.Node], last: fx.Node) -> bool:
    """No tensor the span makes is read outside it, but its last."""
    inside = set(span)
    return all(u in inside for n in span if n is not last and _tensor(g.values.get(n)) for u in n.users)


def _linears(m: Any, c: int) -> bool | None:
    """Whether qkv (C -> 3C) and proj (C -> C) have biases (both, or neither); None if they are not that shape."""
    qkv, proj = m.qkv, m.proj
    if tuple(qkv.weight.shape) != (3 * c, c) or tuple(proj.weight.shape) != (c, c):
        return None
    if (qkv.bias is None) != (proj.bias is None):
        return None
    return qkv.bias is not None


def _spatial(g: _Graph, first: fx.Node, block: str) -> Found | None:
    """DaViT's SpatialBlock: from `x.view(B, H, W, C)` of its normed tokens to `x.view(B, H * W, C)` after the crop."""
    source = first.args[0] if first.args else None
    x: Any = g.vals.get(source) if isinstance(source, fx.Node) else None
    value: Any = g.values.get(first)
    if x is None or not isinstance(getattr(x, "shape", None), Tokens) or not _tensor(value) or value.dim() != 4:
        return None
    n, c = x.shape
    h, w = (int(s) for s in value.shape[1:3])
    if tuple(x.shape.grid) != (h, w) or h * w != n or int(value.shape[3]) != c:
        raise Unmapped(f"DaViT's SpatialBlock views {n} tokens as a {h} x {w} grid that is not theirs")
    attn_path = f"{block}.attn"
    m: Any = g.root.get_submodule(attn_path)
    if qualname(type(m)) != WINDOW:
        raise Unmapped(f"DaViT's SpatialBlock whose attn is not timm's davit WindowAttention ({qualname(type(m))})")
    ws = tuple(int(s) for s in m.window_size)
    heads = int(m.num_heads)
    bias = _linears(m, c)
    if bias is None or c % heads:
        raise Unmapped(f"DaViT's WindowAttention whose qkv/proj are not C -> 3C, C -> C on {c} channels (biases "
                       f"alike) or whose {heads} heads do not divide them")
    modules = {f"{attn_path}.qkv", f"{attn_path}.proj", f"{attn_path}.softmax"}
    span, last = [], None
    padded = tuple(-(-g // s) * s for g, s in zip((h, w), ws))
    windows = math.prod(padded) // math.prod(ws)
    saw_windows = saw_proj = False
    for nd in g.nodes[g.order[first]:]:
        if nd.op == "get_attr":
            continue
        span.append(nd)
        v: Any = g.values.get(nd)
        if not _tensor(v):
            continue
        if not _allowed(nd, modules):
            raise Unmapped(f"DaViT's SpatialBlock runs {nd.op} {getattr(nd.target, '__name__', nd.target)} between "
                           "its window partition and its crop, which window_attention does not")
        shape = tuple(int(s) for s in v.shape)
        if nd.op == "call_module" and str(nd.target) == f"{attn_path}.qkv":
            saw_windows = shape == (windows, math.prod(ws), 3 * c)
        saw_proj = saw_proj or (nd.op == "call_module" and str(nd.target) == f"{attn_path}.proj")
        if saw_proj and nd.op == "call_method" and shape == (1, n, c):  # (the projection's own is the windows')
            last = nd
            break
    if last is None or not saw_windows or not _closed(g, span, last):
        raise Unmapped(f"DaViT's SpatialBlock whose window attention is not {windows} windows of "
                       f"{'x'.join(map(str, ws))} tokens on the {h} x {w} grid padded to "
                       f"{'x'.join(map(str, padded))}, its result read only as B x N x C")
    args: dict[str, Any] = {"num_heads": heads, "window_size": ws[0] if ws[0] == ws[1] else list(ws),
                            "bias": bias, "position_bias": "none"}
    calls = sorted(str(nd.target) for nd in span if nd.op == "call_module")
    assert isinstance(source, fx.Node)
    return Found(source, last, span, attn_path, "window_attention", args, calls)


def _whole(g: _Graph, first: fx.Node, path: str, name: str) -> Found | None:
    """The whole call of Twins' LocallyGroupedAttn or DaViT's ChannelAttention(V2) at `path`, from `first`."""
    m: Any = g.root.get_submodule(path)
    modules = {f"{path}.{child}" for child, _ in m.named_children()}
    span: list[fx.Node] = []
    for nd in g.nodes[g.order[first]:]:
        if nd.op == "get_attr":
            continue
        stack = nd.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
        if path not in paths and not (nd.op == "call_module" and str(nd.target) in modules):
            break
        span.append(nd)
    tensors = [nd for nd in span if _tensor(g.values.get(nd))]
    if not tensors:
        return None
    last = tensors[-1]
    inputs = {a for nd in span for a in nd.all_input_nodes if a not in span and _tensor(g.values.get(a))
              and a.op != "get_attr"}
    source = next(iter(inputs)) if len(inputs) == 1 else None
    x: Any = g.vals.get(source) if source is not None else None
    what = "Twins' LocallyGroupedAttn" if name == TWINS else f"DaViT's {name.rsplit('.', 1)[-1]}"
    if x is None or not isinstance(getattr(x, "shape", None), Tokens) or getattr(x, "channels_last", False):
        raise Unmapped(f"{what} on other than one token sequence of the network")
    out: Any = g.values.get(last)
    n, c = x.shape
    if tuple(out.shape) != (1, n, c) or not _closed(g, span, last) \
            or not all(_allowed(nd, modules) for nd in tensors):
        raise Unmapped(f"{what} whose call is not the attention archcalc reads (its ops, or a result of another "
                       "shape)")
    heads = int(getattr(m, "num_heads", 0) or m.groups)
    if name == TWINS:
        bias = _linears(m, c)  # window_attention: qkv's and proj's biases alike
    else:  # xca: proj always with a bias, qkv's its own
        shapes = tuple(m.qkv.weight.shape) == (3 * c, c) and tuple(m.proj.weight.shape) == (c, c)
        bias = m.qkv.bias is not None if shapes and m.proj.bias is not None else None
    if bias is None or c % heads:
        raise Unmapped(f"{what} whose qkv/proj are not C -> 3C, C -> C on {c} channels (the biases as archcalc's "
                       f"kind has them) or whose {heads} heads do not divide them")
    calls = sorted(str(nd.target) for nd in span if nd.op == "call_module")
    if name == TWINS:
        ws = int(m.ws)
        grid = tuple(x.shape.grid)
        if len(grid) != 2 or math.prod(grid) != n:
            raise Unmapped(f"{what} on {n} tokens that are not a 2-D grid")
        if any(g % ws for g in grid):
            raise Unmapped(f"{what} on a {grid[0]} x {grid[1]} grid that is not a multiple of its {ws} x {ws} "
                           "window: it projects the cropped tokens, where window_attention projects the padded "
                           "grid's")
        if m.attn_drop.p or m.proj_drop.p:
            raise Unmapped(f"{what} with dropout: archcalc's window_attention has none")
        args: dict[str, Any] = {"num_heads": heads, "window_size": ws, "bias": bias, "position_bias": "none"}
        assert source is not None
        return Found(source, last, span, path, "window_attention", args, calls)
    scale = "head"
    if name.endswith("V2"):
        if not m.dynamic_scale:
            raise Unmapped(f"{what} without dynamic_scale (q scaled by d^-1/2 with q, k and v in XCiT's order) "
                           "is not read yet")
        scale = "tokens"
    args = {"num_heads": heads, "normalize": False, **({"scale": scale} if scale != "head" else {}),
            **({} if bias else {"qkv_bias": False})}
    assert source is not None
    return Found(source, last, span, path, "xca", args, calls)
