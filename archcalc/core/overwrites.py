"""Which in-place layers overwrite a tensor autograd keeps for backward: networks torch runs forward but cannot train.

PyTorch stamps every tensor with a version counter; a tensor saved for backward remembers the version it was saved
at, and the backward refuses to run when an in-place op has changed it since ("one of the variables needed for
gradient computation has been modified by an inplace operation"). Two in-place ReLUs in a row are the common case:
the first keeps its output for its gradient, and the second writes over it. The graph knows, for every op of a
training-mode forward, what it keeps (Kind.saved, MergeOp.saved: the rules the memory models use) and which storage
each tensor lives in, so the conflict is found here, before anything runs.
"""

from typing import NamedTuple

from archcalc.core.graph import Graph


class Overwrite(NamedTuple):
    op: int  # index in graph.ops of the in-place layer
    keeper: int  # index of the op whose saved tensor it overwrites

    def message(self, graph: Graph) -> str:
        keeper = graph.ops[self.keeper]
        return (f"in place, it overwrites a tensor {keeper.name} ({keeper.label}) keeps for its backward: torch runs "
                "this network forward but cannot train it; write 'inplace: false' here")


def overwrites(graph: Graph, input_requires_grad: bool = False) -> list[Overwrite]:
    """The in-place layers of a training-mode forward that write into a storage an earlier recorded op keeps."""
    needs_grad = [False] * len(graph.tensors)
    for _, t in graph.inputs:
        needs_grad[t] = input_requires_grad
    kept_by: dict[int, int] = {}  # training storage -> the first op that keeps it
    found: list[Overwrite] = []
    used = graph.used(discarded=False)  # what no gradient reaches keeps nothing (its node is freed at once)
    for i, op in enumerate(graph.ops):
        inputs = [graph.tensors[t] for t in op.inputs]
        if op.merge is not None:
            needs = [needs_grad[t] for t in op.inputs]
            needs_grad[op.output] = any(needs)
            if used[i]:
                indices, _ = op.merge.saved([t.shape for t in inputs], needs)
                for k in indices:
                    kept_by.setdefault(inputs[k].train_storage, i)
            continue
        assert op.kind is not None
        src, out = inputs[0], graph.tensors[op.output]
        params_need_grad = op.trainable and op.cost.params > 0
        recorded = needs_grad[op.inputs[0]] or params_need_grad
        needs_grad[op.output] = recorded
        if op.kind.inplace(op.args) and out.train_storage == src.train_storage:
            keeper = kept_by.get(src.train_storage)
            if keeper is not None:  # the version counter moves whether or not this op is recorded
                found.append(Overwrite(i, keeper))
        if not (recorded and used[i]):
            continue
        what = op.kind.saved(op.args, src.shape, out.shape)
        if (what.input or what.input_for_params and params_need_grad) and not (
                src.train_strided and (op.kind.contiguous_input or op.kind.contiguous_recorded_input)):  # a copy
            kept_by.setdefault(src.train_storage, i)
        if what.output:
            kept_by.setdefault(out.train_storage, i)
    return found
