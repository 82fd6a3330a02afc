"""Find a spec by path or by the name of a bundled spec (`vgg16`, `torchvision/resnet50`)."""

from __future__ import annotations

from pathlib import Path

from archcalc.core.errors import Loc, SpecError, did_you_mean


def specs_dir() -> Path:
    """The bundled specs: archcalc/specs inside an installed wheel, or specs/ beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "specs", package.parent / "specs"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("archcalc's bundled specs are missing from this installation")


def bundled() -> dict[str, Path]:
    """Bundled spec names ('vgg16', 'torchvision/resnet50') to their files."""
    root = specs_dir()
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def resolve_spec(ref: str, relative_to: Path | None = None, loc: Loc | None = None) -> Path:
    path = Path(ref)
    candidates = [path] if path.is_absolute() else [(relative_to or Path.cwd()) / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    specs = bundled()
    name = ref[:-5] if ref.endswith(".yaml") else ref
    if name in specs:
        return specs[name]
    raise SpecError(loc, f"no spec file or bundled spec named '{ref}'{did_you_mean(name, specs)} "
                         "(see `archcalc zoo` for the bundled specs)")
