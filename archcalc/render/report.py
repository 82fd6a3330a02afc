"""Report -> rich table | JSON | CSV | Markdown. Rendering never computes; it selects and formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from archcalc import __version__
from archcalc.core.analyze import Report, rows_at_depth
from archcalc.core.conventions import CONVENTIONS
from archcalc.core.receptive import seen
from archcalc.core.units import axes, dims, grouped, nbytes, si
from archcalc.render.columns import KEEP, LAYER_COLUMNS, MODEL_COLUMNS, TRAINING_COLUMNS, Col, shown
from archcalc.render.grid import Column, Grid, layout

if TYPE_CHECKING:
    from rich.table import Table

    from archcalc.core.training import TrainingLayers



def _caption(report: Report) -> str:
    conv = CONVENTIONS[report.convention]
    return (f"FLOPs convention '{conv.name}': {conv.summary}. MACs: multiply-accumulates of conv/linear/matmul. "
            f"Batch {report.batch}, {report.dtype}; memory = output activations.")


# ---- calc ---------------------------------------------------------------------------------------------------------

def table_widths_note(left_out: Sequence[str], width: int | None) -> list[str]:
    if not left_out:
        return []
    import textwrap

    return textwrap.wrap(f"(left out to fit {width} columns: {', '.join(left_out)}; widen the terminal, set "
                         "COLUMNS, or use --format csv / json / md)", max(width or 80, 40))


def _training_caption(report: Report) -> str:
    conv = CONVENTIONS[report.convention]
    device = report.settings.device if report.settings else "cuda"
    return (f"Training step, batch {report.batch}, {report.dtype}, {device} kernels: saved for backward = what "
            f"the layer's autograd node keeps (a tensor kept by several layers "
            f"counts at the first); backward FLOPs in convention '{conv.name}': {conv.backward} per MAC of the "
            f"convolutions and matrix products torch.utils.flop_counter counts (elementwise gradients not counted); "
            f"held at the training peak = the layer's parameters, buffers, optimizer state and what it made that is "
            f"alive at a later step's peak moment (inputs, loss and seed not in any row).")


def _layer_set(report: Report, fmt: str, depth: int | None,
               training: TrainingLayers | None) -> tuple[list[Col], list[Any], Any]:
    """The columns, the rows and what holds their totals: the default set (the report's), or the training set."""
    if training is None:
        return shown(LAYER_COLUMNS, fmt, report), rows_at_depth(report, depth), report
    from archcalc.core.training import training_rows_at_depth

    return shown(TRAINING_COLUMNS, fmt, training), training_rows_at_depth(report, training, depth), training


def calc_table(report: Report, depth: int | None = None, width: int | None = None, bold: bool = False,
               training: TrainingLayers | None = None) -> Grid:
    """The per-layer table as lines of text, fitted to `width` columns when given (see render.grid); with
    `training`, its columns (render.columns.TRAINING_COLUMNS)."""
    cols, rows, totals = _layer_set(report, "table", depth, training)
    columns = [Column(c.title(report.convention), c.justify_right, _footer(c, totals, "table"), c.short, c.drop,
                      c.wraps) for c in cols]
    writers = [(_indented if c.wraps and depth is not None else c.getter(), c.form.table) for c in cols]
    cells = [[write(get(r)) for get, write in writers] for r in rows]
    return layout(f"{report.name} — input {dims(report.input)}", columns, cells,
                  _training_caption(report) if training else _caption(report), width, bold=bold)


def _indented(r: Any) -> str:  # with a depth limit, names are indented by their depth
    return "  " * (r.depth - 1) + r.name


def _footer(col: Col, report: Any, fmt: str) -> str:
    """calc's total row: the report's (or the training rows') total of the column's figure, or its label."""
    return getattr(col.form, fmt)(col.getter()(report.totals)) if col.total else col.footer


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


def calc_json(report: Report, depth: int | None = None, extra: dict[str, Any] | None = None,
              training: TrainingLayers | None = None) -> str:
    # One layer per line: readable, and the C encoder (indent= uses the slow pure-Python one).
    data = calc_dict(report, depth, training)
    data.update(extra or {})
    layers = data.pop("layers")
    head = json.dumps(data)[:-1]
    body = ",\n  ".join(json.dumps(layer) for layer in layers)
    return f'{head}, "layers": [\n  {body}\n]}}'



_JsonWriter = tuple[str, Callable[[Any], Any], Callable[[Any], Any], object]  # key, value, JSON form, omitted value


def _json(obj: Any, writers: Sequence[_JsonWriter]) -> dict[str, Any]:
    out = {}
    for key, get, write, omit in writers:
        value = get(obj)
        if omit is KEEP or value != omit:
            out[key] = write(value)
    return out


def _json_writers(columns: Sequence[Col], within: str = "") -> list[_JsonWriter]:
    return [(c.key, c.getter(within), c.form.json, c.omit) for c in shown(columns, "json")]


def totals_dict(report: Report) -> dict[str, Any]:
    return _json(report, _json_writers(MODEL_COLUMNS, "totals."))


def calc_dict(report: Report, depth: int | None = None, training: TrainingLayers | None = None) -> dict[str, Any]:
    """calc's JSON; with `training`, each layer and the totals also carry the training columns' figures."""
    writers = _json_writers(LAYER_COLUMNS)
    layers = [_json(r, writers) for r in rows_at_depth(report, depth)]
    totals = totals_dict(report)
    if training is not None:
        from archcalc.core.training import training_rows_at_depth

        extra = [w for w in _json_writers([c for c in shown(TRAINING_COLUMNS, "json", training)
                                           if c.key not in ("name", "kind")])]
        for layer, row in zip(layers, training_rows_at_depth(report, training, depth)):
            layer.update(_json(row, extra))
        totals.update(_json(training.totals, extra))
        if training.other_peak is not None:
            totals["training_peak_bytes_not_in_layers"] = training.other_peak
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
        "layers": layers,
        "totals": totals,
        "warnings": [str(w) for w in report.warnings],
    }


def _csv() -> tuple[Any, Any]:
    """A string buffer and a CSV writer on it (csv is imported only for CSV output)."""
    import csv
    import io

    buf = io.StringIO()
    return buf, csv.writer(buf, lineterminator="\n")


def calc_csv(report: Report, depth: int | None = None, training: TrainingLayers | None = None) -> str:
    cols, rows, totals = _layer_set(report, "csv", depth, training)
    writers = [(c.getter(), c.form.csv) for c in cols]
    buf, writer = _csv()
    writer.writerow([c.key for c in cols])
    for r in rows:
        writer.writerow([write(get(r)) for get, write in writers])
    writer.writerow([_footer(c, totals, "csv") for c in cols])
    return buf.getvalue()


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def calc_md(report: Report, depth: int | None = None, training: TrainingLayers | None = None) -> str:
    cols, layers, totals = _layer_set(report, "md", depth, training)
    writers = [(c.getter(), c.form.md) for c in cols]
    rows = [[write(get(r)) for get, write in writers] for r in layers]
    rows.append([_footer(c, totals, "md") if c.total else f"**{c.footer}**" if c.footer else "" for c in cols])
    return (f"### {report.name}\n\n" + _md([c.title(report.convention) for c in cols], rows,
                                          {i for i, c in enumerate(cols) if c.justify_right})
            + f"\n{_training_caption(report) if training else _caption(report)}\n")


# ---- compare ------------------------------------------------------------------------------------------------------

def _compare_cells(reports: Sequence[Report], cols: Sequence[Col], fmt: str) -> list[list[Any]]:
    writers = [(c.getter("totals."), getattr(c.form, fmt)) for c in cols]
    return [[write(get(r)) for get, write in writers] for r in reports]


def compare_table(reports: Sequence[Report], width: int | None = None, keep: str | None = None,
                  bold: bool = False) -> Grid:
    """One row per report, fitted to `width`; `keep` (the sort column) is never left out."""
    conv = reports[0].convention
    cols = shown(MODEL_COLUMNS, "table")
    columns = [Column(c.title(conv), c.justify_right, short=c.short, drop=c.drop, wraps=c.wraps) for c in cols]
    return layout("archcalc compare", columns, _compare_cells(reports, cols, "table"), _caption(reports[0]), width,
                  keep=[c.title(conv) for c in cols if c.key == keep], bold=bold)


def compare_json(reports: Sequence[Report]) -> str:
    return json.dumps([{"name": r.name, "input": list(r.input), "batch": r.batch, "dtype": r.dtype,
                        "convention": r.convention, "totals": totals_dict(r)} for r in reports], indent=2)


def compare_csv(reports: Sequence[Report]) -> str:
    cols = shown(MODEL_COLUMNS, "csv")
    buf, writer = _csv()
    writer.writerow([c.key for c in cols])
    writer.writerows(_compare_cells(reports, cols, "csv"))
    return buf.getvalue()


def compare_md(reports: Sequence[Report]) -> str:
    cols = shown(MODEL_COLUMNS, "md")
    return _md([c.title(reports[0].convention) for c in cols], _compare_cells(reports, cols, "md"),
               {i for i, c in enumerate(cols) if c.justify_right})


def sort_key(column: str) -> Any:
    """compare --sort: a column's value (a receptive field by its largest axis)."""
    get = next(c for c in MODEL_COLUMNS if c.key == column).getter("totals.")

    def key(report: Report) -> Any:
        value = get(report)
        return max(value) if isinstance(value, tuple) else value
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
            "kind": name, "category": "layer", "doc": kind.doc, "full_flops": kind.full_rule,
            "args": [{"name": a.name, "type": a.type, "default": _default(a), "aliases": list(a.aliases),
                      "choices": [str(c) for c in a.choices], "doc": a.doc} for a in kind.args],
        })
    return out


def words_rows() -> list[dict[str, Any]]:
    """The merges, composites and keys of the spec language (core.grammar.words), as `kinds` lists them after the
    layer kinds: a composite's "args" are the keys that may stand beside its head."""
    from archcalc.core.grammar import words

    return [{"kind": w.name, "category": w.category, "doc": w.doc,
             "args": [{"name": k.name, "type": k.holds.name, "default": "required" if k.required else "none",
                       "aliases": [], "choices": [], "doc": k.doc} for k in w.keys]} for w in words()]


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


def words_table() -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="merges, composites and keys", header_style="bold", show_lines=True)
    for column in ("word", "category", "what it is", "keys beside it"):
        table.add_column(column)
    for w in words_rows():
        keys = "\n".join(a["name"] + (" (required)" if a["default"] == "required" else "") for a in w["args"])
        table.add_row(Text(w["kind"]), Text(w["category"]), Text(w["doc"]), Text(keys or "-"))
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
    parts.append("#### Merges, composites and keys\n")
    parts.append(_md(["word", "category", "what it is", "keys beside it"],
                     [[f"`{w['kind']}`", w["category"], w["doc"],
                       "; ".join(f"`{a['name']}`" + (" (required)" if a["default"] == "required" else "") +
                                 f": {a['doc']}" for a in w["args"])] for w in words_rows()], set()))
    return "\n".join(parts)


def kinds_json() -> str:
    return json.dumps(kinds_rows() + words_rows(), indent=2)
