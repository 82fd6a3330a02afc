"""Global query attention: the odd blocks of GCViT (Hatamizadeh et al. 2023, "Global Context Vision Transformers";
timm's gcvit.py, WindowAttentionGlobal with use_global).

Swin's window attention whose queries are not projected from the window: they are one window-sized grid of tokens
made once per stage by a network of its own (GCViT's FeatureBlock: MBConv blocks and max pools of the stage's input)
and shared by every window of the image; the keys and values come from the window (one projection C -> 2C). That is
an attention with two inputs, which an archcalc layer reads as one token sequence: the query grid's M tokens put
before the grid's (a token `concat`, which joins on the grid's), [queries ; tokens]. Its own kind: neither its
input nor its projections are window_attention's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.base import (
    ACTIVATION,
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    RFStep,
    Saved,
    Shape,
    Tokens,
    numel,
    register,
)
from archcalc.core.kinds.tokens import token_input


class _Geometry:
    """The windows of one global query attention on its [queries ; tokens] input."""

    def __init__(self, a: Mapping[str, Any], inp: Shape) -> None:
        t = token_input("global_query_attention", inp)
        ws = a["window_size"]
        self.window = (ws, ws) if isinstance(ws, int) else tuple(ws)
        self.m = numel(self.window)
        if len(t.grid) != 2 or len(self.window) != 2:
            raise LayerError("global_query_attention needs tokens on a 2-D grid and a 2-D window")
        self.grid = tuple(t.grid)
        self.n = numel(self.grid)
        if t[0] != self.m + self.n:
            raise LayerError(f"global_query_attention reads the window's {self.m} query tokens put before the "
                             f"grid's {self.n} ({'x'.join(map(str, self.grid))}): {self.m + self.n} tokens, not "
                             f"{t[0]}")
        if any(g % w for g, w in zip(self.grid, self.window)):
            raise LayerError(f"global_query_attention: the grid {'x'.join(map(str, self.grid))} is not a multiple "
                             f"of the window {'x'.join(map(str, self.window))} (no padding is modelled)")
        self.c, self.heads = t[1], a["num_heads"]
        if self.c % self.heads:
            raise LayerError(f"global_query_attention: {self.c} channels are not divisible by num_heads "
                             f"{self.heads}")
        self.windows = self.n // self.m
        self.u = self.n * self.c  # an N x C tensor
        self.scores = self.windows * self.heads * self.m * self.m  # N x heads x M
        self.table = (2 * self.window[0] - 1) * (2 * self.window[1] - 1)


@register
class GlobalQueryAttention(Kind):
    name = "global_query_attention"
    synonyms = ("gcvit_attention", "window_attention_global")
    prefix = "gattn"
    autocast = "mixed"
    doc = ("GCViT's global query attention (Hatamizadeh et al. 2023; timm's WindowAttentionGlobal): the input is "
           "[queries ; tokens], M = w_h w_w query tokens (a window-sized grid made elsewhere, joined before the "
           "grid's tokens by a token `concat`) then the N = H x W tokens of the grid (a multiple of the window); "
           "the grid cut into windows of M tokens; per window k, v = x W_kv (C -> 2C), the queries the same M "
           "tokens for every window (not projected); per head softmax(Q K^T / sqrt(d) + B) V with B gathered from "
           "a learned (2w_h-1)(2w_w-1) x heads table by an int64 index (M^2: Swin's, timm's RelPosBias); the heads "
           "joined and projected (C -> C, bias); the windows merged: N x C. Params 3C^2 + C (+ 2C with qkv_bias) "
           "+ the table; MACs per image N x 3C^2 + windows x 2 M^2 C. FlopCounterMode and fvcore count the two "
           "linears and the two products.")
    full_rule = ("2 per MAC; per token 3C bias additions (C without qkv_bias); 1 per element of the repeated "
                 "queries (the scale, N x C); per attention weight 1 (position bias) and 3 (softmax)")
    tokens = True
    step_unfollowed = "global_query_attention's backward is not modelled yet"
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("window_size", "ints", 7, "the window (tokens) per grid axis (H, W): the query grid's size",
            aliases=("window",), minimum=1),
        Arg("qkv_bias", "bool", True, "learn a bias in the key/value projection (the output projection always has "
            "one)"),
    )
    examples = (
        Example(Tokens(4 + 16, 8, (4, 4)), {"num_heads": 2, "window_size": 2}),
        Example(Tokens(6 + 24, 6, (4, 6)), {"num_heads": 3, "window_size": [2, 3], "qkv_bias": False}),
        Example(Tokens(9 + 9, 8, (3, 3)), {"num_heads": 1, "window_size": 3}),
        Example(Tokens(4 + 64, 16, (8, 8)), {"num_heads": 4, "window_size": 2}),
        Example(Tokens(16 + 16, 8, (4, 4)), {"num_heads": 4, "window_size": 4}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        g = _Geometry(a, inp)
        return Tokens(g.n, g.c, g.grid)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        g = _Geometry(a, inp)
        c = g.c
        macs = 3 * g.u * c + 2 * g.windows * g.m * g.m * c
        bias = 3 * c if a["qkv_bias"] else c
        full = 2 * macs + g.n * bias + g.u + g.scores + 3 * g.scores
        return Cost(params=3 * c * c + bias + g.table * g.heads, int_buffers=g.m * g.m, macs=macs, fvcore=macs,
                    full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[1]
        ws = a["window_size"]
        wh, ww = (ws, ws) if isinstance(ws, int) else tuple(ws)
        kv = (2 * c * c, 2 * c) if a["qkv_bias"] else (2 * c * c,)
        heads = (params - 3 * c * c - (3 * c if a["qkv_bias"] else c)) // ((2 * wh - 1) * (2 * ww - 1))
        return (*kv, c * c, c, (2 * wh - 1) * (2 * ww - 1) * heads)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # A token sees its window's tokens (and the query grid, made elsewhere from the whole stage input: not
        # followed here, as a merge's other input is not).
        g = _Geometry(a, inp)
        return [RFStep(whole=True) if w >= s else RFStep(kernel=w) for w, s in zip(g.window, g.grid)]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules_gcvit.GlobalQueryAttention), as window_attention's v1: the
        # windows (kv's input) and the joined heads (proj's input) for the weights' gradients; the scaled queries,
        # k and v (N x C each) and the attention weights.
        g = _Geometry(a, inp)
        return Saved(input_for_params=False, extra=((3 * g.u + g.scores, ACTIVATION),),
                     extra_for_params=((2 * g.u, ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # less its output (N x C), which the engine counts beside it; with u = N x C and S the attention weights:
        # at Q K^T kv (2u), the scaled queries (u), the scores (S), the repeated queries (u, a copy when there are
        # several windows) and, with several heads, the contiguous copies of q and k that the product makes (2u);
        # at the softmax the scores, the biased scores and the weights (3S) beside kv; at A V the scores, the
        # weights, kv, the product (u) and, with several heads, v's contiguous copy (u).
        g = _Geometry(a, inp)
        u, s = g.u, g.scores
        several = int(g.heads > 1)
        products = (3 + int(g.windows > 1) + 2 * several) * u + s
        return ((max(products, 2 * u + 3 * s, (3 + several) * u + 2 * s) - u, ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The position bias (heads x M^2), made first from the table and held until softmax.
        g = _Geometry(a, inp)
        return ((g.heads * g.m * g.m, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        g = _Geometry(a, inp)
        return f"{g.heads} heads, {g.windows} windows of {'x'.join(map(str, g.window))}, global queries"


__all__ = ["GlobalQueryAttention"]
