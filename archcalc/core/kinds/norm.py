"""Normalization layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archcalc.core.kinds.base import (
    ACTIVATION,
    STATISTICS,
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    Saved,
    Shape,
    Tokens,
    numel,
    register,
)

NORMALIZE_RULE = ("7 per element with affine (mean, deviation, its square, variance, normalize, scale, shift), 5 "
                  "without; plus 4 per normalized group (two divisions by the count, eps, the reciprocal square root)")


def affine_tensors(affine: bool, bias: bool) -> int:
    """How many per-element parameter tensors a norm learns: a scale and a shift, a scale only, or none."""
    return (2 if bias else 1) if affine else 0


def normalize_full(elements: int, groups: int, affine: bool, shift: bool = True) -> int:
    """`full` of normalizing with statistics computed from the input, `groups` sets of them (layer and group norm,
    batch norm with batch statistics): per element the mean's addition, the deviation, its square, the variance's
    addition and the multiplication by 1/std (5), plus scale and shift with affine (7; 6 without the `shift`); per
    group the two
    divisions by the count, the eps addition and the reciprocal square root (4). Counted on the executed formula
    in tests/test_full_counted.py."""
    return elements * ((7 if shift else 6) if affine else 5) + 4 * groups


@register
class BatchNorm(Kind):
    name = "batchnorm"
    synonyms = ("bn", "batch_norm", "batchnorm2d", "batch_normalization")
    prefix = "bn"
    doc = ("Batch normalization (nn.BatchNorm1d/2d/3d by input rank). Params 2C (affine); buffers running_mean and "
           "running_var (2C) and num_batches_tracked (one int64). fvcore (eval mode) counts 2 flops per element "
           "with affine, 1 without; without running statistics (track_running_stats: false) the layer normalizes "
           "with batch statistics even in eval mode, and fvcore counts that op as in training: 5 per element "
           "with affine, 4 without. On a token sequence N x C: each channel over the batch and the tokens "
           "(LeViT's LinearNorm: nn.BatchNorm1d(C) on x.flatten(0, 1), reshaped back).")
    full_rule = ("4 per element with affine ((x - mean) * inv_std * gamma + beta, inv_std a constant of the "
                 "model), 2 without; with batch statistics (track_running_stats: false) as layer norm: 7 per "
                 "element with affine, 5 without, plus 4 per channel")
    args = (
        Arg("eps", "float", 1e-5, "added to the variance", minimum=0),
        Arg("momentum", "float", 0.1, "running-statistics momentum", minimum=0),
        Arg("affine", "bool", True, "learn gamma and beta"),
        Arg("track_running_stats", "bool", True, "keep running mean and variance buffers"),
    )
    examples = (Example((64, 56, 56)), Example((32, 10)), Example((4096,), {"affine": False}),
                Example((8, 4, 6, 6)), Example(Tokens(12, 8, (3, 4))))
    same_shape = True
    tokens = True  # N x C: per channel, the channels last

    @staticmethod
    def channels(inp: Shape) -> int:
        return inp[1] if isinstance(inp, Tokens) else inp[0]

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) > 4:
            raise LayerError("batchnorm supports inputs with at most 3 spatial axes")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c = self.channels(inp)
        track = a["track_running_stats"]
        # fvcore's batchnorm_flop_jit: aten::batch_norm's `training` argument, which nn.BatchNorm sets when it has
        # no running statistics, selects the training formula (norm_flop_counter: 5 or 4 per element).
        if track:
            per = (2, 4) if a["affine"] else (1, 2)
            full = numel(inp) * per[1]
        else:
            per = (5, 5) if a["affine"] else (4, 4)
            full = normalize_full(numel(inp), c, a["affine"])
        return Cost(params=2 * c if a["affine"] else 0, buffers=2 * c if track else 0, int_buffers=1 if track else 0,
                    fvcore=numel(inp) * per[0], full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (params // 2, params // 2) if params else ()  # weight and bias, one each per normalized element

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # native_batch_norm keeps the input plus the batch mean and inverse std, one per channel each, in the
        # statistics dtype of the device (see base.itemsize_for).
        return Saved(input=True, per_batch=((2 * self.channels(inp), STATISTICS),))



@register
class LayerNorm(Kind):
    name = "layernorm"
    synonyms = ("ln", "layer_norm", "layer_normalization")
    prefix = "ln"
    doc = ("Layer normalization (nn.LayerNorm) over the trailing `normalized_shape` axes; by default all of a "
           "sample's axes (C x H x W); on a token sequence N x C, each token over its C channels (ViT's norm). "
           "Params 2 per normalized element (affine), 1 with `bias: false` (a scale and no shift, "
           "nn.LayerNorm(bias=False)). fvcore counts 5 flops per element with affine (with or without the shift: "
           "its rule looks at the weight only), 4 without.")
    full_rule = NORMALIZE_RULE + "; 6 per element with a scale and no shift (bias: false)"
    args = (
        Arg("normalized_shape", "ints_or_none", None, "trailing shape to normalize over (default: the whole sample)",
            minimum=1),
        Arg("eps", "float", 1e-5, "added to the variance", minimum=0),
        Arg("elementwise_affine", "bool", True, "learn a per-element scale and shift", aliases=("affine",)),
        Arg("bias", "bool", True, "with elementwise_affine, learn the shift too (false: a scale only, as "
            "nn.LayerNorm(bias=False))"),
    )
    examples = (Example((64, 8, 8)), Example((128,)), Example((16, 7, 7), {"normalized_shape": [7, 7]}),
                Example((12, 5, 5), {"normalized_shape": [5, 5], "bias": False}),
                Example(Tokens(9, 6, (3, 3)), {"eps": 1e-6}))
    same_shape = True
    tokens = True

    def norm_shape(self, a: Mapping[str, Any], inp: Shape) -> tuple[int, ...]:
        shape = a["normalized_shape"]
        if shape is None:
            return (inp[1],) if isinstance(inp, Tokens) else inp
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if len(shape) > len(inp) or tuple(inp[len(inp) - len(shape):]) != shape:
            raise LayerError(f"normalized_shape {list(shape)} is not the trailing shape of the input "
                             f"{'x'.join(map(str, inp))}")
        return shape

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.norm_shape(a, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        affine = a["elementwise_affine"]
        groups = numel(inp) // numel(self.norm_shape(a, inp))
        tensors = affine_tensors(affine, a["bias"])
        return Cost(params=tensors * numel(self.norm_shape(a, inp)), fvcore=numel(inp) * (5 if affine else 4),
                    full=normalize_full(numel(inp), groups, affine, a["bias"]))

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # weight (and bias), one each per normalized element
        return (params // affine_tensors(True, a["bias"]),) * affine_tensors(True, a["bias"]) if params else ()

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        groups = numel(inp) // numel(self.norm_shape(a, inp))
        return Saved(input=True, extra=((2 * groups, STATISTICS),))  # mean and 1/std per normalized group

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # At inference F.layer_norm still runs native_layer_norm, which returns the mean and 1/std beside the output
        # (freed as it returns): measured by tests/test_property_tokens.py. In training they are kept instead.
        return ((2 * (numel(inp) // numel(self.norm_shape(a, inp))), STATISTICS),)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()



@register
class GroupNorm(Kind):
    name = "groupnorm"
    synonyms = ("gn", "group_norm")
    prefix = "gn"
    doc = ("Group normalization (nn.GroupNorm). Params 2C (affine), C with `bias: false` (a scale and no shift: "
           "timm's GroupNorm1NoBias of MetaFormer, F.group_norm without a bias). fvcore counts 5 flops per element "
           "with affine (with or without the shift: its rule looks at the weight only), 4 without.")
    full_rule = NORMALIZE_RULE + "; 6 per element with a scale and no shift (bias: false)"
    contiguous_gradient = True  # native_group_norm_backward: dY.contiguous() (measured by storage on the CPU)
    args = (
        Arg("num_groups", "int", doc="number of channel groups", aliases=("groups",), minimum=1),
        Arg("eps", "float", 1e-5, "added to the variance", minimum=0),
        Arg("affine", "bool", True, "learn a per-channel scale and shift"),
        Arg("bias", "bool", True, "with affine, learn the shift too (false: a scale only)"),
    )
    examples = (Example((64, 14, 14), {"num_groups": 32}), Example((12, 9), {"num_groups": 3}),
                Example((8, 5, 5), {"num_groups": 1, "bias": False}))
    same_shape = True
    contiguous_input = True  # native_group_norm takes X.contiguous(): a crop is copied, and the copy kept

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if inp[0] % a["num_groups"]:
            raise LayerError(f"groupnorm: {inp[0]} channels are not divisible by num_groups {a['num_groups']}")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        per = 5 if a["affine"] else 4
        return Cost(params=affine_tensors(a["affine"], a["bias"]) * inp[0], fvcore=numel(inp) * per,
                    full=normalize_full(numel(inp), a["num_groups"], a["affine"], a["bias"]))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # native_group_norm returns mean and 1/std per group beside the output, at inference too (freed at once)
        return ((2 * a["num_groups"], ACTIVATION),)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training what it allocates is kept for backward (Saved)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        return (out[0],) * (params // out[0]) if params else ()  # weight (and bias), one each per channel

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # native_group_norm (shared by CPU and CUDA) keeps mean and 1/std per group in the input's dtype.
        return Saved(input=True, extra=((2 * a["num_groups"], ACTIVATION),))



@register
class LRN(Kind):
    name = "lrn"
    autocast = "float32"  # F.local_response_norm averages with avg_pool3d, which autocast runs in float32
    synonyms = ("local_response_norm", "localresponsenorm", "local_response_normalization")
    prefix = "norm"
    doc = ("Local response normalization across channels (AlexNet, Sec. 3.3; nn.LocalResponseNorm): "
           "b = a / (k + alpha/size * sum of a^2 over `size` neighbouring channels)^beta. No parameters; AlexNet "
           "uses size 5, alpha 1e-4, beta 0.75, k 2.")
    full_rule = ("size + 5 per element (the square, a window sum of size terms, scale, offset, power, "
                 "division)")
    args = (
        Arg("size", "int", 5, "number of neighbouring channels", minimum=1),
        Arg("alpha", "float", 1e-4, "scale", minimum=0),
        Arg("beta", "float", 0.75, "exponent"),
        Arg("k", "float", 1.0, "additive constant (AlexNet: 2)"),
    )
    examples = (Example((96, 55, 55), {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}), Example((16, 12)),
                Example((8, 3, 5, 5), {"size": 3}))
    same_shape = True
    torch_class = "LocalResponseNorm"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) < 2:
            raise LayerError("lrn needs channels and at least one spatial axis")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp) * (a["size"] + 5))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # F.local_response_norm is a composite (x*x, pad, avg_pool, mul/add/pow, x/div). Beside the output the most
        # alive at once is the larger of: the squares and their channel-padded copy (C + size - 1 channels) while
        # the pad runs, or the pooled sum and two of its scaled/powered successors (two input-sized temporaries
        # beside the output; measured with torch.profiler's memory events). The padded copy wins when C < size - 1.
        c, rest = inp[0], numel(inp[1:])
        return ((max(2 * numel(inp), (c + a["size"] - 1) * rest), 0),)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ()  # in training the composite's intermediates are kept (Saved); the most alive is the end state

    def backward_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                           input_grad: bool = True) -> tuple[tuple[int, int], ...]:
        # x / d's backward first: grad / d, and -grad * (x / d) / d through x / d, its negation and the product:
        # four input-sized tensors at once, one of them becoming part of the input's gradient (measured by storage
        # on the CPU). Later avg_pool3d's backward: `backward_late`.
        return ((3 * numel(inp), 0),)

    def backward_late(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # avg_pool3d's backward makes the gradient of the padded squares (C + size - 1 channels) when as much is
        # alive beside it as when the composite's backward began, less its output's gradient: the larger moment
        # when size - 1 > 3C or so (found by tests/test_property.py: C 1, size 6; measured by storage on the CPU)
        return (((inp[0] + a["size"] - 1) * numel(inp[1:]), 0),)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # F.local_response_norm is composed of ops: x*x, pad, avg_pool, mul/add/pow, x/div. Autograd keeps the input,
        # the padded squares (C + size - 1 channels), the pooled sum and the denominator.
        c, rest = inp[0], numel(inp[1:])
        return Saved(input=True, extra=(((c + a["size"] - 1) * rest, 0), (numel(inp), 0), (numel(inp), 0)))

