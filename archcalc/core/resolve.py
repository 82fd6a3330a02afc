"""Find a spec by path or by the name of a bundled spec (`vgg16`, `torchvision/resnet50`)."""

from __future__ import annotations

import re
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


# The names bundled() gives the zoo's files (lower case, no hidden or relative parts): only such a name is looked up
# as a file directly; any other falls back to the listing, which decides.
_PLAIN_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]*(/[a-z0-9_][a-z0-9_.-]*)*")


def bundled_file(name: str) -> Path | None:
    """bundled()[name] without listing every bundled spec (start-up: a listing costs a millisecond); None when
    `name` is not a plain bundled name or has no file."""
    if not _PLAIN_NAME.fullmatch(name):
        return None
    path = specs_dir() / f"{name}.yaml"
    return path if _is_file(path, name, None) else None


def _is_file(path: Path, ref: str, loc: Loc | None) -> bool:
    """path.is_file(), with what the system refuses (a name over 255 bytes, a loop of links) as a SpecError."""
    try:
        return path.is_file()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        shown = ref if len(ref) <= 80 else ref[:60] + "…" + ref[-15:]
        raise SpecError(loc, f"cannot read spec '{shown}': {getattr(exc, 'strerror', None) or exc}") from None


def resolve_spec(ref: str, relative_to: Path | None = None, loc: Loc | None = None) -> Path:
    """The file of a spec reference: a path (relative to `relative_to`, the folder of the spec whose `extends:` names
    it, else to the working directory), or a bundled spec's name. An `extends:` never looks in the working
    directory: a bundled spec extending `vgg16` must get the bundled vgg16, not a file of that name where the
    command runs."""
    path = Path(ref)
    candidates = [path] if path.is_absolute() else [(relative_to or Path.cwd()) / path]
    for candidate in candidates:
        if _is_file(candidate, ref, loc):
            return candidate
    name = ref[:-5] if ref.endswith(".yaml") else ref
    found = bundled_file(name)
    if found is not None:
        return found
    specs = bundled()
    if name in specs:
        return specs[name]
    # A bare name that only a collection holds (`convnext_tiny` for torchvision/convnext_tiny): that spec, when only
    # one collection has it; a top-level spec of the same name (the paper's resnet50) was found above.
    if "/" not in name:
        held = sorted(n for n in specs if n.rsplit("/", 1)[-1] == name)
        if len(held) == 1:
            return specs[held[0]]
        if held:
            raise SpecError(loc, f"'{ref}' names a spec in several collections: {', '.join(held)}; name one of them")
    raise SpecError(loc, f"no spec file or bundled spec named '{ref}'{did_you_mean(name, specs)} "
                         "(see `archcalc zoo` for the bundled specs)")
