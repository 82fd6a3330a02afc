"""The merge ops' memory rules and messages against torch itself, and the receptive field's coverage at the edges.

Oracles: autograd's saved tensors (saved_tensors_hooks) and torch.profiler's memory events on plain products of
tensors written here (tests/measure.py), torch's FlopCounterMode for concatenation, hand-worked messages.
"""

from __future__ import annotations

import itertools
from math import prod
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.kinds import LayerError
from archcalc.core.merges import MERGES
from archcalc.core.receptive import seen
from archcalc.core.spec import load_spec
from tests.measure import peak_bytes, saved_bytes

MUL = MERGES["mul"]
# Four factors whose partial products grow: a*b is 4x3x1 (12), a*b*c 4x3x5 (60), the product 4x3x5.
FACTORS = ((4, 1, 1), (1, 3, 1), (1, 1, 5), (4, 3, 5))


class _Product(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0]
        for x in xs[1:]:
            y = y * x  # ((x0 * x1) * x2) * ..., as torch evaluates a * b * c * d
        return y


@pytest.mark.parametrize("grads", [g for g in itertools.product((False, True), repeat=4) if any(g)])
def test_a_product_saves_what_autograd_saves(grads: tuple[bool, ...]) -> None:
    xs = [torch.randn(1, *s, requires_grad=g) for s, g in zip(FACTORS, grads)]
    kept, elements = MUL.saved(FACTORS, grads)
    predicted = 4 * (sum(prod(FACTORS[i]) for i in set(kept)) + elements)
    assert predicted == saved_bytes(_Product(), *xs), (grads, kept, elements)


@pytest.mark.parametrize("shapes", [FACTORS[:3], FACTORS, ((4, 3, 5), (4, 3, 5)), ((1, 1, 5), (4, 3, 5), (4, 1, 1))])
def test_a_product_needs_its_partial_products_beside_it(shapes: tuple[tuple[int, ...], ...]) -> None:
    xs = [torch.randn(1, *s) for s in shapes]
    out = tuple(max(d) for d in zip(*shapes))
    extra = sum(b for b, _ in MUL.transient(shapes, out))
    assert 4 * (prod(out) + extra) == peak_bytes(lambda: _Product()(*xs)), shapes


def test_a_product_that_cannot_broadcast_names_the_first_input() -> None:
    with pytest.raises(LayerError) as info:
        MUL.output([(4, 1, 1), (1, 3, 1), (3, 1, 1)], ["'a'", "'b'", "'c'"])
    assert str(info.value) == ("'a' gives 4x1x1 but 'c' gives 3x1x1; they cannot be multiplied (each axis must match "
                               "or be 1)")
    with pytest.raises(RuntimeError):  # torch refuses the same product
        torch.randn(1, 4, 1, 1) * torch.randn(1, 1, 3, 1) * torch.randn(1, 3, 1, 1)


def test_concatenation_does_no_arithmetic(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: t\ninput: [2, 4, 4]\nlayers:\n  - relu: {name: a}\n  - concat: [a, input]\n")
    [cat] = [r for r in analyze(load_spec(path), convention="full").rows if r.kind == "concat"]
    with FlopCounterMode(display=False) as counter:
        torch.cat([torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)], 1)
    assert cat.flops == counter.get_total_flops() == 0


def test_coverage_needs_a_spatial_axis(write_spec) -> None:  # type: ignore[no-untyped-def]
    # one spatial axis: a 3-wide conv on a length-3 input sees all of it from its first layer
    line = analyze(load_spec(write_spec("name: t\ninput: [2, 3]\nlayers:\n  - conv: {out: 2, kernel: 3, name: c}\n")))
    assert seen(line.rows, line.input, line.totals.rf) == ((3,), "c")
    # a vector (no spatial axis; a spec's input always has one, `seen` takes any rows) has nothing to cover
    fc = SimpleNamespace(name="fc", rf=())
    assert seen([fc], (16,), ()) == ((), None)
