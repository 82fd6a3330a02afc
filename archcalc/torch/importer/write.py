"""Write traced ops as spec text: layers in order, nested in `sequence:` groups named after the module hierarchy
(so names read `layer1.0.conv1`, and a group holds its input until its last op, as a module's forward holds its
argument), `from:` where an op does not read the previous item's output, merges with their named inputs, and
`outputs:` for several outputs.

Where a merge belongs is not in the module hierarchy when the merge is written in a forward above it (archcalc's own
built module runs every op from the top): it goes to the deepest open level whose ops made all its inputs (or that
level's input), which is where a residual's add or a branch concat sits in the spec the module came from.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from archcalc.core.kinds import REGISTRY
from archcalc.core.spec import BLOCK_INPUT
from archcalc.torch.importer.blocks import Call, Plan, plan_blocks, repeat_of
from archcalc.torch.importer.trace import Op, SizeOf, Traced

_PLAIN = re.compile(r"^\$?[A-Za-z_][A-Za-z0-9_.]*$")  # `$input` reads plain too
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"  # YAML 1.1 reads 1e-05 as a string
        return text
    if isinstance(value, _Ref):
        return str(value) if _PLAIN.match(value) else json.dumps(str(value))
    if isinstance(value, str):
        return value if _PLAIN.match(value) and value.lower() not in _YAML_WORDS else json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} into a spec")


class _Expr(str):
    """An expression of a block's arguments, written as it is."""


def _list_with(value: Any, expressions: dict[tuple[int, ...], str], at: tuple[int, ...] = ()) -> str | None:
    """A list value written with expressions at some of its positions (a zeropad's `[[dilation, 0]]`); None where
    it has none."""
    if not expressions:
        return None
    if at in expressions:
        return expressions[at]
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_list_with(v, expressions, at + (i,)) or _scalar(v) for i, v in enumerate(value)) + "]"
    return _scalar(value)

class _Ref(str):
    """An argument that names a tensor (an upsample's size_of): part of a block's structure, never an argument."""


class _Group:
    def __init__(self, local: str, full: str, parent: _Group | None, start: int, source: int | None,
                 path: tuple[str, ...] = ()) -> None:
        self.path = path  # module path
        self.local = local
        self.full = full
        self.parent = parent
        self.start = start  # index of its first op
        self.source = source  # the tensor it reads (its input); None until its first op
        self.items: list[Any] = []  # (_Group) or ("op", op, local name, from-ref, refs)
        self.names: set[str] = set()
        self.current: int | None = None  # what the next item reads implicitly
        self.made: set[int] = set()  # tensors made inside
        self.from_text: str | None = None

    def unique(self, name: str) -> str:
        base, n = name, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name


def _is_group(item: Any) -> bool:
    return isinstance(item, _Group)


class _Shadowed(Exception):
    """A reference cannot be written: a name nearer to where it is used hides the tensor's name."""

    def __init__(self, blocking: str) -> None:
        self.blocking = blocking


class _Writer:
    def __init__(self, traced: Traced, avoid: set[str]) -> None:
        self.traced = traced
        self.avoid = avoid  # full names not to give (they would hide a name referenced from inside)
        self.root = _Group("", "", None, 0, 0)
        self.root.names.add("input")  # the network's input: a module named `input` becomes input_1
        self.root.current = 0
        self.tensor_name: dict[int, str] = {0: "input"}
        self.defined: list[str] = ["input"]
        self.defined_set = {"input"}
        self.closed_paths: set[tuple[str, ...]] = set()
        self.open: list[tuple[tuple[str, ...], _Group]] = [((), self.root)]
        self.plan = Plan([], {})  # the blocks recognised, once every op is placed
        self.defaults: dict[str, dict[str, Any]] = {}
        self.last_fixed: dict[tuple[str, ...], int] = {}  # per module path: its last module op
        for i, op in enumerate(traced.ops):
            if op.fixed:
                for depth in range(len(op.scope) + 1):
                    self.last_fixed[op.scope[:depth]] = i

    # -- references: the shortest text that resolves to the tensor from a scope (archcalc's resolution rule) --
    def _resolves(self, text: str, scope: str) -> str | None:
        parts = scope.split(".") if scope else []
        for i in range(len(parts), -1, -1):
            full = ".".join(parts[:i] + [text])
            if full in self.defined_set:
                return full
        return None  # archcalc would try a unique suffix next; the writer never relies on it

    def ref_in(self, tensor: int, group: _Group) -> str:
        """A reference written in `group`'s items: `$input` for the group's own input (so copies read alike)."""
        if group is not self.root and tensor == group.source:
            return BLOCK_INPUT
        return self.ref(tensor, group.full)

    def ref(self, tensor: int, scope: str) -> str:
        full = self.tensor_name[tensor]
        parts = full.split(".")
        for i in range(len(parts) - 1, -1, -1):
            text = ".".join(parts[i:])
            if self._resolves(text, scope) == full:
                return text
        raise _Shadowed(self._resolves(full, scope) or full)  # a nearer name hides it: rename that one

    def define(self, full: str) -> None:
        self.defined.append(full)
        self.defined_set.add(full)

    # -- structure --
    def scope_for(self, op: Op, index: int) -> tuple[str, ...]:
        if op.fixed:
            return op.scope
        # Functions and merges: the deepest open level under the op's own module whose ops made all its inputs
        # (or that read it as its input); then up while the level ends here and the op reads the parent's input (a
        # body or branch that ends in a merge with the identity: the merge is the enclosing level's, as a residual's
        # add or squeeze-excitation's product is).
        levels = [(path, group) for path, group in self.open
                  if len(path) >= len(op.scope) and path[:len(op.scope)] == op.scope]
        for i in range(len(levels) - 1, -1, -1):
            path, group = levels[i]
            if all(t in group.made or t == group.source for t in op.inputs):
                while (i > 0 and self.last_fixed.get(levels[i][0], -1) < index
                       and levels[i - 1][1].source in op.inputs):
                    i -= 1
                return levels[i][0]
        return op.scope

    def close_to(self, depth: int) -> None:
        while len(self.open) > depth:
            path, group = self.open.pop()
            parent = self.open[-1][1]
            parent.current = group.current
            if group.items:
                self.define(group.full)
                if group.current in group.made:  # the group's name reads as its output
                    self.tensor_name[group.current] = group.full
            self.closed_paths.add(path)

    def place(self, op: Op, index: int) -> _Group:
        path = self.scope_for(op, index)
        common = 0  # levels already open on the op's path
        while (common + 1 < len(self.open) and common < len(path)
               and self.open[common + 1][0] == path[:common + 1]):
            common += 1
        self.close_to(common + 1)
        for depth in range(common, len(path)):
            parent = self.open[-1][1]
            local = parent.unique(path[depth])
            full = f"{parent.full}.{local}" if parent.full else local
            group = _Group(local, full, parent, 0, None, path[:depth + 1])
            source = op.inputs[0] if op.kind is not None or parent.current is None else parent.current
            group.source = source
            if source != parent.current:
                group.from_text = self.ref_in(source, parent)
            group.current = source
            parent.items.append(group)
            self.open.append((path[:depth + 1], group))
        return self.open[-1][1]

    def add(self, op: Op, index: int) -> None:
        group = self.place(op, index)
        local = group.unique(op.name)
        full = f"{group.full}.{local}" if group.full else local
        while full in self.avoid:
            local = group.unique(op.name)
            full = f"{group.full}.{local}" if group.full else local
        if op.kind is not None:
            x = op.inputs[0]
            src = None if x == group.current else self.ref_in(x, group)
            args = {k: (_Ref(self.ref_in(v.tensor, group)) if isinstance(v, SizeOf) else v)
                    for k, v in op.args.items()}
            group.items.append(("layer", op, local, src, args))
        else:
            refs = [self.ref_in(t, group) for t in op.inputs]
            group.items.append(("merge", op, local, None, refs))
        self.tensor_name[op.output] = full
        self.define(full)
        for _, level in self.open:
            level.made.add(op.output)
        if not op.discard:  # (the item after a discarded one reads what the discarded one was given)
            group.current = op.output

    # -- text --
    def group_call(self, subst: dict[Any, str], group: _Group, path: tuple[int, ...]) -> str:
        return self.call_text(self.plan.calls[id(group)], subst, path)

    def call_text(self, call: Call, subst: dict[Any, str], path: tuple[int, ...]) -> str:
        """`{Block: {arg: value, ...}}` for a call at `path` in a body whose positions `subst` maps to expressions."""
        return f"{{{call.block}: {{{self.call_fields(call, subst, path)}}}}}"

    def call_fields(self, call: Call, subst: dict[Any, str], path: tuple[int, ...]) -> str:
        defaults = self.defaults[call.block]
        fields = []
        for arg, value in call.args.items():
            expression = subst.get((path, arg))
            if expression is not None:
                fields.append(f"{arg}: {expression}")
            elif value != defaults[arg]:
                fields.append(f"{arg}: {_scalar(value)}")
        return ", ".join(fields)

    def lines(self, group: _Group, indent: int, subst: dict[Any, str] | None = None,
              prefix: tuple[int, ...] = ()) -> list[str]:
        pad = " " * indent
        out: list[str] = []
        subst = subst or {}
        for index, item in enumerate(group.items):
            path = prefix + (index,)
            if isinstance(item, _Group):
                call = self.plan.calls.get(id(item))
                repeat = None if call is not None else repeat_of(
                    item, self.plan, _is_group, functools.partial(self.group_call, subst), path)
                if call is not None:
                    fields = self.call_fields(call, subst, path)
                    name = f"name: {_scalar(item.local)}"
                    out.append(f"{pad}- {call.block}: {{{fields + ', ' if fields else ''}{name}}}")
                elif repeat is not None:
                    first, rest, n = repeat
                    out.append(f"{pad}- repeat: {n}")
                    out.append(f"{pad}  name: {_scalar(item.local)}")
                    if first is not None:
                        out.append(f"{pad}  first: {first}")
                    out.append(f"{pad}  block: {rest}")
                else:
                    out.append(f"{pad}- name: {_scalar(item.local)}")
                if item.from_text is not None:
                    out.append(f"{pad}  from: {_scalar(item.from_text)}")
                if call is None and repeat is None:
                    out.append(f"{pad}  sequence:")
                    out += self.lines(item, indent + 4, subst, path)
                continue
            what, op, local, src, payload = item
            if op.unknown:
                out.append(f"{pad}# unknown: {op.unknown}".replace("\n", " "))
            name = _scalar(local)
            if what == "merge":
                out.append(f"{pad}- {op.merge}: {_scalar(payload)}")
                out.append(f"{pad}  name: {name}")
                if op.discard:
                    out.append(f"{pad}  discard: true")
                continue
            kind = REGISTRY[op.kind]
            shown = {}
            for key, value in payload.items():
                arg = kind.arg(key)
                expression = subst.get((path, key))
                if expression is None and isinstance(value, (tuple, list)):
                    expression = _list_with(value, {at: e for (p, k), e in subst.items()
                                                    if p == path and isinstance(k, tuple) and k[0] == key
                                                    for at in (k[1],)})
                if expression is not None:
                    shown[key] = _Expr(expression)
                elif arg.required or value != arg.default:
                    shown[key] = value
            fields = ", ".join(f"{k}: {v if isinstance(v, _Expr) else _scalar(v)}" for k, v in shown.items())
            body = f"{{{fields}, name: {name}}}" if fields else f"{{name: {name}}}"
            out.append(f"{pad}- {op.kind}: {body}")
            if not op.trainable:
                out.append(f"{pad}  trainable: false")
            if op.discard:
                out.append(f"{pad}  discard: true")
            if src is not None:
                out.append(f"{pad}  from: {_scalar(src)}")
        return out


def write_spec(traced: Traced, name: str, description: str = "", source: str = "", blocks: bool = True) -> str:
    """The spec text for a traced module; with `blocks`, repeated structure is written as blocks and repeats."""
    avoid: set[str] = set()
    while True:
        writer = _Writer(traced, avoid)
        try:
            for index, op in enumerate(traced.ops):
                writer.add(op, index)
            writer.close_to(1)
            outputs = [(out_name, writer.ref(t, "")) for out_name, t in traced.outputs]
            break
        except _Shadowed as exc:
            if exc.blocking in avoid or len(avoid) > 1000:
                raise AssertionError(f"cannot write a reference around {exc.blocking}") from None  # a bug here
            avoid.add(exc.blocking)
    head = [f"name: {json.dumps(name)}"]
    if description:
        head.append(f"description: {json.dumps(description)}")
    if source:
        head.append(f"source: {json.dumps(source)}")
    head.append(f"input: {_scalar(list(traced.input_shape))}")
    for note in traced.unknown:
        head.append(f"# unknown (left out of the totals): {note}".replace("\n", " "))
    if blocks:
        writer.plan = plan_blocks(writer.root, traced.types, _is_group)
        writer.defaults = {b.name: b.args for b in writer.plan.blocks}
    definitions = ["blocks:"] if writer.plan.blocks else []
    for block in writer.plan.blocks:
        definitions.append(f"  {block.name}:")
        if block.args:
            definitions.append("    args: {" + ", ".join(f"{k}: {'~' if v is None else _scalar(v)}"
                                                 for k, v in block.args.items()) + "}")
        repeat = repeat_of(block.body, writer.plan, _is_group, functools.partial(writer.group_call, block.subst), ())
        if repeat is not None:  # the block is a stage: copies of one block, copy 0 perhaps another
            first, rest, n = repeat
            definitions.append(f"    repeat: {n}")
            if first is not None:
                definitions.append(f"    first: {first}")
            definitions.append(f"    block: {rest}")
            continue
        definitions.append("    layers:")
        definitions += writer.lines(block.body, 6, block.subst)
    body = [*definitions, "layers:", *writer.lines(writer.root, 2)]
    last = writer.root.current
    if len(outputs) != 1 or traced.outputs[0][1] != last or outputs[0][0] != "output":
        body.append("outputs:")
        for out_name, text in outputs:
            body.append(f"  - {_scalar(out_name)}: {_scalar(text)}")
    return "\n".join(head + body) + "\n"
