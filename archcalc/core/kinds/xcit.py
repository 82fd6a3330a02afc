"""The attention kinds of XCiT (El-Nouby et al. 2021, "XCiT: Cross-Covariance Image Transformers"): cross-covariance
attention and the Fourier position encoding, also EdgeNeXt's (Maaz et al. 2022, "EdgeNeXt", its SDTA block), and
the class attention of its last blocks (CaiT's: Touvron et al. 2021, "Going deeper with image transformers").

Cross-covariance attention attends over channels, not tokens: per head a d x d matrix (d = C / heads) of the
L2-normalised q and k channels' products over the N tokens, so its products grow with N, not N^2. Its own kind: no
argument of self_attention describes it (the products, their shapes, the normalisation and the learned temperature
all differ). The Fourier position encoding is a constant of the grid (sines and cosines) projected by a learned
1 x 1 conv: its own kind too, since pos_embed's N x C learned table and its zero MACs are another computation.
Class attention lets only the class token query: its q projection reads one token, its output is that token (1 x
C), so neither self_attention's costs nor its output hold for it.
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


@register
class CrossCovarianceAttention(Kind):
    name = "xca"
    synonyms = ("cross_covariance_attention", "xcit_attention", "channel_attention_xca")
    prefix = "xca"
    doc = ("Cross-covariance attention over N x C tokens (XCiT, El-Nouby et al. 2021; timm's XCA, EdgeNeXt's "
           "CrossCovarianceAttn): q, k, v = x W_qkv (C -> 3C), each laid out per head as d x N (d = C / heads); q "
           "and k L2-normalised over the tokens; per head softmax(t Q K^T) V, the d x d weights over channel pairs "
           "and t a learned temperature per head; the heads joined and projected (C -> C, bias). Params 4C^2 + C "
           "(+ 3C with qkv_bias) + heads. MACs 3NC^2 (qkv) + NCd (Q K^T) + NCd (A V) + NC^2 (projection) = 4NC^2 + "
           "2NCd per image: per head 2Nd^2, linear in N. FlopCounterMode counts the linears (addmm) and the two "
           "products (bmm), fvcore the same (matmul); neither counts the normalisation (linalg_vector_norm, "
           "clamp_min, div), the temperature or the softmax. `normalize: false` (DaViT's channel attention, Ding "
           "et al. 2022; timm's ChannelAttention and ChannelAttentionV2): no normalisation and no temperature, q "
           "scaled by a constant (`scale`): params 4C^2 + C (+ 3C), the same MACs.")
    full_rule = ("2 per MAC, 1 per bias element (4C per token, or C), the normalisation of q and k (3 per element: "
                 "square, sum, divide; 2 per d-vector of a head's channel: root, clamp), 1 per attention weight for "
                 "the temperature and 3 for the softmax (heads x d x d weights); normalize false: 1 per element of q "
                 "(the scale) instead of the normalisation and the temperature")
    tokens = True
    autocast = "mixed"
    step_unfollowed = "its backward (the normalisation's and the channel products' gradients) is not modelled yet"
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("qkv_bias", "bool", True, "learn a bias in the qkv projection (the output projection always has one)"),
        Arg("normalize", "bool", True, "L2-normalise q and k over the tokens and learn a temperature per head "
            "(XCiT); false: neither, q scaled by a constant (DaViT's channel attention)"),
        Arg("scale", "str", "head", "with normalize false, q's constant scale: 'head', d^-1/2 (DaViT's "
            "ChannelAttention, which scales k and applies softmax(K^T V) to q: the same products with q, k and v's "
            "roles exchanged); 'tokens', N^-1/2 (DaViT-FL's ChannelAttentionV2)", choices=("head", "tokens")),
    )
    examples = (
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2}),
        Example(Tokens(5, 12, (5,)), {"num_heads": 3, "qkv_bias": False}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1}),
        Example(Tokens(2, 32, (2,)), {"num_heads": 2}),
        Example(Tokens(16, 8, (4, 4)), {"num_heads": 2, "normalize": False, "qkv_bias": False}),
        Example(Tokens(9, 6, (3, 3)), {"num_heads": 1, "normalize": False, "scale": "tokens"}),
        Example(Tokens(12, 12, (3, 4)), {"num_heads": 3, "normalize": False}),
        Example(Tokens(4, 32, (2, 2)), {"num_heads": 2, "normalize": False}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        c = token_input(self.name, inp)[1]
        if c % a["num_heads"]:
            raise LayerError(f"xca: {c} channels are not divisible by num_heads {a['num_heads']}")
        return inp

    @staticmethod
    def parts(a: Mapping[str, Any], inp: Shape) -> tuple[int, int]:
        """Per-image MACs of the four linear maps (4NC^2) and of the two channel products (2NCd)."""
        n, c = inp
        return 4 * n * c * c, 2 * n * c * (c // a["num_heads"])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, c = inp
        h = a["num_heads"]
        macs = sum(self.parts(a, inp))
        bias = 4 * c if a["qkv_bias"] else c
        weights = c * (c // h)  # heads x d x d
        if not a["normalize"]:  # (DaViT) no normalisation, no temperature: q times a constant
            return Cost(params=4 * c * c + bias, macs=macs, fvcore=macs,
                        full=2 * macs + n * bias + n * c + 3 * weights)
        normalise = 3 * 2 * n * c + 2 * 2 * c
        return Cost(params=4 * c * c + bias + h, macs=macs, fvcore=macs,
                    full=2 * macs + n * bias + normalise + 4 * weights)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c, h = out[1], a["num_heads"]
        tensors = (3 * c * c, 3 * c, c * c, c) if a["qkv_bias"] else (3 * c * c, c * c, c)
        return (h, *tensors) if a["normalize"] else tensors

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # The channel weights are sums over every token: each output token depends on every input token.
        return [RFStep(whole=True) for _ in token_input(self.name, inp).grid]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.CrossCovarianceAttention, timm's order of ops) keeps, measured
        # with saved_tensors_hooks (tests/test_kind_rules.py, batch 2 and 3): the input (for qkv's weight), qkv's
        # output (3E: q, k and v are views of it, kept by the norms, the divisions and A V), the normalised q and
        # k (E each), their norms and clamped norms (4C), the scaled scores and the softmax weights (2W), with
        # several heads the contiguous copy of v for A V (E), and the joined heads (E, for the projection's
        # weight). E = NC, W = heads x d x d = Cd. (At batch 1 one copy less: a per-sample figure is the larger
        # batches'.)
        n, c = inp
        e, w = n * c, c * (c // a["num_heads"])
        if not a["normalize"]:
            # normalize false: the scaled q (E), kept by Q K^T; with one head k and v are views of qkv's output,
            # which they keep (3E), with several heads the batched products' contiguous copies of k and v (2E); the
            # softmax weights (W) and the joined heads (E). Measured alike (tests/test_kind_rules.py).
            kv = 3 * e if a["num_heads"] == 1 else 2 * e
            return Saved(input_for_params=True, extra=((e + kv + w, ACTIVATION),),
                         extra_for_params=((e, ACTIVATION),))
        copy = e if a["num_heads"] > 1 else 0
        return Saved(input_for_params=True, extra=((5 * e + 2 * w + 4 * c + copy, ACTIVATION),),
                     extra_for_params=((e, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size (FlopCounterMode's mm and bmm rules); only qkv's input
        # gradient (3NC^2) is skipped when the input needs none.
        n, c = inp
        batch = macs // sum(self.parts(a, inp))
        grad_input = 3 * n * c * c * batch
        return grad_input, 2 * macs - grad_input

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py,
        # batch 2 and 3), output included: at Q K^T qkv (3E), the normalised q and k and their copies for the
        # batched product (one fewer with one head) and the scores (W); or at the softmax qkv, the scaled scores
        # and the weights (3E + 2W). Less the output (E), which the engine counts beside it.
        n, c = inp
        e, w = n * c, c * (c // a["num_heads"])
        if not a["normalize"]:
            # normalize false: at the projection qkv (3E), the scaled q, A V's product and its joined copy, the
            # output (E each) and the weights (W); or at the softmax qkv, the scaled q, the scores and the weights
            # (4E + 2W). (With several heads Q K^T's copies, 6E + W, are fewer.)
            return ((max(7 * e + w, 4 * e + 2 * w) - e, ACTIVATION),)
        products = (7 if a["num_heads"] > 1 else 6) * e + w
        return ((max(products, 3 * e + 2 * w) - e, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{a['num_heads']} heads of {inp[1] // a['num_heads']} channels, {inp[0]} tokens" + (
            "" if a["normalize"] else ", not normalised")


@register
class FourierPositionEncoding(Kind):
    name = "fourier_pos_embed"
    synonyms = ("positional_encoding_fourier", "fourier_position_encoding", "sincos_pos_embed")
    prefix = "pos"
    doc = ("A Fourier position encoding added to the tokens (XCiT, El-Nouby et al. 2021, after Vaswani et al. "
           "2017; timm's PositionalEncodingFourier in XCiT and EdgeNeXt): per position of the tokens' H x W grid, "
           "hidden_dim sines and cosines of its row and as many of its column (a constant of the grid, made at "
           "forward time: no buffer), projected by a learned 1 x 1 conv (2 hidden_dim -> C, bias). Params "
           "2 hidden_dim C + C. MACs N 2 hidden_dim C: once per forward whatever the batch with `once` (XCiT "
           "projects one copy and repeats it), else per image (EdgeNeXt). FlopCounterMode and fvcore count the "
           "projection (a convolution) and nothing of the sines and cosines or the addition.")
    full_rule = ("2 per MAC of the projection and 1 per output element for its bias (once per forward with "
                 "`once`), 1 addition per element; the sines and cosines (hidden_dim (H + W) values) are not counted")
    tokens = True
    passes_gradient = True  # x + pos: the output's gradient is the input's
    step_unfollowed = "its backward (the projection's gradients, summed over the batch with `once`) is not checked yet"
    args = (
        Arg("hidden_dim", "int", 32, "sines and cosines per axis (the projection reads 2 hidden_dim)", minimum=2),
        Arg("temperature", "float", 10000.0, "the frequencies' base: temperature ** (2 floor(i / 2) / hidden_dim)"),
        Arg("once", "bool", False, "project once per forward and broadcast over the batch (timm's XCiT), not once "
            "per image (EdgeNeXt)"),
    )
    examples = (
        Example(Tokens(16, 8, (4, 4)), {"hidden_dim": 4, "once": True}),
        Example(Tokens(15, 6, (3, 5)), {"hidden_dim": 2}),
        Example(Tokens(36, 4, (6, 6)), {"hidden_dim": 8}),
        Example(Tokens(36, 4, (6, 6)), {"hidden_dim": 8, "once": True}),
    )

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, int]:
        """Tokens and channels, the tokens checked to be their 2-D grid."""
        tokens = token_input(self.name, inp)
        if len(tokens.grid) != 2 or numel(tokens.grid) != tokens[0]:
            raise LayerError(f"fourier_pos_embed encodes the positions of a 2-D grid; its input is {tokens[0]} "
                             f"tokens on the grid {'x'.join(map(str, tokens.grid))} (before a class token)")
        if a["hidden_dim"] % 2:
            raise LayerError(f"fourier_pos_embed hidden_dim {a['hidden_dim']} must be even (sines and cosines)")
        return tokens[0], tokens[1]

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.geometry(a, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, c = self.geometry(a, inp)
        params = 2 * a["hidden_dim"] * c + c
        macs = n * 2 * a["hidden_dim"] * c
        project = 2 * macs + n * c
        if a["once"]:
            return Cost(params=params, macs_once=macs, fvcore_once=macs, full=n * c, full_once=project)
        return Cost(params=params, macs=macs, fvcore=macs, full=project + n * c)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[1]
        return (2 * a["hidden_dim"] * c, c)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # The features need no gradient: only the projection's weight gradient runs (one product of the forward's
        # size); nothing flows to the input through the projection.
        return 0, macs

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The projection keeps its input for its weight's gradient: the features (N 2 hidden_dim) once, or their
        # contiguous copy over the batch (measured, tests/test_kind_rules.py).
        n, _ = self.geometry(a, inp)
        features = n * 2 * a["hidden_dim"]
        if a["once"]:
            return Saved(per_batch=((features, ACTIVATION),))
        return Saved(extra=((features, ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # Per image (torch.profiler, tests/test_kind_rules.py): the projection's output (N C) beside the sum, or,
        # per image, the features' contiguous copy (N 2 hidden_dim) while the projection runs where that is more
        # than the output; less the output, which the engine counts.
        if a["once"]:
            return ()
        n, c = self.geometry(a, inp)
        features = n * 2 * a["hidden_dim"]
        return ((n * c + max(0, features - n * c), ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The features (N 2 hidden_dim), made once; with `once` the projection's output too (N C).
        n, c = self.geometry(a, inp)
        return ((n * 2 * a["hidden_dim"] + (n * c if a["once"] else 0), ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        n, c = self.geometry(a, inp)
        return f"{2 * a['hidden_dim']} -> {c} on {'x'.join(map(str, inp.grid))}" + (  # type: ignore[attr-defined]
            ", once" if a["once"] else "")


@register
class ClassAttention(Kind):
    name = "class_attention"
    synonyms = ("cait_attention", "class_attn", "ca")
    prefix = "attn"
    doc = ("Class attention over N x C tokens (CaiT, Touvron et al. 2021, sec. 3; timm's ClassAttn in CaiT and "
           "XCiT): only the first token (the class token) queries: q = x_0 W_q, k = x W_k, v = x W_v (three C x C "
           "projections), per head (d = C / heads) softmax(q K^T / sqrt(d)) V, the heads joined and projected (C "
           "-> C, bias). Output: the class token's result, 1 x C on the same grid (concatenate the other tokens "
           "back with `concat`). Params 4C^2 + C (+ 3C with qkv_bias). MACs C^2 (q) + 2NC^2 (k, v) + NC (q K^T) + "
           "NC (A V) + C^2 (projection) = 2NC^2 + 2C^2 + 2NC per image. Built as torch's math path: FlopCounterMode "
           "counts every product; timm calls F.scaled_dot_product_attention, which FlopCounterMode counts on the "
           "meta device (its math decomposition) and fvcore not at all (docs/tokens.md).")
    full_rule = ("2 per MAC, 1 per bias element (q's and the projection's C, k's and v's 2NC; the projection's C "
                 "alone without qkv_bias), 1 per element of q for the 1/sqrt(d) scale, 3 per attention weight "
                 "(heads x N: the softmax)")
    tokens = True
    autocast = "mixed"
    step_unfollowed = "its backward (the products' and projections' gradients) is not modelled yet"
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the channels", aliases=("heads",), minimum=1),
        Arg("qkv_bias", "bool", True, "learn biases in the q, k and v projections (the output projection always "
            "has one)"),
    )
    examples = (
        Example(Tokens(17, 8, (4, 4)), {"num_heads": 2}),
        Example(Tokens(5, 12, (2, 2)), {"num_heads": 3, "qkv_bias": False}),
        Example(Tokens(10, 6, (3, 3)), {"num_heads": 1}),
        Example(Tokens(30, 4, (29,)), {"num_heads": 1, "qkv_bias": False}),
        Example(Tokens(200, 4, (199,)), {"num_heads": 4}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        n, c = token_input(self.name, inp)
        if c % a["num_heads"]:
            raise LayerError(f"class_attention: {c} channels are not divisible by num_heads {a['num_heads']}")
        return Tokens(1, c, inp.grid)  # type: ignore[attr-defined]

    @staticmethod
    def parts(inp: Shape) -> tuple[int, int, int]:
        """Per-image MACs of q and the projection (2C^2), of k and v (2NC^2), of the two products (2NC)."""
        n, c = inp
        return 2 * c * c, 2 * n * c * c, 2 * n * c

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, c = inp
        macs = sum(self.parts(inp))
        bias = 2 * c + 2 * n * c if a["qkv_bias"] else c
        return Cost(params=4 * c * c + (4 * c if a["qkv_bias"] else c), macs=macs, fvcore=macs,
                    full=2 * macs + bias + c + 3 * a["num_heads"] * n)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[1]
        if a["qkv_bias"]:
            return (c * c, c, c * c, c, c * c, c, c * c, c)
        return (c * c, c * c, c * c, c * c, c)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        return [RFStep(whole=True) for _ in token_input(self.name, inp).grid]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.ClassAttention) keeps, measured with saved_tensors_hooks
        # (tests/test_kind_rules.py): the input (for the three projections' weights: q's reads x[:, 0], a view of
        # it), k's and v's outputs (E each, for the products), the softmax weights (hN), the scaled q (C) and the
        # joined heads (C, for the projection's weight). E = NC.
        n, c = inp
        return Saved(input_for_params=True, extra=((2 * n * c + a["num_heads"] * n + c, ACTIVATION),),
                     extra_for_params=((c, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size; the input's gradient through q, k and v (2NC^2 + C^2) is
        # what an input that needs none skips.
        n, c = inp
        batch = macs // sum(self.parts(inp))
        grad_input = (2 * n * c * c + c * c) * batch
        return grad_input, 2 * macs - grad_input

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once at inference (torch.profiler, tests/test_kind_rules.py, batch 2 and 3), output
        # included: k and v (2E), with several heads a contiguous copy for the products (E), the scores (hN), q
        # and its scaled copy and the output (3C with one head; 2C with several); or at the softmax k, v, the
        # scores and the weights (2hN) and the scaled q. Less the output (C).
        n, c = inp
        h = a["num_heads"]
        e = n * c
        products = 3 * e + h * n + 2 * c if h > 1 else 2 * e + h * n + 3 * c
        return ((max(products, 2 * e + 2 * h * n + c) - c, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{a['num_heads']} heads of {inp[1] // a['num_heads']}, the class token over {inp[0]} tokens"


__all__ = ["ClassAttention", "CrossCovarianceAttention", "FourierPositionEncoding"]
