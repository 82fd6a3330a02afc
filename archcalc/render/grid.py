"""Fixed-width tables that fit: the calc and compare tables, written without rich's layout engine.

rich measures and lays out every cell of a table (about 0.5 ms a row); these tables hold short, pre-formatted strings
whose widths are known, so they are joined directly (a few microseconds a row) in rich's heavy-head box style.

Fitting a width (the terminal's, or COLUMNS): numbers are never cut. Headers are abbreviated first, then the name
column wraps (at dots where it can), then the least important columns are left out one by one, and the table says
which. Without a width (output piped to a file) the table takes its natural width.
"""

import textwrap
from collections.abc import Sequence
from typing import NamedTuple

NAME_MIN = 24  # the name column wraps down to this before any column is left out
NAME_FLOOR = 10  # and down to this when every other column that may go has gone


class Column(NamedTuple):
    header: str
    right: bool = False  # right-justified (numbers)
    footer: str = ""
    short: str = ""  # the header abbreviated, when space is short
    drop: int = 0  # 0: always shown; otherwise left out to fit, highest first
    wraps: bool = False  # the name column: may wrap onto several lines


class Grid(NamedTuple):
    lines: list[str]
    left_out: list[str]  # headers of the columns left out to fit


def _wrap(text: str, width: int) -> list[str]:
    """Pieces of at most `width` characters, broken after a '.', '_' or '/' where one is near the end."""
    pieces = []
    while len(text) > width:
        cut = max(text.rfind(ch, 0, width) for ch in "._/") + 1
        if cut < width // 2:
            cut = width
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _width(text: str) -> int:
    """A cell's width: its longest line (a collapsed block's outputs are one a line)."""
    return len(text) if "\n" not in text else max(map(len, text.split("\n")))


def _indent_of(text: str) -> str:
    return text[:len(text) - len(text.lstrip(" "))]


def layout(title: str, columns: Sequence[Column], cells: Sequence[Sequence[str]], caption: str = "",
           width: int | None = None, keep: Sequence[str] = (), bold: bool = False) -> Grid:
    """The table as lines of text, fitted to `width` when one is given. Columns whose header is in `keep` stay."""
    natural = [max([len(c.header), len(c.footer)] + [_width(row[i]) for row in cells]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))
    headers = [c.header for c in columns]
    widths = list(natural)

    def total(idx: Sequence[int]) -> int:
        return sum(widths[i] for i in idx) + 3 * len(idx) + 1

    if width is not None and total(shown) > width:
        headers = [c.short or c.header for c in columns]
        widths = [max([len(headers[i]), len(c.footer)] + [_width(row[i]) for row in cells])
                  for i, c in enumerate(columns)]
        wrap = [i for i, c in enumerate(columns) if c.wraps]
        unwrapped = {i: widths[i] for i in wrap}

        def squeeze(floor: int) -> None:
            """Wrap the name column just enough to fit, but not below `floor` characters."""
            for i in wrap:
                widths[i] = unwrapped[i]
            excess = total(shown) - width  # type: ignore[operator]
            for i in wrap:
                if excess > 0:
                    lowest = max(min(unwrapped[i], floor), len(headers[i]), len(columns[i].footer))
                    widths[i] = max(lowest, unwrapped[i] - excess)
                    excess -= unwrapped[i] - widths[i]

        squeeze(NAME_MIN)
        order = sorted((i for i, c in enumerate(columns) if c.drop and c.header not in keep),
                       key=lambda i: -columns[i].drop)
        dropped = []
        for i in order:
            if total(shown) <= width:
                break
            shown.remove(i)
            dropped.append(i)
            squeeze(NAME_MIN)
        for i in reversed(dropped[:-1]):  # a more important column may fit again once the names wrap
            shown = sorted(shown + [i])
            squeeze(NAME_MIN)
            if total(shown) > width:
                shown.remove(i)
                squeeze(NAME_MIN)
        if total(shown) > width:
            squeeze(NAME_FLOOR)
    left_out = [columns[i].header for i in range(len(columns)) if i not in shown]
    return Grid(_draw(title, [columns[i] for i in shown], [headers[i] for i in shown], [widths[i] for i in shown],
                      [[row[i] for i in shown] for row in cells], caption, bold), left_out)


def _draw(title: str, columns: Sequence[Column], headers: Sequence[str], widths: Sequence[int],
          cells: Sequence[Sequence[str]], caption: str, bold: bool) -> list[str]:
    full = sum(widths) + 3 * len(widths) + 1
    on, off = ("\x1b[1m", "\x1b[0m") if bold else ("", "")

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cell(text: str, w: int, right: bool) -> str:
        return text.rjust(w) if right else text.ljust(w)

    out = [title.center(full).rstrip()] if title else []
    out.append(line("┏", "━", "┳", "┓"))
    out.append("┃ " + " ┃ ".join(on + cell(h, w, c.right) + off for h, w, c in zip(headers, widths, columns)) + " ┃")
    out.append(line("┡", "━", "╇", "┩"))
    wrapping = [i for i, c in enumerate(columns) if c.wraps]
    rights = [c.right for c in columns]
    for row in cells:
        if not any(len(row[i]) > widths[i] for i in wrapping) and not any("\n" in text for text in row):
            out.append("│ " + " │ ".join(row[i].rjust(w) if rights[i] else row[i].ljust(w)
                                         for i, w in enumerate(widths)) + " │")
            continue
        parts = []
        for i, (text, w) in enumerate(zip(row, widths)):
            if i in wrapping and len(text) > w:
                indent = _indent_of(text)
                parts.append([indent + p for p in _wrap(text[len(indent):], max(1, w - len(indent)))])
            else:
                parts.append(text.split("\n"))
        for k in range(max(len(p) for p in parts)):
            out.append("│ " + " │ ".join(cell(p[k] if k < len(p) else "", w, r)
                                         for p, w, r in zip(parts, widths, rights)) + " │")
    if any(c.footer for c in columns):
        out.append(line("├", "─", "┼", "┤"))
        out.append("│ " + " │ ".join(cell(c.footer, w, c.right) for c, w in zip(columns, widths)) + " │")
    out.append(line("└", "─", "┴", "┘"))
    if caption:
        out += [piece.center(full).rstrip() for piece in textwrap.wrap(caption, max(full, 40))]
    return out
