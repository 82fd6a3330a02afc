"""Self-attention written out op by op, read as archcalc's `self_attention` by what it computes (not by the
module's class): timm's `Attention` (timm/layers/attention.py) and the blocks written like it.

The pattern, from the fused projection to the output projection, on N x C tokens:

    qkv = Linear(C, 3C)(x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)            (or qkv[0], qkv[1], qkv[2])
    q, k = q_norm(q), k_norm(k)        (nn.Identity: optional)
    o = F.scaled_dot_product_attention(q, k, v)                        (scale 1/sqrt(d), no mask, no dropout)
        or  (q * d ** -0.5) @ k.transpose(-2, -1), softmax over the keys, (dropout), @ v
    out = Linear(C, F)(o.transpose(1, 2).reshape(B, N, C))              (an nn.Identity norm or a dropout that
                                                                        does nothing between: optional; F = C, or
                                                                        another width: CLIP's attention pool)

Its parameters are nn.MultiheadAttention's (in_proj 3C x C and 3C, out_proj C x C and C; biases in both, in neither,
or in the output projection only: self_attention's `qkv_bias: false`), its MACs 4NC^2 + 2N^2 C.
Every intermediate value must be read inside the pattern only; anything else (a bias on the attention weights, a
mask, separate q and kv projections, another scale) is not this pattern and is imported op by op (and refused there
with its reason)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

_VIEWS = ("reshape", "view")


class Attention(NamedTuple):
    x: fx.Node  # the token sequence the projections read
    qkv: tuple[str, ...]  # the module paths of the qkv projection (or of the q, k and v projections)
    proj: str  # and of the output projection
    last: fx.Node  # the output projection's call
    nodes: frozenset[fx.Node]  # every node of the pattern
    num_heads: int
    bias: bool  # the output projection's
    qkv_bias: bool
    out_features: int  # the output projection's width (C, or another: CLIP's attention pool)


def _shape(values: dict[fx.Node, Any], n: Any) -> tuple[int, ...] | None:
    v = values.get(n) if isinstance(n, fx.Node) else None
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None


def _is(n: Any, *names: str) -> bool:
    """A call of a Tensor method or a torch function / operator named one of `names`."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_method":
        return str(n.target) in names
    if n.op == "call_function":
        return getattr(n.target, "__name__", None) in names
    return False


class _Matcher:
    def __init__(self, root: nn.Module, values: dict[fx.Node, Any]) -> None:
        self.root = root
        self.values = values
        self.nodes: set[fx.Node] = set()

    def module(self, n: Any, cls: type | tuple[type, ...]) -> nn.Module | None:
        if isinstance(n, fx.Node) and n.op == "call_module":
            m = self.root.get_submodule(str(n.target))
            if isinstance(m, cls):
                return m
        return None

    def only_user(self, n: fx.Node) -> fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 else None

    def through(self, n: fx.Node, skip: Callable[[fx.Node], bool]) -> fx.Node:
        """Follow n's single user while it is a pass-through (an nn.Identity, a dropout that does nothing)."""
        while True:
            user = self.only_user(n)
            if user is None or not skip(user):
                return n
            self.nodes.add(user)
            n = user

    def identity(self, n: fx.Node) -> bool:
        return self.module(n, nn.Identity) is not None and len(n.args) == 1

    def dropout(self, n: fx.Node) -> bool:
        m: Any = self.module(n, (nn.Identity, nn.Dropout))
        return m is not None and len(n.args) == 1 and (isinstance(m, nn.Identity) or m.p == 0 or not m.training)

    def match(self, first: fx.Node) -> Attention | None:
        qkv = self.module(first, nn.Linear)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if qkv is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 3:
            return None
        _, n_tokens, c = shape_in
        if qkv.in_features == c and qkv.out_features == c:  # separate q, k and v projections (qkv_separate)
            return self.separate(first, n_tokens, c)
        if qkv.in_features != c or qkv.out_features != 3 * c:
            return None
        self.nodes = {first}
        split = self.only_user(first)
        shape = _shape(self.values, split)
        if not _is(split, *_VIEWS) or shape is None or len(shape) != 5 or shape[:3] != (1, n_tokens, 3):
            return None
        assert split is not None
        heads, d = shape[3], shape[4]
        if heads * d != c:
            return None
        self.nodes.add(split)
        perm = self.only_user(split)
        if not _is(perm, "permute") or perm is None or _shape(self.values, perm) != (3, 1, heads, n_tokens, d):
            return None
        self.nodes.add(perm)
        qkv_nodes = self.unbound(perm)
        if qkv_nodes is None:
            return None
        q, k, v = (self.through(t, self.identity) for t in qkv_nodes)
        out = self.sdpa(q, k, v, d) or self.explicit(q, k, v, d)
        if out is None:
            return None
        return self.output(first, (str(first.target),), out, n_tokens, c, heads, d, qkv.bias is not None)

    def head_split(self, lin: fx.Node, x: fx.Node, n_tokens: int, c: int) -> tuple[fx.Node, int, int] | None:
        """A C -> C projection of x viewed per head: Linear(x).reshape(B, N, heads, d).transpose(1, 2)."""
        m = self.module(lin, nn.Linear)
        if m is None or len(lin.args) != 1 or lin.kwargs or lin.args[0] is not x or m.in_features != c \
                or m.out_features != c:
            return None
        split = self.only_user(lin)
        shape = _shape(self.values, split)
        if not _is(split, *_VIEWS) or split is None or shape is None or len(shape) != 4 or shape[:2] != (1, n_tokens):
            return None
        heads, d = shape[2], shape[3]
        t = self.only_user(split)
        dims = sorted(a % 4 for a in t.args[1:] if isinstance(a, int)) if t is not None else []
        if not _is(t, "transpose") or t is None or dims != [1, 2] or _shape(self.values, t) != (1, heads, n_tokens, d):
            return None
        self.nodes.update((lin, split, t))
        return t, heads, d

    def separate(self, first: fx.Node, n_tokens: int, c: int) -> Attention | None:
        """q, k and v from three C -> C projections of the same tokens (timm's AttentionPool2d with qkv_separate:
        CLIP's ResNets): the same computation and parameter count as one C -> 3C projection."""
        x = first.args[0]
        assert isinstance(x, fx.Node)
        lins = [u for u in x.users if self.module(u, nn.Linear) is not None and u is not first]
        biases = {self.module(u, nn.Linear).bias is not None for u in [first, *lins]}  # type: ignore[union-attr]
        if len(lins) != 2 or len(biases) != 1:
            return None
        for k_lin, v_lin in (lins, lins[::-1]):
            self.nodes = set()
            heads = [self.head_split(lin, x, n_tokens, c) for lin in (first, k_lin, v_lin)]
            if any(h is None for h in heads) or len({(h[1], h[2]) for h in heads if h is not None}) != 1:
                continue
            q, k, v = (self.through(h[0], self.identity) for h in heads if h is not None)
            _, h, d = heads[0]  # type: ignore[misc]
            out = self.sdpa(q, k, v, d) or self.explicit(q, k, v, d)
            if out is not None:
                return self.output(first, tuple(str(n.target) for n in (first, k_lin, v_lin)), out, n_tokens, c, h, d,
                                   biases == {True})
        return None

    def output(self, first: fx.Node, qkv: tuple[str, ...], out: fx.Node, n_tokens: int, c: int, heads: int, d: int,
               qkv_bias: bool) -> Attention | None:
        """The heads joined and projected, from the attention's output `out`."""
        back = self.only_user(out)
        if not (_is(back, "transpose") and back is not None and _shape(self.values, back) == (1, n_tokens, heads, d)):
            return None
        self.nodes.add(back)
        joined = self.only_user(back)
        if not (_is(joined, *_VIEWS) and joined is not None and _shape(self.values, joined) == (1, n_tokens, c)):
            return None
        self.nodes.add(joined)
        joined = self.through(joined, lambda n: self.identity(n) or self.dropout(n))
        last = self.only_user(joined)
        proj: Any = self.module(last, nn.Linear)
        if proj is None or last is None or proj.in_features != c or len(last.args) != 1:
            return None
        if qkv_bias and proj.bias is None:
            return None  # (self_attention's biases: both, neither, or the output projection's only)
        self.nodes.add(last)
        inside = self.nodes
        if any(u not in inside for n in inside - {last} for u in n.users):
            return None  # an intermediate value read outside the pattern
        x = first.args[0]
        assert isinstance(x, fx.Node)  # (its shape was read above)
        return Attention(x, qkv, str(last.target), last, frozenset(inside), heads, proj.bias is not None, qkv_bias,
                         int(proj.out_features))

    def unbound(self, perm: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node] | None:
        users = list(perm.users)
        if len(users) == 1 and _is(users[0], "unbind") and tuple(users[0].args[1:]) in ((), (0,)) \
                and users[0].kwargs.get("dim", 0) == 0:
            self.nodes.add(users[0])
            users = list(users[0].users)
        picked: dict[int, fx.Node] = {}
        for u in users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                return None
            picked[u.args[1]] = u
        if sorted(picked) != [0, 1, 2]:
            return None
        self.nodes.update(picked.values())
        return picked[0], picked[1], picked[2]

    def sdpa(self, q: fx.Node, k: fx.Node, v: fx.Node, d: int) -> fx.Node | None:
        call = self.only_user(q)
        if not (call is not None and call.op == "call_function" and call.target is F.scaled_dot_product_attention
                and tuple(call.args[:3]) == (q, k, v) and self.only_user(k) is call and self.only_user(v) is call):
            return None
        extra = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), call.args[3:]))
        extra.update(call.kwargs)
        scale = extra.pop("scale", None)
        if extra.pop("attn_mask", None) is not None or extra.pop("dropout_p", 0.0) != 0 \
                or extra.pop("is_causal", False) or extra \
                or not (scale is None or (isinstance(scale, float) and math.isclose(scale, d ** -0.5))):
            return None
        self.nodes.add(call)
        return call

    def scaled(self, n: fx.Node, d: int) -> fx.Node | None:
        """n times 1/sqrt(d), the user of n."""
        scaled = self.only_user(n)
        if not (_is(scaled, "mul", "mul_") and scaled is not None and len(scaled.args) == 2 and n in scaled.args):
            return None
        factor = scaled.args[1] if scaled.args[0] is n else scaled.args[0]
        if isinstance(factor, fx.Node) or not isinstance(factor, (int, float)) or not math.isclose(factor, d ** -0.5):
            return None
        return scaled

    def explicit(self, q: fx.Node, k: fx.Node, v: fx.Node, d: int) -> fx.Node | None:
        """(q / sqrt(d)) @ k^T, or (q @ k^T) / sqrt(d) (Visformer's), softmax over the keys, (dropout), @ v."""
        kt = self.only_user(k)
        dims = sorted(a % 4 for a in kt.args[1:] if isinstance(a, int)) if kt is not None else []
        if not (_is(kt, "transpose") and kt is not None and dims == [2, 3] and len(kt.args) == 3):
            return None
        first = self.only_user(q)
        product: fx.Node | None
        if _is(first, "matmul") and first is not None and tuple(first.args) == (q, kt):  # scaled after
            after = self.scaled(first, d)
            if after is None:
                return None
            product, scaled, scores = first, first, after
        else:
            before = self.scaled(q, d)
            if before is None:
                return None
            product = self.only_user(before)
            if not (_is(product, "matmul") and product is not None and tuple(product.args) == (before, kt)):
                return None
            scaled, scores = before, product
        if self.only_user(kt) is not product:
            return None
        weights = self.only_user(scores)
        dim = None
        if weights is not None and weights.op == "call_method" and weights.target == "softmax":
            dim = weights.args[1] if len(weights.args) > 1 else weights.kwargs.get("dim")
        elif weights is not None and weights.op == "call_function" and weights.target in (F.softmax, torch.softmax):
            dim = weights.args[1] if len(weights.args) > 1 else weights.kwargs.get("dim")
        if dim not in (-1, 3) or weights is None or len(weights.args) > 2 or set(weights.kwargs) - {"dim"}:
            return None
        self.nodes.update((scaled, kt, scores, weights))
        weights = self.through(weights, self.dropout)
        out = self.only_user(weights)
        if not (_is(out, "matmul") and out is not None and tuple(out.args) == (weights, v)
                and self.only_user(v) is out):
            return None
        self.nodes.add(out)
        return out


def match(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Attention | None:
    """The self-attention that starts at `first` (its fused qkv projection), or None."""
    return _Matcher(root, values).match(first)


class Context(NamedTuple):
    x: fx.Node  # the grid pooled
    conv: str  # the logits' 1x1 conv
    last: fx.Node  # the pooled context, C x 1 x 1
    nodes: frozenset[fx.Node]
    bias: bool


def match_context(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Context | None:
    """GCNet's attention pooling from its logits' conv (timm's GlobalContext, global_context.py), read as
    `context_pool`:

        attn = Conv2d(C, 1, 1)(x).reshape(B, 1, H * W).softmax(dim=-1).unsqueeze(3)     (B x 1 x HW x 1)
        context = (x.reshape(B, C, H * W).unsqueeze(1) @ attn).view(B, C, 1, 1)

    every intermediate value read inside the pattern only."""
    m = _Matcher(root, values)
    conv = m.module(first, nn.Conv2d)
    shape_in = _shape(values, first.args[0]) if first.args else None
    if conv is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 4 \
            or conv.out_channels != 1 or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 \
            or conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1):
        return None
    x = first.args[0]
    assert isinstance(x, fx.Node)
    _, c, h, w = shape_in
    p = h * w
    nodes = [first]
    flat = m.only_user(first)
    if not _is(flat, *_VIEWS) or flat is None or _shape(values, flat) != (1, 1, p):
        return None
    soft = m.only_user(flat)
    dim = None
    if soft is not None and soft.op == "call_method" and soft.target == "softmax":
        dim = soft.args[1] if len(soft.args) > 1 else soft.kwargs.get("dim")
    elif soft is not None and soft.op == "call_function" and soft.target in (F.softmax, torch.softmax):
        dim = soft.args[1] if len(soft.args) > 1 else soft.kwargs.get("dim")
    extra = {k: v for k, v in soft.kwargs.items() if k != "dim"} if soft is not None else {}
    if soft is None or dim not in (-1, 2) or len(soft.args) > 2 or extra.pop("dtype", None) is not None \
            or set(extra) - {"_stacklevel"}:
        return None
    col = m.only_user(soft)
    if not _is(col, "unsqueeze") or col is None or _shape(values, col) != (1, 1, p, 1):
        return None
    prod = m.only_user(col)
    if not (_is(prod, "matmul") and prod is not None and len(prod.args) == 2 and prod.args[1] is col):
        return None
    lhs = prod.args[0]
    if not (_is(lhs, "unsqueeze") and isinstance(lhs, fx.Node) and _shape(values, lhs) == (1, 1, c, p)
            and m.only_user(lhs) is prod):
        return None
    grid = lhs.args[0]
    if not (_is(grid, *_VIEWS) and isinstance(grid, fx.Node) and grid.args[0] is x and _shape(values, grid) == (1, c, p)
            and m.only_user(grid) is lhs):
        return None
    last = m.only_user(prod)
    if not (_is(last, *_VIEWS) and last is not None and _shape(values, last) == (1, c, 1, 1)):
        return None
    nodes += [flat, soft, col, grid, lhs, prod, last]
    inside = set(nodes)
    if any(u not in inside for n in nodes[:-1] for u in n.users):
        return None
    return Context(x, str(first.target), last, frozenset(inside), conv.bias is not None)


class GridAttention(NamedTuple):
    x: fx.Node  # the C x H x W grid
    qkv: str
    proj: str
    last: fx.Node  # the output projection's call (a 1x1 conv)
    nodes: frozenset[fx.Node]
    num_heads: int
    bias: bool
    qkv_bias: bool


def match_grid(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> GridAttention | None:
    """Self-attention on a channels-first grid with 1x1 convs for its projections (Visformer's Attention,
    timm/models/visformer.py), the same computation as `self_attention` on the grid's tokens:

        qkv = Conv2d(C, 3C, 1)(x).reshape(B, 3, heads, d, H * W).permute(1, 0, 2, 4, 3);  q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q(.contiguous()), k, v)   or   (q @ k^T) * d ** -0.5, softmax, @ v
        out = Conv2d(C, C, 1)(o.permute(0, 1, 3, 2).reshape(B, C, H, W))"""
    m = _Matcher(root, values)
    conv = m.module(first, nn.Conv2d)
    shape_in = _shape(values, first.args[0]) if first.args else None
    if conv is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 4:
        return None
    _, c, h, w = shape_in
    n = h * w

    def pointwise(cv: Any, out: int) -> bool:
        return (cv.in_channels, cv.out_channels, cv.kernel_size, cv.stride, cv.groups, cv.dilation) \
            == (c, out, (1, 1), (1, 1), 1, (1, 1)) and cv.padding in ((0, 0), "valid", "same")

    if not pointwise(conv, 3 * c):
        return None
    m.nodes = {first}
    split = m.only_user(first)
    shape = _shape(values, split)
    if not _is(split, *_VIEWS) or split is None or shape is None or len(shape) != 5 or shape[:2] != (1, 3) \
            or shape[4] != n:
        return None
    heads, d = shape[2], shape[3]
    if heads * d != c:
        return None
    perm = m.only_user(split)
    if not _is(perm, "permute") or perm is None or _shape(values, perm) != (3, 1, heads, n, d):
        return None
    m.nodes.update((split, perm))
    unbound = m.unbound(perm)
    if unbound is None:
        return None
    q, k, v = (m.through(t, lambda u: _is(u, "contiguous") and len(u.args) == 1) for t in unbound)
    out = m.sdpa(q, k, v, d) or m.explicit(q, k, v, d)
    if out is None:
        return None
    back = m.only_user(out)
    dims = tuple(a % 4 for a in back.args[1:] if isinstance(a, int)) if back is not None else ()
    if not (_is(back, "permute") and back is not None and dims == (0, 1, 3, 2)):
        return None
    grid = m.only_user(back)
    if not (_is(grid, *_VIEWS) and grid is not None and _shape(values, grid) == (1, c, h, w)):
        return None
    last = m.only_user(grid)
    proj = m.module(last, nn.Conv2d)
    if proj is None or last is None or len(last.args) != 1 or last.kwargs or not pointwise(proj, c):
        return None
    if conv.bias is not None and proj.bias is None:
        return None  # (self_attention's biases: both, neither, or the output projection's only)
    m.nodes.update((back, grid, last))
    if any(u not in m.nodes for node in m.nodes - {last} for u in node.users):
        return None
    x = first.args[0]
    assert isinstance(x, fx.Node)
    return GridAttention(x, str(first.target), str(last.target), last, frozenset(m.nodes), heads,
                         proj.bias is not None, conv.bias is not None)
