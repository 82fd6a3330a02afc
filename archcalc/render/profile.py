"""Profile results -> JSON | rich tables | note lines. Formats only: every figure comes computed in BatchResult."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from archcalc.render.grid import Grid
    from archcalc.torch.profile.results import BatchResult
    from archcalc.torch.profile.stats import Stats


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _latency(stats: Stats) -> dict[str, float | int | None]:
    """Times in ms; the spread (p10, p90, quartiles, IQR) is null below a handful of samples."""
    return {"median": _ms(stats.median), "p10": _ms(stats.p10), "p90": _ms(stats.p90), "iqr": _ms(stats.iqr),
            "q1": _ms(stats.q1), "q3": _ms(stats.q3), "min": _ms(stats.min), "max": _ms(stats.max),
            "samples": stats.n}


def result_dict(r: BatchResult) -> dict[str, Any]:
    """The JSON object for one point (times in milliseconds, rates per second, sizes in bytes)."""
    launch = None
    if r.graph_stats is not None:
        launch = _ms(r.stats.median - r.graph_stats.median)
    return {
        "spec": r.spec,
        "device": r.device,
        "device_name": r.device_name,
        "batch": r.batch,
        "threads": r.threads,
        "interop_threads": r.interop_threads,
        "dtype": r.dtype,
        "mode": "train" if r.train else "inference",
        "optimizer": r.optimizer,
        "channels_last": r.channels_last,
        "compile": r.compiled,
        "latency_ms": _latency(r.stats),
        "iterations_per_sample": r.iterations_per_sample,
        "warmup_iterations": r.warmup_iterations,
        "converged": r.stop == "converged",
        "rel_iqr": r.stats.rel_iqr,
        "budget_s": r.budget_s,
        "share_s": r.share_s,
        "timed_s": r.timed_s,
        "phases_s": {p.name: p.seconds for p in r.phases},
        "finished_s": r.finished_s,
        "machine": {"cpus": r.load_start.cpus, "load_average": list(r.load_start.averages),
                    "load_average_after": list(r.load_end.averages), "busy": r.loaded},
        "throughput": r.throughput,
        "flops": r.flops,
        "flops_rule": r.flops_rule,
        "achieved_tflops": r.achieved_flops / 1e12,
        "peak_tflops": r.roofline.peak_flops / 1e12,
        "peak_bandwidth_gbs": r.roofline.bandwidth / 1e9,
        "peak_source": r.roofline.source,
        "fraction_of_peak": r.fraction_of_peak,
        "ceiling": {"matmul_tflops": r.ceiling.matmul_flops / 1e12, "copy_gbs": r.ceiling.copy_bandwidth / 1e9,
                    "cached": r.ceiling.cached},
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


def _spread(stats: Stats) -> tuple[str, str]:
    """(p10-p90 ms, IQR/median) cells; '-' when there are too few samples for a spread."""
    if stats.p10 is None or stats.p90 is None or stats.rel_iqr is None:
        return "-", "-"
    return f"{stats.p10 * 1e3:.3f}-{stats.p90 * 1e3:.3f}", f"{stats.rel_iqr:.1%}"


def profile_tables(results: list[BatchResult], width: int | None = None, bold: bool = False) -> list[Grid]:
    """The summary (one row per point) and the per-layer tables, fitted to `width` (render.grid: numbers are
    never cut; the least important columns are left out first, and the table says which)."""
    from archcalc.core.units import flops_rate, nbytes
    from archcalc.render.grid import Column, layout

    first = results[0]
    mode = f"training step ({first.optimizer})" if first.train else "inference"
    columns = [Column("batch", True), Column("threads", True, short="thr"), Column("median ms", True, short="med ms"),
               Column("p10-p90 ms", True, short="p10-p90", drop=5), Column("IQR/median", True, short="IQR/med"),
               Column("samples", True, short="n"), Column("samples/s", True, short="/s", drop=4),
               Column("FLOP rate", True, short="FLOP/s", drop=3), Column("of peak", True, short="peak%", drop=6),
               Column("peak memory", True, short="memory", drop=1), Column("predicted", True, short="pred", drop=2)]
    cells = []
    for r in results:
        s = r.stats
        spread, rel = _spread(s)
        cells.append([str(r.batch), str(r.threads), f"{s.median * 1e3:.3f}", spread,
                      rel + ("" if r.stop == "converged" else " (budget)"), str(s.n), f"{r.throughput:,.1f}",
                      flops_rate(r.achieved_flops), f"{r.fraction_of_peak:.1%}",
                      nbytes(r.memory.measured) if r.memory.measured is not None else "-",
                      nbytes(r.memory.predicted)])
    grids = [layout(f"{first.spec} on {first.device_name} ({first.device}), {first.dtype}, {mode}", columns, cells,
                    width=width, bold=bold)]
    for r in results:
        if r.layers:
            grids.append(_layers_grid(r, width, bold))
    return grids


def _layers_grid(r: BatchResult, width: int | None, bold: bool) -> Grid:
    from archcalc.render.grid import Column, layout

    columns = [Column("layer", wraps=True), Column("kind", drop=3), Column("measured ms", True, short="ms")]
    if r.train:
        columns += [Column("fwd ms", True, short="fwd", drop=2), Column("bwd ms", True, short="bwd", drop=2)]
    columns += [Column("predicted ms", True, short="pred ms"), Column("measured/predicted", True, short="ratio"),
                Column("bound", drop=1)]
    cells = []
    for lt in r.layers:
        row = [lt.name, lt.kind, f"{lt.median_ms:.3f}"]
        if r.train:
            row += [f"{lt.forward_ms:.3f}", f"{lt.backward_ms or 0.0:.3f}"]
        row += [f"{lt.predicted_ms:.4f}", f"{lt.median_ms / lt.predicted_ms:.1f}x" if lt.predicted_ms > 0 else "-",
                lt.bound]
        cells.append(row)
    return layout(f"per layer, batch {r.batch}, {plural(r.threads, 'thread')}", columns, cells, width=width,
                  bold=bold)


def _costs(r: BatchResult) -> str:
    return ", ".join(f"{p.name} {p.seconds:.2f} s" + (f" ({p.detail})" if p.detail else "") for p in r.phases)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def profile_notes(results: list[BatchResult]) -> list[str]:
    from archcalc.core.units import flops_rate, nbytes

    r = results[0]
    load = r.load_start
    lines = [f"FLOPs: {r.flops_rule}.",
             f"peak: {flops_rate(r.roofline.peak_flops)}, {r.roofline.bandwidth / 1e9:.0f} GB/s from "
             f"{r.roofline.source}; measured ceiling: {flops_rate(r.ceiling.matmul_flops)} matmul, "
             f"{r.ceiling.copy_bandwidth / 1e9:.1f} GB/s copy{' (cached)' if r.ceiling.cached else ''}.",
             f"threads: {', '.join(sorted({str(x.threads) for x in results}, key=int))} intra-op "
             f"(torch.set_num_threads), {r.interop_threads} inter-op; the default is 1 (docs/profile.md#threads: how "
             "threads are chosen).",
             f"machine: {load.cpus} CPUs, load average {load.averages[0]:g} / {load.averages[1]:g} / "
             f"{load.averages[2]:g} (1 / 5 / 15 min) at the start.",
             "latency: median of samples (each the mean of 'iterations per sample' iterations) after warm-up; "
             "timing stops when IQR/median <= 2% over >= 10 samples or its share of the budget ends; no spread is "
             "shown from fewer than 5 samples.",
             f"memory: {r.memory.note}."]
    for res in results:
        where = f"batch {res.batch}, {res.threads} thread{'s' if res.threads > 1 else ''}"
        lines.append(f"{where}: {plural(res.stats.n, 'sample')} x {plural(res.iterations_per_sample, 'iteration')}; "
                     f"cost: {_costs(res)}")
        predicted = ", ".join(f"{k} {nbytes(v)}" for k, v in res.memory.terms)
        line = f"{where}: predicted memory {nbytes(res.memory.predicted)} = {predicted}"
        if res.memory.measured is not None:
            measured = ", ".join(f"{k} {nbytes(v)}" for k, v in res.memory.extra)
            line += f"; measured {nbytes(res.memory.measured)} ({measured})"
        lines.append(line)
        if res.graph_stats is not None:
            lines.append(f"{where}: CUDA-graph replay median {res.graph_stats.median * 1e3:.3f} ms; "
                         f"launch overhead {(res.stats.median - res.graph_stats.median) * 1e3:.3f} ms")
        lines += [f"{where}: {n}" for n in res.notes]
    if r.layers_note:
        lines.append(f"layers: {r.layers_note}.")
    return lines
