"""The `import` command: a PyTorch model (package.module:callable, or a .py file with build_model()) to a spec.
torch is imported inside the command only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archcalc.cli.options import (
    err_console,
    handle_errors,
    input_override,
    output_exists,
    refuse_overwriting,
    write_text,
)
from archcalc.core.errors import ArchcalcError


@handle_errors
def import_model(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="package.module:callable (torchvision.models:resnet50) "
                                                                "or a Python file with build_model() (what "
                                                                "`archcalc export` writes)")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="one sample's input, channels first, e.g. "
                                                                   "3x224x224 (default: an exported file's "
                                                                   "INPUT_SHAPE)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the spec here (default: stdout)")]
    = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="keyword arguments for the callable, as JSON: "
                                                                "'{\"num_classes\": 10}'")] = None,
    name: Annotated[str | None, typer.Option("--name", help="the spec's name (default: the callable's or file's)")]
    = None,
    allow_unknown: Annotated[bool, typer.Option("--allow-unknown", help="write an op archcalc cannot map as a "
                                                                        "marked identity placeholder (a warning "
                                                                        "says what the totals then leave out) "
                                                                        "instead of failing")] = False,
    flat: Annotated[bool, typer.Option("--flat", help="write every layer in place, without blocks or repeat: "
                                                      "(the same figures, a longer spec)")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Trace a PyTorch model with torch.fx and write its archcalc spec (every module and op mapped to a kind)."""
    from archcalc.torch.importer import exported_input, from_module, load_model, parse_kwargs

    if output is not None and output_exists(output) and not force:
        raise ArchcalcError(f"{output} exists; use --force to overwrite it")
    module, default_name = load_model(model, parse_kwargs(kwargs))
    shape = input_override(input)
    if shape is None:
        shape = exported_input(module, model)
    imported = from_module(module, shape, name=name or default_name, allow_unknown=allow_unknown,
                           source=f"archcalc import {model}", blocks=not flat)
    console = err_console()
    for warning in imported.warnings:
        console.print(f"warning: {warning}", markup=False)
    for note in imported.unknown:
        console.print(f"warning: unknown op, written as an identity placeholder: {note}", markup=False)
    if output is None:
        write_text(imported.text)
        return
    refuse_overwriting(output, [model.rpartition(":")[0] or model, model, _source_file(module)],
                       "the model's source")
    try:
        output.write_text(imported.text, encoding="utf-8")
    except OSError as exc:
        raise ArchcalcError(f"cannot write {output}: {exc}") from None
    console.print(f"wrote {output}", markup=False)


def _source_file(module: object) -> str | None:
    """The file that defines the model's class (import -o must not replace it)."""
    import inspect

    try:
        return inspect.getsourcefile(type(module))
    except TypeError:  # a class without a source file (built in)
        return None
