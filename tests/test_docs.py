"""The README stays true: its kind reference is generated from the registry, its examples are run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.render import report as render

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- kinds:start -->", "<!-- kinds:end -->"


def test_readme_kind_reference_is_generated_from_the_registry(regen_golden: bool) -> None:
    text = README.read_text(encoding="utf-8")
    before, rest = text.split(START)
    _, after = rest.split(END)
    fresh = f"{before}{START}\n{render.kinds_md()}{END}{after}"
    if regen_golden:
        README.write_text(fresh, encoding="utf-8")
        return
    assert text == fresh, "README's kind reference is stale: run pytest tests/test_docs.py --regen-golden"


def test_readme_example_commands_run_and_match(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # `export -o` writes into the working directory
    text = README.read_text(encoding="utf-8")
    shown = re.findall(r"^\$ archcalc (.+)$", text, flags=re.M)  # `  # exit 1` marks an expected exit code
    commands = [(c.split("  #")[0], int(m.group(1)) if (m := re.search(r"  # exit (\d)", c)) else 0) for c in shown]
    commands += [(c, 0) for c in re.findall(r"\.venv/bin/archcalc ([^&\n]+)", text)]
    assert commands, "the README shows no archcalc command"
    runner = CliRunner()
    for command, code in commands:
        result = runner.invoke(app, shlex.split(command))
        assert result.exit_code == code, f"README command failed: archcalc {command}\n{result.output}"
        if command.startswith(("sweep", "check")):  # the example's output lines are what archcalc prints today
            block = text.split(f"$ archcalc {command}", 1)[1].split("```", 1)[0]
            printed = {line.rstrip() for line in result.stdout.splitlines()}
            for line in block.splitlines()[1:]:
                assert line.rstrip() in printed, f"README example line no longer printed: {line}"
    # The example table's rows are what archcalc prints today.
    example = text.split("$ archcalc calc resnet50 --depth 2", 1)[1].split("```", 1)[0]
    output = runner.invoke(app, ["calc", "resnet50", "--depth", "2"]).stdout
    table_rows = [line.rstrip() for line in example.splitlines() if line.startswith(("│", "┃"))]
    assert table_rows
    printed = {line.rstrip() for line in output.splitlines()}
    for row in table_rows:
        assert row in printed, f"README example row no longer printed: {row}"


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    test_command = next(line for line in text.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


def test_readme_python_examples_run(capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README shows no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - our own documentation
    assert "25557032" in capsys.readouterr().out  # ResNet-50's parameter count, printed by the example
