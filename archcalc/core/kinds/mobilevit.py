"""MobileViT-v2's separable self-attention (Mehta & Rastegari 2022, "Separable Self-attention for Mobile Vision
Transformers"; timm's LinearSelfAttention in MobileVitV2Block).

The block unfolds a C x H x W grid into P = ph x pw patch positions of N = H W / P tokens each (B x C x P x N), and
the attention mixes the tokens of one patch position only: one score per token (a 1 x 1 conv's first channel),
softmax over the N tokens, a context vector (the keys weighted by the scores, summed over the tokens) per patch
position, ReLU(values) times that context, a 1 x 1 output conv. Its own kind: no argument of self_attention describes
it (no N x N scores, no heads, one product's worth of element-wise work). It works on the grid in its own order (a
1 x 1 conv or a per-sample group norm is the same on either layout): the unfolding is a permutation that archcalc
need not make.
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
    numel,
    register,
)


def _patch(a: Mapping[str, Any]) -> tuple[int, int]:
    p = a["patch"]
    return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))


@register
class SeparableAttention(Kind):
    name = "separable_attention"
    synonyms = ("linear_self_attention", "mobilevitv2_attention")
    prefix = "attn"
    doc = ("MobileViT-v2's separable self-attention on a C x H x W grid (Mehta & Rastegari 2022; timm's "
           "LinearSelfAttention): the grid cut into patches of `patch` positions, P = ph x pw sequences of N = "
           "H W / P tokens (the tokens at one position of every patch); q, k, v = a 1 x 1 conv (C -> 1 + 2C), "
           "per sequence the scores softmax(q) over its N tokens, the context vector sum(k x scores) over them "
           "(C per sequence), ReLU(v) x context, a 1 x 1 output conv (C -> C). Params 3C^2 + C (+ 3C + 1 with "
           "bias). MACs H W (3C^2 + C): the two convs; FlopCounterMode and fvcore count the convs alone, nothing "
           "of the softmax, the products with the scores and the context, or the sum.")
    full_rule = ("2 per MAC, 1 per output element of each conv for its bias (1 + 3C per position), 3 per score "
                 "(softmax: exp, add to the sum, divide), per element of k: 1 (times the score) and 1 (the sum), "
                 "per element of v: 1 (ReLU) and 1 (times the context)")
    autocast = "mixed"  # convs (bfloat16) and a softmax inside: not followed under autocast
    step_unfollowed = "separable_attention's backward is not modelled yet"
    args = (
        Arg("patch", "ints", 2, "the patch (ph, pw): the tokens at one position of every patch attend together",
            minimum=1),
        Arg("bias", "bool", True, "learn biases in the two convs"),
    )
    examples = (
        Example((8, 4, 4), {"patch": 2}),
        Example((6, 6, 4), {"patch": [3, 2], "bias": False}),
        Example((4, 3, 5), {"patch": 1}),
        Example((5, 8, 6), {"patch": [2, 3]}),
    )

    def geometry(self, inp: Shape) -> tuple[int, int]:
        if len(inp) != 3:
            raise LayerError(f"separable_attention needs a C x H x W grid; its input is {'x'.join(map(str, inp))}")
        return inp[0], inp[1] * inp[2]

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.geometry(inp)
        ph, pw = _patch(a)
        if inp[1] % ph or inp[2] % pw:
            raise LayerError(f"separable_attention: the patch {ph}x{pw} must divide the grid "
                             f"{inp[1]}x{inp[2]} (timm interpolates the grid to a multiple first)")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c, hw = self.geometry(inp)
        macs = hw * c * (1 + 2 * c) + hw * c * c
        bias = 1 + 3 * c if a["bias"] else 0
        params = 3 * c * c + c + bias
        return Cost(params=params, macs=macs, fvcore=macs, full=2 * macs + hw * bias + 3 * hw + 4 * hw * c)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # FlopCounterMode's conv rules: each conv's weight gradient (the forward MACs) and the output conv's input
        # gradient (H W C^2, an inner tensor: always); only the qkv conv's input gradient (H W C (1 + 2C)) is skipped
        # when the input needs none (measured: tests/test_validate.py).
        c, hw = self.geometry(inp)
        batch = macs // (hw * (3 * c * c + c))
        grad_input = hw * c * (1 + 2 * c) * batch
        return grad_input, 2 * macs - grad_input

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        c = out[0]
        if a["bias"]:
            return (c * (1 + 2 * c), 1 + 2 * c, c * c, c)
        return (c * (1 + 2 * c), c * c)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # An output position sees, through the context, the positions of its own patch position: along each axis
        # every p-th one, a span of g - p + 1 (the whole axis with p = 1).
        return [RFStep(whole=True) if p == 1 else RFStep(kernel=g - p + 1) for g, p in zip(inp[1:], _patch(a))]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.SeparableAttention), measured with saved_tensors_hooks
        # (tests/test_kind_rules.py): the input (the qkv conv's), the qkv conv's output (1 + 2C per position: k and
        # v are views of it), the softmax's output (one per position), ReLU(v) and the context (C per patch
        # position), and the output conv's input (C per position).
        c, hw = self.geometry(inp)
        p = numel(_patch(a))
        return Saved(input=True, extra=(((1 + 2 * c) * hw + hw + 2 * c * hw + c * p, ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py,
        # batch 2), less its output (C per position, which the engine counts beside it): qkv ((1 + 2C) HW) and k
        # times the scores (C HW), with the scores (HW) at the product or the context (C P) at the sum; or, later,
        # ReLU(v), its product with the context and the context.
        c, hw = self.geometry(inp)
        p = numel(_patch(a))
        during = (1 + 2 * c) * hw + c * hw + max(hw, c * p)
        return ((max(during, 2 * c * hw + c * p) - c * hw, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        ph, pw = _patch(a)
        return f"{ph * pw} patch positions of {inp[1] * inp[2] // (ph * pw)} tokens"
