"""Recognise repeated structure in an imported module's groups: groups (module instances) that are identical up to
their numbers become calls of one block with arguments (ResNet's bottlenecks, MobileNet's inverted residuals,
Inception's BasicConv2d), and a group whose children are `0`, `1`, … calls of one block with the same arguments
(copy 0 may differ: the stride-2 block that opens a stage) becomes a `repeat:`.

Two groups are the same block when their items agree in everything but int and float argument values: kinds,
names, references (a block's own input is `$input`, so copies read alike), merges, nesting. Of the numbers, those
that differ between the copies become the block's arguments; positions of the same argument name whose values
agree in every copy share one argument, and an `out` that is an integer multiple of another in every copy is
written as that multiple (`4 * out`). Each argument's default is its most common value; a call passes the others.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from archcalc.core.kinds import REGISTRY

# A group's item position: indices from the block's body down to the item, and the argument key.
Position = tuple[tuple[int, ...], str]

_GENERIC = {"Sequential", "ModuleList", "ModuleDict", "SpecGroup", "Module"}  # containers: no block-worthy name
_RESERVED = {"i", "name", "trainable", "min", "max", "ceil_div", "round_to", "ceil", "floor", "round", "and", "or",
             "not", "true", "false", "input"}
_SHORT = {"out_channels": "out", "out_features": "out", "kernel_size": "kernel"}
_KEYS = {"repeat", "residual", "parallel", "sequence", "layers", "block", "first", "shortcut", "after", "merge",
         "name", "from", "when", "trainable", "args", "description", "blocks", "input", "inputs", "outputs"}
MIN_OPS = 2  # a group of fewer ops stays written out


class Block(NamedTuple):
    name: str
    args: dict[str, Any]  # argument -> default (in order)
    subst: dict[Position, str]  # position in the body -> expression of the arguments
    body: Any  # the first copy's group (its items are the body)


class Call(NamedTuple):
    block: str
    args: dict[str, Any]  # argument -> this copy's value (defaults included)


class Plan(NamedTuple):
    blocks: list[Block]  # inner blocks first
    calls: dict[int, Call]  # id(group) -> how it is called


def _varies(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _signature(group: Any, memo: dict[int, Any], is_group: Callable[[Any], bool]) -> Any:
    """Everything about a group but its int and float argument values."""
    if id(group) in memo:
        return memo[id(group)]
    parts: list[Any] = []
    for item in group.items:
        if is_group(item):
            parts.append(("group", item.local, item.from_text, _signature(item, memo, is_group)))
            continue
        what, op, local, src, payload = item
        if what == "merge":
            parts.append(("merge", op.merge, local, tuple(payload)))
            continue
        args = tuple(sorted((k, "#" if _varies(v) else (type(v).__name__, v)) for k, v in payload.items()))
        parts.append(("layer", op.kind, local, src, op.trainable, op.unknown, args))
    sig = tuple(parts)
    memo[id(group)] = sig
    return sig


def _ops(group: Any, is_group: Callable[[Any], bool]) -> int:
    return sum(_ops(item, is_group) if is_group(item) else 1 for item in group.items)


def _identifier(text: str) -> str:
    word = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return word if re.match(r"[A-Za-z_]", word) else f"n{word}"


class _Planner:
    def __init__(self, root: Any, types: dict[tuple[str, ...], str], is_group: Callable[[Any], bool]) -> None:
        self.root = root
        self.types = types
        self.is_group = is_group
        self.memo: dict[int, Any] = {}
        self.plan = Plan([], {})
        self.taken: set[str] = set()

    def groups(self, group: Any) -> list[Any]:
        out = []
        for item in group.items:
            if self.is_group(item):
                out += self.groups(item)
                out.append(item)  # children before parents
        return out

    def positions(self, group: Any, prefix: tuple[int, ...] = ()) -> list[tuple[Position, Any]]:
        """The group's int and float values by position; a group that is a block call gives its arguments."""
        out: list[tuple[Position, Any]] = []
        for index, item in enumerate(group.items):
            path = prefix + (index,)
            if self.is_group(item):
                call = self.plan.calls.get(id(item))
                if call is not None:
                    out += [((path, arg), value) for arg, value in call.args.items()]
                else:
                    out += self.positions(item, path)
                continue
            what, _, _, _, payload = item
            if what == "layer":
                out += [((path, key), value) for key, value in payload.items() if _varies(value)]
        return out

    def block_name(self, group: Any) -> str:
        kind = self.types.get(group.path, "")
        if kind and kind not in _GENERIC:
            base = kind  # the module's class: Bottleneck, InvertedResidual
        else:  # a container: its own name, or for a numbered one (layer1.0) its parent's
            parent = group.parent.local if group.parent is not None and group.parent.local else ""
            base = group.local if not group.local.isdigit() else f"{parent}_block" if parent else "unit"
        base = re.sub(r"[^A-Za-z0-9_-]", "_", base) or "unit"
        if base.lower() in REGISTRY or base in _KEYS:
            base = f"{base}_block"
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def run(self) -> Plan:
        classes: dict[Any, list[Any]] = {}
        for group in self.groups(self.root):  # children first: a class's inner blocks are planned before it
            if _ops(group, self.is_group) >= MIN_OPS:
                classes.setdefault(_signature(group, self.memo, self.is_group), []).append(group)
        for members in classes.values():
            if len(members) >= 2:
                self.define(members)
        return self.plan

    def define(self, members: list[Any]) -> None:
        tables = [self.positions(g) for g in members]
        where = [p for p, _ in tables[0]]
        if any([p for p, _ in t] != where for t in tables):  # inner calls planned differently: leave it
            return
        vectors = [tuple(t[j][1] for t in tables) for j in range(len(where))]
        # One argument per distinct (role, values) of the positions whose values differ between copies.
        role = [_SHORT.get(key, key) for _, key in where]
        groups: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
        for j, vector in enumerate(vectors):
            if len(set(vector)) > 1:
                groups.setdefault((role[j], vector), []).append(j)
        names = Counter(r for r, _ in groups)
        args: dict[str, Any] = {}
        subst: dict[Position, str] = {}
        arg_of: dict[tuple[str, tuple[Any, ...]], str] = {}
        for (r, vector), js in groups.items():
            # a multiple of an earlier argument of the same role: written as that multiple
            multiple = None
            for (r2, v2), name2 in arg_of.items():
                if r2 == r and all(isinstance(a, int) and isinstance(b, int) and b != 0 for a, b in zip(vector, v2)):
                    ks = {a // b for a, b in zip(vector, v2) if a % b == 0}
                    if len(ks) == 1 and all(a % b == 0 for a, b in zip(vector, v2)) and next(iter(ks)) > 1:
                        multiple = f"{next(iter(ks))} * {name2}"
                        break
            if multiple is not None:
                for j in js:
                    subst[where[j]] = multiple
                continue
            path, key = where[js[0]]
            name = r if names[r] == 1 else f"{self.local_at(members[0], path)}_{r}"
            name = _identifier(name)
            while name in args or name in _RESERVED:
                name = f"{name}_"
            args[name] = Counter(vector).most_common(1)[0][0]
            arg_of[(r, vector)] = name
            for j in js:
                subst[where[j]] = name
        block = self.block_name(members[0])
        self.plan.blocks.append(Block(block, args, subst, members[0]))
        for index, group in enumerate(members):
            values = {}
            for name in args:
                key = next(k for k, v in arg_of.items() if v == name)
                values[name] = key[1][index]
            self.plan.calls[id(group)] = Call(block, values)

    def local_at(self, group: Any, path: tuple[int, ...]) -> str:
        item = group
        for index in path:
            item = item.items[index]
        return str(item.local if self.is_group(item) else item[2])


def plan_blocks(root: Any, types: dict[tuple[str, ...], str], is_group: Callable[[Any], bool]) -> Plan:
    """The blocks to define and how each recognised group calls one."""
    return _Planner(root, types, is_group).run()


def repeat_of(group: Any, plan: Plan, is_group: Callable[[Any], bool],
              text: Callable[[Any, tuple[int, ...]], str], prefix: tuple[int, ...]) -> tuple[str | None, str, int] | None:
    """(copy 0's call where it differs, the other copies' call, the number of copies) when the group's children are
    `0`, `1`, … calls of one block written alike (`text` renders a call at its position), each reading the one
    before."""
    items: Sequence[Any] = group.items
    if len(items) < 2 or not all(is_group(item) and id(item) in plan.calls for item in items):
        return None
    if [item.local for item in items] != [str(i) for i in range(len(items))]:
        return None
    if any(item.from_text is not None for item in items):
        return None
    calls = [text(item, prefix + (i,)) for i, item in enumerate(items)]
    rest = calls[1:]
    if any(c != rest[0] for c in rest):
        return None
    return (None if calls[0] == rest[0] else calls[0]), rest[0], len(items)
