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

import operator
from typing import Any

import torch.fx as fx
from torch import nn

from archcalc.torch.importer.attention import _VIEWS, Attention, _is, _Matcher, _reads_shape, _shape


class _ConvAttentionMatcher(_Matcher):
    def match(self, first: fx.Node) -> Attention | None:
        conv = self.module(first, nn.Conv2d)
        shape_in = _shape(self.values, first.args[0]) if first.args else None
        if not self.pointwise(conv) or len(first.args) != 1 or first.kwargs or shape_in is None \
                or len(shape_in) != 4:
            return None
        assert isinstance(conv, nn.Conv2d)
        _, c, gh, gw = shape_in
        n = gh * gw
        self.nodes = {first}
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
