"""Kinds of post-2015 CNNs (ConvNeXt, EfficientNet, MNASNet, super-resolution and segmentation heads):
channel-wise layer norm, layer scale, stochastic depth, global mean, pixel (un)shuffle and centre crop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from archcalc.core.kinds.base import (
    STATISTICS,
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
    spatial_rank,
)
from archcalc.core.kinds.dense import PER, per_shape
from archcalc.core.kinds.norm import NORMALIZE_RULE, normalize_full


@register
class ChannelLayerNorm(Kind):
    name = "channel_layernorm"
    prefix = "norm"
    doc = ("Layer normalization over the channels of each position of a C x H x W tensor (ConvNeXt's LayerNorm2d, "
           "Liu et al. 2022): computed as torchvision does, permute to channels-last, F.layer_norm over C, permute "
           "back. Params 2C (affine). fvcore counts 5 per element with affine, 4 without.")
    full_rule = NORMALIZE_RULE + " (a group per position)"
    args = (
        Arg("eps", "float", 1e-6, "added to the variance (ConvNeXt: 1e-6)", minimum=0),
        Arg("elementwise_affine", "bool", True, "learn a per-channel scale and shift", aliases=("affine",)),
    )
    examples = (Example((96, 14, 14)), Example((8, 5, 5), {"elementwise_affine": False}), Example((6, 9)))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        per = 5 if a["elementwise_affine"] else 4
        return Cost(params=2 * inp[0] if a["elementwise_affine"] else 0, fvcore=per * numel(inp),
                    full=normalize_full(numel(inp), numel(inp[1:]), a["elementwise_affine"]))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # layer_norm makes the channels-last view contiguous before normalizing (a copy of the input) and computes
        # float32 mean and 1/std per position while it runs (measured with torch.profiler's memory events).
        return ((numel(inp), 0), (2 * (numel(inp) // inp[0]), 4))

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), 0),)  # the contiguous copy; the statistics are kept (Saved)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params // 2, params // 2) if params else ()  # weight and bias, one each per normalized element

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # autograd keeps the argument of layer_norm, the channels-last view of the input (its storage, shared with
        # whatever else keeps the input), not the contiguous copy made inside; and mean and 1/std per position in
        # the statistics dtype (the model cast as a whole: bfloat16 ones on the CPU, float32 on CUDA).
        positions = numel(inp) // inp[0]
        return Saved(input=True, extra=((2 * positions, STATISTICS),))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"over {inp[0]} channels"


@register
class LayerScale(Kind):
    name = "layer_scale"
    prefix = "scale"
    doc = ("A learned multiplier gamma, initialised to a small constant: ConvNeXt's and CaiT's layer scale (x * "
           "gamma), per channel (C x 1 x 1); or per position, per element, or one value for the tensor (per: "
           "tensor: HGNetV2's learnable affine). fvcore has no formula for the multiply (0).")
    full_rule = "1 per element"
    args = (Arg("init", "float", 1e-6, "initial value of gamma"),
            Arg("per", "str", "channel", "what each value of gamma belongs to", choices=PER))
    examples = (Example((96, 14, 14)), Example((16, 4, 4), {"init": 0.5}), Example((8, 5, 5), {"per": "tensor"}),
                Example((6, 3, 4), {"per": "position"}))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def shape(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        return per_shape(self.name, a["per"], inp)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=numel(self.shape(a, inp)), full=numel(inp))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # x * gamma keeps x for gamma's gradient only (and gamma, a parameter, for x's): frozen, it keeps nothing.
        return Saved(input_for_params=True)


@register
class StochasticDepth(Kind):
    name = "stochastic_depth"
    prefix = "drop_path"
    doc = ("Stochastic depth (Huang et al. 2016; torchvision.ops.StochasticDepth): in training, drops the whole "
           "residual branch of a sample (mode 'row') or of the batch ('batch') with probability p and rescales; "
           "the identity at inference (returns its input, no copy).")
    full_rule = "0 at inference"
    alias = True
    args = (Arg("p", "float", 0.0, "drop probability", minimum=0),
            Arg("mode", "str", "row", "'row' (per sample) or 'batch'", choices=("row", "batch")))
    examples = (Example((96, 14, 14), {"p": 0.1}), Example((16,), {"p": 0.2, "mode": "batch"}))
    same_shape = True
    elementwise = True  # the identity at inference; in training one factor per sample
    torch_class = "StochasticDepth"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["p"] >= 1:
            raise LayerError(f"stochastic_depth p must be below 1, not {a['p']}")
        return inp

    def alias_in_training(self, a: Mapping[str, Any]) -> bool:
        return a["p"] == 0  # torchvision returns the input itself when p is 0

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        if a["p"] == 0:
            return Saved()
        # input * noise keeps the noise (one value per sample, or one for the batch) for the input's gradient.
        return Saved(extra=((1, 0),)) if a["mode"] == "row" else Saved(per_batch=((1, 0),))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"p={a['p']} {a['mode']}"


@register
class Mean(Kind):
    name = "mean"
    doc = ("The mean over the spatial axes, x.mean([2, 3]) (MNASNet's and ShuffleNetV2's global pooling in "
           "torchvision). Unlike adaptive average pooling, fvcore has no formula for it (0); the output is C "
           "(or C x 1 x 1 with keepdim).")
    full_rule = "1 per input element (the sums), plus 1 division per output element"
    args = (Arg("keepdim", "bool", False, "keep the spatial axes as size 1"),)
    examples = (Example((64, 7, 7)), Example((32, 5, 5), {"keepdim": True}), Example((8, 12)))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        rank = spatial_rank(self.name, inp)
        return (inp[0], *([1] * rank)) if a["keepdim"] else (inp[0],)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp) + numel(out))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True) for _ in inp[1:]]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "over " + ", ".join(str(2 + i) for i in range(len(inp) - 1))


class _Shuffle(Kind):
    up = True

    def factor(self, a: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp, (2,))
        c, h, w = inp
        r = self.factor(a)
        if self.up:
            if c % (r * r):
                raise LayerError(f"{self.name}: {c} channels are not divisible by {r}^2 = {r * r}")
            return (c // (r * r), h * r, w * r)
        if h % r or w % r:
            raise LayerError(f"{self.name}: {h}x{w} is not divisible by {r}")
        return (c * r * r, h // r, w // r)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        # Shuffle: each output position copies one input position's channels onto an r-times finer grid. Unshuffle:
        # each output position gathers an r x r block of input positions into its channels, a window of r with
        # stride r (the next layer mixes the channels, so it sees all r x r; measured by gradient in
        # tests/test_receptive_measured.py).
        r = self.factor(a)
        return [RFStep(1, Fraction(1, r)) if self.up else RFStep(r, r) for _ in range(2)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"x{self.factor(a)}" if self.up else f"/{self.factor(a)}"


@register
class PixelShuffle(_Shuffle):
    name = "pixel_shuffle"
    doc = ("Sub-pixel upsampling (Shi et al. 2016; nn.PixelShuffle): C*r^2 x H x W -> C x rH x rW. A copy: no "
           "parameters, no arithmetic.")
    full_rule = "0 (a copy)"
    args = (Arg("upscale_factor", "int", doc="r", aliases=("factor",), minimum=1),)
    examples = (Example((16, 5, 5), {"upscale_factor": 2}), Example((27, 4, 6), {"upscale_factor": 3}))
    torch_class = "PixelShuffle"

    def factor(self, a: Mapping[str, Any]) -> int:
        return int(a["upscale_factor"])


@register
class PixelUnshuffle(_Shuffle):
    name = "pixel_unshuffle"
    doc = "The inverse of pixel_shuffle (nn.PixelUnshuffle): C x rH x rW -> C*r^2 x H x W. A copy."
    full_rule = "0 (a copy)"
    up = False
    args = (Arg("downscale_factor", "int", doc="r", aliases=("factor",), minimum=1),)
    examples = (Example((4, 8, 8), {"downscale_factor": 2}), Example((3, 9, 6), {"downscale_factor": 3}))
    torch_class = "PixelUnshuffle"

    def factor(self, a: Mapping[str, Any]) -> int:
        return int(a["downscale_factor"])


@register
class SpaceToDepth(_Shuffle):
    name = "space_to_depth"
    synonyms = ("spacetodepth", "s2d")
    doc = ("TensorFlow's space_to_depth (tf.nn.space_to_depth; TResNet's stem, Ridnik et al. 2021): C x rH x rW -> "
           "r^2*C x H x W, each r x r block of positions moved into the channels, block position first (channel "
           "(i*r + j)*C + c; pixel_unshuffle orders them c*r^2 + i*r + j). A copy: no parameters, no arithmetic.")
    full_rule = "0 (a copy)"
    up = False
    args = (Arg("block_size", "int", doc="r", aliases=("factor",), minimum=1),)
    examples = (Example((3, 8, 8), {"block_size": 4}), Example((2, 6, 9), {"block_size": 3}))
    torch_class = "SpaceToDepth"

    def factor(self, a: Mapping[str, Any]) -> int:
        return int(a["block_size"])


def _axis(kind: str, dim: int, inp: Shape) -> int:
    if dim > len(inp):
        raise LayerError(f"{kind} dim {dim} does not exist: the input has dims 1..{len(inp)} (0 is the batch)")
    return dim - 1


@register
class Sum(Kind):
    name = "sum"
    synonyms = ("reduce_sum", "reducesum")
    doc = ("The sum along one axis of each sample, x.sum(dim) (dim counts the batch as 0, as PyTorch does): "
           "ResNeSt's and SKNet's sum over the branches of a (radix, C, H, W) sample. fvcore has no formula for it "
           "(0).")
    full_rule = "1 addition per input element (each sum accumulated from zero, as the mean's)"
    args = (Arg("dim", "int", 1, "axis to sum, batch = 0", minimum=1),
            Arg("keepdim", "bool", False, "keep the summed axis as size 1"))
    examples = (Example((2, 8, 5, 5)), Example((3, 4, 6), {"dim": 2, "keepdim": True}),
                Example((4, 6), {"dim": 1}))
    torch_class = "Sum"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        axis = _axis(self.name, a["dim"], inp)
        if a["keepdim"]:
            return (*inp[:axis], 1, *inp[axis + 1:])
        if len(inp) == 1:
            raise LayerError("sum over the only axis of a flat sample leaves no axis; write keepdim: true")
        return (*inp[:axis], *inp[axis + 1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        # Every output sees the whole summed axis; without keepdim the later axes move down one: whole for all.
        whole = not a["keepdim"]
        return [RFStep(whole=whole or i + 2 == a["dim"]) for i in range(len(inp) - 1)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"over dim {a['dim']}"


@register
class Transpose(Kind):
    name = "transpose"
    synonyms = ("swapaxes", "swapdims")
    doc = ("Swap two axes of each sample, x.transpose(dim0, dim1) (dims count the batch as 0, as PyTorch does): a "
           "view, no copy, no arithmetic; the next op that needs a contiguous tensor copies it. ResNeSt's radix "
           "softmax swaps its cardinality and radix axes.")
    full_rule = "0 (a view)"
    alias = True
    args = (Arg("dim0", "int", 1, "one axis, batch = 0", minimum=1),
            Arg("dim1", "int", 2, "the other axis", minimum=1))
    examples = (Example((2, 3, 5)), Example((4, 6, 5, 3), {"dim0": 2, "dim1": 3}))
    torch_class = "Transpose"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        i, j = _axis(self.name, a["dim0"], inp), _axis(self.name, a["dim1"], inp)
        out = list(inp)
        out[i], out[j] = inp[j], inp[i]
        return tuple(out)

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        return a["dim0"] != a["dim1"] and inp[a["dim0"] - 1] > 1 and inp[a["dim1"] - 1] > 1

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=i + 2 in (a["dim0"], a["dim1"])) for i in range(len(inp) - 1)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"dims {a['dim0']}, {a['dim1']}"


@register
class Crop(Kind):
    name = "crop"
    doc = ("Centre crop of the spatial axes to the size of another tensor (`to: name`, as U-Net's crop-and-concat, "
           "Ronneberger et al. 2015) or to a given `size`. Where the margin is odd, the extra row or column is cut "
           "after (bottom, right); `start` gives the first kept index per axis instead (NASNet's shift by one: "
           "ZeroPad2d((-1, 1, -1, 1)) is a zero pad after, then a crop from 1). A view: no copy, no arithmetic (a "
           "conv applied directly to the view copies it to a contiguous tensor first; a concat, as in U-Net, reads "
           "it in place).")
    full_rule = "0 (a view)"
    alias = True
    args = (Arg("to", "ref", None, "crop to this tensor's spatial size"),
            Arg("size", "ints_or_none", None, "or to this size per spatial axis", minimum=1),
            Arg("start", "ints_or_none", None, "first kept index per spatial axis (default: the centre crop's)",
                minimum=0))
    examples = (Example((8, 12, 12), {"size": 8}), Example((4, 9, 7), {"size": [4, 6]}),
                Example((3, 10, 9), {"size": [7, 8], "start": [3, 0]}))

    def sizes(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        rank = spatial_rank(self.name, inp)
        if (a["to"] is None) == (a["size"] is None):
            raise LayerError("crop needs exactly one of 'to' (a tensor name) and 'size'")
        if a["to"] is not None:
            target = tuple(a["to"])
            if len(target) != len(inp):
                raise LayerError(f"crop 'to' has {len(target) - 1} spatial axes, the input {rank}")
            sizes = target[1:]
        else:
            sizes = (a["size"],) * rank if isinstance(a["size"], int) else tuple(a["size"])
        if len(sizes) != rank:
            raise LayerError(f"crop size has {len(sizes)} values for {rank} spatial axes")
        for s, w in zip(sizes, inp[1:]):
            if s > w:
                raise LayerError(f"cannot crop {'x'.join(map(str, inp[1:]))} to the larger "
                                 f"{'x'.join(map(str, sizes))}")
        return tuple(sizes)

    def offsets(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        sizes = self.sizes(a, inp)
        if a.get("start") is None:
            return tuple((w - s) // 2 for w, s in zip(inp[1:], sizes))
        starts = (a["start"],) * len(sizes) if isinstance(a["start"], int) else tuple(a["start"])
        if len(starts) != len(sizes):
            raise LayerError(f"crop start has {len(starts)} values for {len(sizes)} spatial axes")
        for b, s, w in zip(starts, sizes, inp[1:]):
            if b + s > w:
                raise LayerError(f"crop from {b} of {s} runs past the input's {w}")
        return starts

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.offsets(a, inp)
        return (inp[0], *self.sizes(a, inp))

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        # Cutting any spatial axis leaves gaps between the rows of a batch of 2 or more (and of one sample unless
        # everything before the last cut axis has size 1: a case counted as strided here too).
        return out != inp

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep() for _ in inp[1:]]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return "-> " + "x".join(map(str, self.sizes(a, inp)))


@register
class Scalar(Kind):
    name = "scalar"
    synonyms = ("constant", "scale")
    doc = ("Arithmetic with a constant: x + c, x - c, c - x, x * c or x / c (op add, sub, rsub, mul, div), as a "
           "forward writes it (`x + 0` in RepVGG, `x / 2`, a fixed scale). A new tensor of the input's shape; no "
           "parameters, no MACs; fvcore has no formula for it (0).")
    full_rule = "1 per element"
    args = (Arg("op", "str", doc="the operation", choices=("add", "sub", "rsub", "mul", "div")),
            Arg("value", "float", doc="the constant c"))
    examples = (Example((16, 8, 8), {"op": "add", "value": 0.0}), Example((8, 5, 5), {"op": "div", "value": 2.0}),
                Example((6, 4), {"op": "rsub", "value": 1.0}), Example((10,), {"op": "mul", "value": 0.5}))
    same_shape = True
    elementwise = True
    torch_class = "Scalar"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["op"] == "div" and a["value"] == 0:
            raise LayerError("scalar: division by 0")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp))

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return {"add": "x + {}", "sub": "x - {}", "rsub": "{} - x", "mul": "x * {}", "div": "x / {}"}[
            a["op"]].format(a["value"])
