"""The analytic engine: walk a Spec with shape propagation and produce a Report of pure integers.

Nothing here imports torch. Counts are per sample inside the kinds; batch and dtype are applied here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from types import MappingProxyType
from typing import Any, NamedTuple, Union

from archcalc.core.conventions import CONVENTIONS, DTYPES
from archcalc.core.errors import Loc, SpecError, paused_gc
from archcalc.core.kinds import REGISTRY, Cost, Kind, LayerError, Shape
from archcalc.core.kinds.base import numel
from archcalc.core.spec import Layer, Parallel, Residual, Sequence, Spec

# ---- the analyzed tree (what the torch builder consumes) ----------------------------------------------------------


class ALayer(NamedTuple):
    name: str
    kind: Kind
    args: Any
    input: Shape
    output: Shape
    loc: Loc | None
    trainable: bool = True


class ASeq(NamedTuple):
    name: str
    label: str
    children: tuple[ANode, ...]
    input: Shape
    output: Shape


class APar(NamedTuple):
    name: str
    label: str
    branches: tuple[ASeq, ...]
    merge: str
    input: Shape
    output: Shape


class ARes(NamedTuple):
    name: str
    label: str
    body: ASeq
    shortcut: ASeq | None  # None: identity
    after: ASeq
    input: Shape
    output: Shape


ANode = Union[ALayer, ASeq, APar, ARes]


# ---- report values --------------------------------------------------------------------------------------------


class Row(NamedTuple):
    """One line of the table: a leaf layer, a merge op (add / concat, no module), or a collapsed block."""

    name: str
    kind: str
    depth: int
    input: Shape
    output: Shape
    config: str
    params: int
    trainable_params: int
    buffers: int
    macs: int
    flops: int
    activation_bytes: int
    rf: tuple[int, ...]
    jump: tuple[int | Fraction, ...]
    leaf: bool = True
    module: bool = True  # False for merge ops, which have no nn.Module


class Warning_(NamedTuple):
    loc: Loc | None
    layer: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.layer}: {self.message}" if self.loc else f"{self.layer}: {self.message}"


class Totals(NamedTuple):
    params: int
    trainable_params: int
    buffers: int
    macs: int
    flops: int
    activation_bytes: int
    param_bytes: int
    buffer_bytes: int
    peak_bytes: int
    saved_bytes: int
    weight_layers: int
    output: Shape
    rf: tuple[int, ...]
    jump: tuple[int | Fraction, ...]


class Report(NamedTuple):
    name: str
    source: str
    description: str
    path: str
    input: Shape
    batch: int
    dtype: str
    itemsize: int
    convention: str
    rows: tuple[Row, ...]  # leaves and merge ops, in execution order
    outline: tuple[Row, ...]  # every node (blocks and leaves) in pre-order, for --depth
    totals: Totals
    warnings: tuple[Warning_, ...]
    tree: ASeq


def analyze(spec: Spec, batch: int = 1, dtype: str = "float32", convention: str = "torch",
            input_shape: Shape | None = None, strict: bool = False) -> Report:
    with paused_gc():
        return _analyze(spec, batch, dtype, convention, input_shape, strict)


def _analyze(spec: Spec, batch: int, dtype: str, convention: str, input_shape: Shape | None, strict: bool) -> Report:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention}")
    engine = _Engine(spec, batch, DTYPES[dtype], CONVENTIONS[convention].pick, strict)
    shape = tuple(input_shape) if input_shape else spec.input
    rank = len(shape) - 1
    state = _RF(tuple([1] * rank), tuple([1] * rank))
    tree, state = engine.seq(spec.root, shape, state, depth=0)
    rows = tuple(engine.rows)
    params = sum(r.params for r in rows)
    buffers = sum(engine.buffers)
    totals = Totals(
        params=params,
        trainable_params=sum(r.trainable_params for r in rows),
        buffers=buffers,
        macs=sum(r.macs for r in rows),
        flops=sum(r.flops for r in rows),
        activation_bytes=sum(r.activation_bytes for r in rows),
        param_bytes=params * engine.itemsize,
        buffer_bytes=(buffers - engine.int_buffers) * engine.itemsize + engine.int_buffers * 8,
        peak_bytes=peak_inference_bytes(tree, engine.itemsize, batch) + params * engine.itemsize
        + (buffers - engine.int_buffers) * engine.itemsize + engine.int_buffers * 8,
        saved_bytes=saved_training_bytes(tree, engine.itemsize, batch),
        weight_layers=sum(1 for r in rows if r.leaf and r.module and REGISTRY[r.kind].weighted),
        output=tree.output,
        rf=state.rf,
        jump=state.jump,
    )
    return Report(name=spec.name, source=spec.source, description=spec.description, path=spec.path, input=shape,
                  batch=batch, dtype=dtype, itemsize=engine.itemsize, convention=convention, rows=rows,
                  outline=tuple(engine.outline), totals=totals, warnings=tuple(engine.warnings), tree=tree)


class _RF(NamedTuple):
    rf: tuple[int, ...]
    jump: tuple[int | Fraction, ...]


def _merge_rf(states: list[_RF]) -> _RF:
    # Through branches and residuals the receptive field is the largest over the paths (per axis), as is the jump.
    return _RF(tuple(max(s.rf[i] for s in states) for i in range(len(states[0].rf))),
               tuple(max(s.jump[i] for s in states) for i in range(len(states[0].jump))))


class _Engine:
    def __init__(self, spec: Spec, batch: int, itemsize: int, pick: Callable[[Cost], int], strict: bool) -> None:
        self.spec = spec
        self.batch = batch
        self.itemsize = itemsize
        self.pick = pick
        self.strict = strict
        self.rows: list[Row] = []
        self.outline: list[Row] = []
        self.warnings: list[Warning_] = []
        self.buffers: list[int] = []
        self.int_buffers = 0

    # -- leaves --
    def layer(self, node: Layer, inp: Shape, state: _RF, depth: int) -> tuple[ALayer, _RF]:
        kind, a = node.kind, node.args

        def warn(message: str) -> None:
            if self.strict:
                raise SpecError(node.loc, f"{node.name}: {message} (--strict makes this an error)")
            self.warnings.append(Warning_(node.loc, node.name, message))

        try:
            out = kind.output(a, inp, warn)
            cost = kind.cost(a, inp, out)
            steps = kind.rf(a, inp, out)
            config = kind.describe(a, inp)
        except LayerError as exc:
            raise SpecError(node.loc, f"{node.name} ({kind.name}) on input {_dims(inp)}: {exc}") from None
        if steps is not None and len(inp) > 1:
            rf, jump = list(state.rf), list(state.jump)
            for axis, step in enumerate(steps):
                if step.whole:
                    rf[axis] += int((inp[1 + axis] - 1) * jump[axis])
                else:
                    rf[axis] += int((step.kernel - 1) * jump[axis])
                    jump[axis] *= step.stride
            state = _RF(tuple(rf), tuple(jump))
        self.buffers.append(cost.buffers + cost.int_buffers)
        self.int_buffers += cost.int_buffers
        row = Row(node.name, kind.name, depth, inp, out, config, cost.params,
                  cost.params if node.trainable else 0, cost.buffers + cost.int_buffers,
                  cost.macs * self.batch, self.pick(cost) * self.batch, numel(out) * self.batch * self.itemsize,
                  state.rf, state.jump)
        self.rows.append(row)
        self.outline.append(row)
        return ALayer(node.name, kind, a, inp, out, node.loc, node.trainable), state

    def merge_row(self, scope: str, op: str, inputs: list[Shape], out: Shape, depth: int, state: _RF) -> None:
        full = (len(inputs) - 1) * numel(out) if op in ("add", "mul") else 0
        row = Row(f"{scope}.{op}" if scope else op, op, depth, inputs[0], out, f"{len(inputs)} inputs", 0, 0, 0, 0,
                  self.pick(Cost(full=full)) * self.batch, numel(out) * self.batch * self.itemsize,
                  state.rf, state.jump, module=False)
        self.rows.append(row)
        self.outline.append(row)

    # -- composites --
    def node(self, node: Any, inp: Shape, state: _RF, depth: int) -> tuple[ANode, _RF]:
        if isinstance(node, Layer):
            return self.layer(node, inp, state, depth)
        start = len(self.outline)
        first_row = len(self.rows)
        self.outline.append(None)  # type: ignore[arg-type]  # the block's summary row, filled in below
        result: ANode
        if isinstance(node, Sequence):
            result, state = self.seq(node, inp, state, depth)
        elif isinstance(node, Parallel):
            result, state = self.parallel(node, inp, state, depth)
        else:
            result, state = self.residual(node, inp, state, depth)
        inner = self.rows[first_row:]
        self.outline[start] = Row(node.name, node.label, depth, inp, result.output, "",
                                  sum(r.params for r in inner), sum(r.trainable_params for r in inner),
                                  sum(r.buffers for r in inner), sum(r.macs for r in inner),
                                  sum(r.flops for r in inner), sum(r.activation_bytes for r in inner),
                                  state.rf, state.jump, leaf=False)
        return result, state

    def seq(self, node: Sequence, inp: Shape, state: _RF, depth: int) -> tuple[ASeq, _RF]:
        shape = inp
        children = []
        for child in node.children:
            built, state = self.node(child, shape, state, depth + 1)
            children.append(built)
            shape = built.output
        return ASeq(node.name, node.label, tuple(children), inp, shape), state

    def parallel(self, node: Parallel, inp: Shape, state: _RF, depth: int) -> tuple[APar, _RF]:
        branches, states = [], []
        for branch in node.branches:
            built, s = self.node(branch, inp, state, depth + 1)
            branches.append(built)
            states.append(s)
        shapes = [b.output for b in branches]
        out = _merge_shapes(node.merge, shapes, [b.name for b in branches], node.loc, node.name)
        state = _merge_rf(states)
        self.merge_row(node.name, node.merge, shapes, out, depth + 1, state)
        return APar(node.name, node.label, tuple(branches), node.merge, inp, out), state  # type: ignore[arg-type]

    def residual(self, node: Residual, inp: Shape, state: _RF, depth: int) -> tuple[ARes, _RF]:
        body, body_state = self.seq(node.body, inp, state, depth)
        shortcut: ASeq | None = None
        sc_state = state
        sc = node.shortcut
        if isinstance(sc, str) and sc != "identity" and body.output != inp:
            sc = self.projection(node, sc, inp, body.output)
        if isinstance(sc, Sequence):
            built, sc_state = self.node(sc, inp, state, depth + 1)
            shortcut = built  # type: ignore[assignment]
        sc_shape = shortcut.output if shortcut is not None else inp
        out = _merge_shapes("add", [body.output, sc_shape], [f"{node.name} body", f"{node.name}.shortcut"],
                            node.loc, node.name)
        state = _merge_rf([body_state, sc_state])
        self.merge_row(node.name, "add", [body.output, sc_shape], out, depth + 1, state)
        after, state = self.seq(node.after, out, state, depth)
        # `after` layers sit at the residual's own level in names (layer1.0.relu3); show them one level down.
        return ARes(node.name, node.label, body, shortcut, after, inp, after.output), state  # type: ignore[arg-type]

    def projection(self, node: Residual, mode: str, inp: Shape, out: Shape) -> Sequence:
        """The projection shortcut (He et al. 2016, option B): a 1x1 conv with the body's stride, then BN."""
        if len(inp) != len(out) or len(inp) < 2:
            raise SpecError(node.loc, f"{node.name}: cannot project {_dims(inp)} onto {_dims(out)}")
        strides = []
        for w, o in zip(inp[1:], out[1:]):
            stride = -(-w // o)
            if (w - 1) // stride + 1 != o:
                raise SpecError(node.loc, f"{node.name}: no 1x1 stride maps {_dims(inp)} onto {_dims(out)}; give "
                                          "the shortcut as a list of layers")
            strides.append(stride)
        conv = REGISTRY["conv"]
        args = {a.name: a.default for a in conv.args}
        args.update(out_channels=out[0], kernel_size=1, stride=strides[0] if len(set(strides)) == 1 else
                    tuple(strides), bias=False)
        layers: list[Layer] = [Layer(f"{node.name}.shortcut.conv1", conv, MappingProxyType(args), node.loc)]
        if mode == "projection":
            bn = REGISTRY["batchnorm"]
            layers.append(Layer(f"{node.name}.shortcut.bn1", bn, MappingProxyType({a.name: a.default for a in bn.args}),
                                node.loc))
        return Sequence(f"{node.name}.shortcut", "shortcut", tuple(layers), node.loc)


def _dims(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _merge_shapes(merge: str, shapes: list[Shape], names: list[str], loc: Loc, where: str) -> Shape:
    """concat joins channels (other axes equal); add needs equal shapes; mul broadcasts (an axis of size 1 stretches,
    as squeeze-excitation's C x 1 x 1 scale does)."""
    first = shapes[0]
    if merge == "mul":
        out = list(first)
        for shape, name in zip(shapes[1:], names[1:]):
            if len(shape) != len(out) or any(a != b and 1 not in (a, b) for a, b in zip(shape, out)):
                raise SpecError(loc, f"{where}: {names[0]} gives {_dims(first)} but {name} gives {_dims(shape)}; "
                                     "they cannot be multiplied (each axis must match or be 1)")
            out = [max(a, b) for a, b in zip(shape, out)]
        return tuple(out)
    for shape, name in zip(shapes[1:], names[1:]):
        if merge == "add" and shape != first or merge == "concat" and (len(shape) != len(first)
                                                                       or shape[1:] != first[1:]):
            what = "added" if merge == "add" else "concatenated along channels"
            raise SpecError(loc, f"{where}: {names[0]} gives {_dims(first)} but {name} gives {_dims(shape)}; they "
                                 f"cannot be {what}")
    if merge == "add":
        return first
    return (sum(s[0] for s in shapes), *first[1:])


# ---- memory models ------------------------------------------------------------------------------------------------


class _Storage:
    __slots__ = ("bytes", "refs")

    def __init__(self, size: int) -> None:
        self.bytes = size
        self.refs = 1


class _Liveness:
    """Simulates an eager forward under torch.no_grad: a tensor is alive while anything holds it.

    The model: a composite holds its input until it returns (its caller's variable does); a sequence drops each
    intermediate when the next layer returns; branches keep their outputs until the merge; views, identities,
    dropout at inference and in-place activations allocate nothing. While a layer runs, the temporaries its kind
    declares (`Kind.transient`: max pooling's int64 indices, LRN's intermediates) are alive beside its output.
    Backend workspace that depends on the algorithm chosen (im2col buffers, cuDNN workspace) is not predicted.
    """

    def __init__(self, itemsize: int, batch: int) -> None:
        self.itemsize = itemsize
        self.batch = batch
        self.scale = itemsize * batch
        self.live = 0
        self.peak = 0

    def alloc(self, shape: Shape) -> _Storage:
        s = _Storage(numel(shape) * self.scale)
        self.live += s.bytes
        self.peak = max(self.peak, self.live)
        return s

    def ref(self, s: _Storage) -> _Storage:
        s.refs += 1
        return s

    def drop(self, s: _Storage) -> None:
        s.refs -= 1
        if s.refs == 0:
            self.live -= s.bytes

    def run(self, node: ANode, x: _Storage) -> _Storage:
        """Run `node` on x (held by the caller); return a new reference to the output."""
        if isinstance(node, ALayer):
            kind = node.kind
            out = self.ref(x) if kind.alias or kind.inplace(node.args) else self.alloc(node.output)
            temporaries = kind.transient(node.args, node.input, node.output)
            if temporaries:
                extra = sum(n * (size or self.itemsize) for n, size in temporaries) * self.batch
                self.peak = max(self.peak, self.live + extra)
            return out
        if isinstance(node, ASeq):
            cur = self.ref(x)
            for child in node.children:
                nxt = self.run(child, cur)
                self.drop(cur)
                cur = nxt
            return cur
        if isinstance(node, APar):
            outs = [self.run(b, x) for b in node.branches]
            merged = self.alloc(node.output)
            for o in outs:
                self.drop(o)
            return merged
        body = self.run(node.body, x)
        sc = self.run(node.shortcut, x) if node.shortcut is not None else self.ref(x)
        added = self.alloc(node.body.output)
        self.drop(body)
        self.drop(sc)
        out = self.run(node.after, added)
        self.drop(added)
        return out


def peak_inference_bytes(tree: ASeq, itemsize: int, batch: int) -> int:
    """Most activation bytes alive at once in an eager forward under no_grad (the input included)."""
    sim = _Liveness(itemsize, batch)
    x = sim.alloc(tree.input)
    out = sim.run(tree, x)
    sim.drop(out)
    return sim.peak


def saved_training_bytes(tree: ASeq, itemsize: int, batch: int) -> int:
    """Bytes autograd saves for backward during a training-mode forward, parameters and buffers excluded.

    Each layer's kind says what it keeps (its input, its output, extra tensors such as max-pool indices or BN
    statistics); a tensor kept by two layers (a ReLU's output that the next conv also keeps) is counted once.
    """
    saved: dict[int, int] = {}
    extra = 0
    counter = [0]

    def new(shape: Shape) -> tuple[int, int]:
        counter[0] += 1
        return counter[0], numel(shape) * itemsize * batch

    def run(node: ANode, x: tuple[int, int]) -> tuple[int, int]:
        nonlocal extra
        if isinstance(node, ALayer):
            kind = node.kind
            keeps_storage = kind.alias_in_training(node.args)
            out = x if keeps_storage else new(node.output)
            what = kind.saved(node.args, node.input, node.output)
            if what.input:
                saved[x[0]] = x[1]
            if what.output:
                saved[out[0]] = out[1]
            for elements, size in what.extra:
                extra += elements * (size or itemsize) * batch
            for elements, size in what.per_batch:
                extra += elements * (size or itemsize)
            return out
        if isinstance(node, ASeq):
            for child in node.children:
                x = run(child, x)
            return x
        if isinstance(node, APar):
            outs = [run(b, x) for b in node.branches]
            if node.merge == "mul":  # a product keeps its factors for backward
                saved.update(outs)
            return new(node.output)
        run(node.body, x)
        if node.shortcut is not None:
            run(node.shortcut, x)
        return run(node.after, new(node.body.output))

    run(tree, new(tree.input))
    return sum(saved.values()) + extra

