"""The pooling output-size rule against the real ops, over a grid of sizes in every rank.

For every input size, kernel, stride, padding, dilation and ceil_mode in the grid, archcalc accepts the layer
exactly when torch's nn.MaxPool1d/2d/3d or nn.AvgPool1d/2d/3d does, and then gives torch's output size. The
[before, after] padding case is checked against an oracle built from torch alone: pad explicitly, pool with
ceil_mode, and drop the windows that start in the after-padding (the rule torch applies to symmetric padding).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import tiered
from torch import nn

from archcalc.core.kinds import REGISTRY, LayerError
from archcalc.torch.recipes import module_call

CLASSES = {("maxpool", 1): nn.MaxPool1d, ("maxpool", 2): nn.MaxPool2d, ("maxpool", 3): nn.MaxPool3d,
           ("avgpool", 1): nn.AvgPool1d, ("avgpool", 2): nn.AvgPool2d, ("avgpool", 3): nn.AvgPool3d}
SIZES = {1: range(1, 8), 2: range(1, 8), 3: range(1, 6)}
PAIR_SIZES = {1: range(1, 7), 2: range(1, 6), 3: range(1, 4)}


def _args(kind: str, **given: object) -> dict[str, object]:
    args = {a.name: a.default for a in REGISTRY[kind].args if not a.required}
    args.update(given)
    return args


def _calc(kind: str, inp: tuple[int, ...], args: dict[str, object]) -> tuple[int, ...] | None:
    try:
        return REGISTRY[kind].output(args, inp, lambda message: None)
    except LayerError:
        return None


def _torch(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    try:
        with torch.no_grad():
            return tuple(module(x).shape[1:])
    except RuntimeError:
        return None


def _grid(kind: str, rank: int):  # type: ignore[no-untyped-def]
    dilations = (1, 2) if kind == "maxpool" else (1,)
    for w, k, s, d, ceil in itertools.product(SIZES[rank], range(1, 6), (1, 2, 3), dilations, (False, True)):
        for p in range(k // 2 + 1):  # PyTorch's limit: padding at most half the kernel
            yield w, k, s, p, d, ceil


@pytest.mark.parametrize(("kind", "rank"), sorted(CLASSES))
def test_symmetric_padding_matches_torch(kind: str, rank: int) -> None:
    disagreements = []
    checked = accepted = 0
    for w, k, s, p, d, ceil in _grid(kind, rank):
        inp = (1, *[w] * rank)
        extra = {"dilation": d} if kind == "maxpool" else {}
        ours = _calc(kind, inp, _args(kind, kernel_size=k, stride=s, padding=p, ceil_mode=ceil, **extra))
        theirs = _torch(CLASSES[kind, rank](k, s, p, ceil_mode=ceil, **extra), torch.zeros(1, *inp))
        checked += 1
        accepted += theirs is not None
        if ours != theirs:
            disagreements.append(f"W={w} k={k} s={s} p={p} d={d} ceil={ceil}: archcalc {ours}, torch {theirs}")
    assert not disagreements, f"{len(disagreements)} of {checked}:\n" + "\n".join(disagreements[:20])
    assert 0 < accepted < checked  # the grid has both accepted and refused cases


def _oracle(kind: str, x: torch.Tensor, k: int, s: int, pads: tuple[tuple[int, int], ...],
            ceil: bool) -> tuple[int, ...] | None:
    """Explicit pad, then the unpadded op; with ceil_mode keep only the windows that start before the
    after-padding (index i starts at i * s in the padded input)."""
    flat = [v for p0, p1 in reversed(pads) for v in (p0, p1)]
    padded = F.pad(x, flat, value=float("-inf") if kind == "maxpool" else 0.0)
    shape = _torch(CLASSES[kind, x.dim() - 2](k, s, 0, ceil_mode=ceil), padded)
    if shape is None:
        return None
    if not ceil:
        return shape
    sizes = [min(o, -(-(w + p0) // s)) for o, w, (p0, _) in zip(shape[1:], x.shape[2:], pads)]
    return None if min(sizes) < 1 else (shape[0], *sizes)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("rank", tiered([1, 2, 3], {2}))  # the 1-D and 3-D grids (torch's other code paths) in CI
def test_before_after_padding_matches_the_oracle_and_the_built_module(kind: str, rank: int) -> None:
    disagreements = []
    for w, k, s, p0, p1, ceil in itertools.product(PAIR_SIZES[rank], range(1, 5), (1, 2, 3), range(3), range(4),
                                                   (False, True)):
        if p0 == p1:
            continue
        inp = (1, *[w] * rank)
        pads = ((p0, p1),) * rank
        args = _args(kind, kernel_size=k, stride=s, padding=pads, ceil_mode=ceil)
        x = torch.zeros(1, *inp)
        ours = _calc(kind, inp, args)
        expected = _oracle(kind, x, k, s, pads, ceil)
        built = _torch(module_call(REGISTRY[kind], args, inp).make(), x) if ours is not None else None
        if not ours == built == expected:
            disagreements.append(f"W={w} k={k} s={s} pads={p0}/{p1} ceil={ceil}: archcalc {ours}, built {built}, "
                                 f"oracle {expected}")
    assert not disagreements, f"{len(disagreements)}:\n" + "\n".join(disagreements[:20])
