"""Load YAML with yaml.SafeLoader while keeping the source position of every mapping, sequence and value.

Mappings become `Map` (a dict) and sequences `Seq` (a list); both remember where they start and where each of
their keys/items start, so later checks can report `file:line:col` for any value.
"""

from __future__ import annotations

from typing import Any

import yaml

from archcalc.errors import Loc, SpecError


class Map(dict):  # type: ignore[type-arg]
    loc: Loc
    key_locs: dict[Any, Loc]
    value_locs: dict[Any, Loc]

    def key_loc(self, key: Any) -> Loc:
        return self.key_locs.get(key, self.loc)

    def value_loc(self, key: Any) -> Loc:
        return self.value_locs.get(key, self.loc)


class Seq(list):  # type: ignore[type-arg]
    loc: Loc
    item_locs: list[Loc]

    def item_loc(self, index: int) -> Loc:
        return self.item_locs[index] if index < len(self.item_locs) else self.loc


def _loc(path: str, node: yaml.Node) -> Loc:
    mark = node.start_mark
    return Loc(path, mark.line + 1, mark.column + 1)


# libyaml's parser when PyYAML was built with it (10x faster on large specs); the constructors stay the safe ones.
_BASE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _make_loader(path: str) -> type[yaml.SafeLoader]:
    class Loader(_BASE):  # type: ignore[valid-type,misc]
        pass

    def construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Map:
        loader.flatten_mapping(node)
        result = Map()
        result.loc = _loc(path, node)
        result.key_locs = {}
        result.value_locs = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError(_loc(path, key_node), "mapping keys must be plain scalars")
            if key in result:
                raise SpecError(_loc(path, key_node), f"duplicate key '{key}' (each key may appear once)")
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_locs[key] = _loc(path, key_node)
            result.value_locs[key] = _loc(path, value_node)
        return result

    def construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Seq:
        result = Seq(loader.construct_object(child, deep=True) for child in node.value)
        result.loc = _loc(path, node)
        result.item_locs = [_loc(path, child) for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_map)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_seq)
    return Loader


def load(text: str, path: str) -> Any:
    """Parse YAML text; syntax errors become SpecError with the parser's position."""
    try:
        return yaml.load(text, Loader=_make_loader(path))  # noqa: S506 - the loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(loc, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a reader error on binary content
        raise SpecError(Loc(path, 1, 1), f"cannot read YAML: {exc}") from None
