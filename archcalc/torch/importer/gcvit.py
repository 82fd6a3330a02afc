"""timm's GCViT (Hatamizadeh et al. 2023, "Global Context Vision Transformers"; timm/models/gcvit.py): the window
attention of its blocks, read by the tracer's converter.

A stage of GCViT makes one window-sized grid of queries from its input (`global_block`: MBConv blocks and max pools,
the `FeatureBlock`, read as the convolutions they are) and passes it, beside the tokens, to every block. Each block's
`_window_attn` runs, on the normed channels-last grid (B x H x W x C): window_partition (x.view(B, H / w, w, W / w,
w, C).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, C), then .view(-1, w w, C)), its WindowAttentionGlobal
and window_reverse (the inverse views). The span from the first view to the last is one op:

- the even blocks (use_global false: qkv C -> 3C, timm's RelPosBias, a (2w-1)^2 x heads table gathered by a
  w^2 x w^2 index): `to_tokens`, `window_attention` (Swin's, position_bias table) and `to_grid` (channels last);
- the odd blocks (use_global: a kv projection C -> 2C, the stage's query grid repeated for every window of the
  image, not projected): `to_tokens` of the query grid and of the grid, a token `concat` [queries ; tokens] and
  `global_query_attention`, then `to_grid`. timm does not join the two (the concat is archcalc's way of giving one
  layer two inputs: no arithmetic, a copy of the N + M tokens in archcalc's memory figures that timm does not make).

Each is checked against the module's own attributes and the shapes the trace ran with; anything else in the span
(another op, a tensor read outside it, padding) is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer.mapping import Unmapped, qualname

if TYPE_CHECKING:
    import torch.fx as fx

BLOCK = "timm.models.gcvit.GlobalContextVitBlock"
ATTENTION = "timm.models.gcvit.WindowAttentionGlobal"
REL_POS = "timm.layers.pos_embed_rel.RelPosBias"

# The ops the span may run on its tensors (the partition's views and copies, the attention's products)
_METHODS = {"view", "reshape", "permute", "contiguous", "transpose", "unbind", "softmax", "repeat_interleave",
            "unsqueeze"}
_FUNCTIONS = {"getitem", "matmul", "mul", "add"}


def _path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    last: Any = list(stack.values())[-1] if stack else None
    return last[0] if isinstance(last, tuple) else str(last or "")


def pattern(conv: Any, first: fx.Node) -> bool:
    """A GCViT block's window attention from the first view of its partition to the last of its reverse, as one
    op (with `to_tokens`, `concat` and `to_grid` around it); False when `first` starts no such span."""
    if first.op != "call_method" or first.target != "view":
        return False
    block = _path(first)
    if not block or qualname(type(conv.root.get_submodule(block))) != BLOCK:
        return False
    source = first.args[0] if first.args else None
    x: Any = conv.vals.get(source) if isinstance(source, torch.fx.Node) else None
    if x is None or not getattr(x, "channels_last", False) or isinstance(x.shape, Tokens) or len(x.shape) != 3:
        raise Unmapped("a GCViT block's window partition of other than the block's channels-last grid")
    c, h, w = x.shape
    attn_path = f"{block}.attn"
    m: Any = conv.root.get_submodule(attn_path)
    rel: Any = getattr(m, "rel_pos", None)
    wh, ww = (int(s) for s in m.window_size)
    heads = int(m.num_heads)
    use_global = bool(m.use_global)
    width = 2 * c if use_global else 3 * c
    if (qualname(type(m)) != ATTENTION or qualname(type(rel)) != REL_POS or c % heads or h % wh or w % ww
            or type(m.qkv) is not nn.Linear or tuple(m.qkv.weight.shape) != (width, c)
            or type(m.proj) is not nn.Linear or tuple(m.proj.weight.shape) != (c, c) or m.proj.bias is None
            or tuple(rel.relative_position_bias_table.shape) != ((2 * wh - 1) * (2 * ww - 1), heads)
            or tuple(rel.relative_position_index.shape) != ((wh * ww) ** 2,)):
        raise Unmapped(f"GCViT's WindowAttentionGlobal whose projections, position bias or window are not "
                       f"archcalc's on a {h} x {w} grid of {c} channels ({'kv C -> 2C' if use_global else 'qkv '}"
                       f"{'' if use_global else 'C -> 3C'}, proj C -> C with a bias, Swin's table; the grid a "
                       "multiple of the window)")
    if (m.qkv.bias is None) != (m.proj.bias is None) and not use_global:
        raise Unmapped("GCViT's local window attention with a bias in one of qkv and proj only")
    modules = {f"{attn_path}.{name}" for name in ("qkv", "proj", "attn_drop", "proj_drop")}
    span: list[fx.Node] = []
    last = None
    saw_proj = False
    for nd in conv.nodes[conv.order[first]:]:
        if nd.op == "get_attr":
            continue
        span.append(nd)
        v: Any = conv.values.get(nd)
        if not isinstance(v, torch.Tensor):
            continue
        if not _allowed(nd, modules):
            raise Unmapped(f"GCViT's block runs {nd.op} {getattr(nd.target, '__name__', nd.target)} between its "
                           "window partition and its reverse, which archcalc's window attention does not")
        saw_proj = saw_proj or (nd.op == "call_module" and str(nd.target) == f"{attn_path}.proj")
        if saw_proj and nd.op == "call_method" and tuple(int(s) for s in v.shape) == (1, h, w, c):
            last = nd
            break
    inside = set(span)
    inputs = {a for nd in span for a in nd.all_input_nodes
              if a not in inside and a.op != "get_attr" and isinstance(conv.values.get(a), torch.Tensor)}
    queries = [a for a in inputs if a is not source]
    if last is None or any(u not in inside for nd in span if nd is not last
                           and isinstance(conv.values.get(nd), torch.Tensor) for u in nd.users) \
            or len(queries) != (1 if use_global else 0):
        raise Unmapped("a GCViT block's window attention whose result is read before the windows are put back, "
                       "or that reads other tensors than its grid (and, global, the stage's query grid)")
    trainable = any(p.requires_grad for p in m.parameters())
    tokens = conv.emit(first, "to_tokens", "to_tokens", None, {}, [x], fixed=False, shape=Tokens(h * w, c, (h, w)))
    window: Any = wh if wh == ww else [wh, ww]
    if use_global:
        q: Any = conv.vals.get(queries[0])
        if q is None or not getattr(q, "channels_last", False) or tuple(q.shape) != (c, wh, ww):
            raise Unmapped(f"GCViT's global queries that are not a channels-last {wh} x {ww} grid of {c} channels "
                           "(one window)")
        qt = conv.emit(first, "queries", "to_tokens", None, {}, [q], fixed=False, shape=Tokens(wh * ww, c, (wh, ww)))
        joined = conv.emit(first, "join", None, "concat", {}, [qt, tokens], fixed=False,
                           shape=Tokens(wh * ww + h * w, c, (h, w)))
        kind, args = "global_query_attention", {"num_heads": heads, "window_size": window,
                                                **({} if m.qkv.bias is not None else {"qkv_bias": False})}
        inp = joined
    else:
        kind, args = "window_attention", {"num_heads": heads, "window_size": window,
                                          **({} if m.qkv.bias is not None else {"bias": False})}
        inp = tokens
    conv.consume(last, conv.module_params(attn_path), kind, args, inp)
    out = conv.emit(first, "attn", kind, None, args, [inp], True, shape=Tokens(h * w, c, (h, w)),
                    trainable=trainable)
    conv.called.update({*(str(nd.target) for nd in span if nd.op == "call_module"), f"{attn_path}.rel_pos",
                        attn_path})
    conv.composed.update(span)
    conv.current = last
    conv.vals[last] = conv.emit(last, "to_grid", "to_grid", None, {"size": [h, w]}, [out], fixed=False,
                                channels_last=True, shape=(c, h, w))
    return True


def _allowed(n: fx.Node, modules: set[str]) -> bool:
    if n.op == "call_module":
        return str(n.target) in modules
    if n.op == "call_method":
        return str(n.target) in _METHODS
    return getattr(n.target, "__name__", "") in _FUNCTIONS
