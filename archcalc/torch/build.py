"""Build the torch nn.Module for an analyzed spec: one executor over the analysed graph's ops.

Submodules carry the spec's hierarchical names (`layer1.0.conv1` is `model.get_submodule("layer1.0.conv1")`,
nested in plain containers), so state_dicts match torchvision's naming. `SpecGraph.forward` runs the ops in
order, reading and writing a list of tensors, and drops each tensor exactly when the analytic memory model says
nothing holds it any more (core.graph.Graph.releases): after its last reader, or when the composite that took it as
input ends (as a torchvision block's `identity = x` does). Merges run as their recipes (MERGE_RECIPES) say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from archcalc.core.analyze import Report
from archcalc.core.graph import Graph
from archcalc.torch.recipes import MERGE_RECIPES, module_call


class SpecGroup(nn.Module):
    """A named level of the hierarchy (a block, a stage, a branch): it holds submodules; SpecGraph runs them."""


class SpecGraph(nn.Module):
    """The network: `plan` lists, per op, its module path (or a merge name), input tensor ids, output id and the
    ids to drop after it runs. One input is a tensor argument; several are positional in `input_names` order.
    One output returns a tensor; several return a dict by output name."""

    def __init__(self, n_tensors: int, input_ids: list[int], output_names: list[str], output_ids: list[int],
                 plan: list[tuple[str, list[int], int, list[int]]]) -> None:
        super().__init__()
        self.n_tensors = n_tensors
        self.input_ids = input_ids
        self.output_names = output_names
        self.output_ids = output_ids
        self.plan = plan
        self.record: Callable[[int, torch.Tensor], None] | None = None  # validate's per-op probe
        self.checkpoint: dict[int, int] = {}  # first op -> last op of a segment run under torch.utils.checkpoint
        self._steps: list[tuple[Callable[..., torch.Tensor], list[int], int, list[int]]] | None = None

    def _resolve(self) -> list[tuple[Callable[..., torch.Tensor], list[int], int, list[int]]]:
        steps = []
        for target, inputs, output, frees in self.plan:
            fn = MERGE_RECIPES[target[1:]].run if target.startswith("%") else self.get_submodule(target)
            steps.append((fn, inputs, output, frees))
        return steps

    def forward(self, *xs: torch.Tensor) -> Any:
        if self._steps is None:
            self._steps = self._resolve()
        env: list[Any] = [None] * self.n_tensors
        for t, x in zip(self.input_ids, xs):
            env[t] = x
        record = self.record
        segment = -1  # the last op of the checkpointed segment being skipped over
        for i, (fn, inputs, output, frees) in enumerate(self._steps):
            if i in self.checkpoint:
                segment = self.checkpoint[i]
                outside = self._outside(i, segment)
                env[self._steps[segment][2]] = _checkpoint(self._segment(i, segment, outside),
                                                           *[env[t] for t in outside])
            if i > segment:
                # Written inline: no local keeps an input alive past the op (the model's liveness rule).
                env[output] = fn(*[env[t] for t in inputs])
                if record is not None:
                    record(i, env[output])
            for t in frees:
                env[t] = None
        if len(self.output_ids) == 1:
            return env[self.output_ids[0]]
        return {name: env[t] for name, t in zip(self.output_names, self.output_ids)}

    def _outside(self, first: int, last: int) -> list[int]:
        """The tensors ops first..last read that they do not make, in first-read order."""
        assert self._steps is not None
        made = {output for _, _, output, _ in self._steps[first:last + 1]}
        return list(dict.fromkeys(t for _, inputs, _, _ in self._steps[first:last + 1] for t in inputs
                                  if t not in made))

    def _segment(self, first: int, last: int, outside: list[int]) -> Callable[..., torch.Tensor]:
        """Ops first..last as one function of the tensors they read from outside, dropping each tensor after its
        last reader as forward does; returns the last op's output."""
        steps = self._steps
        assert steps is not None

        def run(*xs: torch.Tensor) -> torch.Tensor:
            env: dict[int, Any] = dict(zip(outside, xs))
            for fn, inputs, output, frees in steps[first:last + 1]:
                env[output] = fn(*[env[t] for t in inputs])
                for t in frees:
                    if t != steps[last][2]:
                        env.pop(t, None)
            return env[steps[last][2]]  # type: ignore[no-any-return]

        return run

    def __getstate__(self) -> dict[str, Any]:  # copies (deepcopy, pickling) resolve their own modules
        state = self.__dict__.copy()
        state["_steps"] = None
        return state


def _checkpoint(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    """torch.utils.checkpoint as core.memory.training_timeline models it: non-reentrant, without keeping the RNG
    state (preserve_rng_state=False: a dropout layer in the segment draws a new mask when it is recomputed; real
    training keeps the default, True, which also holds the CPU RNG state, 5,056 bytes per segment)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *xs, use_reentrant=False, preserve_rng_state=False)  # type: ignore[no-any-return]


def plan(graph: Graph) -> list[tuple[str, list[int], int, list[int]]]:
    """Per op: module path (or '%' + merge name), inputs, output, tensors to drop after it."""
    release = graph.releases()
    frees: list[list[int]] = [[] for _ in graph.ops]
    for t, at in enumerate(release):
        if 0 <= at < len(graph.ops):
            frees[at].append(t)
    return [(op.name if op.kind is not None else "%" + op.merge.name, list(op.inputs), op.output,  # type: ignore
             sorted(frees[i])) for i, op in enumerate(graph.ops)]


def module_paths(graph: Graph) -> list[tuple[str, int | None]]:
    """Every submodule path in first-use order: the levels above each layer (`layer1`, `layer1.0` for
    `layer1.0.conv1`; op None), then the layer itself (its op index). Merges have no module."""
    seen: set[str] = set()
    paths: list[tuple[str, int | None]] = []
    for i, op in enumerate(graph.ops):
        if op.kind is None:
            continue
        parts = op.name.split(".")
        for j in range(1, len(parts)):
            path = ".".join(parts[:j])
            if path not in seen:
                seen.add(path)
                paths.append((path, None))
        paths.append((op.name, i))
    return paths


def build_module(report: Report) -> nn.Module:
    """The nn.Module for an analyzed spec, in eval mode, float32 on the current default device."""
    graph = report.graph
    model = SpecGraph(len(graph.tensors), [t for _, t in graph.inputs], [n for n, _ in graph.outputs],
                      [t for _, t in graph.outputs], plan(graph))
    for path, index in module_paths(graph):
        if index is None:
            module: nn.Module = SpecGroup()
        else:
            op = graph.ops[index]
            module = module_call(op.kind, op.args, graph.tensors[op.inputs[0]].shape).make()  # type: ignore
            if not op.trainable:
                for p in module.parameters():
                    p.requires_grad_(False)
        parent, _, local = path.rpartition(".")
        (model.get_submodule(parent) if parent else model).add_module(local, module)
    model.eval()
    return model


def leaf_modules(model: nn.Module, report: Report) -> dict[str, nn.Module]:
    """The module of every leaf row, by its spec name (merge ops have none)."""
    return {r.name: model.get_submodule(r.name) for r in report.rows if r.module}
