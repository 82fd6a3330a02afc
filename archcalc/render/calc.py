"""A CalcResult (core.calc) -> the text `archcalc calc` prints, in every format; also what the library's Summary
shows (str, JSON, Markdown, HTML). One place, so the command and the library print the same bytes."""

from __future__ import annotations

from typing import Any

from archcalc.core.calc import CalcResult
from archcalc.core.training import Fit
from archcalc.core.units import dims
from archcalc.render import report as render
from archcalc.render import training as render_training


def fit_lines(fit: Fit | None, result: CalcResult | None = None) -> list[str]:
    if fit is None:
        return []
    if result is not None and result.plan is not None:
        return render_training.plan_lines(result.plan, fit.batch, result.flops.total)
    return render_training.fit_lines(fit.limit, fit.fit_for, fit.batch, fit.at, fit.next_at, fit.exact)


def grid_text(grid: Any, width: int | None, extra: list[str] | None = None) -> str:
    """A fitted table (render.grid), the note on what it left out, and any lines to follow."""
    return "\n".join(grid.lines + render.table_widths_note(grid.left_out, width) + (extra or [])) + "\n"


COLUMN_SETS = ("default", "training")
"""calc --columns: the default per-layer columns (render.columns.LAYER_COLUMNS) or the training step's
(TRAINING_COLUMNS: saved bytes, backward FLOPs, share of the training peak)."""


def _training(result: CalcResult, columns: str) -> Any:
    if columns not in COLUMN_SETS:
        raise ValueError(f"unknown column set {columns!r}")
    return result.layers if columns == "training" else None


def calc_text(result: CalcResult, depth: int | None = None, width: int | None = None, bold: bool = False,
              columns: str = "default") -> str:
    """The table, the summary, the training step and the fit, as `calc` prints them."""
    return grid_text(render.calc_table(result.report, depth, width, bold, _training(result, columns)), width,
                     render.summary_lines(result.report) + render_training.flops_lines(result.flops)
                     + render_training.memory_lines(result.memory)
                     + render_training.peak_lines(result.step, result.settings.device, result.settings.amp,
                                                             result.unfollowed)
                     + fit_lines(result.fit, result))


def calc_extra(result: CalcResult) -> dict[str, Any]:
    """What `calc --format json` adds to the report: the training step, and the fit when asked."""
    extra: dict[str, Any] = {"training_flops": render_training.flops_dict(result.flops),
                             "training_memory": render_training.memory_dict(result.memory),
                             "training_peak": render_training.peak_dict(result.step)}
    if result.fit is not None:
        extra["fit"] = {"limit_bytes": result.fit.limit, "for": result.fit.fit_for, "batch": result.fit.batch,
                        "bytes": result.fit.at, "exact": result.fit.exact,
                        "checkpoint": render_training.plan_dict(result.plan)}
    return extra


def calc_json(result: CalcResult, depth: int | None = None, columns: str = "default") -> str:
    return render.calc_json(result.report, depth, calc_extra(result), _training(result, columns))


def calc_output(result: CalcResult, fmt: str, depth: int | None = None, width: int | None = None,
                bold: bool = False, columns: str = "default") -> str:
    """`calc`'s output in `fmt`: table, json, csv or md; `columns`, one of COLUMN_SETS."""
    if fmt == "table":
        return calc_text(result, depth, width, bold, columns)
    if fmt == "json":
        return calc_json(result, depth, columns)
    if fmt == "csv":
        return render.calc_csv(result.report, depth, _training(result, columns))
    if fmt == "md":
        return render.calc_md(result.report, depth, _training(result, columns))
    raise ValueError(f"unknown format {fmt!r}")


def one_line(result: CalcResult) -> str:
    """A short description (the library Summary's repr)."""
    r, t = result.report, result.report.totals
    return (f"<archcalc Summary {r.name!r}: input {dims(r.input)}, batch {r.batch}, {t.params:,} params, "
            f"{t.macs:,} MACs, {t.flops:,} FLOPs ({r.convention}), training memory {result.memory.total:,} B>")


def calc_html(result: CalcResult, depth: int | None = None) -> str:
    """An HTML table for notebooks: the CSV's columns and rows (every figure as `calc` shows it), a caption naming
    the network, input and convention, and the summary lines beneath."""
    import csv
    import html
    import io

    rows = list(csv.reader(io.StringIO(render.calc_csv(result.report, depth))))
    head, body = rows[0], rows[1:]
    r = result.report
    esc = html.escape
    out = [f"<table><caption>{esc(r.name)} — input {esc(dims(r.input))}, batch {r.batch}, {esc(r.dtype)}, FLOPs "
           f"convention '{esc(r.convention)}'</caption>",
           "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body]
    out.append("</tbody></table>")
    s = result.settings
    lines = (render.summary_lines(r) + render_training.flops_lines(result.flops)
             + render_training.memory_lines(result.memory)
             + render_training.peak_lines(result.step, s.device, s.amp, result.unfollowed)
             + fit_lines(result.fit, result))
    out.append("<pre>" + esc("\n".join(lines)) + "</pre>")
    return "\n".join(out)
