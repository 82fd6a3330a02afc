"""Kinds of post-2015 CNNs (ConvNeXt, EfficientNet, MNASNet, super-resolution and segmentation heads):
channel-wise layer norm, layer scale, stochastic depth, global mean, pixel (un)shuffle and centre crop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
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
    Tokens,
    numel,
    register,
    spatial_rank,
)
from archcalc.core.kinds.dense import PER, per_shape
from archcalc.core.kinds.norm import NORMALIZE_RULE, affine_tensors, normalize_full


@register
class ChannelLayerNorm(Kind):
    name = "channel_layernorm"
    prefix = "norm"
    doc = ("Layer normalization over the channels of each position of a C x H x W tensor (ConvNeXt's LayerNorm2d, "
           "Liu et al. 2022): computed as torchvision does, permute to channels-last, F.layer_norm over C, permute "
           "back. Params 2C (affine), C with `bias: false` (a scale and no shift: timm's LayerNorm2dNoBias of "
           "MetaFormer). fvcore counts 5 per element with affine (with or without the shift), 4 without.")
    full_rule = NORMALIZE_RULE + " (a group per position); 6 per element with a scale and no shift (bias: false)"
    args = (
        Arg("eps", "float", 1e-6, "added to the variance (ConvNeXt: 1e-6)", minimum=0),
        Arg("elementwise_affine", "bool", True, "learn a per-channel scale and shift", aliases=("affine",)),
        Arg("bias", "bool", True, "with elementwise_affine, learn the shift too (false: a scale only)"),
    )
    examples = (Example((96, 14, 14)), Example((8, 5, 5), {"elementwise_affine": False}), Example((6, 9)),
                Example((10, 4, 6), {"bias": False}))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        per = 5 if a["elementwise_affine"] else 4
        return Cost(params=affine_tensors(a["elementwise_affine"], a["bias"]) * inp[0], fvcore=per * numel(inp),
                    full=normalize_full(numel(inp), numel(inp[1:]), a["elementwise_affine"], a["bias"]))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # layer_norm makes the channels-last view contiguous before normalizing (a copy of the input) and computes
        # float32 mean and 1/std per position while it runs (measured with torch.profiler's memory events).
        return ((numel(inp), 0), (2 * (numel(inp) // inp[0]), 4))

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), 0),)  # the contiguous copy; the statistics are kept (Saved)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0],) * (params // out[0]) if params else ()  # weight (and bias), one each per channel

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
    autocast = "promotes"  # x * a float32 parameter: the output is float32 (type promotion), and what follows
    prefix = "scale"
    doc = ("A learned multiplier gamma, initialised to a small constant: ConvNeXt's and CaiT's layer scale (x * "
           "gamma), per channel (C x 1 x 1); or per position, per element, or one value for the tensor (per: "
           "tensor: HGNetV2's learnable affine). fvcore has no formula for the multiply (0).")
    full_rule = "1 per element"
    args = (Arg("init", "float", 1e-6, "initial value of gamma"),
            Arg("per", "str", "channel", "what each value of gamma belongs to", choices=PER))
    examples = (Example((96, 14, 14)), Example((16, 4, 4), {"init": 0.5}), Example((8, 5, 5), {"per": "tensor"}),
                Example((6, 3, 4), {"per": "position"}), Example(Tokens(6, 8, (2, 3)), {"init": 0.5}))
    same_shape = True
    tokens = True  # on N x C tokens, per channel is one value per channel (1 x C: CaiT's, CAFormer's res_scale)

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
class GRN(Kind):
    name = "grn"
    synonyms = ("global_response_norm", "globalresponsenorm")
    prefix = "grn"
    doc = ("Global Response Normalization (ConvNeXt-V2, Woo et al. 2023, Algorithm 1; timm's GlobalResponseNorm): "
           "gx = the L2 norm of each channel over the spatial axes, nx = gx / (mean of gx over the channels + eps), "
           "y = x + (bias + weight * (x * nx)). Params 2C (weight and bias, zero-initialised). No MACs; "
           "FlopCounterMode and fvcore count none of it (no formula for norm, mean, division or addcmul).")
    full_rule = ("6 per element (the square and the sum of the norm, x * nx, the weight's product, the bias's "
                 "sum, the residual sum), 3 per channel (the square root, the mean's sum, the division) and 2 (the "
                 "mean's division, eps)")
    args = (Arg("eps", "float", 1e-6, "added to the channels' mean norm", minimum=0),)
    examples = (Example((16, 7, 7)), Example((8, 5, 4), {"eps": 1e-5}), Example((6, 9)))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=2 * inp[0], full=6 * numel(inp) + 3 * inp[0] + 2)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0], out[0])  # weight, bias

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # x * nx and the fused multiply-add's result (one alive at a time beside the output), gx and nx per channel
        return ((numel(inp), ACTIVATION), (2 * inp[0], ACTIVATION))

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), ACTIVATION),)  # the fused multiply-add's result (x * nx is kept)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the norm keeps its input and result (gx); the division its operands (gx, and the mean + eps: one value);
        # x * nx keeps x and nx; addcmul keeps x * nx (its weight is a parameter)
        return Saved(input=True, extra=((numel(inp) + 2 * inp[0] + 1, ACTIVATION),))

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input needs no gradient: the norm, division and x * nx record nothing; addcmul keeps x * nx for the
        # weight's gradient
        return Saved(extra=((numel(inp), ACTIVATION),))


@register
class EvoNormS0(Kind):
    name = "evonorm_s0"
    synonyms = ("evonorm", "evonorm2ds0", "evonorm2ds0a")
    prefix = "evonorm"
    doc = ("EvoNorm-S0 (Liu et al. 2020, \"Evolving Normalization-Activation Layers\"; timm's EvoNorm2dS0 and "
           "EvoNorm2dS0a), a normalization and activation in one: y = x * sigmoid(v * x) / group_std(x) * weight + "
           "bias, group_std the square root of each group's biased variance plus eps, per sample (`groups` groups "
           "of channels); with `act: false`, x / group_std(x) * weight + bias (S0a's apply_act=False). Params 3C "
           "(v, weight, bias), 2C without act. No MACs; FlopCounterMode and fvcore count none of it.")
    full_rule = ("per element 7 (the group mean's sum, the deviation, its square, the variance's sum, the division "
                 "by the deviation, scale, shift) and 5 more with act (v * x, the sigmoid's 3, the product); per "
                 "group 4 (two divisions by the count, eps, the square root)")
    args = (
        Arg("groups", "int", 32, "groups of channels the deviation is taken over", minimum=1),
        Arg("eps", "float", 1e-5, "added to the variance (timm's S0a: 1e-3)", minimum=0),
        Arg("act", "bool", True, "gate x by sigmoid(v * x) with a learned v per channel"),
    )
    examples = (Example((16, 6, 6), {"groups": 4}), Example((12, 5, 5), {"groups": 3, "act": False, "eps": 1e-3}),
                Example((8, 4, 7), {"groups": 8}))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        if inp[0] % a["groups"]:
            raise LayerError(f"evonorm_s0: {inp[0]} channels are not divisible by groups {a['groups']}")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=(3 if a["act"] else 2) * inp[0],
                    full=(12 if a["act"] else 7) * numel(inp) + 4 * a["groups"])

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0],) * (params // out[0])  # weight, bias (and v)

    def deviation(self, a: Mapping[str, Any], inp: Shape) -> int:
        """Elements per sample of the deviation expanded to x's shape: a copy of x's size when a group has several
        channels (the expanded groups cannot be viewed as channels), else a view of the one per group."""
        return numel(inp) if inp[0] > a["groups"] else a["groups"]

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # beside the output at the last two steps (measured with torch.profiler's memory events): the deviation,
        # the product before the shift, and with act x * sigmoid(v * x) (a local of the forward)
        return ((self.deviation(a, inp) + (2 if a["act"] else 1) * numel(inp), ACTIVATION),)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), ACTIVATION),)  # the product before the shift (v * x too, freed earlier)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input (the variance's, v * x's and the gate's), the square root per group (the deviation, or its
        # copy too), the quotient (for the weight); with act the sigmoid and x * sigmoid(v * x) (the division's)
        n = numel(inp)
        copy = n if self.deviation(a, inp) == n else 0
        return Saved(input=True, extra=(((3 if a["act"] else 1) * n + copy + a["groups"], ACTIVATION),))

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input needs no gradient: without act only the quotient is kept (for the weight); with act v * x's
        # input, the sigmoid, the deviation (the division's, its other operand needing a gradient) and the quotient
        n = numel(inp)
        if not a["act"]:
            return Saved(extra=((n, ACTIVATION),))
        return Saved(input=True, extra=((2 * n + self.deviation(a, inp), ACTIVATION),))


@register
class RMSNorm(Kind):
    name = "rmsnorm"
    synonyms = ("rms_norm", "rmsnorm2d", "simplenorm", "simplenorm2d")
    prefix = "norm"
    doc = ("RMS normalization over the channels of each position (Zhang and Sennrich 2019; timm's RmsNorm2d and "
           "RmsNorm): y = x / sqrt(mean of x^2 over the channels + eps) * weight; with `statistic: variance`, the "
           "channels' unbiased variance (torch.var's default, divided by C - 1) in place of the mean square, x "
           "itself not centred (timm's SimpleNorm2d and SimpleNorm). Params C (affine). No MACs; FlopCounterMode "
           "and fvcore count none of it.")
    full_rule = ("mean_square: per element the square, the sum, the product by 1/rms and the weight's (4; 3 "
                 "without affine); per position the division by the count, eps and the reciprocal square root (3). "
                 "variance: per element the mean's sum, the deviation, its square, the sum, the two products (6; 5 "
                 "without affine); per position two divisions (by C and C - 1), eps, the reciprocal square root (4)")
    args = (
        Arg("eps", "float", 1e-6, "added to the mean square (or the variance)", minimum=0),
        Arg("elementwise_affine", "bool", True, "learn a scale per channel", aliases=("affine",)),
        Arg("statistic", "str", "mean_square", "what 1/sqrt(. + eps) is taken of: the channels' mean square "
            "(RMSNorm) or their unbiased variance (timm's SimpleNorm)", choices=("mean_square", "variance")),
    )
    examples = (Example((16, 6, 6)), Example((8, 5, 7), {"statistic": "variance", "eps": 1e-5}),
                Example((12, 9), {"elementwise_affine": False}),
                Example((6, 4, 4), {"statistic": "variance", "elementwise_affine": False}))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        affine, positions = a["elementwise_affine"], numel(inp[1:])
        if a["statistic"] == "variance":
            full = (6 if affine else 5) * numel(inp) + 4 * positions
        else:
            full = (4 if affine else 3) * numel(inp) + 3 * positions
        return Cost(params=inp[0] if affine else 0, full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params,) if params else ()

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # the statistic per position (a local of the forward) and, with affine, x / rms before the weight's
        # product; without, 1 / rms while x / rms is made
        positions = numel(inp[1:])
        return ((positions + (numel(inp) if a["elementwise_affine"] else positions), ACTIVATION),)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input (the square's or the variance's, and the product's), 1 / rms per position, and with affine
        # x / rms (for the weight's gradient)
        extra = numel(inp[1:]) + (numel(inp) if a["elementwise_affine"] else 0)
        return Saved(input=True, extra=((extra, ACTIVATION),))

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input needs no gradient: only the weight's product records, keeping x / rms
        return Saved(extra=((numel(inp), ACTIVATION),)) if a["elementwise_affine"] else Saved()


@register
class FRN(Kind):
    name = "frn"
    synonyms = ("filter_response_norm", "filterresponsenorm", "filterresponsenormtlu2d")
    prefix = "frn"
    doc = ("Filter Response Normalization (Singh and Krishnan 2019, eq. 1-3; timm's FilterResponseNormTlu2d): "
           "y = x / sqrt(mean of x^2 over the spatial axes + eps) * weight + bias, per sample and channel, then "
           "with `tlu` the thresholded linear unit max(y, tau), a learned tau per channel. Params 2C, 3C with tlu. "
           "No MACs; FlopCounterMode and fvcore count none of it.")
    full_rule = ("per element the square, the sum, x / rms, scale and shift (5), and the maximum with tlu (6); per "
                 "channel the division by the count, eps and the reciprocal square root (3)")
    args = (
        Arg("eps", "float", 1e-5, "added to the mean square", minimum=0),
        Arg("tlu", "bool", True, "apply max(y, tau) with a learned tau per channel"),
    )
    examples = (Example((8, 6, 6)), Example((6, 5, 7), {"tlu": False, "eps": 1e-6}), Example((4, 9)))
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        spatial_rank(self.name, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=(3 if a["tlu"] else 2) * inp[0], full=(6 if a["tlu"] else 5) * numel(inp) + 3 * inp[0])

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0],) * (params // out[0])  # weight, bias (and tau)

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # x / rms and the scaled product are alive with the shifted sum (measured with torch.profiler)
        return ((2 * numel(inp), ACTIVATION),)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), ACTIVATION),)  # the square (freed by the mean), the scaled product

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input (the square's and the product's), 1 / rms per channel, x / rms (the weight's); with tlu the
        # maximum's operand
        n = numel(inp)
        return Saved(input=True, extra=((inp[0] + (2 if a["tlu"] else 1) * n, ACTIVATION),))

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # the input needs no gradient: x / rms (the weight's), and with tlu the maximum's operand (tau's)
        return Saved(extra=(((2 if a["tlu"] else 1) * numel(inp), ACTIVATION),))


@register
class Scalar(Kind):
    name = "scalar"
    synonyms = ("constant", "scale")
    doc = ("Arithmetic with a constant: x + c, x - c, c - x, x * c, x / c or x ** c (op add, sub, rsub, mul, div, "
           "pow), as a forward writes it (`x + 0` in RepVGG, `x / 2`, a fixed scale, StarReLU's `relu(x) ** 2`, "
           "`x.square()`). A new tensor of the input's shape; no parameters, no MACs; fvcore and FlopCounterMode "
           "have no formula for it (0). Autograd keeps the input of a power (pow's backward needs it), of nothing "
           "else.")
    full_rule = "1 per element"
    args = (Arg("op", "str", doc="the operation", choices=("add", "sub", "rsub", "mul", "div", "pow")),
            Arg("value", "float", doc="the constant c"))
    examples = (Example((16, 8, 8), {"op": "add", "value": 0.0}), Example((8, 5, 5), {"op": "div", "value": 2.0}),
                Example((6, 4), {"op": "rsub", "value": 1.0}), Example((10,), {"op": "mul", "value": 0.5}),
                Example((6, 5, 5), {"op": "pow", "value": 2.0}))
    same_shape = True
    elementwise = True
    torch_class = "Scalar"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["op"] == "div" and a["value"] == 0:
            raise LayerError("scalar: division by 0")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # pow_backward(grad, self, exponent) keeps the input; the others keep nothing (a constant is not a tensor)
        return Saved(input=True) if a["op"] == "pow" else Saved()

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return {"add": "x + {}", "sub": "x - {}", "rsub": "{} - x", "mul": "x * {}", "div": "x / {}",
                "pow": "x ** {}"}[a["op"]].format(a["value"])
