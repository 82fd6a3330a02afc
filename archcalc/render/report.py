"""Report -> rich table | JSON | CSV | Markdown. Rendering never computes; it selects and formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from archcalc import __version__
from archcalc.core.analyze import Report, Row, rows_at_depth
from archcalc.core.conventions import CONVENTIONS
from archcalc.core.receptive import seen
from archcalc.core.units import axes, dims, fraction, grouped, nbytes, si
from archcalc.render.grid import Column, Grid, layout

if TYPE_CHECKING:
    from rich.table import Table



def _caption(report: Report) -> str:
    conv = CONVENTIONS[report.convention]
    return (f"FLOPs convention '{conv.name}': {conv.summary}. MACs: multiply-accumulates of conv/linear. "
            f"Batch {report.batch}, {report.dtype}; memory = output activations.")


# ---- calc ---------------------------------------------------------------------------------------------------------

def table_widths_note(left_out: Sequence[str], width: int | None) -> list[str]:
    if not left_out:
        return []
    import textwrap

    return textwrap.wrap(f"(left out to fit {width} columns: {', '.join(left_out)}; widen the terminal, set "
                         "COLUMNS, or use --format csv / json / md)", max(width or 80, 40))


def calc_table(report: Report, depth: int | None = None, width: int | None = None, bold: bool = False) -> Grid:
    """The per-layer table as lines of text, fitted to `width` columns when given (see render.grid)."""
    t = report.totals
    columns = [
        Column("layer", footer="total", wraps=True), Column("kind", drop=5), Column("output", True, dims(t.output),
                                                                                    drop=2),
        Column("kernel/stride/pad", short="k/s/p", drop=6), Column("params", True, grouped(t.params)),
        Column("MACs", True, si(t.macs)),
        Column(f"FLOPs ({report.convention})", True, si(t.flops), short="FLOPs", drop=1),
        Column("memory", True, nbytes(t.activation_bytes), short="mem", drop=3), Column("RF", True, axes(t.rf), drop=4),
    ]
    indent = depth is not None
    cells = [[("  " * (r.depth - 1) if indent else "") + r.name, r.kind, dims(r.output), r.config,
              grouped(r.params), si(r.macs), si(r.flops), nbytes(r.activation_bytes), axes(r.rf)]
             for r in rows_at_depth(report, depth)]
    if len(report.outputs) > 1:  # which outputs each layer feeds
        columns.append(Column("feeds", drop=7))
        for cell, r in zip(cells, rows_at_depth(report, depth)):
            cell.append(",".join(r.feeds) if r.leaf else "")
    return layout(f"{report.name} — input {dims(report.input)}", columns, cells, _caption(report), width,
                  bold=bold)


def summary_lines(report: Report) -> list[str]:
    t = report.totals
    lines = [
        f"parameters      {grouped(t.params)} ({grouped(t.trainable_params)} trainable), "
        f"{nbytes(t.param_bytes)} in {report.dtype}",
        f"buffers         {grouped(t.buffers)} ({nbytes(t.buffer_bytes)}; BN running statistics)",
        f"MACs            {grouped(t.macs)} ({si(t.macs)})",
        f"FLOPs           {grouped(t.flops)} ({si(t.flops)}, convention '{report.convention}')",
        f"activations     {nbytes(t.activation_bytes)} (sum of all layer outputs, batch {report.batch})",
        f"inference peak  {nbytes(t.peak_bytes)} (most bytes alive at once under no_grad, parameters included)",
        f"training saved  {nbytes(t.saved_bytes)} (activations autograd keeps for backward in a training step)",
        f"output          {dims(t.output)}; receptive field {axes(t.rf)}, jump {axes(t.jump)}; "
        f"{t.weight_layers} weight layers",
    ]
    if len(report.outputs) > 1:
        lines[-1] = (f"outputs         {', '.join(f'{n} {dims(s)}' for n, s in report.outputs)}; receptive field of "
                     f"{report.outputs[0][0]} {axes(t.rf)}, jump {axes(t.jump)}; {t.weight_layers} weight layers")
    rf = seen(report.rows, report.input, t.rf)
    if rf.clipped != tuple(t.rf):
        where = f" (the whole input from {rf.global_at} on)" if rf.global_at else ""
        lines.append(f"receptive field {axes(t.rf)} in theory, {axes(rf.clipped)} on this input{where}")
    return lines


def calc_json(report: Report, depth: int | None = None, extra: dict[str, Any] | None = None) -> str:
    # One layer per line: readable, and the C encoder (indent= uses the slow pure-Python one).
    data = calc_dict(report, depth)
    data.update(extra or {})
    layers = data.pop("layers")
    head = json.dumps(data)[:-1]
    body = ",\n  ".join(json.dumps(layer) for layer in layers)
    return f'{head}, "layers": [\n  {body}\n]}}'



def _row_dict(r: Row) -> dict[str, Any]:
    return {
        "name": r.name, "kind": r.kind, "leaf": r.leaf, "module": r.module, "input": list(r.input),
        "output": list(r.output), "config": r.config, "params": r.params, "trainable_params": r.trainable_params,
        "buffers": r.buffers, "macs": r.macs, "flops": r.flops, "activation_bytes": r.activation_bytes,
        "receptive_field": list(r.rf), "jump": [fraction(j) for j in r.jump], "reads": list(r.reads),
        **({"feeds": list(r.feeds)} if r.feeds else {}), **({} if r.used else {"used": False}),
    }


def totals_dict(report: Report) -> dict[str, Any]:
    t = report.totals
    rf = seen(report.rows, report.input, t.rf)  # the theoretical RF stays in "receptive_field"
    return {
        "params": t.params, "trainable_params": t.trainable_params, "buffers": t.buffers, "macs": t.macs,
        "flops": t.flops, "activation_bytes": t.activation_bytes, "param_bytes": t.param_bytes,
        "buffer_bytes": t.buffer_bytes, "peak_inference_bytes": t.peak_bytes,
        "saved_activation_bytes": t.saved_bytes, "weight_layers": t.weight_layers, "output": list(t.output),
        "receptive_field": list(t.rf), "jump": [fraction(j) for j in t.jump],
        "receptive_field_clipped": list(rf.clipped), "receptive_field_global_at": rf.global_at,
    }


def calc_dict(report: Report, depth: int | None = None) -> dict[str, Any]:
    return {
        "archcalc_version": __version__,
        "name": report.name,
        "source": report.source,
        "input": list(report.input),
        "batch": report.batch,
        "dtype": report.dtype,
        "convention": report.convention,
        "inputs": {name: list(report.graph.tensors[t].shape) if i else list(report.input)
                   for i, (name, t) in enumerate(report.graph.inputs)},
        "outputs": {name: list(shape) for name, shape in report.outputs},
        "layers": [_row_dict(r) for r in rows_at_depth(report, depth)],
        "totals": totals_dict(report),
        "warnings": [str(w) for w in report.warnings],
    }


_CSV_FIELDS = ("name", "kind", "output", "config", "params", "macs", "flops", "activation_bytes", "receptive_field")


def _flat(r: Row) -> list[str]:
    return [r.name, r.kind, "x".join(map(str, r.output)), r.config, str(r.params), str(r.macs), str(r.flops),
            str(r.activation_bytes), "x".join(map(str, r.rf))]


def calc_csv(report: Report, depth: int | None = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for r in rows_at_depth(report, depth):
        writer.writerow(_flat(r))
    t = report.totals
    writer.writerow(["total", "", "x".join(map(str, t.output)), "", t.params, t.macs, t.flops, t.activation_bytes,
                     "x".join(map(str, t.rf))])
    return buf.getvalue()


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def calc_md(report: Report, depth: int | None = None) -> str:
    t = report.totals
    headers = ["layer", "kind", "output", "kernel/stride/pad", "params", "MACs", f"FLOPs ({report.convention})",
               "memory", "RF"]
    rows = [[r.name, r.kind, dims(r.output), r.config, grouped(r.params), grouped(r.macs), grouped(r.flops),
             nbytes(r.activation_bytes), axes(r.rf)] for r in rows_at_depth(report, depth)]
    rows.append(["**total**", "", dims(t.output), "", grouped(t.params), grouped(t.macs), grouped(t.flops),
                 nbytes(t.activation_bytes), axes(t.rf)])
    return f"### {report.name}\n\n" + _md(headers, rows, {2, 4, 5, 6, 7, 8}) + f"\n{_caption(report)}\n"


# ---- compare ------------------------------------------------------------------------------------------------------

def compare_table(reports: Sequence[Report], width: int | None = None, keep: str | None = None,
                  bold: bool = False) -> Grid:
    """One row per report, fitted to `width`; `keep` (the sort column) is never left out."""
    conv = reports[0].convention
    columns = [Column("name", wraps=True), Column("input", drop=6), Column("params", True),
               Column("MACs", True), Column(f"FLOPs ({conv})", True, short="FLOPs", drop=1),
               Column("activations", True, short="acts", drop=3), Column("inference peak", True, short="peak", drop=2),
               Column("weight layers", True, short="wl", drop=5), Column("output", drop=7),
               Column("RF", True, drop=4)]
    headers = {"params": "params", "macs": "MACs", "flops": f"FLOPs ({conv})", "activation_bytes": "activations",
               "peak_inference_bytes": "inference peak", "weight_layers": "weight layers", "receptive_field": "RF"}
    cells = [[r.name, dims(r.input), grouped(r.totals.params), si(r.totals.macs), si(r.totals.flops),
              nbytes(r.totals.activation_bytes), nbytes(r.totals.peak_bytes), str(r.totals.weight_layers),
              dims(r.totals.output), axes(r.totals.rf)] for r in reports]
    return layout("archcalc compare", columns, cells, _caption(reports[0]), width,
                  keep=[headers[keep]] if keep in headers else (), bold=bold)


def compare_json(reports: Sequence[Report]) -> str:
    return json.dumps([{"name": r.name, "input": list(r.input), "batch": r.batch, "dtype": r.dtype,
                        "convention": r.convention, "totals": totals_dict(r)} for r in reports], indent=2)


def compare_csv(reports: Sequence[Report]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("name", "input", "params", "macs", "flops", "activation_bytes", "peak_inference_bytes",
                     "weight_layers", "output", "receptive_field"))
    for r in reports:
        t = r.totals
        writer.writerow([r.name, "x".join(map(str, r.input)), t.params, t.macs, t.flops, t.activation_bytes,
                         t.peak_bytes, t.weight_layers, "x".join(map(str, t.output)), "x".join(map(str, t.rf))])
    return buf.getvalue()


def compare_md(reports: Sequence[Report]) -> str:
    conv = reports[0].convention
    headers = ["name", "input", "params", "MACs", f"FLOPs ({conv})", "activations", "inference peak",
               "weight layers", "output", "RF"]
    rows = [[r.name, dims(r.input), grouped(r.totals.params), grouped(r.totals.macs), grouped(r.totals.flops),
             nbytes(r.totals.activation_bytes), nbytes(r.totals.peak_bytes), str(r.totals.weight_layers),
             dims(r.totals.output), axes(r.totals.rf)] for r in reports]
    return _md(headers, rows, {2, 3, 4, 5, 6, 7, 9})


def sort_key(column: str) -> Any:
    def key(report: Report) -> Any:
        if column == "name":
            return report.name
        value = totals_dict(report)[column]
        return max(value) if isinstance(value, list) else value
    return key


# ---- kinds --------------------------------------------------------------------------------------------------------

def _default(arg: Any) -> str:
    if arg.required:
        return "required"
    if arg.default is None:
        return "none"
    if isinstance(arg.default, bool):
        return str(arg.default).lower()
    return str(arg.default)


def kinds_rows() -> list[dict[str, Any]]:
    from archcalc.core.kinds import REGISTRY

    out = []
    for name in sorted(REGISTRY):
        kind = REGISTRY[name]
        out.append({
            "kind": name, "doc": kind.doc, "full_flops": kind.full_rule,
            "args": [{"name": a.name, "type": a.type, "default": _default(a), "aliases": list(a.aliases),
                      "choices": [str(c) for c in a.choices], "doc": a.doc} for a in kind.args],
        })
    return out


def kinds_table() -> Table:
    from rich.table import Table

    table = Table(title="archcalc layer kinds", header_style="bold", show_lines=True)
    table.add_column("kind")
    table.add_column("arguments (default)")
    table.add_column("what it is")
    from rich.text import Text

    for k in kinds_rows():
        args = "\n".join(f"{a['name']}" + (f" [{'/'.join(a['aliases'])}]" if a["aliases"] else "") +
                         f" ({a['default']})" for a in k["args"]) or "-"
        # Text, not str: rich would read the alias list `[out/filters]` as a style tag and drop it.
        table.add_row(Text(k["kind"]), Text(args), Text(k["doc"] + f"\nfull FLOPs: {k['full_flops']}"))
    return table


def kinds_md() -> str:
    """The spec reference's kind list, generated from the registry (also used for the README)."""
    parts = []
    for k in kinds_rows():
        parts.append(f"#### `{k['kind']}`\n\n{k['doc']} Full-convention FLOPs: {k['full_flops']}.\n")
        if k["args"]:
            parts.append(_md(["argument", "aliases", "default", "meaning"],
                             [[f"`{a['name']}`", ", ".join(f"`{x}`" for x in a["aliases"]), f"`{a['default']}`",
                               a["doc"] + (f" ({', '.join(a['choices'])})" if a["choices"] else "")]
                              for a in k["args"]], set()))
        parts.append("")
    return "\n".join(parts)


def kinds_json() -> str:
    return json.dumps(kinds_rows(), indent=2)
