"""The archcalc command line: the typer app, with thin commands that parse options, call the library, render
and print.

Exit codes: 0 ok, 1 a check failed (validate), 2 bad input. torch is imported only by the commands that run models,
inside their functions. The command modules (analytic, sweep, model, importer, convert, profile) import only downwards:
cli.options, the library and the renderers.

Commands are built lazily: typer turns a function into a click command by evaluating every annotation of every
parameter, which for all twelve commands costs more than `calc` itself. The group below imports a command's module
and builds the command only when click asks for it by name, so `archcalc calc ...` builds `calc` alone, while
`--help`, completion and an unknown command's did-you-mean still see every command.
"""

from __future__ import annotations

import gc
import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, cast

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo

from archcalc import __version__

# name -> (module in archcalc.cli, function), in the order `archcalc --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "calc": ("analytic", "calc"),
    "compare": ("analytic", "compare"),
    "kinds": ("analytic", "kinds"),
    "schema": ("analytic", "schema"),
    "zoo": ("analytic", "zoo"),
    "graph": ("graph", "graph"),
    "sweep": ("sweep", "sweep"),
    "check": ("sweep", "check"),
    "validate": ("model", "validate"),
    "export": ("model", "export"),
    "profile": ("profile", "profile"),
    "import": ("importer", "import_model"),  # `import` is a Python keyword
    "convert": ("convert", "convert"),
}


# The click that typer runs on (typer 0.28 vendors its own copy as typer._click): its usage-error class.
_UsageError: type[Exception] = importlib.import_module(
    TyperCommand.__mro__[1].__module__.rpartition(".")[0] + ".exceptions").UsageError


def _usage_error(exc: Any) -> None:
    """A mistake on the command line (an unknown option, a bad value, a missing argument) in the form every other
    error without a place in a file takes (docs/commands.md): `error: message` on stderr, one line — not click's
    usage block ending in `Error: ...`."""
    message = exc.format_message()
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]  # click's "No such option" as archcalc's messages read
    hint = f"; see '{exc.ctx.command_path} -h'" if exc.ctx is not None else ""
    sys.stderr.write(f"error: {message.rstrip('.')}{hint}\n")


class _Command(TyperCommand):
    """Usage lines name a required argument plainly (`archcalc calc [OPTIONS] SPEC`), not as typer's `{spec}`;
    a usage mistake reads `error: ...` (_usage_error)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:
            _usage_error(exc)
            raise typer.Exit(2) from None


def build_command(name: str) -> TyperCommand:
    """The click command for one entry of COMMANDS, as `app.command(name=name)` would have registered it."""
    module, function = COMMANDS[name]
    callback = getattr(importlib.import_module(f"archcalc.cli.{module}"), function)
    command = get_command_from_info(CommandInfo(name=name, cls=_Command, callback=callback),
                                     pretty_exceptions_short=app.pretty_exceptions_short,
                                     rich_markup_mode=app.rich_markup_mode)
    return cast(TyperCommand, command)


class _LazyCommands(Mapping[str, TyperCommand]):
    """The group's commands: every name known at once (listing, did-you-mean), each command built on first use."""

    def __init__(self) -> None:
        self._built: dict[str, TyperCommand] = {}

    def __getitem__(self, name: str) -> TyperCommand:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = build_command(name)
        return self._built[name]

    def __contains__(self, name: object) -> bool:  # without building the command
        return name in COMMANDS

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class _LazyGroup(TyperGroup):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _LazyCommands()  # type: ignore[assignment]  # read only: add_command is not used


app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None, cls=_LazyGroup,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="archcalc: CNN architecture calculator and profiler. Give a spec file or a bundled spec "
                       "name (see `archcalc zoo`).")


def version_callback(value: bool) -> None:
    if value:
        print(f"archcalc {__version__}")
        raise typer.Exit()


_PAUSED_GC = "start-up with the cyclic garbage collector paused"  # the context's obj in such a run (main)


@app.callback()
def _main(ctx: typer.Context,
          version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="show the version")] = False) -> None:
    # click calls this once the command is built (its modules imported), before it runs: start-up is over.
    if ctx.obj is _PAUSED_GC:
        gc.freeze()
        gc.enable()


def main(paused_gc: bool = False) -> None:
    """The console script's run; `paused_gc`: the caller paused the cyclic garbage collector for start-up, and it
    resumes, with what start-up made frozen (gc.freeze), when the command runs (archcalc.cli.main)."""
    app(prog_name="archcalc", obj=_PAUSED_GC if paused_gc else None)
