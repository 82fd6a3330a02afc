"""The command line (typer). `archcalc.cli.app` holds the app; this package's `main` is the console script."""

from __future__ import annotations


def main() -> None:
    # Start-up (typer's modules and the command's, the command built) makes thousands of objects that live until
    # exit, and no garbage: the cyclic garbage collector is paused for it, from here, and resumed once the command
    # runs (archcalc.cli.app), with those objects frozen so that its collections do not scan them again.
    import gc

    gc.disable()
    from archcalc.cli.app import main as run

    run(paused_gc=True)
