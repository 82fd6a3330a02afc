"""A JSON Schema (draft-07) for spec files, generated from the kind registry and the grammar's
tables (core.grammar), which the parser (core.spec) reads too.

YAML editors read it to complete and check specs: every kind with its arguments, aliases, types, defaults,
choices and doc strings, and the spec's structure (top-level keys, blocks, composites, merges, `from:`, `when:`,
`inputs` / `outputs`, `extends`). `archcalc schema` prints it.

Where the spec language evaluates a string (an expression of `args` and block arguments, or the bare name of
one), the schema takes any string, so it never rejects a spec the parser accepts. It is stricter than the parser
only in what the parser never reads: the body of a block that is never called, the argument values and inner
items of an item switched off by `when:` (the parser checks its head, keys and argument names), defaults of a kind
no layer uses. Which keys are layer kinds is known only where a spec has no `blocks` and no
`extends` (a key may otherwise call a block); there, an unknown kind is an error too.
"""

from __future__ import annotations

from typing import Any

from archcalc.core.grammar import (
    BESIDE,
    BLOCK_HEADS,
    BLOCK_LAYERS,
    BLOCK_OWN,
    COMPOSITES,
    MERGE_BESIDE,
    NAME_KEY,
    NAME_PATTERN,
    SPREAD_PATTERN,
    TENSOR_PATTERN,
    TRAINABLE_KEY,
    Tree,
    arg_type,
    block_composite,
)
from archcalc.core.kinds import REGISTRY, Arg, Kind
from archcalc.core.merges import MERGES

SCHEMA_URI = "http://json-schema.org/draft-07/schema#"


def spec_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict (deterministic: kinds in name order)."""
    kinds = sorted(REGISTRY)
    definitions: dict[str, Any] = {
        "expression": {
            "type": "string",
            "description": "an expression of the spec's args and block arguments (+ - * / // % **, min, max, "
                           "ceil_div, round_to, ceil, floor, round), evaluated by archcalc's safe evaluator, "
                           "or the bare name of one",
        },
        "tensor": {"type": "string", "pattern": TENSOR_PATTERN,
                   "description": "the name of an earlier tensor: a layer, block or input name (innermost scope "
                                  "first, then a unique suffix of a full name), `$input` (the input of the innermost "
                                  "enclosing block or group), or a block argument holding one"},
        "spread": {"type": "string", "pattern": SPREAD_PATTERN,
                   "description": "in a merge's list: NAME.* (the outputs of every copy of the repeat NAME, in "
                                  "order) or NAME.*[start:stop] (a slice of them, as Python slices a list)"},
        "name": {"anyOf": [{"type": "string", "pattern": NAME_PATTERN}, {"type": "integer", "minimum": 0}],
                 "description": "the layer's name: letters, digits, '_' or '-' (dots separate levels and are "
                                "added by archcalc)"},
        "when": {"anyOf": [{"type": ["boolean", "number"]}, {"type": "string", "pattern": "\\S"}],
                 "description": "inside a block: the item exists only when this condition on the block's arguments "
                                "holds (comparisons, and, or, not), e.g. 'se > 0', 'se and dw', 'not se'; true, "
                                "false or a number (0 is false)"},
        "shape": {
            "description": "channels first: [C, L], [C, H, W] or [C, D, H, W], or a string such as 3x224x224",
            "anyOf": [{"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 4},
                      {"type": "string", "pattern": "^\\s*[0-9]+\\s*([xX×]\\s*[0-9]+\\s*){1,3}$"}],
        },
        "value": {"not": {"type": "object"},
                  "description": "a number, string, boolean, list, expression or ~ (not a mapping)"},
    }
    for name in kinds:
        kind = REGISTRY[name]
        definitions[f"kind.{name}"] = _kind_args(kind, in_layer=True)
        definitions[f"defaults.{name}"] = _kind_args(kind, in_layer=False)
    for strict in (True, False):
        definitions.update(_items(kinds, strict))
    definitions["block"] = _block()
    properties: dict[str, Any] = {
        "name": {"type": "string", "pattern": "\\S", "description": "the network's name (required)"},
        "description": {"type": "string", "description": "one line for `archcalc zoo`"},
        "source": {"type": "string", "description": "where the architecture comes from (paper, table)"},
        "family": {"type": "string", "description": "groups `archcalc zoo` (inherited through extends)"},
        "notes": {"type": "string"},
        "input": {"$ref": "#/definitions/shape"},
        "inputs": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": NAME_PATTERN},
                   "additionalProperties": {"$ref": "#/definitions/shape"},
                   "description": "several named inputs, name: shape; the first is what the first layer reads"},
        "outputs": _outputs(),
        "unused": {"enum": ["error", "allow"],
                   "description": "allow: a layer no output depends on is a warning and left out of the totals"},
        "args": {"type": "object", "additionalProperties": {"$ref": "#/definitions/value"},
                 "description": "variables usable in every expression (overridden with --set NAME=VALUE)"},
        "defaults": {
            "type": "object", "description": "per-kind argument defaults",
            "properties": {k: {"$ref": f"#/definitions/defaults.{k}"} for k in kinds},
            "additionalProperties": False,
        },
        "blocks": {"type": "object", "description": "reusable blocks with arguments, called like kinds",
                   "propertyNames": {"pattern": NAME_PATTERN,
                                     "not": {"enum": kinds + list(COMPOSITES) + list(MERGES)}},
                   "additionalProperties": {"$ref": "#/definitions/block"}},
        "layers": {"$ref": "#/definitions/items.loose"},
        "extends": {"type": "string", "description": "a bundled spec name or a path relative to this spec: "
                                                     "take it and override name, input, layers; merge args, "
                                                     "defaults and blocks key by key"},
    }
    return {
        "$schema": SCHEMA_URI,
        "title": "archcalc spec",
        "description": "A CNN architecture for archcalc (`archcalc kinds` lists every layer kind).",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "not": {"required": ["input", "inputs"]},
        "allOf": [
            {"if": {"not": {"required": ["extends"]}},
             "then": {"required": ["name", "layers"], "anyOf": [{"required": ["input"]}, {"required": ["inputs"]}]}},
            # Without blocks (here or inherited), every key of a layer is a kind: unknown kinds are errors.
            {"if": {"not": {"anyOf": [{"required": ["blocks"]}, {"required": ["extends"]}]}},
             "then": {"properties": {"layers": {"$ref": "#/definitions/items.strict"}}}},
        ],
        "definitions": definitions,
    }


# ---- layer kinds ----------------------------------------------------------------------------------------------


def _kind_args(kind: Kind, in_layer: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for arg in kind.args:
        properties[arg.name] = _arg(arg, arg.doc)
        for alias in arg.aliases:
            properties[alias] = _arg(arg, f"alias of {arg.name}: {arg.doc}")
    if in_layer:
        properties.update({k.name: k.schema(_LOOSE) for k in (NAME_KEY, TRAINABLE_KEY)})
    doc = f"{kind.doc} Full-convention FLOPs: {kind.full_rule}." if kind.full_rule else kind.doc
    schema: dict[str, Any] = {"type": ["object", "null"] if in_layer else "object", "description": doc,
                              "properties": properties, "additionalProperties": False}
    return schema


def _arg(arg: Arg, doc: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": doc + _default_text(arg), "anyOf": arg_type(arg).schema(arg)}
    if not arg.required:
        schema["default"] = list(arg.default) if isinstance(arg.default, tuple) else arg.default
    return schema


def _default_text(arg: Arg) -> str:
    if arg.required:
        return " (required)"
    return f" (default {'none' if arg.default is None else arg.default})"


# ---- items ----------------------------------------------------------------------------------------------------


_LOOSE = Tree.named("loose")


def _items(kinds: list[str], strict: bool) -> dict[str, Any]:
    """The definitions of one item tree. The strict tree (no blocks in the spec) knows every key; the loose one lets
    a key it does not know call a block."""
    s = "strict" if strict else "loose"
    tree = Tree.named(s)
    # At least two entries, or one `NAME.*` (the copies of a repeat; the analyzer counts them).
    spread = {"$ref": "#/definitions/spread"}
    merge_list = {"type": "array", "minItems": 1, "items": {"anyOf": [{"$ref": "#/definitions/tensor"}, spread]},
                  "anyOf": [{"minItems": 2}, {"contains": spread}]}
    properties: dict[str, Any] = {k: {"$ref": f"#/definitions/kind.{k}"} for k in kinds}
    properties.update(_composite_keys(tree))
    properties.update({k.name: k.schema(tree) for k in (*BESIDE, TRAINABLE_KEY)})
    for op in MERGES:
        properties[op] = {"description": f"{op} of earlier named tensors: {op}: [a, b] (m.*: every copy of the "
                                         "repeat m)",
                          "anyOf": [merge_list, {"type": "object", "required": ["from"], "additionalProperties": False,
                                                 "properties": {"from": merge_list,
                                                                "name": {"$ref": "#/definitions/name"}}}]}
    beside = [k.name for k in BESIDE]
    layer_keys = [*beside, TRAINABLE_KEY.name]
    dependencies: dict[str, Any] = {k: {"propertyNames": {"enum": [k, *layer_keys]}} for k in kinds}
    for c in COMPOSITES.values():
        required = {"required": list(c.required)} if c.required else {}
        dependencies[c.name] = {**required, "propertyNames": {"enum": [c.name, *(k.name for k in c.keys), *beside]}}
    dependencies.update({k.name: [c.name] for c in COMPOSITES.values() for k in c.keys})
    dependencies[TRAINABLE_KEY.name] = {"anyOf": [{"required": [k]} for k in kinds]}  # single layers, not blocks
    for op in MERGES:  # a merge reads its own list, not `from:`
        dependencies[op] = {"propertyNames": {"enum": [op, *(k.name for k in MERGE_BESIDE)]}}
    # Each head's list of keys allowed beside it excludes every other head; a mapping of nothing but name / from /
    # when / trainable has no head.
    no_head_only = {"not": {"propertyNames": {"enum": layer_keys}}}
    mapping: dict[str, Any] = {"type": "object", "properties": properties, "dependencies": dependencies,
                               **no_head_only}
    if strict:
        mapping["additionalProperties"] = False
        string: dict[str, Any] = {"enum": kinds}
    else:
        mapping["additionalProperties"] = {"type": ["object", "null"], "description": "a call of a block defined "
                                           "under `blocks`", "properties": {"name": {"$ref": "#/definitions/name"}},
                                           "additionalProperties": {"$ref": "#/definitions/value"}}
        string = {"anyOf": [{"enum": kinds}, {"type": "string", "not": {"enum": list(COMPOSITES) + list(MERGES)}}]}
    return {
        f"item.{s}": {"description": "a layer: a kind or block name (- relu) or a one-key mapping "
                                     "(- conv: {out: 64, kernel: 3}), a composite, or a merge",
                      "anyOf": [mapping, string]},  # mapping first: most items are mappings (speed)
        f"items.{s}": {"type": "array", "minItems": 1, "items": {"$ref": tree.item}},
        f"body.{s}": {"anyOf": [{"type": "array", "items": {"$ref": tree.item}}, {"$ref": tree.item}]},
    }


def _composite_keys(tree: Tree) -> dict[str, Any]:
    """Every composite's head and the keys beside it (in an item of `tree`, or as a block's body)."""
    return {k.name: k.schema(tree) for c in COMPOSITES.values() for k in (c.head, *c.keys)}


def _block() -> dict[str, Any]:
    sequence = COMPOSITES["sequence"].head
    properties: dict[str, Any] = {k.name: k.schema(_LOOSE) for k in BLOCK_OWN}
    properties[BLOCK_LAYERS.name] = BLOCK_LAYERS.schema(_LOOSE)
    properties[sequence.name] = sequence._replace(doc="").schema(_LOOSE)  # the same as layers, documented there
    # or the body is a residual / parallel / repeat, written as in an item
    properties.update({k: v for k, v in _composite_keys(_LOOSE).items() if k not in properties})
    own = [k.name for k in BLOCK_OWN]
    dependencies: dict[str, dict[str, Any]] = {}
    for head in BLOCK_HEADS:
        composite = block_composite(head)
        dependencies[head] = {"propertyNames": {"enum": [head, *own, *(k.name for k in composite.keys)]}}
        if composite.required:
            dependencies[head]["required"] = list(composite.required)
    return {"type": "object", "description": f"a block: args, and one of {' / '.join(BLOCK_HEADS)}",
            "properties": properties, "additionalProperties": False, "dependencies": dependencies,
            "oneOf": [{"required": [h]} for h in BLOCK_HEADS]}


def _outputs() -> dict[str, Any]:
    entry = {"type": "object", "minProperties": 1, "maxProperties": 2,
             "properties": {"when": {"$ref": "#/definitions/when"}},
             "additionalProperties": {"$ref": "#/definitions/tensor"},
             "description": "name: tensor, with an optional when:"}
    return {"description": "the network's outputs: tensor names, or name: tensor entries",
            "anyOf": [{"$ref": "#/definitions/tensor"},
                      {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/definitions/tensor"}},
                      {"type": "array", "minItems": 1, "items": {"anyOf": [{"$ref": "#/definitions/tensor"}, entry]}}]}
