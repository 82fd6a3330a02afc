"""Sweep rows and budget verdicts -> rich table | JSON | CSV | Markdown. Formats only."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from archcalc.core.budget import BUDGETS, Verdict
from archcalc.core.conventions import CONVENTIONS
from archcalc.core.sweep import COLUMNS, SweepRow
from archcalc.core.units import dims, grouped, nbytes, si

if TYPE_CHECKING:
    from rich.table import Table

_HEADERS = {"params": "params", "macs": "MACs", "flops": "FLOPs", "activation_bytes": "activations",
            "peak_inference_bytes": "inference peak", "training_bytes": "training memory",
            "training_flops": "training FLOPs"}
_BYTES = {"activation_bytes", "peak_inference_bytes", "training_bytes"}


def _set_names(rows: Sequence[SweepRow]) -> list[str]:
    return [name for name, _ in rows[0].point.sets] if rows else []


def caption(convention: str, optimizer: str, dtype: str, amp: str | None) -> str:
    conv = CONVENTIONS[convention]
    return (f"FLOPs convention '{conv.name}': {conv.summary}. Training memory: {optimizer}, {dtype}"
            f"{f', autocast {amp}' if amp else ''} (weights, gradients, optimizer state, buffers, saved activations);"
            " training FLOPs as FlopCounterMode counts one step.")


def sweep_table(rows: Sequence[SweepRow], convention: str, title: str, note: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    names = _set_names(rows)
    show_pareto = any(r.pareto is not None for r in rows)
    table = Table(title=title, caption=note, header_style="bold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("input")
    table.add_column("batch", justify="right")
    for column in COLUMNS:
        header = _HEADERS[column] + (f" ({convention})" if column == "flops" else "")
        table.add_column(header, justify="right", no_wrap=True)
    if show_pareto:
        table.add_column("pareto", justify="center")
    for r in rows:
        cells = [value for _, value in r.point.sets] + [dims(r.input), str(r.point.batch)]
        if r.values is None:
            cells += [f"error: {r.error}"] + [""] * (len(COLUMNS) - 1)
        else:
            cells += [nbytes(r.values[c]) if c in _BYTES else (grouped(r.values[c]) if c == "params"
                                                               else si(r.values[c])) for c in COLUMNS]
        if show_pareto:
            cells.append("*" if r.pareto else "")
        table.add_row(*(Text(c) for c in cells))
    return table


def _row_dict(r: SweepRow) -> dict[str, Any]:
    d: dict[str, Any] = {"set": dict(r.point.sets), "input": list(r.input), "batch": r.point.batch}
    if r.values is not None:
        d.update(r.values)
    else:
        d["error"] = r.error
    if r.pareto is not None:
        d["pareto"] = r.pareto
    return d


def sweep_json(rows: Sequence[SweepRow], meta: dict[str, Any]) -> str:
    body = ",\n  ".join(json.dumps(_row_dict(r)) for r in rows)
    head = json.dumps(meta)[:-1]
    return f'{head}, "rows": [\n  {body}\n]}}' if rows else f'{head}, "rows": []}}'


def sweep_csv(rows: Sequence[SweepRow]) -> str:
    names = _set_names(rows)
    show_pareto = any(r.pareto is not None for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*names, "input", "batch", *COLUMNS, *(["pareto"] if show_pareto else []), "error"])
    for r in rows:
        values = [r.values[c] if r.values is not None else "" for c in COLUMNS]
        writer.writerow([*(v for _, v in r.point.sets), "x".join(map(str, r.input)), r.point.batch, *values,
                         *([str(bool(r.pareto)).lower()] if show_pareto else []), r.error or ""])
    return buf.getvalue()


def sweep_md(rows: Sequence[SweepRow], convention: str, note: str) -> str:
    names = _set_names(rows)
    show_pareto = any(r.pareto is not None for r in rows)
    headers = [*names, "input", "batch", *(_HEADERS[c] + (f" ({convention})" if c == "flops" else "")
                                         for c in COLUMNS), *(["pareto"] if show_pareto else [])]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if h == "input" else "---:" for h in headers)
             + "|"]
    for r in rows:
        cells = [v for _, v in r.point.sets] + [dims(r.input), str(r.point.batch)]
        if r.values is None:
            cells += [f"error: {r.error}"] + [""] * (len(COLUMNS) - 1)
        else:
            cells += [nbytes(r.values[c]) if c in _BYTES else grouped(r.values[c]) for c in COLUMNS]
        if show_pareto:
            cells.append("*" if r.pareto else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + f"\n\n{note}\n"


# ---- budgets ------------------------------------------------------------------------------------------------------

def _amount(value: int, unit: str) -> str:
    return f"{nbytes(value)} ({grouped(value)} B)" if unit == "bytes" else f"{si(value)} ({grouped(value)})"


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    lines = []
    for v in verdicts:
        share = f"{100 * v.actual / v.limit:.1f}% of the budget" if v.limit else "budget 0"
        if v.exceeded:
            lines.append(f"over  {v.name:12} {_amount(v.actual, v.unit)} exceeds --max-{v.name.replace('_', '-')} "
                         f"{_amount(v.limit, v.unit)} by {_amount(v.over, v.unit)} ({share})")
        else:
            lines.append(f"ok    {v.name:12} {_amount(v.actual, v.unit)} within {_amount(v.limit, v.unit)} ({share})")
    bad = [v for v in verdicts if v.exceeded]
    lines.append(f"{len(bad)} of {len(verdicts)} budgets exceeded" + (": " + ", ".join(v.name for v in bad)
                                                                      if bad else ""))
    return lines


def verdicts_json(name: str, verdicts: Sequence[Verdict]) -> str:
    return json.dumps({"name": name, "ok": not any(v.exceeded for v in verdicts),
                       "budgets": [{"budget": v.name, "what": BUDGETS[v.name][0], "unit": v.unit, "limit": v.limit,
                                    "actual": v.actual, "exceeded": v.exceeded, "over": v.over}
                                   for v in verdicts]}, indent=2)
