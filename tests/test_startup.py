"""Commands are built lazily (archcalc.cli.app): a run builds the command it names, while help, did-you-mean and
the start-up benchmark still see every command. Speed itself is measured by benchmarks/bench_startup.py, not here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# the thirteen commands, in the order `archcalc --help` lists them (written out here, not read from the app)
EVERY = ["calc", "compare", "kinds", "schema", "zoo", "graph", "sweep", "check", "validate", "export", "profile",
         "import", "convert"]


def test_help_lists_every_command_in_order() -> None:
    for args in (["--help"], []):  # no arguments at all shows the help too (exit 2, as click does)
        result = runner.invoke(app, args)
        assert result.exit_code == (0 if args else 2), result.output
        listed = re.findall(r"^  (\S+)  ", result.output.split("Commands:")[1], flags=re.M)
        assert listed == EVERY, result.output


@pytest.mark.parametrize("name", EVERY)
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: root {name} [OPTIONS]"), result.output
    assert "-h, --help" in result.output


def test_an_unknown_command_is_still_matched_against_every_command() -> None:
    result = runner.invoke(app, ["exprot", "resnet50"])
    assert result.exit_code == 2
    assert "No such command 'exprot'. Did you mean 'export'?" in result.output


def test_a_run_builds_only_the_command_it_names() -> None:
    # The other command modules are not even imported: their options cost nothing on `calc`'s start-up.
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            "try:\n    app(['calc', 'lenet5', '-f', 'json'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith('archcalc.cli.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED ['archcalc.cli.analytic', 'archcalc.cli.app', 'archcalc.cli.options']" in proc.stdout


def test_the_startup_benchmark_runs() -> None:
    # one round, no pinning, this checkout also as its own baseline: the script works, its figures are not checked
    proc = subprocess.run([sys.executable, "benchmarks/bench_startup.py", "--repeat", "1", "--cpu", "-1",
                           "--baseline", str(ROOT)], capture_output=True, text=True, check=False, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^this checkout: calc resnet50 -f json: [\d.]+x the floor", proc.stdout, flags=re.M)
    assert re.search(r"^baseline calc resnet50 -f json: [\d.]+x the floor", proc.stdout, flags=re.M)
    assert re.search(r"^in one process .* of which [\d.]+ ms imports and start-up, and [\d.]+ ms the run itself",
                     proc.stdout, flags=re.M)



def test_the_records_on_calcs_path_are_built_from_evaluated_annotations() -> None:
    # typing.NamedTuple turns every string annotation into a ForwardRef, which compiles it: under
    # `from __future__ import annotations` (every annotation a string) the records on calc's path cost milliseconds
    # of start-up. The modules that define them therefore go without it (quoting only true forward references).
    code = ("import __future__, sys\nfrom archcalc.cli.app import app\n"
            "try:\n    app(['calc', 'lenet5', '-f', 'json'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "for name, m in sorted(sys.modules.items()):\n"
            "    records = [k for k, v in vars(m).items() if isinstance(v, type) and v.__module__ == name\n"
            "               and tuple in v.__bases__ and hasattr(v, '_fields')]\n"
            "    future = vars(m).get('annotations') is __future__.annotations\n"
            "    if name.startswith('archcalc.') and records and future:\n"
            "        print('STRING ANNOTATIONS', name)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found = re.findall(r"^STRING ANNOTATIONS (\S+)$", proc.stdout, flags=re.M)
    assert not found, proc.stdout


def test_the_console_script_pauses_the_collector_for_start_up_only() -> None:
    # archcalc.cli.main pauses the cyclic garbage collector while typer and the command's modules are imported and
    # the command built, then resumes it, with what start-up made frozen, before the command runs: the command runs
    # with the collector on. The app called from Python leaves the collector alone.
    code = ("import gc, sys\nimport archcalc.cli.analytic as analytic, archcalc.cli.app as cli_app\nseen = []\n"
            "build = cli_app.build_command\n"
            "def spy_build(name):\n    seen.append(('build', gc.isenabled()))\n    return build(name)\n"
            "def spy_run() -> None:\n    seen.append(('run', gc.isenabled(), gc.get_freeze_count() > 0))\n"
            "analytic.zoo, cli_app.build_command = spy_run, spy_build\nsys.argv = ['archcalc', 'zoo']\n"
            "from archcalc.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\nprint('SEEN', seen)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "SEEN [('build', False), ('run', True, True)]" in proc.stdout, proc.stdout
    import gc

    frozen = gc.get_freeze_count()
    result = runner.invoke(app, ["calc", "lenet5", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled() and gc.get_freeze_count() == frozen
