"""Counting conventions: what a "FLOP" means. The name is written wherever a count is shown."""

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


class DType(NamedTuple):
    """An element type: its size, and where archcalc offers it."""

    itemsize: int
    analytic: bool  # `calc`, `compare`: memory figures in this type
    runs: bool  # `validate`: a torch dtype a model can be built and run in
    profiles: bool  # `profile`: timed on a device


# The one dtype table: the CLI's --dtype choices, validate's and profile's checks are all derived from it.
DTYPE_TABLE: dict[str, DType] = {
    "float32": DType(4, analytic=True, runs=True, profiles=True),
    "float16": DType(2, analytic=True, runs=True, profiles=True),
    "bfloat16": DType(2, analytic=True, runs=True, profiles=True),
    "int8": DType(1, analytic=True, runs=False, profiles=False),
    "float64": DType(8, analytic=False, runs=True, profiles=False),
}
DTYPES: dict[str, int] = {name: d.itemsize for name, d in DTYPE_TABLE.items()}


def dtypes(use: str) -> tuple[str, ...]:
    """The dtype names offered for `use`: 'analytic', 'runs' or 'profiles'."""
    return tuple(name for name, d in DTYPE_TABLE.items() if getattr(d, use))
