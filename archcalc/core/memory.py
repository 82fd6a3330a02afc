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
  factor for the other's gradient), and a storage kept twice counts once. An op no output depends on (`unused:
  allow`) runs, but its output is dropped at once and its node with it: it keeps nothing. A kind that makes its
  input contiguous (`Kind.contiguous_input`) keeps its own copy of a strided view (a crop), not the view's base.
"""

from typing import NamedTuple

from archcalc.core.graph import Graph
from archcalc.core.kinds.base import itemsize_for, numel

SAVED_DEVICES = ("cuda", "cpu")  # whose kernels the saved-tensor figures follow


def _storage_bytes(graph: Graph, itemsize: int, batch: int, train: bool) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for t in graph.tensors:
        storage = t.train_storage if train else t.storage
        sizes.setdefault(storage, numel(t.shape) * itemsize * batch)  # the first tensor on a storage made it
    return sizes


class Step(NamedTuple):
    """One op of the inference walk (`inference_timeline`): activation bytes (the inputs included, parameters and
    buffers not) alive while it runs — its output allocated, its inputs not yet freed, its temporaries beside them —
    and once it has returned and the tensors nothing holds any more are freed."""

    op: int  # index into Graph.ops
    running: int
    after: int
    temporaries: int  # of `running`: the op's declared temporaries (freed when it returns)


class Timeline(NamedTuple):
    start: int  # bytes alive before the first op: the network's inputs
    steps: tuple[Step, ...]
    allocated: tuple[int, ...]  # per storage (by id): the op that allocated it, -1 for the inputs
    freed: tuple[int, ...]  # per storage: the op after which it is freed; len(ops) for what lives to the end
    sizes: tuple[int, ...]  # per storage: bytes
    names: tuple[str, ...]  # per storage: the tensor that made it

    @property
    def peak(self) -> int:
        return max([self.start, *(s.running for s in self.steps)])

    @property
    def peak_step(self) -> int:
        """The op index at which the peak is reached (the first, if several), -1 when the inputs alone are it."""
        peak = self.peak
        return next((s.op for s in self.steps if s.running == peak), -1) if peak > self.start else -1

    def alive(self, op: int) -> list[tuple[str, int]]:
        """The storages alive while op `op` runs, (name, bytes), in allocation order (temporaries not included)."""
        return [(self.names[s], self.sizes[s]) for s in sorted(range(len(self.sizes)), key=self.allocated.__getitem__)
                if self.allocated[s] <= op <= self.freed[s] and self.sizes[s] > 0]


def peak_inference_bytes(graph: Graph, itemsize: int, batch: int, device: str = "cpu") -> int:
    """Most activation bytes alive at once in an eager forward under no_grad (the inputs included)."""
    return inference_timeline(graph, itemsize, batch, device).peak


def inference_timeline(graph: Graph, itemsize: int, batch: int, device: str = "cpu") -> Timeline:
    """The liveness walk behind `peak_inference_bytes`, one `Step` per op (its maximum is the peak)."""
    sizes = _storage_bytes(graph, itemsize, batch, train=False)
    names: dict[int, str] = {}
    for tensor in graph.tensors:
        names.setdefault(tensor.storage, tensor.name)
    release = graph.releases()
    storage_release: dict[int, int] = {}
    for t, tensor in enumerate(graph.tensors):
        storage_release[tensor.storage] = max(storage_release.get(tensor.storage, -1), release[t])
    frees: dict[int, list[int]] = {}
    for storage, at in storage_release.items():
        frees.setdefault(at, []).append(storage)
    inputs = {graph.tensors[t].storage for _, t in graph.inputs}
    allocated = dict.fromkeys(inputs, -1)
    live = sum(sizes[graph.tensors[t].storage] for _, t in graph.inputs)
    start = live
    steps: list[Step] = []
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.output]
        if out.storage not in inputs and all(graph.tensors[t].storage != out.storage for t in op.inputs):
            live += sizes[out.storage]
            allocated.setdefault(out.storage, i)
        if op.kind is not None:
            src = graph.tensors[op.inputs[0]]
            temporaries = op.kind.transient(op.args, src.shape, out.shape)
            if src.strided and op.kind.contiguous_input and not op.kind.alias:  # a copy of a crop, read then freed
                temporaries = (*temporaries, (numel(src.shape), 0))
        else:
            temporaries = op.merge.transient([graph.tensors[t].shape for t in op.inputs], out.shape)  # type: ignore[union-attr]
        extra = sum(n * itemsize_for(size, itemsize, device) for n, size in temporaries) * batch if temporaries else 0
        running = live + extra
        for storage in frees.get(i, ()):
            live -= sizes[storage]
        steps.append(Step(i, running, live, extra))
    count = max(sizes, default=-1) + 1
    never = len(graph.ops) + 1  # a storage no op allocates (it shares an earlier one's) is never alive on its own
    return Timeline(start, tuple(steps), tuple(allocated.get(s, never) for s in range(count)),
                    tuple(storage_release.get(s, -1) for s in range(count)),
                    tuple(sizes.get(s, 0) for s in range(count)), tuple(names.get(s, "") for s in range(count)))


def saved_training_bytes(graph: Graph, itemsize: int, batch: int, device: str = "cuda",
                         input_requires_grad: bool = False) -> int:
    """Bytes autograd saves for backward during a training-mode forward, parameters and buffers excluded."""
    steps = saved_timeline(graph, itemsize, batch, device, input_requires_grad)
    return steps[-1] if steps else 0


def saved_timeline(graph: Graph, itemsize: int, batch: int, device: str = "cuda",
                   input_requires_grad: bool = False) -> tuple[int, ...]:
    """Saved-for-backward bytes accumulated after each op of a training-mode forward (the last is the total)."""
    sizes = _storage_bytes(graph, itemsize, batch, train=True)
    needs_grad = [False] * len(graph.tensors)
    for _, t in graph.inputs:
        needs_grad[t] = input_requires_grad
    saved: set[int] = set()
    total = 0
    steps: list[int] = []

    def keep(storage: int) -> None:
        nonlocal total
        if storage not in saved:  # a storage kept twice counts once
            saved.add(storage)
            total += sizes[storage]

    # no gradient reaches an op only a `discard: true` item depends on: as under `unused: allow`, its output is
    # dropped at once, and with it what its node kept
    used = graph.used(discarded=False)
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.output]
        if not used[i]:  # `unused: allow`: its output is dropped at once, and with it what its node kept
            steps.append(total)
            continue
        if op.merge is not None:
            needs = [needs_grad[t] for t in op.inputs]
            needs_grad[op.output] = any(needs)
            kept, elements = op.merge.saved([graph.tensors[t].shape for t in op.inputs], needs)
            for i in kept:
                keep(graph.tensors[op.inputs[i]].train_storage)
            total += elements * itemsize * batch
            steps.append(total)
            continue
        assert op.kind is not None
        src = graph.tensors[op.inputs[0]]
        params_need_grad = op.trainable and op.cost.params > 0
        recorded = needs_grad[op.inputs[0]] or params_need_grad
        needs_grad[op.output] = recorded
        if recorded:  # else no autograd node: nothing is kept
            what = op.kind.saved(op.args, src.shape, out.shape)
            if what.input or what.input_for_params and params_need_grad:
                if src.train_strided and op.kind.contiguous_input:
                    total += numel(src.shape) * itemsize * batch  # the contiguous copy of a crop, kept alone
                else:
                    keep(src.train_storage)
            if what.output:
                keep(out.train_storage)
            for elements, size in what.extra + (what.extra_for_params if params_need_grad else ()):
                total += elements * itemsize_for(size, itemsize, device) * batch
            for elements, size in what.per_batch:
                total += elements * itemsize_for(size, itemsize, device)
        steps.append(total)
    return tuple(steps)


# ---- the training step ----------------------------------------------------------------------------------------


class TrainStep(NamedTuple):
    """One moment of the training step's timeline (`training_timeline`): the activation-side bytes alive while
    it runs (saved tensors, activations, gradients of activations, the loss, the weight gradients made so far),
    and after it has returned and what nothing holds any more is freed."""

    phase: str  # 'forward', 'loss', 'backward'
    op: int  # index into Graph.ops (-1 for the loss)
    running: int
    after: int


def training_timeline(graph: Graph, itemsize: int, batch: int, device: str, grad_bytes: tuple[int, ...],
                      input_requires_grad: bool = False) -> tuple[TrainStep, ...]:
    """Bytes made during one training step's forward and backward, beyond the parameters, buffers, optimizer
    state and inputs that exist before it (gradients set to None): the eager forward's activations, of which
    autograd keeps what each recorded op saves (`saved_timeline`'s rules) until that op's backward has run; the
    loss (the sum of the outputs' sums, one scalar each); backward op by op in reverse, each allocating the
    gradient of its input (a view kind passes a view of its own gradient; `add` passes the same tensor to every
    input, `concat` views of it) and of its parameters (`grad_bytes[op]`, kept: they become `.grad`), then freeing
    its output's gradient, its saved tensors (a storage when the last op keeping it is done) and its extras. A
    gradient reaching a tensor twice is summed into a new tensor, the two parts freed. What a kernel allocates
    and frees inside itself is not seen (backend workspace)."""
    sizes = _storage_bytes(graph, itemsize, batch, train=True)
    end = len(graph.ops)
    used = graph.used(discarded=False)  # a discarded op's node dies with its dropped output, as an unused one's
    release = graph.releases()
    forward_free: dict[int, int] = {}  # train storage -> op after which the forward no longer needs it
    for t, tensor in enumerate(graph.tensors):
        forward_free[tensor.train_storage] = max(forward_free.get(tensor.train_storage, -1), release[t])
    inputs = {graph.tensors[t].train_storage for _, t in graph.inputs}
    outputs = {graph.tensors[t].train_storage for _, t in graph.outputs}
    needs_grad = [False] * len(graph.tensors)
    for _, t in graph.inputs:
        needs_grad[t] = input_requires_grad
    recorded = [False] * end
    keepers: dict[int, set[int]] = {}  # storage -> the used recorded ops keeping it
    extras = [0] * end
    for i, op in enumerate(graph.ops):
        if op.merge is not None:
            needs = [needs_grad[t] for t in op.inputs]
            needs_grad[op.output] = recorded[i] = any(needs)
            if recorded[i] and used[i]:
                kept, elements = op.merge.saved([graph.tensors[t].shape for t in op.inputs], needs)
                for k in kept:
                    keepers.setdefault(graph.tensors[op.inputs[k]].train_storage, set()).add(i)
                extras[i] = elements * itemsize * batch
            continue
        assert op.kind is not None
        src, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        params_need_grad = op.trainable and op.cost.params > 0
        recorded[i] = needs_grad[op.output] = needs_grad[op.inputs[0]] or params_need_grad
        if recorded[i]:
            what = op.kind.saved(op.args, src.shape, out.shape)
            copy = src.train_strided and op.kind.contiguous_input
            if what.input or what.input_for_params and params_need_grad:
                if copy:
                    extras[i] += numel(src.shape) * itemsize * batch
                else:
                    keepers.setdefault(src.train_storage, set()).add(i)
            if what.output:
                keepers.setdefault(out.train_storage, set()).add(i)
            extra = what.extra + (what.extra_for_params if params_need_grad else ())
            extras[i] += sum(n * itemsize_for(s, itemsize, device) for n, s in extra) * batch
            extras[i] += sum(n * itemsize_for(s, itemsize, device) for n, s in what.per_batch)
            if not used[i]:  # its node dies with its dropped output: nothing kept past the op
                for storage in (src.train_storage, out.train_storage):
                    keepers.get(storage, set()).discard(i)
    held = {s for s, ops in keepers.items() if ops}

    frees: dict[int, list[int]] = {}
    for storage, at in forward_free.items():
        if storage not in held and storage not in inputs and at < end:
            frees.setdefault(at, []).append(storage)
    steps: list[TrainStep] = []
    live = 0
    alive: set[int] = set(inputs)
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.output]
        if out.train_storage not in alive:
            alive.add(out.train_storage)
            live += sizes[out.train_storage]
        live += extras[i]
        running = live + _training_transient(op, graph, itemsize, batch, device)
        if not used[i]:
            live -= extras[i]
        for storage in frees.get(i, ()):
            alive.discard(storage)
            live -= sizes[storage]
        steps.append(TrainStep("forward", i, running, live))
    # the loss: one scalar per output summed (a running sum of them beside the next), then the outputs dropped
    scalar = itemsize
    n_out = len(graph.outputs)
    running = live + (scalar if n_out == 1 else 3 * scalar)
    live += scalar
    for storage in outputs:
        if storage in alive and storage not in held and storage not in inputs:
            alive.discard(storage)
            live -= sizes[storage]
    steps.append(TrainStep("loss", -1, running, live))

    # backward: the seed (ones_like of the loss) is the gradient of every output, expanded (a view)
    live += scalar
    grad_refs: dict[int, int] = {-1: len(graph.outputs) + 1}  # gradient storage -> holders (the engine holds the seed)
    grad_size: dict[int, int] = {-1: scalar}
    grad_of: dict[int, int] = {t: -1 for _, t in graph.outputs}
    next_id = 0

    def give(t: int, storage: int) -> int:
        """Tensor t's gradient buffer takes `storage` (and the reference to it): kept as it is if t has none yet,
        else summed with the one it has into a new tensor (InputBuffer::accumulate, out of place: measured), the two
        parts dropped. Returns the bytes that sum allocated."""
        nonlocal next_id, live
        old = grad_of.get(t)
        if old is None:
            grad_of[t] = storage
            return 0
        grad_size[next_id] = numel(graph.tensors[t].shape) * itemsize * batch
        grad_refs[next_id] = 1
        grad_of[t] = next_id
        live += grad_size[next_id]
        next_id += 1
        made = grad_size[next_id - 1]
        drop(old)
        drop(storage)
        return made

    def drop(storage: int) -> None:
        nonlocal live
        grad_refs[storage] -= 1
        if grad_refs[storage] == 0:
            live -= grad_size[storage]
            del grad_refs[storage]

    for i in range(end - 1, -1, -1):
        op = graph.ops[i]
        if not recorded[i] or not used[i]:
            continue
        g = grad_of.get(op.output)
        made = grad_bytes[i]
        live += made  # the parameters' gradients, kept as .grad
        running = live
        new: list[tuple[int, int]] = []  # (tensor, bytes) of new gradient buffers
        shared: list[int] = []  # tensors receiving g (or a view of it)
        if op.merge is not None:
            for t in op.inputs:
                if needs_grad[t]:
                    if op.merge.name in ("add", "concat"):
                        shared.append(t)
                    else:
                        new.append((t, numel(graph.tensors[t].shape) * itemsize * batch))
        else:
            assert op.kind is not None
            t = op.inputs[0]
            if needs_grad[t]:
                # a view (not an in-place op, whose backward makes a new gradient) passes a view of its gradient;
                # a crop's backward writes it into zeros of the input's size
                if (op.kind.alias and op.kind.alias_in_training(op.args)
                        and not op.kind.strided(op.args, graph.tensors[t].shape, graph.tensors[op.output].shape)):
                    shared.append(t)
                else:
                    new.append((t, numel(graph.tensors[t].shape) * itemsize * batch))
        running += sum(b for _, b in new)
        if op.kind is not None:
            extra = op.kind.backward_transient(op.args, graph.tensors[op.inputs[0]].shape,
                                               graph.tensors[op.output].shape)
            running += sum(n * itemsize_for(code, itemsize, device) for n, code in extra) * batch
        live += sum(b for _, b in new)
        # the function returns its outputs; its input (the gradient of its output) and its saved tensors are freed;
        # then each output is added into the buffer of the tensor it is the gradient of
        returned: list[tuple[int, int]] = []
        for t, b in new:
            grad_size[next_id] = b
            grad_refs[next_id] = 1
            returned.append((t, next_id))
            next_id += 1
        if g is not None:
            for t in shared:
                grad_refs[g] += 1
                returned.append((t, g))
            del grad_of[op.output]
            drop(g)
        live -= extras[i]
        for storage in {graph.tensors[t].train_storage for t in (*op.inputs, op.output)}:
            ops = keepers.get(storage)
            if ops and i in ops:
                ops.discard(i)
                if not ops and storage in alive and storage not in inputs:
                    alive.discard(storage)
                    live -= sizes[storage]
        for t, storage in returned:
            running = max(running, live + give(t, storage))
        steps.append(TrainStep("backward", i, running, live))
    live -= 2 * scalar  # the seed and the loss, once backward returns
    steps.append(TrainStep("backward", -1, live, live))
    return tuple(steps)


def _training_transient(op: object, graph: Graph, itemsize: int, batch: int, device: str) -> int:
    """Temporaries an op frees before it returns in a training-mode forward: those it declares for inference
    that it does not keep for backward (max pooling's indices and group norm's statistics are kept: `Saved`)."""
    from archcalc.core.graph import Op

    assert isinstance(op, Op)
    if op.kind is None:
        return 0
    src, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
    temporaries = op.kind.train_transient(op.args, src.shape, out.shape)
    return sum(n * itemsize_for(s, itemsize, device) for n, s in temporaries) * batch
