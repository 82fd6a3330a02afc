"""Counting conventions: what a "FLOP" means. The name is written wherever a count is shown."""

from collections.abc import Callable
from typing import NamedTuple

from archcalc.core.kinds import Cost


class Convention(NamedTuple):
    name: str
    summary: str
    pick: Callable[[Cost], int]  # per sample: multiplied by the batch
    once: Callable[[Cost], int] = lambda c: 0  # per forward, whatever the batch (work on the weights)
    backward: int = 2  # FLOPs per MAC of backward's convolutions and matrix products (input and weight gradients);
    # the elementwise work of backward (activation and normalization gradients) is counted under no convention


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("macs", "multiply-accumulates of conv, transposed conv and linear layers and of matrix products "
                   "(attention's; 1 per MAC); what torchvision publishes as 'GFLOPS'", lambda c: c.macs,
                   lambda c: c.macs_once, backward=1),  # (once: Swin V2's position-bias MLP)
        Convention("torch", "torch.utils.flop_counter.FlopCounterMode, forward pass: 2 per MAC of conv, "
                   "linear and matrix products, nothing else", lambda c: 2 * c.macs, lambda c: 2 * c.macs_once),
        Convention("fvcore", "fvcore.nn.FlopCountAnalysis in eval mode: 1 per MAC, plus batch norm (2 per "
                   "element), layer/group norm (5), adaptive 2-D average pooling (1 per input element) and 2-D "
                   "upsampling (1 nearest, 4 bilinear per output element)", lambda c: c.fvcore,
                   lambda c: c.fvcore_once, backward=1),  # (once: std_conv's weight standardisation, 4 or 5 per weight)
        Convention("full", "every arithmetic operation: 2 per MAC, bias adds, activations, pooling comparisons, "
                   "normalization, residual adds (for roofline use; each kind states its rule)", lambda c: c.full,
                   lambda c: c.full_once),
    )
}


# FlopCounterMode's rule for a grouped conv's weight gradient, by torch release: (first release, whether it divides
# by `groups`). torch/utils/flop_counter.py's conv_backward_flop counts the weight gradient as a conv over all
# input channels (t(x_shape)), `groups` times the forward (a depthwise 3x3 conv on 32 channels: 33x forward in all
# of backward); read in torch 2.13.0 and 2.14.1. pytorch/pytorch PR #183405 (2026-05) proposes dividing it by
# `groups` (2x forward): when a release ships that, add its version here, and tests/test_training.py's check against
# the installed FlopCounterMode says which rule is in force.
GROUPED_WEIGHT_GRADIENT: tuple[tuple[tuple[int, int], bool], ...] = (((0, 0), False),)


def flop_counter_divides_groups(version: str | None = None) -> bool:
    """Whether the FlopCounterMode of torch `version` (default: the installed torch, read from its package metadata
    without importing it; the newest rule known when torch is not installed) divides a grouped conv's weight-gradient
    FLOPs by `groups`."""
    if version is None:
        version = _installed_torch()
    if version is None:
        return GROUPED_WEIGHT_GRADIENT[-1][1]
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split("+")[0].split(".")[:2]]
    release = (parts + [0, 0])[:2]
    divides = False
    for first, rule in GROUPED_WEIGHT_GRADIENT:
        if tuple(release) >= first:
            divides = rule
    return divides


_TORCH_VERSION: list[str | None] = []


def _installed_torch() -> str | None:
    if not _TORCH_VERSION:
        from importlib.metadata import PackageNotFoundError, version

        try:
            _TORCH_VERSION.append(version("torch"))
        except PackageNotFoundError:
            _TORCH_VERSION.append(None)
    return _TORCH_VERSION[0]


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
