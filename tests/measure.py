"""Measurements the tests take from torch alone (no archcalc arithmetic): the oracles for saved and peak bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def saved_bytes(model: torch.nn.Module, *inputs: torch.Tensor, train: bool = True) -> int:
    """Bytes of every tensor autograd packs during one forward, de-duplicated by storage, parameters and buffers
    excluded (training mode unless `train` is False)."""
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude and storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
        kept.append(t)  # no storage is freed and its address reused mid-count
        return t

    model.train(train)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*inputs)
    finally:
        model.eval()
    return sum(storages.values())


def fvcore_total(model: torch.nn.Module, x: torch.Tensor) -> int:
    import logging

    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    model.eval()
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(analysis.total())


def peak_bytes(fn: Callable[[], Any]) -> int:
    """The CPU inference peak beyond what exists before `fn` runs, from torch.profiler's memory events (after one
    warm-up call, so one-off allocations such as weight packing are out of the way), on one thread."""
    from archcalc.torch.profile.probes import cpu_peak_bytes  # replays the profiler's events; no archcalc model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            fn()
            return cpu_peak_bytes(fn)
    finally:
        torch.set_num_threads(threads)
