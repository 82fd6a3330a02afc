"""The package's layers are contracts, not conventions: core/ and render/ never import torch, the CLI's command
modules never import each other, no package has an import cycle (pyproject.toml's [tool.importlinter]), and every
layer kind has exactly one torch recipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from archcalc.core.kinds import REGISTRY
from archcalc.torch.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the package found first on sys.path from `root` (the checkout, or a copy of it)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)


def test_import_contracts_hold() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 kept, 0 broken" in proc.stdout, proc.stdout


def test_contracts_catch_torch_in_core(tmp_path: Path) -> None:
    # The checker itself can fail: a copy of the package where one core module imports torch breaks a contract.
    import shutil

    pkg = tmp_path / "archcalc"
    shutil.copytree(ROOT / "archcalc", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    units = pkg / "core" / "units.py"
    units.write_text(units.read_text(encoding="utf-8") + "\n\ndef _leak() -> None:\n    import torch  # noqa\n",
                     encoding="utf-8")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "archcalc.core.units -> torch" in proc.stdout, proc.stdout


def test_every_kind_has_one_recipe() -> None:
    assert sorted(RECIPES) == sorted(REGISTRY)


def test_every_merge_has_one_torch_recipe() -> None:
    from archcalc.core.merges import MERGES
    from archcalc.torch.recipes import MERGE_RECIPES

    assert sorted(MERGE_RECIPES) == sorted(MERGES)
