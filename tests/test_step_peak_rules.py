"""The training step's peak for the backward and forward rules the property test's long run found unfollowed
(tests/test_property.py), each on the smallest network that showed it, written here in plain torch.nn and measured
by storage in a real step (tests/measure.step_peak_bytes: Adam, batch 2, the first and a later step). The figures
in the table are the later step's measured peak (parameters, buffers, Adam's state and the input included) with
torch 2.14.1 on the CPU: if torch changes, the comparison with the prediction still holds or fails on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from measure import step_peak_bytes
from torch import nn

from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec
from archcalc.core.training import step_peaks


class AddBias(nn.Module):  # archcalc's `bias` (per channel): x + b, b of shape C x 1 x 1
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b


class Product(nn.Module):  # a parallel block merged by `mul`: the branches, then ((b0 * b1) * b2) * ...
    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        y = outs[0]
        for out in outs[1:]:
            y = y * out
        return y


class MaxPoolPadded(nn.Module):  # max pooling with [before, after] padding: -inf padding, then the unpadded op
    def __init__(self, pads: tuple[int, ...], kernel: int, dilation: int) -> None:
        super().__init__()
        self.pads, self.kernel, self.dilation = pads, kernel, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, self.pads, value=float("-inf")), self.kernel, dilation=self.dilation)


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# (what the case shows, spec body, input, plain torch module, the later step's measured peak in bytes)
CASES: list[tuple[str, str, list[int], Callable[[], nn.Module], int]] = [
    # _prelu_kernel_backward returns the input's gradient and the weight's unreduced one (input-sized) at once,
    # the first even where no input gradient is wanted; the weight's is then summed to its shape
    ("prelu_first", "  - prelu: {}\n", [1, 11, 12], lambda: nn.PReLU(), 3_192),
    ("prelu_after_conv", "  - conv: {out: 2, kernel: 1}\n  - prelu: {}\n", [1, 11, 12],
     lambda: nn.Sequential(nn.Conv2d(1, 2, 1), nn.PReLU()), 7_476),
    ("prelu_frozen", "  - conv: {out: 1, kernel: 1}\n  - prelu: {trainable: false}\n", [1, 11, 12],
     lambda: nn.Sequential(nn.Conv2d(1, 1, 1), _frozen(nn.PReLU())), 4_268),
    # an op autograd does not record (nothing needs a gradient yet) frees what it would have kept: the padded
    # copy and the int64 indices of max pooling
    ("unrecorded_maxpool", "  - maxpool: {kernel: 3, padding: [[3, 2], [2, 3]], dilation: 2}\n"
     "  - linear: {out: 3}\n", [2, 8, 10],
     lambda: nn.Sequential(MaxPoolPadded((2, 3, 3, 2), 3, 2), nn.Flatten(), nn.Linear(2 * 3 * 4, 3)), 5_884),
    # x + b hands its gradient to x as it is: here the loss seed's expanded view, to PReLU's backward
    ("bias_passes_gradient", "  - prelu: {}\n  - bias: {}\n", [2, 3, 2],
     lambda: nn.Sequential(nn.PReLU(), AddBias(2)), 348),
    # native_group_norm_backward makes its output's gradient contiguous: a copy of the seed's expanded view
    ("groupnorm_last", "  - conv: {out: 3, kernel: 1}\n  - groupnorm: {groups: 1}\n", [3, 5, 6],
     lambda: nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3)), 3_160),
    # asymmetric padding: convolution_backward makes the padded copy's gradient, F.pad's backward slices it
    ("padded_conv", "  - conv: {out: 3, kernel: 1}\n  - conv: {out: 3, kernel: 3, padding: [[1, 0], [0, 1]]}\n",
     [3, 5, 6], lambda: nn.Sequential(nn.Conv2d(3, 3, 1), nn.ConstantPad2d((0, 1, 1, 0), 0.0), nn.Conv2d(3, 3, 3)),
     4_248),
    # a product of four branches, three of them the same tensor: one multiply's backward at a time, each gradient
    # of a repeated factor summed into its buffer
    ("product_of_equal_branches", "  - conv_transpose: {out: 6, kernel: 1, stride: 2}\n  - parallel:\n"
     "      - []\n      - [tanh]\n      - []\n      - []\n    merge: mul\n", [2, 5],
     lambda: nn.Sequential(nn.ConvTranspose1d(2, 6, 1, stride=2),
                           Product(nn.Identity(), nn.Tanh(), nn.Identity(), nn.Identity())), 3_336),
    # local response norm: avg_pool3d's backward makes the padded squares' gradient (C + size - 1 channels) once
    # the composite's output gradient is freed; with one channel and size 6 the larger moment of its backward
    ("lrn_padded_gradient", "  - conv: {out: 1, kernel: 1}\n  - lrn: {size: 6}\n  - conv: {out: 1, kernel: 1}\n",
     [1, 11, 12], lambda: nn.Sequential(nn.Conv2d(1, 1, 1), nn.LocalResponseNorm(6), nn.Conv2d(1, 1, 1)), 16_976),
    # a broadcast factor's gradient is made at the product's size, then summed to the factor's shape
    ("product_broadcast", "  - conv: {out: 3, kernel: 1}\n  - parallel:\n      - [{adaptive_avgpool: {size: 1}},"
     " sigmoid]\n      - []\n      - [tanh]\n    merge: mul\n", [3, 4, 5],
     lambda: nn.Sequential(nn.Conv2d(3, 3, 1), Product(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Sigmoid()),
                                                       nn.Identity(), nn.Tanh())), 3_568),
    # the forward of a product: a partial product not kept for backward is alive beside the next one
    ("product_partial_in_forward", "  - parallel:\n      - []\n      - [{conv: {out: 3, kernel: 1}}]\n      - []\n"
     "    merge: mul\n  - conv: {out: 2, kernel: 1}\n", [3, 4, 5],
     lambda: nn.Sequential(Product(nn.Identity(), nn.Conv2d(3, 3, 1), nn.Identity()), nn.Conv2d(3, 2, 1)), 2_176),
]


@pytest.mark.parametrize(("name", "body", "shape", "make", "figure"), CASES, ids=[c[0] for c in CASES])
def test_the_step_peak_follows_the_rule(write_spec, name: str, body: str, shape: list[int],  # type: ignore
                                        make: Callable[[], nn.Module], figure: int) -> None:
    spec = load_spec(write_spec(f"name: {name}\ninput: {shape}\nlayers:\n{body}"))
    report = analyze(spec, batch=2, device="cpu")
    later, first = step_peaks(report, "adam")
    measured = []
    for steps in (1, 2):
        torch.manual_seed(0)
        model = make()
        assert sum(p.numel() for p in model.parameters()) == report.totals.params
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        measured.append(step_peak_bytes(model, (torch.randn(2, *shape),), optimizer, steps)[1])
    assert (first.peak, later.peak) == tuple(measured)
    if figure:
        assert measured[1] == figure
