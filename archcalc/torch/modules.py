"""The few torch modules archcalc needs beyond torch.nn (the recipes in archcalc.torch.recipes use them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Pads = Sequence[tuple[int, int]]


def f_pad(pads: Pads) -> tuple[int, ...]:
    # F.pad takes (last axis before, last axis after, second-to-last before, ...).
    flat: list[int] = []
    for before, after in reversed(list(pads)):
        flat += [before, after]
    return tuple(flat)


def symmetric(pads: Pads) -> bool:
    return all(before == after for before, after in pads)


class AsymmetricPadConv(nn.Module):
    """A convolution whose padding differs before and after (TensorFlow SAME with stride > 1).

    Parameters stay `weight` and `bias` (the padding is applied functionally), so names match the spec.
    """

    def __init__(self, conv: nn.Module, pads: Pads) -> None:
        super().__init__()
        self.pad = f_pad(pads)
        self.weight = conv.weight
        self.bias = conv.bias
        self._conv: Any = conv._conv_forward  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(F.pad(x, self.pad), self.weight, self.bias)


class PaddedPool(nn.Module):
    """A pooling layer with asymmetric padding: pads with -inf (max) or zeros (avg), then pools unpadded."""

    def __init__(self, pool: nn.Module, pads: Pads, value: float) -> None:
        super().__init__()
        self.pool = pool
        self.pad = f_pad(pads)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.pad, value=self.value))


class FlattenLinear(nn.Linear):
    """nn.Linear that first flattens a C x H x W input to one vector per sample (a view, no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1) if x.dim() > 2 else x)


class Bias(nn.Module):
    """A learned additive bias of a given per-sample shape (broadcast over the batch and any size-1 axes)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): the maximum over groups of `pieces` consecutive channels."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *rest = x.shape
        return x.view(n, c // self.pieces, self.pieces, *rest).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class ChannelSliceModule(nn.Module):
    """x[:, start:stop]: a view of a range of channels."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"
