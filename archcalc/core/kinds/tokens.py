"""Token sequences and attention: the layout of vision transformers (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words"; torchvision's VisionTransformer).

A token sequence is N tokens of C channels, per-sample shape (N, C) as a `Tokens` (torch: B x N x C). A patch
embedding is a conv with kernel = stride followed by `to_tokens`; `to_grid` lays the tokens out on a grid again.
On tokens, `linear` acts on each token's channels and `layernorm` normalizes each token over its channels (their
own kinds, in dense.py and norm.py); element-wise kinds (activations, dropout) take either layout.
"""

from __future__ import annotations

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
           "no arithmetic.")
    full_rule = "0 (a copy)"
    tokens = True
    passes_gradient = True  # CatBackward0 hands the sequence a view of the output's gradient (narrow), no copy
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(5, 3, (5,))))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        n, c = token_input(self.name, inp)
        return tokens_like(inp, n + 1, c)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=inp[1])

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params,)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"+1 token of {inp[1]}"


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
           "head: torchvision's `x[:, 0]`). A view (not contiguous across the batch), no arithmetic.")
    full_rule = "0 (a view)"
    alias = True
    tokens = True
    args = (Arg("index", "int", 0, "which token (0: the class token)", minimum=0),)
    examples = (Example(Tokens(16, 8, (4, 4))), Example(Tokens(5, 3, (5,)), {"index": 4}))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        n, c = token_input(self.name, inp)
        if a["index"] >= n:
            raise LayerError(f"take_token index {a['index']} is past the last of {n} tokens")
        return (c,)

    scatters_gradient = True  # select_backward: zeros of the sequence's size, the token's gradient written in

    # Not `strided`: the rows of x[:, i] are evenly spaced, which a matrix product reads in place (its leading
    # dimension): the head's linear keeps this view, whose storage is the whole sequence, for its weight's gradient
    # (measured by `archcalc validate` on the ViT specs: no copy).

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"token {a['index']} of {inp[0]}"


@register
class SelfAttention(Kind):
    name = "self_attention"
    synonyms = ("mha", "multihead_attention", "attention", "msa")
    prefix = "attn"
    doc = ("Multi-head self-attention over N x C tokens (Vaswani et al. 2017; nn.MultiheadAttention's parameters): "
           "q, k, v = x W_in (C -> 3C), per head (d = C / heads) softmax(Q K^T / sqrt(d)) V, the heads joined and "
           "projected (C -> C). Params 4C^2 (+ 4C with bias; + C with the output projection's only). MACs 3NC^2 "
           "(qkv) + N^2 C (Q K^T) + N^2 C (A V) + NC^2 (projection) = 4NC^2 + 2N^2 C per image, independent of "
           "the number of heads. Built as torch's math path (every product a counted op), or with `kernel: fused` "
           "as F.scaled_dot_product_attention's fused kernel, which keeps no N x N weights (docs/tokens.md, "
           "Memory); what FlopCounterMode and fvcore count for torch's own nn.MultiheadAttention and "
           "scaled_dot_product_attention is in docs/conventions.md.")
    full_rule = ("2 per MAC, 1 per bias element (4C per token, or C), 1 per element of q for the 1/sqrt(d) scale, "
                 "3 per attention weight (softmax: exp, add to the sum, divide)")
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
        Arg("norm", "str", "none", "'batchnorm': each projection is a linear layer without bias followed by a batch "
            "norm over the tokens (LeViT's LinearNorm; needs bias: false)", choices=("none", "batchnorm")),
        Arg("act", "str", "none", "an activation on the joined heads before the output projection (LeViT's "
            "hardswish, or silu)", choices=("none", "hardswish", "silu")),
        Arg("stride", "int", 1, "queries from the tokens' 2-D grid subsampled by this stride (x[::s, ::s], with a "
            "projection of their own: LeViT's AttentionSubsample); keys and values from every token. The output "
            "has the queries' tokens, on their grid", minimum=1),
        Arg("out", "int", 0, "the output projection's channels (0: the input's C; LeViT's downsampling attention "
            "widens)", minimum=0),
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
        Example(Tokens(12, 8, (3, 4)), {"num_heads": 2, "key_dim": 3, "value_dim": 6, "score_bias": True,
                                        "bias": False, "norm": "batchnorm", "act": "hardswish"}),
        Example(Tokens(20, 8, (4, 5)), {"num_heads": 2, "key_dim": 3, "value_dim": 6, "score_bias": True,
                                        "bias": False, "norm": "batchnorm", "act": "hardswish", "stride": 2,
                                        "out": 12}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1, "key_dim": 4, "value_dim": 5, "stride": 2, "act": "silu"}),
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
        s = a.get("stride", 1)
        if s == 1 and not a.get("out"):
            return inp
        grid = tuple(-(-g // s) for g in t.grid)
        return Tokens(grid[0] * grid[1], a.get("out") or c, grid)

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
        return n, nq, c, a.get("out") or c, k, v

    @staticmethod
    def parts(inp: Shape, a: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """Per-image MACs of the linear maps (4NC^2; with q/k channels K and v channels V: NC(2K + V) + NVC; with a
        query stride N C (K + V) + Nq C K + Nq V D) and of the two attention products (2N^2 C; Nq N (K + V))."""
        if a is None:
            n, c = inp
            return 4 * n * c * c, 2 * n * n * c
        n, nq, c, d, k, v = SelfAttention.sizes(a, inp)
        return n * c * (k + v) + nq * c * k + nq * v * d, nq * n * (k + v)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, nq, c, d, k, v = self.sizes(a, inp)
        linear, products = self.parts(inp, a)
        macs = linear + products
        bias = ((nq * k + n * (k + v) + nq * d) if a["qkv_bias"] else nq * d) if a["bias"] else 0
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
        return Cost(params=(2 * k + v) * c + v * d + self._bias_params(a, k, v, d) + table + params,
                    buffers=buffers, int_buffers=index + ints, macs=macs,
                    fvcore=(linear if a["kernel"] == "fused" else macs) + fvcore,
                    full=2 * macs + bias + nq * k + 3 * softmax + (softmax if table else 0) + full)

    @staticmethod
    def _bias_params(a: Mapping[str, Any], k: int, v: int, d: int) -> int:
        if not a["bias"]:
            return 0
        return (2 * k + v + d) if a["qkv_bias"] else d

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # In the built module's order: the qkv projection (weight, bias), its norm (weight, bias), the output
        # projection and its norm, the table. With a query stride or another output width the input's channels
        # are not the output's: one figure (the step and autocast, which walk the tensors, do not follow these
        # arguments).
        if a.get("stride", 1) > 1 or a.get("out"):
            return (params,)
        c = out[1]
        k, v = self.dims(a, c)
        table = (a["num_heads"] * out[0],) if a.get("score_bias") else ()
        norm = a.get("norm", "none") == "batchnorm"
        if a["bias"]:
            qkv: tuple[int, ...] = ((2 * k + v) * c, 2 * k + v) if a["qkv_bias"] else ((2 * k + v) * c,)
            return (*qkv, v * c, c, *table)
        if norm:
            return ((2 * k + v) * c, 2 * k + v, 2 * k + v, v * c, c, c, *table)
        return ((2 * k + v) * c, v * c, *table)

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
        if a["kernel"] == "fused":
            return Saved(input_for_params=True, extra=((4 * n * c, ACTIVATION), (a["num_heads"] * n, ACCUMULATE)))
        n, nq, c, d, k, v = self.sizes(a, inp)
        kept = nq * k + n * (k + v) + a["num_heads"] * nq * n
        for_params = nq * v + (nq * c if nq != n or a.get("stride", 1) > 1 else 0)
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
        n, nq, c, d, k, v = self.sizes(a, inp)
        batch = macs // sum(self.parts(inp, a))
        grad_input = (n * c * (k + v) + nq * c * k) * batch  # the projections' input gradients: 3NC^2 by default
        return grad_input, 2 * macs - grad_input

    def step_unfollowed_for(self, a: Mapping[str, Any], inp: Shape) -> str:
        # One channel per head on the math path: the joined heads reach out_proj in a layout F.linear does not
        # fold into one addmm (a matmul and a separate bias add, each with its own temporaries and backward).
        # Measured to differ (by up to 2 x NC per image), not modelled.
        if not self.plain(a):
            return ("key_dim, value_dim, score_bias, norm, act, stride and out are not followed in the step's "
                    "timeline yet (its backward is modelled for q, k and v of C channels without a score bias)")
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
                   (qkv + weights + n * v + nq * v, 0), (qkv + weights + 2 * nq * v, 0),
                   (qkv + weights + nq * v + norm * nq * d, 2 * d if bn else 0)]
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
        return not (a.get("key_dim") or a.get("value_dim") or a.get("score_bias") or a.get("out")
                    or a.get("norm", "none") != "none" or a.get("act", "none") != "none" or a.get("stride", 1) > 1)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # A training-mode forward (measured by storage in a real step: tests/test_attention_step.py) is at its
        # most when out_proj has run: qkv (3NC), the kept q, k, v and joined heads (4NC), the weights (hN^2) and
        # the output (NC); or at the softmax: qkv, q, k, the scores and the weights (5NC + 2hN^2). Beyond the
        # output and what is kept (4NC + hN^2; a frozen layer's joined heads, not kept, are added by the engine:
        # Saved.extra_for_params), the larger of 3NC and hN^2.
        n, c = inp
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
            return f"{h} heads of q/k {k // h}, v {v // h}, {n} tokens{queries}{bias}"
        return f"{a['num_heads']} heads of {inp[1] // a['num_heads']}, {inp[0]} tokens{fused}"


__all__ = ["ClassToken", "PositionEmbedding", "SelfAttention", "TakeToken", "ToGrid", "ToTokens", "is_tokens",
           "token_input"]
