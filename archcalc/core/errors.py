"""User-facing errors. A mistake in a spec is a SpecError carrying where it happened; a bug is a traceback."""

import gc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple


class Loc(NamedTuple):
    """A position in a spec file (1-based line and column, as editors show them). A NamedTuple: one is made for
    every value of a spec, so construction must be cheap."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class ArchcalcError(Exception):
    """Base for errors caused by the user's input; the CLI turns these into a message and exit code 2."""


class SpecError(ArchcalcError):
    def __init__(self, loc: Loc | None, message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{loc}: {message}" if loc else message)


def did_you_mean(word: str, choices: Iterable[str], listed: Iterable[str] | None = None) -> str:
    """' ; did you mean 'x'?' or a list of the valid choices (of `listed`, where given) when nothing is close."""
    choices = sorted({c for c in choices if isinstance(c, str)})  # a YAML key may be a bool (on:) or a number
    if not choices:
        return ""
    import difflib  # only on an error: not on every run's import path

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    shown = choices if listed is None else sorted({c for c in listed if isinstance(c, str)})
    if shown and len(shown) <= 12:
        return "; expected one of: " + ", ".join(shown)
    return ""


def name_hint(word: str, names: Mapping[str, object]) -> str:
    """The hint for an unknown variable: a close name, else the variables defined here. A value with a true
    `unlisted` attribute (the input's shape, core.spec.InputDim: defined everywhere) is never listed, and suggested
    only for a word that starts as its name does."""
    listed = [n for n, v in names.items() if not getattr(v, "unlisted", False)]
    near = [n for n in names if n not in listed and n[:3] == word[:3]]  # `in_widht`, not `widht`, means in_width
    hint = did_you_mean(word, listed + near, listed)
    return hint if hint or listed else " (no variables are defined here)"


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a spec is loaded or analyzed.

    Both build many small objects and no reference cycles; the collector's repeated scans of the growing heap made
    a 10,000-layer spec take 1.6x as long as it needs (growth worse than linear).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
