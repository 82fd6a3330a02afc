"""The memory models, one walk each over the analysed graph's ops.

- Inference peak (`peak_inference_bytes`): an eager forward under torch.no_grad. A tensor is alive while anything
  holds it: until its last reader has run, until the composite that took it as input returns (`Graph.releases`),
  or to the end for the network's inputs and outputs. Views, identities, dropout at inference and in-place
  activations allocate nothing (they share their input's storage). While an op runs, the temporaries its kind
  declares (`Kind.transient`: max pooling's int64 indices, LRN's intermediates, an explicit padding copy) are
  alive beside its output; merges declare theirs too (`MergeOp.transient`: a product of three or more tensors keeps
  a partial product). Backend workspace that depends on the algorithm chosen (im2col buffers, cuDNN workspace) is
  not predicted (the README lists it per kind, measured).
- Saved for backward (`saved_training_bytes`): what autograd keeps in one training-mode forward of a real training
  step. Gradient flow: the network's inputs need no gradient (unless `input_requires_grad`); an op's output needs
  one when an input does or the op has trainable parameters, and only such ops are recorded and keep anything, so a
  frozen or parameter-free prefix keeps nothing. Each kind says what it keeps (its input, its output, extras, in a
  dtype that may depend on the device: `kinds.base.itemsize_for`), each merge likewise (a product keeps each
  factor for the other's gradient), and a storage kept twice counts once.
"""

from __future__ import annotations

from archcalc.core.graph import Graph
from archcalc.core.kinds.base import itemsize_for, numel

SAVED_DEVICES = ("cuda", "cpu")  # whose kernels the saved-tensor figures follow


def _storage_bytes(graph: Graph, itemsize: int, batch: int, train: bool) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for t in graph.tensors:
        storage = t.train_storage if train else t.storage
        sizes.setdefault(storage, numel(t.shape) * itemsize * batch)  # the first tensor on a storage made it
    return sizes


def peak_inference_bytes(graph: Graph, itemsize: int, batch: int, device: str = "cpu") -> int:
    """Most activation bytes alive at once in an eager forward under no_grad (the inputs included)."""
    sizes = _storage_bytes(graph, itemsize, batch, train=False)
    release = graph.releases()
    storage_release: dict[int, int] = {}
    for t, tensor in enumerate(graph.tensors):
        storage_release[tensor.storage] = max(storage_release.get(tensor.storage, -1), release[t])
    frees: dict[int, list[int]] = {}
    for storage, at in storage_release.items():
        frees.setdefault(at, []).append(storage)
    live = sum(sizes[graph.tensors[t].storage] for _, t in graph.inputs)
    peak = live
    inputs = {graph.tensors[t].storage for _, t in graph.inputs}
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.output]
        if out.storage not in inputs and all(graph.tensors[t].storage != out.storage for t in op.inputs):
            live += sizes[out.storage]
            peak = max(peak, live)
        if op.kind is not None:
            src = graph.tensors[op.inputs[0]]
            temporaries = op.kind.transient(op.args, src.shape, out.shape)
        else:
            temporaries = op.merge.transient([graph.tensors[t].shape for t in op.inputs], out.shape)  # type: ignore[union-attr]
        if temporaries:
            extra = sum(n * itemsize_for(size, itemsize, device) for n, size in temporaries) * batch
            peak = max(peak, live + extra)
        for storage in frees.get(i, ()):
            live -= sizes[storage]
    return peak


def saved_training_bytes(graph: Graph, itemsize: int, batch: int, device: str = "cuda",
                         input_requires_grad: bool = False) -> int:
    """Bytes autograd saves for backward during a training-mode forward, parameters and buffers excluded."""
    sizes = _storage_bytes(graph, itemsize, batch, train=True)
    needs_grad = [False] * len(graph.tensors)
    for _, t in graph.inputs:
        needs_grad[t] = input_requires_grad
    saved: set[int] = set()
    extra = 0
    for op in graph.ops:
        out = graph.tensors[op.output]
        if op.merge is not None:
            needs = [needs_grad[t] for t in op.inputs]
            needs_grad[op.output] = any(needs)
            kept, elements = op.merge.saved([graph.tensors[t].shape for t in op.inputs], needs)
            saved.update(graph.tensors[op.inputs[i]].train_storage for i in kept)
            extra += elements * itemsize * batch
            continue
        assert op.kind is not None
        src = graph.tensors[op.inputs[0]]
        params_need_grad = op.trainable and op.kind.cost(op.args, src.shape, out.shape).params > 0
        recorded = needs_grad[op.inputs[0]] or params_need_grad
        needs_grad[op.output] = recorded
        if not recorded:  # no autograd node: nothing is kept
            continue
        what = op.kind.saved(op.args, src.shape, out.shape)
        if what.input or what.input_for_params and params_need_grad:
            saved.add(src.train_storage)
        if what.output:
            saved.add(out.train_storage)
        for elements, size in what.extra:
            extra += elements * itemsize_for(size, itemsize, device) * batch
        for elements, size in what.per_batch:
            extra += elements * itemsize_for(size, itemsize, device)
    return sum(sizes[s] for s in saved) + extra
