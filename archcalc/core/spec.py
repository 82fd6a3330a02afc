"""Parse a YAML spec into a Spec: frozen nodes, blocks expanded, names assigned, source positions kept.

Item grammar (each entry of a `layers` list):
    - relu                                   a kind or block with no arguments
    - conv: {out: 64, kernel: 3, padding: 1} a kind (or block) with arguments; `name:` may sit inside or beside
    - repeat: 3                              N copies of `block` (an item or a list), `first:` replaces copy 0
      block: {bottleneck: {width: 64}}
    - residual: [...]                        body + shortcut (identity | projection | projection_conv | [items])
      shortcut: projection                   + `after: [...]` applied to the sum
    - parallel: [[...], [...]]               branches (a list, a single item, or [] for identity) merged by
      merge: concat                          `concat` (channels), `add`, or `mul` (broadcast: squeeze-excitation)
    - sequence: [...]                        a named group
    - add: [down4, up4]                      a merge (add, concat, mul) of earlier named tensors

Beside the head of any item: `name:`, `from: <name>` (take the input from an earlier named tensor instead of the
previous item's output; names resolve innermost scope first, then as a unique suffix of a full name; `$input` is
the input of the innermost enclosing block or group, so a block can add its own input), and
`when: <expression>` (inside blocks: the item exists only when the expression is true). A spec may name several
`inputs:` and `outputs:`; see README's "Graphs" section.

The grammar of composites, the keys beside an item, a block's body and the argument types is one table,
core.grammar, which the JSON Schema (core.schema) reads too.

Expansion is bounded: at most MAX_NESTING composites and blocks inside each other, and at most `max_layers` rows
(layers and merge ops) after every block and repeat is expanded; a repeat is checked before its copies are made.
"""

import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, Union

from archcalc.core import expr, yamlsrc
from archcalc.core.errors import Loc, SpecError, did_you_mean, paused_gc
from archcalc.core.grammar import (
    BLOCK_HEADS,
    BLOCK_LAYERS,
    BLOCK_OWN,
    COMPOSITES,
    NAME_PATTERN,
    SHORTCUTS,
    WORD,
    At,
    Composite,
    Ref,
    Spread,
    Uncountable,
    arg_type,
    block_composite,
    composite_keys,
    describe,
    either,
    merge_ref,
    tensor_ref,
)
from archcalc.core.kinds import REGISTRY, Arg, Kind, suggest_kind
from archcalc.core.merges import MERGES
from archcalc.core.yamlsrc import Map, Seq

TOP_KEYS = ("name", "description", "source", "family", "input", "inputs", "outputs", "unused", "args", "defaults",
            "blocks", "layers", "extends", "notes")
_NAME = re.compile(NAME_PATTERN)
BLOCK_INPUT = "$input"  # a reference to the input of the innermost enclosing block or group
MAX_LAYERS = 100_000  # rows after expansion; the zoo's largest network has 1,100. Raise with --max-layers.
MAX_SPEC_BYTES = 8 * 2**20  # a spec file; reading and parsing 8 MiB takes about 5 s and 1.2 GB
MAX_NESTING = 64  # composites and block calls inside each other (the zoo's deepest: 6)


class Layer(NamedTuple):
    name: str
    kind: Kind
    args: Mapping[str, Any]
    loc: Loc
    trainable: bool = True
    src: Ref | None = None  # `from:`; None: the previous item's output
    discard: bool = False  # `discard: true`: computed and counted, its output never read (core.analyze)


class Sequence(NamedTuple):
    name: str
    label: str
    children: "tuple[Node, ...]"
    loc: Loc
    src: Ref | None = None
    discard: bool = False
    copies: bool = False  # a repeat: its children are its copies, whose outputs `NAME.*` lists in a merge


class Parallel(NamedTuple):
    name: str
    label: str
    branches: tuple[Sequence, ...]
    merge: str
    loc: Loc
    src: Ref | None = None
    discard: bool = False


class Residual(NamedTuple):
    name: str
    label: str
    body: Sequence
    shortcut: Sequence | str  # a sequence of layers, or one of SHORTCUTS
    after: Sequence
    loc: Loc
    src: Ref | None = None
    discard: bool = False


class Merge(NamedTuple):
    """`- add: [a, b]`: a merge of earlier named tensors (`m.*`: every copy of the repeat m, core.grammar.Spread)."""

    name: str
    op: str
    refs: tuple[Ref | Spread, ...]
    loc: Loc
    src: None = None
    discard: bool = False


Node = Union[Layer, Sequence, Parallel, Residual, Merge]


class Input(NamedTuple):
    name: str
    shape: tuple[int, ...]
    loc: Loc


class Output(NamedTuple):
    name: str
    ref: Ref


class Spec(NamedTuple):
    name: str
    path: str
    input: tuple[int, ...]  # the first input's shape
    input_loc: Loc
    root: Sequence
    description: str = ""
    source: str = ""
    args: Mapping[str, Any] = MappingProxyType({})
    inputs: tuple[Input, ...] = ()  # every named input; the first is what the first layer reads
    outputs: tuple[Output, ...] = ()  # empty: the last item's output, named 'output'
    unused: str = "error"  # or 'allow': layers no output depends on are a warning and left out of the totals


# ---- loading ----------------------------------------------------------------------------------------------------


def open_spec(ref: str, overrides: Mapping[str, str] | None = None, max_layers: int = MAX_LAYERS) -> Spec:
    """Load a spec given as a path or as the name of a bundled spec (`vgg16`, `torchvision/resnet50`)."""
    from archcalc.core.resolve import resolve_spec

    path = resolve_spec(ref)
    return load_spec(path, display_path(path), overrides, max_layers)


def load_spec(path: str | Path, display: str | None = None, overrides: Mapping[str, str] | None = None,
              max_layers: int = MAX_LAYERS) -> Spec:
    """Read, merge (`extends`) and parse a spec file. `overrides` replace values of the spec's `args` (--set); at
    most `max_layers` rows after expansion."""
    data = load_merged(Path(path), display or str(path), ())
    return parse_spec(data, display or str(path), overrides, max_layers)


def parse_spec(data: Map, display: str, overrides: Mapping[str, str] | None = None,
               max_layers: int = MAX_LAYERS) -> Spec:
    """Parse merged spec data (from load_merged); the data is not changed, so one read serves many overrides."""
    with paused_gc():
        return _Parser(data, display, overrides, max_layers).parse()


def _read(path: Path, display: str) -> Map:
    try:
        with path.open("rb") as file:  # read no more than the limit and one byte, whatever the file claims to be
            raw = file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(None, f"{display}: no such spec file") from None
    except OSError as exc:
        raise SpecError(None, f"{display}: cannot read spec: {exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(Loc(display, 1, 1), f"the spec file is larger than {MAX_SPEC_BYTES // 2**20} MiB, the limit "
                                           "(the zoo's largest is under 6 KB; 100,000 layers written out take about "
                                           "4 MiB); describe repeated layers with blocks or 'repeat:'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise SpecError(Loc(display, line, col), f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset "
                                                 f"{exc.start:,} cannot be decoded; save the spec as UTF-8") from None
    data = yamlsrc.load(text, display)
    if data is None:
        raise SpecError(Loc(display, 1, 1), "the spec is empty; expected a mapping with at least 'name', 'input' "
                                           "and 'layers'")
    if not isinstance(data, Map):
        raise SpecError(Loc(display, 1, 1), f"the spec must be a mapping (name:, input:, layers:), "
                                           f"not a {type(data).__name__}")
    return data


def load_merged(path: Path, display: str, chain: tuple[str, ...]) -> Map:
    data = _read(path, display)
    if "extends" not in data:
        return data
    parent_ref = data["extends"]
    if not isinstance(parent_ref, str):
        raise SpecError(data.value_loc("extends"), "'extends' takes a spec name or a path to a .yaml file")
    from archcalc.core.resolve import resolve_spec

    parent_path = resolve_spec(parent_ref, relative_to=path.parent, loc=data.value_loc("extends"))
    key = str(parent_path.resolve())
    if key in chain or key == str(path.resolve()):
        raise SpecError(data.value_loc("extends"), f"'extends: {parent_ref}' makes a cycle of specs")
    parent = load_merged(parent_path, display_path(parent_path), chain + (str(path.resolve()),))
    merged = Map.derived(parent, data.loc, _key_locs(parent), _value_locs(parent))
    for key_, value in data.items():
        if key_ == "extends":
            continue
        if key_ in ("args", "defaults", "blocks") and isinstance(value, Map) and isinstance(parent.get(key_), Map):
            base = parent[key_]
            combined = Map.derived(base, value.loc, {**_key_locs(base), **_key_locs(value)},
                                   {**_value_locs(base), **_value_locs(value)})
            for k, v in value.items():
                if key_ == "defaults" and isinstance(v, Map) and isinstance(combined.get(k), Map):
                    old = combined[k]
                    v = Map.derived({**old, **v}, v.loc, {**_key_locs(old), **_key_locs(v)},
                                    {**_value_locs(old), **_value_locs(v)})
                combined[k] = v
            value = combined
        merged[key_] = value
        merged.key_marks[key_] = data.key_loc(key_)
        merged.value_marks[key_] = data.value_loc(key_)
    return merged


def _key_locs(m: Map) -> dict[Any, Loc]:
    return {k: m.key_loc(k) for k in m}


def _value_locs(m: Map) -> dict[Any, Loc]:
    return {k: m.value_loc(k) for k in m}


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---- parsing ----------------------------------------------------------------------------------------------------


class _Scope:
    """The names given so far inside one block (mutable while parsing, never passed on)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counters: dict[str, int] = {}
        self.names: dict[str, Loc] = {}

    def child_name(self, given: str | None, default_prefix: str, loc: Loc) -> str:
        if given is None:
            n = self.counters.get(default_prefix, 0) + 1
            self.counters[default_prefix] = n
            given = f"{default_prefix}{n}"
            while given in self.names:  # a user name took it; skip ahead
                n += 1
                self.counters[default_prefix] = n
                given = f"{default_prefix}{n}"
        if given in self.names:
            raise SpecError(loc, f"duplicate name '{self.full(given)}' (first used at {self.names[given]})")
        self.names[given] = loc
        return self.full(given)

    def full(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


_KEY_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")
"""What an unknown top-level key may look like to be echoed in its error (a word, as a misspelt key is)."""


class _Parser:
    def __init__(self, data: Map, path: str, overrides: Mapping[str, str] | None = None,
                 max_layers: int = MAX_LAYERS) -> None:
        self.data = data
        self.path = path
        self.overrides = overrides or {}
        self.max_layers = max_layers
        self.rows = 0  # layers and merge ops made so far, against max_layers
        self.nesting = 0
        self.used: dict[str, set[str]] = {}  # block name -> the names its body refers to
        self.blocks: Map = Map_empty(data.loc)
        self.defaults: dict[str, Map] = {}
        self.globals: dict[str, Any] = {}

    # -- top level --
    def parse(self) -> Spec:
        data = self.data
        for key in data:
            if key not in TOP_KEYS:
                if not (isinstance(key, str) and _KEY_LIKE.fullmatch(key)):
                    # Not a word: likely not a spec at all (`extends: /etc/shadow`). Its text is not echoed: an
                    # error in a public CI log must not print the content of any readable file.
                    raise SpecError(data.key_loc(key), "this is not an archcalc spec: a top-level key here is not a "
                                                       "word (its text is not shown); a spec's keys are "
                                                       f"{', '.join(TOP_KEYS)}")
                raise SpecError(data.key_loc(key), f"unknown top-level key '{key}'{did_you_mean(str(key), TOP_KEYS)}")
        for key in ("name", "layers"):
            if key not in data:
                raise SpecError(data.loc, f"the spec has no '{key}'; a spec needs name, input and layers")
        if ("input" in data) == ("inputs" in data):
            if "input" in data:
                raise SpecError(data.key_loc("inputs"), "give either 'input' (one input) or 'inputs' (named "
                                                        "inputs), not both")
            raise SpecError(data.loc, "the spec has no 'input'; a spec needs name, input and layers")
        name = data["name"]
        if not isinstance(name, str) or not name.strip():
            raise SpecError(data.value_loc("name"), "'name' must be a non-empty string")
        for key in ("description", "source", "family", "notes"):
            if key in data and not isinstance(data[key], str):
                raise SpecError(data.value_loc(key), f"'{key}' must be a string")
        inputs = self._inputs(data)
        if "args" in data:
            args = self._mapping(data, "args")
            for key in args:
                if not isinstance(key, str) or not WORD.fullmatch(key):
                    raise SpecError(args.key_loc(key), f"argument name {key!r} must be a word (letters, digits, "
                                                       "'_'); YAML reads on, off, yes, no as true or false: quote it")
            self.globals = {k: self._value(v, args.value_loc(k), {}) for k, v in args.items()}
        if self.overrides:
            self._override(data.value_loc("args") if "args" in data else data.loc)
        if "defaults" in data:
            defaults = self._mapping(data, "defaults")
            for kind_name, values in defaults.items():
                kind = self._kind(str(kind_name), defaults.key_loc(kind_name))
                if not isinstance(values, Map):
                    raise SpecError(defaults.value_loc(kind_name), f"defaults for '{kind_name}' must be a mapping "
                                                                   "of argument: value")
                for arg_name in values:
                    self._arg(kind, str(arg_name), values.key_loc(arg_name))
                self.defaults[kind.name] = values
        if "blocks" in data:
            self.blocks = self._mapping(data, "blocks")
            for block_name in self.blocks:
                loc = self.blocks.key_loc(block_name)
                if block_name in REGISTRY or block_name in COMPOSITES:
                    raise SpecError(loc, f"block name '{block_name}' is already a layer kind; choose another name")
                if block_name in MERGES:  # `- add: {...}` would be read as the merge
                    raise SpecError(loc, f"block name '{block_name}' is already a merge; choose another name")
                if not isinstance(block_name, str) or not _NAME.fullmatch(block_name):
                    raise SpecError(loc, f"block name '{block_name}' must be letters, digits, '_' or '-'")
                if not isinstance(self.blocks[block_name], Map):
                    raise SpecError(self.blocks.value_loc(block_name), f"block '{block_name}' must be a mapping "
                                    "with 'args' and one of layers / residual / parallel")
        layers = data["layers"]
        if not isinstance(layers, Seq) or not layers:
            raise SpecError(data.value_loc("layers"), "'layers' must be a non-empty list of layers")
        top = _Scope("")
        for inp in inputs:
            top.names[inp.name] = inp.loc
        self._check_size(layers, data.value_loc("layers"))
        root = self._sequence(layers, top, dict(self.globals), "model", "", data.value_loc("layers"), ())
        unused = "error"
        if "unused" in data:
            unused = data["unused"]
            if unused not in ("error", "allow"):
                raise SpecError(data.value_loc("unused"), f"'unused' must be 'error' or 'allow', not {unused!r}")
        return Spec(name=name.strip(), path=self.path, input=inputs[0].shape, input_loc=inputs[0].loc, root=root,
                    description=str(data.get("description", "")).strip(), source=str(data.get("source", "")).strip(),
                    args=MappingProxyType(dict(self.globals)), inputs=tuple(inputs),
                    outputs=self._outputs(data), unused=unused)

    def _inputs(self, data: Map) -> list[Input]:
        if "input" in data:
            return [Input("input", parse_input(data["input"], data.value_loc("input")), data.value_loc("input"))]
        raw = data["inputs"]
        if not isinstance(raw, Map) or not raw:
            raise SpecError(data.value_loc("inputs"), "'inputs' must be a mapping of name: shape, e.g. "
                                                      "{image: [3, 224, 224], mask: [1, 224, 224]}")
        result = []
        for key, value in raw.items():
            if not isinstance(key, str) or not _NAME.fullmatch(key):
                raise SpecError(raw.key_loc(key), f"input name {key!r} must be letters, digits, '_' or '-'")
            result.append(Input(key, parse_input(value, raw.value_loc(key)), raw.value_loc(key)))
        return result

    def _outputs(self, data: Map) -> tuple[Output, ...]:
        if "outputs" not in data:
            return ()
        raw = data["outputs"]
        loc = data.value_loc("outputs")
        if isinstance(raw, str):
            raw = self._as_seq(raw, loc)
        entries: list[tuple[Any, Any, Loc]] = []
        if isinstance(raw, Map):
            entries = [(k, v, raw.value_loc(k)) for k, v in raw.items()]
        elif isinstance(raw, Seq) and raw:
            for i, item in enumerate(raw):
                iloc = raw.item_loc(i)
                if isinstance(item, Map) and "when" in item:
                    if not self._when(item, dict(self.globals)):
                        continue
                    item = Map.derived({k: v for k, v in item.items() if k != "when"}, item.loc,
                                       {k: item.key_loc(k) for k in item}, {k: item.value_loc(k) for k in item})
                if isinstance(item, Map) and len(item) == 1:
                    key = next(iter(item))
                    entries.append((key, item[key], item.value_loc(key)))
                elif isinstance(item, str):
                    entries.append((item, item, iloc))
                else:
                    raise SpecError(iloc, "an output is a tensor name (- out) or name: tensor (- aux: aux.fc)")
        else:
            raise SpecError(loc, "'outputs' must be a list of tensor names or a mapping of output name: tensor")
        outputs, seen = [], set()
        for key, value, vloc in entries:
            if not isinstance(value, str) or not isinstance(key, str):
                raise SpecError(vloc, f"output {key!r}: expected the name of a tensor, not {describe(value)}")
            if key in seen:
                raise SpecError(vloc, f"output '{key}' named twice")
            seen.add(key)
            outputs.append(Output(key, tensor_ref(value, {}, "", vloc, f"output '{key}'")))
        if not outputs:
            raise SpecError(loc, "'outputs' names no output (every entry is switched off by its 'when')")
        return tuple(outputs)

    def _when(self, item: Map, names: Mapping[str, Any]) -> bool:
        """`when:` — true, false, a number (0 is false) or a condition: an expression of the block's arguments with
        comparisons, `and`, `or`, `not` (`se > 0`, `se and dw`, `not se`). Anything else (null, a list, a mapping,
        an expression that gives a word) is refused: an item must never be dropped by a value that is no condition."""
        raw, loc = item["when"], item.value_loc("when")
        value = raw
        if isinstance(raw, str) and raw.strip():
            try:  # always the evaluator: `se and dw` has no operator character, yet is a condition
                value = expr.evaluate(raw, names)
            except expr.ExprError as exc:
                raise SpecError(loc, f"when: {exc}") from None
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value != 0
        what = "null (an empty value)" if raw is None else "an empty string" if raw == "" else describe(raw)
        gives = f"'{raw}' gives {describe(value)}, which is" if raw is not value else f"{what} is"
        raise SpecError(loc, f"'when' takes a condition on block arguments (se > 0, se and dw, not se), true, "
                             f"false or a number; {gives} not a condition")

    def _ref(self, item: Map, key: str, scope: _Scope, names: Mapping[str, Any]) -> Ref:
        return tensor_ref(item[key], names, scope.prefix, item.value_loc(key), f"'{key}'")

    def _override(self, loc: Loc) -> None:
        """Apply `--set NAME=VALUE`: the value is read as YAML (0.75, true, [1, 2], same) and then, like any value
        in the spec, through the safe evaluator, with the spec's other args as names (`--set d3=2*d2`)."""
        import yaml

        for key, text in self.overrides.items():
            if key not in self.globals:
                declared = sorted(self.globals)
                hint = did_you_mean(key, declared) if declared else "; the spec declares no args"
                raise SpecError(loc, f"--set {key}={text}: the spec has no argument '{key}'{hint}")
            try:
                raw = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                raw = text
            except ValueError as exc:  # a tag that does not fit its value (`!!int x`), an int past 4,300 digits
                raise SpecError(loc, f"--set {key}: cannot read the value: {exc}") from None
            except RecursionError:  # the pure-Python composer on absurd nesting ([[[[...)
                raise SpecError(loc, f"--set {key}: the value is nested too deeply") from None
            try:
                yamlsrc.check_aliases(raw, loc)
            except SpecError as exc:
                raise SpecError(loc, f"--set {key}: {exc.message}") from None
            if isinstance(raw, dict):
                raise SpecError(loc, f"--set {key}={text}: expected a value, not a mapping")
            if isinstance(raw, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw.strip()):
                try:
                    raw = expr.evaluate(raw, self.globals)
                except expr.ExprError as exc:
                    raise SpecError(loc, f"--set {key}={text}: {exc}") from None
            elif isinstance(raw, str) and raw.strip() in self.globals:
                raw = self.globals[raw.strip()]
            self.globals[key] = raw

    # -- the size after expansion, counted before expanding --
    def _check_size(self, layers: Seq, loc: Loc) -> None:
        """Count the rows the spec will expand to without expanding it (block calls are counted once per distinct
        set of arguments), and refuse a spec beyond max_layers with the figure. Anything the count cannot follow
        (an error, a repeat count that depends on `i`) is left to the parser, which reports it in place and
        checks the limit again as it goes."""
        memo: dict[Any, int] = {}
        try:
            sizes = [self._size(item, dict(self.globals), (), memo) for item in layers]
        except (Uncountable, SpecError):
            return
        total = sum(sizes)
        if total > self.max_layers:
            loc = layers.item_loc(sizes.index(max(sizes)))  # the item that contributes most
            raise SpecError(loc, f"the spec expands to {total:,} layers (blocks and repeats expanded), more than the "
                                 f"limit of {self.max_layers:,}; raise it with --max-layers if that is intended")

    def _size_list(self, items: Any, names: dict[str, Any], stack: tuple[str, ...], memo: dict[Any, int]) -> int:
        if isinstance(items, list):
            return sum(self._size(item, names, stack, memo) for item in items)
        return self._size(items, names, stack, memo)

    def _size(self, item: Any, names: dict[str, Any], stack: tuple[str, ...], memo: dict[Any, int]) -> int:
        if len(stack) > MAX_NESTING:
            raise Uncountable
        if isinstance(item, str):
            if item in COMPOSITES or item in MERGES:
                raise Uncountable
            head, raw = item, None
        elif isinstance(item, Map) and item:
            heads = [k for k in item if k in COMPOSITES or k in REGISTRY or k in self.blocks or k in MERGES]
            if len(heads) != 1:
                raise Uncountable
            head, raw = heads[0], item[heads[0]]
        else:
            raise Uncountable
        if head in REGISTRY or head in MERGES:  # (an item whose `when:` is false is counted too: an upper bound)
            return 1
        if head in COMPOSITES:
            return COMPOSITES[head].rows(_Count(self, COMPOSITES[head], item, names, stack, memo))
        if head not in self.blocks or head in stack or not isinstance(self.blocks[head], Map):
            raise Uncountable
        body: Map = self.blocks[head]
        declared = body.get("args") or Map_empty(body.loc)
        if not isinstance(declared, Map) or raw is not None and not isinstance(raw, Map):
            raise Uncountable
        raw = raw or {}
        values: dict[str, Any] = dict(self.globals)
        for arg_name, default in declared.items():
            if arg_name in raw:
                values[arg_name] = self._value(raw[arg_name], item.loc, names)
            elif default is None:
                raise Uncountable
        for arg_name, default in declared.items():
            if arg_name not in raw:
                values[arg_name] = self._value(default, declared.value_loc(arg_name), values)
        key = (head, repr(sorted((k, repr(v)) for k, v in values.items() if k in declared)))
        if key not in memo:
            memo[key] = self._size(_block_body(body), values, stack + (head,), memo)
        return memo[key]

    def _mapping(self, data: Map, key: str) -> Map:
        value = data[key]
        if not isinstance(value, Map):
            raise SpecError(data.value_loc(key), f"'{key}' must be a mapping")
        return value

    # -- items --
    def _sequence(self, items: Any, scope: _Scope, names: dict[str, Any], label: str, full_name: str, loc: Loc,
                  stack: tuple[str, ...]) -> Sequence:
        if not isinstance(items, Seq):
            items_seq = Seq([items])
            items_seq.loc = loc
            items_seq.item_locs = [loc]
            items = items_seq
        children = tuple(child for i, item in enumerate(items)
                         if (child := self._item(item, items.item_loc(i), scope, names, stack)) is not None)
        return Sequence(full_name, label, children, loc)

    def _item(self, item: Any, loc: Loc, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...],
              forced_name: str | None = None) -> Node | None:
        """The node for one list entry, or None when its `when:` is false."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise SpecError(loc, f"layers nested more than {MAX_NESTING} levels deep (composites and blocks inside "
                                 "each other" + (f": {' -> '.join(stack[:4])} -> ... -> {stack[-1]}" if stack else "")
                            + ")")
        try:
            return self._item_body(item, loc, scope, names, stack, forced_name)
        finally:
            self.nesting -= 1

    def count(self, loc: Loc, n: int = 1) -> None:
        self.rows += n
        if self.rows > self.max_layers:
            raise SpecError(loc, f"the spec expands to more than {self.max_layers:,} layers (blocks and repeats "
                                 "expanded); raise the limit with --max-layers if that is intended")

    def _item_body(self, item: Any, loc: Loc, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...],
                   forced_name: str | None) -> Node | None:
        if isinstance(item, str):
            return self._call(item, None, Map_empty(loc), loc, loc, scope, names, stack, forced_name, None)
        if not isinstance(item, Map) or not item:
            raise SpecError(loc, "a layer is a kind name (- relu) or a one-key mapping (- conv: {out: 64, kernel: 3})"
                                 f", not {describe(item)}")
        if "when" in item and not self._when(item, names):
            self._check_off(item, scope, names)
            return None
        src = self._ref(item, "from", scope, names) if "from" in item else None
        discard = self._bool(item, "discard") if "discard" in item else False
        if src is not None or "when" in item or "discard" in item:
            keep = [k for k in item if k not in _BESIDE_TAKEN]
            item = Map.derived({k: item[k] for k in keep}, item.loc, {k: item.key_loc(k) for k in keep},
                               {k: item.value_loc(k) for k in keep})
        node = self._item_node(item, loc, scope, names, stack, forced_name)
        if src is not None:
            if isinstance(node, Merge):
                raise SpecError(src.loc, f"a merge takes its inputs from its own list ({node.op}: [a, b]), not "
                                         "from 'from'")
            node = node._replace(src=src)
        if discard:
            node = node._replace(discard=True)
        return node

    def _check_off(self, item: Map, scope: _Scope, names: dict[str, Any]) -> None:
        """An item switched off by `when:` is not built, but what does not depend on the arguments that switch it
        off is checked, as the JSON Schema checks it: one known head, the keys beside it, a kind's or block's
        argument names, a composite's required keys, a merge's list, `from:`. Argument values are not evaluated
        (they may be meaningful only where the item is on), nor the items inside a composite."""
        heads = [k for k in item if k in COMPOSITES or k in REGISTRY or k in self.blocks or k in MERGES]
        if len(heads) != 1:
            if not heads:
                key = next(k for k in item if k != "when") if len(item) > 1 else "when"
                if key == "when":
                    raise SpecError(item.loc, "an item with 'when' needs a layer, block, composite or merge beside it")
                raise SpecError(item.key_loc(key), self._unknown_kind(str(key)))
            raise SpecError(item.loc, f"one layer per list entry; found {', '.join(map(str, heads))} together")
        head = heads[0]
        if "from" in item:
            if head in MERGES:
                raise SpecError(item.value_loc("from"), f"a merge takes its inputs from its own list ({head}: [a, b]), "
                                                        "not from 'from'")
            self._ref(item, "from", scope, names)
        if "discard" in item:
            self._bool(item, "discard")
        rest = Map.derived({k: item[k] for k in item if k not in _BESIDE_TAKEN}, item.loc,
                           {k: item.key_loc(k) for k in item}, {k: item.value_loc(k) for k in item})
        if "name" in rest:
            self._name(rest, "name")
        if head in COMPOSITES:
            self._keys(rest, COMPOSITES[head])
            return
        beside = ("name",) if head in MERGES else ("name", "trainable")
        for key in rest:
            if key != head and key not in beside:
                raise SpecError(rest.key_loc(key), f"unexpected key '{key}' beside '{head}'")
        raw = rest[head]
        if head in MERGES:
            raw = raw.get("from") if isinstance(raw, Map) else raw
            self._merge_refs(head, raw, rest.value_loc(head), scope, names)
            return
        if raw is not None and not isinstance(raw, Map):
            raise SpecError(rest.value_loc(head), f"arguments of '{head}' must be a mapping ({head}: {{arg: value}}),"
                                                  f" not {describe(raw)}")
        if raw is None:
            return
        for key in raw:
            if key in ("name", "trainable"):
                continue
            if head in REGISTRY:
                self._arg(REGISTRY[head], str(key), raw.key_loc(key))
            else:
                declared = self.blocks[head].get("args") if isinstance(self.blocks[head], Map) else None
                if isinstance(declared, Map) and key not in declared:
                    raise SpecError(raw.key_loc(key), f"block '{head}' has no argument '{key}'"
                                    f"{did_you_mean(str(key), declared)}")

    def _item_node(self, item: Map, loc: Loc, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...],
                   forced_name: str | None) -> Node:
        heads = [k for k in item if k in COMPOSITES or k in REGISTRY or k in self.blocks or k in MERGES]
        if len(heads) != 1:
            if not heads:
                key = next(iter(item))
                raise SpecError(item.key_loc(key), self._unknown_kind(str(key)))
            raise SpecError(item.loc, f"one layer per list entry; found {', '.join(map(str, heads))} together")
        head = heads[0]
        given = self._name(item, "name") if "name" in item else None
        name = forced_name if forced_name is not None else given
        if head in MERGES:
            return self._merge(item, head, scope, name, names)
        if head in COMPOSITES:
            return _COMPOSITE_METHODS[head](self, item, scope, names, stack, name)
        allowed = {head, "name", "trainable"}
        for key in item:
            if key not in allowed:
                raise SpecError(item.key_loc(key), f"unexpected key '{key}' beside '{head}'; put arguments inside "
                                f"the mapping ({head}: {{{key}: ...}})")
        trainable = self._bool(item, "trainable") if "trainable" in item else None
        return self._call(head, item[head], item, item.key_loc(head), item.value_loc(head), scope, names, stack, name,
                          trainable)

    def _call(self, head: str, raw: Any, item: Map, loc: Loc, args_loc: Loc, scope: _Scope, names: dict[str, Any],
              stack: tuple[str, ...], name: str | None, trainable: bool | None) -> Node:
        if raw is None:
            raw = Map_empty(args_loc)
        if not isinstance(raw, Map):
            raise SpecError(args_loc, f"arguments of '{head}' must be a mapping ({head}: {{arg: value}}), "
                            f"not {describe(raw)}")
        if "name" in raw:
            if name is not None and "name" in item:
                raise SpecError(raw.key_loc("name"), "the layer is named twice")
            name = self._name(raw, "name") if name is None else name
        if "trainable" in raw:
            trainable = self._bool(raw, "trainable")
        if head in REGISTRY:
            kind = REGISTRY[head]
            full = scope.child_name(name, kind.name_prefix, loc)
            self.count(loc)
            args = self._kind_args(kind, raw, names, loc, scope)
            return Layer(full, kind, MappingProxyType(args), loc, trainable if trainable is not None else True)
        if head not in self.blocks:
            raise SpecError(loc, self._unknown_kind(head))
        if head in stack:
            raise SpecError(loc, f"block '{head}' is recursive ({' -> '.join(stack + (head,))})")
        return self._block(head, raw, loc, scope, names, stack + (head,), name, trainable)

    def _block(self, block_name: str, raw: Map, loc: Loc, scope: _Scope, names: dict[str, Any],
               stack: tuple[str, ...], name: str | None, trainable: bool | None) -> Node:
        body = self.blocks[block_name]
        declared: Map = body.get("args") or Map_empty(body.loc)
        if not isinstance(declared, Map):
            raise SpecError(body.value_loc("args"), f"block '{block_name}': 'args' must be a mapping of "
                                                    "name: default (~ for required)")
        values: dict[str, Any] = dict(self.globals)
        for arg_name, default in declared.items():
            if arg_name in raw:
                values[arg_name] = self._value(raw[arg_name], raw.value_loc(arg_name), names)
            elif default is None:
                raise SpecError(loc, f"block '{block_name}' needs argument '{arg_name}'")
            else:
                values[arg_name] = default
        for arg_name in raw:
            if arg_name not in declared and arg_name not in ("name", "trainable"):
                raise SpecError(raw.key_loc(arg_name), f"block '{block_name}' has no argument '{arg_name}'"
                                f"{did_you_mean(str(arg_name), declared)}")
            if arg_name in declared and arg_name not in self._used(block_name, body):
                raise SpecError(raw.key_loc(arg_name), f"block '{block_name}' never uses its argument '{arg_name}' "
                                "(nothing in its body refers to it), so this value would change nothing")
        # Defaults may refer to other arguments (`mid: width // 4`): evaluate them in the block's scope.
        for arg_name, default in declared.items():
            if arg_name not in raw and default is not None:
                values[arg_name] = self._value(default, declared.value_loc(arg_name), values)
        heads = [k for k in body if k in BLOCK_HEADS]
        if len(heads) != 1:
            raise SpecError(body.loc, f"block '{block_name}' needs exactly one of {', '.join(BLOCK_HEADS[:-1])} or "
                                      f"{BLOCK_HEADS[-1]}")
        allowed = (*_BLOCK_OWN, heads[0], *composite_keys())  # a composite's own check refuses another's keys
        for key in body:
            if key not in allowed:
                raise SpecError(body.key_loc(key), f"block '{block_name}': unexpected key '{key}'")
        head = block_composite(heads[0]).name
        body = _block_body(body)
        full_name = scope.child_name(name, block_name, loc)
        child = _Scope(full_name)
        if trainable is not None:
            raise SpecError(loc, f"'trainable' applies to single layers, not to block '{block_name}'")
        return _COMPOSITE_METHODS[head](self, body, child, values, stack, None, own_scope=True, label=block_name)

    def _merge(self, item: Map, op: str, scope: _Scope, name: str | None, names: Mapping[str, Any]) -> Merge:
        self.count(item.loc)
        raw = item[op]
        rloc = item.value_loc(op)
        if isinstance(raw, Map):
            for key in raw:
                if key not in ("from", "name"):
                    raise SpecError(raw.key_loc(key), f"{op}: unexpected key '{key}'; a merge takes 'from' (a list "
                                                      "of tensor names) and 'name'")
            if "name" in raw:
                name = self._name(raw, "name")
            if "from" not in raw:
                raise SpecError(rloc, f"{op} needs the tensors to merge: {op}: [a, b] or {op}: {{from: [a, b]}}")
            rloc = raw.value_loc("from")
            raw = raw["from"]
        for key in item:
            if key not in (op, "name"):
                raise SpecError(item.key_loc(key), f"unexpected key '{key}' beside '{op}'")
        refs = self._merge_refs(op, raw, rloc, scope, names)
        full = scope.child_name(name, op, item.loc)
        return Merge(full, op, refs, item.loc)

    def _merge_refs(self, op: str, raw: Any, loc: Loc, scope: _Scope, names: Mapping[str, Any]) \
            -> tuple[Ref | Spread, ...]:
        """A merge's list: at least two tensor names, or fewer where one is `NAME.*` (the analyzer counts the
        inputs once the repeat's copies are known)."""
        refs = tuple(merge_ref(r, names, scope.prefix, raw.item_loc(i), op) for i, r in enumerate(raw)) \
            if isinstance(raw, Seq) and all(isinstance(r, str) for r in raw) else ()
        if len(refs) < 2 and not any(isinstance(r, Spread) for r in refs):
            raise SpecError(loc, f"{op} needs a list of at least two tensor names, e.g. {op}: [down4, up4], or "
                                 f"the copies of a repeat: {op}: [a, m.*]")
        return refs

    def _repeat(self, item: Map, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...], name: str | None,
                own_scope: bool = False, label: str = "repeat") -> Node:
        self._keys(item, COMPOSITES["repeat"])
        count = self._value(item["repeat"], item.value_loc("repeat"), names)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError(item.value_loc("repeat"), f"repeat count must be a positive integer, not {count!r}")
        if self.rows + count > self.max_layers:  # every copy makes at least one row
            raise SpecError(item.value_loc("repeat"), f"repeat {count:,} expands the spec to at least "
                            f"{self.rows + count:,} layers, more than the limit of {self.max_layers:,}; raise it "
                            "with --max-layers if that is intended")
        full = scope.prefix if own_scope else scope.child_name(name, "repeat", item.loc)
        inner = _Scope(full)
        children: list[Node] = []
        sample = 1 if "first" in item else 0  # the first copy made from `block`, which the others resemble
        for i in range(count):
            use_first = i == 0 and "first" in item
            key = "first" if use_first else "block"
            body = item[key]
            local = {**names, "i": i}
            before = self.rows
            if isinstance(body, Seq):
                sub = _Scope(inner.child_name(str(i), "", item.value_loc(key)))
                children.append(self._sequence(body, sub, local, label, sub.prefix, item.value_loc(key), stack))
            elif (child := self._item(body, item.value_loc(key), inner, local, stack, forced_name=str(i))) is not None:
                children.append(child)
            if i == sample and count > i + 1:
                per_copy = self.rows - before
                projected = self.rows + per_copy * (count - i - 1)
                if projected > self.max_layers:
                    raise SpecError(item.value_loc("repeat"), f"repeat {count:,} of {per_copy:,} layers each "
                                    f"expands the spec to about {projected:,} layers, more than the limit of "
                                    f"{self.max_layers:,}; raise it with --max-layers if that is intended")
        return Sequence(full, label, tuple(children), item.loc, copies=True)

    def _residual(self, item: Map, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...], name: str | None,
                  own_scope: bool = False, label: str = "residual") -> Node:
        self._keys(item, COMPOSITES["residual"])
        full = scope.prefix if own_scope else scope.child_name(name, "residual", item.loc)
        inner = _Scope(full)
        body = self._sequence(item["residual"], inner, names, "body", full, item.value_loc("residual"), stack)
        shortcut: Sequence | str = "identity"
        if "shortcut" in item:
            raw = item["shortcut"]
            if isinstance(raw, str) and not isinstance(self._maybe_expr(raw, names), str):
                raw = self._maybe_expr(raw, names)
            if isinstance(raw, str) and raw in self.blocks or isinstance(raw, Map):
                raw_seq = Seq([raw])
                raw_seq.loc, raw_seq.item_locs = item.value_loc("shortcut"), [item.value_loc("shortcut")]
                raw = raw_seq
            if isinstance(raw, str):
                raw = self._maybe_expr(raw, names)
                if raw not in SHORTCUTS:
                    raise SpecError(item.value_loc("shortcut"), f"unknown shortcut '{raw}'"
                                    f"{did_you_mean(str(raw), SHORTCUTS)}, or give a list of layers")
                shortcut = raw
            elif isinstance(raw, Seq):
                inner_sc = _Scope(inner.child_name("shortcut", "", item.value_loc("shortcut")))
                shortcut = self._sequence(raw, inner_sc, names, "shortcut", inner_sc.prefix,
                                          item.value_loc("shortcut"), stack)
            else:
                raise SpecError(item.value_loc("shortcut"), f"shortcut must be {', '.join(SHORTCUTS)} or a list "
                                                            "of layers")
        else:
            inner.names["shortcut"] = item.loc
        if isinstance(shortcut, str):
            inner.names.setdefault("shortcut", item.loc)
        after_raw = item.get("after", Seq())
        if not isinstance(after_raw, Seq):
            after_raw = self._as_seq(after_raw, item.value_loc("after"))
        if not hasattr(after_raw, "loc"):
            after_raw.loc, after_raw.item_locs = item.loc, []
        self.count(item.loc)  # the add
        after = self._sequence(after_raw, inner, names, "after", full, after_raw.loc, stack)
        return Residual(full, label, body, shortcut, after, item.loc)

    def _parallel(self, item: Map, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...], name: str | None,
                  own_scope: bool = False, label: str = "parallel") -> Node:
        self._keys(item, COMPOSITES["parallel"])
        merge = self._maybe_expr(item.get("merge", "concat"), names)
        if merge not in MERGES:
            raise SpecError(item.value_loc("merge"), f"merge must be {either(MERGES)}, not {merge!r}"
                            + (did_you_mean(merge, MERGES) if isinstance(merge, str) else ""))
        raw = item["parallel"]
        if not isinstance(raw, Seq) or len(raw) < 2:
            raise SpecError(item.value_loc("parallel"), "parallel needs a list of at least two branches")
        full = scope.prefix if own_scope else scope.child_name(name, "parallel", item.loc)
        inner = _Scope(full)
        branches = []
        for i, branch in enumerate(raw):
            bloc = raw.item_loc(i)
            bname = inner.child_name(None, "branch", bloc)
            if isinstance(branch, Seq) and not branch:
                branches.append(Sequence(bname, "identity", (), bloc))
                continue
            branches.append(self._sequence(branch, _Scope(bname), names, "branch", bname, bloc, stack))
        self.count(item.loc)  # the merge
        return Parallel(full, label, tuple(branches), merge, item.loc)

    def _sequence_item(self, item: Map, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...],
                       name: str | None, own_scope: bool = False, label: str = "sequence") -> Node:
        self._keys(item, COMPOSITES["sequence"])
        full = scope.prefix if own_scope else scope.child_name(name, "seq", item.loc)
        raw = item["sequence"]
        if not isinstance(raw, Seq) or not raw:
            raise SpecError(item.value_loc("sequence"), "'sequence' needs a non-empty list of layers")
        return self._sequence(raw, _Scope(full), names, label, full, item.value_loc("sequence"), stack)

    def _cases(self, item: Map, scope: _Scope, names: dict[str, Any], stack: tuple[str, ...], name: str | None,
               own_scope: bool = False, label: str = "cases") -> Node:
        """`cases: [...]`: the first item whose `when:` holds (an item without `when:`, last, always does) is the
        node, named by the `cases:` item's `name:` where it has one; the others are checked for their form, as an
        item switched off by `when:` is. No case holding is an error: a chain of alternatives that covers only the
        values its writer thought of must not silently build nothing."""
        self._keys(item, COMPOSITES["cases"])
        raw, loc = item["cases"], item.value_loc("cases")
        if not isinstance(raw, Seq) or not raw:
            raise SpecError(loc, "'cases' needs a non-empty list of items, each with a 'when:' (the last may have "
                                 "none: the default)")
        chosen: tuple[Any, Loc] | None = None
        for i, case in enumerate(raw):
            cloc = raw.item_loc(i)
            if not isinstance(case, Map) or "when" not in case:
                if i != len(raw) - 1:
                    raise SpecError(cloc, "every case but the last needs a 'when:' (a case without one always "
                                          "holds, so the cases after it could never be built)")
                if chosen is None:
                    chosen = (case, cloc)
            elif chosen is None and self._when(case, names):
                chosen = (case, cloc)
            else:
                self._check_off(case, scope, names)
        if chosen is None:
            conditions = [str(c["when"]) for c in raw]
            words = sorted({w for c in conditions for w in WORD.findall(c) if w in names})
            values = ", ".join(f"{w} = {names[w]!r}" for w in words)
            raise SpecError(item.key_loc("cases"), f"no case holds: {', '.join(conditions)} "
                            f"{'is' if len(conditions) == 1 else 'are all'} false" + (f" ({values})" if values else "")
                            + "; add the case, or a last case without 'when:'")
        node = self._item(chosen[0], chosen[1], scope, names, stack, forced_name=name)
        assert node is not None  # its `when:` holds
        return node

    # -- arguments --
    def _kind_args(self, kind: Kind, raw: Map, names: dict[str, Any], loc: Loc,
                   scope: _Scope | None = None) -> dict[str, Any]:
        given: dict[str, tuple[Any, Loc]] = {}
        for source in (self.defaults.get(kind.name), raw):
            if source is None:
                continue
            seen: dict[str, Loc] = {}
            for key in source:
                if key in ("name", "trainable") and source is raw:
                    continue
                arg = self._arg(kind, str(key), source.key_loc(key))
                if arg.name in seen:
                    raise SpecError(source.key_loc(key), f"argument '{arg.name}' given twice (also at "
                                                         f"{seen[arg.name]})")
                seen[arg.name] = source.key_loc(key)
                given[arg.name] = (source[key], source.value_loc(key))
        result: dict[str, Any] = {}
        for arg in kind.args:
            if arg.name in given:
                raw_value, vloc = given[arg.name]
                type_ = arg_type(arg)
                value = self._value(raw_value, vloc, names) if type_.evaluated else raw_value
                result[arg.name] = type_.convert(value, arg, At(kind.name, vloc, names, scope.prefix if scope else ""))
            elif arg.required:
                raise SpecError(loc, f"{kind.name} needs '{arg.name}'" +
                                (f" (or {', '.join(repr(a) for a in arg.aliases)})" if arg.aliases else ""))
            else:
                result[arg.name] = arg.default
        return result

    def _arg(self, kind: Kind, key: str, loc: Loc) -> Arg:
        for arg in kind.args:
            if key == arg.name or key in arg.aliases:
                return arg
        valid = [a.name for a in kind.args] + [al for a in kind.args for al in a.aliases]
        if not kind.args:
            raise SpecError(loc, f"{kind.name} takes no arguments, but got '{key}'")
        raise SpecError(loc, f"{kind.name}: unknown argument '{key}'{did_you_mean(key, valid)}")

    def _kind(self, name: str, loc: Loc) -> Kind:
        if name not in REGISTRY:
            likely = suggest_kind(name)
            hint = f"; did you mean '{likely}'?" if likely else did_you_mean(name, REGISTRY)
            raise SpecError(loc, f"unknown layer kind '{name}'{hint}")
        return REGISTRY[name]

    def _unknown_kind(self, name: str) -> str:
        likely = suggest_kind(name)
        if likely:
            hint = f"; did you mean '{likely}'?"
        else:
            hint = did_you_mean(name, list(REGISTRY) + list(COMPOSITES) + list(self.blocks))
        return f"unknown layer kind or block '{name}'{hint} (see `archcalc kinds`)"

    def _used(self, block_name: str, body: Map) -> set[str]:
        """Every name a block's body (and its arguments' defaults) refers to: in expressions, as bare values, as
        the arguments passed on to inner blocks."""
        if block_name not in self.used:
            words: set[str] = set()
            stack: list[Any] = [body]
            while stack:
                value = stack.pop()
                if isinstance(value, str):
                    words.update(WORD.findall(value))
                elif isinstance(value, dict):
                    stack.extend(value.values())
                elif isinstance(value, list):
                    stack.extend(value)
            self.used[block_name] = words
        return self.used[block_name]

    def _maybe_expr(self, value: Any, names: dict[str, Any]) -> Any:
        if isinstance(value, str) and value in names:
            return names[value]
        return value

    def _value(self, value: Any, loc: Loc, names: Mapping[str, Any]) -> Any:
        """Evaluate expressions inside a value (strings that use a variable or an operator; lists element-wise)."""
        if isinstance(value, list):
            seq = [self._value(v, value.item_loc(i) if isinstance(value, Seq) else loc, names)
                   for i, v in enumerate(value)]
            return seq
        if isinstance(value, str) and expr.looks_like_expression(value):
            stripped = value.strip()
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", stripped) and stripped not in names:
                return value  # a plain word such as 'same' or 'nearest'; the argument's type check decides
            try:
                return expr.evaluate(value, names)
            except expr.ExprError as exc:
                raise SpecError(loc, str(exc)) from None
        if isinstance(value, Map):
            raise SpecError(loc, f"expected a value, not a mapping {describe(value)}")
        return value

    def _keys(self, item: Map, composite: Composite) -> None:
        allowed = composite.allowed
        for key in item:
            if key not in allowed:
                raise SpecError(item.key_loc(key), f"{composite.name}: unexpected key '{key}'"
                                f"{did_you_mean(str(key), allowed)}")
        for key in composite.required:
            if key not in item:
                raise SpecError(item.loc, f"{composite.name} needs '{key}'")

    def _name(self, item: Map, key: str) -> str:
        value = item[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise SpecError(item.value_loc(key), f"layer name {value!r} must be letters, digits, '_' or '-' "
                                                 "(dots separate levels and are added by archcalc)")
        return value

    def _bool(self, item: Map, key: str) -> bool:
        if not isinstance(item[key], bool):
            raise SpecError(item.value_loc(key), f"'{key}' must be true or false")
        return bool(item[key])

    def _as_seq(self, value: Any, loc: Loc) -> Seq:
        seq = Seq([value])
        seq.loc, seq.item_locs = loc, [loc]
        return seq


class _Count:
    """The size pre-count's view of one composite item (grammar.Count): the rows of its keys, by what each holds."""

    def __init__(self, parser: _Parser, composite: Composite, item: Map, names: dict[str, Any],
                 stack: tuple[str, ...], memo: dict[Any, int]) -> None:
        self.parser, self.composite, self.item = parser, composite, item
        self.names, self.stack, self.memo = names, stack, memo

    def has(self, key: str) -> bool:
        return key in self.item

    def rows(self, key: str, **names: int) -> int:
        spec = self.composite.key(key)
        if key not in self.item:
            if spec.required:
                raise Uncountable
            return spec.holds.absent
        if spec.holds.rows is None:
            return 0
        local = {**self.names, **names} if names else self.names
        return spec.holds.rows(self.item[key], lambda v: self.parser._size_list(v, local, self.stack, self.memo))

    def number(self, key: str) -> int:
        count = self.parser._value(self.item[key], self.item.loc, self.names)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise Uncountable
        return count


_BLOCK_OWN = tuple(k.name for k in BLOCK_OWN)
_BESIDE_TAKEN = ("from", "when", "discard")  # the keys beside an item that _item_body takes off before its head


def _block_body(body: Map) -> Map:
    """A block's body as an item: its head (`layers` read as `sequence`) and the keys beside it."""
    keep = [k for k in body if k not in _BLOCK_OWN]
    renamed = {k: block_composite(k).name if k == BLOCK_LAYERS.name else k for k in keep}
    return Map.derived({renamed[k]: body[k] for k in keep}, body.loc,
                       {renamed[k]: body.key_loc(k) for k in keep}, {renamed[k]: body.value_loc(k) for k in keep})


_COMPOSITE_METHODS = {"repeat": _Parser._repeat, "residual": _Parser._residual, "parallel": _Parser._parallel,
                      "sequence": _Parser._sequence_item, "cases": _Parser._cases}


def Map_empty(loc: Loc) -> Map:  # noqa: N802
    return Map.derived({}, loc, {}, {})


def parse_input(value: Any, loc: Loc) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        try:
            if not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):  # int() also takes '٣' and '1_000'
                raise ValueError
            value = [int(p) for p in parts]
        except ValueError:
            raise SpecError(loc, f"input {value!r} must be channels then spatial sizes, e.g. [3, 224, 224] or "
                                 "3x224x224") from None
    if (not isinstance(value, list) or not 2 <= len(value) <= 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SpecError(loc, f"input must be [C, L], [C, H, W] or [C, D, H, W] (integers), not {value!r}")
    if any(v <= 0 for v in value):
        raise SpecError(loc, f"input sizes must be positive, not {list(value)}")
    return tuple(value)


_AXES = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}


def checked_input(spec: Spec, override: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input to analyze: the spec's own, or an override of the same rank. A spec's layers are written for one
    rank (a 2-D ResNet on a 224x224 override would silently become a 1-D network with 224 channels)."""
    if not override:
        return spec.input
    shape = tuple(override)
    if len(shape) != len(spec.input):
        own = "x".join(map(str, spec.input))
        example = "x".join([str(spec.input[0])] + [str(v) for v in (shape[-len(spec.input) + 1:] if len(shape) >=
                                                                     len(spec.input) - 1 else spec.input[1:])])
        raise SpecError(spec.input_loc, f"--input {'x'.join(map(str, shape))} has {len(shape) - 1} spatial "
                        f"ax{'i' if len(shape) == 2 else 'e'}s, but {spec.name} is written for "
                        f"{_AXES.get(len(spec.input) - 1, 'its')} input ({own}, here); give channels and "
                        f"{len(spec.input) - 1} spatial sizes, e.g. --input {example}")
    return shape


def input_warnings(shape: tuple[int, ...]) -> list[str]:
    """A spec (or override) that looks channels-last: [32, 32, 3] reads as 32 channels on a 32x3 image."""
    channels, spatial = shape[0], shape[1:]
    if len(spatial) >= 2 and spatial[-1] in (1, 3, 4) and channels > 4 * spatial[-1] \
            and all(v > 4 for v in spatial[:-1]):
        order = "x".join(map(str, (spatial[-1], channels, *spatial[:-1])))
        return [f"{'x'.join(map(str, shape))} looks channels-last (H, W, C): archcalc reads channels first, "
                f"so this is {channels} channels of {'x'.join(map(str, spatial))}; for {spatial[-1]} channels "
                f"write {order}"]
    return []
