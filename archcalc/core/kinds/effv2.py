"""EfficientFormer-V2's attention (Li et al. 2023, "Rethinking Vision Transformers for MobileNet Size and Speed";
timm's efficientformer_v2.py, Attention2d and Attention2dDownsample).

Its own kind: it works on a channels-first C x H x W grid, not on tokens, and beside the scores it keeps a
depthwise-conv branch of v (v_local) added to the heads' output, and mixes the heads' score maps with 1 x 1 convs
(talking heads, Shazeer et al. 2020) before and after the softmax; with `downsample` its queries come from a
strided grid of its own (a strided depthwise conv of the grid plus the grid subsampled by 2). self_attention's
arguments describe none of these. The activation and the output projection (a 1 x 1 conv and a batch norm) after
it, and the strided depthwise conv before and the bilinear upsampling after Attention2d's stride, are layers of
their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.base import (
    ACTIVATION,
    STATISTICS,
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    RFStep,
    Saved,
    Shape,
    register,
)


@register
class EfficientFormerV2Attention(Kind):
    name = "effv2_attention"
    synonyms = ("attention2d", "efficientformerv2_attention", "talking_heads_attention")
    prefix = "attn"
    doc = ("EfficientFormer-V2's attention on a C x H x W grid (Li et al. 2023; timm's Attention2d and "
           "Attention2dDownsample without their activation and output projection): q, k, v from 1 x 1 convs "
           "(bias) + batch norms, C -> K, K, D (K = heads x key_dim, D = heads x value_dim); v_local a depthwise "
           "3 x 3 conv (bias) + batch norm of v; per head the scores q^T k / sqrt(key_dim) plus a learned table "
           "per head and |offset| of two grid positions (LeViT's); `talking_heads`: a 1 x 1 conv (bias) over the "
           "heads' N x N score maps before the softmax and another after; A V laid out as D x H x W, plus v_local. "
           "`downsample`: q from the grid subsampled by 2 plus a stride-2 depthwise 3 x 3 conv (bias) of it, "
           "projected by a 1 x 1 conv + batch norm; v_local of stride 2; output D x ceil(H/2) x ceil(W/2), Nq "
           "queries over N keys. Params (2K + D)(C + 3) + 12D + heads x N (+ 2(heads^2 + heads); + 10C with "
           "downsample). MACs Nq C K + N C (K + D) + 9 Nq D + Nq N (K + D) (+ 2 Nq N heads^2; + 9 Nq C). "
           "FlopCounterMode counts the convs and the two products; fvcore those and the batch norms (2 per element "
           "in eval).")
    full_rule = ("2 per MAC, 1 per conv bias element, 4 per batch-norm element (eval), per score 1 (scale), 1 "
                 "(bias) and 3 (softmax), 1 per output element (v_local's addition), with downsample 1 per element "
                 "of the query's grid (the addition)")
    step_unfollowed = "its backward (the score table's gather, the talking heads' gradients) is not checked yet"
    args = (
        Arg("num_heads", "int", doc="number of heads", aliases=("heads",), minimum=1),
        Arg("key_dim", "int", doc="q's and k's channels per head", minimum=1),
        Arg("value_dim", "int", doc="v's channels per head (timm: attn_ratio x key_dim)", minimum=1),
        Arg("talking_heads", "bool", True, "mix the heads' score maps with a 1 x 1 conv before the softmax and "
            "another after (Attention2d; Attention2dDownsample has none)"),
        Arg("downsample", "bool", False, "queries from the grid subsampled by 2 (local and global query), v_local "
            "of stride 2: the output grid is halved (Attention2dDownsample)"),
    )
    examples = (
        Example((6, 3, 4), {"num_heads": 2, "key_dim": 3, "value_dim": 4}),
        Example((4, 3, 3), {"num_heads": 3, "key_dim": 2, "value_dim": 2, "talking_heads": False}),
        Example((5, 5, 4), {"num_heads": 2, "key_dim": 2, "value_dim": 3, "talking_heads": False,
                            "downsample": True}),
        Example((4, 4, 4), {"num_heads": 2, "key_dim": 4, "value_dim": 8, "downsample": True}),
        Example((8, 5, 5), {"num_heads": 4, "key_dim": 4, "value_dim": 8}),
        Example((6, 7, 6), {"num_heads": 1, "key_dim": 5, "value_dim": 3, "talking_heads": False,
                            "downsample": True}),
        Example((2, 2, 2), {"num_heads": 1, "key_dim": 1, "value_dim": 16, "talking_heads": False}),
        Example((16, 3, 3), {"num_heads": 1, "key_dim": 1, "value_dim": 1, "talking_heads": False,
                             "downsample": True}),
        Example((3, 2, 3), {"num_heads": 2, "key_dim": 1, "value_dim": 6}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) != 3 or hasattr(inp, "grid"):
            raise LayerError(f"effv2_attention takes a C x H x W grid; its input is {list(inp)}")
        c, h, w = inp
        d = a["num_heads"] * a["value_dim"]
        return (d, (h + 1) // 2, (w + 1) // 2) if a["downsample"] else (d, h, w)

    @staticmethod
    def sizes(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int, int, int, int]:
        """C, N (keys), Nq (queries), K, D, heads."""
        c, h, w = inp
        n = h * w
        nq = ((h + 1) // 2) * ((w + 1) // 2) if a["downsample"] else n
        heads = a["num_heads"]
        return c, n, nq, heads * a["key_dim"], heads * a["value_dim"], heads

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c, n, nq, k, d, heads = self.sizes(a, inp)
        talk = 2 * (heads * heads + heads) if a["talking_heads"] else 0
        local_q = 10 * c if a["downsample"] else 0
        params = (2 * k + d) * c + 3 * (2 * k + d) + 12 * d + talk + heads * n + local_q
        scores = heads * nq * n
        macs = (nq * c * k + n * c * (k + d) + 9 * nq * d + nq * n * (k + d)
                + (2 * scores * heads if a["talking_heads"] else 0) + (9 * nq * c if a["downsample"] else 0))
        normed = nq * k + n * (k + d) + nq * d  # the four batch norms' elements
        biases = normed + (2 * scores if a["talking_heads"] else 0) + (nq * c if a["downsample"] else 0)
        full = (2 * macs + biases + 4 * normed + 5 * scores + nq * d + (nq * c if a["downsample"] else 0))
        return Cost(params=params, buffers=2 * (2 * k + 2 * d), int_buffers=4 + nq * n, macs=macs,
                    fvcore=macs + 2 * normed, full=full)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Each conv and product of the forward runs two more of its size backward (FlopCounterMode's
        # conv_backward_flop and bmm rules), the depthwise convs' weight gradients `groups` times theirs where the
        # installed FlopCounterMode does not divide by groups (conventions.GROUPED_WEIGHT_GRADIENT). Only the input
        # gradient of the convs reading the input (q's or the strided query's, k's, v's) is skipped when it needs none.
        c, n, nq, k, d, heads = self.sizes(a, inp)
        batch = macs // self.cost(a, inp, self.output(a, inp, lambda message: None)).macs
        reads = (9 * nq * c if a["downsample"] else nq * c * k) + n * c * (k + d)  # (q_local's, with downsample)
        grouped = 0 if divide_groups else 9 * nq * d * (d - 1) + (9 * nq * c * (c - 1) if a["downsample"] else 0)
        return batch * reads, 2 * macs - batch * reads + batch * grouped

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params,)  # (the step and autocast, which walk the tensors, do not follow this kind)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        return [RFStep(whole=True), RFStep(whole=True)]  # every query reads every key

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.EfficientFormerV2Attention, timm's order of ops) keeps, measured
        # with saved_tensors_hooks (tests/test_kind_rules.py, batch 2 and 3): the input (the convs' weights), the
        # four convs' outputs (the batch norms' inputs: Nq K, N K, N D, Nq D), q, k and v (the products', v_local's),
        # the scores with their bias (S = heads Nq N, the first talking head's input), the softmax weights (S) and
        # the second talking head's output (S, A V's); without talking heads the weights alone (S, kept by both);
        # with downsample the query's grid (Nq C, its projection's); per forward each batch norm's mean and
        # inverse deviation (2 per channel).
        c, n, nq, k, d, heads = self.sizes(a, inp)
        scores = heads * nq * n
        extra = (2 * (nq * k + n * k + n * d) + nq * d + (3 if a["talking_heads"] else 1) * scores
                 + (nq * c if a["downsample"] else 0))
        return Saved(input_for_params=True, extra=((extra, ACTIVATION),), per_batch=((4 * (k + d), STATISTICS),))

    def moments(self, a: Mapping[str, Any], inp: Shape) -> dict[str, int]:
        """Per sample, what the built module holds at each point where the most may be alive at inference
        (output included): q's batch norm (its conv's output and q; with downsample first the query's grid, made
        from the strided conv's output and the subsampled grid, then the projection's output and q), k's and v's,
        v_local's (q, k, v, its conv's output and v_local), the scores made (q, k, v, v_local, Q K^T and the biased
        scores), the talking heads and the softmax (v, v_local, two score maps), A V (v, v_local, the weights, the
        product) and the end (v_local, the heads' output, its copy laid out as D x H x W (a view with one head),
        the sum)."""
        c, n, nq, k, d, heads = self.sizes(a, inp)
        scores = heads * nq * n
        found = {"q": 2 * nq * k, "k": nq * k + 2 * n * k, "v": nq * k + n * k + 2 * n * d,
                 "v_local": nq * k + n * k + n * d + 2 * nq * d,
                 "scores": nq * k + n * k + n * d + nq * d + 2 * scores, "softmax": 2 * scores + n * d + nq * d,
                 "av": scores + n * d + 2 * nq * d, "end": (3 if heads == 1 else 4) * nq * d}
        if a["downsample"]:
            found.update(query=2 * nq * c, q=nq * c + 2 * nq * k)
        return found

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py
        # and tests/test_effv2.py, batch 2 and 3), less the output (Nq D), which the engine counts beside it. (A
        # batch norm's per-channel scale and shift, 2 per channel while it runs, are left out: CPU kernel scratch.)
        c, n, nq, k, d, heads = self.sizes(a, inp)
        return ((max(self.moments(a, inp).values()) - nq * d, ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The gathered score bias (heads x Nq x N), made first from the table alone (whatever the batch), held
        # until the module returns.
        c, n, nq, k, d, heads = self.sizes(a, inp)
        return ((heads * nq * n, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        c, n, nq, k, d, heads = self.sizes(a, inp)
        return (f"{heads} heads, key {a['key_dim']}, value {a['value_dim']}, {nq} queries over {n} keys"
                + (", talking heads" if a["talking_heads"] else "") + (", downsample" if a["downsample"] else ""))
