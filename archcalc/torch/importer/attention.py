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

The same attention with q and k of key_dim channels per head, v of value_dim and a learned bias on the scores
(EfficientFormer's Attention, timm/models/efficientformer.py; self_attention's `key_dim`, `value_dim`,
`score_bias`), its projection's output laid out per head:

    qkv = Linear(C, h (2 kd + vd))(x).reshape(B, N, h, 2 kd + vd).permute(0, 2, 1, 3)
    q, k, v = qkv.split([kd, kd, vd], dim=3)
    a = (q @ k.transpose(-2, -1)) * kd ** -0.5        (or (q * kd ** -0.5) @ k.transpose(-2, -1))
    a = a + table[:, index]                            (optional: table h x N, index N x N, N = H x W)
    out = Linear(h vd, C)((a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, h vd))

The index's values (|dy| W + |dx| on the grid) are checked when the module holds real buffers; on the meta device
only its shape is known.
Every intermediate value must be read inside the pattern only; anything else (a mask, separate q and kv
projections, another scale) is not this pattern and is imported op by op (and refused there with its reason)."""

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
    key_dim: int = 0  # per head, where not C / heads (the per-head layout)
    value_dim: int = 0
    table: str = ""  # the score bias's table (a parameter), with `index_buffer`: empty for none
    index_buffer: str = ""
    norm: bool = False  # LeViT's LinearNorm: a batch norm over the tokens after each projection
    act: str = "none"  # an activation before the output projection
    stride: int = 1  # queries from the grid subsampled by this stride (their own projection)
    out_features: int = 0  # the output projection's channels (where not C: LeViT's downsampling, CLIP's pool)
    grid: tuple[int, ...] = ()  # the tokens' grid the pattern assumed (strided queries, a reduced kv source)
    # the other modules whose parameters the op reads besides qkv and proj (norms, q's own projection; the kv
    # projection, the reducing conv and its norm; CLIP's k and v projections)
    more: tuple[str, ...] = ()
    conv: bool = False  # on a channels-first grid with 1 x 1 convs (levit_conv): to_tokens, it, to_grid
    # keys and values from a reduced sequence (_SplitMatcher): sr_ratio, kv_pool, kv_avgpool and its norm
    sr_ratio: int = 1
    kv_pool: int = 0
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
        if self.module(first, nn.Conv2d) is not None:
            return self.conv_form(first)
        qkv = self.module(first, nn.Linear)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if qkv is None or len(first.args) != 1 or first.kwargs or shape_in is None or len(shape_in) != 3:
            return None
        _, n_tokens, c = shape_in
        if qkv.in_features == c and qkv.out_features == c:  # separate q, k and v projections (qkv_separate)
            return self.separate(first, n_tokens, c)
        if qkv.in_features != c:
            return None
        if qkv.out_features != 3 * c or not _is(self.only_user(first), *_VIEWS) or len(
                _shape(self.values, self.only_user(first)) or ()) != 5:
            return self.per_head(first, qkv, n_tokens, c)
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
        return Attention(x, qkv[0], str(last.target), last, frozenset(inside), heads, proj.bias is not None, qkv_bias,
                         more=qkv[1:], out_features=int(proj.out_features))

    def linear_norm(self, linear: fx.Node) -> tuple[fx.Node, str] | None:
        """After a projection's call: LeViT's batch norm over its tokens (flatten(0, 1), BatchNorm1d, reshape_as
        or a view back) when there is one: (the last node, the norm's path, '' without)."""
        out = _shape(self.values, linear)
        users = list(linear.users)
        flat = next((u for u in users if _is(u, "flatten", "reshape", "view")), None)
        if out is None or flat is None or _shape(self.values, flat) != out[1:]:
            return (linear, "") if len(users) == 1 else None
        bn = self.only_user(flat)
        m = self.module(bn, nn.BatchNorm1d)
        back = self.only_user(bn) if bn is not None else None
        if m is None or bn is None or back is None or len(bn.args) != 1 or _shape(self.values, back) != out \
                or not _is(back, "reshape_as", "view_as", "reshape", "view"):
            return None
        if set(users) - {flat, back}:
            return None
        self.nodes.update((flat, bn, back))
        return back, str(bn.target)

    def per_head(self, first: fx.Node, qkv: nn.Module, n_tokens: int, c: int) -> Attention | None:
        """The per-head layout (EfficientFormer, LeViT): reshape to (B, N, h, 2 kd + vd), then the heads moved
        first and split into q, k, v, or split and each moved; LeViT's batch norms after the projections, its
        activation before the output projection, and its queries from a strided grid (their own projection; the
        first projection then makes k and v); the scale before or after Q K^T; an optional gathered bias."""
        self.nodes = {first}
        others: list[str] = []
        found = self.linear_norm(first)
        if found is None:
            return None
        end, norm = found
        if norm:
            others.append(norm)
        split = self.only_user(end)
        shape = _shape(self.values, split)
        if not _is(split, *_VIEWS) or split is None or shape is None or len(shape) != 4 or shape[:2] != (1, n_tokens):
            return None
        heads, per = shape[2], shape[3]
        self.nodes.add(split)
        after = self.only_user(split)
        if _is(after, "permute") and after is not None and _shape(self.values, after) == (1, heads, n_tokens, per):
            self.nodes.add(after)  # heads first, then split
            parts, moved = self.only_user(after), True
        else:
            parts, moved = after, False
        sizes = parts.args[1] if parts is not None and len(parts.args) > 1 else None
        dim = parts.kwargs.get("dim", parts.args[2] if len(parts.args) > 2 else 0) if parts is not None else None
        if not _is(parts, "split") or parts is None or not isinstance(sizes, (list, tuple)) or len(sizes) not in (
                2, 3) or not all(isinstance(z, int) for z in sizes) or dim not in (3, -1) or sum(sizes) != per \
                or (len(sizes) == 3 and sizes[0] != sizes[1]):
            return None
        kd, vd = int(sizes[0]), int(sizes[-1])
        self.nodes.add(parts)
        picked: dict[int, fx.Node] = {}
        for u in parts.users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                return None
            picked[u.args[1]] = u
        if sorted(picked) != list(range(len(sizes))):
            return None
        self.nodes.update(picked.values())
        tensors = [picked[i] for i in range(len(sizes))]
        if moved:  # k transposed by the scores' product
            kt = self.only_user(tensors[-2])
            kdims = sorted(a % 4 for a in kt.args[1:] if isinstance(a, int)) if kt is not None else []
            if not (_is(kt, "transpose") and kt is not None and kdims == [2, 3] and len(kt.args) == 3):
                return None
            self.nodes.add(kt)
            heads_v = tensors[-1]
        else:  # each moved: q and v (0, 2, 1, 3), k straight to K^T (0, 2, 3, 1)
            moves = [self.only_user(t) for t in tensors]
            want = [(0, 2, 1, 3)] * (len(tensors) - 2) + [(0, 2, 3, 1), (0, 2, 1, 3)]
            if not all(_is(mv, "permute") and mv is not None and tuple(mv.args[1:]) == w for mv, w in zip(moves, want)):
                return None
            self.nodes.update(m for m in moves if m is not None)
            tensors = [m for m in moves if m is not None]
            kt, heads_v = tensors[-2], tensors[-1]
        stride, q_path = 1, ""
        grid: tuple[int, ...] = ()
        if len(sizes) == 3:
            q = tensors[0]
        else:  # k and v only: q from the strided grid (LeViT's AttentionSubsample)
            queries = self.strided_queries(kt, first.args[0], heads, kd, c)
            if queries is None:
                return None
            q, stride, grid, q_path, q_norm = queries
            if bool(q_norm) != bool(norm):
                return None
            others += [q_path, *([q_norm] if q_norm else [])]
        out = self.biased(q, kt, heads_v, kd)
        if out is None:
            return None
        n_q = _shape(self.values, out)
        back = self.only_user(out)
        if n_q is None or not (_is(back, "transpose") and back is not None
                               and _shape(self.values, back) == (1, n_q[2], heads, vd)):
            return None
        joined = self.only_user(back)
        if not (_is(joined, *_VIEWS) and joined is not None
                and _shape(self.values, joined) == (1, n_q[2], heads * vd)):
            return None
        self.nodes.update((back, joined))
        act = "none"
        nxt = self.only_user(joined)
        if self.module(nxt, (nn.Hardswish, nn.SiLU)) is not None and nxt is not None and len(nxt.args) == 1:
            act = "hardswish" if self.module(nxt, nn.Hardswish) is not None else "silu"
            self.nodes.add(nxt)
            joined = nxt
        last = self.only_user(joined)
        proj = self.module(last, nn.Linear)
        if not isinstance(proj, nn.Linear) or last is None or len(last.args) != 1:
            return None
        if (isinstance(qkv, nn.Linear) and qkv.bias is not None) and proj.bias is None:
            return None
        self.nodes.add(last)
        found = self.linear_norm(last)
        if found is None or bool(found[1]) != bool(norm):
            return None
        end_proj, proj_norm = found
        if proj_norm:
            others.append(proj_norm)
        inside = self.nodes
        if any(u not in inside for n in inside - {end_proj} for u in n.users):
            return None
        x = first.args[0]
        assert isinstance(x, fx.Node)
        qkv_bias = isinstance(qkv, nn.Linear) and qkv.bias is not None
        return Attention(x, str(first.target), str(last.target), end_proj, frozenset(inside), heads,
                         proj.bias is not None, qkv_bias, kd, vd, *self.table, bool(norm), act, stride,
                         int(proj.out_features), grid, (q_path, *others) if q_path else tuple(others))

    @staticmethod
    def pointwise(m: nn.Module | None) -> bool:
        """A 1 x 1 conv without stride, padding, dilation or groups: a linear map of each position's channels."""
        return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1) \
            and tuple(m.padding) == (0, 0) and tuple(m.dilation) == (1, 1) and m.groups == 1 \
            and m.padding_mode == "zeros"

    def conv_norm(self, conv: fx.Node) -> tuple[fx.Node, str]:
        """After a 1 x 1 conv's call: its BatchNorm2d (LeViT's ConvNorm) when that is its one reader."""
        bn = self.only_user(conv)
        if self.module(bn, nn.BatchNorm2d) is not None and bn is not None and len(bn.args) == 1 and not bn.kwargs:
            self.nodes.add(bn)
            return bn, str(bn.target)
        return conv, ""

    def pointwise_grid(self, first: fx.Node) -> tuple[nn.Conv2d, int, int, int] | None:
        """`first` a 1 x 1 conv called on one B x C x H x W grid: the conv, C, H and W (and the pattern's nodes
        start at it); else None."""
        conv = self.module(first, nn.Conv2d)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if not self.pointwise(conv) or len(first.args) != 1 or first.kwargs or shape_in is None \
                or len(shape_in) != 4:
            return None
        assert isinstance(conv, nn.Conv2d)
        self.nodes = {first}
        _, c, gh, gw = shape_in
        return conv, c, gh, gw

    def conv_form(self, first: fx.Node) -> Attention | None:
        """LeViT's attention on a channels-first grid (levit_conv: timm's Attention and AttentionDownsample with
        use_conv): 1 x 1 convs and batch norms as the projections, q/k/v viewed (B, h, e, H W) and split on e,
        softmax(Q^T K * s + B) and V A^T, the result viewed as the grid again; the queries of the downsampling
        attention from an AvgPool2d(1, stride) of the grid."""
        read = self.pointwise_grid(first)
        if read is None:
            return None
        conv, c, gh, gw = read
        n = gh * gw
        others: list[str] = []
        end, norm = self.conv_norm(first)
        if norm:
            others.append(norm)
        view = self.only_user(end)
        # SHViT's single head (timm's shvit.py SHSA): the projection split on its channels, each part flattened
        # to (B, e, H W); no view to heads, no output projection (it follows a concatenation outside)
        flat = _is(view, "split")
        rank = 3 if flat else 4
        shape = _shape(self.values, end)
        if flat and shape is not None:
            heads, per, parts = 1, shape[1], view
        else:
            shape = _shape(self.values, view)
            if not (_is(view, *_VIEWS) and view is not None and shape is not None and len(shape) == 4
                    and shape[0] == 1 and shape[3] == n):
                return None
            heads, per = shape[1], shape[2]
            parts = self.only_user(view)
        sizes = parts.args[1] if parts is not None and len(parts.args) > 1 else None
        dim = parts.kwargs.get("dim", parts.args[2] if len(parts.args) > 2 else 0) if parts is not None else None
        if not _is(parts, "split") or parts is None or not isinstance(sizes, (list, tuple)) or len(sizes) not in (
                2, 3) or not all(isinstance(z, int) for z in sizes) or dim not in ((1, -3) if flat else (2, -2)) \
                or sum(sizes) != per or (len(sizes) == 3 and sizes[0] != sizes[1]) or (flat and len(sizes) != 3):
            return None
        kd, vd = int(sizes[0]), int(sizes[-1])
        self.nodes.update((view, parts))  # type: ignore[arg-type]
        picked: dict[int, fx.Node] = {}
        for u in parts.users:
            if not (u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)):
                return None
            i = u.args[1]
            if flat:  # (each part flattened: q, k and v as (B, e, H W))
                f = self.only_user(u)
                if not (_is(f, "flatten") and f is not None and _shape(self.values, f) == (1, sizes[i], n)):
                    return None
                self.nodes.add(u)
                u = f
            picked[i] = u
        if sorted(picked) != list(range(len(sizes))):
            return None
        self.nodes.update(picked.values())
        k, v = picked[len(sizes) - 2], picked[len(sizes) - 1]
        stride, q_path, qgrid = 1, "", (gh, gw)
        if len(sizes) == 3:
            qt = self.only_user(picked[0])
        else:  # q from AvgPool2d(1, stride) of the grid, its own 1 x 1 conv (and norm), viewed (B, h, kd, Nq)
            product = self.only_user(k)
            qt = product.args[0] if _is(product, "matmul") and product is not None else None  # type: ignore[assignment]
            qv = qt.args[0] if _is(qt, "transpose") and isinstance(qt, fx.Node) else None
            bn_or_conv = qv.args[0] if _is(qv, *_VIEWS) and isinstance(qv, fx.Node) else None
            q_norm = ""
            if self.module(bn_or_conv, nn.BatchNorm2d) is not None:
                assert isinstance(bn_or_conv, fx.Node)
                q_norm, q_conv = str(bn_or_conv.target), bn_or_conv.args[0]
            else:
                q_conv = bn_or_conv
            cm = self.module(q_conv, nn.Conv2d)
            pool = q_conv.args[0] if isinstance(q_conv, fx.Node) and q_conv.args else None
            pm = self.module(pool, nn.AvgPool2d)
            if not (self.pointwise(cm) and isinstance(pm, nn.AvgPool2d) and isinstance(pool, fx.Node)
                    and pool.args[0] is first.args[0] and pm.kernel_size in (1, (1, 1))
                    and pm.padding in (0, (0, 0)) and not pm.ceil_mode and isinstance(pm.stride, int)
                    and pm.stride > 1 and bool(q_norm) == bool(norm)):
                return None
            assert isinstance(q_conv, fx.Node) and isinstance(qv, fx.Node) and isinstance(bn_or_conv, fx.Node)
            stride, q_path = pm.stride, str(q_conv.target)
            qgrid = (-(-gh // stride), -(-gw // stride))
            others += [str(pool.target), q_path, *([q_norm] if q_norm else [])]
            if any(len(nd.users) != 1 for nd in (pool, q_conv, bn_or_conv, qv)):
                return None
            self.nodes.update((pool, q_conv, bn_or_conv, qv))
        if not (_is(qt, "transpose") and qt is not None and _shape(self.values, qt) == (
                1, *(() if flat else (heads,)), qgrid[0] * qgrid[1], kd)):
            return None
        scores = self.only_user(qt)
        if not (_is(scores, "matmul") and scores is not None and tuple(scores.args) == (qt, k)
                and self.only_user(k) is scores):
            return None
        scaled = self.only_user(scores)
        if not (_is(scaled, "mul", "mul_") and scaled is not None and self.factor(scaled, scores, kd)):
            return None
        self.nodes.update((qt, scores, scaled))
        self.table = ("", "")
        biased = self.score_bias_added(scaled)
        if biased is None:
            return None
        scaled = biased
        weights = self.only_user(scaled)
        if not (weights is not None and weights.op == "call_method" and weights.target == "softmax"
                and (weights.args[1:] in ((-1,), (rank - 1,)) or weights.kwargs in ({"dim": -1}, {"dim": rank - 1}))):
            return None
        wt = self.only_user(weights)
        wdims = sorted(a % rank for a in wt.args[1:] if isinstance(a, int)) if wt is not None else []
        out = self.only_user(wt) if wt is not None else None
        if not (_is(wt, "transpose") and wdims == [rank - 2, rank - 1] and _is(out, "matmul") and out is not None
                and tuple(out.args) == (v, wt) and self.only_user(v) is out):
            return None
        back = self.only_user(out)
        if not (_is(back, *_VIEWS) and back is not None
                and _shape(self.values, back) == (1, heads * vd, *qgrid)):
            return None
        self.nodes.update((weights, wt, out, back))  # type: ignore[arg-type]
        x = first.args[0]
        assert isinstance(x, fx.Node)
        if flat:  # no output projection: the joined heads are the result
            if any(u not in self.nodes for nd in self.nodes - {back} for u in nd.users):
                return None
            return Attention(x, str(first.target), "", back, frozenset(self.nodes),  # type: ignore[arg-type]
                             heads, False, conv.bias is not None, kd, vd, *self.table, bool(norm), "none", stride, 0,
                             (gh, gw), tuple(others), True)
        act, joined = "none", back
        nxt = self.only_user(back)
        if self.module(nxt, (nn.Hardswish, nn.SiLU)) is not None and nxt is not None and len(nxt.args) == 1:
            act = "hardswish" if self.module(nxt, nn.Hardswish) is not None else "silu"
            self.nodes.add(nxt)
            joined = nxt
        last = self.only_user(joined)
        proj = self.module(last, nn.Conv2d)
        if not self.pointwise(proj) or last is None or len(last.args) != 1:
            return None
        assert isinstance(proj, nn.Conv2d)
        if conv.bias is not None and proj.bias is None:
            return None
        self.nodes.add(last)
        end_proj, proj_norm = self.conv_norm(last)
        if bool(proj_norm) != bool(norm):
            return None
        if proj_norm:
            others.append(proj_norm)
        inside = self.nodes
        if any(u not in inside for nd in inside - {end_proj} for u in nd.users):
            return None
        x = first.args[0]
        assert isinstance(x, fx.Node)
        return Attention(x, str(first.target), str(last.target), end_proj, frozenset(inside), heads,
                         proj.bias is not None, conv.bias is not None, kd, vd, *self.table, bool(norm), act, stride,
                         int(proj.out_channels), (gh, gw), tuple(others), True)

    def strided_queries(self, kt: fx.Node, x: Any, heads: int, kd: int, c: int
                        ) -> tuple[fx.Node, int, tuple[int, ...], str, str] | None:
        """q of LeViT's AttentionSubsample, from the scores' product back to the tokens x: its heads moved first,
        a view to (B, Nq, h, kd), (a batch norm,) a Linear(C, h kd), a reshape to (B, Nq, C) of x viewed on its
        grid and sliced [:, ::s, ::s]. (q, the stride, the grid, q's projection, its norm's path.)"""
        product = self.only_user(kt)
        if not (_is(product, "matmul") and product is not None and len(product.args) == 2
                and product.args[1] is kt):
            return None
        q = product.args[0]
        scaled = q if _is(q, "mul", "mul_") else None
        if scaled is not None:
            assert isinstance(scaled, fx.Node)
            q = next((a for a in scaled.args if isinstance(a, fx.Node)), None)
        if not (_is(q, "permute") and isinstance(q, fx.Node) and tuple(q.args[1:]) == (0, 2, 1, 3)):
            return None
        view = q.args[0]
        if not (_is(view, *_VIEWS) and isinstance(view, fx.Node)):
            return None
        shape = _shape(self.values, view)
        if shape is None or len(shape) != 4 or shape[2:] != (heads, kd):
            return None
        end = view.args[0]
        norm = ""
        if _is(end, "reshape_as", "view_as", "reshape", "view") and isinstance(end, fx.Node):
            bn = end.args[0]
            flat = bn.args[0] if isinstance(bn, fx.Node) and bn.args else None
            linear = flat.args[0] if isinstance(flat, fx.Node) and flat.args else None
            if self.module(bn, nn.BatchNorm1d) is None or not isinstance(linear, fx.Node):
                return None
            if self.linear_norm(linear) != (end, str(bn.target)):  # type: ignore[union-attr]
                return None
            norm = str(bn.target)  # type: ignore[union-attr]
        else:
            linear = end
        proj = self.module(linear, nn.Linear)
        if proj is None or not isinstance(linear, fx.Node) or len(linear.users) != (2 if norm else 1) \
                or proj.out_features != heads * kd or proj.in_features != c:
            return None
        flat = linear.args[0]
        sliced = flat.args[0] if _is(flat, *_VIEWS) and isinstance(flat, fx.Node) else None
        grid_view = sliced.args[0] if isinstance(sliced, fx.Node) and sliced.op == "call_function" \
            and sliced.target is operator.getitem else None
        index = sliced.args[1] if grid_view is not None else None  # type: ignore[union-attr]
        grid = _shape(self.values, grid_view)
        if not (_is(grid_view, *_VIEWS) and isinstance(grid_view, fx.Node) and grid_view.args[0] is x
                and grid is not None and len(grid) == 4 and grid[3] == c and isinstance(index, tuple)
                and len(index) == 3 and index[0] == slice(None)):
            return None
        steps = {(i.start, i.stop, i.step) for i in index[1:] if isinstance(i, slice)}
        if len(steps) != 1 or len(index) != 3:
            return None
        start, stop, stride = steps.pop()
        if start not in (None, 0) or stop is not None or not isinstance(stride, int) or stride < 2:
            return None
        for node in (product, q, view, linear, flat, sliced, grid_view, *([scaled] if scaled is not None else [])):
            self.nodes.add(node)  # type: ignore[arg-type]
        if len(sliced.users) != 1 or len(flat.users) != 1 or len(grid_view.users) != 1:  # type: ignore[union-attr]
            return None
        return (scaled if scaled is not None else q), stride, grid[1:3], str(linear.target), norm

    def biased(self, q: fx.Node, kt: fx.Node, v: fx.Node, kd: int) -> fx.Node | None:
        """softmax(Q K^T scaled (+ table[:, index])) V, the scale on q or on the scores; sets self.table. `q` may
        be q times the scale already (found from the strided queries)."""
        self.table = ("", "")
        first: fx.Node | None = q if _is(q, "mul", "mul_") and kt in q.users else self.only_user(q)
        scaled: fx.Node | None
        if first is q or (_is(first, "mul", "mul_") and first is not None and self.factor(first, q, kd)):
            assert first is not None
            if first is q and not any(self.factor(first, a, kd) for a in first.args if isinstance(a, fx.Node)):
                return None
            scores = self.only_user(first)
            if not (_is(scores, "matmul") and scores is not None and tuple(scores.args) == (first, kt)):
                return None
            self.nodes.update((first, kt, scores))
            scaled = scores
        elif _is(first, "matmul") and first is not None and tuple(first.args) == (q, kt):  # (q @ k^T) * s
            scaled = self.only_user(first)
            if not (_is(scaled, "mul", "mul_") and scaled is not None and self.factor(scaled, first, kd)):
                return None
            self.nodes.update((first, kt, scaled))
        else:
            return None
        assert scaled is not None
        biased = self.score_bias_added(scaled)
        if biased is None:
            return None
        scaled = biased
        weights = self.only_user(scaled)
        dim = None
        if weights is not None and weights.op == "call_method" and weights.target == "softmax":
            dim = weights.args[1] if len(weights.args) > 1 else weights.kwargs.get("dim")
        elif weights is not None and weights.op == "call_function" and weights.target in (F.softmax, torch.softmax):
            dim = weights.args[1] if len(weights.args) > 1 else weights.kwargs.get("dim")
        if dim not in (-1, 3) or weights is None or len(weights.args) > 2 or set(weights.kwargs) - {"dim"}:
            return None
        self.nodes.add(weights)
        weights = self.through(weights, self.dropout)
        out = self.only_user(weights)
        if not (_is(out, "matmul") and out is not None and tuple(out.args) == (weights, v)
                and self.only_user(v) is out):
            return None
        self.nodes.add(out)
        return out

    @staticmethod
    def factor(n: fx.Node, x: fx.Node, kd: int) -> bool:
        """n is x times kd ** -0.5 (a constant)."""
        if len(n.args) != 2 or x not in n.args or n.kwargs:
            return False
        f = n.args[1] if n.args[0] is x else n.args[0]
        return not isinstance(f, fx.Node) and isinstance(f, (int, float)) and math.isclose(f, kd ** -0.5)

    def score_bias_added(self, scaled: fx.Node) -> fx.Node | None:
        """The scores, or the scores plus a gathered score bias (`table[:, index]`, sets self.table) where that add
        is their only reader; None where the add reads something else."""
        after = self.only_user(scaled)
        if not (_is(after, "add", "add_") and after is not None and len(after.args) == 2 and scaled in after.args):
            return scaled
        gathered = after.args[1] if after.args[0] is scaled else after.args[0]
        table = self.gathered(gathered, _shape(self.values, scaled))
        if table is None:
            return None
        self.nodes.update((after, gathered))  # type: ignore[arg-type]
        self.table = table
        return after

    def gathered(self, n: Any, scores: tuple[int, ...] | None) -> tuple[str, str] | None:
        """table[:, index], a parameter h x T gathered by an int64 buffer N x N (read from get_attr nodes), shaped
        as the scores' last three axes: the paths of the table and the index."""
        if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target is operator.getitem
                and len(n.args) == 2 and isinstance(n.args[1], tuple) and len(n.args[1]) == 2):
            return None
        table, (whole, index) = n.args[0], n.args[1]
        if not (isinstance(table, fx.Node) and table.op == "get_attr" and isinstance(index, fx.Node)
                and index.op == "get_attr" and whole == slice(None) and scores is not None):
            return None
        t, i = self.values.get(table), self.values.get(index)
        if not (isinstance(t, nn.Parameter) and isinstance(i, torch.Tensor) and i.dtype == torch.long
                and t.dim() == 2 and i.dim() == 2 and (t.shape[0], *i.shape) == scores[1:]
                and len(table.users) == 1 and len(index.users) == 1):
            return None
        return str(table.target), str(index.target)

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
                         proj.bias is not None, qlin.bias is not None, more=more, sr_ratio=sr_ratio, kv_pool=pool,
                         grid=grid, kv_avgpool=self.avg, kv_norm=self.avg_norm)

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
