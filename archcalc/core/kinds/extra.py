"""Kinds the zoo's torchvision specs need beyond the core set: ReLU6, hardswish, hardsigmoid, channel shuffle."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archcalc.core.kinds.activation import _INPLACE, _Elementwise
from archcalc.core.kinds.base import Arg, Cost, Example, Kind, LayerError, Saved, Shape, numel, register


class _Hard(_Elementwise):
    """The piecewise-linear activations: their backward needs the input, also when run in place."""

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # In place, autograd still records the out-of-place backward node with `self` saved (HardtanhBackward0,
        # HardswishBackward0, HardsigmoidBackward0): the input is copied before it is overwritten, an extra
        # tensor the size of the input (measured with torch 2.x, checked by validate).
        if a["inplace"]:
            return Saved(extra=((numel(inp), 0),))
        return Saved(input=True)


@register
class ReLU6(_Hard):
    name = "relu6"
    doc = "min(max(0, x), 6) (nn.ReLU6; MobileNetV2's activation)."
    full_rule = "2 per element (two comparisons)"
    per_element = 2
    args = (_INPLACE,)
    torch_class = "ReLU6"
    torch_functions = ("F.relu6",)


@register
class Hardswish(_Hard):
    name = "hardswish"
    synonyms = ("hswish", "hard_swish")
    doc = "x * relu6(x + 3) / 6 (nn.Hardswish; MobileNetV3's activation)."
    full_rule = "5 per element (add, two comparisons, multiply, divide)"
    per_element = 5
    args = (_INPLACE,)
    torch_class = "Hardswish"
    torch_functions = ("F.hardswish",)


@register
class Hardsigmoid(_Hard):
    name = "hardsigmoid"
    synonyms = ("hsigmoid", "hard_sigmoid")
    doc = "relu6(x + 3) / 6 (nn.Hardsigmoid)."
    full_rule = "4 per element (add, two comparisons, divide)"
    per_element = 4
    args = (_INPLACE,)
    torch_class = "Hardsigmoid"
    torch_functions = ("F.hardsigmoid",)


@register
class ChannelShuffle(Kind):
    name = "channel_shuffle"
    doc = ("Channel shuffle (ShuffleNet; nn.ChannelShuffle): split the C channels into `groups` groups and "
           "interleave them. A permutation: no parameters, no arithmetic.")
    full_rule = "0 (a copy)"
    args = (Arg("groups", "int", doc="number of channel groups", minimum=1),)
    examples = (Example((16, 8, 8), {"groups": 2}), Example((12, 5, 5), {"groups": 3}))
    same_shape = True
    torch_class = "ChannelShuffle"
    torch_functions = ("F.channel_shuffle", "torch.channel_shuffle")

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) < 2:
            raise LayerError("channel_shuffle needs a channels-first input with spatial axes")
        if inp[0] % a["groups"]:
            raise LayerError(f"channel_shuffle: {inp[0]} channels do not split into {a['groups']} groups")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost()

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved()

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"groups {a['groups']}"




@register
class ChannelSlice(Kind):
    name = "channel_slice"
    doc = ("Channels start..stop-1 of the input (x[:, start:stop], a view: no copy, no arithmetic). With a parallel "
           "node it splits the channels between branches, as ShuffleNetV2's x.chunk(2, dim=1) does.")
    full_rule = "0 (a view)"
    alias = True
    args = (Arg("start", "int", doc="first channel kept", minimum=0),
            Arg("stop", "int", doc="one past the last channel kept", minimum=1))
    examples = (Example((16, 8, 8), {"start": 0, "stop": 8}), Example((12, 5, 5), {"start": 6, "stop": 12}))
    torch_class = "ChannelSliceModule"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) < 2:
            raise LayerError("channel_slice needs a channels-first input with spatial axes")
        if not a["start"] < a["stop"] <= inp[0]:
            raise LayerError(f"channel_slice {a['start']}:{a['stop']} is not a non-empty range of the input's "
                             f"{inp[0]} channels")
        return (a["stop"] - a["start"], *inp[1:])

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"channels {a['start']}:{a['stop']}"
