"""Attention on a channels-first grid whose 1 x 1 conv projection lays q, k and v out per head, read as
`self_attention` with `key_dim` and `value_dim` on the grid's tokens (to_tokens, it, to_grid): the conv attention of
LowFormer and CPUBone (timm/models/lowformer.py, timm/models/cpubone.py: `ConvAttention`, run on a grid its
depthwise strided conv has already reduced):

    qkv = Conv2d(C, 3 h d, 1, bias=False)(x).reshape(B, h, 3 d, H * W).permute(0, 1, 3, 2)
    q, k, v = qkv.chunk(3, dim=3)
    o = F.scaled_dot_product_attention(q, k, v)        or  (q * d ** -0.5) @ k.transpose(-2, -1), softmax, @ v
    out = Conv2d(h d, F, 1)(o_proj(o.permute(0, 1, 3, 2).reshape(B, h d, H, W)))

where o_proj is an nn.Identity (the models' `fuse_out_proj`) and the 1 x 1 conv the first layer of the upsampling
that follows (CPUBone), or o_proj is that conv itself. Its parameters and products are self_attention's with h heads
of d channels for q, k and v: the qkv projection C x 3hd (no bias), the output projection hd x F (+ F). Where no
1 x 1 conv follows the nn.Identity (LowFormer's fuse_out_proj: a transposed conv maps the joined heads to C) it is
`self_attention` with `proj: false`, ending at the identity.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer.attention import _VIEWS, Attention, _is, _Matcher, _reads_shape, _shape


class _ConvAttentionMatcher(_Matcher):
    def match(self, first: fx.Node) -> Attention | None:
        read = self.pointwise_grid(first)
        if read is None:
            return None
        conv, c, gh, gw = read
        n = gh * gw
        readers = [u for u in first.users if not _reads_shape(u)]  # (xout.size(): the grid's size, no values)
        view = readers[0] if len(readers) == 1 else None
        shape = _shape(self.values, view)
        if not (_is(view, *_VIEWS) and view is not None and shape is not None and len(shape) == 4
                and shape[0] == 1 and shape[3] == n and shape[2] % 3 == 0
                and shape[1] * shape[2] == conv.out_channels):
            return None
        heads, d = shape[1], shape[2] // 3
        perm = self.only_user(view)
        dims = tuple(a % 4 for a in perm.args[1:] if isinstance(a, int)) if perm is not None else ()
        if not (_is(perm, "permute") and perm is not None and dims == (0, 1, 3, 2)):
            return None
        parts = self.only_user(perm)
        if not (_is(parts, "chunk") and parts is not None and tuple(parts.args[1:2]) == (3,)
                and (parts.args[2] if len(parts.args) > 2 else parts.kwargs.get("dim", 0)) in (3, -1)):
            return None
        self.nodes.update((view, perm, parts))
        picked: dict[int, fx.Node] = {}
        for u in parts.users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                return None
            picked[u.args[1]] = u
        if sorted(picked) != [0, 1, 2]:
            return None
        self.nodes.update(picked.values())
        q, k, v = picked[0], picked[1], picked[2]
        out = self.sdpa(q, k, v, d) or self.explicit(q, k, v, d)
        if out is None:
            return None
        back = self.only_user(out)
        dims = tuple(a % 4 for a in back.args[1:] if isinstance(a, int)) if back is not None else ()
        if not (_is(back, "permute") and back is not None and dims == (0, 1, 3, 2)):
            return None
        grid = self.only_user(back)
        if not (_is(grid, *_VIEWS) and grid is not None and _shape(self.values, grid) == (1, heads * d, gh, gw)):
            return None
        self.nodes.update((back, grid))
        joined = self.through(grid, self.identity)
        last = self.only_user(joined)
        proj = self.module(last, nn.Conv2d)
        if joined is not grid and proj is None:  # no output projection: o_proj an nn.Identity, then the upsampling
            # (LowFormer's fuse_out_proj: its transposed conv maps the joined heads to C); `self_attention` with
            # proj: false, ending at the identity (the module path it names has no parameters)
            if any(u not in self.nodes and not (nd is first and _reads_shape(u))
                   for nd in self.nodes - {joined} for u in nd.users):
                return None
            x = first.args[0]
            assert isinstance(x, fx.Node)
            qkv: Any = str(first.target)  # (one module's path, as conv_form gives it)
            return Attention(x, qkv, str(joined.target), joined, frozenset(self.nodes), heads,
                             conv.bias is not None, conv.bias is not None, d, d, grid=(gh, gw), conv=True)
        if not self.pointwise(proj) or last is None or len(last.args) != 1 or last.kwargs:
            return None
        assert isinstance(proj, nn.Conv2d)
        if conv.bias is not None and proj.bias is None:
            return None  # (self_attention's biases: both, neither, or the output projection's only)
        self.nodes.add(last)
        if any(u not in self.nodes and not (nd is first and _reads_shape(u))
               for nd in self.nodes - {last} for u in nd.users):
            return None
        x = first.args[0]
        assert isinstance(x, fx.Node)
        qkv = str(first.target)
        return Attention(x, qkv, str(last.target), last, frozenset(self.nodes), heads, proj.bias is not None,
                         conv.bias is not None, d, d, out_features=int(proj.out_channels), grid=(gh, gw), conv=True)


def match(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Attention | None:
    """The conv attention with per-head q, k, v that starts at `first` (its 1 x 1 qkv conv), or None."""
    return _ConvAttentionMatcher(root, values).match(first)


class LinearAttn(NamedTuple):
    x: fx.Node  # the C x H x W grid of heads of [q, k, v]
    last: fx.Node  # the joined heads laid out on the grid again
    nodes: frozenset[fx.Node]
    head_dim: int
    eps: float


def _metadata(n: fx.Node) -> bool:
    """v.device.type != "meta", v.dtype: reads of a tensor's metadata (timm's LiteMLA picks its autocast branch and
    its output dtype so), no values."""
    if n.op == "call_function" and n.target is getattr and n.args[1:] in (("device",), ("dtype",), ("type",)):
        return all(_metadata(u) or (u.op == "call_function" and u.target in (operator.ne, operator.eq))
                   or _is(u, "to") for u in n.users)
    return False


class _LinearMatcher(_Matcher):
    def same(self, n: fx.Node) -> fx.Node:
        """Through .float() and .to(dtype) of the tensor (float32 already: the same values), skipping readers of
        its metadata."""
        while True:
            users = [u for u in n.users if not _metadata(u)]
            reads = [u for u in n.users if _metadata(u)]
            while reads:  # (the metadata reads and what they feed: each other, a comparison; a .to(dtype) is ours)
                u = reads.pop()
                self.nodes.add(u)
                reads += [w for w in u.users if not _is(w, "to") and w not in self.nodes]
            if len(users) == 1 and (_is(users[0], "float") and len(users[0].args) == 1
                                    or _is(users[0], "to") and len(users[0].args) == 2 and not users[0].kwargs):
                self.nodes.add(users[0])
                n = users[0]
                continue
            return n

    def one(self, n: fx.Node) -> fx.Node | None:
        users = [u for u in n.users if not _metadata(u)]
        return users[0] if len(users) == 1 else None

    def match(self, start: fx.Node) -> LinearAttn | None:  # type: ignore[override]  # (another pattern)
        shape_in = _shape(self.values, start.args[0]) if start.args else None
        shape = _shape(self.values, start)
        if not (_is(start, *_VIEWS) and shape_in is not None and len(shape_in) >= 3 and shape is not None
                and len(shape) == 4 and shape[0] == 1 and shape[1] * shape[2] == shape_in[1]
                and shape[2] % 3 == 0 and shape[3] == math.prod(shape_in[2:])):
            return None
        heads, d = shape[1], shape[2] // 3
        self.nodes = {start}
        t = self.only_user(start)
        dims = sorted(a % 4 for a in t.args[1:] if isinstance(a, int)) if t is not None else []
        parts = self.only_user(t) if t is not None else None
        if not (_is(t, "transpose") and dims == [2, 3] and _is(parts, "chunk") and parts is not None
                and tuple(parts.args[1:2]) == (3,)
                and (parts.args[2] if len(parts.args) > 2 else parts.kwargs.get("dim", 0)) in (3, -1)):
            return None
        assert t is not None
        self.nodes.update((t, parts))
        picked: dict[int, fx.Node] = {}
        for u in parts.users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                return None
            picked[u.args[1]] = u
        if sorted(picked) != [0, 1, 2]:
            return None
        self.nodes.update(picked.values())
        relu = [self.only_user(picked[i]) for i in (0, 1)]
        if not all(self.module(r, nn.ReLU) is not None and r is not None and len(r.args) == 1 for r in relu):
            return None
        pad = self.only_user(picked[2])
        if not (pad is not None and pad.op == "call_function" and pad.target is F.pad
                and tuple(pad.args[1]) == (0, 1)  # type: ignore[arg-type]
                and dict(zip(("mode", "value"), pad.args[2:]), **pad.kwargs) == {"mode": "constant", "value": 1.0}):
            return None
        q, k = (self.same(r) for r in relu)  # type: ignore[arg-type]
        v = self.same(pad)
        self.nodes.update((*relu, pad))  # type: ignore[arg-type]
        kt = self.one(k)
        dims = sorted(a % 4 for a in kt.args[1:] if isinstance(a, int)) if kt is not None else []
        kv = self.one(kt) if kt is not None else None
        out = self.one(kv) if kv is not None else None
        if not (_is(kt, "transpose") and dims == [2, 3] and kv is not None and kv.target is operator.matmul
                and tuple(kv.args) == (kt, v) and self.one(v) is kv and out is not None
                and out.target is operator.matmul and tuple(out.args) == (q, kv) and self.one(q) is out):
            return None
        assert kt is not None
        self.nodes.update((kt, kv, out))
        got: dict[str, fx.Node] = {}
        for u in out.users:
            index = u.args[1] if u.op == "call_function" and u.target is operator.getitem else None
            if index == (Ellipsis, slice(None, -1, None)):
                got["num"] = u
            elif index == (Ellipsis, slice(-1, None, None)):
                got["den"] = u
            else:
                return None
        if set(got) != {"num", "den"}:
            return None
        add = self.one(got["den"])
        div = self.one(got["num"])
        if not (add is not None and add.target in (operator.add, torch.add) and len(add.args) == 2
                and add.args[0] is got["den"] and isinstance(add.args[1], float) and div is not None
                and div.target in (operator.truediv, torch.div) and tuple(div.args) == (got["num"], add)
                and self.one(add) is div):
            return None
        eps = float(add.args[1])
        self.nodes.update((*got.values(), add, div))
        r = self.same(div)
        back = self.one(r)
        dims = sorted(a % 4 for a in back.args[1:] if isinstance(a, int)) if back is not None else []
        last = self.one(back) if back is not None else None
        if not (_is(back, "transpose") and dims == [2, 3] and _is(last, *_VIEWS) and last is not None
                and _shape(self.values, last) == (1, heads * d, *shape_in[2:])):
            return None
        assert back is not None
        self.nodes.update((back, last))
        if any(u not in self.nodes for nd in self.nodes - {last} for u in nd.users):
            return None
        x = start.args[0]
        assert isinstance(x, fx.Node)
        return LinearAttn(x, last, frozenset(self.nodes), d, eps)


def match_linear(root: nn.Module, values: dict[fx.Node, Any], start: fx.Node) -> LinearAttn | None:
    """EfficientViT-MIT's ReLU linear attention (timm's LiteMLA between its concatenated multi-scale qkv and its
    projection), from the view of the grid as heads of [q, k, v] to the joined heads laid out on the grid:

        qkv = x.reshape(B, h, 3 d, H * W).transpose(-1, -2);  q, k, v = qkv.chunk(3, dim=-1)
        q, k = ReLU(q), ReLU(k);  v = F.pad(v, (0, 1), mode="constant", value=1.0)
        out = q.float() @ (k.float().transpose(-1, -2) @ v.float())      (.float(): optional)
        out = (out[..., :-1] / (out[..., -1:] + eps)).to(dtype).transpose(-1, -2).reshape(B, h d, H, W)

    read as `linear_attention: {head_dim: d, eps}`; anything else is imported op by op (and refused there)."""
    return _LinearMatcher(root, values).match(start)  # type: ignore[no-any-return]


def linear_attention_pattern(converter: Any, node: fx.Node) -> bool:
    """The converter's op for the pattern `match_linear` finds starting at `node`: one `linear_attention`."""
    found = match_linear(converter.root, converter.values, node)
    x = converter.vals.get(found.x) if found is not None else None
    if found is None or x is None or isinstance(x.shape, Tokens) or getattr(x, "channels_last", False):
        return False
    args: dict[str, Any] = {"head_dim": found.head_dim}
    if found.eps != 1e-5:
        args["eps"] = found.eps
    out = converter.emit(found.last, "linear_attention", "linear_attention", None, args, [x], False)
    converter.composed.update(found.nodes)
    converter.vals[found.last] = out
    return True
