"""Every registered kind's examples through the real torch module: torch is the oracle for shape, params, MACs,
and fvcore for the fvcore convention. New kinds are covered by adding examples, not tests."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.kinds import REGISTRY
from archcalc.torch.recipes import module_call

CASES = [(name, i, ex) for name, kind in sorted(REGISTRY.items()) for i, ex in enumerate(kind.examples)]


def test_every_kind_has_examples_and_docs() -> None:
    for name, kind in REGISTRY.items():
        assert kind.examples, f"{name} has no examples"
        assert kind.doc and kind.full_rule, f"{name} lacks its doc or full-FLOPs rule"


def _args(kind, given):  # type: ignore[no-untyped-def]
    args = {a.name: a.default for a in kind.args}
    assert set(given) <= set(args), f"{kind.name} example uses unknown argument names {set(given) - set(args)}"
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    return args


@pytest.mark.parametrize(("name", "index", "example"), CASES, ids=[f"{n}-{i}" for n, i, _ in CASES])
def test_kind_example_matches_torch(name, index, example) -> None:  # type: ignore[no-untyped-def]
    kind = REGISTRY[name]
    args = _args(kind, example.args)
    inp = example.input
    out = kind.output(args, inp, lambda message: None)
    cost = kind.cost(args, inp, out)
    module = module_call(kind, args, inp).make().eval()
    batch = 2
    x = torch.randn(batch, *inp)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(x)
    assert tuple(y.shape) == (batch, *out)
    assert sum(p.numel() for p in module.parameters()) == cost.params
    buffers = sum(b.numel() for b in module.buffers())
    assert buffers == cost.buffers + cost.int_buffers
    assert counter.get_total_flops() == 2 * (cost.macs * batch + cost.macs_once)  # (once: whatever the batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(module, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        assert analysis.total() == cost.fvcore * batch + cost.fvcore_once  # (work on the weights: once)
    assert cost.full >= 0 and math.prod(out) > 0
