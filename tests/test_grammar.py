"""The spec grammar's one table (core.grammar): the parser and the JSON Schema agree on it, and both follow it.

Expected keys come from the README's spec reference ("Composition", "Graphs"), written out here by hand.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import load_text

from archcalc.core import grammar
from archcalc.core.errors import Loc, SpecError
from archcalc.core.grammar import ANY, ARG_TYPES, COMPOSITES, At, Key, arg_type
from archcalc.core.kinds import REGISTRY, Arg
from archcalc.core.schema import spec_schema

# README, "The spec language": `repeat: N` with `block:` (required) and optional `first:`; `parallel: [...]` merged
# by `merge:`; `residual: [body]` with `shortcut:` and `after:`; `sequence: [...]`. Beside any item: name, from, when;
# docs/spec.md, "Computed, discarded": discard; "Alternatives": `cases: [...]`.
README_KEYS = {"repeat": {"block", "first"}, "residual": {"shortcut", "after"}, "parallel": {"merge"},
               "sequence": set(), "cases": set()}
README_REQUIRED = {"repeat": {"block"}}
BESIDE = {"name", "from", "when", "discard"}
# A valid value for each head and key, written as YAML flow.
HEAD = {"repeat": "2", "residual": "[relu]", "parallel": "[[relu], [relu]]", "sequence": "[relu]", "cases": "[relu]"}
VALUE = {"block": "relu", "first": "relu", "shortcut": "identity", "after": "[relu]", "merge": "add"}
ALL_KEYS = sorted(VALUE)

SPEC = "name: t\ninput: [3, 8, 8]\n"


def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(spec_schema())


def _item(head: str, keys: list[str]) -> str:
    given = [f"{head}: {HEAD[head]}"] + [f"{k}: {VALUE[k]}" for k in keys]
    return "{" + ", ".join(given) + "}"


def _parses(text: str) -> bool:
    try:
        load_text(text)
    except SpecError:
        return False
    return True


def _schema_accepts(text: str) -> bool:
    return not list(_validator().iter_errors(yaml.safe_load(text)))


def test_the_table_is_the_readmes_grammar() -> None:
    assert {name: {k.name for k in c.keys} for name, c in COMPOSITES.items()} == README_KEYS
    assert {name: set(c.required) for name, c in COMPOSITES.items() if c.required} == README_REQUIRED
    assert {k.name for k in grammar.BESIDE} == BESIDE


@pytest.mark.parametrize("head", sorted(README_KEYS))
@pytest.mark.parametrize("key", ALL_KEYS)
def test_parser_and_schema_agree_on_each_composites_keys(head: str, key: str) -> None:
    # Every key of every composite beside every head: accepted by both exactly where the README allows it.
    keys = sorted(README_REQUIRED.get(head, set()) | {key})
    expected = key in README_KEYS[head]
    text = SPEC + f"layers:\n  - {_item(head, keys)}\n"
    assert _parses(text) == expected, text
    assert _schema_accepts(text) == expected, text
    # The same as a block's body (`layers` is a sequence there).
    for block_head in (head, "layers") if head == "sequence" else (head,):
        body = _item(head, keys).replace(f"{{{head}:", f"{{{block_head}:", 1)
        block = SPEC + f"blocks:\n  b: {body}\nlayers: [b]\n"
        assert _parses(block) == expected, block
        assert _schema_accepts(block) == expected, block


@pytest.mark.parametrize("head", sorted(README_REQUIRED))
def test_a_required_key_left_out_is_refused_by_both(head: str) -> None:
    for key in README_REQUIRED[head]:
        text = SPEC + f"layers:\n  - {_item(head, [])}\n"
        with pytest.raises(SpecError, match=re.escape(f"{head} needs '{key}'")):
            load_text(text)
        assert not _schema_accepts(text)


@pytest.mark.parametrize("head", sorted(README_KEYS))
@pytest.mark.parametrize("beside", sorted(BESIDE))
def test_name_from_and_when_stand_beside_every_composite(head: str, beside: str) -> None:
    value = {"name": "g", "from": "input", "when": "true", "discard": "true"}[beside]
    keys = sorted(README_REQUIRED.get(head, set()))
    item = _item(head, keys)[:-1] + f", {beside}: {value}}}"
    text = SPEC + f"layers:\n  - {item}\n"
    assert _parses(text) and _schema_accepts(text), text


def test_a_key_added_to_the_table_is_accepted_by_the_parser_and_in_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    text = SPEC + "layers:\n  - {residual: [relu], note: a remark}\n"
    assert not _parses(text) and not _schema_accepts(text)  # not part of the grammar yet
    residual = COMPOSITES["residual"]
    monkeypatch.setitem(COMPOSITES, "residual", residual._replace(keys=(*residual.keys, Key("note", ANY, "a remark"))))
    assert _parses(text)
    schema = spec_schema()
    for tree in ("strict", "loose"):
        item = schema["definitions"][f"item.{tree}"]["anyOf"][0]
        assert item["properties"]["note"] == {"description": "a remark"}
        assert "note" in item["dependencies"]["residual"]["propertyNames"]["enum"]
        assert item["dependencies"]["note"] == ["residual"]
    assert "note" in schema["definitions"]["block"]["properties"]
    assert _schema_accepts(text)
    other = SPEC + "layers:\n  - {parallel: [[relu], [relu]], note: a remark}\n"  # still residual's own key
    assert not _parses(other) and not _schema_accepts(other)


def test_a_required_key_added_to_the_table_is_required_by_both(monkeypatch: pytest.MonkeyPatch) -> None:
    text = SPEC + "layers:\n  - {residual: [relu]}\n"
    residual = COMPOSITES["residual"]
    keys = tuple(k._replace(required=True) if k.name == "after" else k for k in residual.keys)
    monkeypatch.setitem(COMPOSITES, "residual", residual._replace(keys=keys))
    with pytest.raises(SpecError, match="residual needs 'after'"):
        load_text(text)
    assert not _schema_accepts(text)
    assert _parses(SPEC + "layers:\n  - {residual: [relu], after: relu}\n")


class _Reads:
    """A stand-in for the parser's count that records which keys a composite's row formula reads."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def has(self, key: str) -> bool:
        return True

    def rows(self, key: str, **names: int) -> int:
        self.read.add(key)
        return 1

    def number(self, key: str) -> int:
        self.read.add(key)
        return 3


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_the_size_count_reads_every_key_that_holds_layers(name: str) -> None:
    composite = COMPOSITES[name]
    reads = _Reads()
    composite.rows(reads)
    holding = {k.name for k in (composite.head, *composite.keys) if k.holds.rows is not None}
    assert holding <= reads.read, f"{name}'s row count leaves out {holding - reads.read}"


@pytest.mark.parametrize("text, rows", [
    # Rows written out: a repeat of 3 copies of 2 layers; `first` replaces copy 0.
    ("- {repeat: 3, block: [relu, relu]}", 6),
    ("- {repeat: 3, block: [relu, relu], first: relu}", 5),
    ("- {residual: [relu, relu]}", 2 + 2 + 1),  # body, the shortcut counted as projection (2: an upper bound), add
    ("- {residual: [relu], shortcut: [relu], after: [relu, relu]}", 1 + 1 + 1 + 2),
    ("- {parallel: [[relu], [relu, relu], []]}", 3 + 1),  # branches and the merge
    ("- {sequence: [relu, relu, relu]}", 3),
])
def test_the_size_count_of_each_composite(text: str, rows: int) -> None:
    spec = SPEC + "layers:\n  " + text + "\n"
    from archcalc.core.spec import parse_spec
    from archcalc.core.yamlsrc import load

    data = load(spec, "t.yaml")
    parse_spec(data, "t.yaml", max_layers=rows)  # the limit met exactly
    with pytest.raises(SpecError, match=f"the spec expands to {rows:,} layers"):
        parse_spec(data, "t.yaml", max_layers=rows - 1)


def test_every_composite_has_a_parser() -> None:
    from archcalc.core.spec import _COMPOSITE_METHODS

    assert set(_COMPOSITE_METHODS) == set(COMPOSITES)


@pytest.mark.parametrize("name", ["add", "concat", "mul"])
def test_a_block_named_like_a_merge_is_refused_by_both(name: str) -> None:
    # `- add: {c: 8}` would be read as the merge, so the name could only be called bare.
    text = SPEC + f"blocks:\n  {name}:\n    args: {{c: 4}}\n    layers: [{{conv: {{out: c, kernel: 1}}}}]\n" \
                  f"layers:\n  - {name}: {{c: 8}}\n"
    with pytest.raises(SpecError, match=f"block name '{name}' is already a merge"):
        load_text(text)
    assert not _schema_accepts(text)


# ---- argument types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_kinds_argument_types_are_in_the_table(kind: str) -> None:
    for arg in REGISTRY[kind].args:
        assert arg.type in ARG_TYPES, (kind, arg.name, arg.type)


def test_an_unknown_argument_type_is_a_bug_that_says_so() -> None:
    with pytest.raises(LookupError, match="argument 'x' has unknown type 'integer'"):
        arg_type(Arg("x", "integer"))


# (type, extra Arg fields, value, accepted): values that are not strings, which the schema does not leave to the
# expression evaluator, so the parser and the schema must give the same answer.
CASES: list[tuple[str, dict[str, Any], Any, bool]] = [
    ("int", {}, 3, True), ("int", {}, -3, True), ("int", {"minimum": 1}, 0, False), ("int", {}, 2.5, False),
    ("int", {}, True, False), ("int", {}, [1], False), ("int", {}, None, False),
    ("ints", {"minimum": 1}, [1, 2], True), ("ints", {}, 4, True), ("ints", {}, [], False),
    ("ints", {"minimum": 1}, [1, 0], False), ("ints", {}, [[1]], False), ("ints", {}, None, False),
    ("ints_or_none", {}, None, True), ("ints_or_none", {}, [2, 3], True), ("ints_or_none", {}, False, False),
    ("float", {}, 0.5, True), ("float", {}, 2, True), ("float", {"minimum": 0}, -0.1, False),
    ("float", {}, True, False), ("float", {}, [0.5], False),
    ("bool", {}, True, True), ("bool", {}, 1, False), ("bool", {}, None, False),
    ("str", {"choices": ("nearest", "linear")}, "nearest", True), ("str", {"choices": ("a", "b")}, 3, False),
    ("padding", {}, 1, True), ("padding", {}, "same", True), ("padding", {}, "valid", True),
    ("padding", {}, [1, 2], True), ("padding", {}, [[1, 2], 0], True), ("padding", {}, -1, False),
    ("padding", {}, [[1, 2, 3]], False), ("padding", {}, [], False), ("padding", {}, [[1, -1]], False),
    ("padding", {}, 1.5, False),
    ("ref", {}, "down4", True), ("ref", {}, 3, False), ("ref", {}, ["a"], False),
]
_DEFS = {k: v for k, v in spec_schema()["definitions"].items() if k in ("expression", "tensor")}


@pytest.mark.parametrize("type_, fields, value, accepted", CASES)
def test_parser_and_schema_agree_on_each_argument_type(type_: str, fields: dict[str, Any], value: Any,
                                                       accepted: bool) -> None:
    arg = Arg("a", type_, **fields)
    at = At("k", Loc("t.yaml", 1, 1), {}, "")
    try:
        ARG_TYPES[type_].convert(value, arg, at)
        parsed = True
    except SpecError:
        parsed = False
    schema = {"anyOf": ARG_TYPES[type_].schema(arg), "definitions": _DEFS}
    assert parsed == accepted
    assert jsonschema.Draft7Validator(schema).is_valid(value) == accepted


def test_the_parser_converts_by_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # conv's `out` is an int; a type entry that doubles ints changes what the parser makes of it.
    doubled = ARG_TYPES["int"]._replace(convert=lambda v, arg, at: 2 * v)
    monkeypatch.setitem(ARG_TYPES, "int", doubled)
    spec = load_text(SPEC + "layers:\n  - conv: {out: 4, kernel: 1}\n")
    assert spec.root.children[0].args["out_channels"] == 8


def test_the_size_count_follows_the_tables_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    residual = COMPOSITES["residual"]
    monkeypatch.setitem(COMPOSITES, "residual", residual._replace(rows=lambda c: 100 * c.rows("residual")))
    from archcalc.core.spec import parse_spec
    from archcalc.core.yamlsrc import load

    data = load(SPEC + "layers:\n  - {residual: [relu]}\n", "t.yaml")
    with pytest.raises(SpecError, match="expands to 100 layers"):
        parse_spec(data, "t.yaml", max_layers=99)


@pytest.mark.parametrize("item, message", [
    # The vocabularies in messages come from the tables (shortcuts, merges, a block's heads); the text is fixed.
    ("{residual: [relu], shortcut: 3}", "shortcut must be identity, projection, projection_conv or a list of layers"),
    ("{residual: [relu], shortcut: projektion}", "unknown shortcut 'projektion'; did you mean 'projection'?"),
    ("{parallel: [[relu], [relu]], merge: ad}", "merge must be 'concat', 'add' or 'mul', not 'ad'; did you mean "
                                                "'add'?"),
    ("{repeat: 2, block: relu, frist: relu}", "repeat: unexpected key 'frist'; did you mean 'first'?"),
])
def test_messages_that_name_a_vocabulary(item: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        load_text(SPEC + f"layers:\n  - {item}\n")


def test_a_block_without_a_body_names_every_head() -> None:
    with pytest.raises(SpecError, match=re.escape("block 'b' needs exactly one of layers, residual, parallel, "
                                                  "sequence or repeat")):
        load_text(SPEC + "blocks:\n  b: {args: {c: 1}}\nlayers: [b]\n")


# ---- `when:` and tensor names: the parser and the schema agree (issue 32) ------------------------------------------

WHEN_SPECS = [
    # accepted by both
    ("layers:\n  - {conv: {out: 4, kernel: 1}, when: 1}\n", True),
    ("layers:\n  - {conv: {out: 4, kernel: 1}, when: true, name: c, trainable: false}\n  - relu\n", True),
    ("layers:\n  - relu\n  - {conv: {out: 4, kernel: 1}, when: 0}\n", True),
    ("layers:\n  - relu\n  - {conv: {out: 4, kernel: 1}, when: false, from: input}\n", True),
    ("args: {se: 1, dw: 0}\nlayers:\n  - {relu: null, when: se and dw}\n  - {relu: null, when: not se or dw}\n"
     "  - relu\n", True),
    ("blocks:\n  b:\n    args: {se: 1}\n    layers:\n      - {relu: null, when: se}\n      - sigmoid\n"
     "layers:\n  - {b: {se: 0}, when: 1}\n", True),
    ("layers:\n  - relu\n  - {add: [input, relu1], when: 0, name: a}\n  - relu\n", True),
    ("layers:\n  - {relu: null, name: r}\n  - {relu: null, from: r}\n", True),
    # refused by both
    ("layers:\n  - {relu: null, when: [1]}\n", False),
    ("layers:\n  - {relu: null, when: null}\n", False),
    ("layers:\n  - {relu: null, when: ' '}\n", False),
    ("layers:\n  - {relu: null, when: {a: 1}}\n", False),
    ("layers:\n  - {relu: null, name: r}\n  - {relu: null, from: \"r\\n\"}\n", False),
    ("layers:\n  - {relu: null, name: r}\n  - {relu: null, from: ' r'}\n", False),
    ("layers:\n  - {relu: null, name: \"r\\n\"}\n", False),
    ("layers:\n  - {relu: null, name: r}\n  - add: [r, \"r\\n\"]\n", False),
    ("layers:\n  - {relu: null, name: r}\noutputs: [\"r\\n\"]\n", False),
    ("layers:\n  - relu\n  - {nosuch: null, when: 0}\n", False),
    ("layers:\n  - relu\n  - {conv: {bogus: 1}, when: 0}\n", False),
    ("layers:\n  - relu\n  - {conv: {out: 4, kernel: 1}, when: 0, extra: 1}\n", False),
    ("layers:\n  - relu\n  - {relu: null, sigmoid: null, when: 0}\n", False),
    ("layers:\n  - relu\n  - {repeat: 2, when: 0}\n", False),
    ("layers:\n  - relu\n  - {add: [relu1], when: 0}\n", False),
    ("layers:\n  - relu\n  - {when: 0}\n", False),
]


@pytest.mark.parametrize(("body", "valid"), WHEN_SPECS)
def test_parser_and_schema_agree_on_when_and_tensor_names(body: str, valid: bool) -> None:
    text = SPEC + body
    assert _parses(text) == valid, text
    assert _schema_accepts(text) == valid, text
