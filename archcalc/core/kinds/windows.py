"""Window attention and patch merging: the hierarchical vision transformers (Liu et al. 2021, "Swin Transformer:
Hierarchical Vision Transformer using Shifted Windows"; Liu et al. 2022, "Swin Transformer V2"; torchvision's
SwinTransformer).

Both work on a token sequence laid out on a 2-D grid (`Tokens.grid` = (H, W), N = H*W): torchvision holds it
B x H x W x C, channels last, the same memory as B x N x C. `window_attention` attends within windows of the grid
(shifted or not); `patch_merging` puts each 2 x 2 neighbourhood's channels side by side, halving the grid. The norm
and the linear reduction of Swin's patch merging are their own layers (`layernorm`, `linear`). The video Swin (Liu et
al. 2022, "Video Swin Transformer"; torchvision's SwinTransformer3d) is the same computation on a 3-D grid (T, H,
W): 3-D windows with a 3-D relative position table, and the patch merging of the last two axes (T kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.base import (
    ACTIVATION,
    Arg,
    BackwardMoment,
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

CPB_HIDDEN = 512  # Swin V2's continuous position bias MLP: Linear(2, 512), ReLU, Linear(512, heads, no bias)


def grid_input(kind: str, inp: Shape) -> Tokens:
    """A token sequence that is the whole of a 2-D grid (no class token): N = H * W; or of a 3-D one (the video
    Swin's T x H x W)."""
    t = token_input(kind, inp)
    if len(t.grid) not in (2, 3) or t[0] != numel(t.grid):
        raise LayerError(f"{kind} needs tokens laid out on a 2-D grid (N = H x W) or a 3-D one (N = T x H x W); "
                         f"its input is {t[0]} tokens on the grid {'x'.join(map(str, t.grid))}")
    return t


def _axes(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(value)
    if len(values) != rank:
        raise LayerError(f"a window or shift has one value per axis of the {rank}-D grid, not {len(values)}")
    return values


class Geometry:
    """The windows of one window_attention: padded grid, windows, tokens per window, shift in force."""

    def __init__(self, a: Mapping[str, Any], inp: Tokens) -> None:
        configured = _axes(a["window_size"], len(inp.grid))
        shift = _axes(a["shift_size"], len(inp.grid))
        # `shrink` (torchvision's video Swin, _get_window_and_shift_size): a window longer than the grid along an
        # axis is cut to the grid there; its table and index are still the configured window's
        self.window = tuple(min(w, g) for w, g in zip(configured, inp.grid)) if a.get("shrink") else configured
        self.grid = a.get("partition", "window") == "grid"
        self.padded = tuple(-(-g // w) * w for g, w in zip(inp.grid, self.window))
        # grid partition (MaxViT): the window_size is the G x G grid of a group; its tokens lie `stride` apart
        self.stride = tuple(p // w for p, w in zip(self.padded, self.window))
        # torchvision's shifted_window_attention: no shift along an axis whose window covers the padded grid
        self.shift = tuple(0 if w >= p else s for w, s, p in zip(self.window, shift, self.padded))
        self.tokens = numel(self.padded)  # Np
        self.m = numel(self.window)  # tokens per window
        self.windows = self.tokens // self.m
        self.table = numel(tuple(2 * w - 1 for w in configured))  # relative positions
        if a.get("position_bias") == "offsets":  # |dy|, |dx|: one per position of a window (LeViT's, TinyViT's)
            self.table = numel(configured)
        self.index = numel(configured) ** 2  # the int64 index buffer: the configured window's M^2
        self.heads = a["num_heads"]
        self.c = inp[1]
        self.u = self.tokens * self.c  # a padded N x C tensor
        # the output's channels F (`out_features`) and the attention's D: q, k, v and the joined heads (C; with
        # `expand_first`, F: timm's Attention2d / AttentionCl expand_first)
        self.f = a.get("out_features") or self.c
        self.d = self.f if a.get("expand_first") else self.c
        self.ud, self.uf = self.tokens * self.d, self.tokens * self.f  # padded N x D and N x F tensors
        self.scores = self.tokens * self.heads * self.m  # attention weights: windows x heads x M x M
        # the windows a view of the input: no padding, no shift, and windows that need no copy (partition_copies;
        # a grid partition's groups are strided: a view only when there is one group)
        self.in_place = self.padded == tuple(inp.grid) and not any(self.shift) and (
            self.windows == 1 if self.grid else not partition_copies(self))
        self.products = self.windows * self.m * self.m * self.d  # MACs of Q K^T, and of A V, per image
        self.bias = a.get("position_bias", "table")
        self.hidden = a.get("mlp_hidden") or CPB_HIDDEN  # position_bias mlp's hidden width (timm's rel_pos_dim)
        wh, ww = self.window if len(self.window) == 2 else (0, 0)
        # timm's RelPosBiasTf ("lookup"): two einsums with one-hot lookups, once per forward: 'nhw,ixh->nixw' and
        # 'nixw,jyw->nijxy' (n heads, h and w the table's rows and columns, i x and j y the window's positions)
        self.lookups = (self.heads * wh * wh * (2 * wh - 1) * (2 * ww - 1),
                        self.heads * wh * wh * ww * ww * (2 * ww - 1))


def partition_copies(g: Geometry) -> bool:
    """Whether cutting the padded grid into windows (B x n_1 x w_1 x ... x C permuted to B x n_1 x ... x w_1 x ...
    x C) moves data: the permuted axes, those of size 1 aside, are not in memory order (one window per image, or
    windows in a single row along the last axis, are views)."""
    counts = [p // w for p, w in zip(g.padded, g.window)]
    order = [(n, 2 * i) for i, n in enumerate(counts)] + [(w, 2 * i + 1) for i, w in enumerate(g.window)]
    positions = [at for size, at in order if size > 1]
    return positions != sorted(positions)


def crop_steps(g: Geometry, grid: Sequence[int], c: int) -> list[int]:
    """The gradient of the crop back to the padded grid, per sample: one slice_backward per cut axis, the last axis
    first, each a tensor with the axes from it on padded."""
    steps = []
    for axis in range(len(grid) - 1, -1, -1):
        if grid[axis] != g.padded[axis]:
            steps.append(numel((*grid[:axis], *g.padded[axis:])) * c)
    return steps


def einsum_fvcore(macs: int) -> int:
    """What fvcore counts for a torch.einsum of `macs` multiply-accumulates that is not one of the two forms it
    reads as a matmul: numpy's einsum_path "Optimized FLOP count" (2 per MAC), printed to 4 significant digits
    ('%.3e'), halved and floored (fvcore/nn/jit_handles.py, einsum_flop_jit)."""
    return int(float(f"{2 * macs:.3e}") // 2)


@register
class WindowAttention(Kind):
    name = "window_attention"
    synonyms = ("shifted_window_attention", "swin_attention", "w_msa", "sw_msa")
    prefix = "attn"
    autocast = "mixed"  # linear layers and products (bfloat16) and a softmax inside: not followed under autocast
    doc = ("Swin's (shifted) window multi-head self-attention over N x C tokens on an H x W grid (Liu et al. 2021; "
           "torchvision's ShiftedWindowAttention): the grid zero-padded to a multiple of the window, cyclically "
           "shifted by `shift_size` (torch.roll, with a mask of -100 between tokens from different regions; no "
           "shift along an axis whose window covers the padded grid), cut into windows of M tokens; per window "
           "q, k, v = x W_qkv (C -> 3C), per head softmax(Q K^T / sqrt(d) + B) V with B gathered from a learned "
           "(2w-1)^2 x heads table by an int64 index buffer (M^2), the heads joined and projected (C -> C); the "
           "same on a T x H x W grid with 3-D windows and a (2w_t-1)(2w_h-1)(2w_w-1) x heads table (the video "
           "Swin: `shrink`, windows cut to a grid shorter than them, torchvision's SwinTransformer3d); the "
           "windows merged, the shift undone, the padding cropped. Params 4C^2 (+4C with bias) + the table. MACs "
           "per image: padded tokens x 4C^2 + windows x 2 M^2 C. `v2` (Swin V2, ShiftedWindowAttentionV2): "
           "cosine attention (q and k normalised, times a learned logit scale per head), B = 16 sigmoid of an "
           "MLP (Linear(2, 512), ReLU, Linear(512, heads)) run once per forward on a buffer of relative "
           "coordinates ((2w-1)^2 x 2): (2w-1)^2 x 512 (2 + heads) MACs whatever the batch; the keys' qkv bias is "
           "held at zero (still parameters). FlopCounterMode and fvcore count every product (the MLP once). "
           "`partition: grid` (MaxViT's grid attention, Tu et al. 2022): each group is a window_size grid of "
           "tokens spread over the whole grid, stride H/w apart (no padding, no shift; the grid a multiple of the "
           "window): the same costs, another receptive field. `einsum` (torchvision's MaxViT): the two products "
           "written as torch.einsum, which fvcore counts from numpy's einsum_path, rounded to 4 digits. "
           "`position_bias` (v1): B from the table (default), or made once per forward by timm's RelPosMlp "
           "('mlp') or RelPosBiasTf ('lookup'), gathered from a w^2 x heads table of absolute offsets "
           "('offsets', TinyViT's), or none at all ('none': DaViT's windows, Twins-SVT's locally grouped "
           "attention, MobileViT's attention over each patch position: a grid partition of window_size = the "
           "grid / the patch); see the argument. `out_features` F (timm's Attention2d and "
           "AttentionCl with dim_out: CoAtNet's widening first blocks, MaxViT's parallel halves): proj C -> F, "
           "or with `expand_first` qkv C -> 3F and proj "
           "F -> F; params 3CD + DF (+3D + F) + the bias's, MACs padded tokens x (3CD + DF) + windows x 2 M^2 D "
           "(D the attention's width: C, or F with expand_first). The whole grid as one window "
           "(window_size = the grid) is attention over all H x W tokens with a relative position bias "
           "(CoAtNet's).")
    full_rule = ("2 per MAC; per padded token 3D + F bias additions (with bias; 4C by default); v1: 1 per element "
                 "of q (the scale); "
                 "v2: 3 per element of q and k (square, sum, divide) and 2 per head vector of q and k (square "
                 "root, clamp), 1 per attention weight (logit scale); per attention weight 1 (position bias), 1 "
                 "more when shifted (mask), 3 (softmax). Once per forward (v2): 2 per MAC of the MLP, 2 x 512 per "
                 "relative position (bias, ReLU), 4 per gathered bias (sigmoid, x16), 2 per head (clamp, exp); "
                 "position_bias mlp: 2 per MAC of the MLP, 2 x 512 + heads per relative position (biases, ReLU); "
                 "lookup: 2 per MAC of the two einsums; position_bias none: no position bias addition")
    tokens = True
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("window_size", "ints", 7, "the window (tokens) per grid axis (H, W; T, H, W)", aliases=("window",),
            minimum=1),
        Arg("shift_size", "ints", 0, "the cyclic shift per axis (Swin's odd blocks: half the window)",
            aliases=("shift",), minimum=0),
        Arg("bias", "bool", True, "learn biases in the qkv and output projections"),
        Arg("v2", "bool", False, "Swin V2: cosine attention, logit scale, continuous position bias MLP"),
        Arg("partition", "str", "window", "which tokens attend together: 'window', contiguous blocks of "
            "window_size (Swin's, MaxViT's block attention); 'grid', a window_size grid of tokens spaced evenly "
            "over the whole grid (MaxViT's grid attention: the grid a multiple of the window, no shift)",
            choices=("window", "grid")),
        Arg("einsum", "bool", False, "the two products are torch.einsum calls (torchvision's MaxViT): the same "
            "MACs; fvcore counts each from numpy's einsum_path report, rounded to 4 significant digits"),
        Arg("position_bias", "str", "table", "how v1's relative position bias B is made: 'table', gathered from a "
            "learned (2w-1)^2 x heads table by an index buffer (Swin's, timm's RelPosBias); 'mlp', an MLP "
            "(Linear(2, 512), ReLU, Linear(512, heads), biases) run once per forward on a buffer of log-spaced "
            "relative coordinates sign(d) ln(1 + |d|), gathered by the index (timm's RelPosMlp, the rmlp models); "
            "'lookup', a heads x (2w-1) x (2w-1) table reindexed by two einsums with one-hot lookup buffers, once "
            "per forward (timm's RelPosBiasTf, the tf models); 'none', no position bias: softmax(Q K^T / sqrt(d)) V "
            "within each window, no table, no index (timm's DaViT windows, Twins-SVT's locally grouped attention, "
            "MobileViT's attention over each patch position: a grid partition of window_size = the grid / the "
            "patch); "
            "'offsets', gathered from a learned w_h w_w x heads table by an index buffer (M^2) of the absolute "
            "offsets |dy| w_w + |dx| (LeViT-style attention biases: timm's TinyViT)",
            choices=("table", "mlp", "lookup", "none", "offsets")),
        Arg("mlp_hidden", "int", 512, "position_bias mlp: the MLP's hidden width (timm's rel_pos_dim: 384 in two "
            "of the rmlp CoAtNets)", minimum=1),
        Arg("out_features", "int", 0, "the output projection's width F (0: C, the input's): timm's Attention2d and "
            "AttentionCl with dim_out (CoAtNet's first block of a stage widens, maxvit_tiny_pm's parallel "
            "attentions halve); v1", aliases=("out",), minimum=0),
        Arg("expand_first", "bool", False, "q, k, v and the joined heads of out_features channels (qkv C -> 3F, proj "
            "F -> F: timm's expand_first, the non-rw CoAtNets); default C (qkv C -> 3C, proj C -> F)"),
        Arg("shrink", "bool", False, "a window longer than the grid along an axis is cut to the grid there (the "
            "video Swin, torchvision's _get_window_and_shift_size) instead of the grid being zero-padded to it; "
            "the table and index stay the configured window's"),
    )
    examples = (
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "window_size": 2}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "window_size": 2, "shift_size": 1}),
        Example(Tokens(30, 6, (5, 6)), {"num_heads": 3, "window_size": 3, "shift_size": 1, "bias": False}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 1, "window_size": 2}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "window_size": 4, "shift_size": 2}),
        Example(Tokens(256, 32, (16, 16)), {"num_heads": 4, "window_size": 4, "shift_size": 2, "v2": True}),
        Example(Tokens(192, 32, (12, 16)), {"num_heads": 1, "window_size": [4, 8], "v2": True}),
        Example(Tokens(48, 8, (6, 8)), {"num_heads": 2, "window_size": [3, 2], "partition": "grid"}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "window_size": 2, "partition": "grid", "einsum": True}),
        Example(Tokens(16, 6, (4, 4)), {"num_heads": 3, "window_size": 4, "partition": "grid", "bias": False}),
        Example(Tokens(256, 32, (16, 16)), {"num_heads": 4, "window_size": 4, "shift_size": 2,
                                            "position_bias": "mlp"}),
        Example(Tokens(36, 6, (6, 6)), {"num_heads": 3, "window_size": [2, 3], "partition": "grid",
                                        "position_bias": "lookup"}),
        Example(Tokens(36, 8, (6, 6)), {"num_heads": 2, "window_size": 3, "position_bias": "offsets"}),
        Example(Tokens(20, 6, (4, 5)), {"num_heads": 3, "window_size": [2, 3], "position_bias": "offsets",
                                        "bias": False}),
        Example(Tokens(64, 8, (8, 8)), {"num_heads": 1, "window_size": 4, "partition": "grid",
                                        "position_bias": "none"}),
        Example(Tokens(24, 6, (4, 6)), {"num_heads": 2, "window_size": [2, 3], "partition": "grid",
                                        "position_bias": "none", "bias": False}),
        Example(Tokens(96, 8, (4, 4, 6)), {"num_heads": 2, "window_size": [2, 4, 3], "shift_size": [1, 2, 1]}),
        Example(Tokens(60, 6, (3, 4, 5)), {"num_heads": 3, "window_size": [4, 2, 3], "shift_size": [2, 1, 1],
                                           "shrink": True}),
        Example(Tokens(20, 4, (4, 5)), {"num_heads": 2, "window_size": 7, "shift_size": 3, "shrink": True}),
        Example(Tokens(30, 6, (5, 6)), {"num_heads": 3, "window_size": 3, "position_bias": "none"}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 1, "window_size": 2, "position_bias": "none", "bias": False}),
        Example(Tokens(12, 8, (3, 4)), {"num_heads": 2, "window_size": [3, 4], "out_features": 12}),
        Example(Tokens(256, 16, (16, 16)), {"num_heads": 2, "window_size": 4, "out_features": 24,
                                            "expand_first": True, "position_bias": "mlp", "mlp_hidden": 384}),
        Example(Tokens(12, 4, (3, 4)), {"num_heads": 2, "window_size": [3, 4], "out_features": 6,
                                        "expand_first": True}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 1, "window_size": 2, "out_features": 4, "bias": False}),
        Example(Tokens(4, 2, (2, 2)), {"num_heads": 2, "window_size": 2, "out_features": 64}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "window_size": 2, "partition": "grid", "out_features": 4}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        t = grid_input(self.name, inp)
        width = (a.get("out_features") or t[1]) if a.get("expand_first") else t[1]  # the attention's channels
        if width % a["num_heads"]:
            raise LayerError(f"window_attention: {width} channels are not divisible by num_heads {a['num_heads']}")
        if a.get("mlp_hidden", CPB_HIDDEN) != CPB_HIDDEN and (a["v2"] or a["position_bias"] != "mlp"):
            raise LayerError("window_attention: mlp_hidden is position_bias mlp's (v1)")
        if (a.get("out_features") or a.get("expand_first")) and a["v2"]:
            raise LayerError("window_attention: out_features and expand_first are for v1 (timm's MaxxViT), not v2")
        if a["v2"] and (len(t.grid) == 3 or a["shrink"]):
            raise LayerError("window_attention: v2 (Swin V2's position bias MLP) on a 3-D grid or with shrink is "
                             "not modelled")
        if len(t.grid) == 3 and (a["partition"] != "window" or a["position_bias"] not in ("table", "none")
                                 or a["einsum"]):
            raise LayerError("window_attention: a grid partition, position_bias mlp, lookup or offsets and einsum "
                             "are for a 2-D grid (MaxViT, timm's MaxxViT, TinyViT); on a 3-D grid only windows with "
                             "a table or none")
        g = Geometry(a, t)
        if a["v2"] and g.bias != "table":
            raise LayerError("window_attention: v2 makes its own position bias (Swin V2's MLP); position_bias "
                             f"{g.bias} is for v1")
        if g.grid and (g.padded != tuple(t.grid) or any(g.shift)):
            raise LayerError(f"window_attention: a grid partition of window {'x'.join(map(str, g.window))} needs a "
                             f"grid that is a multiple of it, and no shift; the grid is "
                             f"{'x'.join(map(str, t.grid))}, the shift "
                             f"{'x'.join(map(str, _axes(a['shift_size'], len(t.grid))))}")
        if any(s >= w for s, w in zip(g.shift, g.window)):
            raise LayerError(f"window_attention: shift_size {'x'.join(map(str, g.shift))} must be smaller than the "
                             f"window {'x'.join(map(str, g.window))}")
        return Tokens(t[0], g.f, t.grid) if g.f != t[1] else inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        g = Geometry(a, grid_input(self.name, inp))
        c, h, d, f = g.c, g.heads, g.d, g.f
        macs = 3 * g.u * d + g.ud * f + 2 * g.windows * g.m * g.m * d  # 4 Np C^2 + 2 windows M^2 C by default
        bias = 3 * d + f if a["bias"] else 0
        params = 3 * c * d + d * f + bias
        mask = g.scores if any(g.shift) else 0
        full = 2 * macs + g.tokens * bias + g.scores + mask + 3 * g.scores
        fvcore = macs
        if a["einsum"]:  # each product as fvcore counts an einsum (torchvision's MaxViT)
            fvcore += 2 * (einsum_fvcore(g.products) - g.products)
        if not a["v2"] and g.bias == "mlp":  # timm's RelPosMlp: Linear(2, 512), ReLU, Linear(512, heads), once
            once = g.table * g.hidden * (2 + h)
            return Cost(params=params + 3 * g.hidden + g.hidden * h + h, buffers=2 * g.table,
                        int_buffers=g.m * g.m, macs=macs, fvcore=fvcore, macs_once=once, fvcore_once=once,
                        full=full + g.ud, full_once=2 * once + g.table * (2 * g.hidden + h))
        if not a["v2"] and g.bias == "lookup":  # timm's RelPosBiasTf: the table reindexed by two einsums, once
            wh, ww = g.window
            return Cost(params=params + g.table * h, buffers=wh * wh * (2 * wh - 1) + ww * ww * (2 * ww - 1),
                        macs=macs, fvcore=fvcore, macs_once=sum(g.lookups),
                        fvcore_once=sum(einsum_fvcore(e) for e in g.lookups), full=full + g.ud,
                        full_once=2 * sum(g.lookups))
        if not a["v2"] and g.bias == "none":  # no position bias: nothing added to the scores, no table, no index
            return Cost(params=params, macs=macs, fvcore=fvcore, full=full + g.ud - g.scores)
        if not a["v2"]:
            return Cost(params=params + g.table * h, int_buffers=g.index, macs=macs, fvcore=fvcore,
                        full=full + g.ud)
        once = g.table * CPB_HIDDEN * (2 + h)
        return Cost(params=params + h + 3 * CPB_HIDDEN + CPB_HIDDEN * h, buffers=2 * g.table,
                    int_buffers=g.index, macs=macs, fvcore=fvcore, macs_once=once, fvcore_once=once,
                    full=full + 6 * g.u + 4 * g.tokens * h + g.scores,
                    full_once=2 * once + 2 * CPB_HIDDEN * g.table + 4 * h * g.m * g.m + 2 * h)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        g = Geometry(a, grid_input(self.name, out))
        f, b = out[1], 1 if a["bias"] else 0
        c = d = f
        if a["out_features"]:  # the input's channels C from the parameters, less the position bias's (the same
            # on the output's C = F channels: 4F^2 + 4F b beside it)
            core = params - (self.cost(a, out, out).params - 4 * f * f - 4 * f * b)
            if a["expand_first"]:  # 3CF + F^2 + 4F b
                c = (core - f * f - 4 * f * b) // (3 * f)
            else:  # 3C^2 + C (F + 3b) + F b, D = C
                p = f + 3 * b
                c = d = (math.isqrt(p * p + 12 * (core - f * b)) - p) // 6
        qkv = (3 * d * c, 3 * d) if a["bias"] else (3 * d * c,)
        proj = (f * d, f) if a["bias"] else (f * d,)
        if a["v2"]:
            return (*qkv, *proj, g.heads, 2 * CPB_HIDDEN, CPB_HIDDEN, CPB_HIDDEN * g.heads)
        if g.bias == "mlp":
            return (*qkv, *proj, 2 * g.hidden, g.hidden, g.hidden * g.heads, g.heads)
        if g.bias == "none":
            return (*qkv, *proj)
        return (*qkv, *proj, g.table * g.heads)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # A token sees the tokens of its window: w consecutive positions per axis (a shifted window is contiguous
        # in the rolled grid; the mask keeps the wrapped-around regions apart). A window that covers the padded
        # grid sees the whole axis.
        g = Geometry(a, grid_input(self.name, inp))
        if g.grid:
            # A grid partition's token sees w positions `stride` apart along each axis: a span of (w - 1) x
            # stride + 1 (sparse: the positions between are not seen), the whole axis when stride is 1.
            return [RFStep(whole=True) if s == 1 else RFStep(kernel=(w - 1) * s + 1)
                    for w, s in zip(g.window, g.stride)]
        return [RFStep(whole=True) if w >= p else RFStep(kernel=w) for w, p in zip(g.window, g.padded)]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.WindowAttention), measured with saved_tensors_hooks: the windows
        # (the input of qkv: a copy, or the input itself when the windows are views of the unpadded, unshifted grid) and
        # the joined heads (out_proj's input), for the weights' gradients alone; the attention weights after the
        # softmax (windows x heads x M^2). v1: the scaled q and contiguous k and v (Np x C each: the module makes
        # every operand of the products contiguous, so this holds at batch 1 with one window too). v2: qkv (kept by
        # the norms of q and k), the normalised q and k and a copy of v, the norms and their clamped values (4 per
        # head vector)
        # and the cosine scores (kept by the logit scale's product); once per forward the logit scale's exp (heads),
        # the sigmoid of the gathered bias (heads x M^2) and the MLP's hidden layer ((2w-1)^2 x 512).
        # A shrunk window (`shrink`) gathers the table by the index's first M rows and columns: a copy (M^2 int64),
        # which the gather keeps, once per forward.
        g = Geometry(a, grid_input(self.name, inp))
        u, s = g.ud, g.scores  # (q, k, v and the joined heads: D channels; the windows: C)
        params = ((u, ACTIVATION),) if g.in_place else ((g.u + u, ACTIVATION),)
        if not a["v2"] and g.bias == "mlp":  # and once per forward the MLP's hidden layer ((2w-1)^2 x 512)
            return Saved(input_for_params=g.in_place, extra=((3 * u + s, ACTIVATION),), extra_for_params=params,
                         per_batch=((g.hidden * g.table, ACTIVATION),))
        if not a["v2"]:
            shrunk = ((g.m * g.m, 8),) if g.m * g.m != g.index and g.bias != "none" else ()
            return Saved(input_for_params=g.in_place, extra=((3 * u + s, ACTIVATION),), extra_for_params=params,
                         per_batch=shrunk)
        extra = 6 * u + 4 * g.tokens * g.heads + 2 * s
        once = g.heads + g.heads * g.m * g.m + CPB_HIDDEN * g.table
        return Saved(input_for_params=g.in_place, extra=((extra, ACTIVATION),), extra_for_params=params,
                     per_batch=((once, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Backward runs two products of each forward product's size, except the qkv projection's input gradient
        # (Np x 3C^2 per image) when the input needs none, and (v2) the MLP's first layer's input gradient: its
        # input is a buffer (2 x 512 per relative position, once); position_bias mlp the same; lookup: one product
        # per einsum (the gradient of the table's side; the one-hot lookups are buffers).
        cost = self.cost(a, inp, inp)
        batch = (macs - cost.macs_once) // cost.macs
        g = Geometry(a, grid_input(self.name, inp))
        grad_input = 3 * g.u * g.d * batch
        first = 2 * (CPB_HIDDEN if a["v2"] else g.hidden) * g.table if a["v2"] or g.bias == "mlp" else 0
        if not a["v2"] and g.bias == "lookup":
            first = sum(g.lookups)
        return grad_input, 2 * macs - grad_input - first

    def step_unfollowed_for(self, a: Mapping[str, Any], inp: Shape) -> str:
        # Followed for v1 (backward_moments, train_transient: measured by storage in real steps,
        # tests/test_window_attention_step.py).
        if a["v2"]:
            return "window_attention v2's backward (the cosine scores, the position bias MLP) is not modelled yet"
        if a["out_features"] or a["expand_first"]:
            return "window_attention with out_features or expand_first: its backward is not modelled yet"
        return ""

    def backward_moments(self, a: Mapping[str, Any], inp: Shape, out: Shape, input_grad: bool,
                         params_grad: bool) -> tuple[BackwardMoment, ...]:
        # The built module's backward, node by node (measured by storage in real steps on the CPU:
        # tests/test_window_attention_step.py), per sample, u = Np C (padded), E = N C, S the attention weights,
        # B = heads x M^2 the position bias's gradient (once). The crop's gradient back to the padded grid (one
        # slice_backward per cut axis), the roll's, the merge's copy; proj: its input's gradient (u) and its
        # parameters'; the joined heads' gradient laid out per head (u); A V: v's (u) and the weights' (S)
        # gradients; softmax: the scores' (S); the bias add: B; Q K^T: q's and k's (u each); the scale: q's (u);
        # unbind: stacked (3u), copied to qkv's layout (3u); qkv: its input's gradient (u) and its parameters';
        # then the partition's, the roll's and the padding's gradients (when the input needs one), and the table's
        # gradient (zeros, then index_put: the table's size each, once) while B is alive. Each node frees the
        # gradient it read and what it kept.
        if a["out_features"] or a["expand_first"]:
            return ()  # (not followed: step_unfollowed_for)
        g = Geometry(a, grid_input(self.name, inp))
        c, u, s = g.c, g.u, g.scores
        bias = c if a["bias"] else 0
        proj = c * c + bias if params_grad else 0
        qkv = 3 * c * c + 3 * bias if params_grad else 0
        table = g.table * g.heads if params_grad and g.bias != "none" else 0
        moments: list[BackwardMoment] = []
        state = {"extra": 0, "flowing": 0, "freed": False, "params": 0, "once": 0}

        def moment(elements: int) -> None:
            moments.append(BackwardMoment(state["extra"] + elements, state["params"], bool(state["freed"]),
                                          once=state["once"]))

        def step(size: int) -> None:  # a node makes `size` from the gradient flowing in, which it then frees
            moment(size)
            if state["flowing"]:
                state["extra"] -= state["flowing"]
            else:
                state["freed"] = True
            state["extra"] += size
            state["flowing"] = size

        for size in crop_steps(g, inp.grid, c):  # type: ignore[attr-defined]
            step(size)
        if any(g.shift):
            step(u)
        if partition_copies(g):
            step(u)
        state["params"] += proj
        step(u)  # proj: its input's gradient, its parameters'
        if params_grad:
            state["extra"] -= u  # the joined heads it kept
        if g.heads > 1:
            step(u)  # the gradient laid out per head
        moment(u + s)  # A V: v's and the weights' gradients
        state["extra"] += u + s - u - u  # the per-head copy and v freed
        moment(s)  # softmax: the scores' gradient
        state["extra"] += s - s - s  # the weights' gradient and the weights freed
        if params_grad and g.bias != "none":
            state["once"] = g.heads * g.m * g.m  # the position bias's gradient, summed over the windows
        moment(2 * u)  # Q K^T: the gradients of the scaled q and of k
        state["extra"] += 2 * u - s - 2 * u  # the scores' gradient, q and k freed
        # each of the next three replaces what it read by as much: the scaled q's gradient, then the three, then
        # the stacked (the copy stays, in `extra`)
        moment(u)  # the scale: q's gradient
        moment(3 * u)  # unbind: q's, k's and v's gradients stacked
        moment(3 * u)  # copied to qkv's layout
        state["params"] += qkv
        moment(u if input_grad else 0)  # qkv: its input's gradient, its parameters'
        state["extra"] -= 3 * u  # the gradient to qkv freed
        if params_grad and not g.in_place:
            state["extra"] -= u  # the windows it kept
        if input_grad:
            state["flowing"] = u
            state["extra"] += u
            if partition_copies(g):
                step(u)
            if any(g.shift):
                step(u)
            if tuple(g.padded) != tuple(inp.grid):  # type: ignore[attr-defined]
                step(inp[0] * c)
        if params_grad and g.bias != "none":
            state["params"] += table
            state["once"] += table
            moment(0)  # the table's gradient: zeros of its size, then index_put (the gradient), B alive
        return tuple(moments)

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # less its output (N x C), which the engine counts beside it. With u = Np x C and S the attention weights:
        # qkv (3u) throughout the attention; at Q K^T the scaled q, its contiguous copy (several heads), k's and
        # the scores (v2: the normalised q and k and, with several heads, their contiguous copies); at softmax(x) V
        # the scores, the weights, v's contiguous copy and the product. The padding, roll and window copies before,
        # and the merges after, are smaller.
        # With out_features or expand_first (u = Np x D, the attention's width), at the output projection the
        # product, the joined heads' copy (several heads) and the projection's output (Np x F).
        return ((max(self._moments(a, inp)) - out[0] * out[1], ACTIVATION),)

    def _moments(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, int]:
        """The most alive per image while the products run (the position bias beside them, once), and at the
        output projection (the bias freed)."""
        g = Geometry(a, grid_input(self.name, inp))
        u, s = g.ud, g.scores
        several = g.heads > 1
        if a["v2"]:
            return max((7 if several else 5) * u + s, 5 * u + 2 * s), 0
        return max((6 if several else 5) * u + s, 5 * u + 2 * s), (2 if several else 1) * u + g.uf

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # A training-mode forward (v1; measured by storage in real steps: tests/test_window_attention_step.py) is at
        # its most at A V: the kept windows, q, k, v and weights (4u + S), qkv (3u), the masked scores (S) and the
        # product (u); beyond what is kept (6u + S with the joined heads) and the output (E): 2u + S - E.
        if a["v2"]:
            return self.transient(a, inp, out)
        g = Geometry(a, grid_input(self.name, inp))
        return ((3 * g.ud + g.scores - out[0] * out[1], ACTIVATION),)

    def frozen_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...] | None:
        # Frozen (v1), the windows are freed once qkv is made and the joined heads made after A V: at A V, beyond
        # train_transient, one u (what is kept is then q, k, v and the weights alone).
        if a["v2"]:
            return None
        return ((Geometry(a, grid_input(self.name, inp)).u, ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The position bias (heads x M^2), made first from the weights and held until A V. (v2's MLP runs before,
        # on the weights alone: its hidden layer, (2w-1)^2 x 512, is the peak only of a network so small that
        # batch x the attention's temporaries are smaller; not modelled. The shift's mask, windows x M^2, is made
        # where the temporaries are 2 Np C fewer: not at the peak while M < 2C.)
        # (Not when the output projection is the most per image: the bias is freed before it; a batch at which the
        # products' moment with the bias is more is then not followed.)
        g = Geometry(a, grid_input(self.name, inp))
        if g.bias == "none":
            return ()
        products, projection = self._moments(a, inp)
        return ((g.heads * g.m * g.m, ACTIVATION),) if products >= projection else ()

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        g = Geometry(a, grid_input(self.name, inp))
        shift = f", shift {'x'.join(map(str, g.shift))}" if any(g.shift) else ""
        out = (f", {g.d} wide" if g.d != g.c else "") + (f", out {g.f}" if g.f != g.c else "")
        if g.grid:
            return (f"{'v2, ' if a['v2'] else ''}{g.heads} heads, {g.windows} grids of "
                    f"{'x'.join(map(str, g.window))}, stride {'x'.join(map(str, g.stride))}{out}")
        return (f"{'v2, ' if a['v2'] else ''}{g.heads} heads, {g.windows} windows of "
                f"{'x'.join(map(str, g.window))}{shift}{out}")


@register
class PatchMerging(Kind):
    name = "patch_merging"
    prefix = "merge"
    doc = ("Each 2 x 2 neighbourhood of a token grid as one token: N x C on an H x W grid -> (H/2 x W/2) x 4C "
           "(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] concatenated; torchvision's "
           "_patch_merging_pad, the grid zero-padded to even sizes first). A copy, no arithmetic. Swin's "
           "PatchMerging is this, `layernorm` and `linear: {out: 2C, bias: false}` (V2: the linear, then the "
           "norm). On a T x H x W grid the last two axes are merged and T is kept (the video Swin, torchvision's "
           "PatchMerging on B x T x H x W x C).")
    full_rule = "0 (a copy)"
    tokens = True
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(35, 6, (5, 7))), Example(Tokens(60, 4, (3, 4, 5))))

    def merged(self, inp: Shape) -> tuple[int, ...]:
        """The grid after the merge: the last two axes halved (rounded up), a leading T kept."""
        grid = grid_input(self.name, inp).grid
        return (*grid[:-2], *(-(-s // 2) for s in grid[-2:]))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        grid = self.merged(inp)
        return Tokens(numel(grid), 4 * inp[1], grid)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        grid = grid_input(self.name, inp).grid
        return [RFStep() for _ in grid[:-2]] + [RFStep(kernel=2, stride=2) for _ in grid[-2:]]

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # the zero-padded copy of an odd grid, read by the concatenation
        t = grid_input(self.name, inp)
        if t.grid[-2] % 2 or t.grid[-1] % 2:
            return ((out[0] * out[1], ACTIVATION),)
        return ()

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{'x'.join(map(str, grid_input(self.name, inp).grid))} -> {'x'.join(map(str, self.merged(inp)))}"


__all__ = ["PatchMerging", "WindowAttention", "einsum_fvcore"]
