"""The receptive field as seen on the actual input.

The engine's receptive field is the theoretical one (Araujo et al., "Computing receptive fields of convolutional
neural networks", Distill 2019): rf += (kernel - 1) * jump, and a layer that sees the whole axis (global pooling,
squeeze-excitation, flatten + linear) adds (size - 1) * jump, so it can exceed the input many times (EfficientNet-B0:
4345 at 224). What an output can actually see is at most the input: `clipped` bounds it, and `global_at` names the
first layer (in execution order) from which every output sees the whole input.
"""

from collections.abc import Sequence
from typing import NamedTuple


class SeenRF(NamedTuple):
    clipped: tuple[int, ...]  # per spatial axis: min(theoretical, input size)
    global_at: str | None  # the first layer whose receptive field covers the whole input, or None


def _covers(rf: Sequence[int], sizes: Sequence[int]) -> bool:
    return len(rf) == len(sizes) > 0 and all(r >= s for r, s in zip(rf, sizes))


def seen(rows: Sequence[object], input_shape: Sequence[int], rf: Sequence[int]) -> SeenRF:
    """`rows`: the report's rows in execution order (each with .name and .rf); `rf`: the final receptive field."""
    sizes = tuple(input_shape[1:])  # the engine's receptive field has one entry per spatial axis of the input
    clipped = tuple(min(r, s) for r, s in zip(rf, sizes))
    if not _covers(rf, sizes):
        return SeenRF(clipped, None)
    first = next((row.name for row in rows if _covers(row.rf, sizes)), None)  # type: ignore[attr-defined]
    return SeenRF(clipped, first)
