"""The spec grammar as tables: composites and their keys, the keys beside an item, a block's body, argument types.

The parser (core.spec: its key checks, the size pre-count and the conversion of kind arguments) and the JSON Schema
(core.schema) both read these tables, so a new composite key or argument type is written once:

- a composite (`repeat`, `residual`, `parallel`, `sequence`, `cases`) is a `Composite`: its head `Key`, the keys allowed
  beside it (what each holds, whether it is required, its doc), and how many rows it expands to;
- what a key holds (`Holds`) gives its JSON Schema and how the size pre-count counts it;
- an argument type (`Arg.type` of a kind: 'int', 'ints', 'padding', ...) is an `ArgType`: how the parser checks and
  normalizes a value, and its JSON Schema.

The merge ops' names come from core.merges.MERGES.
"""

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from archcalc.core import expr
from archcalc.core.errors import Loc, SpecError, did_you_mean
from archcalc.core.kinds import Arg
from archcalc.core.merges import MERGES

# A layer, block or input name. `(?![\s\S])` (no character follows) rather than `$`, which in Python also
# matches before a final newline: "c1\n" is not a name, in the parser or in the JSON Schema.
NAME_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_-]*(?![\\s\\S])"
# A reference to a named tensor: a name, a full dotted name (`fpn.inner4`), `$input` or `block.$input` (any
# `$` word is left to resolution, whose did-you-mean names `$input`).
TENSOR_PATTERN = ("^(?:[A-Za-z0-9_][A-Za-z0-9_-]*\\.)*\\$?[A-Za-z0-9_][A-Za-z0-9_-]*"
                  "(?![\\s\\S])")
_TENSOR = re.compile(TENSOR_PATTERN)
# In a merge's list: `NAME.*` (the outputs of every copy of the repeat NAME, in order), or a slice of them as
# Python slices a list (`NAME.*[1:]`, `NAME.*[:-1]`, `NAME.*[::2]`).
SPREAD_PATTERN = ("^(?:[A-Za-z0-9_][A-Za-z0-9_-]*\\.)*[A-Za-z0-9_][A-Za-z0-9_-]*\\.\\*"
                  "(?:\\[ *-?[0-9]* *:( *-?[0-9]* *)(?::( *-?[0-9]* *))?\\])?(?![\\s\\S])")
_SPREAD = re.compile(SPREAD_PATTERN)
_SLICE = re.compile(r"\[ *(-?[0-9]*) *:( *-?[0-9]* *)(?::( *-?[0-9]* *))?\]")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHORTCUTS = ("identity", "projection", "projection_conv")

Fragment = dict[str, Any]  # a piece of JSON Schema
EXPRESSION: Fragment = {"$ref": "#/definitions/expression"}
TENSOR: Fragment = {"$ref": "#/definitions/tensor"}


class Tree(NamedTuple):
    """The schema definitions of one item tree (strict: every key is known; loose: a key may call a block)."""

    item: str
    items: str
    body: str

    @classmethod
    def named(cls, s: str) -> "Tree":
        return cls(*(f"#/definitions/{d}.{s}" for d in ("item", "items", "body")))


class Count(Protocol):
    """The size pre-count's view of one composite item (core.spec), for `Composite.rows`."""

    def has(self, key: str) -> bool:
        """Whether the item gives `key`."""

    def rows(self, key: str, **names: int) -> int:
        """The rows the value of `key` expands to (by what the key holds), with `names` bound while counting it."""

    def number(self, key: str) -> int:
        """The value of `key` as a positive integer."""


class Uncountable(Exception):
    """The size pre-count met something only the parser can judge (it reports it in place)."""


# ---- what a key holds -----------------------------------------------------------------------------------------


class Holds(NamedTuple):
    """What the value of a key is: its JSON Schema in an item tree, and the rows it expands to in the size
    pre-count (`rows(value, count)`, where `count` counts an item or a list of items; None: it makes no rows;
    `absent`: the rows when the key is left out)."""

    name: str
    schema: Callable[[Tree], Fragment]
    rows: Callable[[Any, Callable[[Any], int]], int] | None = None
    absent: int = 0


def _branch_rows(value: Any, count: Callable[[Any], int]) -> int:
    if not isinstance(value, list):
        raise Uncountable
    return sum(count(branch) for branch in value)


ITEMS = Holds("items", lambda t: {"$ref": t.items}, lambda v, count: count(v))  # a non-empty list of items
BODY = Holds("body", lambda t: {"$ref": t.body}, lambda v, count: count(v))  # an item or a list of items
BRANCHES = Holds("branches", lambda t: {"type": "array", "minItems": 2, "items": {"$ref": t.body}}, _branch_rows)
# A shortcut by name counts 2 rows (projection's conv and BN: an upper bound), as does the default identity.
SHORTCUT = Holds("shortcut", lambda t: {"anyOf": [{"enum": list(SHORTCUTS)}, {"type": "string"}, {"$ref": t.item},
                                                  {"type": "array", "items": {"$ref": t.item}}]},
                 lambda v, count: count(v) if isinstance(v, (list, dict)) else 2, absent=2)
COUNT = Holds("count", lambda t: {"anyOf": [{"type": "integer", "minimum": 1}, EXPRESSION]})
MERGE = Holds("merge", lambda t: {"anyOf": [{"enum": list(MERGES)}, EXPRESSION]})
NAME = Holds("name", lambda t: {"$ref": "#/definitions/name"})
REF = Holds("tensor", lambda t: TENSOR)
CONDITION = Holds("condition", lambda t: {"$ref": "#/definitions/when"})
BOOL = Holds("bool", lambda t: {"type": "boolean"})
ARGS = Holds("args", lambda t: {"type": ["object", "null"], "additionalProperties": {"$ref": "#/definitions/value"}})
ANY = Holds("any", lambda t: {})


class Key(NamedTuple):
    """One key of an item or a block: its name, what it holds, its doc, whether it is required."""

    name: str
    holds: Holds
    doc: str = ""
    required: bool = False

    def schema(self, tree: Tree) -> Fragment:
        """The key's JSON Schema: what it holds, with its doc (draft-07 ignores keys beside "$ref", so a reference
        with a doc is wrapped in allOf)."""
        fragment = self.holds.schema(tree)
        if not self.doc:
            return fragment
        if "$ref" in fragment:
            return {"description": self.doc, "allOf": [fragment]}
        return {**fragment, "description": self.doc}


# ---- composites -----------------------------------------------------------------------------------------------


class Composite(NamedTuple):
    """A composite item: `head` names it and holds its body; `keys` may stand beside it (with `name`, `from` and
    `when`); `rows` gives the rows it expands to, for the size pre-count that refuses a huge spec before it is
    expanded."""

    head: Key
    keys: tuple[Key, ...]
    rows: Callable[[Count], int]

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def allowed(self) -> tuple[str, ...]:
        """The keys the composite's own check accepts (`from` and `when` are taken off before it)."""
        return (self.name, NAME_KEY.name, *(k.name for k in self.keys))

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys if k.required)

    def key(self, name: str) -> Key:
        return next(k for k in (self.head, *self.keys) if k.name == name)


def _repeat_rows(c: Count) -> int:
    count = c.number("repeat")
    per_copy = c.rows("block", i=1)  # every copy is counted like copy 1; `first` replaces copy 0
    return c.rows("first", i=0) + (count - 1) * per_copy if c.has("first") else count * per_copy


# The order is the JSON Schema's (`archcalc schema`).
COMPOSITES: dict[str, Composite] = {c.name: c for c in (
    Composite(Key("repeat", COUNT, "N copies of `block` (the variable i is the copy's index); `first:` replaces "
                                   "copy 0"),
              (Key("block", BODY, "what each copy is: an item or a list", required=True),
               Key("first", BODY, "copy 0 instead of `block` (the stride-2 block opening a stage)")),
              _repeat_rows),
    Composite(Key("residual", BODY, "the body; the sum with the shortcut, then `after:`"),
              (Key("shortcut", SHORTCUT, "identity | projection (1x1 conv + BN where the shape changes) | "
                                         "projection_conv | a list of layers"),
               Key("after", BODY, "applied to the residual sum")),
              lambda c: c.rows("residual") + c.rows("shortcut") + 1 + c.rows("after")),  # 1: the add
    Composite(Key("parallel", BRANCHES, "branches (a list, a single item, or [] for the identity), merged by "
                                        "`merge:`"),
              (Key("merge", MERGE, "concat (channels; default), add, or mul (broadcast)"),),
              lambda c: c.rows("parallel") + 1),  # 1: the merge
    Composite(Key("sequence", ITEMS, "a named group of layers"), (), lambda c: c.rows("sequence")),
    # Every case is counted: an upper bound, as an item switched off by `when:` is.
    Composite(Key("cases", ITEMS, "alternatives: the first item whose `when:` holds is built (a last item without "
                                  "`when:` is the default); none holding is an error. `name:` names the one built"),
              (), lambda c: c.rows("cases")),
)}

# Beside the head of any item. A merge reads its own list, so it takes no `from`.
NAME_KEY = Key("name", NAME)
FROM_KEY = Key("from", REF, "take the input from this tensor instead of the previous item's output")
WHEN_KEY = Key("when", CONDITION)
DISCARD_KEY = Key("discard", BOOL, "true: computed and counted in every figure, its output never read and freed as "
                                   "soon as it is made; the next item reads what this one read")
BESIDE = (NAME_KEY, FROM_KEY, WHEN_KEY, DISCARD_KEY)
MERGE_BESIDE = (NAME_KEY, WHEN_KEY, DISCARD_KEY)
TRAINABLE_KEY = Key("trainable", BOOL, "false: frozen (no gradients)")  # beside or inside a single layer only

# A block: its own keys, and exactly one head holding its body (the parser's message names them in this order):
# `layers` (read as `sequence`) or a composite, with the composite's keys beside it.
BLOCK_OWN = (
    Key("args", ARGS, "the block's arguments, name: default (~ marks a required one); defaults may use other "
                      "arguments"),
    Key("description", ANY, "what the block is"),
)
BLOCK_LAYERS = Key("layers", ITEMS, "the block's body: a list of layers")
BLOCK_HEADS = (BLOCK_LAYERS.name, "residual", "parallel", "sequence", "repeat")


def block_composite(head: str) -> Composite:
    """The composite a block's body head stands for (`layers` is a sequence)."""
    return COMPOSITES["sequence" if head == BLOCK_LAYERS.name else head]


def composite_keys() -> tuple[str, ...]:
    """Every key beside a composite's head, of every composite (a block body may carry them; the composite's own
    check then refuses those not its own)."""
    return tuple(k.name for c in COMPOSITES.values() for k in c.keys)


def either(names: Iterable[str]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [f"'{n}'" for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)


# ---- argument types -------------------------------------------------------------------------------------------


class Ref(NamedTuple):
    """A reference to a named tensor, as written, with the scope it was written in (for resolution)."""

    text: str
    scope: str
    loc: Loc


class Spread(NamedTuple):
    """`NAME.*` or `NAME.*[start:stop:step]` in a merge's list: the outputs of the copies of the repeat NAME
    (`ref`, resolved like a tensor name), sliced as Python slices a list."""

    ref: Ref
    text: str  # as written
    start: int | None = None
    stop: int | None = None
    step: int | None = None


def merge_ref(value: Any, names: Mapping[str, Any], scope: str, loc: Loc, what: str) -> "Ref | Spread":
    """An entry of a merge's list: a tensor name (tensor_ref), or `NAME.*` / `NAME.*[a:b]` (a Spread)."""
    if isinstance(value, str) and _SPREAD.match(value.strip()):
        text = value.strip()
        head, _, rest = text.partition(".*")
        bounds: list[int | None] = [None, None, None]
        if rest:
            m = _SLICE.fullmatch(rest)
            if m is None:  # the pattern admits only what _SLICE reads
                raise SpecError(loc, f"{what}: {text!r} is not NAME.* or NAME.*[start:stop]")
            bounds = [int(g) if g is not None and g.strip() else None for g in m.groups()]
        if bounds[2] == 0:
            raise SpecError(loc, f"{what}: {text!r}: a slice step cannot be zero")
        return Spread(Ref(head, scope, loc), text, *bounds)
    if isinstance(value, str) and ".*" in value:
        raise SpecError(loc, f"{what}: {value!r} is not a tensor name, NAME.* (every copy of the repeat NAME) or "
                             "NAME.*[start:stop] (a slice of them, as Python slices a list)")
    return tensor_ref(value, names, scope, loc, what)


class At(NamedTuple):
    """Where an argument's value is being checked: the kind, the value's location, the names in scope (block
    arguments and `args`) and the scope a tensor name is resolved from."""

    kind: str
    loc: Loc
    names: Mapping[str, Any]
    scope: str


class ArgType(NamedTuple):
    """An argument type: `convert` checks a value (expressions evaluated first where `evaluated`) and returns it
    normalized, or raises a located SpecError; `schema` gives the JSON Schema alternatives it accepts."""

    name: str
    convert: Callable[[Any, Arg, At], Any]
    schema: Callable[[Arg], list[Fragment]]
    evaluated: bool = True


def describe(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def tensor_name(value: Any, names: Mapping[str, Any]) -> Any:
    """A tensor name as written, or, where it is a block argument holding a name (`skip: down4`), its value."""
    if isinstance(value, str) and isinstance(names.get(value.strip()), str):
        return names[value.strip()]
    return value


def tensor_ref(value: Any, names: Mapping[str, Any], scope: str, loc: Loc, what: str) -> Ref:
    """The reference `value` makes (a tensor name, or a block argument holding one), or a located error: a name
    is letters, digits, '_', '-' and dots between levels, or `$input` — never a newline, a space or nothing."""
    value = tensor_name(value, names)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(loc, f"{what} takes the name of an earlier tensor (a layer, block or input name), not "
                             f"{describe(value)}")
    if not _TENSOR.match(value):
        raise SpecError(loc, f"{what}: {value!r} is not a tensor name (letters, digits, '_', '-', dots between "
                             "levels, or $input; no spaces or line breaks)")
    return Ref(value, scope, loc)


def _where(arg: Arg, at: At) -> str:
    return f"{at.kind} '{arg.name}'"


def _unknown_name(v: Any, arg: Arg, at: At) -> None:
    # One rule for undefined names, alone (`out: num_filters`) or in an expression (`out: 2 * num_filters`).
    if isinstance(v, str) and WORD.fullmatch(v.strip()):
        hint = did_you_mean(v.strip(), at.names) if at.names else " (no variables are defined here)"
        raise SpecError(at.loc, f"{_where(arg, at)}: unknown name '{v.strip()}'{hint}")


def _integer(v: Any, minimum: int | float | None, arg: Arg, at: At) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        _unknown_name(v, arg, at)
        raise SpecError(at.loc, f"{_where(arg, at)} must be an integer, not {describe(v)}")
    if minimum is not None and v < minimum:
        raise SpecError(at.loc, f"{_where(arg, at)} must be at least {minimum}, not {v}")
    if abs(v) > expr.MAX_VALUE:
        raise SpecError(at.loc, f"{_where(arg, at)}: {str(v)[:12]}... exceeds 2**63; sizes that large are not "
                                "meaningful")
    return v


def _ints(v: Any, arg: Arg, at: At) -> int | tuple[int, ...]:
    if isinstance(v, list):
        if not v:
            raise SpecError(at.loc, f"{_where(arg, at)} must be an integer or a non-empty list of integers")
        return tuple(_integer(x, arg.minimum, arg, at) for x in v)
    return _integer(v, arg.minimum, arg, at)


def _float(v: Any, arg: Arg, at: At) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _unknown_name(v, arg, at)
        raise SpecError(at.loc, f"{_where(arg, at)} must be a number, not {describe(v)}")
    if not math.isfinite(v) or abs(v) > expr.MAX_VALUE:
        raise SpecError(at.loc, f"{_where(arg, at)} must be a finite number of sensible size, not {v}")
    if arg.minimum is not None and v < arg.minimum:
        raise SpecError(at.loc, f"{_where(arg, at)} must be at least {arg.minimum}, not {v}")
    return float(v)


def _bool(v: Any, arg: Arg, at: At) -> bool:
    if not isinstance(v, bool):
        raise SpecError(at.loc, f"{_where(arg, at)} must be true or false, not {describe(v)}")
    return v


def _choice(v: Any, arg: Arg, at: At) -> Any:
    if v not in arg.choices:
        raise SpecError(at.loc, f"{_where(arg, at)} must be one of {', '.join(map(str, arg.choices))}, not {v!r}"
                        + (did_you_mean(v, map(str, arg.choices)) if isinstance(v, str) else ""))
    return v


def _padding(v: Any, arg: Arg, at: At) -> Any:
    if isinstance(v, str):
        if v.lower() not in ("same", "valid"):
            raise SpecError(at.loc, f"{_where(arg, at)} must be an integer, a list, 'same' or 'valid', not {v!r}"
                            + did_you_mean(v.lower(), ("same", "valid")))
        return v.lower()
    if isinstance(v, list):
        out: list[Any] = []
        for x in v:
            if isinstance(x, list):
                if len(x) != 2:
                    raise SpecError(at.loc, f"{_where(arg, at)}: a per-axis pair is [before, after], not {x!r}")
                out.append((_integer(x[0], 0, arg, at), _integer(x[1], 0, arg, at)))
            else:
                out.append(_integer(x, 0, arg, at))
        if not out:
            raise SpecError(at.loc, f"{_where(arg, at)} must not be an empty list")
        return tuple(out)
    return _integer(v, 0, arg, at)


def _ref(v: Any, arg: Arg, at: At) -> Ref:
    return tensor_ref(v, at.names, at.scope, at.loc, _where(arg, at))


def _minimum(arg: Arg) -> Fragment:
    return {} if arg.minimum is None else {"minimum": arg.minimum}


def _ints_schema(arg: Arg) -> list[Fragment]:
    integer = {"type": "integer", **_minimum(arg)}
    return [integer, EXPRESSION, {"type": "array", "minItems": 1, "items": {"anyOf": [integer, EXPRESSION]}}]


def _padding_schema(arg: Arg) -> list[Fragment]:
    pad = {"type": "integer", "minimum": 0}
    pair = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"anyOf": [pad, EXPRESSION]}}
    return [pad, {"enum": ["same", "valid"]}, EXPRESSION,
            {"type": "array", "minItems": 1, "items": {"anyOf": [pad, EXPRESSION, pair]}}]


# Where the spec language evaluates a string (an expression, or the bare name of an argument), the schema takes
# any string (EXPRESSION), so it never refuses a value the parser accepts.
ARG_TYPES: dict[str, ArgType] = {t.name: t for t in (
    ArgType("int", lambda v, arg, at: _integer(v, arg.minimum, arg, at),
            lambda arg: [{"type": "integer", **_minimum(arg)}, EXPRESSION]),
    ArgType("ints", _ints, _ints_schema),  # an int, or one per spatial axis
    ArgType("ints_or_none", lambda v, arg, at: None if v is None else _ints(v, arg, at),
            lambda arg: [{"type": "null"}, *_ints_schema(arg)]),
    ArgType("float", _float, lambda arg: [{"type": "number", **_minimum(arg)}, EXPRESSION]),
    ArgType("bool", _bool, lambda arg: [{"type": "boolean"}, EXPRESSION]),
    ArgType("str", _choice, lambda arg: [{"enum": list(arg.choices)}, EXPRESSION]),  # one of arg.choices
    ArgType("padding", _padding, _padding_schema),  # ints, [before, after] pairs, 'same' or 'valid'
    ArgType("ref", _ref, lambda arg: [TENSOR], evaluated=False),  # the name of an earlier tensor, as written
)}


def arg_type(arg: Arg) -> ArgType:
    try:
        return ARG_TYPES[arg.type]
    except KeyError:
        raise LookupError(f"argument '{arg.name}' has unknown type {arg.type!r}; argument types are "
                          f"{', '.join(ARG_TYPES)}") from None  # a bug in a kind's declaration
