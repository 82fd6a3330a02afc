"""The archcalc command line: the typer app, with thin commands that parse options, call the library, render
and print.

Exit codes: 0 ok, 1 a check failed (validate), 2 bad input. torch is imported only by the commands that run models,
inside their functions. The command modules (analytic, sweep, model, importer, profile) import only downwards:
cli.options, the library and the renderers.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from archcalc import __version__
from archcalc.cli import analytic, graph, importer, model, profile, sweep

app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="archcalc: CNN architecture calculator and profiler. Give a spec file or a bundled spec "
                       "name (see `archcalc zoo`).")



class _Command(TyperCommand):
    """Usage lines name a required argument plainly (`archcalc calc [OPTIONS] SPEC`), not as typer's `{spec}`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


for command in (analytic.calc, analytic.compare, analytic.kinds, analytic.schema, analytic.zoo, graph.graph,
                sweep.sweep, sweep.check, model.validate, model.export, profile.profile):
    app.command(cls=_Command)(command)
app.command(name="import", cls=_Command)(importer.import_model)  # `import` is a Python keyword


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
