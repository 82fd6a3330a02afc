"""The bundled spec catalogue (name, family, description, source), read from the spec files' top-level keys.

Entries are grouped: by folder (`specs/`, `specs/torchvision/`), then by the spec's `family` (inherited through
`extends`; torchvision's module name: resnet, efficientnet, video, ...), then by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from archcalc.core import yamlsrc
from archcalc.core.resolve import bundled


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    family: str
    description: str
    source: str


def entries() -> list[Entry]:
    result = []
    for name, path in bundled().items():
        data = yamlsrc.load(path.read_text(encoding="utf-8"), str(path))
        description, source = data.get("description", ""), data.get("source", "")
        family = data.get("family", "")
        if (not description or not source or not family) and "extends" in data:
            from archcalc.core.spec import load_merged

            merged = load_merged(path, str(path), ())
            description = description or merged.get("description", "")
            source = source or merged.get("source", "")
            family = family or merged.get("family", "")
        result.append(Entry(name, str(family).strip(), str(description).strip(), str(source).strip()))
    return sorted(result, key=lambda e: (e.name.rpartition("/")[0], e.family, e.name))
