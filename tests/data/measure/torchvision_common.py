# Shared by torchvision_vit.py, torchvision_swin.py, torchvision_mvit.py and torchvision_maxvit.py (measurement
# recipes, not run by the tests; see tests/data/README.md). Runs in the reference virtualenv that has torchvision.
"""FlopCounterMode's count by operator, and what `archcalc import` of a model gives (this repository's archcalc)."""

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def counts(mode: FlopCounterMode) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(mode.get_flop_counts()["Global"].items(), key=lambda kv: str(kv[0]))}


def imported(model: torch.nn.Module, input_shape: tuple[int, ...], batch_3: bool = False) -> dict[str, Any]:
    """The imported spec's totals at one sample of `input_shape`; with `batch_3`, the MACs and fvcore figures at
    batch 3 (work done once per forward, Swin V2's) and the import's warnings too. A refusal is a result."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    import archcalc

    try:
        result = archcalc.from_module(model, input_shape)
    except Exception as exc:  # noqa: BLE001  (recorded: a refusal is a result)
        return {"error": f"{type(exc).__name__}: {exc}"}
    spec = result.spec
    report = archcalc.analyze(spec)
    row: dict[str, Any] = {"params": report.totals.params, "buffers": report.totals.buffers,
                           "macs": report.totals.macs,
                           "fvcore": archcalc.analyze(spec, convention="fvcore").totals.flops,
                           "output": list(report.totals.output), "rows": len(report.rows),
                           "kinds": sorted({r.kind for r in report.rows})}
    if batch_3:
        row["macs_batch_3"] = archcalc.analyze(spec, batch=3).totals.macs
        row["fvcore_batch_3"] = archcalc.analyze(spec, convention="fvcore", batch=3).totals.flops
        row["warnings"] = list(result.warnings)
    return row
