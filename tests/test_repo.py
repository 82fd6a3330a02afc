"""Repository hygiene that CI should enforce: lint passes, nothing generated is tracked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "archcalc", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_generated_files_tracked() -> None:
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # not a git checkout (e.g. an sdist): nothing to check
        return
    bad = [f for f in proc.stdout.splitlines()
           if "__pycache__" in f or f.endswith((".pyc", ".egg-info")) or f.startswith((".venv/", "build/", "dist/"))]
    assert bad == []
