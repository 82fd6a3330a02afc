"""Layers that change the spatial size without weights: zero padding and upsampling."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from archcalc.core.kinds.base import (
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    RFStep,
    Shape,
    fmt_pads,
    numel,
    register,
    resolve_padding,
    spatial_rank,
)


@register
class ZeroPad(Kind):
    name = "zeropad"
    synonyms = ("zero_padding", "zeropadding2d", "zeropad2d", "pad")
    prefix = "pad"
    doc = ("Zero padding (nn.ZeroPad1d/2d/3d): an int, one per axis, or [before, after] pairs per axis; or `to: "
           "name`, up to another tensor's spatial size, half of the margin before and the rest after (U-Net's "
           "F.pad(x1, [dx // 2, dx - dx // 2, ...]) with dx from the sizes).")
    full_rule = "0"
    args = (Arg("padding", "padding", None, doc="zeros added per side", aliases=("pad",)),
            Arg("to", "ref", None, "or pad to this tensor's spatial size"))
    examples = (Example((3, 28, 28), {"padding": 2}), Example((4, 10), {"padding": [[1, 2]]}),
                Example((2, 5, 6), {"padding": [[0, 1], [2, 3]]}), Example((2, 3, 4, 4), {"padding": 1}))

    def pads(self, a: Mapping[str, Any], inp: Shape) -> tuple[tuple[int, int], ...]:
        rank = spatial_rank(self.name, inp)
        if (a["padding"] is None) == (a.get("to") is None):
            raise LayerError("zeropad needs exactly one of 'padding' and 'to' (a tensor name)")
        if a.get("to") is not None:
            target = tuple(a["to"])[1:]
            if len(target) != rank:
                raise LayerError(f"zeropad 'to' has {len(target)} spatial axes, the input {rank}")
            if any(t < w for t, w in zip(target, inp[1:])):
                raise LayerError(f"cannot pad {'x'.join(map(str, inp[1:]))} to the smaller "
                                 f"{'x'.join(map(str, target))}")
            return tuple(((t - w) // 2, t - w - (t - w) // 2) for t, w in zip(target, inp[1:]))
        if a["padding"] in ("same", "valid"):
            raise LayerError("zeropad takes explicit sizes, not 'same' or 'valid'")
        return resolve_padding(a["padding"], inp[1:], (1,) * rank, (1,) * rank)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return (inp[0], *(w + p0 + p1 for w, (p0, p1) in zip(inp[1:], self.pads(a, inp))))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"p{fmt_pads(self.pads(a, inp))}"



_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@register
class Upsample(Kind):
    name = "upsample"
    synonyms = ("upsampling", "upsampling2d", "interpolate", "resize")
    prefix = "up"
    doc = ("Upsampling by an integer scale_factor or to a fixed size (nn.Upsample). mode 'nearest' or 'linear' "
           "(bilinear/trilinear by input rank). fvcore counts the 2-D ops only: 1 flop per output element for "
           "nearest, 4 for bilinear.")
    full_rule = ("0 for nearest; for linear modes 2^(rank+1) - 1 per output element: 2^rank neighbours weighted "
                 "and summed (linear 3, bilinear 7, trilinear 15), as PyTorch's CPU kernel evaluates them")
    args = (
        Arg("scale_factor", "ints_or_none", None, "integer multiplier per axis", aliases=("scale",), minimum=1),
        Arg("size", "ints_or_none", None, "output size per axis (instead of scale_factor)", minimum=1),
        Arg("size_of", "ref", None, "or the spatial size of another tensor (`input`: the network's input), as "
            "torchvision's segmentation heads F.interpolate(x, size=input_shape)"),
        Arg("mode", "str", "nearest", "interpolation", choices=("nearest", "linear")),
        Arg("align_corners", "bool", False, "for linear modes, as in PyTorch"),
    )
    examples = (Example((21, 7, 7), {"scale_factor": 2}), Example((8, 10), {"size": 25, "mode": "linear"}),
                Example((4, 6, 6), {"scale_factor": [2, 3], "mode": "linear"}),
                Example((2, 2, 3, 3), {"scale_factor": 2}))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        rank = spatial_rank(self.name, inp)
        given = [k for k in ("scale_factor", "size", "size_of") if a.get(k) is not None]
        if len(given) != 1:
            raise LayerError("upsample needs exactly one of scale_factor, size and size_of")
        if a.get("size_of") is not None:
            target = tuple(a["size_of"])
            if len(target) != len(inp):
                raise LayerError(f"size_of names a tensor with {len(target) - 1} spatial axes; the input has {rank}")
            sizes = target[1:]
        elif a["size"] is not None:
            size = a["size"]
            sizes = (size,) * rank if isinstance(size, int) else tuple(size)
        else:
            scale = a["scale_factor"]
            scales = (scale,) * rank if isinstance(scale, int) else tuple(scale)
            if len(scales) != rank:
                raise LayerError(f"scale_factor has {len(scales)} values for {rank} spatial axes")
            sizes = tuple(w * s for w, s in zip(inp[1:], scales))
        if len(sizes) != rank:
            raise LayerError(f"size has {len(sizes)} values for {rank} spatial axes")
        return (inp[0], *sizes)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        rank = len(inp) - 1
        fv = 0
        if rank == 2:
            fv = numel(out) * (1 if a["mode"] == "nearest" else 4)
        return Cost(fvcore=fv, full=0 if a["mode"] == "nearest" else (2 ** (rank + 1) - 1) * numel(out))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        steps = []
        for w, o in zip(inp[1:], out[1:]):
            kernel = 1 if a["mode"] == "nearest" else 2
            steps.append(RFStep(kernel, Fraction(w, o)))
        return steps

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        how = f"x{a['scale_factor']}" if a["scale_factor"] is not None else \
            f"-> {'x'.join(map(str, a['size_of'][1:]))}" if a.get("size_of") is not None else f"-> {a['size']}"
        return f"{how} {a['mode']}"

