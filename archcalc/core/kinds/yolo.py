"""Kinds of Ultralytics' YOLO models that no other network here uses: the DFL box decoder and (for C2PSA) its
position-sensitive attention. Their costs are written out from Ultralytics' modules (ultralytics/nn/modules) and
checked against a plain-torch reference in tests/test_kinds_reference.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archcalc.core.kinds.base import ACTIVATION, Arg, Cost, Example, Kind, LayerError, Saved, Shape, numel, register


@register
class DFL(Kind):
    name = "dfl"
    doc = ("The integral of Distribution Focal Loss (Li et al. 2020; Ultralytics' DFL): 4 x reg_max channels are four "
           "box sides' distributions over reg_max bins; a softmax over each side's bins, then their expectation, a "
           "1x1 convolution reg_max -> 1 with the fixed weights 0..reg_max-1 (reg_max parameters, frozen in "
           "Ultralytics: write `trainable: false`). 4 channels out. Ultralytics runs one DFL over every level's "
           "anchors at once; a spec decodes each level with its own dfl, the same operations, and `shared: true` "
           "marks the later ones, whose weights are the first one's (counted once).")
    full_rule = "5 per input element: the softmax's 3 (exp, add to the sum, divide) and the 1x1 conv's 2 per MAC"
    args = (Arg("reg_max", "int", 16, "bins per box side (the input has 4 x reg_max channels)", minimum=2),
            Arg("shared", "bool", False, "true: uses an earlier dfl's weights (no parameters of its own)"))
    examples = (Example((64, 8, 8)), Example((32, 5, 7), {"reg_max": 8, "shared": True}), Example((64, 30)))
    torch_class = "DFL"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) < 2 or inp[0] != 4 * a["reg_max"]:
            raise LayerError(f"dfl needs 4 x reg_max = {4 * a['reg_max']} channels with spatial axes; got "
                             f"{'x'.join(map(str, inp))}")
        return (4, *inp[1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        macs = numel(inp)  # the 1x1 conv: reg_max MACs for each of the 4 x anchors outputs
        return Cost(params=0 if a["shared"] else a["reg_max"], macs=macs, fvcore=macs, full=3 * macs + 2 * macs)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved(extra=((numel(inp), ACTIVATION),))  # the softmax's output (the conv's input)

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), ACTIVATION),)  # the softmax's output, alive while the conv runs

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"reg_max {a['reg_max']}" + (" (shared)" if a["shared"] else "")
