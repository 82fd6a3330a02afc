"""`archcalc calc` as one library call: the report of a spec under one Settings value, its training step (FLOPs
and memory, from core.training's one model) and, with a memory limit, the largest batch that fits.

Nothing here imports torch or formats anything (archcalc.render.calc renders a CalcResult).
"""

from typing import Any, NamedTuple

from archcalc.core.analyze import Report, analyze
from archcalc.core.checkpoint import Plan, plan
from archcalc.core.errors import ArchcalcError
from archcalc.core.settings import Settings
from archcalc.core.spec import Spec
from archcalc.core.training import (
    Fit,
    StepPeak,
    TrainingFlops,
    TrainingLayers,
    TrainingMemory,
    autocast_unfollowed,
    fit_batch,
    layer_training,
    step_peaks,
    step_unfollowed,
    training_flops,
    training_memory,
)
from archcalc.core.training import training_report as _training_report


class CalcResult(NamedTuple):
    """Everything `calc` shows: the per-layer report, the training step's FLOPs and memory, the fit if asked."""

    report: Report
    flops: TrainingFlops
    memory: TrainingMemory
    train_report: Report  # the report training memory comes from (amp's activation dtype under amp; else report)
    fit: Fit | None = None
    step: tuple[StepPeak, StepPeak] | None = None  # the step's peak, a later step and the first (None under amp)
    plan: Plan | None = None  # --fit, when the batch asked does not fit: what to checkpoint (core.checkpoint)
    layers: TrainingLayers | None = None  # per layer: saved bytes, backward FLOPs, share of the peak
    unfollowed: str = ""  # why there is no step peak under amp (core.training.autocast_unfollowed)

    @property
    def settings(self) -> Settings:
        assert self.report.settings is not None  # always set by analyze()
        return self.report.settings


class NothingFits(ArchcalcError):
    """`--fit SIZE` where not even batch 1 fits, checkpointing included (the command exits 1: a check failed, not
    bad input)."""

    def __init__(self, fit: Fit, plan: Plan | None = None) -> None:
        self.fit = fit
        self.plan = plan
        super().__init__(f"no batch fits {fit.limit} B: {fit.fit_for} memory at batch 1 is {fit.at} B")


def calculate(spec: Spec | str, settings: Settings | None = None, fit: int | None = None,
              fit_for: str = "training", **overrides: Any) -> CalcResult:
    """The CalcResult of `spec` under `settings` (keyword overrides of its fields allowed). With `fit` (bytes),
    the batch is the largest whose `fit_for` memory ('training' or 'inference') fits. For training (without amp),
    when the settings' batch is larger than that, or no batch fits, the figures are at the settings' batch and
    the result carries the checkpointing plan that makes it fit (core.checkpoint.plan); NothingFits when no batch
    fits and no plan makes batch 1 fit."""
    s = Settings.of(settings, **overrides)
    if not isinstance(spec, Spec):
        from archcalc.core.spec import open_spec

        spec = open_spec(str(spec))
    found = None
    checkpoint = None
    if fit is not None:
        found = fit_batch(spec, fit, s, fit_for)
        if found.batch < s.batch or found.batch == 0:
            if not found.exact:
                if found.batch == 0:
                    raise NothingFits(found)
            else:
                checkpoint = plan(analyze(spec, s), fit, s.optimizer)
                if found.batch == 0 and not checkpoint.fits:
                    raise NothingFits(found, checkpoint)
        if checkpoint is None:
            s = s.replace(batch=found.batch)
    report = analyze(spec, s)
    train_report = _training_report(spec, s) if s.amp else report
    flops = training_flops(report)
    step = None
    unfollowed = step_unfollowed(report) or (autocast_unfollowed(train_report, s.amp) if s.amp else "")
    if not unfollowed:
        step = step_peaks(train_report, s.optimizer, amp=s.amp) if s.amp else step_peaks(report, s.optimizer)
    return CalcResult(report, flops, training_memory(train_report, s.optimizer, s.amp), train_report, found, step,
                      plan=checkpoint, layers=layer_training(train_report, flops, step[0] if step else None, s.amp),
                      unfollowed=unfollowed)
