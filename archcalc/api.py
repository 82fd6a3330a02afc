"""The library's front door: `archcalc.summary(model, input_size, **settings)` and `archcalc.analyze(...)`.

`model` is any of: a torch nn.Module (traced with torch.fx into a spec: archcalc.torch.importer), a spec file's
path, the name of a bundled spec ('resnet50', 'torchvision/resnet50'), or a parsed Spec. torch is imported only for
an nn.Module. Keyword arguments are the fields of core.settings.Settings (batch, dtype, convention, device,
input_requires_grad, strict, optimizer, amp).

    >>> import archcalc
    >>> s = archcalc.summary("lenet5", batch=8)
    >>> s.totals.params
    61750
    >>> print(s)            # the table `archcalc calc lenet5 --batch 8` prints  # doctest: +SKIP

The result's str() is that table, its repr() one line, `_repr_html_` an HTML table for notebooks, and
`to_dict()` / `to_json()` exactly what `archcalc calc --format json` writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from archcalc.core.analyze import Report, Row, Totals
from archcalc.core.analyze import analyze as _analyze
from archcalc.core.calc import CalcResult, calculate
from archcalc.core.checkpoint import Plan
from archcalc.core.errors import ArchcalcError
from archcalc.core.settings import Settings
from archcalc.core.spec import Spec, open_spec
from archcalc.core.training import TrainingFlops, TrainingMemory


def to_spec(model: Any, input_size: Sequence[int] | None = None) -> Spec:
    """The Spec of `model`: a Spec as it is, a path or bundled name opened, an nn.Module traced at `input_size`
    (the per-sample input, (C, H, W))."""
    if isinstance(model, Spec):
        return model
    if isinstance(model, (str, os.PathLike)):
        return open_spec(os.fspath(model))
    if _is_module(model):
        if input_size is None:
            raise ArchcalcError(f"{type(model).__name__}: an nn.Module needs input_size, the per-sample input "
                                "shape (C, H, W), e.g. summary(model, (3, 224, 224))")
        from archcalc.torch.importer import from_module

        return from_module(model, tuple(input_size)).spec
    raise ArchcalcError(f"cannot analyze a {type(model).__name__}: give an nn.Module, a spec file's path, a bundled "
                        "spec's name or a Spec")


def _settings(model: Any, input_size: Sequence[int] | None, settings: Settings | None,
              overrides: dict[str, Any]) -> Settings:
    if input_size is not None and not _is_module(model):
        overrides = {**overrides, "input_shape": tuple(input_size)}
    return Settings.of(settings, **overrides)


def _is_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # an nn.Module can only exist once torch is imported
    return torch is not None and isinstance(model, torch.nn.Module)


def analyze(model: Any, input_size: Sequence[int] | None = None, settings: Settings | None = None,
            **overrides: Any) -> Report:
    """The Report of `model` (an nn.Module, a spec path or bundled name, or a Spec) under `settings` and keyword
    overrides of its fields; `input_size` is the per-sample input (needed for an nn.Module; for a spec it
    overrides the spec's own input)."""
    return _analyze(to_spec(model, input_size), _settings(model, input_size, settings, overrides))


def summary(model: Any, input_size: Sequence[int] | None = None, *, depth: int | None = None,
            fit: int | None = None, fit_for: str = "training", settings: Settings | None = None,
            **overrides: Any) -> Summary:
    """What `archcalc calc` shows for `model`, as a value: print it for the table, `.to_json()` for the CLI's JSON.

    `depth` collapses blocks below that depth into one row; `fit` (bytes) picks the largest batch whose `fit_for`
    memory ('training': the step's peak, or 'inference') fits; when the batch asked is larger, the figures stay at
    it and `Summary.checkpoint` says what to recompute to make it fit. Other keywords are Settings fields (batch=8,
    dtype='float16', ...)."""
    result = calculate(to_spec(model, input_size), _settings(model, input_size, settings, overrides), fit, fit_for)
    return Summary(result, depth)


@dataclass(frozen=True, slots=True)
class Summary:
    """A network's figures: the per-layer Report, the training step's FLOPs and memory (and the fit, if asked)."""

    result: CalcResult
    depth: int | None = None

    # -- the figures --
    @property
    def report(self) -> Report:
        return self.result.report

    @property
    def totals(self) -> Totals:
        return self.result.report.totals

    @property
    def rows(self) -> tuple[Row, ...]:
        return self.result.report.rows

    @property
    def settings(self) -> Settings:
        return self.result.settings

    @property
    def training_memory(self) -> TrainingMemory:
        return self.result.memory

    @property
    def training_flops(self) -> TrainingFlops:
        return self.result.flops

    @property
    def checkpoint(self) -> Plan | None:
        """With `fit`, when the batch asked does not fit: the activation checkpointing plan (core.checkpoint)."""
        return self.result.plan

    # -- renderings (render.calc: the same bytes the CLI prints) --
    def __str__(self) -> str:
        from archcalc.render.calc import calc_text

        return calc_text(self.result, self.depth).rstrip("\n")

    def __repr__(self) -> str:
        from archcalc.render.calc import one_line

        return one_line(self.result)

    def _repr_html_(self) -> str:
        from archcalc.render.calc import calc_html

        return calc_html(self.result, self.depth)

    def to_markdown(self) -> str:
        from archcalc.render.calc import calc_output

        return calc_output(self.result, "md", self.depth)

    def to_json(self) -> str:
        """Exactly what `archcalc calc --format json` writes (same depth and settings)."""
        from archcalc.render.calc import calc_json

        return calc_json(self.result, self.depth)

    def to_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.to_json()))
