"""The import tests' oracle: an imported module's figures against torch's own (no archcalc arithmetic on the torch
side): FlopCounterMode's count and the output shape of a forward, the module's parameter and buffer counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import Report, analyze
from archcalc.torch.importer import from_module


def measured(model: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The output shape (per sample) and FlopCounterMode's FLOPs of one eval forward."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, *shape))
    return tuple(out.shape[1:]), counter.get_total_flops()


def check(model: nn.Module, shape: tuple[int, ...], *others: tuple[int, ...]) -> tuple[str, Report]:
    """Import at `shape`, with no warning: params and buffers are the module's own; output shape and FLOPs equal
    torch's at `shape` and at each of `others` (the imported spec re-run at a new input)."""
    imported = from_module(model, shape)
    assert imported.warnings == (), imported.warnings
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.buffers == sum(b.numel() for b in model.buffers())
    for size in (shape, *others):
        got = analyze(imported.spec, input_shape=size, convention="torch").totals
        assert (got.output, got.flops) == measured(model, size), (size, imported.text)
    return imported.text, report
