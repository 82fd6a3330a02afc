"""The bundled spec catalogue (name, description, source), read from the spec files' top-level keys."""

from __future__ import annotations

from dataclasses import dataclass

from archcalc.core import yamlsrc
from archcalc.core.resolve import bundled


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    description: str
    source: str


def entries() -> list[Entry]:
    result = []
    for name, path in bundled().items():
        data = yamlsrc.load(path.read_text(encoding="utf-8"), str(path))
        description, source = data.get("description", ""), data.get("source", "")
        if (not description or not source) and "extends" in data:
            from archcalc.core.spec import load_merged

            merged = load_merged(path, str(path), ())
            description = description or merged.get("description", "")
            source = source or merged.get("source", "")
        result.append(Entry(name, str(description).strip(), str(source).strip()))
    return result
