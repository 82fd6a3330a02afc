"""Each kind refuses what cannot run, saying why with the numbers involved; and where torch decides, torch refuses
the same input (the oracle that the refusal is not archcalc's invention). Also the full-FLOPs rules on the argument
variants the examples do not reach.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import load_text
from measure import saved_bytes
from test_kind_rules import FULL

from archcalc.core.analyze import analyze
from archcalc.core.kinds import REGISTRY, Kind, LayerError
from archcalc.core.kinds.base import register
from archcalc.torch.recipes import module_call


def _args(name: str, **given: Any) -> dict[str, Any]:
    args = {a.name: a.default for a in REGISTRY[name].args}
    args.update(given)
    return args


# (kind, input, arguments, the message, whether torch's own module refuses the input too)
REFUSED: list[tuple[str, tuple[int, ...], dict[str, Any], str, bool]] = [
    ("channel_shuffle", (16, 8, 8), {"groups": 3}, "channel_shuffle: 16 channels do not split into 3 groups", True),
    ("channel_shuffle", (16,), {"groups": 2}, "channel_shuffle needs a channels-first input with spatial axes",
     True),
    ("channel_slice", (16, 8, 8), {"start": 4, "stop": 20},
     "channel_slice 4:20 is not a non-empty range of the input's 16 channels", False),
    ("channel_slice", (16, 8, 8), {"start": 8, "stop": 8},
     "channel_slice 8:8 is not a non-empty range of the input's 16 channels", False),
    ("channel_slice", (16,), {"start": 0, "stop": 8}, "channel_slice needs a channels-first input with spatial axes",
     False),
    ("softmax", (16, 8, 8), {"dim": 4}, "softmax dim 4 does not exist: the input has dims 1..3 (0 is the batch)",
     True),
    ("maxout", (96, 8, 8), {"pieces": 5}, "maxout: 96 channels are not divisible by pieces 5", False),
    ("bias", (10,), {"per": "position"}, "bias per position needs spatial axes; the input is flattened", False),
    ("pixel_shuffle", (15, 4, 4), {"upscale_factor": 2}, "pixel_shuffle: 15 channels are not divisible by 2^2 = 4",
     True),
    ("pixel_unshuffle", (4, 7, 8), {"downscale_factor": 2}, "pixel_unshuffle: 7x8 is not divisible by 2", True),
    ("pixel_unshuffle", (4, 8, 7), {"downscale_factor": 2}, "pixel_unshuffle: 8x7 is not divisible by 2", True),
    ("stochastic_depth", (16, 4, 4), {"p": 1.0}, "stochastic_depth p must be below 1, not 1.0", False),
    ("dropout", (16, 4, 4), {"p": 1.0}, "dropout p must be below 1, not 1.0", False),
    ("crop", (8, 12, 12), {"size": 13}, "cannot crop 12x12 to the larger 13x13", False),
    ("crop", (8, 12, 12), {"size": (4, 13)}, "cannot crop 12x12 to the larger 4x13", False),
    ("crop", (8, 12, 12), {"size": (4, 4, 4)}, "crop size has 3 values for 2 spatial axes", False),
    ("crop", (8, 12, 12), {}, "crop needs exactly one of 'to' (a tensor name) and 'size'", False),
    ("crop", (8, 12, 12), {"size": 4, "to": (8, 4, 4)}, "crop needs exactly one of 'to' (a tensor name) and 'size'",
     False),
    ("crop", (8, 12, 12), {"to": (8, 4, 4, 4)}, "crop 'to' has 3 spatial axes, the input 2", False),
    ("groupnorm", (12, 9), {"num_groups": 5}, "groupnorm: 12 channels are not divisible by num_groups 5", True),
    ("conv", (6, 9, 9), {"out_channels": 4, "kernel_size": 3, "groups": 4},
     "conv: in_channels 6 is not divisible by groups 4", True),
    ("conv", (8, 9, 9), {"out_channels": 6, "kernel_size": 3, "groups": 4},
     "conv: out_channels 6 is not divisible by groups 4", True),
    ("prelu", (16, 8, 8), {"num_parameters": 3}, "prelu num_parameters must be 1 or the channel count 16, not 3",
     True),
    ("zeropad", (3, 8, 8), {"padding": "same"}, "zeropad takes explicit sizes, not 'same' or 'valid'", False),
    ("zeropad", (3, 8, 8), {"padding": "valid"}, "zeropad takes explicit sizes, not 'same' or 'valid'", False),
    ("layernorm", (3, 4, 4), {"normalized_shape": (5,)},
     "normalized_shape [5] is not the trailing shape of the input 3x4x4", False),
    ("layernorm", (3, 4, 4), {"normalized_shape": (2, 3, 4, 4)},
     "normalized_shape [2, 3, 4, 4] is not the trailing shape of the input 3x4x4", False),
]


@pytest.mark.parametrize(("name", "inp", "given", "message", "torch_refuses"), REFUSED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REFUSED)])
def test_refused_with_the_reason(name: str, inp: tuple[int, ...], given: dict[str, Any], message: str,
                                 torch_refuses: bool) -> None:
    kind = REGISTRY[name]
    args = _args(name, **given)
    with pytest.raises(LayerError) as info:
        kind.output(args, inp, lambda text: None)
    assert str(info.value) == message
    if torch_refuses:
        with pytest.raises((RuntimeError, ValueError, IndexError)):
            module = module_call(kind, args, inp).make()
            module(torch.randn(2, *inp))


# The same arguments, one step inside the limit, are accepted (the refusal is not off by one).
ACCEPTED = [
    ("channel_slice", (16, 8, 8), {"start": 4, "stop": 16}, (12, 8, 8)),
    ("channel_slice", (16, 8, 8), {"start": 7, "stop": 8}, (1, 8, 8)),
    # one spatial axis is enough (torch shuffles and slices (N, C, L) alike)
    ("channel_shuffle", (6, 5), {"groups": 3}, (6, 5)),
    ("channel_slice", (16, 5), {"start": 2, "stop": 6}, (4, 5)),
    ("softmax", (16, 8, 8), {"dim": 3}, (16, 8, 8)),
    ("crop", (8, 12, 12), {"size": 12}, (8, 12, 12)),
    ("crop", (8, 12, 12), {"size": (3, 12)}, (8, 3, 12)),
    ("crop", (8, 12, 12), {"to": (5, 4, 6)}, (8, 4, 6)),
    ("stochastic_depth", (16, 4, 4), {"p": 0.99}, (16, 4, 4)),
    ("dropout", (16, 4, 4), {"p": 0.99}, (16, 4, 4)),
    ("pixel_shuffle", (16, 4, 4), {"upscale_factor": 2}, (4, 8, 8)),
    ("pixel_unshuffle", (4, 8, 6), {"downscale_factor": 2}, (16, 4, 3)),
    ("maxout", (96, 8, 8), {"pieces": 4}, (24, 8, 8)),
    ("bias", (4, 3, 5), {"per": "position"}, (4, 3, 5)),
    ("layernorm", (3, 4, 4), {"normalized_shape": 4}, (3, 4, 4)),
    ("layernorm", (3, 4, 4), {"normalized_shape": (3, 4, 4)}, (3, 4, 4)),
    ("zeropad", (3, 8, 8), {"padding": (1, 2)}, (3, 10, 12)),
    ("zeropad", (3, 8, 8), {"padding": ((1, 2), (0, 3))}, (3, 11, 11)),
]


@pytest.mark.parametrize(("name", "inp", "given", "out"), ACCEPTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(ACCEPTED)])
def test_accepted_at_the_limit(name: str, inp: tuple[int, ...], given: dict[str, Any], out: tuple[int, ...]) -> None:
    kind = REGISTRY[name]
    args = _args(name, **given)
    assert kind.output(args, inp, lambda text: None) == out
    module = module_call(kind, args, inp).make().eval()
    with torch.no_grad():
        assert tuple(module(torch.randn(2, *inp)).shape) == (2, *out)  # torch agrees on the shape
    assert sum(p.numel() for p in module.parameters()) == kind.cost(args, inp, out).params


# Argument variants beyond the examples, for the full-FLOPs rules (test_kind_rules.FULL) and torch's parameters.
VARIANTS = [
    ("gelu", (16, 4, 4), {"approximate": "tanh"}),
    ("batchnorm", (8, 4, 4), {"track_running_stats": False}),
    ("batchnorm", (8, 4, 4), {"track_running_stats": False, "affine": False}),
    ("batchnorm", (8, 4, 4), {"affine": False}),
    ("layernorm", (8, 4, 4), {"elementwise_affine": False}),
    ("groupnorm", (8, 4, 4), {"num_groups": 2, "affine": False}),
    ("conv_transpose", (4, 5, 5), {"out_channels": 2, "kernel_size": 3, "bias": True}),
    ("linear", (12,), {"out_features": 5, "bias": False}),
    ("upsample", (4, 5, 5), {"scale_factor": 2, "mode": "bilinear"}),
    ("upsample", (4, 5), {"scale_factor": 3, "mode": "linear"}),
    ("mean", (4, 3, 5, 5), {}),
    ("maxpool", (4, 9, 9), {"kernel_size": (2, 3)}),
    ("avgpool", (4, 9, 9), {"kernel_size": (3, 2)}),
    ("bias", (4, 3, 5), {"per": "element"}),
    ("bias", (4, 3, 5), {"per": "position"}),
    ("maxout", (12, 3, 3), {"pieces": 3}),
    ("lrn", (8, 5, 5), {"size": 2}),
]


@pytest.mark.parametrize(("name", "inp", "given"), VARIANTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(VARIANTS)])
def test_variants_follow_the_rules_and_torch(name: str, inp: tuple[int, ...], given: dict[str, Any]) -> None:
    kind = REGISTRY[name]
    args = _args(name, **given)
    out = kind.output(args, inp, lambda text: None)
    cost = kind.cost(args, inp, out)
    assert cost.full == FULL[name](args, inp, out, cost.macs)
    module = module_call(kind, args, inp).make().eval()
    with torch.no_grad():
        assert tuple(module(torch.randn(2, *inp)).shape) == (2, *out)
    assert sum(p.numel() for p in module.parameters()) == cost.params
    assert sum(b.numel() for b in module.buffers()) == cost.buffers + cost.int_buffers


# Saved-for-backward variants the examples do not reach (in place, asymmetric padding, partial normalized shapes,
# nothing to drop), against autograd with the input needing a gradient (measure.saved_bytes).
SAVED_VARIANTS = [
    ("relu6", (4, 5, 5), {"inplace": True}),
    ("hardswish", (4, 5, 5), {"inplace": True}),
    ("hardsigmoid", (4, 5, 5), {"inplace": True}),
    ("silu", (4, 5, 5), {"inplace": True}),
    ("relu", (4, 5, 5), {"inplace": True}),
    ("avgpool", (4, 7, 7), {"kernel_size": 2, "stride": 1, "padding": "same"}),
    ("maxpool", (4, 7, 7), {"kernel_size": 2, "stride": 1, "padding": "same"}),
    ("conv", (4, 7, 7), {"out_channels": 2, "kernel_size": 2, "padding": "same"}),
    ("layernorm", (3, 4, 4), {"normalized_shape": (4, 4)}),
    ("layernorm", (3, 4, 4), {"normalized_shape": 4, "elementwise_affine": False}),
    ("stochastic_depth", (4, 5, 5), {"p": 0.0}),
    ("stochastic_depth", (4, 5, 5), {"p": 0.3, "mode": "batch"}),
    ("dropout", (4, 5, 5), {"p": 0.0}),
    ("channel_layernorm", (4, 5, 5), {"elementwise_affine": False}),
    ("adaptive_avgpool", (4, 6, 6), {"output_size": 1}),
    ("adaptive_maxpool", (4, 6, 6), {"output_size": 1}),
    ("zeropad", (4, 5, 5), {"padding": [[1, 2], [0, 1]]}),
]


@pytest.mark.parametrize(("name", "inp", "given"), SAVED_VARIANTS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SAVED_VARIANTS)])
def test_saved_variants_are_what_autograd_keeps(name: str, inp: tuple[int, ...], given: dict[str, Any]) -> None:
    args = ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in given.items())
    text = f"name: t\ninput: {list(inp)}\nlayers:\n  - {name}: {{{args}}}\n"
    report = analyze(load_text(text), batch=2, device="cpu", input_requires_grad=True)
    kind = REGISTRY[name]
    torch.manual_seed(0)
    module = module_call(kind, _args(name, **given), inp).make()
    x = torch.randn(2, *inp).requires_grad_().clone()  # not a leaf: an in-place layer may write into it
    assert report.totals.saved_bytes == saved_bytes(module, x)


def test_a_kind_is_registered_once_and_its_arguments_found_by_name() -> None:
    class Again(Kind):
        name = "relu"

    with pytest.raises(RuntimeError, match=r"^layer kind 'relu' registered twice$"):
        register(Again)
    assert REGISTRY["relu"].__class__.__name__ == "ReLU"
    conv = REGISTRY["conv"]
    assert conv.arg("stride").default == 1 and conv.arg("padding").name == "padding"
    with pytest.raises(KeyError):
        conv.arg("strides")


@pytest.mark.parametrize(("typed", "meant"), [
    ("MaxPool2d", "maxpool"), ("Conv2D", "conv"), ("conv_3d", "conv"), ("Batch-Norm", "batchnorm"),
    ("BatchNorm1d", "batchnorm"), ("bn", "batchnorm"), ("fc", "linear"), ("Dense", "linear"),
    ("ConvTranspose2d", "conv_transpose"), ("GAP", "global_avgpool"), ("Dropout2d", "dropout"),
    ("max pool", "maxpool"), ("LeakyReLU", "leaky_relu"), ("relu", None), ("conv", None), ("spline", None),
    # a kind's own name in another case or dimensionality, with no synonym to match it (nn.Softmax2d, CONV)
    ("Softmax2d", "softmax"), ("CONV", "conv"), ("Pixel_Shuffle", "pixel_shuffle"),
    # a two-letter stem keeps its suffix dropped too (BatchNorm2d's usual short name)
    ("BN2d", "batchnorm"), ("GN2d", "groupnorm"),
    # only a digit followed by 'd' is a dimensionality: 'MaxPool2x' is not MaxPool
    ("MaxPool2x", None), ("conv3x", None),
])
def test_a_kind_is_found_by_another_frameworks_name(typed: str, meant: str | None) -> None:
    """Case, separators and a trailing 1d/2d/3d do not matter; synonyms (fc, bn, gap) are PyTorch's or Keras'
    names; a registered name needs no suggestion."""
    from archcalc.core.kinds.base import suggest_kind

    assert suggest_kind(typed) == meant


@pytest.mark.parametrize(("per", "params"), [("channel", 4), ("position", 3 * 5), ("element", 4 * 3 * 5)])
def test_a_bias_has_one_value_per_what_it_belongs_to(per: str, params: int) -> None:
    """Hand arithmetic on a (4, 3, 5) input: 4 channels, 3 x 5 positions, 60 elements; and a torch parameter of the
    shape that broadcasts so (written here, not the builder's) has as many values."""
    kind = REGISTRY["bias"]
    args = _args("bias", per=per)
    assert kind.cost(args, (4, 3, 5), (4, 3, 5)).params == params
    reference = {"channel": (4, 1, 1), "position": (1, 3, 5), "element": (4, 3, 5)}[per]
    assert torch.zeros(reference).numel() == params
    assert (torch.zeros(2, 4, 3, 5) + torch.zeros(reference)).shape == (2, 4, 3, 5)
