"""SwiftFormer's efficient additive attention written out op by op (timm's EfficientAdditiveAttention,
timm/models/swiftformer.py), read as archcalc's `additive_attention` by what it computes, on N x C tokens:

    q = F.normalize(Linear(C, C)(x), dim=-1)
    k = F.normalize(Linear(C, C)(x), dim=-1)
    a = F.normalize(q @ w_g * C ** -0.5, dim=1)         (w_g a C x 1 parameter; the scores normalised over tokens)
    g = torch.sum(a * q, dim=1, keepdim=True)
    out = Linear(C, C)(Linear(C, C)(g * k) + q)

Every intermediate value must be read inside the pattern only (q by the scores, the weighting and the residual);
anything else is not this pattern and is imported op by op (and refused there with its reason)."""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archcalc.torch.importer.attention import _is, _Matcher, _shape


class Additive(NamedTuple):
    x: fx.Node  # the tokens both projections read
    projections: tuple[str, ...]  # to_query, to_key, proj, final (module paths)
    vector: str  # w_g, the scores' learned vector (a parameter's path)
    last: fx.Node  # the final projection's call
    nodes: frozenset[fx.Node]


def _normalize(n: Any, dim: int) -> bool:
    """F.normalize(t, p=2, dim=dim) with its default eps, of one tensor."""
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target is F.normalize):
        return False
    given: dict[str, Any] = dict(zip(("p", "dim", "eps"), n.args[1:]), **n.kwargs)
    return bool(given.get("p", 2.0) == 2.0) and given.get("dim", 1) == dim and given.get("eps", 1e-12) == 1e-12 \
        and given.get("out") is None


def _other(n: fx.Node, one: fx.Node) -> Any:
    """The other operand of a binary op whose one operand is `one`, or None."""
    if len(n.args) != 2 or n.kwargs:
        return None
    a, b = n.args
    return b if a is one else a if b is one else None


class _AdditiveMatcher(_Matcher):
    def linear(self, n: Any, c: int) -> bool:
        m: Any = self.module(n, nn.Linear)
        return m is not None and m.in_features == c and m.out_features == c and m.bias is not None \
            and len(n.args) == 1 and not n.kwargs

    def step(self, n: fx.Node, test: Any) -> fx.Node | None:
        """n's single user, if it passes `test`."""
        user = self.only_user(n)
        if user is None or not test(user):
            return None
        self.nodes.add(user)
        return user

    def match_additive(self, first: fx.Node) -> Additive | None:
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if shape_in is None or len(shape_in) != 3:
            return None
        c = shape_in[2]
        x: Any = first.args[0]
        if not self.linear(first, c):
            return None
        q = self.step(first, lambda n: _normalize(n, -1))
        keys = [u for u in x.users if u is not first and self.linear(u, c)]
        if q is None or len(keys) != 1:
            return None
        k = self.step(keys[0], lambda n: _normalize(n, -1))
        if k is None or len(q.users) != 3 or len(k.users) != 1:
            return None
        scores: Any = next((u for u in q.users if _is(u, "matmul") and u.args[0] is q and len(u.args) == 2), None)
        vector = scores.args[1] if scores is not None else None
        if not isinstance(vector, fx.Node) or vector.op != "get_attr" \
                or tuple(self.values[vector].shape) != (c, 1):
            return None
        scaled: Any = self.step(scores, lambda n: _is(n, "mul") and isinstance(_other(n, scores), float)
                           and math.isclose(_other(n, scores), c ** -0.5))
        norm: Any = scaled and self.step(scaled, lambda n: _normalize(n, 1))
        weighted: Any = norm and self.step(norm, lambda n: _is(n, "mul") and _other(n, norm) is q)
        pooled: Any = weighted and self.step(weighted, lambda n: n.target in (torch.sum, "sum") and n.args[1:] in (
            (), (1,)) and dict(n.kwargs, **dict(zip(("dim",), n.args[1:]))) == {"dim": 1, "keepdim": True})
        gated: Any = pooled and self.step(pooled, lambda n: _is(n, "mul") and _other(n, pooled) is k)
        proj: Any = gated and self.step(gated, lambda n: self.linear(n, c))
        added: Any = proj and self.step(proj, lambda n: n.target in (operator.add, torch.add) and _other(n, proj) is q)
        final: Any = added and self.step(added, lambda n: self.linear(n, c))
        if not final or {u for u in q.users} != {scores, weighted, added}:
            return None
        self.nodes.update((first, q, keys[0], k, scores))
        return Additive(x, tuple(str(n.target) for n in (first, keys[0], proj, final)), str(vector.target), final,
                        frozenset(self.nodes))


def match(root: nn.Module, values: dict[fx.Node, Any], first: fx.Node) -> Additive | None:
    """The additive attention whose query projection is `first`, or None."""
    return _AdditiveMatcher(root, values).match_additive(first)
