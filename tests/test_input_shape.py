"""The input's shape in expressions (issue 31, item 5): `in_channels`, `in_length` (1-D), `in_height` and `in_width`
(2-D; `in_depth` too in 3-D) are the shape of the innermost enclosing block's input, so a block need not be passed
its input width by hand.

The reference is YOLOv5/v8's SPPF (Jocher, Ultralytics: ultralytics/nn/modules/block.py), whose hidden width is
half its input's channels, written here from plain torch.nn and called twice at different widths and sizes.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_text
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.torch.validate import validate

SPEC = """\
name: sppf
input: [32, 20, 20]
blocks:
  cbs:
    args: {c: ~, k: 1}
    layers:
      - conv: {out: c, kernel: k, padding: k // 2, bias: false}
      - batchnorm: {eps: 0.001}
      - silu
  sppf:
    args: {c2: ~, k: 5, hidden: in_channels // 2}   # SPPF's c_ = c1 // 2
    layers:
      - cbs: {c: hidden, name: cv1}
      - maxpool: {kernel: k, stride: 1, padding: k // 2, name: m1}
      - maxpool: {kernel: k, stride: 1, padding: k // 2, name: m2}
      - maxpool: {kernel: k, stride: 1, padding: k // 2, name: m3}
      - concat: [cv1, m1, m2, m3]
      - cbs: {c: c2, name: cv2}
  pool_all:                 # a global average pool written as a window the size of the input
    layers:
      - avgpool: {kernel: [in_height, in_width]}
layers:
  - sppf: {c2: 64}
  - conv: {out: 128, kernel: 3, stride: 2, padding: 1}
  - sppf: {c2: 96}
  - pool_all
"""


def cbs(c1: int, c2: int, k: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c1, c2, k, padding=k // 2, bias=False), nn.BatchNorm2d(c2, eps=0.001), nn.SiLU())


class Sppf(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = cbs(c1, c_), cbs(c_ * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


def reference(c: int, size: int) -> nn.Module:
    return nn.Sequential(Sppf(c, 64), nn.Conv2d(64, 128, 3, 2, 1), Sppf(128, 96),
                         nn.AdaptiveAvgPool2d(1)).eval()


@pytest.mark.parametrize(("c", "size"), [(32, 20), (48, 32)])
def test_sppf_reads_its_input_width_at_two_sizes(c: int, size: int) -> None:
    report = analyze(load_text(SPEC), input_shape=(c, size, size))
    net = reference(c, size)
    x = torch.randn(1, c, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = net(x)
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.flops == counter.get_total_flops()
    assert report.totals.output == tuple(y.shape[1:])
    rows = {r.name: r for r in report.rows}
    assert rows["sppf1.cv1.conv1"].output == (c // 2, size, size)  # half the network's input
    assert rows["sppf2.cv1.conv1"].output == (64, size // 2, size // 2)  # half of conv1's 128
    assert rows["pool_all1.avgpool1"].config.startswith(f"{size // 2}/{size // 2}")


def test_validate_builds_it() -> None:
    v = validate(load_text(SPEC), "cpu", batch=2)
    assert v.ok, [(c.quantity, c.layer, c.predicted, c.measured) for c in v.failures]


def test_at_the_top_level_it_is_the_networks_input_and_an_argument_of_that_name_wins() -> None:
    top = "name: t\ninput: [6, 10]\nlayers:\n  - conv: {out: 2 * in_channels, kernel: in_length}\n"
    assert analyze(load_text(top)).totals.output == (12, 1)
    assert analyze(load_text(top), input_shape=(3, 7)).totals.output == (6, 1)
    shadow = top.replace("input: [6, 10]\n", "input: [6, 10]\nargs: {in_channels: 5}\n")
    assert analyze(load_text(shadow)).totals.output == (10, 1)


@pytest.mark.parametrize(("edit", "message"), [
    (("kernel: [in_height, in_width]", "kernel: in_length"),
     "'in_length': the input here is 96x10x10, which has no length (its shape is in_channels, in_height, in_width)"),
    (("- maxpool: {kernel: k, stride: 1, padding: k // 2, name: m1}", "- repeat: in_channels\n        block: relu"),
     "a repeat count cannot use the input's shape"),
    (("- avgpool: {kernel: [in_height, in_width]}", "- avgpool: {kernel: 2}\n        when: in_channels > 3"),
     "'when' cannot use the input's shape"),
    (("in_channels // 2", "in_chanels // 2"), "unknown name 'in_chanels' in 'in_chanels // 2'; did you mean "
                                              "'in_channels'?"),
    (("in_channels // 2", "in_channels // 0"), "division by zero in 'in_channels // 0'"),
])
def test_errors_are_located(edit: tuple[str, str], message: str) -> None:
    text = SPEC.replace(*edit)
    with pytest.raises(SpecError) as err:
        analyze(load_text(text))
    assert message in err.value.message
    needle = next(part.strip() for part in edit[1].split("\n") if "in_" in part)  # the line using the shape
    line = next(i for i, row in enumerate(text.splitlines(), 1) if needle in row)
    assert err.value.loc is not None and err.value.loc.line == line


def test_an_unknown_name_does_not_suggest_the_shape_names_unless_close() -> None:
    text = "name: t\ninput: [3, 8, 8]\nlayers:\n  - conv: {out: 2 * widht, kernel: 1}\n"
    with pytest.raises(SpecError, match=r"unknown name 'widht' in '2 \* widht' \(no variables are defined here\)"):
        analyze(load_text(text))
