"""ReLU linear attention (EfficientViT-MIT's LiteMLA core: Cai et al. 2023, "EfficientViT: Multi-Scale Linear
Attention for High-Resolution Dense Prediction", Sec. 3.1; timm/models/efficientvit_mit.py)."""

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
    fmt_axes,
    numel,
    register,
    spatial_rank,
)


@register
class LinearAttention(Kind):
    name = "linear_attention"
    synonyms = ("relu_linear_attention", "lite_mla")
    prefix = "linattn"
    doc = ("ReLU linear attention over a grid's positions (EfficientViT-MIT, Cai et al. 2023, Sec. 3.1; timm's "
           "LiteMLA after its qkv convs): the C = 3 d h input channels are h heads of [q, k, v], d channels each; "
           "per head, over the N positions, q and k through a ReLU, v padded with a row of ones, "
           "out = ReLU(q) (ReLU(k)^T [v, 1]) and each position's d values divided by its last (the normaliser, "
           "plus eps): C x H x W -> (C / 3) x H x W. No params. MACs 2 h N d (d + 1) per image (k^T v and q (k^T v), "
           "linear in N); FlopCounterMode and fvcore count both products (bmm, matmul), neither the ReLUs nor the "
           "division.")
    full_rule = ("2 per MAC, 1 per element of q and k for the ReLU, 1 per position and head for the eps, 1 per "
                 "output element for the division")
    step_unfollowed = "its backward (the two products', the division's and the ReLUs') is not modelled yet"
    args = (
        Arg("head_dim", "int", doc="d, the channels of each head's q, k and v (the input has 3 d channels per head)",
            aliases=("dim",), minimum=1),
        Arg("eps", "float", 1e-5, "added to the normaliser before the division"),
    )
    examples = (Example((24, 4, 4), {"head_dim": 4}), Example((6, 5, 3), {"head_dim": 1}),
                Example((48, 3, 5), {"head_dim": 8}), Example((12, 7), {"head_dim": 2}))

    @staticmethod
    def sizes(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int]:
        """(h heads, N positions, d channels per head)."""
        d = a["head_dim"]
        return inp[0] // (3 * d), numel(inp[1:]), d

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        if inp[0] % (3 * a["head_dim"]):
            raise LayerError(f"linear_attention: {inp[0]} channels are not heads of q, k and v of head_dim "
                             f"{a['head_dim']} (a multiple of {3 * a['head_dim']})")
        return (inp[0] // 3, *inp[1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        h, n, d = self.sizes(a, inp)
        macs = 2 * h * n * d * (d + 1)  # k^T [v, 1] (h d (d + 1) N) and q (k^T [v, 1]) (h N d (d + 1))
        return Cost(macs=macs, fvcore=macs, full=2 * macs + 2 * h * n * d + h * n + h * n * d)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Both products' operands are activations: each product's backward is two of its size, both towards the
        # input; no weights.
        return 2 * macs, 0

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        return [RFStep(whole=True) for _ in inp[1:]]  # every position's k and v reach every output

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.LinearAttention, timm's order of ops): the ReLUs keep their
        # outputs (h N d each; the products read them as views), the first product v padded (h N (d + 1)) and the
        # second k^T v (h d (d + 1)); the division its numerator (a view of q (k^T v): h N (d + 1)) and the
        # normaliser plus eps (h N). The input is not kept.
        h, n, d = self.sizes(a, inp)
        return Saved(extra=((2 * h * n * d + 2 * h * n * (d + 1) + h * d * (d + 1) + h * n, ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # At the division: ReLU(q), ReLU(k), v padded, k^T v, q (k^T v), the normaliser plus eps and the quotient
        # (h N d), which the output copies (laid out channels first); the most, less the output.
        h, n, d = self.sizes(a, inp)
        return ((2 * h * n * d + 2 * h * n * (d + 1) + h * d * (d + 1) + h * n, ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        h, n, d = self.sizes(a, inp)
        return f"{h} heads of {d}, ReLU linear over {fmt_axes(inp[1:])}"


__all__ = ["LinearAttention"]
