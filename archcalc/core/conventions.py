"""Counting conventions: what a "FLOP" means. The name is written wherever a count is shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from archcalc.core.kinds import Cost


class Convention(NamedTuple):
    name: str
    summary: str
    pick: Callable[[Cost], int]


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("macs", "multiply-accumulates of conv, transposed conv and linear layers (1 per MAC); what "
                   "torchvision publishes as 'GFLOPS'", lambda c: c.macs),
        Convention("torch", "torch.utils.flop_counter.FlopCounterMode, forward pass: 2 per MAC of conv and "
                   "linear, nothing else", lambda c: 2 * c.macs),
        Convention("fvcore", "fvcore.nn.FlopCountAnalysis in eval mode: 1 per MAC, plus batch norm (2 per "
                   "element), layer/group norm (5), adaptive 2-D average pooling (1 per input element) and 2-D "
                   "upsampling (1 nearest, 4 bilinear per output element)", lambda c: c.fvcore),
        Convention("full", "every arithmetic operation: 2 per MAC, bias adds, activations, pooling comparisons, "
                   "normalization, residual adds (for roofline use; each kind states its rule)", lambda c: c.full),
    )
}

DEFAULT = "torch"

DTYPES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "float64": 8}
