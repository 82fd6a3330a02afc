"""The memory models, one walk each over the analysed graph's ops.

- Inference peak (`peak_inference_bytes`): an eager forward under torch.no_grad. A tensor is alive while anything
  holds it: until its last reader has run, until the composite that took it as input returns (`Graph.releases`),
  or to the end for the network's inputs and outputs. Views, identities, dropout at inference and in-place
  activations allocate nothing (they share their input's storage). While an op runs, the temporaries its kind
  declares (`Kind.transient`: max pooling's int64 indices, LRN's intermediates) are alive beside its output.
  Backend workspace that depends on the algorithm chosen (im2col buffers, cuDNN workspace) is not predicted.
- Saved for backward (`saved_training_bytes`): what autograd keeps in a training-mode forward; each kind says what
  it keeps (its input, its output, extras), a product keeps its factors, and a storage kept twice counts once.
"""

from __future__ import annotations

from archcalc.core.graph import Graph
from archcalc.core.kinds.base import numel


def _storage_bytes(graph: Graph, itemsize: int, batch: int, train: bool) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for t in graph.tensors:
        storage = t.train_storage if train else t.storage
        sizes.setdefault(storage, numel(t.shape) * itemsize * batch)  # the first tensor on a storage made it
    return sizes


def peak_inference_bytes(graph: Graph, itemsize: int, batch: int) -> int:
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
            if temporaries:
                extra = sum(n * (size or itemsize) for n, size in temporaries) * batch
                peak = max(peak, live + extra)
        else:
            partial = op.merge.intermediates([graph.tensors[t].shape for t in op.inputs])  # type: ignore[union-attr]
            if partial:  # the last partial product is alive beside the result while the last multiply runs
                peak = max(peak, live + numel(partial[-1]) * itemsize * batch)
        for storage in frees.get(i, ()):
            live -= sizes[storage]
    return peak


def saved_training_bytes(graph: Graph, itemsize: int, batch: int) -> int:
    """Bytes autograd saves for backward during a training-mode forward, parameters and buffers excluded."""
    sizes = _storage_bytes(graph, itemsize, batch, train=True)
    saved: set[int] = set()
    extra = 0
    for op in graph.ops:
        out = graph.tensors[op.output]
        if op.merge is not None:
            if op.merge.saves_inputs:
                saved.update(graph.tensors[t].train_storage for t in op.inputs)
                partial = op.merge.intermediates([graph.tensors[t].shape for t in op.inputs])
                extra += sum(numel(shape) for shape in partial) * itemsize * batch
            continue
        assert op.kind is not None
        src = graph.tensors[op.inputs[0]]
        what = op.kind.saved(op.args, src.shape, out.shape)
        if what.input:
            saved.add(src.train_storage)
        if what.output:
            saved.add(out.train_storage)
        for elements, size in what.extra:
            extra += elements * (size or itemsize) * batch
        for elements, size in what.per_batch:
            extra += elements * (size or itemsize)
    return sum(sizes[s] for s in saved) + extra
