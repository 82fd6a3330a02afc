"""Pooling: max / average with a window, adaptive, and global."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, ClassVar

from archcalc.core.kinds.base import (
    ACTIVATION,
    AXIS_NAMES,
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

_WINDOW = (
    Arg("kernel_size", "ints", doc="window size", aliases=("kernel", "k"), minimum=1),
    Arg("stride", "ints_or_none", None, "step between windows; defaults to kernel_size (non-overlapping)",
        minimum=1),
    Arg("padding", "padding", 0, "int, per axis, [before, after] pairs, 'valid' or 'same'", aliases=("pad",)),
    Arg("ceil_mode", "bool", False, "round the output size up instead of down (PyTorch's rule: a window "
        "starting in the right padding is dropped)"),
)


def _ignore(message: str) -> None:
    pass


class _WindowPool(Kind):

    def autocast_on(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "float32" if len(inp) == 4 else ""  # max_pool3d and avg_pool3d: CPU autocast's float32 list

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> tuple[Any, ...]:
        stride = a["stride"] if a["stride"] is not None else a["kernel_size"]
        return window_geometry(self.name, inp, a["kernel_size"], stride, a.get("dilation", 1), a["padding"])

    def explicit_pads(self, a: Mapping[str, Any], inp: Shape) -> tuple[tuple[int, int], ...] | None:
        """The (before, after) padding applied with F.pad before an unpadded pooling op, for asymmetric padding
        (PyTorch's pooling ops take one padding per axis); None for symmetric padding, which the op applies itself.

        The semantics are those of symmetric padding (and of ONNX's [before, after] pads): with ceil_mode a window
        that starts in the after-padding is dropped. The unpadded op in ceil mode would keep such a window (to it,
        the padding is input), so where it would produce more windows the after-padding is cut to end at the last
        kept window: max((out - 1) * S + F_eff - W - P_before, 0). The windows kept are the same, and so are their
        values (with no after-padding left, torch's own ceil rule drops the one window that would start past the
        input).
        """
        k, s, d, pads = self.geometry(a, inp)
        if all(p0 == p1 for p0, p1 in pads):
            return None
        out = window_output(self.name, inp[1:], k, s, pads, d, _ignore, a["ceil_mode"])
        result = []
        for w, ki, si, di, (p0, p1), o in zip(inp[1:], k, s, d, pads, out):
            keff = di * (ki - 1) + 1
            (unpadded,) = window_output(self.name, (w + p0 + p1,), (ki,), (si,), ((0, 0),), (di,), _ignore,
                                        a["ceil_mode"])
            result.append((p0, max((o - 1) * si + keff - w - p0, 0) if unpadded > o else p1))
        return tuple(result)

    def padded_copy(self, a: Mapping[str, Any], inp: Shape) -> int:
        """Elements per sample of the explicitly padded input (0 with symmetric padding)."""
        pads = self.explicit_pads(a, inp)
        if pads is None:
            return 0
        return inp[0] * math.prod(w + p0 + p1 for w, (p0, p1) in zip(inp[1:], pads))

    def backward_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                           input_grad: bool = True) -> tuple[tuple[int, int], ...]:
        # With asymmetric padding the backward kernel makes the gradient of the padded copy, which F.pad's
        # backward (a slice) copies into the input's gradient: the padded one is the larger, beside the parameters'
        # gradients (measured by storage on the CPU). Without an input gradient it is not made.
        padded = self.padded_copy(a, inp)
        return ((padded - numel(inp), 0),) if padded and input_grad else ()

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        k, s, d, pads = self.geometry(a, inp)
        symmetric = all(p0 == p1 for p0, p1 in pads)
        for ki, (p0, _) in zip(k, pads):
            # PyTorch (pooling_shape_check): "pad should be smaller than or equal to half of kernel size", checked
            # as kW / 2 >= padW on the kernel itself, not the dilated one (found by tests/test_property.py).
            if symmetric and p0 > ki // 2:
                raise LayerError(f"{self.name}: padding {p0} is more than half the kernel {ki}; "
                                 f"PyTorch allows at most {ki // 2}")
        return (inp[0], *window_output(self.name, inp[1:], k, s, pads, d, warn, a["ceil_mode"]))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        k, s, d, _ = self.geometry(a, inp)
        return [RFStep(di * (ki - 1) + 1, si) for ki, si, di in zip(k, s, d)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        k, s, d, pads = self.geometry(a, inp)
        text = f"{fmt_axes(k)}/{fmt_axes(s)} p{fmt_pads(pads)}"
        if any(di != 1 for di in d):
            text += f" d{fmt_axes(d)}"
        return text + (" ceil" if a["ceil_mode"] else "")


@register
class MaxPool(_WindowPool):
    name = "maxpool"
    synonyms = ("max_pool", "maxpool2d", "max_pooling", "max_pooling2d")
    prefix = "pool"
    doc = "Max pooling (nn.MaxPool1d/2d/3d by input rank). No parameters; output size as for conv."
    full_rule = "prod(F) - 1 comparisons per output element"
    args = _WINDOW + (Arg("dilation", "ints", 1, "spacing between window taps", minimum=1),)
    examples = (
        Example((96, 55, 55), {"kernel_size": 3, "stride": 2}),
        Example((64, 112, 112), {"kernel_size": 3, "stride": 2, "padding": 1}),
        Example((8, 13, 13), {"kernel_size": 2, "ceil_mode": True}),
        Example((4, 20), {"kernel_size": 3, "stride": 2, "dilation": 2}),
        Example((3, 6, 7, 7), {"kernel_size": 2}),
        Example((5, 13, 12), {"kernel_size": 6, "stride": 5, "padding": "same"}),
    )

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k = per_axis(a["kernel_size"], len(inp) - 1, "kernel_size")
        return Cost(full=numel(out) * (math.prod(k) - 1))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # 2-D and 3-D max pooling run max_pool*d_with_indices even under no_grad: the int64 indices are allocated
        # and dropped (measured with torch.profiler's memory events); max_pool1d has a kernel without them. With
        # asymmetric padding the padded copy is alive while the op runs.
        indices = ((numel(out), 8),) if len(inp) > 2 else ()
        padded = self.padded_copy(a, inp)
        return (((padded, 0),) if padded else ()) + indices

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training what it allocates is kept for backward (Saved)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # max_pool*_with_indices keeps its input and the int64 argmax indices; with asymmetric padding its input
        # is the padded copy (F.pad keeps nothing: its backward is a slice).
        padded = self.padded_copy(a, inp)
        if not padded:
            return Saved(input=True, extra=((numel(out), 8),))
        return Saved(extra=((padded, 0), (numel(out), 8)))



@register
class AvgPool(_WindowPool):
    name = "avgpool"
    synonyms = ("avg_pool", "avgpool2d", "average_pooling", "averagepooling2d", "mean_pool")
    doc = ("Average pooling (nn.AvgPool1d/2d/3d by input rank). No parameters. With asymmetric ('same') padding "
           "the zeros are counted in the average, as count_include_pad does.")
    full_rule = "prod(F) + 1 per output element (prod(F) additions, padding included, and one division)"
    args = _WINDOW + (Arg("count_include_pad", "bool", True, "count padded zeros in the average"),)
    examples = (
        Example((1024, 7, 7), {"kernel_size": 7, "stride": 1}),
        Example((6, 28, 28), {"kernel_size": 2}),
        Example((8, 9, 9), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                            "count_include_pad": False}),
        Example((4, 17), {"kernel_size": 4, "stride": 3}),
        Example((2, 5, 8, 8), {"kernel_size": [1, 2, 2]}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        k, _, _, pads = self.geometry(a, inp)
        if not all(p0 == p1 for p0, p1 in pads) and not a["count_include_pad"]:
            raise LayerError("avgpool with asymmetric padding supports only count_include_pad: true")
        out = super().output(a, inp, warn)
        if len(inp) == 4:
            # avg_pool3d alone checks the input it is given against the kernel (pool3d_shape_check with
            # check_input_size, aten/src/ATen/native/Pool.h: "input image ... smaller than kernel size"); it is
            # given the unpadded input, or the explicitly padded copy for asymmetric padding.
            explicit = self.explicit_pads(a, inp)
            seen = [w + p0 + p1 for w, (p0, p1) in zip(inp[1:], explicit)] if explicit else list(inp[1:])
            small = [f"{name} {w} < {ki}" for name, w, ki in zip(AXIS_NAMES[3], seen, k) if w < ki]
            if small:
                raise LayerError(f"3-D avgpool needs an input at least as large as the kernel on every axis "
                                 f"(PyTorch's avg_pool3d refuses a smaller one even with padding or ceil_mode): "
                                 f"{', '.join(small)}")
        return out

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k = per_axis(a["kernel_size"], len(inp) - 1, "kernel_size")
        return Cost(full=numel(out) * (math.prod(k) + 1))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        padded = self.padded_copy(a, inp)  # asymmetric padding: the padded copy is alive while the op runs
        return ((padded, 0),) if padded else ()

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training what it allocates is kept for backward (Saved)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        padded = self.padded_copy(a, inp)
        return Saved(extra=((padded, 0),)) if padded else Saved(input=True)



class _Adaptive(Kind):
    mode = ""

    def autocast_on(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "float32" if len(inp) == 4 else ""  # adaptive_avg_pool3d: CPU autocast's float32 list

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        rank = spatial_rank(self.name, inp)
        return per_axis(a["output_size"], rank, "output_size")

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return (inp[0], *self.sizes(a, inp))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        # PyTorch's windows: start = floor(i*W/O), end = ceil((i+1)*W/O); the largest window is ceil(W/O) (+1
        # when O does not divide W). With output 1 the window is the whole axis.
        steps = []
        for w, o in zip(inp[1:], out[1:]):
            if o == 1:
                steps.append(RFStep(whole=True))
            else:
                kernel = max(-(-((i + 1) * w) // o) - (i * w) // o for i in range(o))
                steps.append(RFStep(kernel, Fraction(w, o)))
        return steps

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"-> {fmt_axes(self.sizes(a, inp))}"

    def _window_elements(self, inp: Shape, out: Shape) -> int:
        total = 1
        for w, o in zip(inp[1:], out[1:]):
            total *= sum(-(-((i + 1) * w) // o) - (i * w) // o for i in range(o))
        return total * inp[0]



@register
class AdaptiveAvgPool(_Adaptive):
    name = "adaptive_avgpool"
    synonyms: ClassVar[tuple[str, ...]] = ("adaptiveavgpool2d",)
    prefix = "avgpool"
    mode = "avg"
    doc = ("Adaptive average pooling to a fixed output_size (PyTorch's window rule). fvcore counts one flop per "
           "input element, but only for the 2-D op (aten::adaptive_avg_pool2d).")
    full_rule = "one addition per element of every window, plus one division per output element"
    args: ClassVar[tuple[Arg, ...]] = (
        Arg("output_size", "ints", doc="output size per spatial axis", aliases=("size", "out"), minimum=1),)
    examples: ClassVar[tuple[Example, ...]] = (
        Example((512, 7, 7), {"output_size": 7}),
        Example((256, 13, 13), {"output_size": 6}),
        Example((8, 10), {"output_size": 3}),
        Example((4, 4, 6, 6), {"output_size": [1, 2, 2]}),
    )

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(fvcore=numel(inp) if len(inp) == 3 else 0, full=self._window_elements(inp, out) + numel(out))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # To output size 1 PyTorch computes a mean (aten adaptive_avg_pool{2,3}d), whose backward needs only the
        # shape: nothing is kept. Otherwise the pooling op keeps its input.
        if all(o == 1 for o in out[1:]):
            return Saved()
        return Saved(input=True)


@register
class AdaptiveMaxPool(_Adaptive):
    name = "adaptive_maxpool"
    synonyms: ClassVar[tuple[str, ...]] = ("adaptivemaxpool2d",)
    prefix = "maxpool"
    mode = "max"
    doc = "Adaptive max pooling to a fixed output_size (PyTorch's window rule)."
    full_rule = "window elements - 1 comparisons per output element"
    args: ClassVar[tuple[Arg, ...]] = (
        Arg("output_size", "ints", doc="output size per spatial axis", aliases=("size", "out"), minimum=1),)
    examples: ClassVar[tuple[Example, ...]] = (Example((16, 9, 9), {"output_size": 4}),
                                               Example((8, 10), {"output_size": 1}))

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=self._window_elements(inp, out) - numel(out))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(out), 8),)  # adaptive max pooling always computes int64 indices

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training what it allocates is kept for backward (Saved)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved(input=True, extra=((numel(out), 8),))


@register
class GlobalAvgPool(AdaptiveAvgPool):
    name = "global_avgpool"
    synonyms = ("gap", "global_average_pooling", "globalaveragepooling2d", "global_avg_pool")
    prefix = "avgpool"
    doc = ("Global average pooling: adaptive average pooling to 1 per axis (output C x 1 x 1, as in PyTorch; "
           "a following linear layer flattens it).")
    args = ()
    examples = (Example((2048, 7, 7)), Example((8, 10)), Example((4, 3, 5, 5)))

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        return (1,) * spatial_rank(self.name, inp)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "global"


@register
class GlobalMaxPool(AdaptiveMaxPool):
    name = "global_maxpool"
    synonyms = ("global_max_pooling", "globalmaxpooling2d", "global_max_pool")
    prefix = "maxpool"
    doc = "Global max pooling: adaptive max pooling to 1 per axis (output C x 1 x 1)."
    args = ()
    examples = (Example((64, 7, 7)), Example((8, 10)))

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        return (1,) * spatial_rank(self.name, inp)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "global"


@register
class BlurPool(Kind):
    name = "blur_pool"
    synonyms = ("blurpool", "blurpool2d", "anti_alias", "antialiased_downsample")
    prefix = "blur"
    doc = ("Anti-aliased downsampling (Zhang 2019, 'Making Convolutional Networks Shift-Invariant Again'; timm's "
           "BlurPool2d): pad (reflect, or zeros), then a depthwise convolution with a fixed binomial filter of "
           "kernel_size taps per axis at `stride`. The filter is a buffer, not a parameter: C*prod(F) buffer "
           "values, no parameters. MACs = out elements * prod(F), as a depthwise conv; fvcore counts them as a conv "
           "(one per MAC), and F.pad 0. The importer maps any depthwise convolution whose filter is a buffer to it "
           "(its counts do not depend on the filter's values).")
    full_rule = "2 per MAC"
    args = (
        Arg("kernel_size", "ints", 3, "filter taps per axis (the binomial filter of that size)",
            aliases=("kernel", "k", "filt_size"), minimum=1),
        Arg("stride", "ints", 2, "step between windows", minimum=1),
        Arg("padding", "padding", 1, "added per side before the filter: int, one per axis or [before, after] "
            "pairs per axis", aliases=("pad",)),
        Arg("padding_mode", "str", "reflect", "what the padding holds: the reflected input, or zeros",
            choices=("reflect", "zeros")),
    )
    examples = (
        Example((8, 12, 12)),
        Example((4, 9, 7), {"kernel_size": 5, "padding": 2, "padding_mode": "zeros"}),
        Example((3, 8, 8), {"stride": 1, "padding": [[0, 1], [1, 0]]}),
    )

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> tuple[Any, ...]:
        spatial_rank(self.name, inp, (2,))
        if a["padding"] in ("same", "valid"):
            raise LayerError("blur_pool takes explicit padding, not 'same' or 'valid'")
        padding = a["padding"]
        if isinstance(padding, (list, tuple)):  # (hashable for the cached geometry)
            padding = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in padding)
        return window_geometry(self.name, inp, a["kernel_size"], a["stride"], 1, padding)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        k, s, d, pads = self.geometry(a, inp)
        if a["padding_mode"] == "reflect" and any(max(p) >= w for p, w in zip(pads, inp[1:])):
            raise LayerError(f"reflect padding {fmt_pads(pads)} must be smaller than the input "
                             f"{'x'.join(map(str, inp[1:]))}")
        return (inp[0], *window_output(self.name, inp[1:], k, s, pads, d, warn))

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k, _, _, _ = self.geometry(a, inp)
        macs = numel(out) * math.prod(k)
        return Cost(buffers=inp[0] * math.prod(k), macs=macs, fvcore=macs, full=2 * macs)

    def padded(self, a: Mapping[str, Any], inp: Shape) -> int:
        _, _, _, pads = self.geometry(a, inp)
        if not any(p for pair in pads for p in pair):
            return 0
        return inp[0] * math.prod(w + p0 + p1 for w, (p0, p1) in zip(inp[1:], pads))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        padded = self.padded(a, inp)  # F.pad's copy, alive while the filter runs
        return ((padded, 0),) if padded else ()

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # the padded copy is kept for backward (saved)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The convolution keeps what it reads (the padded copy, or the input itself without padding); a reflect
        # pad keeps its input too (reflection_pad2d_backward takes it), a zero pad nothing (its backward slices).
        padded = self.padded(a, inp)
        if not padded:
            return Saved(input=True)
        return Saved(input=a["padding_mode"] == "reflect", extra=((padded, 0),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        return macs, 0  # the filter is a buffer: no weight gradient

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        k, s, _, _ = self.geometry(a, inp)
        return [RFStep(ki, si) for ki, si in zip(k, s)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        k, s, _, pads = self.geometry(a, inp)
        return f"{fmt_axes(k)}/{fmt_axes(s)} p{fmt_pads(pads)} {a['padding_mode']}"


@register
class ContextPool(Kind):
    name = "context_pool"
    synonyms = ("attention_pool", "global_context_pool", "gc_pool")
    prefix = "context"
    doc = ("Global attention pooling, GCNet's context modelling (Cao et al. 2019, \"GCNet: Non-local Networks Meet "
           "Squeeze-Excitation Networks and Beyond\", Fig. 4; timm's GlobalContext): a 1x1 conv makes one logit "
           "per position (C -> 1), a softmax over the H*W positions turns them into weights, and the output is the "
           "weighted sum of the input over the positions: C x H x W -> C x 1 x 1. Params C (+1 with bias). MACs "
           "C*H*W (the conv) + C*H*W (the weighted sum, a matrix product) per image; FlopCounterMode and fvcore "
           "count both (convolution and matmul), neither the softmax.")
    full_rule = "2 per MAC, 1 per position for the bias, 3 per position for the softmax (exp, add to the sum, divide)"
    step_unfollowed = "its backward (the weighted sum's, the softmax's and the logits' gradients) is not modelled yet"
    args = (Arg("bias", "bool", True, "the logit conv's bias"),)
    examples = (Example((8, 4, 4)), Example((6, 5)), Example((4, 2, 3, 3), {"bias": False}), Example((1, 3, 5)))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return (inp[0], *(1,) * spatial_rank(self.name, inp))

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        positions = numel(inp[1:])
        macs = 2 * numel(inp)
        return Cost(params=inp[0] + (1 if a["bias"] else 0), macs=macs, fvcore=macs,
                    full=2 * macs + (positions if a["bias"] else 0) + 3 * positions)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0], 1) if a["bias"] else (out[0],)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True) for _ in inp[1:]]  # every position is weighed into the one output

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.ContextPool): the conv keeps its input (for its weight), the
        # softmax its output, the weights (H*W), which the weighted sum keeps too, beside a view of the input.
        return Saved(input=True, extra=((numel(inp[1:]), ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # At the softmax the logits and the weights (2P, P positions), before the output (C) exists; then the
        # weights and the output: the most, less the output, which the engine counts beside it.
        p = numel(inp[1:])
        return ((max(2 * p, p + inp[0]) - inp[0], ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{fmt_axes(inp[1:])} -> 1 by softmax weights"
