"""Token sequences and attention: the layout of vision transformers (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words"; torchvision's VisionTransformer).

A token sequence is N tokens of C channels, per-sample shape (N, C) as a `Tokens` (torch: B x N x C). A patch
embedding is a conv with kernel = stride followed by `to_tokens`; `to_grid` lays the tokens out on a grid again.
On tokens, `linear` acts on each token's channels and `layernorm` normalizes each token over its channels (their
own kinds, in dense.py and norm.py); element-wise kinds (activations, dropout) take either layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.base import (
    ACCUMULATE,
    ACTIVATION,
    STATISTICS,
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
    is_tokens,
    numel,
    register,
    spatial_rank,
    tokens_like,
)
from archcalc.core.kinds.norm import normalize_full


def token_input(kind: str, inp: Shape) -> Tokens:
    if not isinstance(inp, Tokens):
        raise LayerError(f"{kind} needs a token sequence (N x C); its input is the grid {'x'.join(map(str, inp))}: "
                         "use `to_tokens` first")
    return inp


@register
class ToTokens(Kind):
    name = "to_tokens"
    prefix = "tokens"
    doc = ("Flatten the spatial axes of a C x H x W (or C x L, C x D x H x W) grid into N = H*W tokens of C "
           "channels: N x C (torchvision's ViT: reshape to C x N, permute). A conv with kernel = stride before it "
           "is a patch embedding. A view: no copy, no arithmetic.")
    full_rule = "0 (a view)"
    alias = True
    # Its backward is a view of its output's gradient (transposed back, the token axis split into the grid's), not
    # a crop's copy into zeros: measured by tests/test_property_tokens.py
    passes_gradient = True
    examples = (Example((8, 4, 4)), Example((6, 5)), Example((4, 2, 3, 3)))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return Tokens(numel(inp[1:]), inp[0], inp[1:])

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        return inp[0] > 1 and numel(inp[1:]) > 1  # the transposed view is not contiguous

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep() for _ in inp[1:]]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{'x'.join(map(str, inp[1:]))} -> {numel(inp[1:])} tokens"


@register
class ToGrid(Kind):
    name = "to_grid"
    prefix = "grid"
    doc = ("Lay N x C tokens out on a grid of the given `size` again: C x H x W (N = H*W; without `size`, the grid "
           "the tokens are on, as after Swin's patch merging). A view (transpose, then split N into the axes: no "
           "copy), not contiguous when the tokens were; no arithmetic.")
    full_rule = "0 (a view)"
    alias = True
    passes_gradient = True  # its backward is a view of its output's gradient, as to_tokens'
    tokens = True
    args = (Arg("size", "ints_or_none", None, "the grid's size per spatial axis (H, W); default: the tokens' grid",
                minimum=1),)
    examples = (Example(Tokens(16, 8, (4, 4)), {"size": [4, 4]}), Example(Tokens(6, 3, (6,)), {"size": [2, 3]}),
                Example(Tokens(12, 5, (3, 4))))

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        n = token_input(self.name, inp)[0]
        size = a["size"]
        if size is None:  # the grid the tokens are on (not after a class token: N is then one more)
            size = inp.grid  # type: ignore[attr-defined]
        sizes = (size,) if isinstance(size, int) else tuple(size)
        if numel(sizes) != n:
            raise LayerError(f"to_grid size {'x'.join(map(str, sizes))} holds {numel(sizes)} tokens, not {n}")
        return sizes

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return (inp[1], *self.sizes(a, inp))

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        # Channels-last storage seen channels first. (Right after to_tokens the view is the contiguous grid again;
        # counted as strided too, which can only add a copy to a following layer that needs a contiguous input.)
        return inp[0] > 1 and inp[1] > 1

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{inp[0]} tokens -> {'x'.join(map(str, self.sizes(a, inp)))}"


@register
class ClassToken(Kind):
    name = "class_token"
    prefix = "cls"
    doc = ("A learned token of C channels put before the sequence: N x C -> (N+1) x C (ViT's class token; "
           "torchvision: expand over the batch, torch.cat). Params C. A copy of the sequence (the concatenation), "
           "no arithmetic. `count: T` puts T learned tokens (PiT's distilled models: 2), T x C params; `mean` puts "
           "the tokens' mean instead (CLIP's attention pool), no params.")
    full_rule = "0 (a copy); with mean: 1 addition per element and 1 division per channel (the mean)"
    tokens = True
    passes_gradient = True  # CatBackward0 hands the sequence a view of the output's gradient (narrow), no copy
    args = (Arg("mean", "bool", False, "the token is the mean of the tokens, not learned (no parameters; CLIP's "
                "attention pool: torch.cat([x.mean(1, keepdim=True), x], dim=1))"),
            Arg("count", "int", 1, "learned tokens put first (PiT's distilled models: 2, the class and the "
                "distillation token); with mean, 1", minimum=1))
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(5, 3, (5,))),
                Example(Tokens(16, 8, (4, 4)), {"mean": True}), Example(Tokens(6, 4, (2, 3)), {"count": 2}))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        n, c = token_input(self.name, inp)
        if a["mean"] and a["count"] != 1:
            raise LayerError("class_token: the mean of the tokens is one token (count 1)")
        return tokens_like(inp, n + a["count"], c)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        if a["mean"]:  # N additions (from zero, as `mean`) and a division per channel; FlopCounterMode and fvcore
            return Cost(full=numel(inp) + inp[1])  # count a mean 0
        return Cost(params=a["count"] * inp[1])

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params,) if params else ()

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((inp[1], ACTIVATION),) if a["mean"] else ()  # the mean token, read by the concatenation

    def step_unfollowed_for(self, a: Mapping[str, Any], inp: Shape) -> str:
        # The mean's gradient is spread over the tokens and added to the sequence's (a new tensor, not the view
        # a learned token's concatenation hands back): not modelled.
        return "the mean token's backward is not followed in the step's timeline" if a["mean"] else ""

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"+{a['count']} {'mean ' if a['mean'] else ''}token{'s' if a['count'] > 1 else ''} of {inp[1]}"


@register
class PositionEmbedding(Kind):
    name = "pos_embed"
    prefix = "pos"
    doc = ("A learned position embedding added to the tokens: one value per token and channel, N x C parameters "
           "(torchvision's ViT: `input + self.pos_embedding`). fvcore and FlopCounterMode count the add as 0.")
    full_rule = "1 addition per element"
    tokens = True
    passes_gradient = True  # x + pos: AddBackward0 returns the output's gradient for x (as `bias`)
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(5, 3, (5,))))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        token_input(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=numel(inp), full=numel(inp))

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params,)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{inp[0]}x{inp[1]}"


@register
class TakeToken(Kind):
    name = "take_token"
    prefix = "take"
    doc = ("One token's channels as the sample's vector: N x C -> C, x[:, index] (ViT's class token before its "
           "head: torchvision's `x[:, 0]`); with `stop`, the tokens index to stop - 1 as a sequence: N x C -> "
           "(stop - index) x C on the same grid, x[:, index:stop] (XCiT's class-attention blocks: `x[:, 0:1]`, "
           "`x[:, 1:]`). A view (not contiguous across the batch), no arithmetic.")
    full_rule = "0 (a view)"
    alias = True
    tokens = True
    args = (Arg("index", "int", 0, "which token (0: the class token); with stop, the first one", minimum=0),
            Arg("stop", "ints_or_none", None, "one past the last token taken: a sequence of tokens (x[:, index:stop]), "
                "not one token's vector", minimum=1))
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(5, 3, (5,)), {"index": 4}),
                Example(Tokens(17, 8, (4, 4)), {"index": 1, "stop": 17}),
                Example(Tokens(17, 8, (4, 4)), {"stop": 1}))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        n, c = token_input(self.name, inp)
        if a["index"] >= n:
            raise LayerError(f"take_token index {a['index']} is past the last of {n} tokens")
        stop = a["stop"]
        if stop is None:
            return (c,)
        if not isinstance(stop, int) or not a["index"] < stop <= n:
            raise LayerError(f"take_token stop {stop} must be one number after index {a['index']} and at most the "
                             f"{n} tokens")
        return tokens_like(inp, stop - a["index"], c)

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        # Several tokens but not all: rows of the batch's samples cannot be read as one matrix in place.
        return a["stop"] is not None and 1 < out[0] < inp[0]

    scatters_gradient = True  # select_backward: zeros of the sequence's size, the token's gradient written in

    # Not `strided`: the rows of x[:, i] are evenly spaced, which a matrix product reads in place (its leading
    # dimension): the head's linear keeps this view, whose storage is the whole sequence, for its weight's gradient
    # (measured by `archcalc validate` on the ViT specs: no copy).

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        if a["stop"] is not None:
            return f"tokens {a['index']}:{a['stop']} of {inp[0]}"
        return f"token {a['index']} of {inp[0]}"


@register
class SelfAttention(Kind):
    name = "self_attention"
    synonyms = ("mha", "multihead_attention", "attention", "msa")
    prefix = "attn"
    doc = ("Multi-head self-attention over N x C tokens (Vaswani et al. 2017; nn.MultiheadAttention's parameters): "
           "q, k, v = x W_in (C -> 3C), per head (d = C / heads) softmax(Q K^T / sqrt(d)) V, the heads joined and "
           "projected (C -> C, or C -> F with `out_features`). Params 4C^2 (+ 4C with bias; + C with the output "
           "projection's only; with F: 3C^2 + CF, + 3C + F). MACs 3NC^2 (qkv) + N^2 C (Q K^T) + N^2 C (A V) + "
           "NC^2 (projection; NCF) = 4NC^2 + 2N^2 C per image, independent of the number of heads. Built as "
           "torch's math path (every product a counted op), or with `kernel: fused` as "
           "F.scaled_dot_product_attention's fused kernel, which keeps no N x N weights (docs/tokens.md, "
           "Memory); what FlopCounterMode and fvcore count for torch's own nn.MultiheadAttention and "
           "scaled_dot_product_attention is in docs/conventions.md. With `sr_ratio`, `kv_pool` or `kv_avgpool` "
           "k and v come from M reduced tokens (PVT, Twins, Next-ViT; separate q (C -> C) and kv (C -> 2C) "
           "projections, the same parameters): MACs 2NC^2 + 2MC^2 + 2NMC + the reducing conv's (docs/tokens.md).")
    full_rule = ("2 per MAC, 1 per bias element (4C per token, or C; 3C + F or F with out_features), 1 per "
                 "element of q for the 1/sqrt(d) scale, "
                 "3 per attention weight (softmax: exp, add to the sum, divide); reduced keys and values: the "
                 "biases per token they are added to, the conv's bias, the layer norm's rule, the pool's sums and "
                 "divisions, 5 per GELU element, 4 per eval-mode batch norm element")
    tokens = True
    autocast = "mixed"  # linear layers and products (bfloat16) and a softmax inside: not followed under autocast
    contiguous_recorded_input = True  # in_proj keeps a contiguous copy of a strided view (to_tokens') it reads
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("bias", "bool", True, "learn biases in the qkv and output projections"),
        Arg("kernel", "str", "math", "what runs softmax(Q K^T / sqrt(d)) V, and so what it keeps and allocates: "
            "'math', the products and the softmax as separate ops (torch's math path; what the module archcalc "
            "builds runs by default, on any device); 'fused', F.scaled_dot_product_attention's fused kernel "
            "(CPU: _scaled_dot_product_flash_attention_for_cpu; CUDA: flash for 16-bit types, memory-efficient "
            "for float32), which makes no N x N tensor", choices=("math", "fused")),
        Arg("qkv_bias", "bool", True, "with bias: the qkv projection's bias too (false: the output projection's "
            "only, timm's qkv_bias=False)"),
        Arg("key_dim", "int", 0, "channels per head of q and k (0: C / num_heads); LeViT's and EfficientFormer's "
            "key_dim", minimum=0),
        Arg("value_dim", "int", 0, "channels per head of v, and so of the joined heads the output projection reads "
            "(0: C / num_heads); timm's attn_ratio x key_dim", minimum=0),
        Arg("score_bias", "bool", False, "a learned bias added to the scores, per head and relative offset of two "
            "tokens on their 2-D grid (LeViT, EfficientFormer): a heads x (H x W) table gathered by an int64 "
            "index buffer (N x N) of |dy| x W + |dx|"),
        Arg("sr_ratio", "int", 1, "keys and values from a reduced sequence (PVT's spatial-reduction attention): "
            "the tokens' H x W grid through a conv of kernel = stride = sr_ratio (C -> C, bias) and a layer norm, "
            "M = (H // r)(W // r) tokens; 1: from the tokens themselves", minimum=1),
        Arg("kv_pool", "int", 0, "keys and values from the grid adaptive-average-pooled to kv_pool x kv_pool, a "
            "1 x 1 conv (C -> C, bias), a layer norm and a GELU (PVT-v2's linear attention): M = kv_pool^2 "
            "tokens; 0: none", minimum=0),
        Arg("kv_avgpool", "int", 0, "keys and values from the tokens averaged over runs of kv_avgpool consecutive "
            "tokens (AvgPool1d, kernel = stride, the sequence in its order) and a batch norm over C (Next-ViT's "
            "E-MHSA: sr_ratio^2): M = N // kv_avgpool tokens; 0: none", minimum=0),
        Arg("kv_norm", "bool", True, "with kv_avgpool, the batch norm (false: folded into the projections, as "
            "Next-ViT's reparameterize() does)"),
        Arg("out_features", "int", 0, "the output projection's width F (0: C, the input's; CLIP's attention pool "
            "projects its C channels to another width; LeViT's downsampling attention widens)", aliases=("out",),
            minimum=0),
        Arg("norm", "str", "none", "'batchnorm': each projection is a linear layer without bias followed by a batch "
            "norm over the tokens (LeViT's LinearNorm; needs bias: false)", choices=("none", "batchnorm")),
        Arg("act", "str", "none", "an activation on the joined heads before the output projection (LeViT's "
            "hardswish, or silu)", choices=("none", "hardswish", "silu")),
        Arg("stride", "int", 1, "queries from the tokens' 2-D grid subsampled by this stride (x[::s, ::s], with a "
            "projection of their own: LeViT's AttentionSubsample); keys and values from every token. The output "
            "has the queries' tokens, on their grid", minimum=1),
        Arg("proj", "bool", True, "the output projection (false: none; the joined heads, num_heads x value_dim "
            "channels, are the output: LowFormer's conv attention, whose transposed conv follows it); false needs "
            "key_dim and value_dim"),
    )
    examples = (
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2}),
        Example(Tokens(5, 12, (5,)), {"num_heads": 3, "bias": False}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1}),
        Example(Tokens(6, 8, (2, 3)), {"num_heads": 2, "qkv_bias": False}),
        Example(Tokens(12, 8, (3, 4)), {"num_heads": 2, "key_dim": 3, "value_dim": 5, "score_bias": True}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1, "key_dim": 4, "value_dim": 8}),
        Example(Tokens(6, 4, (2, 3)), {"num_heads": 3, "key_dim": 2, "value_dim": 3, "score_bias": True,
                                       "bias": False}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "sr_ratio": 2}),
        Example(Tokens(24, 6, (4, 6)), {"num_heads": 1, "sr_ratio": 3, "qkv_bias": False}),
        Example(Tokens(36, 8, (6, 6)), {"num_heads": 2, "kv_pool": 2}),
        Example(Tokens(49, 8, (7, 7)), {"num_heads": 4, "kv_pool": 3, "bias": False}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "kv_avgpool": 4}),
        Example(Tokens(25, 6, (5, 5)), {"num_heads": 1, "kv_avgpool": 4, "kv_norm": False}),
        Example(Tokens(10, 8, (3, 3)), {"num_heads": 2, "out_features": 5}),
        Example(Tokens(10, 8, (3, 3)), {"num_heads": 4, "out_features": 12, "bias": False}),
        Example(Tokens(12, 8, (3, 4)), {"num_heads": 2, "key_dim": 3, "value_dim": 6, "score_bias": True,
                                        "bias": False, "norm": "batchnorm", "act": "hardswish"}),
        Example(Tokens(20, 8, (4, 5)), {"num_heads": 2, "key_dim": 3, "value_dim": 6, "score_bias": True,
                                        "bias": False, "norm": "batchnorm", "act": "hardswish", "stride": 2,
                                        "out_features": 12}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1, "key_dim": 4, "value_dim": 5, "stride": 2, "act": "silu"}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "key_dim": 3, "value_dim": 5, "proj": False, "bias": False}),
        Example(Tokens(12, 6, (3, 4)), {"num_heads": 1, "key_dim": 4, "value_dim": 4, "proj": False}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        t = token_input(self.name, inp)
        c = t[1]
        if c % a["num_heads"] and not (a.get("key_dim") and a.get("value_dim")):
            raise LayerError(f"self_attention: {c} channels are not divisible by num_heads {a['num_heads']}")
        if a["kernel"] == "fused" and not self.plain(a):
            raise LayerError("self_attention with key_dim, value_dim, score_bias, norm, act, stride or out is built "
                             "as the math path only: use kernel: math")
        if (a.get("score_bias") or a.get("stride", 1) > 1) and (len(t.grid) != 2 or t[0] != t.grid[0] * t.grid[1]):
            raise LayerError(f"self_attention with score_bias or stride needs tokens laid out on a 2-D grid (N = H "
                             f"x W); its input is {t[0]} tokens on the grid {'x'.join(map(str, t.grid))}")
        if a.get("norm", "none") != "none" and a["bias"]:
            raise LayerError("self_attention with norm: batchnorm has linear projections without bias: add "
                             "bias: false")
        if self.reduced(a, inp) is not None and not self.plain(a):
            raise LayerError("self_attention takes key_dim, value_dim, score_bias, norm, act, stride or out_features, "
                             "or keys and values from a reduced sequence (sr_ratio, kv_pool, kv_avgpool), not both")
        if not a.get("proj", True):
            if not (a.get("key_dim") and a.get("value_dim")):
                raise LayerError("self_attention with proj: false needs key_dim and value_dim (its output is "
                                 "num_heads x value_dim channels)")
            if a.get("out_features") or a.get("norm", "none") != "none" or a.get("act", "none") != "none" \
                    or a.get("stride", 1) > 1:
                raise LayerError("self_attention with proj: false takes no out_features, norm, act or stride (they "
                                 "act on the output projection)")
            return tokens_like(inp, t[0], a["num_heads"] * a["value_dim"])
        s = a.get("stride", 1)
        if s == 1:
            return tokens_like(inp, t[0], a.get("out_features") or c)
        grid = tuple(-(-g // s) for g in t.grid)
        return Tokens(grid[0] * grid[1], a.get("out_features") or c, grid)

    def reduced(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, int] | None:
        """With keys and values from a reduced sequence (sr_ratio > 1 or kv_pool): (M, the reducing conv's MACs
        per image); None without."""
        if a["sr_ratio"] == 1 and not a["kv_pool"] and not a["kv_avgpool"]:
            return None
        t = token_input(self.name, inp)
        r, pool, avg = a["sr_ratio"], a["kv_pool"], a["kv_avgpool"]
        if (r > 1) + bool(pool) + bool(avg) > 1:
            raise LayerError("self_attention takes one of sr_ratio, kv_pool and kv_avgpool")
        if avg:
            if a["kernel"] == "fused":
                raise LayerError("self_attention with kv_avgpool is built on the math path: kernel 'fused' is not "
                                 "followed for it")
            if t[0] < avg:
                raise LayerError(f"self_attention kv_avgpool {avg} is more than the {t[0]} tokens")
            return t[0] // avg, 0
        if len(t.grid) != 2 or t[0] != t.grid[0] * t.grid[1]:
            raise LayerError(f"self_attention with sr_ratio or kv_pool reduces the tokens' 2-D grid (N = H x W); its "
                             f"input is {t[0]} tokens on the grid {'x'.join(map(str, t.grid))}")
        if a["kernel"] == "fused":
            raise LayerError("self_attention with sr_ratio or kv_pool is built on the math path: kernel 'fused' "
                             "is not followed for it")
        if pool:
            return pool * pool, pool * pool * t[1] * t[1]
        if min(t.grid) < r:
            raise LayerError(f"self_attention sr_ratio {r} is larger than the grid {'x'.join(map(str, t.grid))}")
        m = (t.grid[0] // r) * (t.grid[1] // r)
        return m, m * t[1] * t[1] * r * r

    @staticmethod
    def dims(a: Mapping[str, Any], c: int) -> tuple[int, int]:
        """The channels of q (and of k) and of v over all heads: heads x key_dim and heads x value_dim (C each by
        default)."""
        h = a["num_heads"]
        return h * (a.get("key_dim") or c // h), h * (a.get("value_dim") or c // h)

    @staticmethod
    def sizes(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int, int, int, int]:
        """n (tokens: keys and values), nq (queries), c (input channels), d (output channels), k and v (q/k and v
        channels over the heads)."""
        n, c = inp
        k, v = SelfAttention.dims(a, c)
        s = a.get("stride", 1)
        nq = n if s == 1 else numel(tuple(-(-g // s) for g in inp.grid))  # type: ignore[attr-defined]
        return n, nq, c, (a.get("out_features") or c) if a.get("proj", True) else v, k, v

    @staticmethod
    def parts(inp: Shape, a: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """Per-image MACs of the linear maps (4NC^2; with q/k channels K and v channels V: NC(2K + V) + NVC; with a
        query stride N C (K + V) + Nq C K + Nq V D) and of the two attention products (2N^2 C; Nq N (K + V))."""
        if a is None:
            n, c = inp
            return 4 * n * c * c, 2 * n * n * c
        n, nq, c, d, k, v = SelfAttention.sizes(a, inp)
        return n * c * (k + v) + nq * c * k + (nq * v * d if a.get("proj", True) else 0), nq * n * (k + v)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        reduced = self.reduced(a, inp)
        if reduced is not None:
            return self.reduced_cost(a, inp, *reduced)
        n, nq, c, d, k, v = self.sizes(a, inp)
        linear, products = self.parts(inp, a)
        macs = linear + products
        out_bias = nq * d if a.get("proj", True) else 0
        bias = ((nq * k + n * (k + v) + out_bias) if a["qkv_bias"] else out_bias) if a["bias"] else 0
        softmax = a["num_heads"] * nq * n
        table, index = (a["num_heads"] * n, nq * n) if a.get("score_bias") else (0, 0)
        projected = nq * k + n * (k + v)  # the q, k and v projections' outputs
        params, buffers, ints, fvcore, full = 0, 0, 0, 0, 0
        if a.get("norm", "none") == "batchnorm":  # a batch norm after each projection (eval: 2 per element in
            # fvcore, 4 in full, as `batchnorm`); q's own with a stride
            channels = 2 * k + v + d
            params, buffers, ints = 2 * channels, 2 * channels, 3 if a.get("stride", 1) > 1 else 2
            fvcore = 2 * (projected + nq * d)
            full = 4 * (projected + nq * d)
        full += {"none": 0, "hardswish": 5, "silu": 4}[a.get("act", "none")] * nq * v  # (FlopCounterMode, fvcore: 0)
        # fvcore has no handler for aten::scaled_dot_product_attention: on the fused kernel it counts the four
        # projections alone (measured: tests/test_attention_kernels.py). The score bias: a gather (aten::index)
        # and an add, which FlopCounterMode and fvcore both count as 0 (tests/test_levit.py); `full` counts the
        # add (1 per attention weight).
        return Cost(params=(2 * k + v) * c + (v * d if a.get("proj", True) else 0) + self._bias_params(a, k, v, d)
                    + table + params,
                    buffers=buffers, int_buffers=index + ints, macs=macs,
                    fvcore=(linear if a["kernel"] == "fused" else macs) + fvcore,
                    full=2 * macs + bias + nq * k + 3 * softmax + (softmax if table else 0) + full)

    @staticmethod
    def _bias_params(a: Mapping[str, Any], k: int, v: int, d: int) -> int:
        if not a["bias"]:
            return 0
        d = d if a.get("proj", True) else 0  # (no output projection: no bias of its own)
        return (2 * k + v + d) if a["qkv_bias"] else d

    def reduced_cost(self, a: Mapping[str, Any], inp: Shape, m: int, conv: int) -> Cost:
        """Keys and values from M reduced tokens: q (NC^2) and kv (2MC^2) projections, the reducing conv, Q K^T
        and A V (NMC each), the output projection (NC^2). FlopCounterMode counts the linears, the conv and the
        products; fvcore those and its layer norm (5 per element) and adaptive average pool (1 per input
        element)."""
        n, c = inp
        macs = 2 * n * c * c + 2 * m * c * c + 2 * n * m * c + conv
        pool = a["kv_pool"]
        bias = (4 * c if a["qkv_bias"] else c) if a["bias"] else 0
        bias_full = ((n * c + 2 * m * c if a["qkv_bias"] else 0) + n * c) if a["bias"] else 0
        if a["kv_avgpool"]:
            # the average of each run (k additions and a division per element) and, eval-mode, the batch norm
            # (4 per element; fvcore 2); avg_pool1d fvcore does not count
            norm = a["kv_norm"]
            return Cost(params=4 * c * c + bias + (2 * c if norm else 0), buffers=2 * c if norm else 0,
                        int_buffers=1 if norm else 0, macs=macs, fvcore=macs + (2 * m * c if norm else 0),
                        full=(2 * macs + bias_full + n * c + 3 * a["num_heads"] * n * m
                              + (a["kv_avgpool"] + 1) * m * c + (4 * m * c if norm else 0)))
        params = 4 * c * c + bias + conv // m + c + 2 * c
        full = (2 * macs + bias_full + m * c + normalize_full(m * c, m, True) + n * c + 3 * a["num_heads"] * n * m)
        fvcore = macs + 5 * m * c
        if pool:
            grid = inp.grid  # type: ignore[attr-defined]
            terms = c * math.prod(sum(-(-(i + 1) * g // pool) - i * g // pool for i in range(pool)) for g in grid)
            full += terms + m * c + 5 * m * c  # the pool's sums and divisions, the GELU
            fvcore += n * c
        return Cost(params=params, macs=macs, fvcore=fvcore, full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # In the built module's order: the qkv projection (weight, bias), its norm (weight, bias), the output
        # projection and its norm, the table. With a query stride or another output width the input's channels
        # are not the output's: one figure (the step and autocast, which walk the tensors, do not follow these
        # arguments).
        if a.get("stride", 1) > 1 or (a.get("out_features") and (a.get("key_dim") or a.get("value_dim") or a.get(
                "score_bias") or a.get("norm", "none") != "none")):
            return (params,)
        c = out[1]
        reduced = self.reduced(a, out)
        if reduced is not None:  # q, kv, the reducing conv, the norm, the output projection (the module's order)
            qkv_bias = a["bias"] and a["qkv_bias"]
            conv = () if a["kv_avgpool"] else (reduced[1] // reduced[0], c)
            norm = (c, c) if not a["kv_avgpool"] or a["kv_norm"] else ()
            return ((c * c, *((c,) if qkv_bias else ()), 2 * c * c, *((2 * c,) if qkv_bias else ()),
                     *conv, *norm, c * c, *((c,) if a["bias"] else ())))
        if not a.get("proj", True):  # the qkv projection alone: C from params = (2K + V) C (+ 2K + V), the table
            k, v = a["num_heads"] * a["key_dim"], a["num_heads"] * a["value_dim"]
            table = (a["num_heads"] * out[0],) if a.get("score_bias") else ()
            bias = (2 * k + v,) if a["bias"] and a["qkv_bias"] else ()
            return ((params - sum(bias) - sum(table), *bias, *table))
        f = a["out_features"]
        if f:  # C from params = 3C^2 + CF + biases (3C + F, F or none): the root of a quadratic in C
            lin = f + (3 if a["bias"] and a["qkv_bias"] else 0)
            rest = params - (f if a["bias"] else 0)
            c = (math.isqrt(lin * lin + 12 * rest) - lin) // 6
        f = f or c
        k, v = self.dims(a, c)
        table = (a["num_heads"] * out[0],) if a.get("score_bias") else ()
        norm = a.get("norm", "none") == "batchnorm"
        if a["bias"]:
            qkv: tuple[int, ...] = ((2 * k + v) * c, 2 * k + v) if a["qkv_bias"] else ((2 * k + v) * c,)
            return (*qkv, v * f, f, *table)
        if norm:
            return ((2 * k + v) * c, 2 * k + v, 2 * k + v, v * c, c, c, *table)
        return ((2 * k + v) * c, v * f, *table)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # Every token sees every token: the whole grid the tokens came from (the engine reads Tokens.grid).
        return [RFStep(whole=True) for _ in token_input(self.name, inp).grid]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.SelfAttention, the math path) keeps, measured with
        # saved_tensors_hooks in tests/test_tokens.py: the input (for in_proj's weight only), the scaled q and
        # contiguous k and v (N x C each), the softmax weights (heads x N x N, kept by softmax and by A V), and the
        # joined heads (N x C, for out_proj's weight alone: a frozen layer does not keep them).
        # The fused kernel's node keeps q, k and v (views of in_proj's output: one 3NC tensor), its output (NC, the
        # joined heads out_proj reads as a view) and the log-sum-exp of each head's scores per token (hN, in the
        # accumulate type), whether or not the parameters need a gradient (measured, tests/test_attention_kernels.py;
        # CUDA's flash kernel, from its source, keeps the same; no dropout, so no random generator state).
        # With key_dim / value_dim (K, V channels over the heads): q and k N x K each, v and the joined heads N x V.
        # The score bias's gather keeps its index (a buffer) and the add nothing.
        # With a query stride: the subsampled tokens' copy (Nq x C, for q's projection's weight) and q of Nq
        # tokens. With norm: batchnorm each norm keeps its input (the projection's output) and two statistics per
        # channel; with act the activation keeps the joined heads and the output projection their activation.
        n, c = inp
        reduced = self.reduced(a, inp)
        if reduced is not None:
            # With keys and values from M reduced tokens (measured the same way, tests/test_sra.py and
            # tests/test_validate.py, whatever the input's layout): sr_ratio, the grid's own copy the conv keeps
            # (NC) and the input for q's weight; pooled, the input, kept by the pool whether or not the parameters
            # need a gradient; the scaled q
            # (NC), the contiguous k and v (MC each), the softmax weights (hNM); the norm's input (the conv's
            # output, MC) and its mean and 1/std (M each); pooled, the pool's output (MC, the 1x1 conv's input) and
            # the GELU's input (MC). For the parameters' gradients alone: the kv projection's input (MC) and the
            # joined heads (NC).
            m = reduced[0]
            if a["kv_avgpool"]:
                # averaged runs: the input (kept by the pool), q, k, v, the weights; with the batch norm its input
                # (MC) and the batch's mean and 1/std per channel (2C, whatever the batch)
                norm = a["kv_norm"]
                return Saved(input=True, extra=((n * c + 2 * m * c + (m * c if norm else 0)
                                                 + a["num_heads"] * n * m, ACTIVATION),),
                             per_batch=((2 * c, STATISTICS),) if norm else (),
                             extra_for_params=((m * c + n * c, ACTIVATION),))
            if a["kv_pool"]:
                return Saved(input=True, extra=((n * c + 5 * m * c + a["num_heads"] * n * m, ACTIVATION),
                                                (2 * m, STATISTICS)),
                             extra_for_params=((m * c + n * c, ACTIVATION),))
            # the conv's input: the grid's own copy (NC), kept whatever the parameters need; the input kept by q
            return Saved(input_for_params=True, extra=((2 * n * c + 3 * m * c + a["num_heads"] * n * m, ACTIVATION),
                                                       (2 * m, STATISTICS)),
                         extra_for_params=((m * c + n * c, ACTIVATION),))
        if a["kernel"] == "fused":
            return Saved(input_for_params=True, extra=((4 * n * c, ACTIVATION), (a["num_heads"] * n, ACCUMULATE)))
        n, nq, c, d, k, v = self.sizes(a, inp)
        kept = nq * k + n * (k + v) + a["num_heads"] * nq * n
        # (the joined heads for the output projection's weight: none without it; then they are the output)
        for_params = (nq * v if a.get("proj", True) else 0) + (nq * c if nq != n or a.get("stride", 1) > 1 else 0)
        stats: tuple[tuple[int, int], ...] = ()
        if a.get("norm", "none") == "batchnorm":
            kept += nq * k + n * (k + v) + nq * d
            stats = ((2 * (2 * k + v + d), STATISTICS),)
        if a.get("act", "none") != "none":
            kept += nq * v
        return Saved(input_for_params=True, extra=((kept, ACTIVATION),), extra_for_params=((for_params, ACTIVATION),),
                     per_batch=stats)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Backward runs two products of each forward product's size: 2 x forward in all. Only in_proj's input
        # gradient (3NC^2) is skipped when the input needs none; the rest (the weights' gradients, and the
        # gradients through the two attention products and out_proj they need) is counted as the weights'.
        n, c = inp
        reduced = self.reduced(a, inp)
        if reduced is not None:
            # Only q's input gradient (NC^2) and the reducing conv's are skipped when the input needs none (the
            # conv's weight still needs the gradient through the norm and kv); averaged runs without a norm have
            # no parameter between the input and kv: kv's input gradient (2MC^2) is skipped too.
            per = self.cost(a, inp, inp).macs
            kv = 2 * reduced[0] * c * c if a["kv_avgpool"] and not a["kv_norm"] else 0
            grad_input = (n * c * c + reduced[1] + kv) * (macs // per)
            return grad_input, 2 * macs - grad_input
        n, nq, c, d, k, v = self.sizes(a, inp)
        batch = macs // sum(self.parts(inp, a))
        grad_input = (n * c * (k + v) + nq * c * k) * batch  # the projections' input gradients: 3NC^2 by default
        return grad_input, 2 * macs - grad_input

    def step_unfollowed_for(self, a: Mapping[str, Any], inp: Shape) -> str:
        # One channel per head on the math path: the joined heads reach out_proj in a layout F.linear does not
        # fold into one addmm (a matmul and a separate bias add, each with its own temporaries and backward).
        # Measured to differ (by up to 2 x NC per image), not modelled.
        if self.reduced(a, inp) is not None:
            return ("keys and values from a reduced sequence (sr_ratio, kv_pool, kv_avgpool): its backward is not "
                    "modelled yet")
        if not self.plain(a):
            return ("key_dim, value_dim, score_bias, norm, act, stride and out_features are not followed in the "
                    "step's timeline yet (its backward is modelled for q, k and v of C channels without a score bias, "
                    "projected back to C)")
        if a["kernel"] == "math" and a["num_heads"] > 1 and inp[1] == a["num_heads"]:
            return ("one channel per head on the math path (out_proj as a matmul and a bias add) is not followed "
                    "in the step's timeline")
        return ""

    def backward_moments(self, a: Mapping[str, Any], inp: Shape, out: Shape, input_grad: bool,
                         params_grad: bool) -> tuple[BackwardMoment, ...]:
        # The built module's backward, node by node (measured by storage in a real step on the CPU:
        # tests/test_attention_step.py), E = NC and W = hN^2 per image. out_proj: its input's gradient (E) and its
        # weight's and bias's; then the joined heads it kept (E, when trainable) and the output's gradient are
        # freed. The joined heads' gradient is laid out per head (a copy from two images on, which replaces it).
        # A V: the gradients of v (E) and of the weights (W); the copy and v freed. Softmax: the scores' gradient
        # (W); the weights and theirs freed. Q K^T: the gradients of k and of the scaled q (E each); the scores'
        # gradient, q and k freed. The scale: q's gradient (E), the scaled one's freed. Unbind: q, k and v's
        # gradients stacked (3E), then copied to qkv's layout (3E) as each previous one is freed. in_proj: its
        # input's gradient (E, when wanted) and its weight's and bias's.
        if self.reduced(a, inp) is not None:
            return ()  # (not followed: step_unfollowed_for)
        n, c = inp
        e, w = n * c, a["num_heads"] * n * n
        per = c * c + (c if a["bias"] else 0) if params_grad else 0  # one C x C projection's parameters
        if a["kernel"] == "fused":
            # out_proj as above (the joined heads stay: the kernel keeps them); the fused backward returns q, k and
            # v's gradients (3E) and frees the output's gradient, q/k/v, its output and the log-sum-exp; then unbind
            # (stacked and copied: 3E each, never more than the kernel's moment) and in_proj as above. The kernel's
            # own scratch (CPU: a contiguous copy of the output's gradient, per-thread blocks) is not counted, as no
            # kernel's workspace is.
            lse = ((-a["num_heads"] * n, ACCUMULATE),)
            return (BackwardMoment(e, per),
                    BackwardMoment(4 * e, per, True),
                    BackwardMoment(-e + (e if input_grad else 0), 4 * per, True, lse))
        joined = e - (e if params_grad else 0)  # after out_proj: the heads' gradient, less the joined heads kept
        stacked = joined - e - w  # after Q K^T: q, k and v's gradients
        return (BackwardMoment(e, per),
                BackwardMoment(joined + e + w, per, True),
                BackwardMoment(joined - e + 2 * w, per, True),
                BackwardMoment(joined + e, per, True),
                BackwardMoment(stacked + e, per, True),
                BackwardMoment(stacked + 3 * e, per, True),
                BackwardMoment(stacked + (e if input_grad else 0), 4 * per, True))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # less its output (NC), which the engine counts beside it: qkv (3NC) throughout; at Q K^T the scaled q, its
        # contiguous copy for the batched product when there are several heads and tokens (the scale keeps q's
        # head-interleaved layout), the contiguous k and the scores (hN^2); at the softmax the scores and the
        # weights (2hN^2).
        n, c = inp
        reduced = self.reduced(a, inp)
        if reduced is not None:
            # Measured with torch.profiler (tests/test_sra.py): the q projection's output (NC), the reduced
            # sequence the kv projection reads (MC; pooled, the pooled grid too, MC) and the kv projection's output
            # (2MC) throughout the products; then at Q K^T the scaled q, its copy laid out per head (several heads),
            # k's copy and the scores (hNM); at the softmax the scores and the weights; at A V the weights, v's copy
            # and the product (NC); at the output projection the weights, the joined heads and the output.
            m = reduced[0]
            w = a["num_heads"] * n * m
            # (averaged runs: the pool's output, or the norm's, and its copy laid out as tokens)
            source = 2 * m * c if a["kv_pool"] or a["kv_avgpool"] else m * c
            held = n * c + source + 2 * m * c
            copy = a["num_heads"] > 1 and n > 1
            during = held + max((2 if copy else 1) * n * c + m * c + w, 2 * w, w + 2 * n * c)
            return ((during - n * c, ACTIVATION),)
        if a["kernel"] == "fused":
            # qkv (3NC) throughout (q, k, v are alive until the module returns); the kernel's output (NC) and its
            # log-sum-exp (hN, dropped as it returns) beside them, then out_proj's output beside the kernel's: 4NC
            # beyond the layer's output, or 3NC + hN where that is more (one channel per head in 16-bit types). The
            # CPU kernel's per-thread scratch (accumulate type: qs x ks + 2 qs + qs x d per thread, qs = min(N, 32;
            # 64 from 192 tokens; 256 from 768), ks = min(N, 512)) is workspace, not counted.
            if c == a["num_heads"]:
                return ((3 * n * c, ACTIVATION), (a["num_heads"] * n, ACCUMULATE))
            return ((4 * n * c, ACTIVATION),)
        n, nq, c, d, k, v = self.sizes(a, inp)
        return ((self._peak(a, inp)[0] - nq * d, ACTIVATION),)

    def _peak(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, int]:
        """The built module's most alive at once at inference (measured by torch.profiler: tests/test_kind_rules.py):
        per image, and beside it once per forward (a batch norm's two statistics per channel, which
        native_batch_norm returns at inference too; the gathered score bias is added by transient_once), at the
        moment that is the most per image. (Where two moments are within the once-terms of each other at batch
        1, the other may be the most: not followed.)"""
        n, nq, c, d, k, v = self.sizes(a, inp)
        weights = a["num_heads"] * nq * n
        copy = a["num_heads"] > 1 and nq > 1  # (one token: q's layout is already the heads'; measured)
        qkv = nq * k + n * (k + v)
        bn = a.get("norm", "none") == "batchnorm"
        norm = 2 if bn else 1  # a projection's output and its norm's, at once
        # (at A V: v's contiguous copy and the product; the joined heads' copy beside the product; out_proj's input
        # and output (and its norm's). None is the most with C channels in q, k and v; with value_dim above
        # key_dim A V can be.) With a stride: the subsampled tokens' copy and q's projection first, then k and v's.
        moments = [(qkv + (2 if copy else 1) * nq * k + n * k + weights, 0), (qkv + 2 * weights, 0),
                   (qkv + weights + n * v + nq * v, 0), (qkv + weights + 2 * nq * v, 0)]
        if a.get("proj", True):  # (without it the joined heads' copy is the output: the moment before)
            moments.append((qkv + weights + nq * v + norm * nq * d, 2 * d if bn else 0))
        if a.get("stride", 1) > 1:
            moments += [(nq * c + norm * nq * k, 2 * k if bn else 0), (nq * k + norm * n * (k + v),
                                                                      2 * (k + v) if bn else 0)]
        elif bn:
            moments.append((2 * qkv, 2 * qkv // n))
        return max(moments)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The gathered score bias (heads x Nq x N), made first from the table alone (whatever the batch) and added
        # to the scores in place: held until the module returns.
        once = self._peak(a, inp)[1] if a["kernel"] == "math" else 0
        if a.get("score_bias"):
            once += a["num_heads"] * out[0] * inp[0]
        return ((once, ACTIVATION),) if once else ()

    @staticmethod
    def plain(a: Mapping[str, Any]) -> bool:
        """Vaswani et al.'s attention: none of the LeViT / EfficientFormer arguments."""
        return not (a.get("key_dim") or a.get("value_dim") or a.get("score_bias") or a.get("out_features")
                    or a.get("norm", "none") != "none" or a.get("act", "none") != "none" or a.get("stride", 1) > 1
                    or not a.get("proj", True))

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # A training-mode forward (measured by storage in a real step: tests/test_attention_step.py) is at its
        # most when out_proj has run: qkv (3NC), the kept q, k, v and joined heads (4NC), the weights (hN^2) and
        # the output (NC); or at the softmax: qkv, q, k, the scores and the weights (5NC + 2hN^2). Beyond the
        # output and what is kept (4NC + hN^2; a frozen layer's joined heads, not kept, are added by the engine:
        # Saved.extra_for_params), the larger of 3NC and hN^2.
        n, c = inp
        reduced = self.reduced(a, inp)
        if reduced is not None:
            # Beside what is kept (Saved) and the output: the q projection's output (NC) and the kv projection's
            # (2MC) throughout, and at Q K^T q's copy per head (several heads) and the scores (hNM). (Read off the
            # measured inventory, Saved and the inference phases above; the training step that would check it is
            # not followed for a reduced attention: step_unfollowed_for.)
            m = reduced[0]
            copy = a["num_heads"] > 1 and n > 1
            return ((n * c + 2 * m * c + (n * c if copy else 0) + a["num_heads"] * n * m, ACTIVATION),)
        if a["kernel"] == "fused":  # everything it makes is kept (Saved) until out_proj's output: nothing beside
            return ()
        return ((max(3 * n * c, a["num_heads"] * n * n), ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        fused = ", fused" if a["kernel"] == "fused" else ""
        if not self.plain(a):
            n, nq, c, d, k, v = self.sizes(a, inp)
            h = a["num_heads"]
            bias = ", score bias" if a.get("score_bias") else ""
            queries = f", {nq} queries (stride {a['stride']})" if a.get("stride", 1) > 1 else ""
            out = f", out {d}" if d != c else ""
            if not a.get("proj", True):
                out = ", no output projection"
            return f"{h} heads of q/k {k // h}, v {v // h}, {n} tokens{queries}{bias}{out}"
        reduced = self.reduced(a, inp)
        kv = f", kv {reduced[0]} tokens" if reduced is not None else ""
        return f"{a['num_heads']} heads of {inp[1] // a['num_heads']}, {inp[0]} tokens{kv}{fused}"


__all__ = ["ClassToken", "PositionEmbedding", "SelfAttention", "TakeToken", "ToGrid", "ToTokens", "is_tokens",
           "token_input"]
