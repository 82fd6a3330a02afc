"""Validation -> rich table (JSON is `Validation.as_dict`). Formats only."""

from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "x".join(map(str, v))
    return f"{v:,}" if isinstance(v, int) else str(v)


def validation_table(validation: Any, failed_only: bool) -> Any:
    """The caption line, then the table of checks (only the failed ones with `failed_only`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    what = f"{validation.name}: analytic figures vs execution on {validation.device}, batch {validation.batch}, " \
           f"{validation.dtype}, input {'x'.join(map(str, validation.input))}"
    table = Table(header_style="bold")
    table.add_column("quantity")
    table.add_column("layer")
    table.add_column("predicted", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("", justify="center")
    for c in validation.checks:
        if failed_only and c.ok:
            continue
        # Text, not markup: consoles print user text with markup off, so a markup tag would show as written
        table.add_row(c.quantity, c.layer if c.layer is not None else "TOTAL", _value(c.predicted),
                      _value(c.measured), Text("✓", style="green") if c.ok else Text("✗", style="red"),
                      style=None if c.ok else "bold")
    # the caption is a line of its own, not the table's title: a title wraps to the table's width, mid-sentence
    return Group(Text(what), table)
