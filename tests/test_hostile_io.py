"""Issue 32's data-loss and leak cases: an --output that is the command's own spec, a spec `extends:` a file that is
not a spec (its text must not reach a public CI log), and a bundled spec's `extends:` found in the working
directory instead of the zoo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app

runner = CliRunner()
LENET = """name: lenet
input: [1, 32, 32]
layers:
  - conv: {out: 6, kernel: 5}
  - flatten
  - linear: {out: 10}
"""


@pytest.mark.parametrize("args", [["calc", "{spec}", "-o", "{spec}"], ["calc", "{spec}", "-f", "json", "-o", "{spec}"],
                                  ["compare", "lenet5", "{spec}", "-o", "{spec}"],
                                  ["graph", "{spec}", "-f", "dot", "-o", "{spec}"]])
def test_output_never_replaces_the_spec_it_reads(tmp_path: Path, args: list[str]) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(LENET, encoding="utf-8")
    result = runner.invoke(app, [a.format(spec=spec) for a in args])
    assert result.exit_code == 2, result.output
    assert "that is the spec this command reads" in result.output
    assert spec.read_text(encoding="utf-8") == LENET  # untouched


def test_output_beside_the_spec_is_written(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(LENET, encoding="utf-8")
    out = tmp_path / "net.json"
    result = runner.invoke(app, ["calc", str(spec), "-f", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8"))["totals"]["params"] == (6 * 25 + 6) + (6 * 28 * 28 * 10 + 10)


def test_extending_a_file_that_is_not_a_spec_does_not_print_it(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:18000:0:99999:7:::\nbin:*:18000:0:99999:7:::\n", encoding="utf-8")
    spec = tmp_path / "pr.yaml"
    spec.write_text(f"name: pr\nextends: {shadow}\n", encoding="utf-8")
    for target in (spec, shadow):
        result = runner.invoke(app, ["calc", str(target)])
        assert result.exit_code == 2, result.output
        assert "root:" not in result.output and "18000" not in result.output, result.output
        assert "is not an archcalc spec" in result.output and f"{shadow.name}:1:1:" in result.output
    # a misspelt key is still named, with a suggestion
    typo = tmp_path / "typo.yaml"
    typo.write_text(LENET.replace("layers:", "layer:"), encoding="utf-8")
    result = runner.invoke(app, ["calc", str(typo)])
    assert result.exit_code == 2 and "unknown top-level key 'layer'; did you mean 'layers'" in result.output


def test_a_bundled_spec_extends_the_zoo_not_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "vgg16").write_text("name: planted\ninput: [3, 32, 32]\nlayers:\n  - relu\n", encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, ["calc", "vgg11", "-f", "json"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    # VGG-11 (configuration A): 132,863,336 parameters, Simonyan & Zisserman 2015, Table 2 ("133 M")
    assert json.loads(result.output)["totals"]["params"] == 132_863_336
