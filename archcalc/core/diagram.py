"""The network as a diagram: nodes (inputs, layers, merges, collapsed blocks, outputs) and the edges between them,
taken from the analysed report: every row's `reads` is an edge, so skips, branches and merges appear as drawn by
the graph itself. Pure values; render.diagram writes them as Mermaid or DOT text.

With a depth limit, every block at that depth becomes one node (its rows' costs summed, as `calc --depth` shows it)
and the edges between the rows of different nodes become edges between those nodes.
"""

from __future__ import annotations

from typing import NamedTuple

from archcalc.core.analyze import Report, Row
from archcalc.core.kinds.base import Shape
from archcalc.core.units import dims

OUTPUT_PREFIX = "output:"  # output node ids; layer and input names cannot hold ':', so these never collide


class Node(NamedTuple):
    id: str  # the row's name (a layer, merge or block), an input's name, or OUTPUT_PREFIX + an output's name
    role: str  # 'input' | 'layer' | 'merge' | 'block' | 'output'
    name: str  # what the label shows first
    kind: str  # the kind, merge op or block label; '' for inputs and outputs
    config: str  # kernel/stride/pad and the like, as in the table
    output: Shape
    params: int = 0
    macs: int = 0
    flops: int = 0
    used: bool = True  # False: no output depends on it (under `unused: allow`)
    outputs: tuple[Shape, ...] = ()  # a collapsed block's several outputs (HRNet's stages: every branch)


class Diagram(NamedTuple):
    name: str
    input: Shape
    convention: str
    batch: int
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str, str], ...]  # (from node id, to node id, label), in execution order, without
    # repeats: one edge per pair of nodes, and from a node with several outputs one per tensor, labelled with its shape


def diagram(report: Report, depth: int | None = None) -> Diagram:
    graph = report.graph
    nodes = [Node(name, "input", name, "", "", graph.tensors[t].shape) for name, t in graph.inputs]
    owner = _owners(report, depth)
    used_in: dict[str, bool] = {}  # node id -> whether any of its rows is used
    for r in report.rows:
        used_in[owner[r.name]] = used_in.get(owner[r.name], False) or r.used
    shown: list[Row] = [r for r in (report.outline if depth is not None else report.rows) if r.name in used_in]
    for row in shown:  # (a block holding no layer, such as an identity branch, is no node: nothing flows through it)
        role = "block" if not row.leaf else "layer" if row.module else "merge"
        used = used_in[row.name]
        outputs = row.shapes if len(row.outputs) > 1 else ()
        nodes.append(Node(row.name, role, row.name, row.kind, row.config if row.leaf else "", row.output,
                          row.params, row.macs, row.flops, used, outputs))
    several = {node.id for node in nodes if node.outputs}
    shape = {t.name: t.shape for t in graph.tensors}
    edges: dict[tuple[str, str, str], str] = {}  # (from, to, the tensor where `from` has several outputs) -> label
    for row in report.rows:
        target = owner[row.name]
        for source in row.reads:
            node = owner.get(source, source)
            if node != target and node in several:
                edges[(node, target, source)] = dims(shape[source])
            elif node != target:
                edges[(node, target, "")] = ""
    for name, t in graph.outputs:
        made_by = graph.tensors[t].name  # the layer, merge or input that made the tensor
        nodes.append(Node(OUTPUT_PREFIX + name, "output", name, "", "", graph.tensors[t].shape))
        edges[(owner.get(made_by, made_by), OUTPUT_PREFIX + name, made_by)] = ""
    return Diagram(report.name, report.input, report.convention, report.batch, tuple(nodes),
                   tuple((a, b, label) for (a, b, _), label in edges.items()))


def _owners(report: Report, depth: int | None) -> dict[str, str]:
    """Each leaf row's name -> the name of the node that shows it: itself, or its enclosing block at `depth`.

    The outline is in pre-order and every level of nesting is one level of depth, so a row deeper than `depth`
    belongs to the last node at exactly `depth` before it."""
    if depth is None:
        return {r.name: r.name for r in report.rows}
    owner: dict[str, str] = {}
    current = ""
    for row in report.outline:
        if row.depth <= depth:
            current = row.name
        if row.leaf:
            owner[row.name] = row.name if row.depth <= depth else current
    return owner
