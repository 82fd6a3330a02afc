"""The analytic commands: `calc`, `compare`, `kinds`, `zoo`. None of them imports torch."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer

from archcalc.cli import options
from archcalc.cli.options import (
    F32,
    AmpOpt,
    BatchOpt,
    Columns,
    ColumnsOpt,
    Convention,
    ConvOpt,
    DTypeOpt,
    FitFor,
    FitForOpt,
    FitOpt,
    Fmt,
    FmtOpt,
    InputGradOpt,
    InputOpt,
    MaxLayersOpt,
    Optimizer,
    OptimizerOpt,
    OutputOpt,
    PlotOpt,
    SavedFor,
    SavedForOpt,
    SetOpt,
    SpecArg,
    complete_spec,
    emit,
    err_console,
    grid_text,
    handle_errors,
    load,
    out_console,
    plot_drawer,
    print_warnings,
    size_option,
    table_style,
    write_text,
)
from archcalc.core.spec import MAX_LAYERS


@handle_errors
def calc(
    spec: SpecArg,
    batch: BatchOpt = 1,
    dtype: DTypeOpt = F32,
    input: InputOpt = None,
    convention: ConvOpt = Convention.torch,
    depth: Annotated[int | None, typer.Option("--depth", "-d", min=1,
                                              help="collapse blocks below this depth into one row")] = None,
    fmt: FmtOpt = Fmt.table,
    strict: Annotated[bool, typer.Option("--strict", help="treat warnings (non-integer sizes) as errors")] = False,
    set_: SetOpt = None,
    max_layers: MaxLayersOpt = MAX_LAYERS,
    optimizer: OptimizerOpt = Optimizer.sgd,
    amp: AmpOpt = None,
    fit: FitOpt = None,
    fit_for: FitForOpt = FitFor.training,
    device: SavedForOpt = SavedFor.cuda,
    input_requires_grad: InputGradOpt = False,
    plot: PlotOpt = None,
    output: OutputOpt = None,
    columns: ColumnsOpt = Columns.default,
) -> None:
    """Per-layer shapes, parameters, MACs/FLOPs, memory and receptive field, with totals and training cost."""
    from archcalc.core.calc import NothingFits, calculate
    from archcalc.render import calc as render
    from archcalc.render import training as render_training

    settings = options.settings(batch, dtype, input, convention, device, input_requires_grad, strict, optimizer, amp)
    plotter = plot_drawer(plot)
    spec_obj = load(spec, set_, max_layers)
    limit = None if fit is None else size_option("--fit", fit)
    try:
        result = calculate(spec_obj, settings, limit, fit_for.value)
    except NothingFits as exc:
        err_console().print(render.fit_lines(exc.fit)[0], markup=False)
        if exc.plan is not None:
            err_console().print(render_training.plan_lines(exc.plan, 0, 0)[1], markup=False)
        raise typer.Exit(1) from None
    print_warnings(result.report)
    width, bold = table_style(output) if fmt is Fmt.table else (None, False)
    emit(render.calc_output(result, fmt.value, depth, width, bold, columns.value), output, [spec_obj.path])
    if plotter is not None:
        from archcalc.plot.data import calc_plot

        s = result.settings
        plotter.draw("calc", calc_plot(result.report, depth, s.device, s.input_requires_grad, result.train_report,
                                       result.step))


class SortBy(str, Enum):
    name = "name"
    params = "params"
    macs = "macs"
    flops = "flops"
    activation_bytes = "activation_bytes"
    peak_inference_bytes = "peak_inference_bytes"
    weight_layers = "weight_layers"
    receptive_field = "receptive_field"


@handle_errors
def compare(
    specs: Annotated[list[str], typer.Argument(metavar="SPEC...", autocompletion=complete_spec,
                                               help="spec files or bundled spec names")],
    batch: BatchOpt = 1,
    dtype: DTypeOpt = F32,
    input: InputOpt = None,
    convention: ConvOpt = Convention.torch,
    sort: Annotated[SortBy | None, typer.Option("--sort", "-s", help="sort by this column")] = None,
    descending: Annotated[bool, typer.Option("--desc", help="sort largest first")] = False,
    fmt: FmtOpt = Fmt.table,
    set_: SetOpt = None,
    max_layers: MaxLayersOpt = MAX_LAYERS,
    plot: PlotOpt = None,
    output: OutputOpt = None,
) -> None:
    """One row per architecture: params, MACs, FLOPs, memory, depth, receptive field."""
    from archcalc.core.analyze import analyze
    from archcalc.render import report as render

    settings = options.settings(batch, dtype, input, convention)
    plotter = plot_drawer(plot)
    reports = [analyze(load(s, set_, max_layers), settings) for s in specs]
    for report in reports:
        print_warnings(report)
    if sort is not None:
        reports.sort(key=render.sort_key(sort.value), reverse=descending)
    if fmt is Fmt.table:
        width, bold = table_style(output)
        text = grid_text(render.compare_table(reports, width, sort.value if sort else None, bold), width)
    else:
        text = {Fmt.json: render.compare_json, Fmt.csv: render.compare_csv, Fmt.md: render.compare_md}[fmt](reports)
    emit(text, output, [r.path for r in reports])
    if plotter is not None:
        from archcalc.plot.data import compare_plot

        plotter.draw("compare", compare_plot(reports))


class KindsFmt(str, Enum):
    table = "table"
    json = "json"
    md = "md"


@handle_errors
def kinds(fmt: Annotated[KindsFmt, typer.Option("--format", "-f")] = KindsFmt.table) -> None:
    """Every layer kind with its arguments and defaults (from the registry), then the merges, composites and keys
    of the spec language (from its grammar)."""
    from archcalc.render import report as render

    if fmt is KindsFmt.table:
        out_console().print(render.kinds_table())
        out_console().print(render.words_table())
    else:
        sys.stdout.write(render.kinds_json() + "\n" if fmt is KindsFmt.json else render.kinds_md())


@handle_errors
def schema() -> None:
    """A JSON Schema for spec files, generated from the kind registry: YAML editors complete and check specs with
    it (see docs/editor.md)."""
    import json

    from archcalc.core.schema import spec_schema

    write_text(json.dumps(spec_schema(), indent=2, ensure_ascii=False))


@handle_errors
def zoo(fmt: Annotated[KindsFmt, typer.Option("--format", "-f")] = KindsFmt.table) -> None:
    """The bundled specs with their descriptions and sources."""
    from archcalc.core import zoo as zoo_mod

    entries = zoo_mod.entries()
    if fmt is KindsFmt.json:
        import dataclasses
        import json

        sys.stdout.write(json.dumps([dataclasses.asdict(e) for e in entries], indent=2) + "\n")
        return
    if fmt is KindsFmt.md:
        sys.stdout.write("| spec | family | description | source |\n|---|---|---|---|\n")
        for e in entries:
            sys.stdout.write(f"| `{e.name}` | {e.family} | {e.description} | {e.source} |\n")
        return
    from rich.table import Table

    table = Table(title="bundled specs", header_style="bold")
    for col in ("spec", "family", "description", "source"):
        table.add_column(col)
    from rich.text import Text

    for e, after in zip(entries, [*entries[1:], None]):
        group_ends = after is None or (after.name.rpartition("/")[0], after.family) != (e.name.rpartition("/")[0],
                                                                                        e.family)
        table.add_row(Text(e.name), Text(e.family), Text(e.description), Text(e.source), end_section=group_ends)
    out_console().print(table)
