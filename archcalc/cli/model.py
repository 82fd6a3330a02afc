"""The commands that build and run models: `validate` and `export`. torch is imported inside them only."""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from archcalc.torch.validate import Validation


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    meta = "meta"





def is_model_ref(ref: str) -> bool:
    """A PyTorch model as `archcalc import` names it (package.module:callable, file.py, file.py:callable) rather than
    a spec: a file of that name wins."""
    if ref.endswith((".yaml", ".yml")) or not (_MODEL_REF.fullmatch(ref) or ref.endswith(".py") or ".py:" in ref):
        return False
    try:
        return ref.endswith(".py") or ".py:" in ref or not Path(ref).is_file()
    except (OSError, ValueError):  # a name the system refuses: the spec loader words the error
        return False


_MODEL_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _validate_model(ref: str, device: Device, batch: int, dtype: object, input: str | None, kwargs: str | None,
                    sets: list[str] | None, input_requires_grad: bool) -> Validation:
    from archcalc.torch.importer import exported_input, load_model, parse_kwargs
    from archcalc.torch.validate_model import validate_model

    if device is not Device.cpu or dtype != RUN_F32 or sets or input_requires_grad:
        raise ArchcalcError(f"{ref}: a PyTorch model is validated on the CPU in float32, without --set or "
                            "--input-requires-grad (those apply to a spec: `archcalc import` writes one)")
    module, name = load_model(ref, parse_kwargs(kwargs), meta=False)
    shape = input_override(input) or exported_input(module, ref)
    return validate_model(module, shape, name, batch)


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
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="with a MODEL: keyword arguments for its callable, "
                                                                "as JSON")] = None,
) -> None:
    """Build the model, run it on random input and check every analytic figure against what torch measures.

    SPEC may also be a PyTorch model as `archcalc import` takes it (torchvision.models:vit_b_16, a .py file with
    build_model()): the model itself runs on the CPU, and its whole-model figures are checked against its imported
    spec's. Exit 0 when everything agrees, 1 when a check fails, 2 for bad input.
    """
    from archcalc.render.validate import validation_table

    if is_model_ref(spec):
        validation = _validate_model(spec, device, batch, dtype, input, kwargs, set_, input_requires_grad)
    else:
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
