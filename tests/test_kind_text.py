"""What a kind says in words: its refusals (which kind, which argument, the numbers at the limit), its warnings, the
did-you-mean for a misspelt kind, and the configuration it shows in the table's config column.

The expected texts are written out here from the layer's arithmetic (the sizes and pads worked by hand in the
comments) and, where torch decides, torch refuses the same input too; none is read back from archcalc.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archcalc.core.kinds import REGISTRY, Kind, LayerError
from archcalc.core.kinds.base import ACCUMULATE, ACTIVATION, MASK, STATISTICS, itemsize_for, register, resolve_padding
from archcalc.torch.recipes import module_call


def _args(name: str, **given: Any) -> dict[str, Any]:
    args = {a.name: a.default for a in REGISTRY[name].args}
    args.update(given)
    return args


def _refusal(name: str, inp: tuple[int, ...], **given: Any) -> str:
    with pytest.raises(LayerError) as info:
        REGISTRY[name].output(_args(name, **given), inp, lambda text: None)
    return str(info.value)


# ---- the input's rank: the kind, the ranks it takes, the shape it got --------------------------------------------

ANY_RANK = "1-D or 2-D or 3-D"
RANKS = [
    # a flattened input (C only) where a kind needs spatial axes; each message names its own kind
    ("conv", (10,), {"out_channels": 2, "kernel_size": 1}, f"conv needs a {ANY_RANK} input with channels first; "
     "got 10 (flattened)"),
    ("zeropad", (10,), {"padding": 1}, f"zeropad needs a {ANY_RANK} input with channels first; got 10 (flattened)"),
    ("upsample", (10,), {"scale_factor": 2}, f"upsample needs a {ANY_RANK} input with channels first; got 10 "
     "(flattened)"),
    ("channel_layernorm", (6,), {}, f"channel_layernorm needs a {ANY_RANK} input with channels first; got 6 "
     "(flattened)"),
    ("layer_scale", (6,), {}, f"layer_scale needs a {ANY_RANK} input with channels first; got 6 (flattened)"),
    ("mean", (6,), {}, f"mean needs a {ANY_RANK} input with channels first; got 6 (flattened)"),
    ("crop", (6,), {"size": 1}, f"crop needs a {ANY_RANK} input with channels first; got 6 (flattened)"),
    # pixel (un)shuffle is 2-D only (nn.PixelShuffle rearranges C x H x W): a 1-D and a 3-D input are refused
    ("pixel_shuffle", (8, 4), {"upscale_factor": 2}, "pixel_shuffle needs a 2-D input with channels first; got 8x4 "
     "(1-D)"),
    ("pixel_shuffle", (8, 2, 4, 4), {"upscale_factor": 2}, "pixel_shuffle needs a 2-D input with channels first; "
     "got 8x2x4x4 (3-D)"),
    ("pixel_unshuffle", (2, 4, 4, 4), {"downscale_factor": 2}, "pixel_unshuffle needs a 2-D input with channels "
     "first; got 2x4x4x4 (3-D)"),
    # a 4-D spatial input: no Conv4d in torch
    ("conv", (2, 3, 3, 3, 3), {"out_channels": 2, "kernel_size": 1}, f"conv needs a {ANY_RANK} input with channels "
     "first; got 2x3x3x3x3 (4-D)"),
]


@pytest.mark.parametrize(("name", "inp", "given", "message"), RANKS, ids=[f"{c[0]}-{i}" for i, c in enumerate(RANKS)])
def test_a_kind_refuses_an_input_of_the_wrong_rank_by_name(name: str, inp: tuple[int, ...], given: dict[str, Any],
                                                          message: str) -> None:
    assert _refusal(name, inp, **given) == message


# ---- one value per spatial axis ----------------------------------------------------------------------------------

def test_a_per_axis_argument_with_the_wrong_count_names_the_argument() -> None:
    conv = {"out_channels": 2, "kernel_size": 3}
    assert _refusal("conv", (3, 8, 8), **{**conv, "stride": (1, 1, 1)}) == \
        "'stride' has 3 values but the input has 2 spatial axes"
    assert _refusal("conv", (3, 8, 8), **{**conv, "dilation": (2,)}) == \
        "'dilation' has 1 values but the input has 2 spatial axes"
    assert _refusal("conv", (3, 8, 8), **{**conv, "kernel_size": (3, 3, 3)}) == \
        "'kernel_size' has 3 values but the input has 2 spatial axes"
    assert _refusal("conv", (3, 8, 8), **{**conv, "padding": (1, 1, 1)}) == \
        "'padding' has 3 entries but the input has 2 spatial axes"
    assert _refusal("zeropad", (3, 8), padding=((1, 2), (0, 3))) == \
        "'padding' has 2 entries but the input has 1 spatial axes"
    with pytest.raises(RuntimeError):  # torch: a 3-D stride for Conv2d
        nn.Conv2d(3, 2, 3, stride=(1, 1, 1))(torch.zeros(1, 3, 8, 8))


# ---- 'same' padding: TensorFlow's rule --------------------------------------------------------------------------
# out = ceil(W / S); total = max((out - 1) * S + F - W, 0); before = total // 2, after = the rest.

SAME = [
    # (W, F, S, (before, after)) worked by hand
    (8, 3, 1, (1, 1)),  # out 8, total 7 + 3 - 8 = 2
    (8, 4, 1, (1, 2)),  # out 8, total 7 + 4 - 8 = 3: the odd column after
    (8, 5, 1, (2, 2)),  # total 4
    (7, 3, 2, (1, 1)),  # out 4, total 3 * 2 + 3 - 7 = 2
    (8, 3, 2, (0, 1)),  # out 4, total 3 * 2 + 3 - 8 = 1
    (5, 1, 2, (0, 0)),  # out 3, total 2 * 2 + 1 - 5 = 0
    (6, 1, 3, (0, 0)),  # out 2, total 3 + 1 - 6 = -2: no padding, not negative
    (9, 6, 2, (2, 3)),  # out 5, total 4 * 2 + 6 - 9 = 5: 2 before, 3 after
]


@pytest.mark.parametrize(("w", "f", "s", "pads"), SAME)
def test_same_padding_is_tensorflows_rule(w: int, f: int, s: int, pads: tuple[int, int]) -> None:
    assert resolve_padding("same", (w,), (f,), (s,)) == (pads,)
    x = torch.randn(1, 1, w)
    weight = torch.randn(1, 1, f)
    out = F.conv1d(F.pad(x, pads), weight, stride=s)
    assert out.shape[-1] == -(-w // s)  # the pads give ceil(W / S) outputs, as 'same' promises
    if s == 1:  # torch's own padding='same' (stride 1 only) pads the same way: the odd column after
        with warnings.catch_warnings():  # an even kernel: torch notes that it pads a copy
            warnings.simplefilter("ignore")
            torch.testing.assert_close(out, F.conv1d(x, weight, padding="same"))


def test_same_padding_of_a_conv_gives_torchs_output() -> None:
    """A 3x3 conv with 'same' padding keeps the size (torch's padding='same' agrees): 1 each side, not 1 and 2."""
    conv = REGISTRY["conv"]
    args = _args("conv", out_channels=2, kernel_size=3, padding="same")
    assert conv.output(args, (3, 7, 9), lambda text: None) == (2, 7, 9)
    assert conv.describe(args, (3, 7, 9)) == "3/1 p1"
    assert nn.Conv2d(3, 2, 3, padding="same")(torch.zeros(1, 3, 7, 9)).shape == (1, 2, 7, 9)


# ---- windows larger than the padded input ------------------------------------------------------------------------

LARGER = [
    # conv 3x3 at dilation 2 spans 2 * (3 - 1) + 1 = 5 > W = 4
    ("conv", (1, 9, 4), {"out_channels": 1, "kernel_size": 3, "dilation": 2},
     "conv kernel 5 (dilated) is larger than the padded input 4 on axis W; use a smaller kernel or more padding",
     nn.Conv2d(1, 1, 3, dilation=2)),
    # dilation 3: 3 * (2 - 1) + 1 = 4 > 3 on L
    ("conv", (1, 3), {"out_channels": 1, "kernel_size": 2, "dilation": 3},
     "conv kernel 4 (dilated) is larger than the padded input 3 on axis L; use a smaller kernel or more padding",
     nn.Conv1d(1, 1, 2, dilation=3)),
    # maxpool 5 with padding 1: 2 + 1 + 1 = 4 < 5 on W (H = 9 is fine)
    ("maxpool", (1, 9, 2), {"kernel_size": 5, "padding": 1},
     "maxpool kernel 5 is larger than the padded input 4 on axis W; use a smaller kernel or more padding",
     nn.MaxPool2d(5, padding=1)),
    # conv 7 with padding 2 on H = 2: 6 < 7 (on D/H/W of a 3-D input)
    ("conv", (1, 8, 2, 8), {"out_channels": 1, "kernel_size": 7, "padding": 2},
     "conv kernel 7 is larger than the padded input 6 on axis H; use a smaller kernel or more padding",
     nn.Conv3d(1, 1, 7, padding=2)),
]


@pytest.mark.parametrize(("name", "inp", "given", "message", "module"), LARGER,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LARGER)])
def test_a_window_larger_than_the_padded_input_is_refused(name: str, inp: tuple[int, ...], given: dict[str, Any],
                                                          message: str, module: nn.Module) -> None:
    assert _refusal(name, inp, **given) == message
    with pytest.raises(RuntimeError):  # torch refuses it too
        module(torch.zeros(1, *inp))


def test_a_window_as_large_as_the_padded_input_gives_one_output() -> None:
    conv = REGISTRY["conv"]
    args = _args("conv", out_channels=1, kernel_size=3, dilation=2, padding=((0, 1), (0, 0)))
    # H: 4 + 0 + 1 = 5 = the dilated kernel: one window; W: 9 - 5 + 1 = 5
    assert conv.output(args, (1, 4, 9), lambda text: None) == (1, 1, 5)
    assert nn.Conv2d(1, 1, 3, dilation=2)(F.pad(torch.zeros(1, 1, 4, 9), (0, 0, 0, 1))).shape == (1, 1, 1, 5)


# ---- the floor warning: (W - F + 2P) / S not an integer ----------------------------------------------------------

WARNINGS = [
    # W 8, F 3, S 2: windows start at 0, 2, 4 and cover 0..6; position 7 is never read
    ("conv", (1, 8, 8), {"out_channels": 1, "kernel_size": 3, "stride": 2},
     ["on H/W: (W - F + 2P)/S = (8 - 3 + 2*0)/2 = 5/2 is not an integer: PyTorch floors it to an output of 3 and "
      "the last 1 input position(s) are never covered"], (3, 3)),
    # W 9 padded 1 before: positions -1..8; windows start at -1, 1, 3, 5 and end at 7: position 8 is never read
    ("conv", (1, 9), {"out_channels": 1, "kernel_size": 3, "stride": 2, "padding": ((1, 0),)},
     ["on L: (W - F + 2P)/S = (9 - 3 + 1+0)/2 = 7/2 is not an integer: PyTorch floors it to an output of 4 and "
      "the last 1 input position(s) are never covered"], (4,)),
    # W 9 padded 1 after: windows start at 0, 2, 4, 6 and cover 0..8; only the padding column is dropped
    ("conv", (1, 9), {"out_channels": 1, "kernel_size": 3, "stride": 2, "padding": ((0, 1),)}, [], (4,)),
    # W 11, F 3, S 4: windows at 0, 4, 8 cover 0..10 exactly
    ("maxpool", (1, 11), {"kernel_size": 3, "stride": 4}, [], (3,)),
    # F = S = 2 on W 7: windows 0-1, 2-3, 4-5; position 6 is never read (a kernel as wide as its stride)
    ("maxpool", (1, 7, 6), {"kernel_size": 2, "stride": 2},
     ["on H: (W - F + 2P)/S = (7 - 2 + 2*0)/2 = 5/2 is not an integer: PyTorch floors it to an output of 3 and "
      "the last 1 input position(s) are never covered"], (3, 3)),
    # F 1 < S 2 on W 8: every other position is skipped by design, the last one too: no warning
    ("maxpool", (1, 8), {"kernel_size": 1, "stride": 2}, [], (4,)),
    # H and W miss different counts, one warning each. F 4, S 3: windows start at 0, 3, 6 and end at 9;
    # H 11 leaves position 10, W 12 leaves 10 and 11
    ("conv", (1, 11, 12), {"out_channels": 1, "kernel_size": 4, "stride": 3},
     ["on H: (W - F + 2P)/S = (11 - 4 + 2*0)/3 = 7/3 is not an integer: PyTorch floors it to an output of 3 and "
      "the last 1 input position(s) are never covered",
      "on W: (W - F + 2P)/S = (12 - 4 + 2*0)/3 = 8/3 is not an integer: PyTorch floors it to an output of 3 and "
      "the last 2 input position(s) are never covered"], (3, 3)),
]


@pytest.mark.parametrize(("name", "inp", "given", "expected", "out"), WARNINGS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(WARNINGS)])
def test_an_uncovered_input_position_is_warned_about(name: str, inp: tuple[int, ...], given: dict[str, Any],
                                                     expected: list[str], out: tuple[int, ...]) -> None:
    kind = REGISTRY[name]
    args = _args(name, **given)
    warnings: list[str] = []
    shape = kind.output(args, inp, warnings.append)
    assert warnings == expected
    assert shape[1:] == out
    with torch.no_grad():  # torch floors to the same size
        assert tuple(module_call(kind, args, inp).make()(torch.zeros(1, *inp)).shape[2:]) == out


# ---- upsample's target: exactly one of scale_factor, size and size_of --------------------------------------------

def test_upsample_needs_exactly_one_target() -> None:
    one = "upsample needs exactly one of scale_factor, size and size_of"
    assert _refusal("upsample", (3, 4, 4)) == one
    assert _refusal("upsample", (3, 4, 4), scale_factor=2, size=8) == one
    assert _refusal("upsample", (3, 4, 4), scale_factor=2, size_of=(3, 8, 8)) == one
    assert _refusal("upsample", (3, 4, 4), size=8, size_of=(3, 8, 8)) == one
    # size_of names a tensor (C, *spatial): its spatial rank must be the input's
    assert _refusal("upsample", (3, 4, 4), size_of=(3, 8)) == \
        "size_of names a tensor with 1 spatial axes; the input has 2"
    assert _refusal("upsample", (3, 4, 4), size_of=(3, 8, 8, 8)) == \
        "size_of names a tensor with 3 spatial axes; the input has 2"
    assert _refusal("upsample", (3, 4, 4), size=(8, 8, 8)) == "size has 3 values for 2 spatial axes"
    assert _refusal("upsample", (3, 4, 4), scale_factor=(2, 2, 2)) == "scale_factor has 3 values for 2 spatial axes"
    with pytest.raises(ValueError):  # torch: a 3-D size for a 2-D input
        F.interpolate(torch.zeros(1, 3, 4, 4), size=(8, 8, 8))


@pytest.mark.parametrize(("inp", "given", "out"), [
    ((3, 4, 5), {"size_of": (7, 9, 10)}, (3, 9, 10)),  # the other tensor's spatial size; its channels do not matter
    ((3, 4, 5), {"size": (6, 15)}, (3, 6, 15)),
    ((3, 4, 5), {"size": 7}, (3, 7, 7)),
    ((2, 3, 4, 5), {"size_of": (1, 6, 8, 10), "mode": "linear"}, (2, 6, 8, 10)),
])
def test_upsample_to_a_size_is_what_interpolate_gives(inp: tuple[int, ...], given: dict[str, Any],
                                                     out: tuple[int, ...]) -> None:
    args = _args("upsample", **given)
    assert REGISTRY["upsample"].output(args, inp, lambda text: None) == out
    size = given.get("size", given.get("size_of", (0,))[1:])
    mode = {"nearest": "nearest", "linear": {1: "linear", 2: "bilinear", 3: "trilinear"}[len(inp) - 1]}[args["mode"]]
    assert F.interpolate(torch.zeros(1, *inp), size=size, mode=mode).shape[1:] == out


# ---- the config column -------------------------------------------------------------------------------------------
# The README's tables write a window layer as kernel/stride p padding (ResNet-50's stem conv: 7/2 p3; its max pool:
# 3/2 p1), one value where the axes agree, per-axis values joined by x as shapes are; [before, after] pads as
# before/after per axis.

DESCRIBED = [
    ("conv", (3, 224, 224), {"out_channels": 64, "kernel_size": 7, "stride": 2, "padding": 3}, "7/2 p3"),
    ("maxpool", (64, 112, 112), {"kernel_size": 3, "stride": 2, "padding": 1}, "3/2 p1"),
    # Inception-v3's factorised 1x7 convolution (Szegedy et al. 2016), padding (0, 3)
    ("conv", (128, 17, 17), {"out_channels": 128, "kernel_size": (1, 7), "padding": (0, 3)}, "1x7/1 p0x3"),
    ("conv", (8, 9, 9), {"out_channels": 4, "kernel_size": 3, "stride": (1, 2)}, "3/1x2 p0"),
    ("zeropad", (2, 5, 6), {"padding": ((0, 1), (2, 3))}, "p0/1,2/3"),
    ("zeropad", (2, 5, 6), {"padding": ((1, 1), (2, 2))}, "p1x2"),
    ("crop", (4, 9, 7), {"size": (4, 6)}, "-> 4x6"),
    ("crop", (4, 9, 7), {"to": (1, 5, 5)}, "-> 5x5"),  # the cropped size, written as a shape
]


@pytest.mark.parametrize(("name", "inp", "given", "text"), DESCRIBED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(DESCRIBED)])
def test_the_config_column_writes_the_window(name: str, inp: tuple[int, ...], given: dict[str, Any],
                                             text: str) -> None:
    assert REGISTRY[name].describe(_args(name, **given), inp) == text


@pytest.mark.parametrize(("given", "words"), [
    ({"scale_factor": 2}, ("x2", "nearest")),
    ({"scale_factor": 3, "mode": "linear"}, ("x3", "linear")),
    ({"size": 25, "mode": "linear"}, ("25", "linear")),
    ({"size_of": (7, 16, 20)}, ("16x20", "nearest")),  # the other tensor's spatial size, not its channels
])
def test_upsample_shows_its_target_and_mode(given: dict[str, Any], words: tuple[str, ...]) -> None:
    text = REGISTRY["upsample"].describe(_args("upsample", **given), (7, 8, 10))
    assert all(word in text for word in words), text
    assert "None" not in text and "7" not in text.replace("x", " ").split()


def test_shuffles_and_means_show_what_they_do() -> None:
    # pixel_shuffle multiplies H and W by r; pixel_unshuffle divides them by r
    up = REGISTRY["pixel_shuffle"].describe(_args("pixel_shuffle", upscale_factor=3), (27, 4, 6))
    down = REGISTRY["pixel_unshuffle"].describe(_args("pixel_unshuffle", downscale_factor=3), (3, 9, 6))
    assert (up, down) == ("x3", "/3")
    # mean reduces the dims x.mean([2, 3]) names (0 is the batch, 1 the channels): 2..rank+1
    for inp in ((8, 12), (64, 7, 7), (4, 3, 5, 5)):
        dims = range(2, torch.zeros(1, *inp).dim())
        assert REGISTRY["mean"].describe(_args("mean"), inp) == "over " + ", ".join(map(str, dims))
    # channel layer norm normalizes over the C of each position: C = 96, not H or W (14)
    assert REGISTRY["channel_layernorm"].describe(_args("channel_layernorm"), (96, 14, 12)) == "over 96 channels"


# ---- item sizes of saved tensors and temporaries -----------------------------------------------------------------

def test_item_sizes_by_code_dtype_and_device() -> None:
    i64, f32, f16, f64 = (t.itemsize for t in (torch.int64, torch.float32, torch.float16, torch.float64))
    assert itemsize_for(i64, f16, "cpu") == 8  # a positive code is bytes per element (max-pool indices)
    assert itemsize_for(torch.bool.itemsize, f32, "cuda") == 1  # one byte is one byte, not a code
    assert itemsize_for(ACTIVATION, f16, "cuda") == f16
    # statistics: the accumulate type on CUDA (float32 for half, the dtype itself from float32 up), the activation
    # dtype on the CPU
    assert [itemsize_for(STATISTICS, size, "cuda") for size in (f16, f32, f64)] == [f32, f32, f64]
    assert [itemsize_for(STATISTICS, size, "cpu") for size in (f16, f32, f64)] == [f16, f32, f64]
    # dropout's mask: a bool (1 byte) from CUDA's fused native_dropout, a noise tensor of the input's dtype on the
    # CPU
    assert itemsize_for(MASK, f32, "cuda") == torch.bool.itemsize
    assert itemsize_for(MASK, f64, "cpu") == f64
    # a fused kernel's accumulator (attention's log-sum-exp): float32 for half, the dtype itself from float32 up,
    # on both devices (at::opmath_type)
    assert [itemsize_for(ACCUMULATE, size, device) for size in (f16, f32, f64) for device in ("cpu", "cuda")] == \
        [f32, f32, f32, f32, f64, f64]
    with pytest.raises(ValueError, match=r"unknown item-size code -4$"):
        itemsize_for(-4, f32, "cpu")


def test_the_cpu_dropout_keeps_a_mask_of_the_inputs_dtype() -> None:
    """The CPU half of MASK, seen in autograd's saved tensors: F.dropout in training keeps a float64 mask for a
    float64 input, and nothing bool."""
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    saved: list[torch.dtype] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        F.dropout(x, 0.5, training=True)
    assert saved and torch.bool not in saved and torch.float64 in saved


# ---- the registry ------------------------------------------------------------------------------------------------

def test_a_new_kind_is_registered_as_an_instance_and_an_unknown_argument_named() -> None:
    class Probe(Kind):
        name = "probe_kind_for_a_test"

    try:
        assert register(Probe) is Probe
        assert isinstance(REGISTRY["probe_kind_for_a_test"], Probe)
    finally:
        REGISTRY.pop("probe_kind_for_a_test", None)
    with pytest.raises(KeyError, match="strides"):
        REGISTRY["conv"].arg("strides")
    # a kind without arguments of its own: not in place, no config to show
    plain = REGISTRY["sigmoid"]
    assert plain.inplace({}) is False and plain.describe({}, (3, 4, 4)) == ""
