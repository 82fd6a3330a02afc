"""The commands that build and run models: `validate` and `export`. torch is imported inside them only."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from archcalc.cli import (
    SpecArg,
    TableOrJson,
    _input_override,
    _load,
    _print_warnings,
    app,
    err_console,
    handle_errors,
    out_console,
)
from archcalc.errors import ArchcalcError


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    meta = "meta"


class RunDType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float64 = "float64"



def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "x".join(map(str, v))
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(validation: Any, failed_only: bool) -> Any:
    from rich.table import Table

    what = f"{validation.name}: analytic figures vs execution on {validation.device}, batch {validation.batch}, " \
           f"{validation.dtype}, input {'x'.join(map(str, validation.input))}"
    table = Table(title=what, header_style="bold")
    table.add_column("quantity")
    table.add_column("layer")
    table.add_column("predicted", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("", justify="center")
    for c in validation.checks:
        if failed_only and c.ok:
            continue
        table.add_row(c.quantity, c.layer if c.layer is not None else "TOTAL", _value(c.predicted),
                      _value(c.measured), "[green]✓[/]" if c.ok else "[red]✗[/]", style=None if c.ok else "bold")
    return table


@app.command()
@handle_errors
def validate(
    spec: SpecArg,
    device: Annotated[Device, typer.Option("--device", help="where to run; meta checks shapes, params and MACs "
                                                            "without computing")] = Device.cpu,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="batch size")] = 1,
    dtype: Annotated[RunDType, typer.Option("--dtype", help="element type of the weights and the input")]
    = RunDType.float32,
    input: Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x64x64")] = None,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f", help="output format")] = TableOrJson.table,
    failed: Annotated[bool, typer.Option("--failed", help="show only the checks that disagree")] = False,
) -> None:
    """Build the model, run it on random input and check every analytic figure against what torch measures.

    Exit 0 when everything agrees, 1 when a check fails, 2 for bad input.
    """
    from archcalc.validate import validate as run_validation

    spec_obj = _load(spec)
    validation = run_validation(spec_obj, device.value, batch, dtype.value, _input_override(input))
    if fmt is TableOrJson.json:
        sys.stdout.write(json.dumps(validation.as_dict(), indent=2) + "\n")
    else:
        console = out_console()
        if validation.failures or not failed:
            console.print(_table(validation, failed))
        for note in validation.notes:
            console.print(f"note: {note}", markup=False)
        bad = len(validation.failures)
        console.print(f"{len(validation.checks) - bad} of {len(validation.checks)} checks agree"
                      + ("" if validation.ok else f"; {bad} disagree"), markup=False)
    if not validation.ok:
        raise typer.Exit(1)


@app.command()
@handle_errors
def export(
    spec: SpecArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the source here (default: stdout)")]
    = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x64x64")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a standalone PyTorch source file (needs only torch) that defines the network and build_model()."""
    from archcalc.analyze import analyze
    from archcalc.export import export_source

    report = analyze(_load(spec), input_shape=_input_override(input))
    _print_warnings(report)
    source = export_source(report)
    if output is None:
        sys.stdout.write(source)
        return
    if output.exists() and not force:
        raise ArchcalcError(f"{output} exists; use --force to overwrite it")
    try:
        output.write_text(source, encoding="utf-8")
    except OSError as exc:
        raise ArchcalcError(f"cannot write {output}: {exc}") from None
    err_console().print(f"wrote {output}", markup=False)
