"""Load YAML with yaml.SafeLoader while keeping the source position of every mapping, sequence and value.

Mappings become `Map` (a dict) and sequences `Seq` (a list); both remember where they start and where each of
their keys/items start, so later checks can report `file:line:col` for any value.

Nesting is bounded (MAX_DEPTH mappings and lists inside each other): deeper YAML is a located error, not a
RecursionError. So is what aliases repeat: an alias (`*name`) shares the object its anchor (`&name`) built, and every
later walk (the size pre-count, argument evaluation) visits it once per use, so ten nested lists of ten aliases
("billion laughs") would be walked 10^9 times; a document whose aliases repeat more than MAX_ALIAS_VALUES values is
refused as it is loaded (check_aliases, one visit per distinct object).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from archcalc.core.errors import Loc, SpecError, paused_gc

MAX_DEPTH = 100  # mappings and lists inside each other; the zoo's deepest spec uses 12
MAX_ALIAS_VALUES = 100_000  # values that aliases repeat, in all; the zoo uses no aliases
_LONG_TEXT = 64  # a string counts as one value per 64 characters when an alias repeats it


class Map(dict):  # type: ignore[type-arg]
    """A mapping that remembers where it and each of its keys and values start. Marks are kept as raw
    (line, column) pairs and made into a Loc when the parser asks for one (it asks for most values it parses)."""

    loc: Loc
    path: str
    key_marks: dict[Any, Any]  # (line, column) from the parser, or a Loc
    value_marks: dict[Any, Any]

    def key_loc(self, key: Any) -> Loc:
        return self._loc(self.key_marks.get(key))

    def value_loc(self, key: Any) -> Loc:
        return self._loc(self.value_marks.get(key))

    def _loc(self, mark: Any) -> Loc:
        if mark is None:
            return self.loc
        if isinstance(mark, Loc):  # maps merged from several files (extends) keep full locations
            return mark
        return Loc(self.path, mark[0] + 1, mark[1] + 1)

    @classmethod
    def derived(cls, items: dict[Any, Any], loc: Loc, key_locs: dict[Any, Loc], value_locs: dict[Any, Loc]) -> Map:
        """A Map built by archcalc (merging `extends`, rewriting a block body) with explicit locations."""
        result = cls(items)
        result.loc, result.path = loc, loc.path
        result.key_marks = dict(key_locs)
        result.value_marks = dict(value_locs)
        return result


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


def _make_loader(path: str, text: str = "") -> type[yaml.SafeLoader]:
    resolved: dict[tuple[str, tuple[bool, bool]], str] = {}

    class Loader(_BASE):  # type: ignore[valid-type,misc]
        def resolve(self, kind: type, value: Any, implicit: Any) -> str:
            # The safe resolver is a pure function of a scalar's text (SafeLoader has no path resolvers); specs
            # repeat the same few scalars thousands of times, so remember each answer.
            if kind is not yaml.ScalarNode:
                return super().resolve(kind, value, implicit)  # type: ignore[no-any-return]
            key = (value, tuple(implicit))
            tag = resolved.get(key)  # type: ignore[arg-type]
            if tag is None:
                tag = resolved[key] = super().resolve(kind, value, implicit)  # type: ignore[index]
            return tag

    str_tag = "tag:yaml.org,2002:str"
    depth = [0]

    def enter(node: yaml.Node) -> None:
        depth[0] += 1
        if depth[0] > MAX_DEPTH:
            raise SpecError(_loc(path, node), f"YAML nested more than {MAX_DEPTH} levels deep (mappings and lists "
                                              "inside each other); a spec never needs that many")

    def construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Map:
        enter(node)
        try:
            return build_map(loader, node)
        finally:
            depth[0] -= 1

    def build_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Map:
        loader.flatten_mapping(node)
        result = Map()
        result.loc = _loc(path, node)
        result.path = path
        key_marks: dict[Any, tuple[int, int]] = {}
        value_marks: dict[Any, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            # Plain string scalars are by far the most common: take their text without the generic dispatch.
            key = key_node.value if key_node.tag == str_tag else loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError(_loc(path, key_node), "mapping keys must be plain scalars")
            if key in result:
                raise SpecError(_loc(path, key_node), f"duplicate key '{key}' (each key may appear once)")
            value = result[key] = value_node.value if value_node.tag == str_tag and isinstance(value_node, \
                yaml.ScalarNode) else loader.construct_object(value_node, deep=True)
            if node.flow_style and isinstance(value, str) and value.count("(") > value.count(")"):
                _comma_trap(path, text, key, value, value_node)
            mark = key_node.start_mark
            key_marks[key] = (mark.line, mark.column)
            mark = value_node.start_mark
            value_marks[key] = (mark.line, mark.column)
        result.key_marks = key_marks
        result.value_marks = value_marks
        return result

    def construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Seq:
        enter(node)
        try:
            result = Seq(loader.construct_object(child, deep=True) for child in node.value)
        finally:
            depth[0] -= 1
        result.loc = _loc(path, node)
        result.item_locs = [_loc(path, child) for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_map)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_seq)
    return Loader


def _comma_trap(path: str, text: str, key: Any, value: str, value_node: yaml.Node) -> None:
    """`{out: round_to(ch / 4, 8)}`: inside a flow mapping a comma ends the value, so YAML reads `out:
    'round_to(ch / 4'` and a key `8)`. Say so, rather than "unknown argument '8)'"."""
    mark = value_node.start_mark
    lines = text.splitlines()
    rest = "\n".join(lines[mark.line:])[mark.column:] if mark.line < len(lines) else value
    depth, whole = 0, []
    for ch in rest:  # the expression as written: up to the comma or brace that closes it at depth 0
        if ch in ",}" and depth <= 0:
            break
        depth += (ch == "(") - (ch == ")")
        whole.append(ch)
    text = "".join(whole).strip() or value
    raise SpecError(_loc(path, value_node), f"'{key}: {value}' has an unclosed '(': inside {{...}} a comma ends the "
                                            f"value, so YAML split the expression; quote it: {key}: \"{text}\"")


def _tab_column(text: str, line: int) -> int | None:
    """The column of the first tab on the line where parsing failed (1-based), or None when there is none."""
    lines = text.splitlines()
    if 0 < line <= len(lines) and "\t" in lines[line - 1]:
        return lines[line - 1].index("\t") + 1
    return None


def check_aliases(data: Any, loc: Loc) -> None:
    """Refuse `data` (as loaded, aliases sharing objects) when its aliases repeat more than MAX_ALIAS_VALUES values:
    each distinct list, mapping and long string is measured once (by identity), each further use of it adds its
    size. Cost: one visit per distinct object, whatever the aliases would expand to. `loc` is the fallback location
    (data that is not a Map or Seq, such as a --set value)."""
    sizes: dict[int, int] = {}
    repeated = 0

    def size(value: Any, where: Callable[[], Loc]) -> int:
        nonlocal repeated
        if isinstance(value, str) and len(value) <= _LONG_TEXT or not isinstance(value, (str, dict, list)):
            return 1
        known = sizes.get(id(value))
        if known is not None:  # a second use of the same object: an alias
            repeated += known
            if repeated > MAX_ALIAS_VALUES:
                raise SpecError(where(), f"YAML aliases (*name) repeat more than {MAX_ALIAS_VALUES:,} values in all "
                                         "(each use copies what its anchor &name holds); a spec never needs that "
                                         "many: use a block or 'repeat:' instead")
            return known
        if isinstance(value, str):
            total = 1 + len(value) // _LONG_TEXT
        elif isinstance(value, dict):
            total = 1 + sum(size(v, _place(value, k, where)) for k, v in value.items())
        else:
            total = 1 + sum(size(v, _place(value, i, where)) for i, v in enumerate(value))
        sizes[id(value)] = total
        return total

    size(data, lambda: loc)


def _place(container: Any, key: Any, outer: Callable[[], Loc]) -> Callable[[], Loc]:
    """The location of container[key], asked only for an error."""
    if isinstance(container, Map):
        return lambda: container.value_loc(key)
    if isinstance(container, Seq):
        return lambda: container.item_loc(key)
    return outer


def load(text: str, path: str) -> Any:
    """Parse YAML text; syntax errors become SpecError with the parser's position, and aliases that repeat too
    much (check_aliases) an error at the alias."""
    try:
        with paused_gc():
            data = yaml.load(text, Loader=_make_loader(path, text))  # noqa: S506 - the loader derives from SafeLoader
            if "&" in text:  # no anchor, no alias: nothing is shared
                check_aliases(data, Loc(path, 1, 1))
            return data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        tab = _tab_column(text, loc.line)
        if tab is not None:
            raise SpecError(Loc(path, loc.line, tab), f"tab character at {loc.line}:{tab}; YAML does not allow "
                                                      "tabs for indentation, indent with spaces") from None
        raise SpecError(loc, f"YAML syntax error: {problem}") from None
    except RecursionError:  # the composer of the pure-Python loader (libyaml's is iterative C) on absurd nesting
        raise SpecError(Loc(path, 1, 1), f"YAML nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:  # e.g. a reader error on binary content
        raise SpecError(Loc(path, 1, 1), f"cannot read YAML: {exc}") from None
    except ValueError as exc:  # SafeLoader's constructors on a tagged scalar (`!!int x`) or an int past 4,300 digits
        raise SpecError(Loc(path, 1, 1), f"cannot read a YAML value: {exc} (an explicit tag such as !!int that does "
                                         "not fit its value, or a number too long)") from None
