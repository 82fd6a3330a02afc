"""Training FLOPs and training memory -> summary lines and JSON. Formats only."""

from __future__ import annotations

from typing import Any

from archcalc.core.checkpoint import Plan
from archcalc.core.training import NOT_MODELLED, StepPeak, TrainingFlops, TrainingMemory
from archcalc.core.units import grouped, nbytes, si


def flops_lines(flops: TrainingFlops) -> list[str]:
    return [f"training FLOPs  {grouped(flops.total)} ({si(flops.total)}) per step, as FlopCounterMode counts: "
            f"forward {si(flops.forward)} + grad input {si(flops.grad_input)} + grad weight {si(flops.grad_weight)}"]


def memory_lines(memory: TrainingMemory, title: str = "training memory") -> list[str]:
    amp = f", autocast {memory.activation_dtype}" if memory.amp else ""
    lines = [f"{title:15} {nbytes(memory.total)} ({memory.optimizer}, {memory.param_dtype}{amp}, batch "
             f"{memory.batch}; an upper bound, not counting {', '.join(n for n, _ in NOT_MODELLED)})"]
    for name, value, how in memory.terms():
        lines.append(f"  {name:18} {nbytes(value):>11}  {how}")
    return lines


def _where(step: StepPeak) -> str:
    return f"the {step.phase} of {step.op}" if step.op else "the optimizer step" if step.phase == "optimizer" \
        else f"the {step.phase}"


def peak_lines(step: tuple[StepPeak, StepPeak] | None, device: str, amp: str | None = None,
               unfollowed: str = "") -> list[str]:
    """The training step's exact peak (core.training.step_peaks): a later step, and the first; or why it is not
    given (`unfollowed`)."""
    if step is None:
        return [f"training peak   not given: {unfollowed}"] if unfollowed else []
    later, first = step
    under = f", {amp} autocast" if amp else ""
    return [f"training peak   {nbytes(later.peak)} ({grouped(later.peak)} B) at {_where(later)}: the most alive "
            f"at once in one step ({device} kernels{under} and torch.optim); the first step {grouped(first.peak)} B at "
            f"{_where(first)}; kernels' own workspace and allocator rounding not included"]


def peak_dict(step: tuple[StepPeak, StepPeak] | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {name: {"bytes": s.peak, "phase": s.phase, "op": s.op or None, "before_bytes": s.before}
            for name, s in zip(("later_step", "first_step"), step)}


def fit_lines(limit: int, what: str, batch: int, at: int, above: int | None, exact: bool = False) -> list[str]:
    """The answer of --fit; `exact`: the figure is the training step's peak (else `what` memory: the upper bound
    under amp, or the inference peak)."""
    measure = "training peak" if exact else f"{what} memory"
    if batch == 0:
        return [f"fit             no batch fits {nbytes(limit)} ({grouped(limit)} B): {measure} at batch 1 is "
                f"{nbytes(at)} ({grouped(at)} B)"]
    nxt = f"; batch {batch + 1} needs {grouped(above)} B" if above is not None else ""
    if above is not None and above <= limit:  # the cap, not the memory, stopped it
        return [f"fit             batch {batch}, the largest --fit considers, fits {nbytes(limit)}: {grouped(at)} of "
                f"{grouped(limit)} B of {measure}{nxt}; the figures above are at batch {batch}"]
    return [f"fit             batch {batch} is the largest whose {measure} fits {nbytes(limit)}: "
            f"{grouped(at)} of {grouped(limit)} B{nxt}; the figures above are at batch {batch}"]


def plan_lines(plan: Plan, largest: int, flops: int) -> list[str]:
    """--fit when the batch asked does not fit: the checkpointing plan (core.checkpoint.plan) and its cost;
    `largest`: the largest batch that fits without it; `flops`: the step's FLOPs without it."""
    b, limit = plan.batch, plan.limit
    fits = f"the largest that fits is batch {largest}" if largest else "no batch fits"
    lines = [f"fit             batch {b} does not fit {nbytes(limit)} ({grouped(limit)} B): its training peak is "
             f"{grouped(plan.without)} B without checkpointing ({fits}); the figures above are at batch {b}"]
    share = f" (+{100 * plan.extra_flops / flops:.1f}%)" if flops else ""
    where = _where(plan.peak if plan.peak.peak >= plan.first.peak else plan.first)
    if plan.fits:
        head = (f"checkpoint      recompute {len(plan.segments)} of {plan.candidates} blocks (torch.utils.checkpoint, "
                f"use_reentrant=False): training peak {grouped(plan.bytes)} of {grouped(limit)} B, at {where}; "
                f"{grouped(plan.extra_flops)} extra forward FLOPs per step{share}")
    else:
        head = (f"checkpoint      no choice of blocks makes batch {b} fit: the best found recomputes "
                f"{len(plan.segments)} of {plan.candidates} blocks, training peak {grouped(plan.bytes)} B at {where}; "
                f"{grouped(plan.extra_flops)} extra forward FLOPs per step{share}")
    lines.append(head)
    width = max((len(c.name) for c in plan.segments), default=0)
    for c in plan.segments:
        lines.append(f"  {c.name:{width}}  {c.first_op} .. {c.last_op}: frees {nbytes(c.freed_bytes)} of saved "
                     f"activations, recomputes {si(c.extra_flops)} FLOPs")
    return lines


def plan_dict(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"batch": plan.batch, "fits": plan.fits, "peak_bytes": plan.bytes, "without_bytes": plan.without,
            "later_step": {"bytes": plan.peak.peak, "phase": plan.peak.phase, "op": plan.peak.op or None},
            "first_step": {"bytes": plan.first.peak, "phase": plan.first.phase, "op": plan.first.op or None},
            "extra_flops": plan.extra_flops, "candidates": plan.candidates,
            "segments": [{"name": c.name, "first_op": c.first_op, "last_op": c.last_op,
                          "freed_bytes": c.freed_bytes, "extra_flops": c.extra_flops} for c in plan.segments]}


def flops_dict(flops: TrainingFlops) -> dict[str, Any]:
    return {"convention": "torch.utils.flop_counter.FlopCounterMode, one training step", "total": flops.total,
            "forward": flops.forward, "grad_input": flops.grad_input, "grad_weight": flops.grad_weight,
            "layers": [{"name": f.name, "forward": f.forward, "grad_input": f.grad_input,
                        "grad_weight": f.grad_weight} for f in flops.layers]}


def memory_dict(memory: TrainingMemory) -> dict[str, Any]:
    return {"batch": memory.batch, "optimizer": memory.optimizer, "param_dtype": memory.param_dtype,
            "activation_dtype": memory.activation_dtype, "amp": memory.amp, "total_bytes": memory.total,
            "terms": {name.replace(" ", "_"): value for name, value, _ in memory.terms()},
            "not_modelled": {name: typical for name, typical in NOT_MODELLED}}
