"""Self-attention written out op by op, read as archcalc's `self_attention` by what it computes (not by the
module's class): timm's `Attention` (timm/layers/attention.py) and the blocks written like it.

The pattern, from the fused projection to the output projection, on N x C tokens:

    qkv = Linear(C, 3C)(x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)            (or qkv[0], qkv[1], qkv[2])
    q, k = q_norm(q), k_norm(k)        (nn.Identity: optional)
    o = F.scaled_dot_product_attention(q, k, v)                        (scale 1/sqrt(d), no mask, no dropout)
        or  (q * d ** -0.5) @ k.transpose(-2, -1), softmax over the keys, (dropout), @ v
    out = Linear(C, C)(o.transpose(1, 2).reshape(B, N, C))              (an nn.Identity norm between: optional)

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
    qkv: str  # the module paths of the two projections
    proj: str
    last: fx.Node  # the output projection's call
    nodes: frozenset[fx.Node]  # every node of the pattern
    num_heads: int
    bias: bool  # the output projection's
    qkv_bias: bool


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
        back = self.only_user(out)
        if not (_is(back, "transpose") and back is not None and _shape(self.values, back) == (1, n_tokens, heads, d)):
            return None
        self.nodes.add(back)
        joined = self.only_user(back)
        if not (_is(joined, *_VIEWS) and joined is not None and _shape(self.values, joined) == (1, n_tokens, c)):
            return None
        self.nodes.add(joined)
        joined = self.through(joined, self.identity)
        last = self.only_user(joined)
        proj = self.module(last, nn.Linear)
        if proj is None or last is None or proj.in_features != c or proj.out_features != c or len(last.args) != 1:
            return None
        if qkv.bias is not None and proj.bias is None:
            return None  # (self_attention's biases: both, neither, or the output projection's only)
        self.nodes.add(last)
        inside = self.nodes
        if any(u not in inside for n in inside - {last} for u in n.users):
            return None  # an intermediate value read outside the pattern
        x = first.args[0]
        assert isinstance(x, fx.Node)  # (its shape was read above)
        return Attention(x, str(first.target), str(last.target), last, frozenset(inside), heads,
                         proj.bias is not None, qkv.bias is not None)

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

    def explicit(self, q: fx.Node, k: fx.Node, v: fx.Node, d: int) -> fx.Node | None:
        scaled = self.only_user(q)
        if not (_is(scaled, "mul", "mul_") and scaled is not None and len(scaled.args) == 2 and q in scaled.args):
            return None
        factor = scaled.args[1] if scaled.args[0] is q else scaled.args[0]
        if isinstance(factor, fx.Node) or not isinstance(factor, (int, float)) or not math.isclose(factor, d ** -0.5):
            return None
        kt = self.only_user(k)
        dims = sorted(a % 4 for a in kt.args[1:] if isinstance(a, int)) if kt is not None else []
        if not (_is(kt, "transpose") and kt is not None and dims == [2, 3] and len(kt.args) == 3):
            return None
        scores = self.only_user(scaled)
        if not (_is(scores, "matmul") and scores is not None and tuple(scores.args) == (scaled, kt)
                and self.only_user(kt) is scores):
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


class Covariance(NamedTuple):
    """Cross-covariance attention (XCiT) found from its qkv projection: archcalc's `xca`."""

    x: fx.Node
    qkv: str
    proj: str
    temperature: str  # the learned temperature's parameter path (heads x 1 x 1)
    last: fx.Node
    nodes: frozenset[fx.Node]
    num_heads: int
    qkv_bias: bool


class _CovarianceMatcher(_Matcher):
    """XCiT's cross-covariance attention written out op by op (timm's XCA without fused attention, EdgeNeXt's
    CrossCovarianceAttn), by what it computes:

        qkv = Linear(C, 3C)(x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 4, 1)   (heads x d x N each)
        q, k, v = qkv.unbind(0)
        w = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * temperature   (heads x 1 x 1)
        o = w.softmax(dim=-1), (dropout), @ v
        out = Linear(C, C)(o.permute(0, 3, 1, 2).reshape(B, N, C))
    """

    def match_covariance(self, first: fx.Node) -> Covariance | None:
        qkv = self.module(first, nn.Linear)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if qkv is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 3:
            return None
        _, n_tokens, c = shape_in
        if qkv.in_features != c or qkv.out_features != 3 * c:
            return None
        self.nodes = {first}
        split = self.only_user(first)
        shape = _shape(self.values, split)
        if not _is(split, *_VIEWS) or split is None or shape is None or len(shape) != 5 \
                or shape[:3] != (1, n_tokens, 3) or shape[3] * shape[4] != c:
            return None
        heads, d = shape[3], shape[4]
        self.nodes.add(split)
        perm = self.only_user(split)
        if not _is(perm, "permute") or perm is None or _shape(self.values, perm) != (3, 1, heads, d, n_tokens):
            return None
        self.nodes.add(perm)
        qkv_nodes = self.unbound(perm)
        if qkv_nodes is None:
            return None
        q, k, v = qkv_nodes
        qn, kn = self.normalized(q), self.normalized(k)
        if qn is None or kn is None:
            return None
        kt = self.only_user(kn)
        dims = sorted(a % 4 for a in kt.args[1:] if isinstance(a, int)) if kt is not None else []
        if not (_is(kt, "transpose") and kt is not None and dims == [2, 3] and len(kt.args) == 3):
            return None
        scores = self.only_user(qn)
        if not (_is(scores, "matmul") and scores is not None and tuple(scores.args) == (qn, kt)
                and self.only_user(kt) is scores and _shape(self.values, scores) == (1, heads, d, d)):
            return None
        scaled = self.only_user(scores)
        if not (_is(scaled, "mul") and scaled is not None and len(scaled.args) == 2 and not scaled.kwargs
                and scores in scaled.args):
            return None
        temperature = scaled.args[1] if scaled.args[0] is scores else scaled.args[0]
        if not (isinstance(temperature, fx.Node) and temperature.op == "get_attr"
                and _shape(self.values, temperature) == (heads, 1, 1) and len(temperature.users) == 1):
            return None
        weights = self.only_user(scaled)
        dim = None
        if weights is not None and weights.op == "call_method" and weights.target == "softmax":
            dim = weights.args[1] if len(weights.args) > 1 else weights.kwargs.get("dim")
        if dim not in (-1, 3) or weights is None or len(weights.args) > 2 or set(weights.kwargs) - {"dim"}:
            return None
        self.nodes.update((kt, scores, scaled, weights))
        weights = self.through(weights, self.dropout)
        out = self.only_user(weights)
        if not (_is(out, "matmul") and out is not None and tuple(out.args) == (weights, v)
                and self.only_user(v) is out):
            return None
        self.nodes.add(out)
        back = self.only_user(out)
        if not (_is(back, "permute") and back is not None and _shape(self.values, back) == (1, n_tokens, heads, d)):
            return None
        self.nodes.add(back)
        joined = self.only_user(back)
        if not (_is(joined, *_VIEWS) and joined is not None and _shape(self.values, joined) == (1, n_tokens, c)):
            return None
        self.nodes.add(joined)
        last = self.only_user(joined)
        proj = self.module(last, nn.Linear)
        if proj is None or last is None or proj.in_features != c or proj.out_features != c or len(last.args) != 1 \
                or proj.bias is None:
            return None
        self.nodes.add(last)
        inside = self.nodes
        if any(u not in inside for n in inside - {last} for u in n.users):
            return None  # an intermediate value read outside the pattern
        x = first.args[0]
        assert isinstance(x, fx.Node)
        return Covariance(x, str(first.target), str(last.target), str(temperature.target), last, frozenset(inside),
                          heads, qkv.bias is not None)

    def normalized(self, t: fx.Node) -> fx.Node | None:
        """F.normalize(t, dim=-1) (p = 2, its eps), t's only reader: the L2 normalisation over the tokens."""
        call = self.only_user(t)
        if not (call is not None and call.op == "call_function" and call.target is F.normalize
                and call.args[:1] == (t,)):
            return None
        given = dict(zip(("p", "dim", "eps", "out"), call.args[1:]))
        given.update(call.kwargs)
        if given.get("p", 2.0) != 2 or given.get("dim", 1) not in (-1, 3) or given.get("out") is not None \
                or set(given) - {"p", "dim", "eps", "out"}:
            return None
        self.nodes.add(call)
        return call


def match_covariance(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Covariance | None:
    """The cross-covariance attention that starts at `first` (its fused qkv projection), or None."""
    return _CovarianceMatcher(root, values).match_covariance(first)


class ClassAttn(NamedTuple):
    """Class attention (CaiT's ClassAttn, in CaiT and XCiT) found from its `x[:, 0]`: archcalc's class_attention."""

    x: fx.Node
    projections: tuple[str, str, str, str]  # q, k, v and the output projection's module paths
    last: fx.Node
    nodes: frozenset[fx.Node]
    num_heads: int
    qkv_bias: bool


class _ClassAttnMatcher(_Matcher):
    """CaiT's class attention written out op by op (timm's ClassAttn), by what it computes:

        q = Linear(C, C)(x[:, 0]).unsqueeze(1).reshape(B, 1, heads, d).permute(0, 2, 1, 3)
        k = Linear(C, C)(x).reshape(B, N, heads, d).permute(0, 2, 1, 3)            (v likewise)
        o = F.scaled_dot_product_attention(q, k, v)  (scale 1/sqrt(d), no mask, no dropout)
            or (q * d ** -0.5) @ k.transpose(-2, -1), softmax over the keys, (dropout), @ v
        out = Linear(C, C)(o.transpose(1, 2).reshape(B, 1, C))
    """

    def match_class(self, take: fx.Node) -> ClassAttn | None:
        if not (take.op == "call_function" and take.target is operator.getitem and len(take.args) == 2
                and isinstance(take.args[0], fx.Node) and take.args[1] == (slice(None, None, None), 0)):
            return None
        x = take.args[0]
        shape_in = _shape(self.values, x)
        if shape_in is None or len(shape_in) != 3:
            return None
        _, n_tokens, c = shape_in
        self.nodes = {take}
        q_call = self.only_user(take)
        q_lin = self.module(q_call, nn.Linear)
        if q_lin is None or q_call is None or not self.square(q_lin, q_call, c):
            return None
        self.nodes.add(q_call)
        q = self.only_user(q_call)
        if _is(q, "unsqueeze") and q is not None:
            self.nodes.add(q)
            q = self.only_user(q)
        shape = _shape(self.values, q)
        if not _is(q, *_VIEWS) or q is None or shape is None or len(shape) != 4 or shape[:2] != (1, 1) \
                or shape[2] * shape[3] != c:
            return None
        heads, d = shape[2], shape[3]
        self.nodes.add(q)
        q = self.only_user(q)
        if not _is(q, "permute") or q is None or _shape(self.values, q) != (1, heads, 1, d):
            return None
        self.nodes.add(q)
        out, k, v = self.sdpa_call(q, d) or self.products(q, d) or (None, None, None)
        if out is None or k is None or v is None:
            return None
        calls = [q_call]
        for t in (k, v):
            found = self.projected(t, x, c, n_tokens, heads, d)
            if found is None:
                return None
            calls.append(found)
        back = self.only_user(out)
        if not (_is(back, "transpose") and back is not None and _shape(self.values, back) == (1, 1, heads, d)):
            return None
        self.nodes.add(back)
        joined = self.only_user(back)
        if not (_is(joined, *_VIEWS) and joined is not None and _shape(self.values, joined) == (1, 1, c)):
            return None
        self.nodes.add(joined)
        last = self.only_user(joined)
        proj = self.module(last, nn.Linear)
        if proj is None or last is None or not self.square(proj, last, c) or proj.bias is None:
            return None
        self.nodes.add(last)
        biases = {self.module(call, nn.Linear).bias is not None for call in calls}  # type: ignore[union-attr]
        if len(biases) != 1:
            return None
        inside = self.nodes
        if any(u not in inside for n in inside - {last} for u in n.users):
            return None
        paths = tuple(str(call.target) for call in calls) + (str(last.target),)
        return ClassAttn(x, paths, last, frozenset(inside), heads, biases.pop())  # type: ignore[arg-type]

    @staticmethod
    def square(m: Any, call: fx.Node, c: int) -> bool:
        return m.in_features == c and m.out_features == c and len(call.args) == 1 and not call.kwargs

    def projected(self, t: fx.Node, x: fx.Node, c: int, n: int, heads: int, d: int) -> fx.Node | None:
        """Back from k (or v) laid out per head: a permute of a view of a Linear(C, C) of x; its module call."""
        if not (_is(t, "permute") and _shape(self.values, t) == (1, heads, n, d) and self.only_user(t) is not None):
            return None
        view = t.args[0]
        if not (isinstance(view, fx.Node) and _is(view, *_VIEWS) and _shape(self.values, view) == (1, n, heads, d)
                and self.only_user(view) is t):
            return None
        call = view.args[0]
        lin = self.module(call, nn.Linear)
        if lin is None or not isinstance(call, fx.Node) or not self.square(lin, call, c) or call.args[0] is not x \
                or self.only_user(call) is not view:
            return None
        self.nodes.update((t, view, call))
        return call

    def sdpa_call(self, q: fx.Node, d: int) -> tuple[fx.Node, fx.Node, fx.Node] | None:
        call = self.only_user(q)
        if not (call is not None and call.op == "call_function" and call.target is F.scaled_dot_product_attention
                and len(call.args) >= 3 and call.args[0] is q):
            return None
        k, v = call.args[1], call.args[2]
        if not (isinstance(k, fx.Node) and isinstance(v, fx.Node)):
            return None
        if self.sdpa(q, k, v, d) is None:
            return None
        return call, k, v

    def products(self, q: fx.Node, d: int) -> tuple[fx.Node, fx.Node, fx.Node] | None:
        scaled = self.only_user(q)
        scores = self.only_user(scaled) if scaled is not None else None
        if scores is None or not _is(scores, "matmul") or len(scores.args) != 2:
            return None
        kt = scores.args[1]
        k = kt.args[0] if isinstance(kt, fx.Node) and kt.args else None
        weights = self.only_user(scores)
        weights = self.through(weights, self.dropout) if weights is not None else None
        out = self.only_user(weights) if weights is not None else None
        v = out.args[1] if out is not None and _is(out, "matmul") and len(out.args) == 2 else None
        if not (isinstance(k, fx.Node) and isinstance(v, fx.Node)):
            return None
        found = self.explicit(q, k, v, d)
        return (found, k, v) if found is not None else None


def match_class(root: nn.Module, values: dict[fx.Node, Any], take: fx.Node) -> ClassAttn | None:
    """The class attention that starts at `take` (x[:, 0], its query's token), or None."""
    return _ClassAttnMatcher(root, values).match_class(take)
