"""Fully connected layers, flatten, and a free-standing learned bias."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archcalc.core.kinds.base import (
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
    tokens_like,
)


@register
class Linear(Kind):
    name = "linear"
    autocast = "lower"

    def keeps_weight(self, input_needs_grad: bool) -> bool:
        return input_needs_grad  # addmm keeps mat2 for mat1's gradient only
    synonyms = ("fc", "dense", "fully_connected", "inner_product", "innerproduct")
    prefix = "fc"
    doc = ("Fully connected layer (nn.Linear). A C x H x W input is flattened implicitly to C*H*W features, as the "
           "lecture tables write 'FC: 7x7x512x4096' (the flatten is a view: no copy, no cost); write `flatten` "
           "to show it as its own row. On a token sequence N x C it maps each token's C channels to out_features "
           "(N x out_features; MACs N*C*out). Params in*out + bias; MACs in*out.")
    full_rule = "2 per MAC, plus 1 per output for the bias"
    weighted = True
    tokens = True
    contiguous_input = True  # the implicit flatten copies a strided view (a crop)
    args = (
        Arg("out_features", "int", doc="number of outputs", aliases=("out", "units"), minimum=1),
        Arg("bias", "bool", True, "learn one bias per output"),
    )
    examples = (
        Example((512, 7, 7), {"out_features": 4096}),
        Example((4096,), {"out_features": 1000}),
        Example((120,), {"out_features": 84, "bias": False}),
        Example(Tokens(16, 8, (4, 4)), {"out_features": 12}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if isinstance(inp, Tokens):
            return tokens_like(inp, inp[0], a["out_features"])
        return (a["out_features"],)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        features = inp[1] if isinstance(inp, Tokens) else numel(inp)
        weights = features * a["out_features"]
        macs = numel(inp) * a["out_features"]  # the weights once per token
        bias = a["out_features"] if a["bias"] else 0
        outputs = numel(out) if a["bias"] else 0
        return Cost(params=weights + bias, macs=macs, fvcore=macs, full=2 * macs + outputs)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        bias = a["out_features"] if a["bias"] else 0
        return (params - bias, bias) if bias else (params,)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep] | None:
        if isinstance(inp, Tokens):
            return None  # each token on its own
        return [RFStep(whole=True) for _ in inp[1:]]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # addmm / mm keep mat1 (the input) only for mat2's (the weight's) gradient, and mat2 (a view of the weight,
        # a parameter) for the input's: a frozen linear layer keeps nothing of its own.
        return Saved(input_for_params=True)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        if isinstance(inp, Tokens):
            return f"{inp[1]} -> {a['out_features']} per token"
        return f"{numel(inp)} -> {a['out_features']}"



@register
class Flatten(Kind):
    name = "flatten"
    doc = ("Flatten each sample to a vector (nn.Flatten; a view of the input, no copy, unless the input is a "
           "non-contiguous view such as a crop: then a contiguous copy).")
    full_rule = "0"
    alias = True
    contiguous_input = True
    examples = (Example((512, 7, 7)), Example((16,)))
    torch_class = "Flatten"  # read back by its own importer rule (start_dim and end_dim)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return (numel(inp),)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True) for _ in inp[1:]]


@register
class Reshape(Kind):
    name = "reshape"
    synonyms = ("view", "unflatten")
    doc = ("Reshape each sample to `shape` followed by the input's last `keep` axes as they are (x.view(B, *shape, "
           "*x.shape[-keep:]); the batch axis stays first): a view of the input, no copy, no arithmetic, unless the "
           "input is a non-contiguous view (then a contiguous copy). The first axis of the result is what the next "
           "layer reads as channels: ECA's x.mean((2, 3)).view(B, 1, C) makes the C channels one 1-D signal of "
           "length C for a Conv1d; ResNeSt's split view of radix x C channels as (B, radix, C, H, W) is `shape: "
           "[radix, C], keep: 2`, and keeps the spatial size free for another input.")
    full_rule = "0"
    alias = True
    contiguous_input = True
    args = (Arg("shape", "ints", doc="the new leading axes, as many elements as the input's axes before `keep`",
                minimum=1),
            Arg("keep", "int", 0, "how many of the input's last axes are kept as they are", minimum=0))
    examples = (Example((64,), {"shape": [1, 64]}), Example((1, 64), {"shape": [64, 1, 1]}),
                Example((6, 4, 2), {"shape": [12, 4]}), Example((8, 5, 3), {"shape": [2, 4], "keep": 2}))
    torch_class = "Reshape"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        shape = (a["shape"],) if isinstance(a["shape"], int) else tuple(a["shape"])
        keep = a["keep"]
        if keep >= len(inp):
            raise LayerError(f"reshape keeps {keep} axes of a sample of {len(inp)} ({'x'.join(map(str, inp))}); "
                             "at most the spatial ones")
        lead = inp[:len(inp) - keep]
        if numel(shape) != numel(lead):
            raise LayerError(f"reshape to {'x'.join(map(str, shape))} ({numel(shape):,} elements) from "
                             f"{'x'.join(map(str, lead))} ({numel(lead):,} elements)")
        return (*shape, *inp[len(inp) - keep:])

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True) for _ in inp[1:]]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        shape = (a["shape"],) if isinstance(a["shape"], int) else tuple(a["shape"])
        return "to " + "x".join(map(str, (*shape, *["*"] * a["keep"])))


PER = ("channel", "position", "element", "tensor")


def per_shape(kind: str, per: str, inp: Shape) -> tuple[int, ...]:
    """The per-sample shape of a learned tensor with one value per channel (C x 1 x 1), per spatial position
    (1 x H x W), per element (C x H x W) or for the whole tensor (1 x 1 x 1), broadcast over the input."""
    rank = len(inp) - 1
    if isinstance(inp, Tokens):  # N x C tokens: the channels are the last axis; a position is a token
        return {"channel": (1, inp[1]), "position": (inp[0], 1), "tensor": (1, 1)}.get(per, tuple(inp))
    if per == "channel":
        return (inp[0], *(1,) * rank)
    if per == "position":
        if rank == 0:
            raise LayerError(f"{kind} per position needs spatial axes; the input is flattened")
        return (1, *inp[1:])
    if per == "tensor":
        return (1,) * len(inp)
    return inp


@register
class Bias(Kind):
    name = "bias"
    autocast = "promotes"  # x + a float32 parameter: the output is float32 (type promotion), and what follows
    doc = ("A learned additive bias. per: 'channel' (one per channel), 'position' (one per spatial position, shared "
           "across channels: AlphaGo's policy head), 'element' (one per output element: a position embedding), "
           "'tensor' (one value).")
    full_rule = "1 addition per element"
    passes_gradient = True  # x + b: AddBackward0 returns the output's gradient for x (b's: its sum_to_size)
    args = (Arg("per", "str", "channel", "what each bias value belongs to",
                choices=PER),)
    examples = (
        Example((1, 19, 19), {"per": "position"}),
        Example((8, 5, 5), {"per": "channel"}),
        Example((4, 3, 3), {"per": "element"}),
        Example((10,), {"per": "channel"}),
        Example(Tokens(6, 4, (2, 3)), {"per": "tensor"}),
    )
    tokens = True  # on N x C tokens: per channel 1 x C, per position (token) N x 1 (StarReLU's bias: per tensor)

    def shape(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        return per_shape(self.name, a["per"], inp)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.shape(a, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=numel(self.shape(a, inp)), full=numel(out))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"per {a['per']}"

