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
    doc = ("Lay N x C tokens out on a grid of the given `size` again: C x H x W (N = H*W). A view (transpose, "
           "then split N into the axes: no copy), not contiguous when the tokens were; no arithmetic.")
    full_rule = "0 (a view)"
    alias = True
    tokens = True
    args = (Arg("size", "ints", doc="the grid's size per spatial axis (H, W)", minimum=1),)
    examples = (Example(Tokens(16, 8, (4, 4)), {"size": [4, 4]}), Example(Tokens(6, 3, (6,)), {"size": [2, 3]}))

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        n = token_input(self.name, inp)[0]
        size = a["size"]
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
           "the number of heads. Built as torch's math path (every product a counted op); what FlopCounterMode "
           "and fvcore count for torch's own nn.MultiheadAttention and scaled_dot_product_attention is in "
           "docs/conventions.md.")
    full_rule = ("2 per MAC, 1 per bias element (4C per token, or C), 1 per element of q for the 1/sqrt(d) scale, "
                 "3 per attention weight (softmax: exp, add to the sum, divide)")
    tokens = True
    step_unfollowed = ("its backward (the attention weights' and products' gradients, h·N² and 3NC per image) is not "
                       "modelled yet")
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("bias", "bool", True, "learn biases in the qkv and output projections"),
        Arg("qkv_bias", "bool", True, "with bias: the qkv projection's bias too (false: the output projection's "
            "only, timm's qkv_bias=False)"),
    )
    examples = (
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2}),
        Example(Tokens(5, 12, (5,)), {"num_heads": 3, "bias": False}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1}),
        Example(Tokens(6, 8, (2, 3)), {"num_heads": 2, "qkv_bias": False}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        c = token_input(self.name, inp)[1]
        if c % a["num_heads"]:
            raise LayerError(f"self_attention: {c} channels are not divisible by num_heads {a['num_heads']}")
        return inp

    @staticmethod
    def parts(inp: Shape) -> tuple[int, int]:
        """Per-image MACs of the four linear maps (4NC^2) and of the two attention products (2N^2 C)."""
        n, c = inp
        return 4 * n * c * c, 2 * n * n * c

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, c = inp
        linear, products = self.parts(inp)
        macs = linear + products
        bias = (4 * c if a["qkv_bias"] else c) if a["bias"] else 0
        softmax = a["num_heads"] * n * n
        return Cost(params=4 * c * c + bias, macs=macs, fvcore=macs,
                    full=2 * macs + n * bias + n * c + 3 * softmax)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[1]
        if a["bias"]:
            return (3 * c * c, 3 * c, c * c, c) if a["qkv_bias"] else (3 * c * c, c * c, c)
        return (3 * c * c, c * c)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # Every token sees every token: the whole grid the tokens came from (the engine reads Tokens.grid).
        return [RFStep(whole=True) for _ in token_input(self.name, inp).grid]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.SelfAttention, the math path) keeps, measured with
        # saved_tensors_hooks in tests/test_tokens.py: the input (for in_proj's weight only), the scaled q and
        # contiguous k and v (N x C each), the softmax weights (heads x N x N, kept by softmax and by A V), and the
        # joined heads (N x C, for out_proj's weight alone: a frozen layer does not keep them).
        n, c = inp
        return Saved(input_for_params=True, extra=((3 * n * c + a["num_heads"] * n * n, ACTIVATION),),
                     extra_for_params=((n * c, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Backward runs two products of each forward product's size: 2 x forward in all. Only in_proj's input
        # gradient (3NC^2) is skipped when the input needs none; the rest (the weights' gradients, and the
        # gradients through the two attention products and out_proj they need) is counted as the weights'.
        n, c = inp
        batch = macs // sum(self.parts(inp))
        grad_input = 3 * n * c * c * batch
        return grad_input, 2 * macs - grad_input

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # less its output (NC), which the engine counts beside it: qkv (3NC) throughout; at Q K^T the scaled q, its
        # contiguous copy for the batched product when there are several heads (the scale keeps q's
        # head-interleaved layout), the contiguous k and the scores (hN^2); at the softmax the scores and the
        # weights (2hN^2).
        n, c = inp
        weights = a["num_heads"] * n * n
        during = max((6 if a["num_heads"] > 1 else 5) * n * c + weights, 3 * n * c + 2 * weights)
        return ((during - n * c, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{a['num_heads']} heads of {inp[1] // a['num_heads']}, {inp[0]} tokens"


__all__ = ["ClassToken", "PositionEmbedding", "SelfAttention", "TakeToken", "ToGrid", "ToTokens", "is_tokens",
           "token_input"]
