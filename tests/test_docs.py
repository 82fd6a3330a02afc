"""The documentation stays true: README.md (the front page) and the manual in docs/.

Its kind reference is generated from the registry, its example commands and Python blocks are run, the output it
shows is what archcalc prints today, and every relative link and #anchor points at a file and heading that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec
from archcalc.render import report as render

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "README.md"  # the manual's table of contents (GitHub shows it when the folder is opened)
PAGES = [README, *sorted(DOCS.glob("*.md"))]
KINDS = DOCS / "kinds.md"
START, END = "<!-- kinds:start -->", "<!-- kinds:end -->"
FENCE = re.compile(r"^ *(```|~~~)")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# ---- reading Markdown ---------------------------------------------------------------------------------------------

def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code removed (a link or heading in code is not one)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"(`+).*?\1", "", line))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every #anchor the headings of a page define (a repeated heading gets -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or not (m := re.match(r"^#{1,6} +(.+?) *#* *$", line)):
            continue
        slug = _slug(m.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?: +\"[^\"]*\")?\)")


def links(text: str) -> list[str]:
    """The targets of the inline links and images in a page's prose (a link's text may span lines)."""
    return LINK.findall("\n".join(_prose_lines(text)))


def fenced_blocks(text: str, language: str | None = None) -> list[str]:
    """The bodies of the fenced code blocks of a page (of one info string, if given)."""
    blocks = re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.M | re.S)
    return [body for info, body in blocks if language is None or info == language]


def examples(text: str) -> list[tuple[str, int, list[str]]]:
    """Each `$ archcalc ...` line of a code block: the command, its expected exit code (a trailing `  # exit N`)
    and the output lines shown under it (up to the next `$ ` line; `...` lines mark output left out)."""
    found = []
    for block in fenced_blocks(text):
        current: tuple[str, int, list[str]] | None = None
        for line in block.splitlines():
            if line.startswith("$ "):
                if current:
                    found.append(current)
                current = None
                if line.startswith("$ archcalc "):
                    command = line[len("$ archcalc "):]
                    code = int(m.group(1)) if (m := re.search(r"  # exit (\d)", command)) else 0
                    current = (command.split("  #")[0].rstrip(), code, [])
            elif current is not None and line.strip() not in ("", "...", "…") and not line.startswith("  ..."):
                current[2].append(line.rstrip())
        if current:
            found.append(current)
    return found


# ---- the kind reference ---------------------------------------------------------------------------------------------

def test_kind_reference_is_generated_from_the_registry(regen_golden: bool) -> None:
    text = KINDS.read_text(encoding="utf-8")
    before, rest = text.split(START)
    _, after = rest.split(END)
    fresh = f"{before}{START}\n{render.kinds_md()}{END}{after}"
    if regen_golden:
        KINDS.write_text(fresh, encoding="utf-8")
        return
    assert text == fresh, "docs/kinds.md is stale: run pytest tests/test_docs.py --regen-golden"


# ---- examples -----------------------------------------------------------------------------------------------------

def test_example_commands_run_and_print_what_is_shown(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # `export -o` writes into the working directory (and `import` reads it back)
    runner = CliRunner()
    ran = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        commands = examples(text)
        commands += [(c.strip(), 0, []) for c in re.findall(r"\.venv/bin/archcalc ([^&\n]+)", text)]
        for command, code, shown in commands:
            result = runner.invoke(app, shlex.split(command))
            where = f"{_name(page)}: archcalc {command}"
            assert result.exit_code == code, f"{where}: exit {result.exit_code}\n{result.output}"
            printed = {line.rstrip() for line in (result.stdout + result.stderr).splitlines()}
            for line in shown:
                assert line in printed, f"{where}: a line shown is no longer printed:\n{line}"
            ran += 1
    assert ran >= 15  # the examples were found


def test_front_page_example_table_is_checked() -> None:
    # The reader's first sight of archcalc: the table under `$ archcalc calc resnet50 --depth 2` is in the check above.
    shown = {c: lines for c, _, lines in examples(README.read_text(encoding="utf-8"))}
    rows = [line for line in shown["calc resnet50 --depth 2"] if line.startswith(("│", "┃"))]
    assert len(rows) >= 5


def test_example_output_check_can_fail() -> None:
    # The parser keeps shown output with its command, so a changed figure is caught (and `...` is not a line).
    text = "```\n$ archcalc check lenet5 --max-params 1  # exit 1\nover  params 61,750\n...\n$ ls\nx\n```\n"
    assert examples(text) == [("check lenet5 --max-params 1", 1, ["over  params 61,750"])]


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    test_command = next(line for line in text.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


def test_python_examples_run(capsys) -> None:  # type: ignore[no-untyped-def]
    ran = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text(encoding="utf-8"), "python"):
            exec(compile(block, _name(page), "exec"), {})  # noqa: S102 - our own documentation
            ran.append(page)
    assert ran, "the documentation shows no Python example"
    assert "25557032" in capsys.readouterr().out  # ResNet-50's parameter count, printed by the library example


def test_spec_examples_are_specs(tmp_path: Path) -> None:
    # A YAML block that is a whole spec (a name and layers) is one archcalc accepts as written.
    checked = 0
    for page in PAGES:
        for block in fenced_blocks(page.read_text(encoding="utf-8"), "yaml"):
            if re.search(r"^name:", block, flags=re.M) and re.search(r"^layers:", block, flags=re.M):
                path = tmp_path / "example.yaml"
                path.write_text(block, encoding="utf-8")
                assert analyze(load_spec(path)).totals.params >= 0, f"{_name(page)}: {block}"
                checked += 1
    assert checked >= 3


# ---- links ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: outside the repository
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(ROOT) or not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{anchor} in {_name(file)}")
    assert broken == [], f"{_name(page)}: broken links: {broken}"


def test_every_manual_page_is_in_the_table_of_contents() -> None:
    listed = {(DOCS / t.partition("#")[0]).resolve() for t in links(INDEX.read_text(encoding="utf-8"))}
    missing = [_name(p) for p in DOCS.glob("*.md") if p != INDEX and p.resolve() not in listed]
    assert missing == [], f"add these pages to docs/README.md: {missing}"
    assert "docs/README.md" in links(README.read_text(encoding="utf-8"))  # the front page leads to the manual


def test_link_checker_finds_broken_links() -> None:
    text = ("# Two words: `--x`\n## Two words: `--x`\n```\n# not a heading [a](b.md)\n```\nsee [x](#two-words---x)"
            " and [the\nmanual](docs/README.md), not `[code](c.md)`")
    assert anchors(text) == {"two-words---x", "two-words---x-1"}
    assert links(text) == ["#two-words---x", "docs/README.md"]
    assert _slug("Pictures: `--plot FILE`") == "pictures---plot-file"  # the slug GitHub gives this heading

