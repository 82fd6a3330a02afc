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
    # keys and values from a reduced sequence (match_split): the module paths whose parameters the op reads
    # besides qkv and proj (the kv projection, the reducing conv, the norm), sr_ratio, kv_pool, the grid
    more: tuple[str, ...] = ()
    sr_ratio: int = 1
    kv_pool: int = 0
    grid: tuple[int, ...] = ()
    kv_avgpool: int = 0
    kv_norm: bool = True


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


def _dims(n: fx.Node) -> tuple[int, ...]:
    """The axes of a permute, or the two of a transpose, as given (constants only)."""
    args: list[Any] = list(n.args[1:]) or list(n.kwargs.get("dims", ()))  # type: ignore[arg-type]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return tuple(a for a in args) if all(isinstance(a, int) for a in args) else ()


def _swaps(n: Any, rank: int, first: int, second: int) -> bool:
    """A permute or transpose of a `rank`-D tensor that swaps axes `first` and `second` alone."""
    dims = _dims(n) if isinstance(n, fx.Node) else ()
    if _is(n, "transpose") or (isinstance(n, fx.Node) and n.target is torch.transpose):
        return len(dims) == 2 and sorted(d % rank for d in dims) == sorted((first, second))
    if _is(n, "permute") or (isinstance(n, fx.Node) and n.target is torch.permute):
        want = list(range(rank))
        want[first], want[second] = second, first
        return [d % rank for d in dims] == want
    return False


def _reads_shape(n: fx.Node) -> bool:
    """x.shape, x.size(...), x.dim(): what reads no values of x."""
    return (n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",)) or _is(n, "size", "dim")


class _SplitMatcher(_Matcher):
    """Separate q (C -> C) and kv (C -> 2C) projections, the kv one reading the tokens themselves or a reduced
    sequence made from their H x W grid (timm's pvt_v2.Attention and twins.GlobalSubSampleAttn: Wang et al. 2021,
    2022): the tokens laid out on the grid (permute(0, 2, 1) or transpose, reshape to C x H x W), optionally
    nn.AdaptiveAvgPool2d(p), an nn.Conv2d(C, C) of kernel = stride (1 after the pool), back to tokens, an
    nn.LayerNorm(C) and, after the pool, a GELU."""

    def match(self, first: fx.Node) -> Attention | None:
        qlin: Any = self.module(first, nn.Linear)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if qlin is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 3:
            return None
        _, n_tokens, c = shape_in
        if qlin.in_features != c or qlin.out_features != c:
            return None
        x = first.args[0]
        assert isinstance(x, fx.Node)
        self.nodes = {first}
        split = self.only_user(first)
        shape = _shape(self.values, split)
        if not _is(split, *_VIEWS) or split is None or shape is None or len(shape) != 4 or shape[:2] != (1, n_tokens):
            return None
        heads, d = shape[2], shape[3]
        if heads * d != c:
            return None
        q = self.only_user(split)
        if q is None or _shape(self.values, q) != (1, heads, n_tokens, d) or not (
                _swaps(q, 4, 1, 2) or (_is(q, "permute") and [a % 4 for a in _dims(q)] == [0, 2, 1, 3])):
            return None
        self.nodes.update((split, q))
        self.avg, self.avg_norm = 0, True
        kv_first, more, sr_ratio, pool, grid = self.reduction(x, first, c, n_tokens)
        if kv_first is None:
            return None
        if isinstance(kv_first, tuple):  # separate k and v projections (Next-ViT's E-MHSA)
            kv = self.separate(kv_first, qlin, c, heads, d)
            if kv is None:
                return None
            k, v = kv
            more = (str(kv_first[0].target), str(kv_first[1].target), *more)
            return self.finish(x, first, qlin, q, k, v, n_tokens, c, heads, d, more, sr_ratio, pool, grid)
        kvlin = self.module(kv_first, nn.Linear)
        if kvlin is None or len(kv_first.args) != 1 or kv_first.kwargs or kvlin.in_features != c \
                or kvlin.out_features != 2 * c or (kvlin.bias is None) != (qlin.bias is None):
            return None
        m_tokens = (_shape(self.values, kv_first.args[0]) or (0, 0))[1]
        self.nodes.add(kv_first)
        kv_split = self.only_user(kv_first)
        if not _is(kv_split, *_VIEWS) or kv_split is None \
                or _shape(self.values, kv_split) != (1, m_tokens, 2, heads, d):
            return None
        perm = self.only_user(kv_split)
        if not _is(perm, "permute") or perm is None or _shape(self.values, perm) != (2, 1, heads, m_tokens, d):
            return None
        self.nodes.update((kv_split, perm))
        kv = self.unbound(perm, 2)
        if kv is None:
            return None
        k, v = kv
        return self.finish(x, first, qlin, q, k, v, n_tokens, c, heads, d, (str(kv_first.target), *more), sr_ratio,
                           pool, grid)

    def separate(self, pair: tuple[fx.Node, fx.Node], qlin: Any, c: int, heads: int, d: int
                 ) -> tuple[fx.Node, fx.Node] | None:
        """k = Linear(C, C)(s).reshape(B, M, h, d).transpose(1, 2), and v alike from the same s."""
        out = []
        for call in pair:
            lin = self.module(call, nn.Linear)
            if lin is None or len(call.args) != 1 or call.kwargs or lin.in_features != c or lin.out_features != c \
                    or (lin.bias is None) != (qlin.bias is None):
                return None
            m_tokens = (_shape(self.values, call.args[0]) or (0, 0))[1]
            split = self.only_user(call)
            if not _is(split, *_VIEWS) or split is None or _shape(self.values, split) != (1, m_tokens, heads, d):
                return None
            heads_first = self.only_user(split)
            if heads_first is None or _shape(self.values, heads_first) != (1, heads, m_tokens, d) or not (
                    _swaps(heads_first, 4, 1, 2)
                    or (_is(heads_first, "permute") and [a % 4 for a in _dims(heads_first)] == [0, 2, 1, 3])):
                return None
            self.nodes.update((call, split, heads_first))
            out.append(heads_first)
        return out[0], out[1]

    def finish(self, x: fx.Node, first: fx.Node, qlin: Any, q: fx.Node, k: fx.Node, v: fx.Node,
               n_tokens: int, c: int, heads: int, d: int, more: tuple[str, ...], sr_ratio: int, pool: int,
               grid: tuple[int, ...]) -> Attention | None:
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
        if qlin.bias is not None and proj.bias is None:
            return None
        self.nodes.add(last)
        inside = self.nodes
        if any(u not in inside for n in inside - {last} for u in n.users):
            return None  # an intermediate value read outside the pattern
        return Attention(x, str(first.target), str(last.target), last, frozenset(inside), heads,
                         proj.bias is not None, qlin.bias is not None, more, sr_ratio, pool, grid, self.avg,
                         self.avg_norm)

    def averaged(self, n: fx.Node, c: int, n_tokens: int) -> Any:
        """The tokens as C x N (transpose), nn.AvgPool1d(k, k) over them, an optional nn.BatchNorm1d(C), back to
        tokens (transpose), read by the k and v projections (Next-ViT's E-MHSA): the pair of their calls, or None."""
        pool_call = self.only_user(n)
        pool: Any = self.module(pool_call, nn.AvgPool1d)
        if pool is None or pool_call is None or len(pool_call.args) != 1:
            return None
        (k,), (s,), (p,) = (tuple(v) if isinstance(v, (tuple, list)) else (v,)
                            for v in (pool.kernel_size, pool.stride, pool.padding))
        if k != s or p != 0 or k < 2:
            return None
        m_tokens = n_tokens // k  # (ceil_mode's last, shorter run would make one more: the shape below refuses it)
        self.nodes.update((n, pool_call))
        at = self.only_user(self.through(pool_call, self.identity))  # (a norm folded away: nn.Identity)
        norm: Any = self.module(at, nn.BatchNorm1d)
        paths: list[str] = []
        if norm is not None and at is not None:
            if norm.num_features != c or not norm.affine or not norm.track_running_stats or len(at.args) != 1:
                return None
            self.nodes.add(at)
            paths.append(str(at.target))
            at = self.only_user(at)
        back = at
        if back is None or not _swaps(back, 3, 1, 2) or _shape(self.values, back) != (1, m_tokens, c):
            return None
        self.nodes.add(back)
        readers = [u for u in back.users if not _reads_shape(u)]
        linears = [u for u in readers if self.module(u, nn.Linear) is not None]
        if len(readers) != 2 or len(linears) != 2:
            return None
        self.avg, self.avg_norm = k, norm is not None
        return (linears[0], linears[1]), tuple(paths)

    def unbound(self, perm: fx.Node, count: int = 3) -> Any:  # type: ignore[override]
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
        if sorted(picked) != list(range(count)):
            return None
        self.nodes.update(picked.values())
        return tuple(picked[i] for i in range(count))

    def reduction(self, x: fx.Node, first: fx.Node, c: int, n_tokens: int
                  ) -> tuple[fx.Node | None, tuple[str, ...], int, int, tuple[int, ...]]:
        """The kv projection's call and what reduces the sequence it reads: (call, the modules' paths, sr_ratio,
        kv_pool, the grid); (None, ...) when x's other reader is neither."""
        none: tuple[fx.Node | None, tuple[str, ...], int, int, tuple[int, ...]] = (None, (), 1, 0, ())
        others = [u for u in x.users if u is not first and not _reads_shape(u)]
        if len(others) == 2 and all(self.module(u, nn.Linear) is not None for u in others):
            return (others[0], others[1]), (), 1, 0, ()  # type: ignore[return-value]  # (k and v: separate)
        if len(others) != 1:
            return none
        n = others[0]
        if self.module(n, nn.Linear) is not None:
            return n, (), 1, 0, ()
        if not _swaps(n, 3, 1, 2) or _shape(self.values, n) != (1, c, n_tokens):
            return none
        if self.module(self.only_user(n), nn.AvgPool1d) is not None:
            found = self.averaged(n, c, n_tokens)
            return (found[0], found[1], 1, 0, ()) if found is not None else none
        self.nodes.add(n)
        view = self.only_user(n)
        shape = _shape(self.values, view)
        if not _is(view, *_VIEWS) or view is None or shape is None or len(shape) != 4 or shape[:2] != (1, c) \
                or shape[2] * shape[3] != n_tokens:
            return none
        grid = shape[2:]
        self.nodes.add(view)
        at = self.only_user(view)
        pool = 0
        paths: list[str] = []
        pooled = self.module(at, nn.AdaptiveAvgPool2d)
        if pooled is not None and at is not None:
            size = _shape(self.values, at)
            if size is None or size[2] != size[3] or len(at.args) != 1:
                return none
            pool = size[2]
            self.nodes.add(at)
            at = self.only_user(at)
        conv: Any = self.module(at, nn.Conv2d)
        k = 1 if pool else None
        if conv is None or at is None or len(at.args) != 1 or conv.in_channels != c or conv.out_channels != c \
                or conv.groups != 1 or conv.bias is None or tuple(conv.dilation) != (1, 1) \
                or tuple(conv.padding) != (0, 0) or conv.padding_mode != "zeros" \
                or conv.kernel_size[0] != conv.kernel_size[1] or tuple(conv.stride) != tuple(conv.kernel_size) \
                or (k is not None and conv.kernel_size[0] != k) or (k is None and conv.kernel_size[0] < 2):
            return none
        r = int(conv.kernel_size[0])
        self.nodes.add(at)
        paths.append(str(at.target))
        flat = self.only_user(at)
        m_tokens = (grid[0] // r) * (grid[1] // r) if not pool else pool * pool
        if not (_is(flat, *_VIEWS, "flatten") and flat is not None and _shape(self.values, flat) == (1, c, m_tokens)):
            return none
        tokens = self.only_user(flat)
        if not _swaps(tokens, 3, 1, 2) or tokens is None:
            return none
        self.nodes.update((flat, tokens))
        at = self.only_user(tokens)
        norm: Any = self.module(at, nn.LayerNorm)
        if norm is None or at is None or len(at.args) != 1 or tuple(norm.normalized_shape) != (c,) \
                or not norm.elementwise_affine or norm.bias is None or not math.isclose(norm.eps, 1e-5):
            return none
        self.nodes.add(at)
        paths.append(str(at.target))
        at = self.only_user(at)
        if pool:
            gelu: Any = self.module(at, nn.GELU)
            if gelu is None or at is None or gelu.approximate != "none" or len(at.args) != 1:
                return none
            self.nodes.add(at)
            at = self.only_user(at)
        if self.module(at, nn.Linear) is None or at is None:
            return none
        return at, tuple(paths), 1 if pool else r, pool, grid


def match(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Attention | None:
    """The self-attention that starts at `first` (its fused qkv projection, or its q projection beside a kv one
    that reads the tokens or a reduced sequence of them), or None."""
    return _Matcher(root, values).match(first) or _SplitMatcher(root, values).match(first)
