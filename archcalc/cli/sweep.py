"""`archcalc sweep` (a design space, one row per point) and `archcalc check` (budgets for CI). No torch."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from archcalc.cli import options
from archcalc.cli.options import (
    F32,
    AmpOpt,
    BatchOpt,
    Convention,
    ConvOpt,
    DTypeOpt,
    Fmt,
    FmtOpt,
    InputGradOpt,
    InputOpt,
    Optimizer,
    OptimizerOpt,
    OutputOpt,
    PlotOpt,
    SavedFor,
    SavedForOpt,
    SetOpt,
    SpecArg,
    TableOrJson,
    count_option,
    emit,
    err_console,
    handle_errors,
    load,
    out_console,
    plot_drawer,
    print_warnings,
    rich_text,
    size_option,
    write_text,
)


@handle_errors
def sweep(
    spec: SpecArg,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUES", help="values of a spec "
                    "argument to sweep (repeatable): width_mult=0.5,0.75,1 or depth=2..6 (a..b[..step])")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="inputs to sweep: 3x{128,160,224} (one size "
                     "for every spatial axis), 3x224x224,3x320x320")] = None,
    batch: Annotated[str, typer.Option("--batch", "-b", help="batch sizes: 1,8,64 or 1..32")] = "1",
    dtype: DTypeOpt = F32,
    convention: ConvOpt = Convention.torch,
    optimizer: OptimizerOpt = Optimizer.sgd,
    amp: AmpOpt = None,
    device: SavedForOpt = SavedFor.cuda,
    input_requires_grad: InputGradOpt = False,
    where: Annotated[str | None, typer.Option("--where", help="keep rows where this holds: 'params < 5e6 and "
                     "macs < 600e6' (columns, --set names, batch, resolution)")] = None,
    pareto: Annotated[str | None, typer.Option("--pareto", metavar="COLUMNS", help="mark the rows no other row "
                      "beats in all of these (minimized; -name maximizes): macs,params or macs,-params")] = None,
    pareto_only: Annotated[bool, typer.Option("--pareto-only", help="with --pareto: keep only the optimal "
                           "rows")] = False,
    sort: Annotated[str | None, typer.Option("--sort", "-s", help="sort by a column: params, macs, flops, "
                    "activation_bytes, peak_inference_bytes, training_bytes, training_flops, batch")] = None,
    descending: Annotated[bool, typer.Option("--desc", help="sort largest first")] = False,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="worker processes, at most 64 (default: "
                    "two for large sweeps when a core is idle)")] = None,
    max_points: Annotated[int, typer.Option("--max-points", min=1, help="refuse a design space of more points "
                          "than this, counted before it is expanded")] = 100_000,
    fmt: FmtOpt = Fmt.table,
    plot: PlotOpt = None,
    output: OutputOpt = None,
) -> None:
    """One row per point of a design space: the cartesian product of --set value lists, --input and --batch.

    Each row gives params, MACs, FLOPs, activations, inference peak, training memory and training FLOPs; a point
    that fails (an input too small for the network) is a row with its error.
    """
    from archcalc.core import sweep as sw
    from archcalc.core.errors import ArchcalcError
    from archcalc.render import sweep as render

    settings = options.settings(dtype=dtype, convention=convention, device=device,
                                input_requires_grad=input_requires_grad, optimizer=optimizer, amp=amp)
    plotter = plot_drawer(plot)
    if jobs is not None and jobs > sw.MAX_JOBS:
        raise ArchcalcError(f"--jobs {jobs:,}: at most {sw.MAX_JOBS} worker processes")
    plan = sw.plan(spec, set_, input, batch, settings, sw.Query.of(where, pareto, pareto_only, sort, descending),
                   max_points)
    runner, points, objectives = plan.sweep, plan.points, list(plan.query.objectives)
    with _progress(len(points)) as update:
        rows = plan.run(update, jobs)
    failed = sum(1 for r in rows if r.values is None)
    note = render.caption(convention.value, optimizer.value, dtype.value, settings.amp)
    if fmt is Fmt.table:
        title = f"sweep of {runner.display}: {len(rows)} of {len(points)} points" + (f", {failed} failed"
                                                                                    if failed else "")
        table = render.sweep_table(rows, convention.value, title, note)
        if output is None:
            out_console().print(table)
        else:
            emit(rich_text(table), output, [spec])
    elif fmt is Fmt.json:
        meta = {"spec": runner.display, "dtype": dtype.value, "convention": convention.value,
                "optimizer": optimizer.value, "amp": settings.amp, "points": len(points), "where": where,
                "pareto": objectives or None}
        emit(render.sweep_json(rows, meta), output, [spec])
    elif fmt is Fmt.csv:
        emit(render.sweep_csv(rows), output, [spec])
    else:
        emit(render.sweep_md(rows, convention.value, note), output, [spec])
    if plotter is not None:
        from archcalc.plot.data import sweep_plot

        if not any(r.values is not None for r in rows):
            raise ArchcalcError("--plot: no point of the sweep was analyzed; nothing to draw")
        plotter.draw("sweep", sweep_plot(rows, runner.name, settings, objectives))


class _progress:
    """A transient rich progress bar on stderr for sweeps of more than a moment; a no-op off a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __enter__(self) -> Any:
        console = err_console()
        if not console.is_terminal or self.total < 200:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                            transient=True)
        task = self.bar.add_task("sweep", total=self.total)
        self.bar.__enter__()
        return lambda done: self.bar.update(task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "bar"):
            self.bar.__exit__(*exc)


@handle_errors
def check(
    spec: SpecArg,
    max_params: Annotated[str | None, typer.Option("--max-params", help="e.g. 5M")] = None,
    max_macs: Annotated[str | None, typer.Option("--max-macs", help="e.g. 600M (batch included)")] = None,
    max_flops: Annotated[str | None, typer.Option("--max-flops", help="e.g. 1.2G, under --convention")] = None,
    max_peak_memory: Annotated[str | None, typer.Option("--max-peak-memory", help="inference peak, e.g. "
                               "512MiB")] = None,
    max_train_memory: Annotated[str | None, typer.Option("--max-train-memory", help="training memory, e.g. "
                                "8GiB")] = None,
    max_train_flops: Annotated[str | None, typer.Option("--max-train-flops", help="FLOPs of one training step, "
                               "e.g. 2T")] = None,
    batch: BatchOpt = 1,
    dtype: DTypeOpt = F32,
    input: InputOpt = None,
    convention: ConvOpt = Convention.torch,
    optimizer: OptimizerOpt = Optimizer.sgd,
    amp: AmpOpt = None,
    device: SavedForOpt = SavedFor.cuda,
    input_requires_grad: InputGradOpt = False,
    set_: SetOpt = None,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f", help="output format")] = TableOrJson.table,
) -> None:
    """Check a spec against budgets (human units: 5M, 600M, 512MiB, 8GiB): exit 1 naming every budget exceeded
    and by how much, 0 when all hold. One line for a project's CI."""
    from archcalc.core.budget import check_spec
    from archcalc.render import sweep as render

    settings = options.settings(batch, dtype, input, convention, device, input_requires_grad, optimizer=optimizer,
                                amp=amp)
    limits: dict[str, int] = {}
    for name, text, parse in (("params", max_params, count_option), ("macs", max_macs, count_option),
                              ("flops", max_flops, count_option), ("peak_memory", max_peak_memory, size_option),
                              ("train_memory", max_train_memory, size_option),
                              ("train_flops", max_train_flops, count_option)):
        if text is not None:
            limits[name] = parse(f"--max-{name.replace('_', '-')}", text)
    report, verdicts = check_spec(load(spec, set_), limits, settings)
    print_warnings(report)
    if fmt is TableOrJson.json:
        write_text(render.verdicts_json(report.name, verdicts))
    else:
        console = out_console()
        for line in render.verdict_lines(verdicts):
            console.print(line, markup=False)
    if any(v.exceeded for v in verdicts):
        raise typer.Exit(1)

