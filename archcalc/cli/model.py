"""The commands that build and run models: `validate` and `export`. torch is imported inside them only."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from archcalc.cli.options import (
    MAX_BATCH,
    RUN_F32,
    InputGradOpt,
    RunDType,
    SetOpt,
    SpecArg,
    TableOrJson,
    err_console,
    handle_errors,
    input_override,
    load,
    out_console,
    output_exists,
    print_warnings,
    refuse_overwriting,
)
from archcalc.core.errors import ArchcalcError


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    meta = "meta"





@handle_errors
def validate(
    spec: SpecArg,
    device: Annotated[Device, typer.Option("--device", help="where to run; meta checks shapes, params and MACs "
                                                            "without computing")] = Device.cpu,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, max=MAX_BATCH, help="batch size (1 to "
                                       "1,048,576)")] = 1,
    dtype: Annotated[RunDType, typer.Option("--dtype", help="element type of the weights and the input")]
    = RUN_F32,
    input: Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x64x64")] = None,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f", help="output format")] = TableOrJson.table,
    failed: Annotated[bool, typer.Option("--failed", help="show only the checks that disagree")] = False,
    set_: SetOpt = None,
    input_requires_grad: InputGradOpt = False,
    force: Annotated[bool, typer.Option("--force", help="run even if predicted memory exceeds available memory")]
    = False,
) -> None:
    """Build the model, run it on random input and check every analytic figure against what torch measures.

    Exit 0 when everything agrees, 1 when a check fails, 2 for bad input.
    """
    from archcalc.render.validate import validation_table
    from archcalc.torch.validate import validate as run_validation

    spec_obj = load(spec, set_)
    validation = run_validation(spec_obj, device.value, batch, dtype.value, input_override(input),
                                input_requires_grad=input_requires_grad, force=force)
    if fmt is TableOrJson.json:
        sys.stdout.write(json.dumps(validation.as_dict(), indent=2) + "\n")
    else:
        console = out_console()
        if validation.failures or not failed:
            console.print(validation_table(validation, failed))
        for note in validation.notes:
            console.print(f"note: {note}", markup=False)
        bad = len(validation.failures)
        console.print(f"{len(validation.checks) - bad} of {len(validation.checks)} checks agree"
                      + ("" if validation.ok else f"; {bad} disagree"), markup=False)
    if not validation.ok:
        raise typer.Exit(1)


@handle_errors
def export(
    spec: SpecArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the source here (default: stdout)")]
    = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="override the input, e.g. 3x64x64")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
    set_: SetOpt = None,
) -> None:
    """Write a standalone PyTorch source file (needs only torch) that defines the network and build_model()."""
    from archcalc.core.analyze import analyze
    from archcalc.torch.export import export_source

    report = analyze(load(spec, set_), input_shape=input_override(input))
    print_warnings(report)
    source = export_source(report)
    if output is None:
        sys.stdout.write(source)
        return
    refuse_overwriting(output, [report.path])
    if output_exists(output) and not force:
        raise ArchcalcError(f"{output} exists; use --force to overwrite it")
    try:
        output.write_text(source, encoding="utf-8")
    except OSError as exc:
        raise ArchcalcError(f"cannot write {output}: {exc}") from None
    err_console().print(f"wrote {output}", markup=False)
