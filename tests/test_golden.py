"""Golden rendered tables (fixed-width, colourless), plus the invariant that column sums equal printed totals.

Regenerate after an intended change with `pytest tests/test_golden.py --regen-golden` and review the diff.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import report_of

from archcalc.render import report as render

GOLDEN = Path(__file__).parent / "golden"

CASES = [
    ("vgg16", {}, None),
    ("resnet50", {}, 2),
    ("resnet50", {"convention": "fvcore", "batch": 8, "dtype": "float16"}, 1),
]


def _render_table(name: str, kwargs: dict, depth: int | None) -> str:  # type: ignore[type-arg]
    report = report_of(name, **kwargs)
    return "\n".join(render.calc_table(report, depth, 200).lines + render.summary_lines(report)) + "\n"


def _id(name: str, kwargs: dict, depth: int | None) -> str:  # type: ignore[type-arg]
    extra = "-".join(f"{k}{v}" for k, v in kwargs.items())
    return f"{name}{'-' + extra if extra else ''}{f'-depth{depth}' if depth else ''}"


def _check(path: Path, text: str, regen: bool) -> None:
    """Compare with the golden file. Only `--regen-golden` writes one; a missing golden is a failure, never
    written by the test itself (a test that writes its own expected value passes whatever the code prints)."""
    if regen:
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; write it with --regen-golden, review it and commit it")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} changed; rerun with --regen-golden if intended"


@pytest.mark.parametrize(("name", "kwargs", "depth"), CASES, ids=[_id(*c) for c in CASES])
def test_table_golden(name, kwargs, depth, regen_golden) -> None:  # type: ignore[no-untyped-def]
    text = _render_table(name, kwargs, depth)
    _check(GOLDEN / f"{_id(name, kwargs, depth)}.txt", text, regen_golden)
    # Invariant: the params column sums to the printed total (params are printed exactly, with separators).
    rows = [line for line in text.splitlines() if line.startswith("│")]
    params_col = 5
    cells = [[c.strip() for c in line.split("│")] for line in rows]
    body, footer = cells[:-1], cells[-1]
    total = int(footer[params_col].replace(",", ""))
    assert sum(int(c[params_col].replace(",", "")) for c in body) == total


@pytest.mark.parametrize(("name", "kwargs", "depth"), CASES, ids=[_id(*c) for c in CASES])
def test_markdown_golden(name, kwargs, depth, regen_golden) -> None:  # type: ignore[no-untyped-def]
    text = render.calc_md(report_of(name, **kwargs), depth)
    _check(GOLDEN / f"{_id(name, kwargs, depth)}.md", text, regen_golden)
    # Invariant: params, MACs and FLOPs columns (exact integers in markdown) sum to the total row.
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]  # skip the header row
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    body, total = cells[:-1], cells[-1]
    for col in (4, 5, 6):
        assert sum(int(re.sub(r"[^\d]", "", c[col])) for c in body) == int(re.sub(r"[^\d]", "", total[col]))


@pytest.mark.parametrize(("name", "depth", "width"), [("resnet50", 1, 80), ("torchvision/efficientnet_b0", 2, 80)])
def test_fitted_table_golden(name, depth, width, regen_golden) -> None:  # type: ignore[no-untyped-def]
    """The layout at a terminal's width: columns left out and said so, names wrapped, every number whole."""
    report = report_of(name)
    grid = render.calc_table(report, depth, width)
    text = "\n".join(grid.lines + render.table_widths_note(grid.left_out, width)) + "\n"
    _check(GOLDEN / f"{name.replace('/', '-')}-depth{depth}-{width}cols.txt", text, regen_golden)
    assert all(len(line) <= width for line in text.splitlines())
    rows = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
    cells = [[c.strip() for c in line.strip("┃│").split("┃" if line.startswith("┃") else "│")] for line in rows]
    col = cells[0].index("params")
    body = [c[col] for c in cells[1:-1] if c[col]]
    assert sum(int(v.replace(",", "")) for v in body) == int(cells[-1][col].replace(",", "")) == report.totals.params


def test_a_missing_golden_fails_and_is_not_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "absent.txt"
    with pytest.raises(pytest.fail.Exception, match="is missing"):
        _check(missing, "table\n", regen=False)
    assert not missing.exists()
    _check(missing, "table\n", regen=True)  # the explicit flag writes it
    assert missing.read_text(encoding="utf-8") == "table\n"
