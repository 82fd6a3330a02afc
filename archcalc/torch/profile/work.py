"""Models of the work and memory of one timed iteration, from the analytic Report (pure; no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from archcalc.core.analyze import Report
from archcalc.core.kinds.base import numel
from archcalc.torch.profile.machine import Available
from archcalc.torch.profile.results import OutOfMemory

TRAIN_BYTES_FACTOR = 3  # a training step moves about 3x the forward's bytes (layer_work)
FLOPS_RULE = {
    False: "forward: 2 FLOPs per MAC of conv/linear for the whole batch (convention 'torch')",
    True: "training step: forward + backward exactly as FlopCounterMode counts them (grad input + grad weight "
          "of conv/linear; none for the input of the first trainable layer); the optimizer step is not counted",
}


def step_flops(report: Report, train: bool) -> int:
    """FLOPs of one timed iteration for the whole batch (report analyzed under the 'torch' convention)."""
    if report.convention != "torch":
        raise ValueError("profile FLOPs use the 'torch' convention")
    if train:
        from archcalc.core.training import training_flops

        return training_flops(report).total
    return report.totals.flops


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """Predicted peak bytes as named terms (their sum is the prediction)."""

    terms: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.terms)


def predicted_memory(report: Report, train: bool, optimizer: str = "sgd") -> MemoryModel:
    """Inference: the liveness peak of an eager forward under no_grad, parameters and buffers included
    (report.totals.peak_bytes). Training: core.training's model, the one `calc` prints — weights, gradients,
    optimizer state, buffers, saved activations; workspace and transient backward tensors are not modelled (the
    measurement shows them)."""
    t = report.totals
    if not train:
        return MemoryModel((("activations + parameters (inference liveness)", t.peak_bytes),))
    from archcalc.core.training import training_memory

    memory = training_memory(report, optimizer)
    return MemoryModel(tuple((f"{name} ({optimizer})" if name == "optimizer state" else name, size)
                             for name, size, _ in memory.terms() if name != "weight copies"))


def preflight(predicted_bytes: int, available: Available | None, force: bool, where: str) -> None:
    """Refuse a run whose predicted memory exceeds what the process may still allocate (unless forced)."""
    if available is None or force or predicted_bytes <= available.bytes:
        return
    from archcalc.core.units import nbytes

    raise OutOfMemory(f"{where}: predicted memory {nbytes(predicted_bytes)} exceeds the {nbytes(available.bytes)} "
                      f"available ({available.source}); use a smaller batch, or --force to try anyway")


def layer_work(report: Report, train: bool) -> dict[str, tuple[int, int]]:
    """(FLOPs, bytes moved) per module row: FLOPs under 'torch' (training: forward + backward as FlopCounterMode
    counts them); bytes = input + output activations + parameters, 3x in training (backward reads the output
    gradient, input and weights and writes their gradients)."""
    step: dict[str, int] = {}
    if train:
        from archcalc.core.training import training_flops

        step = {f.name: f.total for f in training_flops(report).layers}
    factor = TRAIN_BYTES_FACTOR if train else 1
    work = {}
    for r in report.rows:
        if not r.module:
            continue
        moved = numel(r.input) * report.batch * report.itemsize + r.activation_bytes + r.params * report.itemsize
        work[r.name] = (step.get(r.name, 0) if train else r.flops, moved * factor)
    return work
