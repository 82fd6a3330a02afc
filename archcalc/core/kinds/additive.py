"""SwiftFormer's efficient additive attention (Shaker et al. 2023, "SwiftFormer: Efficient Additive Attention for
Transformer-based Real-time Mobile Vision Applications", sec. 3.2).

No N x N matrix and no keys-times-values product: each token's query is scored against one learned vector, the
scores (normalised over the tokens) weight the queries into one global query, and that global query multiplies
every key elementwise. Its own kind: no argument of self_attention describes it (the products, their shapes and the
L2 normalisations all differ), and its cost is linear in N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.base import ACTIVATION, Cost, Example, Kind, RFStep, Saved, Shape, Tokens, register
from archcalc.core.kinds.tokens import token_input


@register
class AdditiveAttention(Kind):
    name = "additive_attention"
    synonyms = ("efficient_additive_attention", "swiftformer_attention")
    prefix = "attn"
    doc = ("Efficient additive attention over N x C tokens (SwiftFormer, Shaker et al. 2023, sec. 3.2; timm's "
           "EfficientAdditiveAttention, one head of C channels): q = norm(x W_q), k = norm(x W_k) (C -> C each, "
           "bias; norm: L2 over each token's channels); per token a score q w_g / sqrt(C) (w_g a learned C-vector), "
           "the N scores L2-normalised over the tokens; the global query g = sum of the scores times the queries "
           "(1 x C); out = final(proj(g * k) + q) (proj and final C -> C, bias). Params 4C^2 + 5C. MACs 2NC^2 (q, "
           "k) + NC (the scores) + 2NC^2 (proj, final) = 4NC^2 + NC per image, linear in N. FlopCounterMode counts "
           "the four linears (addmm or mm) and the scores' product (mm), fvcore the same (linear, matmul); "
           "neither counts the normalisations, the weighting of the queries, g * k or the residual.")
    full_rule = ("2 per MAC, 1 per bias element (4C per token), the normalisation of q and k (3 per element: "
                 "square, sum, divide; 2 per token each: root, clamp) and of the scores (3 per token, 2 in all), "
                 "1 per token for the 1/sqrt(C) scale, 4 per element of q (the weighting, its sum over the tokens, "
                 "g * k, the residual)")
    tokens = True
    autocast = "mixed"
    # to_query and to_key each keep a contiguous copy of a strided view they read (to_tokens'), as self_attention's
    # in_proj keeps one: measured by tests/test_additive.py (validate of the written-out SwiftFormer block)
    contiguous_recorded_input = 2
    step_unfollowed = "its backward (the normalisations' and products' gradients) is not modelled yet"
    examples = (
        Example(Tokens(16, 8, (4, 4))),
        Example(Tokens(9, 6, (3, 3))),
        Example(Tokens(5, 12, (5,))),
        Example(Tokens(1, 4, (1, 1))),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return token_input(self.name, inp)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        n, c = inp
        macs = 4 * n * c * c + n * c
        normalise = 2 * (3 * n * c + 2 * n) + 3 * n + 2
        return Cost(params=4 * c * c + 5 * c, macs=macs, fvcore=macs,
                    full=2 * macs + 4 * n * c + normalise + n + 4 * n * c)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[1]
        return (c * c, c, c * c, c, c, c * c, c, c * c, c)  # timm's order: to_query, to_key, w_g, proj, final

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # The global query is a sum over every token: each output token depends on every input token.
        return [RFStep(whole=True) for _ in token_input(self.name, inp).grid]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.AdditiveAttention, timm's order of ops) keeps, measured with
        # saved_tensors_hooks (tests/test_kind_rules.py, batch 2 and 3): the input (for q's and k's weights); the
        # two projections' outputs and the normalised q and k (4E: the norms' inputs, the score product's q, g * k's
        # k); the norms of q and k and of the scores, the scores before and after their normalisation, their clamped
        # norm and scaled copy (6N); the global query g (C) and two one-element terms of the scores' norm; the inputs
        # of proj and final (2E, for their weights). E = NC.
        n, c = inp
        e = n * c
        return Saved(input_for_params=True, extra=((4 * e + 6 * n + c + 2, ACTIVATION),),
                     extra_for_params=((2 * e, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size (FlopCounterMode's mm rules: the weights' gradients, and the
        # gradients of proj's and final's inputs and of q through the scores); only q's and k's projections' input
        # gradients (2NC^2) are skipped when the input needs none (measured: tests/test_validate.py).
        n, c = inp
        batch = macs // (4 * n * c * c + n * c)
        grad_input = 2 * n * c * c * batch
        return grad_input, 2 * macs - grad_input

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py,
        # batch 2 and 3), output included: at final's product, k, the normalised q, g * k's projection and its sum
        # with q (4E), with the N scores and g (C). Less the output (E), which the engine counts beside it.
        n, c = inp
        return ((3 * n * c + n + c, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"one head of {inp[1]} channels, {inp[0]} tokens"
