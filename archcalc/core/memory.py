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

from collections.abc import Callable
from typing import NamedTuple

from archcalc.core.graph import Graph
from archcalc.core.kinds.base import STATISTICS, Kind, itemsize_for, numel

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
        if op.kind is not None:  # temporaries made from the weights, whatever the batch
            extra += sum(n * itemsize_for(size, itemsize, device)
                         for n, size in op.kind.transient_once(op.args, src.shape, out.shape))
        running = live + extra
        for storage in frees.get(i, ()):
            live -= sizes[storage]
        steps.append(Step(i, running, live, extra))
    count = max(sizes, default=-1) + 1
    never = len(graph.ops) + 1  # a storage no op allocates (it shares an earlier one's) is never alive on its own
    return Timeline(start, tuple(steps), tuple(allocated.get(s, never) for s in range(count)),
                    tuple(storage_release.get(s, -1) for s in range(count)),
                    tuple(sizes.get(s, 0) for s in range(count)), tuple(names.get(s, "") for s in range(count)))


def copies(kind: Kind) -> int:
    """How many contiguous copies of a strided input the kind keeps when autograd records it: one, or its
    `contiguous_recorded_input` count (a module whose several projections each read the view)."""
    return max(1, int(kind.contiguous_recorded_input))


def saved_training_bytes(graph: Graph, itemsize: int, batch: int, device: str = "cuda",
                         input_requires_grad: bool = False) -> int:
    """Bytes autograd saves for backward during a training-mode forward, parameters and buffers excluded."""
    steps = saved_timeline(graph, itemsize, batch, device, input_requires_grad)
    return steps[-1] if steps else 0


def _stat_size(op: object, itemsize: int, device: str, autocast: bool) -> Callable[[int], int]:
    """Bytes per element of an op's saved or temporary tensors, by item-size code (`itemsize_for`). Under autocast
    the parameters and buffers stay float32, so the CPU kernels that keep statistics in the parameters' dtype
    (batch and layer norm with float32 parameters or running statistics beside a bfloat16 input: mixed types)
    keep them in float32."""
    from archcalc.core.graph import Op

    assert isinstance(op, Op)
    mixed = autocast and (op.cost.params + op.cost.buffers) > 0

    def size(code: int) -> int:
        return 4 if mixed and code == STATISTICS else itemsize_for(code, itemsize, device)
    return size


def saved_timeline(graph: Graph, itemsize: int, batch: int, device: str = "cuda",
                   input_requires_grad: bool = False, autocast: bool = False) -> tuple[int, ...]:
    """Saved-for-backward bytes accumulated after each op of a training-mode forward (the last is the total);
    `autocast`: under torch.autocast, `itemsize` the low-precision type's (statistics: `_stat_size`)."""
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
            what = (op.kind.saved if needs_grad[op.inputs[0]] else op.kind.saved_for_params)(op.args, src.shape,
                                                                                              out.shape)
            if what.input or what.input_for_params and params_need_grad:
                if src.train_strided and (op.kind.contiguous_input or op.kind.contiguous_recorded_input):
                    # the contiguous copy of a crop, kept alone (one per projection reading it: `copies`)
                    total += numel(src.shape) * itemsize * batch * copies(op.kind)
                else:
                    keep(src.train_storage)
            if what.output:
                keep(out.train_storage)
            stat = _stat_size(op, itemsize, device, autocast)
            for elements, size in what.extra + (what.extra_for_params if params_need_grad else ()):
                total += elements * stat(size) * batch
            for elements, size in what.per_batch:
                total += elements * stat(size)
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


class Segment(NamedTuple):
    """Ops `first`..`last` (indices into Graph.ops, both included) run under torch.utils.checkpoint
    (use_reentrant=False): one block of the spec, whose only tensor read after it is its last op's output."""

    first: int
    last: int


class _Saves(NamedTuple):
    """Per tensor whether it needs a gradient; per op whether autograd records it, the storages its node keeps,
    the bytes it saves beside them (statistics, indices, a crop's copy), whether it saves anything (parameters
    included), and whether it saves something it computes (its output, statistics: saved after it has run)."""

    needs_grad: list[bool]
    recorded: list[bool]
    keeps: list[set[int]]
    extras: list[int]
    packs: list[bool]
    packs_output: list[bool]


_SAVES: dict[tuple[int, int, int, str, bool, bool], tuple[Graph, _Saves]] = {}  # the last few, by graph identity


def _saves(graph: Graph, itemsize: int, batch: int, device: str, input_requires_grad: bool,
           autocast: bool = False) -> _Saves:
    """What each op saves (read-only once made; the planner walks one graph many times: the last few are kept)."""
    key = (id(graph), itemsize, batch, device, input_requires_grad, autocast)
    hit = _SAVES.get(key)
    if hit is not None and hit[0] is graph:
        return hit[1]
    made = _saving(graph, itemsize, batch, device, input_requires_grad, autocast)
    if len(_SAVES) >= 4:
        _SAVES.clear()
    _SAVES[key] = (graph, made)
    return made


def _saving(graph: Graph, itemsize: int, batch: int, device: str, input_requires_grad: bool,
            autocast: bool = False) -> _Saves:
    end = len(graph.ops)
    used = graph.used(discarded=False)
    needs_grad = [False] * len(graph.tensors)
    for _, t in graph.inputs:
        needs_grad[t] = input_requires_grad
    recorded = [False] * end
    keeps: list[set[int]] = [set() for _ in range(end)]  # per op: the storages its node keeps
    extras = [0] * end
    packs = [False] * end  # its node saves something (a tensor, a parameter, statistics)
    packs_output = [False] * end  # ... after it has computed (its output, its statistics): see Segment
    for i, op in enumerate(graph.ops):
        if op.merge is not None:
            needs = [needs_grad[t] for t in op.inputs]
            needs_grad[op.output] = recorded[i] = any(needs)
            if recorded[i] and used[i]:
                kept, elements = op.merge.saved([graph.tensors[t].shape for t in op.inputs], needs)
                keeps[i].update(graph.tensors[op.inputs[k]].train_storage for k in kept)
                extras[i] = elements * itemsize * batch
                packs[i] = bool(kept) or elements > 0
                packs_output[i] = elements > 0
            continue
        assert op.kind is not None
        src, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        params_need_grad = op.trainable and op.cost.params > 0
        input_grad = needs_grad[op.inputs[0]]
        recorded[i] = needs_grad[op.output] = input_grad or params_need_grad
        if recorded[i]:
            what = (op.kind.saved if input_grad else op.kind.saved_for_params)(op.args, src.shape, out.shape)
            copy = src.train_strided and (op.kind.contiguous_input or op.kind.contiguous_recorded_input)
            if what.input or what.input_for_params and params_need_grad:
                if copy:
                    extras[i] += numel(src.shape) * itemsize * batch * copies(op.kind)
                else:
                    keeps[i].add(src.train_storage)
            if what.output:
                keeps[i].add(out.train_storage)
            stat = _stat_size(op, itemsize, device, autocast)
            extra = what.extra + (what.extra_for_params if params_need_grad else ())
            stats = sum(n * stat(s) for n, s in extra) * batch + sum(n * stat(s) for n, s in what.per_batch)
            extras[i] += stats
            packs[i] = bool(keeps[i]) or extras[i] > 0 or params_need_grad
            packs_output[i] = what.output or stats > 0
            if not used[i]:  # its node dies with its dropped output: nothing kept past the op
                keeps[i] = set()

    return _Saves(needs_grad, recorded, keeps, extras, packs, packs_output)


def recomputed(graph: Graph, segment: Segment, device: str = "cpu", input_requires_grad: bool = False) -> range:
    """The ops a checkpointed segment's recomputation runs (training_timeline's rule: up to the last op that saves
    anything, that op itself only if it saves something it computes); empty when the segment saves nothing."""
    s = _saves(graph, 4, 1, device, input_requires_grad)
    used = graph.used(discarded=False)
    packing = [i for i in range(segment.first, segment.last + 1) if s.recorded[i] and used[i] and s.packs[i]]
    if not packing:
        return range(segment.first, segment.first)
    last = packing[-1]
    return range(segment.first, last + 1 if s.packs_output[last] else last)


class Holders:
    """Who holds the bytes of a training step's timeline (`training_timeline(..., holders=)`): by op index (what
    the op made in the forward -- its output, its extras -- and in backward -- its input's and its parameters'
    gradients, the sums it caused), -1 for the loss and the seed. `at_peak`: that breakdown at the first moment
    the timeline's `running` is largest (it sums to that maximum); `end`: after backward."""

    __slots__ = ("by", "peak", "at_peak", "end")

    def __init__(self) -> None:
        self.by: dict[int, int] = {}
        self.peak = -1
        self.at_peak: dict[int, int] = {}
        self.end: dict[int, int] = {}

    def add(self, holder: int, n: int) -> None:
        self.by[holder] = self.by.get(holder, 0) + n

    def moment(self, running: int, *extra: tuple[int, int]) -> None:
        """A moment of the timeline: `running` bytes, held as `by` says plus `extra` (holder, bytes)."""
        if running > self.peak:
            self.peak = running
            self.at_peak = {h: n for h, n in self.by.items() if n}
            for h, n in extra:
                if n:
                    self.at_peak[h] = self.at_peak.get(h, 0) + n


def training_timeline(graph: Graph, itemsize: int, batch: int, device: str, grad_bytes: tuple[int, ...],
                      input_requires_grad: bool = False, segments: tuple[Segment, ...] = (),
                      moments: list[int] | None = None, forward_only: bool = False,
                      holders: Holders | None = None, autocast: bool = False) -> tuple[TrainStep, ...]:
    """Bytes made during one training step's forward and backward, beyond the parameters, buffers, optimizer
    state and inputs that exist before it (gradients set to None): the eager forward's activations, of which
    autograd keeps what each recorded op saves (`saved_timeline`'s rules) until that op's backward has run; the
    loss (the sum of the outputs' sums, one scalar each); backward op by op in reverse, each allocating the
    gradient of its input (a view kind passes a view of its own gradient; `add` passes the same tensor to every
    input, `concat` views of it) and of its parameters (`grad_bytes[op]`, kept: they become `.grad`), then freeing
    its output's gradient, its saved tensors (a storage when the last op keeping it is done) and its extras. A
    gradient reaching a tensor twice is summed into a new tensor, the two parts freed. What a kernel allocates
    and frees inside itself is not seen (backend workspace).

    `segments` run under torch.utils.checkpoint(use_reentrant=False, preserve_rng_state=False): in the forward
    their ops keep nothing (what they would save is packed as an empty holder; their extras are freed as they
    return) and the checkpoint keeps the segment's inputs until the backward of the segment's first op that saved
    anything. In the backward, the first unpack (the segment's last op that saved anything) re-runs the segment's
    forward from its inputs, re-creating every tensor its ops save, and stops (early stop, torch's default) as soon
    as the last one is saved: an op that saves only its inputs (a conv) is stopped before it computes. The
    recomputed tensors are released as each op's backward unpacks them, as saved tensors are. `moments`, when
    given, receives every value the timeline takes the maximum of (each is affine in the batch). `forward_only`:
    the timeline up to the loss. `holders`, when given, is filled with who holds the bytes (`Holders`).

    Under `autocast` (torch.autocast on the CPU, `itemsize` the low-precision type's; `_autocast_copies`) the
    activations are in the low-precision type, the inputs and the parameters in float32: an op that autocast
    lowers makes low-precision copies of its float32 input and of its parameters, keeps those its backward needs,
    and the copies of parameters that need a gradient stay cached until the forward ends; its backward makes the
    parameters' gradients in the low-precision type, then each one's float32 copy (`.grad`), freeing the first."""
    held_by = holders if holders is not None else Holders()
    made_by: dict[int, int] = {}  # train storage -> the op whose forward allocated it
    sizes = _storage_bytes(graph, itemsize, batch, train=True)
    end = len(graph.ops)
    used = graph.used(discarded=False)  # a discarded op's node dies with its dropped output, as an unused one's
    release = graph.releases()
    forward_free: dict[int, int] = {}  # train storage -> op after which the forward no longer needs it
    for t, tensor in enumerate(graph.tensors):
        forward_free[tensor.train_storage] = max(forward_free.get(tensor.train_storage, -1), release[t])
    inputs = {graph.tensors[t].train_storage for _, t in graph.inputs}
    outputs = {graph.tensors[t].train_storage for _, t in graph.outputs}
    needs_grad, recorded, keeps, extras, packs, packs_output = _saves(graph, itemsize, batch, device,
                                                                      input_requires_grad, autocast)
    # checkpointed segments: their ops keep nothing in the forward; the checkpoint keeps the segments' inputs
    # until the backward of the first op that saved anything (the last holder of the checkpoint's frame)
    in_segment = [-1] * end
    frame_inputs: dict[int, set[int]] = {}  # op -> the input storages the checkpoint frame releases after it
    recompute_at: dict[int, Segment] = {}  # op -> the segment whose recomputation its backward starts
    for k, seg in enumerate(segments):
        span = range(seg.first, seg.last + 1)
        packing = [i for i in span if recorded[i] and used[i] and packs[i]]
        for i in span:
            in_segment[i] = k
        if not packing:
            continue
        produced = {graph.ops[i].output for i in span}
        outside = {graph.tensors[t].train_storage for i in span for t in graph.ops[i].inputs if t not in produced}
        frame_inputs.setdefault(packing[0], set()).update(outside)
        recompute_at[packing[-1]] = seg
    keepers: dict[int, set[int]] = {}  # storage -> the used recorded ops keeping it
    for i in range(end):
        for storage in keeps[i] if in_segment[i] < 0 else ():
            keepers.setdefault(storage, set()).add(i)
    for i, storages in frame_inputs.items():
        for storage in storages:
            keepers.setdefault(storage, set()).add(i)
    held = {s for s, ops in keepers.items() if ops}
    copies = _autocast_copies(graph, itemsize, batch, recorded, needs_grad, inputs) if autocast else None
    transient_copies = [0] * end
    cache_of = [0] * end  # parameter copies the autocast cache holds until the forward ends
    low_grads: list[tuple[int, ...]] = [()] * end
    if copies is not None:
        extras = list(extras)  # _saves' lists are shared (cached): the copies are added to a copy
        for i, (kept_copies, freed_copies, cache, params) in enumerate(copies):
            extras[i] += kept_copies
            transient_copies[i] = freed_copies
            cache_of[i] = cache
            low_grads[i] = params

    def moment(value: int) -> int:
        if moments is not None:
            moments.append(value)
        return value

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
            made_by[out.train_storage] = i
            held_by.add(i, sizes[out.train_storage])
        live += extras[i] + cache_of[i]
        held_by.add(i, extras[i] + cache_of[i])
        transient = _training_transient(op, graph, itemsize, batch, device, recorded[i]) + transient_copies[i]
        if op.merge is not None:  # a product's partial products not kept
            transient += op.merge.train_transient([graph.tensors[t].shape for t in op.inputs], out.shape,
                                                  [needs_grad[t] and recorded[i] for t in op.inputs]) * itemsize * batch
        running = moment(live + transient)
        held_by.moment(running, (i, transient))
        if not used[i] or in_segment[i] >= 0:  # dropped, or packed into a checkpoint's empty holders
            live -= extras[i]
            held_by.add(i, -extras[i])
        for storage in frees.get(i, ()):
            alive.discard(storage)
            live -= sizes[storage]
            held_by.add(made_by[storage], -sizes[storage])
        steps.append(TrainStep("forward", i, running, live))
    # the loss: one scalar per output summed (a running sum of them beside the next), then the outputs dropped
    scalar = itemsize
    n_out = len(graph.outputs)
    running = moment(live + (scalar if n_out == 1 else 3 * scalar))
    held_by.moment(running, (-1, running - live))
    live += scalar
    held_by.add(-1, scalar)
    if any(cache_of):  # the autocast region ends: its cache of parameter copies is cleared
        live -= sum(cache_of)
        for i, cache in enumerate(cache_of):
            held_by.add(i, -cache)
    for storage in outputs:
        if storage in alive and storage not in held and storage not in inputs:
            alive.discard(storage)
            live -= sizes[storage]
            held_by.add(made_by[storage], -sizes[storage])
    steps.append(TrainStep("loss", -1, running, live))
    if forward_only:
        return tuple(steps)

    # backward: the seed (ones_like of the loss) is the gradient of every output, expanded (a view)
    live += scalar
    held_by.add(-1, scalar)
    grad_refs: dict[int, int] = {-1: len(graph.outputs) + 1}  # gradient storage -> holders (the engine holds the seed)
    grad_size: dict[int, int] = {-1: scalar}
    grad_maker: dict[int, int] = {-1: -1}  # gradient storage -> the op whose backward made it
    grad_of: dict[int, int] = {t: -1 for _, t in graph.outputs}
    next_id = 0
    renamed: dict[int, int] = {}  # a recomputed segment's storages -> their new ids (the forward's were freed)
    fresh = max(sizes, default=-1) + 1

    def give(t: int, storage: int, by: int) -> int:
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
        grad_maker[next_id] = by
        grad_of[t] = next_id
        live += grad_size[next_id]
        held_by.add(by, grad_size[next_id])
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
            held_by.add(grad_maker[storage], -grad_size[storage])
            del grad_refs[storage]

    def recompute(seg: Segment) -> int:
        """The segment's forward again, from its inputs (the checkpoint's), up to the last tensor it saves: what
        its ops save stays (new storages, kept by those ops until their backward), the rest is dropped after its
        last reader in the segment, or when the recomputation stops. Returns its peak."""
        nonlocal live, fresh
        renamed.clear()
        last = max(i for i in range(seg.first, seg.last + 1) if recorded[i] and used[i] and packs[i])
        stop = last if packs_output[last] else last - 1  # early stop: `last` saves its inputs before it computes
        saved = set().union(*(keeps[j] for j in range(seg.first, last + 1)))
        drop_at: dict[int, int] = {}
        for i in range(seg.first, stop + 1):
            for t in (*graph.ops[i].inputs, graph.ops[i].output):
                storage = graph.tensors[t].train_storage
                drop_at[storage] = max(drop_at.get(storage, -1), min(release[t], stop))
        peak = live
        dropping: dict[int, list[int]] = {}
        for i in range(seg.first, stop + 1):
            storage = graph.tensors[graph.ops[i].output].train_storage
            if storage not in renamed and all(graph.tensors[t].train_storage != storage for t in graph.ops[i].inputs):
                renamed[storage] = fresh
                sizes[fresh] = sizes[storage]
                made_by[fresh] = i
                held_by.add(i, sizes[storage])
                fresh += 1
                live += sizes[storage]
                if storage not in saved:
                    dropping.setdefault(drop_at[storage], []).append(storage)
            live += extras[i]
            held_by.add(i, extras[i])
            transient = _training_transient(graph.ops[i], graph, itemsize, batch, device)
            peak = max(peak, moment(live + transient))
            held_by.moment(live + transient, (i, transient))
            for storage in dropping.get(i, ()):
                live -= sizes[storage]
                held_by.add(i if storage not in renamed else made_by[renamed[storage]], -sizes[storage])
        for storage in saved:
            new = renamed.get(storage, storage)
            alive.add(new)
        for j in range(seg.first, last + 1):
            for storage in keeps[j]:
                keepers.setdefault(renamed.get(storage, storage), set()).add(j)
        return peak

    def unkeep(i: int, storage: int) -> None:
        """Op i's node no longer keeps `storage`: freed when no other op keeps it."""
        nonlocal live
        ops = keepers.get(storage)
        if ops and i in ops:
            ops.discard(i)
            if not ops and storage in alive and storage not in inputs:
                alive.discard(storage)
                live -= sizes[storage]
                held_by.add(made_by[storage], -sizes[storage])

    def hand(i: int, t: int, n: int) -> int:
        """A gradient of n bytes that op i's backward made for tensor t goes into t's buffer; returns the most
        alive meanwhile (a sum with a gradient t already has)."""
        nonlocal next_id
        grad_size[next_id], grad_refs[next_id], grad_maker[next_id] = n, 1, i
        next_id += 1
        summed = numel(graph.tensors[t].shape) * itemsize * batch if t in grad_of else 0
        held_by.moment(live + summed, (i, summed))
        return moment(live + give(t, next_id - 1, i))

    def product_backward(i: int, g: int | None) -> int:
        """The backward of a product ((x0 * x1) * x2) * ... (MergeOp.products; measured by storage on the CPU):
        one MulBackward per multiply, the last first. Each makes, at the product's size, the gradient of its left
        factor (x0 or the previous partial product) and of its right one (x_j) where they need one (the gradient
        times the other factor), then reduces a broadcast factor's to the factor's shape (sum_to_size, left then
        right, each full-size one freed after its sum). As it returns its incoming gradient is freed, and so are
        the partial product it kept (the merge's intermediates, `extras`) and the inputs no multiply still to run
        keeps; x_j's gradient goes into x_j's buffer, the left one to the next multiply (x0's buffer at the
        first). Returns the most alive at once."""
        nonlocal live
        op = graph.ops[i]
        assert op.merge is not None
        shapes = [graph.tensors[t].shape for t in op.inputs]
        products = [*op.merge.intermediates(shapes), graph.tensors[op.output].shape]  # P_1 .. P_{k-1}
        needs = [needs_grad[t] for t in op.inputs]
        left = [any(needs[:j]) for j in range(len(shapes))]  # the left factor of multiply j needs a gradient
        mine = renamed if in_segment[i] >= 0 else {}
        storage = [mine.get(graph.tensors[t].train_storage, graph.tensors[t].train_storage) for t in op.inputs]
        pending: dict[int, int] = {}  # storage -> the multiplies still to run that keep it (Mul.saved's rule)
        kept: dict[int, list[int]] = {}
        for j in range(1, len(shapes)):
            kept[j] = ([storage[j]] if left[j] else []) + ([storage[0]] if needs[j] and j == 1 else [])
            for s in kept[j]:
                pending[s] = pending.get(s, 0) + 1
        peak = live
        incoming = 0  # the bytes of the gradient of the partial product P_j (the output's: g, counted by drop)
        for j in range(len(shapes) - 1, 0, -1):
            full = numel(products[j - 1]) * itemsize * batch
            factors = [(shape, t) for want, shape, t in ((left[j], shapes[0] if j == 1 else products[j - 2], -1),
                                                          (needs[j], shapes[j], op.inputs[j])) if want]
            live += full * len(factors)
            held_by.add(i, full * len(factors))
            peak = max(peak, moment(live))
            held_by.moment(live)
            results: list[tuple[int, int]] = []  # (tensor, or -1 for the left partial product; bytes)
            for shape, t in factors:
                n = numel(shape) * itemsize * batch
                if n != full:
                    peak = max(peak, moment(live + n))
                    held_by.moment(live + n, (i, n))
                    live += n - full
                    held_by.add(i, n - full)
                results.append((t, n))
            if j == len(shapes) - 1:
                if g is not None:
                    del grad_of[op.output]
                    drop(g)
            else:
                live -= incoming
                held_by.add(i, -incoming)
            if needs[j] and j >= 2:  # the partial product it kept for x_j's gradient
                n = numel(products[j - 2]) * itemsize * batch
                live -= n
                held_by.add(i, -n)
            for s in kept[j]:
                pending[s] -= 1
                if not pending[s]:
                    unkeep(i, s)
            incoming = 0
            for t, n in results:  # x_j's gradient to its buffer; the left one to the next multiply (x0's at the first)
                if t >= 0 or j == 1:
                    peak = max(peak, hand(i, t if t >= 0 else op.inputs[0], n))
                else:
                    incoming = n
        return peak

    for i in range(end - 1, -1, -1):
        op = graph.ops[i]
        if not recorded[i] or not used[i]:
            continue
        if op.merge is not None and op.merge.products:
            running = max(live, recompute(recompute_at[i]) if i in recompute_at else 0,
                          product_backward(i, grad_of.get(op.output)))
            for storage in ({(renamed if in_segment[i] >= 0 else {}).get(s, s) for s in
                             {graph.tensors[t].train_storage for t in (*op.inputs, op.output)}}
                            | frame_inputs.get(i, set())):
                unkeep(i, storage)
            steps.append(TrainStep("backward", i, running, live))
            continue
        recomputed = recompute(recompute_at[i]) if i in recompute_at else 0
        g = grad_of.get(op.output)
        made = sum(low_grads[i]) * itemsize if low_grads[i] else grad_bytes[i]
        program = () if op.kind is None else op.kind.backward_moments(
            op.args, graph.tensors[op.inputs[0]].shape, graph.tensors[op.output].shape, needs_grad[op.inputs[0]],
            grad_bytes[i] > 0)
        live += made  # the parameters' gradients, kept as .grad (under autocast: low precision, copied below)
        held_by.add(i, made)
        running = max(live - made if program else live, recomputed)
        new: list[tuple[int, int]] = []  # (tensor, bytes) of new gradient buffers
        shared: list[int] = []  # tensors receiving g (or a view of it)
        if op.merge is not None:
            for t in op.inputs:
                if needs_grad[t]:
                    if op.merge.name == "concat" or (op.merge.name == "add" and graph.tensors[t].shape
                                                     == graph.tensors[op.output].shape):
                        shared.append(t)  # (a broadcast summand's gradient is the output's, summed to its shape)
                    else:
                        new.append((t, numel(graph.tensors[t].shape) * itemsize * batch))
        else:
            assert op.kind is not None
            t = op.inputs[0]
            if needs_grad[t]:
                # a view (not an in-place op, whose backward makes a new gradient) passes a view of its gradient;
                # a crop's backward writes it into zeros of the input's size
                if op.kind.passes_gradient or (op.kind.alias and op.kind.alias_in_training(op.args) and not
                                               op.kind.scatters_gradient and not
                                               op.kind.strided(op.args, graph.tensors[t].shape,
                                                               graph.tensors[op.output].shape)):
                    shared.append(t)
                else:
                    new.append((t, numel(graph.tensors[t].shape) * itemsize * batch))
        working = live + sum(b for _, b in new)
        if program:  # a composite's backward, moment by moment (Kind.backward_moments), from before `made`
            freed = grad_size[g] if g is not None and grad_refs[g] == 1 else 0
            per_param = grad_bytes[i] // op.cost.params if op.cost.params else 0
            for m in program:
                delta = (m.elements * itemsize + sum(n * itemsize_for(code, itemsize, device) for n, code in m.more)
                         ) * batch + m.params * per_param + m.once * itemsize
                at = live - made + delta - (freed if m.output_grad_freed else 0)
                running = max(running, moment(at))
                held_by.moment(at, (i, delta - made), (grad_maker[g] if g is not None else i,
                                                       -freed if m.output_grad_freed else 0))
        elif op.kind is not None and op.kind.contiguous_gradient and g == -1:  # a contiguous copy of the seed's view
            working += numel(graph.tensors[op.output].shape) * itemsize * batch
        if op.kind is not None and not program:
            kernel = op.kind.backward_kernel(op.args, graph.tensors[op.inputs[0]].shape,
                                             graph.tensors[op.output].shape, needs_grad[op.inputs[0]])
            if kernel:  # the kernel's outputs, before the parameters' gradients are reduced from them
                before_params = working - made + sum(n * itemsize_for(code, itemsize, device)
                                                     for n, code in kernel) * batch
                running = max(running, moment(before_params))
                held_by.moment(before_params, (i, before_params - live))  # less `made`, not yet made
            extra = op.kind.backward_transient(op.args, graph.tensors[op.inputs[0]].shape,
                                               graph.tensors[op.output].shape, needs_grad[op.inputs[0]])
            working += sum(n * itemsize_for(code, itemsize, device) for n, code in extra) * batch
            late = op.kind.backward_late(op.args, graph.tensors[op.inputs[0]].shape, graph.tensors[op.output].shape)
            if late:  # after its output's gradient is freed, unless something else holds it (the loss seed)
                freed = grad_size[g] if g is not None and grad_refs[g] == 1 else 0
                made_late = sum(n * itemsize_for(code, itemsize, device) for n, code in late) * batch
                at = live - freed + made_late
                running = max(running, moment(at))
                held_by.moment(at, (i, made_late), (grad_maker[g] if freed and g is not None else i, -freed))
        if not program:
            running = max(running, moment(working))
            held_by.moment(working, (i, working - live))
        live += sum(b for _, b in new)
        held_by.add(i, sum(b for _, b in new))
        # the function returns its outputs; its input (the gradient of its output) and its saved tensors are freed;
        # then each output is added into the buffer of the tensor it is the gradient of
        returned: list[tuple[int, int]] = []
        for t, b in new:
            grad_size[next_id] = b
            grad_refs[next_id] = 1
            grad_maker[next_id] = i
            returned.append((t, next_id))
            next_id += 1
        if g is not None:
            for t in shared:
                grad_refs[g] += 1
                returned.append((t, g))
            del grad_of[op.output]
            drop(g)
        live -= extras[i]
        held_by.add(i, -extras[i])
        mine = renamed if in_segment[i] >= 0 else {}
        for storage in ({mine.get(s, s) for s in {graph.tensors[t].train_storage for t in (*op.inputs, op.output)}}
                        | frame_inputs.get(i, set())):
            ops = keepers.get(storage)
            if ops and i in ops:
                ops.discard(i)
                if not ops and storage in alive and storage not in inputs:
                    alive.discard(storage)
                    live -= sizes[storage]
                    held_by.add(made_by[storage], -sizes[storage])
        for t, storage in returned:
            summed = numel(graph.tensors[t].shape) * itemsize * batch if t in grad_of else 0
            held_by.moment(live + summed, (i, summed))  # the sum made while both parts are alive
            running = max(running, moment(live + give(t, storage, i)))
        for n in low_grads[i]:  # autocast: each parameter's ToCopyBackward makes its float32 gradient
            held_by.moment(live + n * 4, (i, n * 4))
            running = max(running, moment(live + n * 4))
            live += n * (4 - itemsize)
            held_by.add(i, n * (4 - itemsize))
        steps.append(TrainStep("backward", i, running, live))
    live -= 2 * scalar  # the seed and the loss, once backward returns
    held_by.add(-1, -2 * scalar)
    held_by.end = {h: n for h, n in held_by.by.items() if n}
    steps.append(TrainStep("backward", -1, moment(live), live))
    return tuple(steps)


def _autocast_copies(graph: Graph, itemsize: int, batch: int, recorded: list[bool], needs_grad: list[bool],
                     inputs: set[int]) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """Per op under torch.autocast on the CPU: the bytes of its low-precision copies that its node keeps until its
    backward, those freed when it returns, those the autocast cache holds until the forward ends, and the elements
    of each parameter tensor whose gradient its backward makes in low precision (weight, then bias). Only ops that
    autocast lowers (`Kind.autocast_on`) copy: the float32 network input they read (each op its own copy, kept
    when the op keeps its input) and their parameters (the weight kept when `Kind.keeps_weight`; the copies of
    parameters that need a gradient cached, of frozen ones freed)."""
    out: list[tuple[int, int, int, tuple[int, ...]]] = []
    for i, op in enumerate(graph.ops):
        if op.kind is None or op.kind.autocast_on(op.args, graph.tensors[op.inputs[0]].shape) != "lower":
            out.append((0, 0, 0, ()))
            continue
        src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        kept = transient = cache = 0
        tensors = op.kind.param_tensors(op.args, dst.shape, op.cost.params)
        trainable = op.trainable and op.cost.params > 0
        for k, n in enumerate(tensors):
            size = n * itemsize
            if k == 0 and recorded[i] and op.kind.keeps_weight(needs_grad[op.inputs[0]]):
                kept += size
            elif trainable:
                cache += size
            else:
                transient += size
        if src.train_storage in inputs:  # a float32 network input: cast for this op
            size = numel(src.shape) * itemsize * batch
            what = op.kind.saved(op.args, src.shape, dst.shape)
            if recorded[i] and (what.input or what.input_for_params and trainable):
                kept += size
            else:
                transient += size
        out.append((kept, transient, cache, tensors if trainable and recorded[i] else ()))
    return out


def _training_transient(op: object, graph: Graph, itemsize: int, batch: int, device: str,
                        recorded: bool = True) -> int:
    """Temporaries an op frees before it returns in a training-mode forward: those it declares for inference
    that it does not keep for backward (max pooling's indices and group norm's statistics are kept: `Saved`), and
    what a frozen layer makes but keeps only for its parameters' gradient (`Saved.extra_for_params`); of an op
    autograd does not record (`recorded` false), which keeps nothing, `Kind.untracked_transient`."""
    from archcalc.core.graph import Op

    assert isinstance(op, Op)
    if op.kind is None:
        return 0
    src, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
    if not recorded:
        temporaries = op.kind.untracked_transient(op.args, src.shape, out.shape)
        once = op.kind.transient_once(op.args, src.shape, out.shape)
    else:
        temporaries = op.kind.train_transient(op.args, src.shape, out.shape)
        once = op.kind.train_transient_once(op.args, src.shape, out.shape)  # made from the weights, any batch
        if not (op.trainable and op.cost.params > 0):  # made all the same, kept only for the parameters' gradient
            frozen = op.kind.frozen_transient(op.args, src.shape, out.shape)
            if frozen is None:
                frozen = op.kind.saved(op.args, src.shape, out.shape).extra_for_params
            temporaries = (*temporaries, *frozen)
    return (sum(n * itemsize_for(s, itemsize, device) for n, s in temporaries) * batch
            + sum(n * itemsize_for(s, itemsize, device) for n, s in once))
