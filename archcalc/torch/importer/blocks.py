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

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from archcalc.core.kinds import REGISTRY

# A group's item position: indices from the block's body down to the item, and the argument key — or, for a number
# inside a list value (a zeropad's [[d, 0]]), the key and the indices into the list.
Position = tuple[tuple[int, ...], Any]

_GENERIC = {"Sequential", "ModuleList", "ModuleDict", "SpecGroup", "Module"}  # containers: no block-worthy name
_RESERVED = {"i", "name", "trainable", "min", "max", "ceil_div", "round_to", "ceil", "floor", "round", "and", "or",
             "not", "true", "false", "input"}
_SHORT = {"out_channels": "out", "out_features": "out", "kernel_size": "kernel"}
_KEYS = {"repeat", "residual", "parallel", "sequence", "layers", "block", "first", "shortcut", "after", "merge",
         "name", "from", "when", "trainable", "args", "description", "blocks", "input", "inputs", "outputs"}
MIN_OPS = 2  # a group of fewer ops stays written out


class Block(NamedTuple):
    name: str
    args: dict[str, Any]  # argument -> default (None: required), in order
    roles: dict[str, str]  # argument -> what it sets (out, stride, kernel, ...): arguments of one role may merge
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


def _form(value: Any) -> Any:
    """A value with its numbers blanked out: lists that differ only in their numbers have the same form."""
    if _varies(value):
        return "#"
    if isinstance(value, (tuple, list)):
        return tuple(_form(v) for v in value)
    return (type(value).__name__, value)


def numbers(value: Any, at: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Any]]:
    """The numbers inside a list value, with their indices (a zeropad's [[4, 0]]: ((0, 0), 4), ((0, 1), 0))."""
    if _varies(value):
        return [(at, value)]
    if isinstance(value, (tuple, list)):
        return [found for i, v in enumerate(value) for found in numbers(v, at + (i,))]
    return []


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
            parts.append(("merge", op.merge, local, tuple(payload), op.discard))
            continue
        args = tuple(sorted((k, _form(v)) for k, v in payload.items()))
        parts.append(("layer", op.kind, local, src, op.trainable, op.unknown, op.discard, args))
    sig = tuple(parts)
    memo[id(group)] = sig
    return sig


def _ops(group: Any, is_group: Callable[[Any], bool]) -> int:
    return sum(_ops(item, is_group) if is_group(item) else 1 for item in group.items)


def _size(vector: tuple[Any, ...]) -> float:
    return sum(abs(v) for v in vector)


def _multiple(vector: tuple[Any, ...], base: tuple[Any, ...]) -> int | None:
    """k > 1 where vector = k * base in every copy."""
    if not all(isinstance(a, int) and isinstance(b, int) and b > 0 for a, b in zip(vector, base)):
        return None
    ks = {a // b if a % b == 0 else -1 for a, b in zip(vector, base)}
    k = ks.pop() if len(ks) == 1 else -1
    return k if k > 1 else None


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
        self.roles: dict[str, dict[str, str]] = {}  # block -> its arguments' roles

    def groups(self, group: Any) -> list[Any]:
        out = []
        for item in group.items:
            if self.is_group(item):
                out += self.groups(item)
                out.append(item)  # children before parents
        return out

    def positions(self, group: Any, prefix: tuple[int, ...] = ()) -> list[tuple[Position, Any, str]]:
        """The group's int and float values by position, with their roles; a group that is a block call gives its
        arguments."""
        out: list[tuple[Position, Any, str]] = []
        for index, item in enumerate(group.items):
            path = prefix + (index,)
            if self.is_group(item):
                call = self.plan.calls.get(id(item))
                if call is not None:
                    roles = self.roles[call.block]
                    out += [((path, arg), value, roles[arg]) for arg, value in call.args.items()]
                else:
                    out += self.positions(item, path)
                continue
            what, _, _, _, payload = item
            if what == "layer":
                for key, value in payload.items():
                    if _varies(value):
                        out.append(((path, key), value, _SHORT.get(key, key)))
                    elif isinstance(value, (tuple, list)):  # a number in a list: the list written with it
                        out += [((path, (key, at)), v, _SHORT.get(key, key)) for at, v in numbers(value)]
        return out

    def block_name(self, members: list[Any]) -> str:
        """The name a person would give: the module's class (Bottleneck; a private `_DenseLayer` without its
        underscore); for a container of plain layers numbered in a list (HRNet's fuse_layers[i][j]) what it holds
        (conv_batchnorm_upsample); else what its copies' names share (layer1, layer4: layer)."""
        kind = self.types.get(members[0].path, "").lstrip("_")
        held = self.held(members[0])
        if kind and kind not in _GENERIC:
            base = kind  # the module's class: Bottleneck, InvertedResidual
        elif all(g.local.isdigit() for g in members) and held:
            base = held
        else:  # a container: what its copies' names share (layer1, layer4: layer), or for numbered ones their parents'
            locals_ = [g.local for g in members]
            suffix = ""
            if all(name.isdigit() for name in locals_):
                locals_ = [g.parent.local if g.parent is not None else "" for g in members]
                suffix = "_block"
            base = os.path.commonprefix(locals_).rstrip("0123456789_-")
            base = f"{base}{suffix}" if base else "unit"
        base = re.sub(r"[^A-Za-z0-9_-]", "_", base).lstrip("_-") or "unit"
        if base.lower() in REGISTRY or base in _KEYS:  # a container named `block` in a CNBlock: CNBlock_block
            parent = members[0].parent
            owner = self.types.get(parent.path, "") if parent is not None else ""
            # (never the traced root's private class, nor a container's: a class `Conv` at the top is Conv_block)
            base = f"{owner}_{base}" if owner and owner not in _GENERIC and not owner.startswith("_") else \
                f"{base}_block"
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def held(self, group: Any) -> str:
        """What a group of plain layers holds, as a name (conv_batchnorm_upsample): its kinds and merges in order,
        each once; '' for a group holding groups, or more than four kinds."""
        if any(self.is_group(item) for item in group.items):
            return ""
        kinds = list(dict.fromkeys(str(op.kind or op.merge) for _, op, _, _, _ in group.items))
        return "_".join(kinds) if len(kinds) <= 4 else ""

    def run(self) -> Plan:
        classes: dict[Any, list[Any]] = {}
        for group in self.groups(self.root):  # children first: a class's inner blocks are planned before it
            wrapper = len(group.items) == 1 and self.is_group(group.items[0])  # its one group is called instead
            if _ops(group, self.is_group) >= MIN_OPS and not wrapper:
                classes.setdefault(_signature(group, self.memo, self.is_group), []).append(group)
        for members in classes.values():
            if len(members) >= 2:
                self.define(members)
        return self.plan

    def define(self, members: list[Any]) -> None:
        tables = [self.positions(g) for g in members]
        where = [p for p, _, _ in tables[0]]
        if any([p for p, _, _ in t] != where for t in tables):  # inner calls planned differently: leave it
            return
        vectors = [tuple(t[j][1] for t in tables) for j in range(len(where))]
        # One argument per distinct (role, values) of the positions whose values differ between copies.
        role = [r for _, _, r in tables[0]]
        groups: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
        for j, vector in enumerate(vectors):
            if len(set(vector)) > 1:
                groups.setdefault((role[j], vector), []).append(j)
        # An argument of the same role that is an integer multiple of an earlier one is written as that multiple;
        # one of another role with the same three or more values in every copy is that argument (a depthwise
        # conv's groups are its width).
        # widths first; padding last, which follows from a kernel or a dilation more often than it sets one
        order = sorted(groups, key=lambda k: (k[0] != "out", k[0] == "padding", list(groups).index(k)))
        multiples: dict[tuple[str, tuple[Any, ...]], tuple[tuple[str, tuple[Any, ...]], int]] = {}
        own: list[tuple[str, tuple[Any, ...]]] = []
        for key in sorted(order, key=lambda k: _size(k[1])):  # the smallest first: the others its multiples
            r, vector = key
            for base in sorted(own, key=order.index):
                k = _multiple(vector, base[1]) if base[0] == r else None
                if k is None and base[1] == vector and len(set(vector)) > 2:
                    k = 1
                if k is not None:
                    multiples[key] = (base, k)
                    break
            else:
                own.append(key)
        own.sort(key=order.index)
        # Names: the role (out, stride) or an inner block's argument name; where two would be the same, both are
        # qualified by their layer's or call's name (branch2_out, out0 for a layer or call named 0).
        plain = {key: self.label(members[0], *where[groups[key][0]], key[0], False) for key in own}
        clashes = Counter(plain.values())
        args: dict[str, Any] = {}
        subst: dict[Position, str] = {}
        arg_of: dict[tuple[str, tuple[Any, ...]], str] = {}
        for key in own:
            r, vector = key
            name = plain[key]
            if clashes[name] > 1:
                name = self.label(members[0], *where[groups[key][0]], r, True)
            name = _identifier(name)
            while name in args or name in _RESERVED:
                name = f"{name}_"
            # Many values (a width per stage): required; few (a stride of 1 or 2): the most common is the default.
            args[name] = None if len(set(vector)) > 2 else Counter(vector).most_common(1)[0][0]
            arg_of[key] = name
            for j in groups[key]:
                subst[where[j]] = name
        for key, (base, k) in multiples.items():
            for j in groups[key]:
                subst[where[j]] = arg_of[base] if k == 1 else f"{k} * {arg_of[base]}"
        block = self.block_name(members)
        self.roles[block] = {arg_of[key]: key[0] for key in own}
        self.plan.blocks.append(Block(block, args, self.roles[block], subst, members[0]))
        for index, group in enumerate(members):
            values = {}
            for name in args:
                key = next(k for k, v in arg_of.items() if v == name)
                values[name] = key[1][index]
            self.plan.calls[id(group)] = Call(block, values)

    def label(self, group: Any, path: tuple[int, ...], arg: str, role: str, qualified: bool) -> str:
        """A name for an argument set at `path`: an inner block's own argument name or the role; qualified, with
        the call's or layer's name in front (conv3_out), or behind where that is a number (out0)."""
        item = group
        for index in path:
            item = item.items[index]
        base = arg if self.is_group(item) else role
        if not qualified:
            return base
        local = str(item.local if self.is_group(item) else item[2])
        return f"{base}{local}" if local.isdigit() else f"{local}_{base}"


def plan_blocks(root: Any, types: dict[tuple[str, ...], str], is_group: Callable[[Any], bool]) -> Plan:
    """The blocks to define and how each recognised group calls one."""
    return _Planner(root, types, is_group).run()


Text = Callable[[Any, tuple[int, ...]], str]  # renders the call of a group at a position


def repeat_of(group: Any, plan: Plan, is_group: Callable[[Any], bool], text: Text,
              prefix: tuple[int, ...]) -> tuple[str | None, str, int] | None:
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
    if calls[0] != rest[0] and len(rest) < 2:  # two different calls read better as a list
        return None
    return (None if calls[0] == rest[0] else calls[0]), rest[0], len(items)
