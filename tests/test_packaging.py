"""The bundled specs ship inside the wheel, so names resolve after a non-editable `pip install .`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from archcalc.core.resolve import bundled

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_bundled_spec(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("archcalc-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in bundled():
        assert f"archcalc/specs/{name}.yaml" in names, name
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "archcalc").rglob("*.py")}
    assert sources - names == set()  # every module of every subpackage ships


def test_installed_layout_resolves_names(tmp_path: Path) -> None:
    # Unpack the wheel into a bare directory and resolve a bundled name from there, as an installed copy would.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    site = tmp_path / "site"
    zipfile.ZipFile(next(tmp_path.glob("archcalc-*.whl"))).extractall(site)
    code = ("import archcalc.core.resolve as r; p = r.resolve_spec('vgg16'); "
            "print(p.relative_to(r.specs_dir()).as_posix(), r.specs_dir().parent.name)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["vgg16.yaml", "archcalc"]
