"""`archcalc graph`: the network as a diagram (Mermaid or DOT text; SVG through graphviz's `dot` where installed).
Analytic: no torch."""

from __future__ import annotations

import shutil
import subprocess
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from archcalc.cli.options import (
    BatchOpt,
    InputOpt,
    MaxLayersOpt,
    OutputOpt,
    SetOpt,
    SpecArg,
    emit,
    err_console,
    handle_errors,
    input_override,
    load,
    print_warnings,
)
from archcalc.core.errors import ArchcalcError
from archcalc.core.spec import MAX_LAYERS


class GraphFmt(str, Enum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"


MAX_SVG_NODES = 5_000
"""Nodes at most for --format svg: graphviz's layout grows faster than the graph (a 60,000-layer chain did not finish);
the zoo's largest diagram has 1,020 nodes."""

SUFFIXES = {".mmd": GraphFmt.mermaid, ".mermaid": GraphFmt.mermaid, ".dot": GraphFmt.dot, ".gv": GraphFmt.dot,
            ".svg": GraphFmt.svg}


@handle_errors
def graph(
    spec: SpecArg,
    depth: Annotated[int | None, typer.Option("--depth", "-d", min=1, help="collapse blocks below this depth into "
                                              "one node each (their costs summed)")] = None,
    fmt: Annotated[GraphFmt | None, typer.Option(
        "--format", "-f", help="mermaid or dot (text, no dependencies) or svg (needs graphviz's dot); default: from "
        "the --output suffix (.mmd/.mermaid, .dot/.gv, .svg), else mermaid")] = None,
    output: OutputOpt = None,
    batch: BatchOpt = 1,
    input: InputOpt = None,
    set_: SetOpt = None,
    max_layers: MaxLayersOpt = MAX_LAYERS,
) -> None:
    """The network as a diagram: one node per layer (kind, output shape, cost), edges for every tensor a layer
    reads, so branches, skips and merges show."""
    from archcalc.core.analyze import analyze
    from archcalc.core.diagram import diagram
    from archcalc.render import diagram as render

    chosen = fmt or _format_of(output)
    report = analyze(load(spec, set_, max_layers), batch=batch, input_shape=input_override(input))
    print_warnings(report)
    d = diagram(report, depth)
    if chosen is GraphFmt.mermaid:
        text = render.mermaid(d)
        emit(text, output, [report.path])
        too_large = render.mermaid_too_large(d, text)
        if too_large:
            err_console().print(f"warning: {too_large}", markup=False, soft_wrap=True)
    elif chosen is GraphFmt.dot:
        emit(render.dot(d), output, [report.path])
    else:
        if len(d.nodes) > MAX_SVG_NODES:
            raise ArchcalcError(f"--format svg: the diagram has {len(d.nodes):,} nodes, more than the "
                                f"{MAX_SVG_NODES:,} that graphviz lays out in reasonable time; collapse blocks with "
                                "--depth N, or write --format dot (or mermaid) and render it yourself")
        emit(svg(render.dot(d)), output, [report.path])


def _format_of(output: Path | None) -> GraphFmt:
    if output is None:
        return GraphFmt.mermaid
    suffix = output.suffix.lower()
    if suffix not in SUFFIXES:
        raise ArchcalcError(f"--output {output}: cannot tell the format from '{suffix or output.name}'; give "
                            f"--format mermaid, dot or svg (or name the file .mmd, .dot or .svg)")
    return SUFFIXES[suffix]


def svg(dot_text: str) -> str:
    """DOT through graphviz's `dot -Tsvg`, where it is installed."""
    program = shutil.which("dot")
    if program is None:
        raise ArchcalcError("rendering SVG needs graphviz's dot program, which is not on PATH (install graphviz: "
                            "apt install graphviz, brew install graphviz, conda install graphviz); use --format dot "
                            "or mermaid for text that needs nothing")
    try:
        proc = subprocess.run([program, "-Tsvg"], input=dot_text, capture_output=True, text=True, encoding="utf-8",
                              check=False)
    except OSError as exc:
        raise ArchcalcError(f"cannot run {program}: {exc}") from None
    if proc.returncode != 0:
        message = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise ArchcalcError(f"{program} -Tsvg failed: {message}")
    return proc.stdout
