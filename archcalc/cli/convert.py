"""The `convert` command: an Ultralytics model YAML (yolov8.yaml, yolo11.yaml, ...) to an archcalc spec, on the
analytic path (no torch, no ultralytics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archcalc.cli.options import err_console, handle_errors, input_override, refuse_overwriting, write_text
from archcalc.core.errors import ArchcalcError


@handle_errors
def convert(
    model: Annotated[Path, typer.Argument(metavar="MODEL_YAML", help="an Ultralytics model YAML (yolov8.yaml); "
                                                                     "yolov8s.yaml is yolov8.yaml at scale s, as "
                                                                     "Ultralytics reads it")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the spec here (default: stdout)")]
    = None,
    scale: Annotated[str | None, typer.Option("--scale", help="the scale whose multiples are the spec's defaults "
                                                              "(default: the file name's letter, else the first)")]
    = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="one sample's input, channels first "
                                                                   "(default: 3x640x640; 3x224x224 for a "
                                                                   "classifier)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="the spec's name (default: the file's, without the "
                                                            "scale letter)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write an Ultralytics model YAML as an archcalc spec: one block per module, the width and depth scales as
    args (--set width=0.5), the figures Ultralytics' model has."""
    from archcalc.core.ultralytics import convert_file

    if output is not None and output.exists() and not force:
        raise ArchcalcError(f"{output} exists; use --force to overwrite it")
    path, guessed = _resolve(model)
    converted = convert_file(path, display=str(model) if path == model else str(path), name=name,
                             scale=scale or guessed, input_shape=input_override(input))
    for warning in converted.warnings:
        err_console().print(f"warning: {warning}", markup=False)
    if output is None:
        write_text(converted.text)
        return
    refuse_overwriting(output, [str(path)], "the model YAML")
    try:
        output.write_text(converted.text, encoding="utf-8")
    except OSError as exc:
        raise ArchcalcError(f"cannot write {output}: {exc}") from None
    err_console().print(f"wrote {output}", markup=False)


def _resolve(model: Path) -> tuple[Path, str | None]:
    """Ultralytics' yaml_model_load: yolov8s.yaml, where there is none, is yolov8.yaml at scale s."""
    import re

    if model.exists():
        return model, None
    match = re.search(r"(\d+)([nslmx])(.+)?$", model.stem)
    if match:
        unified = model.with_name(model.stem[:match.start()] + match.group(1) + (match.group(3) or "") + model.suffix)
        if unified.exists():
            return unified, match.group(2)
    raise ArchcalcError(f"{model}: no such file")
