"""Convolution and transposed convolution (1-D, 2-D or 3-D, picked from the input's rank)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, ClassVar

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
    fmt_axes,
    fmt_pads,
    numel,
    per_axis,
    register,
    spatial_rank,
    window_geometry,
    window_output,
)

_COMMON = (
    Arg("out_channels", "int", doc="number of filters", aliases=("out", "filters"), minimum=1),
    Arg("kernel_size", "ints", doc="filter size, one int or one per axis", aliases=("kernel", "k"), minimum=1),
    Arg("stride", "ints", 1, "step between windows", minimum=1),
)


def _check_groups(kind: str, in_ch: int, out_ch: int, groups: int) -> None:
    if in_ch % groups:
        raise LayerError(f"{kind}: in_channels {in_ch} is not divisible by groups {groups}")
    if out_ch % groups:
        raise LayerError(f"{kind}: out_channels {out_ch} is not divisible by groups {groups}")


@register
class Conv(Kind):
    name = "conv"
    autocast = "lower"
    synonyms: ClassVar[tuple[str, ...]] = ("convolution", "conv2d", "conv1d", "conv3d", "convolution2d")
    doc = ("Convolution, nn.Conv1d/2d/3d by input rank. Output (W - F_eff + P_before + P_after) / S + 1, floored; "
           "F_eff = D(F - 1) + 1. Params out*(in/groups)*prod(F) + bias. MACs = out elements * (in/groups)*prod(F).")
    full_rule = "2 per MAC, plus 1 per output element for the bias"
    weighted = True
    args: ClassVar[tuple[Arg, ...]] = _COMMON + (
        Arg("padding", "padding", 0, "zeros added per side: int, one per axis, [before, after] pairs per axis, "
            "'valid' or 'same' (TensorFlow's rule: extra column after)", aliases=("pad",)),
        Arg("dilation", "ints", 1, "spacing between filter taps", minimum=1),
        Arg("groups", "int", 1, "grouped convolution (AlexNet's two-GPU split, depthwise when = in_channels)",
            minimum=1),
        Arg("bias", "bool", True, "learn one bias per filter"),
    )
    examples: ClassVar[tuple[Example, ...]] = (
        Example((3, 32, 32), {"out_channels": 10, "kernel_size": 5, "padding": 2}),
        Example((3, 227, 227), {"out_channels": 96, "kernel_size": 11, "stride": 4}),
        Example((8, 13, 11), {"out_channels": 4, "kernel_size": [6, 3], "stride": [5, 2], "padding": "same"}),
        Example((8, 20), {"out_channels": 16, "kernel_size": 3, "dilation": 2, "groups": 4, "bias": False}),
        Example((4, 5, 9, 9), {"out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2}),
        Example((16, 14, 14), {"out_channels": 16, "kernel_size": 3, "padding": 1, "groups": 16}),
    )

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> tuple[Any, ...]:
        return window_geometry(self.name, inp, a["kernel_size"], a["stride"], a["dilation"], a["padding"])

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        k, s, d, pads = self.geometry(a, inp)
        _check_groups(self.name, inp[0], a["out_channels"], a["groups"])
        return (a["out_channels"], *window_output(self.name, inp[1:], k, s, pads, d, warn))  # type: ignore[arg-type]

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k = per_axis(a["kernel_size"], len(inp) - 1, "kernel_size")
        per_output = inp[0] // a["groups"] * math.prod(k)
        weights = a["out_channels"] * per_output
        macs = numel(out) * per_output
        bias = a["out_channels"] if a["bias"] else 0
        return Cost(params=weights + bias, macs=macs, fvcore=macs, full=2 * macs + (numel(out) if a["bias"] else 0))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # FlopCounterMode's conv_backward_flop counts the weight gradient as a conv whose batch is all input
        # channels (t(x_shape)), not in_channels / groups: `groups` times the forward for a grouped conv (the
        # forward's size where a torch divides it by groups: conventions.GROUPED_WEIGHT_GRADIENT).
        return macs, macs if divide_groups else macs * a["groups"]

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        k, s, d, _ = self.geometry(a, inp)
        return [RFStep(di * (ki - 1) + 1, si) for ki, si, di in zip(k, s, d)]

    def padded_copy(self, a: Mapping[str, Any], inp: Shape) -> int:
        """Elements per sample of the explicitly padded input (asymmetric padding); 0 for symmetric padding."""
        _, _, _, pads = self.geometry(a, inp)
        if all(p0 == p1 for p0, p1 in pads):
            return 0
        return inp[0] * math.prod(w + p0 + p1 for w, (p0, p1) in zip(inp[1:], pads))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # With asymmetric padding F.pad's copy is alive while the convolution runs (measured with torch.profiler).
        padded = self.padded_copy(a, inp)
        return ((padded, 0),) if padded else ()

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training what it allocates is kept for backward (Saved)

    def backward_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                           input_grad: bool = True) -> tuple[tuple[int, int], ...]:
        # With asymmetric padding the backward kernel makes the gradient of the padded copy, which F.pad's
        # backward (a slice) copies into the input's gradient: the padded one is the larger, beside the parameters'
        # gradients (measured by storage on the CPU). Without an input gradient it is not made.
        padded = self.padded_copy(a, inp)
        return ((padded - numel(inp), 0),) if padded and input_grad else ()

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The convolution keeps its input (convolution_backward takes input and weight whichever gradient is
        # wanted, so a frozen conv keeps it too). With asymmetric padding the input is first padded (F.pad keeps
        # nothing: its backward is a slice), so what is kept is the padded copy.
        padded = self.padded_copy(a, inp)
        return Saved(extra=((padded, 0),)) if padded else Saved(input=True)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        k, s, d, pads = self.geometry(a, inp)
        text = f"{fmt_axes(k)}/{fmt_axes(s)} p{fmt_pads(pads)}"  # type: ignore[arg-type]
        if any(di != 1 for di in d):
            text += f" d{fmt_axes(d)}"
        if a["groups"] != 1:
            text += f" g{a['groups']}"
        return text



@register
class StdConv(Conv):
    name = "std_conv"
    synonyms = ("stdconv2d", "scaledstdconv2d", "ws_conv", "weight_standardized_conv")
    prefix = "conv"
    doc = ("Convolution with weight standardisation (Qiao et al. 2019, BiT's StdConv2d; with a gain, Brock et al. "
           "2021, NFNet's ScaledStdConv2d): at each forward every filter's weights are standardised to mean 0 and "
           "variance 1 (F.batch_norm over the weight, eps added to the variance), with `gain` multiplied by a "
           "learned gain per filter times gamma / sqrt(fan-in), then convolved as conv does. Params: conv's plus "
           "out_channels with a gain. MACs: conv's. The standardisation is work on the weights, once per "
           "forward whatever the batch: FlopCounterMode counts none of it (it counts convolutions only); fvcore "
           "counts it as batch norm with batch statistics, 4 per weight, 5 with a gain (measured with fvcore "
           "0.1.5 on timm's StdConv2d and ScaledStdConv2d), once per forward.")
    full_rule = ("conv's (2 per MAC, plus 1 per output element for the bias); once per forward, the "
                 "standardisation: 5 per weight (mean's addition, deviation, square, variance's addition, "
                 "multiplication by 1/std), 6 with a gain (its multiplication), plus 4 per filter (two divisions by "
                 "the count, eps, the reciprocal square root) and 1 more with a gain (gain * gamma / sqrt(fan-in))")
    args = Conv.args + (
        Arg("eps", "float", 1e-6, "added to each filter's variance (timm: 1e-6; BiT 1e-8; NFNet 1e-5)", minimum=0),
        Arg("gain", "bool", False, "multiply the standardised weights by a learned gain per filter times gamma / "
            "sqrt(fan-in) (ScaledStdConv2d)"),
        Arg("gamma", "float", 1.0, "with gain, the fixed factor of the gain (NFNet: the activation's gamma)"),
    )
    examples = (
        Example((4, 8, 8), {"out_channels": 6, "kernel_size": 3, "padding": 1, "bias": False, "eps": 1e-8}),
        Example((6, 8, 8), {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": "same", "gain": True,
                            "gamma": 1.7}),
        Example((8, 5, 5), {"out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 4, "gain": True}),
        Example((4, 12), {"out_channels": 5, "kernel_size": 3, "bias": False}),
    )

    def weights(self, a: Mapping[str, Any], inp: Shape) -> int:
        k = per_axis(a["kernel_size"], len(inp) - 1, "kernel_size")
        return a["out_channels"] * (inp[0] // a["groups"]) * math.prod(k)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        conv = super().cost(a, inp, out)
        w, filters, gain = self.weights(a, inp), a["out_channels"], a["gain"]
        return conv._replace(params=conv.params + (filters if gain else 0),
                             fvcore_once=w * (5 if gain else 4),
                             full_once=w * (6 if gain else 5) + filters * (5 if gain else 4))

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        filters = a["out_channels"]
        w = params - (filters if a["bias"] else 0) - (filters if a["gain"] else 0)
        return (w, *((filters,) if a["bias"] else ()), *((filters,) if a["gain"] else ()))  # weight, bias, gain

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The standardised weight is alive while the convolution runs. (Batch norm's statistics, and the gain
        # times its factor, are freed before the convolution allocates its output.)
        return ((self.weights(a, inp), ACTIVATION),)

    def train_transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # the standardised weight is kept for backward (Saved.per_batch)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # conv's, plus what the standardisation keeps whatever the batch: the standardised weight (the
        # convolution's weight argument), batch norm's mean and 1/std per filter and, with a gain, batch norm's
        # weight argument (gain times its factor, one per filter). Batch norm's input is a view of the weight, a
        # parameter.
        conv = super().saved(a, inp, out)
        filters = a["out_channels"]
        kept = ((self.weights(a, inp), ACTIVATION), (2 * filters, STATISTICS))
        return conv._replace(per_batch=kept + (((filters, ACTIVATION),) if a["gain"] else ()))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return super().describe(a, inp) + (" ws·gain" if a["gain"] else " ws")


@register
class ConvTranspose(Kind):
    name = "conv_transpose"
    autocast = "lower"
    synonyms = ("deconv", "deconvolution", "transposed_conv", "convtranspose2d", "conv2d_transpose")
    prefix = "deconv"
    doc = ("Transposed convolution (nn.ConvTranspose1d/2d/3d): output (W - 1)S - 2P + D(F - 1) + output_padding + 1. "
           "Params in*(out/groups)*prod(F) + bias; MACs = input elements * (out/groups)*prod(F), the count "
           "PyTorch's and fvcore's counters use.")
    full_rule = "2 per MAC, plus 1 per output element for the bias"
    weighted = True
    args = _COMMON + (
        Arg("padding", "ints", 0, "implicit zero padding removed from each side of the output", aliases=("pad",),
            minimum=0),
        Arg("output_padding", "ints", 0, "extra size added to one side of the output", minimum=0),
        Arg("dilation", "ints", 1, "spacing between filter taps", minimum=1),
        Arg("groups", "int", 1, "grouped transposed convolution", minimum=1),
        Arg("bias", "bool", True, "learn one bias per filter"),
    )
    examples = (
        Example((21, 7, 7), {"out_channels": 21, "kernel_size": 64, "stride": 32, "bias": False}),
        Example((8, 5, 6), {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
        Example((4, 10), {"out_channels": 6, "kernel_size": 4, "stride": 2, "groups": 2}),
    )

    def _axes(self, a: Mapping[str, Any], inp: Shape) -> tuple[tuple[int, ...], ...]:
        rank = spatial_rank(self.name, inp)
        return tuple(per_axis(a[n], rank, n) for n in ("kernel_size", "stride", "padding", "output_padding",
                                                          "dilation"))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        k, s, p, op, d = self._axes(a, inp)
        _check_groups(self.name, inp[0], a["out_channels"], a["groups"])
        sizes = []
        for w, ki, si, pi, opi, di in zip(inp[1:], k, s, p, op, d):
            if opi >= max(si, di):
                raise LayerError(f"output_padding {opi} must be smaller than stride {si} or dilation {di}")
            size = (w - 1) * si - 2 * pi + di * (ki - 1) + opi + 1
            if size <= 0:
                raise LayerError(f"output size {size} is not positive; reduce padding {pi}")
            sizes.append(size)
        return (a["out_channels"], *sizes)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k = per_axis(a["kernel_size"], len(inp) - 1, "kernel_size")
        per_input = a["out_channels"] // a["groups"] * math.prod(k)
        macs = numel(inp) * per_input
        bias = a["out_channels"] if a["bias"] else 0
        return Cost(params=inp[0] * per_input + bias, macs=macs, fvcore=macs,
                    full=2 * macs + (numel(out) if a["bias"] else 0))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # FlopCounterMode's conv_backward_flop counts the weight gradient as a conv whose batch is all output
        # channels (t(grad_out_shape)), not out_channels / groups: `groups` times the forward for a grouped conv.
        return macs, macs if divide_groups else macs * a["groups"]

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        # An output position depends on ceil(F_eff / S) input positions; the grid gets S times finer.
        k, s, _, _, d = self._axes(a, inp)
        return [RFStep(-(-(di * (ki - 1) + 1) // si), Fraction(1, si)) for ki, si, di in zip(k, s, d)]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved(input=True)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        k, s, p, op, d = self._axes(a, inp)
        text = f"{fmt_axes(k)}/{fmt_axes(s)} p{fmt_axes(p)}"
        if any(op):
            text += f" op{fmt_axes(op)}"
        if a["groups"] != 1:
            text += f" g{a['groups']}"
        return text

