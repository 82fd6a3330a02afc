"""The analysed graph: what the engine computes and every consumer walks (memory models, builder, export, validate).

Ops are in execution order (the spec's order, which is topological: a reference can only name an earlier tensor).
Each op reads tensors by id and writes one new tensor. `Graph.ops` is the one walk; nothing re-traverses the spec.
"""

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, NamedTuple

from archcalc.core.errors import Loc
from archcalc.core.kinds.base import Cost, Kind, Shape
from archcalc.core.merges import MergeOp


class Tensor(NamedTuple):
    name: str  # the node (layer, block, input) that made it; readable in errors and in the generated source
    shape: Shape  # per sample
    storage: int  # storage id in an inference forward: views and in-place ops share their input's
    train_storage: int  # storage id in a training-mode forward (dropout, for one, then writes a new tensor)
    rf: tuple[int, ...] = ()  # its theoretical receptive field per spatial axis, in input positions
    jump: tuple[int | Fraction, ...] = ()  # per spatial axis: input positions between neighbouring positions of it


class Op(NamedTuple):
    """One layer (kind) or merge (merge) — exactly one of the two is set."""

    name: str
    kind: Kind | None
    merge: MergeOp | None
    args: Mapping[str, Any]  # references (size_of, to) already resolved to shapes
    inputs: tuple[int, ...]  # tensor ids
    output: int
    loc: Loc | None
    trainable: bool = True
    cost: Cost = Cost()  # per sample, as the kind (or merge: `full` only) computed it; the memory models read it

    @property
    def label(self) -> str:
        return self.kind.name if self.kind is not None else self.merge.name  # type: ignore[union-attr]


class Hold(NamedTuple):
    """A composite (block, sequence, branch, residual) keeps its input alive until its last op has run, as the
    caller's variable does in an eager PyTorch forward (torchvision's blocks hold `identity = x`)."""

    tensor: int
    until: int  # op index


class Graph(NamedTuple):
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    holds: tuple[Hold, ...]
    inputs: tuple[tuple[str, int], ...]  # name -> tensor id
    outputs: tuple[tuple[str, int], ...]
    discarded: tuple[int, ...] = ()  # tensor ids of `discard: true` items: computed and counted, read by nothing

    def releases(self) -> list[int]:
        """For each tensor, the index of the op after which nothing holds it any more; graph inputs (the caller
        holds them) and outputs live to the end (len(ops))."""
        end = len(self.ops)
        release = [-1] * len(self.tensors)
        for i, op in enumerate(self.ops):
            release[op.output] = max(release[op.output], i)
            for t in op.inputs:
                release[t] = max(release[t], i)
        for hold in self.holds:
            release[hold.tensor] = max(release[hold.tensor], hold.until)
        for _, t in self.inputs + self.outputs:
            release[t] = end
        return release

    def used(self, discarded: bool = True) -> list[bool]:
        """Which ops some output depends on, or (`discarded`) some `discard: true` item: those are computed and
        counted. With `discarded` false: the ops some output depends on (the ones a gradient reaches in training)."""
        needed = [False] * len(self.tensors)
        for _, t in self.outputs:
            needed[t] = True
        if discarded:
            for t in self.discarded:
                needed[t] = True
        used = [False] * len(self.ops)
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if needed[op.output]:
                used[i] = True
                for t in op.inputs:
                    needed[t] = True
        return used

    def feeds(self) -> list[tuple[str, ...]]:
        """For each op, the names of the outputs that depend on it."""
        result: list[list[str]] = [[] for _ in self.ops]
        for name, out in self.outputs:
            needed = [False] * len(self.tensors)
            needed[out] = True
            for i in range(len(self.ops) - 1, -1, -1):
                op = self.ops[i]
                if needed[op.output]:
                    result[i].append(name)
                    for t in op.inputs:
                        needed[t] = True
        return [tuple(f) for f in result]
