"""The command line (typer). `archcalc.cli.app` holds the app; this package's `main` is the console script."""

from __future__ import annotations


def main() -> None:
    from archcalc.cli.app import main as run

    run()
