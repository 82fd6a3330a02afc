"""The archcalc command line: thin commands that parse options, call the library, render and print.

Exit codes: 0 ok, 1 a check failed (validate), 2 bad input. torch is imported only by the commands that run models.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from archcalc import __version__
from archcalc.errors import ArchcalcError, SpecError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="archcalc: CNN architecture calculator and profiler. Give a spec file or a bundled spec "
                       "name (see `archcalc zoo`).")

F = TypeVar("F", bound=Callable[..., Any])


class Fmt(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class TableOrJson(str, Enum):
    """--format for the commands that run models (validate, profile)."""

    table = "table"
    json = "json"


class Convention(str, Enum):
    macs = "macs"
    torch = "torch"
    fvcore = "fvcore"
    full = "full"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"


def out_console() -> Console:
    from rich.console import Console  # not on the JSON/CSV path: rich's console costs start-up time

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=200, highlight=False, soft_wrap=False)
    return console


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=200)


def handle_errors(fn: F) -> F:
    """The one place user errors become a message on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ArchcalcError as exc:
            err_console().print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, ...]:
    from archcalc.spec import parse_input

    return parse_input(text, None)  # type: ignore[arg-type]


def _load(spec: str) -> Any:
    from archcalc.resolve import resolve_spec
    from archcalc.spec import _display_path, load_spec

    path = resolve_spec(spec)
    return load_spec(path, _display_path(path))


def _input_override(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return parse_shape(value)
    except SpecError as exc:
        raise ArchcalcError(f"--input: {exc.message}") from None


def _print_warnings(report: Any) -> None:
    if not report.warnings:
        return
    console = err_console()
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False)


SpecArg = Annotated[str, typer.Argument(help="spec file, or the name of a bundled spec (archcalc zoo)")]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", min=1, help="batch size")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="element type for memory figures")]
ConvOpt = Annotated[Convention, typer.Option("--convention", "-c", help="what a FLOP is (see README)")]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f", help="output format")]
InputOpt = Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x448x448")]


@app.command()
@handle_errors
def calc(
    spec: SpecArg,
    batch: BatchOpt = 1,
    dtype: DTypeOpt = DType.float32,
    input: InputOpt = None,
    convention: ConvOpt = Convention.torch,
    depth: Annotated[int | None, typer.Option("--depth", "-d", min=1,
                                              help="collapse blocks below this depth into one row")] = None,
    fmt: FmtOpt = Fmt.table,
    strict: Annotated[bool, typer.Option("--strict", help="treat warnings (non-integer sizes) as errors")] = False,
) -> None:
    """Per-layer shapes, parameters, MACs/FLOPs, memory and receptive field, with totals."""
    from archcalc import render
    from archcalc.analyze import analyze

    report = analyze(_load(spec), batch, dtype.value, convention.value, _input_override(input), strict)
    _print_warnings(report)
    if fmt is Fmt.table:
        console = out_console()
        console.print(render.calc_table(report, depth))
        for line in render.summary_lines(report):
            console.print(line, markup=False)
    else:
        text = {Fmt.json: render.calc_json, Fmt.csv: render.calc_csv, Fmt.md: render.calc_md}[fmt](report, depth)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


class SortBy(str, Enum):
    name = "name"
    params = "params"
    macs = "macs"
    flops = "flops"
    activation_bytes = "activation_bytes"
    peak_inference_bytes = "peak_inference_bytes"
    weight_layers = "weight_layers"
    receptive_field = "receptive_field"


@app.command()
@handle_errors
def compare(
    specs: Annotated[list[str], typer.Argument(help="spec files or bundled spec names")],
    batch: BatchOpt = 1,
    dtype: DTypeOpt = DType.float32,
    input: InputOpt = None,
    convention: ConvOpt = Convention.torch,
    sort: Annotated[SortBy | None, typer.Option("--sort", "-s", help="sort by this column")] = None,
    descending: Annotated[bool, typer.Option("--desc", help="sort largest first")] = False,
    fmt: FmtOpt = Fmt.table,
) -> None:
    """One row per architecture: params, MACs, FLOPs, memory, depth, receptive field."""
    from archcalc import render
    from archcalc.analyze import analyze

    override = _input_override(input)
    reports = [analyze(_load(s), batch, dtype.value, convention.value, override) for s in specs]
    for report in reports:
        _print_warnings(report)
    if sort is not None:
        reports.sort(key=render.sort_key(sort.value), reverse=descending)
    if fmt is Fmt.table:
        out_console().print(render.compare_table(reports))
    else:
        text = {Fmt.json: render.compare_json, Fmt.csv: render.compare_csv, Fmt.md: render.compare_md}[fmt](reports)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


class KindsFmt(str, Enum):
    table = "table"
    json = "json"
    md = "md"


@app.command()
@handle_errors
def kinds(fmt: Annotated[KindsFmt, typer.Option("--format", "-f")] = KindsFmt.table) -> None:
    """Every layer kind with its arguments and defaults (from the registry)."""
    from archcalc import render

    if fmt is KindsFmt.table:
        out_console().print(render.kinds_table())
    else:
        sys.stdout.write(render.kinds_json() + "\n" if fmt is KindsFmt.json else render.kinds_md())


@app.command()
@handle_errors
def zoo(fmt: Annotated[KindsFmt, typer.Option("--format", "-f")] = KindsFmt.table) -> None:
    """The bundled specs with their descriptions and sources."""
    from archcalc import zoo as zoo_mod

    entries = zoo_mod.entries()
    if fmt is KindsFmt.json:
        import dataclasses
        import json

        sys.stdout.write(json.dumps([dataclasses.asdict(e) for e in entries], indent=2) + "\n")
        return
    if fmt is KindsFmt.md:
        sys.stdout.write("| spec | description | source |\n|---|---|---|\n")
        for e in entries:
            sys.stdout.write(f"| `{e.name}` | {e.description} | {e.source} |\n")
        return
    from rich.table import Table

    table = Table(title="bundled specs", header_style="bold")
    for col in ("spec", "description", "source"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.name, e.description, e.source)
    out_console().print(table)


def version_callback(value: bool) -> None:
    if value:
        print(f"archcalc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="show the version")] = False) -> None:
    pass


def main() -> None:
    app(prog_name="archcalc")


# Commands that run models live in their own modules (torch is imported inside their functions); importing them
# registers the commands.
from archcalc import cli_model, cli_profile  # noqa: E402,F401
