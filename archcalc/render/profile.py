"""Profile results -> JSON | rich tables | note lines. Formats only: every figure comes computed in BatchResult."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

    from archcalc.torch.profile.driver import BatchResult, Stats


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _latency(stats: Stats) -> dict[str, float | int]:
    return {"median": _ms(stats.median), "p10": _ms(stats.p10), "p90": _ms(stats.p90), "iqr": _ms(stats.iqr),
            "q1": _ms(stats.q1), "q3": _ms(stats.q3), "min": _ms(stats.min), "max": _ms(stats.max),
            "samples": stats.n}


def result_dict(r: BatchResult) -> dict[str, Any]:
    """The JSON object for one batch size (times in milliseconds, rates per second, sizes in bytes)."""
    launch = None
    if r.graph_stats is not None:
        launch = _ms(r.stats.median - r.graph_stats.median)
    return {
        "spec": r.spec,
        "device": r.device,
        "device_name": r.device_name,
        "batch": r.batch,
        "dtype": r.dtype,
        "mode": "train" if r.train else "inference",
        "optimizer": r.optimizer,
        "channels_last": r.channels_last,
        "compile": r.compiled,
        "latency_ms": _latency(r.stats),
        "iterations_per_sample": r.iterations_per_sample,
        "converged": r.stop == "converged",
        "rel_iqr": r.stats.rel_iqr,
        "budget_s": r.budget_s,
        "timed_s": r.timed_s,
        "throughput": r.throughput,
        "flops": r.flops,
        "flops_rule": r.flops_rule,
        "achieved_tflops": r.achieved_flops / 1e12,
        "peak_tflops": r.roofline.peak_flops / 1e12,
        "peak_bandwidth_gbs": r.roofline.bandwidth / 1e9,
        "peak_source": r.roofline.source,
        "fraction_of_peak": r.fraction_of_peak,
        "ceiling": {"matmul_tflops": r.ceiling.matmul_flops / 1e12, "copy_gbs": r.ceiling.copy_bandwidth / 1e9},
        "peak_memory_bytes": r.memory.measured,
        "predicted_peak_memory_bytes": r.memory.predicted,
        "memory_terms": dict(r.memory.terms),
        "measured_memory_terms": dict(r.memory.extra),
        "memory_note": r.memory.note,
        "cuda_graph_latency_ms": _latency(r.graph_stats) if r.graph_stats is not None else None,
        "launch_overhead_ms": launch,
        "layers": [{"name": lt.name, "kind": lt.kind, "median_ms": lt.median_ms, "forward_ms": lt.forward_ms,
                    "backward_ms": lt.backward_ms, "predicted_ms": lt.predicted_ms,
                    "ratio": lt.median_ms / lt.predicted_ms if lt.predicted_ms > 0 else None,
                    "flops": lt.flops, "bytes": lt.bytes, "bound": lt.bound} for lt in r.layers],
        "layers_note": r.layers_note,
        "notes": list(r.notes),
    }


def profile_json(results: list[BatchResult]) -> str:
    return json.dumps([result_dict(r) for r in results], indent=2)


def profile_tables(results: list[BatchResult]) -> list[Table]:
    from rich.table import Table

    from archcalc.core.units import nbytes

    first = results[0]
    mode = f"training step ({first.optimizer})" if first.train else "inference"
    summary = Table(title=f"{first.spec} on {first.device_name} ({first.device}), {first.dtype}, {mode}",
                    header_style="bold")
    for col in ("batch", "median ms", "p10 ms", "p90 ms", "IQR/median", "samples/s", "TFLOPS", "of peak",
                "peak memory", "predicted"):
        summary.add_column(col, justify="right")
    for r in results:
        s = r.stats
        summary.add_row(str(r.batch), f"{_ms(s.median):.3f}", f"{_ms(s.p10):.3f}", f"{_ms(s.p90):.3f}",
                        f"{s.rel_iqr:.1%}" + ("" if r.stop == "converged" else " (budget)"),
                        f"{r.throughput:,.1f}", f"{r.achieved_flops / 1e12:.3f}", f"{r.fraction_of_peak:.1%}",
                        nbytes(r.memory.measured) if r.memory.measured is not None else "-",
                        nbytes(r.memory.predicted))
    tables = [summary]
    for r in results:
        if not r.layers:
            continue
        t = Table(title=f"per layer, batch {r.batch}", header_style="bold")
        columns = ["layer", "kind", "measured ms"] + (["fwd ms", "bwd ms"] if r.train else []) + \
            ["predicted ms", "measured/predicted", "bound"]
        for i, col in enumerate(columns):
            t.add_column(col, justify="left" if i < 2 or col == "bound" else "right")
        for lt in r.layers:
            ratio = f"{lt.median_ms / lt.predicted_ms:.1f}x" if lt.predicted_ms > 0 else "-"
            cells = [lt.name, lt.kind, f"{lt.median_ms:.3f}"]
            if r.train:
                cells += [f"{lt.forward_ms:.3f}", f"{lt.backward_ms or 0.0:.3f}"]
            t.add_row(*cells, f"{lt.predicted_ms:.4f}", ratio, lt.bound)
        tables.append(t)
    return tables


def profile_notes(results: list[BatchResult]) -> list[str]:
    from archcalc.core.units import nbytes

    r = results[0]
    lines = [f"FLOPs: {r.flops_rule}.",
             f"peak: {r.roofline.peak_flops / 1e12:.2f} TFLOPS, {r.roofline.bandwidth / 1e9:.0f} GB/s from "
             f"{r.roofline.source}; measured ceiling: {r.ceiling.matmul_flops / 1e12:.3f} TFLOPS matmul, "
             f"{r.ceiling.copy_bandwidth / 1e9:.1f} GB/s copy.",
             "latency: median of samples (each the mean of 'iterations per sample' iterations) after warm-up; "
             "timing stops when IQR/median <= 2% or the budget ends.",
             f"memory: {r.memory.note}."]
    for res in results:
        terms = ", ".join(f"{k} {nbytes(v)}" for k, v in res.memory.terms + res.memory.extra)
        lines.append(f"batch {res.batch}: {res.stats.n} samples x {res.iterations_per_sample} iterations; "
                     f"predicted memory = {terms}")
        if res.graph_stats is not None:
            lines.append(f"batch {res.batch}: CUDA-graph replay median {_ms(res.graph_stats.median):.3f} ms; "
                         f"launch overhead {_ms(res.stats.median - res.graph_stats.median):.3f} ms")
        lines += [f"batch {res.batch}: {n}" for n in res.notes]
    if r.layers_note:
        lines.append(f"layers: {r.layers_note}.")
    return lines
