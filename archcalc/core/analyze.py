"""The analytic engine: walk a Spec once with shape propagation, producing the analysed graph (core.graph) and a
Report of pure integers.

Nothing here imports torch. Counts are per sample inside the kinds; batch and dtype are applied here, once. The
memory models (core.memory) and every torch-side consumer walk the graph's ops, not the spec.
"""

from collections.abc import Callable
from fractions import Fraction
from types import MappingProxyType
from typing import Any, NamedTuple

from archcalc.core.conventions import CONVENTIONS, DTYPES
from archcalc.core.errors import Loc, SpecError, did_you_mean, paused_gc
from archcalc.core.grammar import arg_type
from archcalc.core.graph import Graph, Hold, Op, Tensor
from archcalc.core.kinds import REGISTRY, Cost, LayerError, Shape
from archcalc.core.kinds.base import Tokens, numel
from archcalc.core.memory import peak_inference_bytes, saved_training_bytes
from archcalc.core.merges import MERGES, MergeOp
from archcalc.core.overwrites import overwrites
from archcalc.core.settings import Settings
from archcalc.core.spec import (
    BLOCK_INPUT,
    Input,
    Layer,
    Merge,
    Parallel,
    Pending,
    Ref,
    Residual,
    Sequence,
    Spec,
    Spread,
    checked_input,
    input_warnings,
    settle,
)

# ---- report values --------------------------------------------------------------------------------------------


class Row(NamedTuple):
    """One line of the table: a leaf layer, a merge op (add / concat, no module), or a collapsed block.

    The one record of a layer: its figures (batch and dtype applied) and, for leaves and merges, the graph op it
    came from (`op`: its kind or merge, arguments, tensors and per-sample Cost). A new per-layer figure is a field
    here with its default, its value in `_Engine.layer` (and `merge` when not 0), and, when it adds up, its name in
    SUMMED and a field of Totals."""

    name: str
    kind: str
    depth: int
    input: Shape
    output: Shape
    config: str
    rf: tuple[int, ...]
    jump: tuple[int | Fraction, ...]
    params: int = 0
    trainable_params: int = 0
    buffers: int = 0  # every buffer, float and int64
    int_buffers: int = 0  # of `buffers`: the int64 ones (BN's num_batches_tracked), 8 bytes whatever the dtype
    macs: int = 0
    flops: int = 0
    activation_bytes: int = 0
    leaf: bool = True
    module: bool = True  # False for merge ops, which have no nn.Module
    reads: tuple[str, ...] = ()  # the named tensors a leaf reads (the previous layer's output, or its `from:`)
    used: bool = True  # False: no output depends on it (only under `unused: allow`); left out of the totals
    feeds: tuple[str, ...] = ()  # with several outputs: the outputs that depend on this row
    op: Op | None = None  # the graph op of a leaf or merge (Report.graph.ops holds the same ops, in order); None for
    # a block's summary row
    outputs: tuple[tuple[str, Shape], ...] = ()  # a block's: the tensors it makes that something outside it reads
    # (name, shape), in the order made, where that is more than its one result (HRNet's stages: every branch);
    # `output` is then the first of them

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """Every output's shape: a block's several outputs, or the one output."""
        return tuple(shape for _, shape in self.outputs) if self.outputs else (self.output,)


SUMMED = ("params", "trainable_params", "buffers", "int_buffers", "macs", "flops", "activation_bytes")
"""The Row figures that add up: a block's summary row and the report's Totals are their sums."""


def _sums(rows: list[Row]) -> dict[str, Any]:
    return {field: sum(getattr(r, field) for r in rows) for field in SUMMED}


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
    int_buffers: int
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

    @property
    def shapes(self) -> tuple[Shape, ...]:  # the footer of calc's output column, as Row.shapes
        return (self.output,)


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
    graph: Graph
    outputs: tuple[tuple[str, Shape], ...] = ()  # every output of the network, by name
    settings: Settings | None = None  # what it was analyzed under (None only for a Report built by hand)

    def __repr__(self) -> str:
        # One line: the tuple's own repr prints every row and the whole graph (180,000 characters for resnet50).
        t = self.totals
        return (f"Report({self.name!r}, input={self.input}, batch={self.batch}, dtype={self.dtype!r}, "
                f"convention={self.convention!r}, {len(self.rows)} rows, params={t.params}, macs={t.macs}, "
                f"flops={t.flops})")


def rows_at_depth(report: Report, depth: int | None) -> list[Row]:
    """Leaf rows, or with a depth limit, every node at that depth plus shallower leaves (blocks collapsed)."""
    if depth is None:
        return list(report.rows)
    return [r for r in report.outline if r.depth == depth or (r.depth < depth and r.leaf)]


def analyze(spec: Spec | str, settings: Settings | None = None, **overrides: Any) -> Report:
    """The Report of `spec` (a Spec, a spec file's path or a bundled spec's name) under `settings`, with keyword
    overrides of its fields (`analyze(spec, batch=8, dtype="float16")`; see core.settings.Settings).

    The training figures (saved bytes) follow one device's kernels, `device` 'cuda' or 'cpu' (batch and layer
    norm keep float32 statistics for float16 input on CUDA, float16 on the CPU; dropout's mask), in a real training
    step: the input batch needs no gradient, so autograd records from the first layer with trainable parameters on
    (`input_requires_grad` for input-gradient work: adversarial training, saliency).
    `optimizer` and `amp` do not change the report; they are carried (Report.settings) for training memory."""
    s = Settings.of(settings, **overrides)
    if not isinstance(spec, Spec):
        from archcalc.core.spec import open_spec

        spec = open_spec(str(spec))
    with paused_gc():
        return _analyze(spec, s)


def _analyze(spec: Spec, s: Settings) -> Report:
    batch, dtype, strict = s.batch, s.dtype, s.strict
    convention = CONVENTIONS[s.convention]
    engine = _Engine(spec, batch, DTYPES[dtype], convention.pick, strict, convention.once)
    inputs = spec.inputs or (Input("input", spec.input, spec.input_loc),)  # a Spec built without `inputs`
    shapes = [inp.shape for inp in inputs]
    if s.input_shape:
        shapes[0] = checked_input(spec, s.input_shape)
    for message in input_warnings(shapes[0]):
        if strict:
            raise SpecError(spec.input_loc, f"{message} (--strict makes this an error)")
        engine.warnings.append(Warning_(spec.input_loc, "input", message))
    for inp, shape in zip(inputs, shapes):
        t = engine.new_tensor(inp.name, shape, _RF(tuple([1] * (len(shape) - 1)), tuple([1] * (len(shape) - 1))))
        engine.inputs.append((inp.name, t))
        engine.named[inp.name] = t
    engine.named[BLOCK_INPUT] = engine.inputs[0][1]
    last = engine.seq(spec.root, engine.inputs[0][1], depth=0)
    graph = engine.finish(last)
    used = graph.used()
    rows = tuple(r if u else r._replace(used=False) for r, u in zip(engine.rows, used))
    if len(graph.outputs) > 1:
        rows = tuple(r._replace(feeds=f) for r, f in zip(rows, graph.feeds()))
    changed = {id(old): new for old, new in zip(engine.rows, rows) if old is not new}
    outline = list(changed.get(id(r), r) for r in engine.outline)
    _block_edges(outline, engine.blocks, graph, rows)
    if not all(used):
        unused = [r.name for r in rows if not r.used]
        if spec.unused != "allow":
            op = graph.ops[used.index(False)]
            raise SpecError(op.loc, f"{op.name}: no output depends on this layer ({len(unused)} such: "
                            f"{', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}); name it in 'outputs', "
                            "remove it, or set 'unused: allow' at the top of the spec")
        engine.warnings.append(Warning_(None, "unused", f"no output depends on {', '.join(unused)}; left out of "
                                                        "the totals"))
    for overwrite in overwrites(graph, s.input_requires_grad):
        op = graph.ops[overwrite.op]
        engine.warnings.append(Warning_(op.loc, op.name, overwrite.message(graph)))
    counted = [r for r in rows if r.used]
    sums = _sums(counted)
    itemsize = engine.itemsize
    out = graph.tensors[graph.outputs[0][1]]
    param_bytes = sums["params"] * itemsize
    buffer_bytes = (sums["buffers"] - sums["int_buffers"]) * itemsize + sums["int_buffers"] * 8
    totals = Totals(
        **sums,
        param_bytes=param_bytes,
        buffer_bytes=buffer_bytes,
        peak_bytes=peak_inference_bytes(graph, itemsize, batch) + param_bytes + buffer_bytes,
        saved_bytes=saved_training_bytes(graph, itemsize, batch, s.device, s.input_requires_grad),
        weight_layers=sum(1 for r in counted if r.op is not None and r.op.kind is not None and r.op.kind.weighted),
        output=out.shape,
        rf=out.rf,
        jump=out.jump,
    )
    outputs = tuple((name, graph.tensors[t].shape) for name, t in graph.outputs)
    return Report(name=spec.name, source=spec.source, description=spec.description, path=spec.path,
                  input=shapes[0], batch=batch, dtype=dtype, itemsize=itemsize, convention=s.convention, rows=rows,
                  outline=tuple(outline), totals=totals, warnings=tuple(engine.warnings), graph=graph,
                  outputs=outputs, settings=s)


def _block_edges(outline: list[Row], blocks: list[tuple[int, int, int, int]], graph: Graph,
                 rows: tuple[Row, ...]) -> None:
    """Fill in each block's summary row (in `outline`) with what crosses its boundary, so a block collapsed by
    --depth shows what its layers show: `reads`, the tensors made outside it that its ops read; `outputs`, the
    tensors made inside it that an op outside it or a network output reads, where that is more than its result
    (`output`, with its receptive field, becomes the first of them); `feeds`, the network outputs any of its rows
    feeds."""
    readers: list[list[int]] = [[] for _ in graph.tensors]
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            readers[t].append(i)
    end = len(graph.ops)
    for _, t in graph.outputs:
        readers[t].append(end)  # read after the last op
    made_at = [-1] * len(graph.tensors)  # the op that made each tensor (-1: an input)
    for i, op in enumerate(graph.ops):
        made_at[op.output] = i
    names = [t.name for t in graph.tensors]
    several = len(graph.outputs) > 1
    for index, first, stop, result in blocks:
        if first == stop:
            continue  # no op (an identity branch): nothing crosses
        ops = graph.ops[first:stop]
        reads = dict.fromkeys(names[t] for op in ops for t in op.inputs if not first <= made_at[t] < stop)
        outs = [op.output for op in ops if any(not first <= r < stop for r in readers[op.output])]
        row = outline[index]._replace(reads=tuple(reads))
        if outs and outs != [result]:
            first_out = graph.tensors[outs[0]]
            row = row._replace(output=first_out.shape, rf=first_out.rf, jump=first_out.jump,
                               outputs=tuple((names[t], graph.tensors[t].shape) for t in outs))
        if several:
            fed = {f for r in rows[first:stop] for f in r.feeds}
            row = row._replace(feeds=tuple(name for name, _ in graph.outputs if name in fed))
        outline[index] = row


class _RF(NamedTuple):
    rf: tuple[int, ...]
    jump: tuple[int | Fraction, ...]


def _merge_rf(states: list[Tensor]) -> _RF:
    # Through branches and merges the receptive field is the largest over the paths (per axis), as is the jump.
    return _RF(tuple(max(s.rf[i] for s in states) for i in range(len(states[0].rf))),
               tuple(max(s.jump[i] for s in states) for i in range(len(states[0].jump))))


def _all_names(node: Any, into: set[str]) -> set[str]:
    into.add(node.name)
    if isinstance(node, Sequence):
        for child in node.children:
            _all_names(child, into)
    elif isinstance(node, Parallel):
        for branch in node.branches:
            _all_names(branch, into)
    elif isinstance(node, Residual):
        _all_names(node.body, into)
        if isinstance(node.shortcut, Sequence):
            _all_names(node.shortcut, into)
        _all_names(node.after, into)
    return into


class _Engine:
    def __init__(self, spec: Spec, batch: int, itemsize: int, pick: Callable[[Cost], int], strict: bool,
                 once: Callable[[Cost], int] = lambda c: 0) -> None:
        self.spec = spec
        self.batch = batch
        self.itemsize = itemsize
        self.pick = pick
        self.once = once  # the convention's work per forward, not per sample (Cost.fvcore_once, full_once)
        self.strict = strict
        self.rows: list[Row] = []  # one per op, in execution order; each carries its op (Graph.ops is made from them)
        self.outline: list[Row] = []
        self.warnings: list[Warning_] = []
        self.tensors: list[Tensor] = []
        self.holds: list[Hold] = []
        self.inputs: list[tuple[str, int]] = []
        self.named: dict[str, int] = {}
        self.copies: dict[str, list[tuple[str, int]]] = {}  # a repeat's name -> its copies (name, output), in order
        self.early: set[int] = set()  # ops (row indices) of running sums: run as soon as their inputs are made
        self.discarded: dict[int, Any] = {}  # tensor id -> the node whose output it is, under `discard: true`
        self.blocks: list[tuple[int, int, int, int]] = []  # per block: outline index, first and end op, result
        self._later: set[str] | None = None

    # -- tensors and references --
    def new_tensor(self, name: str, shape: Shape, rf: _RF, storage: int | None = None,
                   train_storage: int | None = None, strided: tuple[bool, bool] = (False, False)) -> int:
        t = len(self.tensors)
        self.tensors.append(Tensor(name, shape, t if storage is None else storage,
                                   t if train_storage is None else train_storage, rf.rf, rf.jump, *strided))
        return t

    def resolve(self, ref: Ref) -> int:
        t = self._find(ref)
        if t in self.discarded:
            node = self.discarded[t]
            raise SpecError(ref.loc, f"'{ref.text}' is the output of {node.name}, which is marked 'discard: true' "
                                     f"(at {node.loc}): nothing may read it; remove 'discard' to use it")
        return t

    def copies_of(self, spread: Spread) -> list[int]:
        """The outputs of the copies of the repeat `spread` names, in order, sliced as it says."""
        ref = spread.ref
        parts = ref.scope.split(".") if ref.scope else []
        full = next((f for i in range(len(parts), -1, -1) if (f := ".".join(parts[:i] + [ref.text])) in self.copies),
                    None)
        if full is None:
            matches = sorted(n for n in self.copies if n.endswith("." + ref.text))
            if len(matches) > 1:
                raise SpecError(ref.loc, f"'{ref.text}' is ambiguous: it could be {', '.join(matches[:6])}; write the "
                                         "full name")
            full = matches[0] if matches else None
        if full is None:
            self._find(ref)  # no such tensor, or a later one: its own error
            raise SpecError(ref.loc, f"'{spread.text}': {ref.text} is not a repeat; NAME.* lists the copies of a "
                                     "`repeat:`" + did_you_mean(ref.text, list(self.copies)))
        copies = self.copies[full][spread.start:spread.stop:spread.step]
        if spread.sub is None:
            return [t for _, t in copies]
        outs = []
        for name, _ in copies:
            inner = f"{name}.{spread.sub}"
            if inner not in self.named:
                raise SpecError(ref.loc, f"'{spread.text}': copy {name} has no tensor named '{spread.sub}' ({inner})")
            t = self.named[inner]
            if t in self.discarded:
                raise SpecError(ref.loc, f"'{spread.text}': {inner} is marked 'discard: true'; nothing may read it")
            outs.append(t)
        return outs

    def _find(self, ref: Ref) -> int:
        parts = ref.scope.split(".") if ref.scope else []
        for i in range(len(parts), -1, -1):
            full = ".".join(parts[:i] + [ref.text])
            if full in self.named:
                return self.named[full]
        matches = sorted(n for n in self.named if n.endswith("." + ref.text))
        if len(matches) == 1:
            return self.named[matches[0]]
        if matches:
            raise SpecError(ref.loc, f"'{ref.text}' is ambiguous: it could be {', '.join(matches[:6])}; write the "
                                     "full name")
        if self._later is None:
            self._later = _all_names(self.spec.root, set())
        later = sorted(n for n in self._later if n == ref.text or n.endswith("." + ref.text))
        if later:
            raise SpecError(ref.loc, f"'{ref.text}' refers to {later[0]}, which is not computed yet at this point "
                                     "(a layer can read only tensors made before it; this would be a cycle)")
        raise SpecError(ref.loc, f"no tensor named '{ref.text}'{did_you_mean(ref.text, self._names())} (names are "
                                 "layer, block and input names; use the full dotted name from another block)")

    def _names(self) -> list[str]:
        return [n for n in self.named if not n.endswith("." + BLOCK_INPUT)]  # with `$input` itself, once

    def _shape_of(self, t: int) -> Shape:
        return self.tensors[t].shape

    def finish(self, last: int) -> Graph:
        if self.spec.outputs:
            outputs = tuple((o.name, self.resolve(o.ref)) for o in self.spec.outputs)
        else:
            outputs = (("output", last),)
        if self.early:
            self._run_early()
        ops = tuple(r.op for r in self.rows if r.op is not None)  # all of them: block rows are in the outline only
        return Graph(tuple(self.tensors), ops, tuple(self.holds), tuple(self.inputs), outputs,
                     tuple(sorted(self.discarded)))

    def _run_early(self) -> None:
        """Put each op of a running sum right after the op that makes the last of its inputs (execution order; the
        outline keeps the spec's order). A composite that held its input until some op now holds it until every op
        it held it for has run, wherever those went."""
        made = {t for _, t in self.inputs}
        order: list[int] = []
        pending = sorted(self.early)

        def flush() -> None:
            while pending and all(t in made for t in self.rows[pending[0]].op.inputs):  # type: ignore[union-attr]
                i = pending.pop(0)
                order.append(i)
                made.add(self.rows[i].op.output)  # type: ignore[union-attr]

        flush()
        for i, row in enumerate(self.rows):
            if i in self.early:
                continue
            order.append(i)
            made.add(row.op.output)  # type: ignore[union-attr]
            flush()
        position = [0] * len(order)
        for new, old in enumerate(order):
            position[old] = new
        until, latest = [], -1
        for old in range(len(order)):  # an op index in the spec's order -> the last new position among ops up to it
            latest = max(latest, position[old])
            until.append(latest)
        self.holds = [h._replace(until=until[h.until]) for h in self.holds]
        self.rows = [self.rows[i] for i in order]

    def _reads(self, inputs: tuple[int, ...]) -> tuple[str, ...]:
        return tuple(self.tensors[t].name for t in inputs)

    # -- leaves --
    def layer(self, node: Layer, x: int, depth: int) -> int:
        kind, a = node.kind, node.args
        inp = self._shape_of(x)

        def warn(message: str) -> None:
            if self.strict:
                raise SpecError(node.loc, f"{node.name}: {message} (--strict makes this an error)")
            self.warnings.append(Warning_(node.loc, node.name, message))

        if any(isinstance(v, (Ref, Pending)) for v in a.values()):
            a = MappingProxyType({k: self._shape_of(self.resolve(v)) if isinstance(v, Ref) else
                                  self._settle(v) if isinstance(v, Pending) else v for k, v in a.items()})
        try:
            if isinstance(inp, Tokens) and not (kind.tokens or kind.elementwise):
                raise LayerError(f"{kind.name} needs a grid (C x H x W ...), but its input is a token sequence "
                                 f"({inp[0]} tokens of {inp[1]} channels); use `to_grid` first")
            out = kind.output(a, inp, warn)
            _check_size(out, self.batch)
            cost = kind.cost(a, inp, out)
            steps = kind.rf(a, inp, out)
            config = kind.describe(a, inp)
        except LayerError as exc:
            raise SpecError(node.loc, f"{node.name} ({kind.name}) on input {_dims(inp)}: {exc}") from None
        src = self.tensors[x]
        state = _RF(src.rf, src.jump)
        if steps is not None and len(inp) > 1:
            rf, jump = list(state.rf), list(state.jump)
            for axis, step in enumerate(steps[:len(rf)]):  # (the input's axes; after a reshape that adds axes,
                if step.whole:                                 # which sees them whole, there may be more)
                    # the whole axis: of the grid, or of the grid a token sequence came from
                    size = inp.grid[axis] if isinstance(inp, Tokens) else inp[1 + axis]
                    rf[axis] += int((size - 1) * jump[axis])
                else:
                    rf[axis] += int((step.kernel - 1) * jump[axis])
                    jump[axis] *= step.stride
            state = _RF(tuple(rf), tuple(jump))
        # A view kind that makes a strided input contiguous (flatten of a crop) returns a copy; a view of a strided
        # tensor, or an in-place op on one, is strided too; a crop that cuts something is.
        alias = (kind.alias or kind.inplace(a)) and not (src.strided and kind.contiguous_input)
        train_alias = kind.alias_in_training(a) and not (src.train_strided and kind.contiguous_input)
        cut = kind.strided(a, inp, out)
        y = self.new_tensor(node.name, out, state, src.storage if alias else None,
                            src.train_storage if train_alias else None,
                            (cut or alias and src.strided, cut or train_alias and src.train_strided))
        op = Op(node.name, kind, None, a, (x,), y, node.loc, node.trainable, cost)
        row = Row(node.name, kind.name, depth, inp, out, config, state.rf, state.jump, params=cost.params,
                  trainable_params=cost.params if node.trainable else 0, buffers=cost.buffers + cost.int_buffers,
                  int_buffers=cost.int_buffers, macs=cost.macs * self.batch + cost.macs_once,
                  flops=self.pick(cost) * self.batch + self.once(cost),
                  activation_bytes=numel(out) * self.batch * self.itemsize, reads=self._reads((x,)), op=op)
        self.rows.append(row)
        self.outline.append(row)
        self.named[node.name] = y
        return y

    def _settle(self, pending: Pending) -> Any:
        """A layer argument that uses the input's shape (in_channels, ...), evaluated now and checked."""

        def shape_of(scope: str) -> Shape:
            return self._shape_of(self.named[f"{scope}.{BLOCK_INPUT}" if scope else BLOCK_INPUT])

        value = settle(pending.value, shape_of, pending.at.loc)
        return arg_type(pending.arg).convert(value, pending.arg, pending.at)

    def merge(self, name: str, op: MergeOp, inputs: tuple[int, ...], sources: list[str], depth: int,
              loc: Loc | None, where: str) -> int:
        shapes = [self._shape_of(t) for t in inputs]
        try:
            layouts = {isinstance(s, Tokens) for s in shapes}
            if True in layouts and (len(layouts) > 1 or not op.tokens):
                raise LayerError(f"{op.name} of token sequences and grids cannot be mixed" if len(layouts) > 1 else
                                 f"{op.name} of token sequences is not supported (add, sub, mul and concat are)")
            out = op.output(shapes, sources)
            _check_size(out, self.batch)
        except LayerError as exc:
            raise SpecError(loc, f"{where}: {exc}") from None
        state = _merge_rf([self.tensors[t] for t in inputs])
        y = self.new_tensor(name, out, state)
        cost = Cost(full=op.full(shapes, out))
        row = Row(name, op.name, depth, shapes[0], out, f"{len(inputs)} inputs", state.rf, state.jump,
                  flops=self.pick(cost) * self.batch, activation_bytes=numel(out) * self.batch * self.itemsize,
                  module=False, reads=self._reads(inputs),
                  op=Op(name, None, op, MappingProxyType({}), inputs, y, loc, cost=cost))
        self.rows.append(row)
        self.outline.append(row)
        return y

    def merge_item(self, node: Merge, depth: int) -> int:
        inputs: list[int] = []
        sources: list[str] = []
        for r in node.refs:
            if isinstance(r, Spread):
                outs = self.copies_of(r)
                inputs += outs
                sources += [f"'{r.text}' ({self.tensors[t].name})" for t in outs]
                continue
            t = self.resolve(r)
            inputs.append(t)
            sources.append(f"'{r.text}' ({self.tensors[t].name})" if r.text != self.tensors[t].name else f"'{r.text}'")
        if len(inputs) < 2:
            spreads = [r for r in node.refs if isinstance(r, Spread)]
            made = "; ".join(f"{r.text} gives {len(self.copies_of(r))}" for r in spreads)
            raise SpecError(node.loc, f"{node.name}: {node.op} of {len(inputs)} tensor{'s' if len(inputs) != 1 else ''}"
                                      f" ({made}); a merge needs at least two")
        if node.running:
            y = self.running(node, inputs, sources, depth)
        else:
            y = self.merge(node.name, MERGES[node.op], tuple(inputs), sources, depth, node.loc, node.name)
        self.named[node.name] = y
        return y

    def running(self, node: Merge, inputs: list[int], sources: list[str], depth: int) -> int:
        """`add: {from: [...], running: true}`: a group of n - 1 merges of two, `acc = a + b`, then `acc = acc + c`
        and so on in the order the inputs were made (tensor ids are in that order), each run as soon as its input
        is (Graph order: finish), so an input can be freed once added, as in a loop that keeps a running sum. The
        costs are the all-at-once merge's: n - 1 operations per element."""
        op = MERGES[node.op]
        order = sorted(range(len(inputs)), key=lambda k: inputs[k])
        start = len(self.outline)
        first_row = len(self.rows)
        self.outline.append(None)  # type: ignore[arg-type]  # the group's summary row, filled in below
        acc, acc_source = inputs[order[0]], sources[order[0]]
        for n, k in enumerate(order[1:], 1):
            self.early.add(len(self.rows))
            acc = self.merge(f"{node.name}.{node.op}{n}", op, (acc, inputs[k]), [acc_source, sources[k]], depth + 1,
                             node.loc, node.name)
            acc_source = f"the running {node.op} of {n + 1}"
        out = self.tensors[acc]
        self.outline[start] = Row(node.name, f"{node.op} (running)", depth, self._shape_of(inputs[order[0]]),
                                  out.shape, f"{len(inputs)} inputs", out.rf, out.jump,
                                  **_sums(self.rows[first_row:]), leaf=False, module=False)
        return acc

    # -- composites --
    def node(self, node: Any, x: int, depth: int) -> int:
        if not node.discard:
            return self._node(node, x, depth)
        # `discard: true`: computed and counted, its output read by nothing (freed as soon as it is made: nothing
        # holds it), and the next item reads what this one was given, as if it were not there.
        if isinstance(node, Layer) and node.kind.inplace(node.args):
            raise SpecError(node.loc, f"{node.name}: an in-place layer writes into its input, so discarding its "
                                      "output would still change what the next item reads; drop 'inplace' or "
                                      "'discard'")
        made = len(self.tensors)
        y = self._node(node, x, depth)
        if y >= made:  # a tensor this node made (a block that only passes its input on discards nothing)
            self.discarded[y] = node
        return x

    def _node(self, node: Any, x: int, depth: int) -> int:
        if node.src is not None:
            x = self.resolve(node.src)
        if isinstance(node, Layer):
            return self.layer(node, x, depth)
        if isinstance(node, Merge):
            return self.merge_item(node, depth)
        self.named[f"{node.name}.{BLOCK_INPUT}"] = x  # blocks are always named (the top level is not a block)
        start = len(self.outline)
        first_row = len(self.rows)
        self.outline.append(None)  # type: ignore[arg-type]  # the block's summary row, filled in below
        if isinstance(node, Sequence):
            y = self.seq(node, x, depth)
        elif isinstance(node, Parallel):
            y = self.parallel(node, x, depth)
        else:
            y = self.residual(node, x, depth)
        out = self.tensors[y]
        self.outline[start] = Row(node.name, node.label, depth, self._shape_of(x), out.shape, "", out.rf, out.jump,
                                  **_sums(self.rows[first_row:]), leaf=False)
        self.blocks.append((start, first_row, len(self.rows), y))
        self.named[node.name] = y
        return y

    def _hold(self, x: int) -> None:
        if self.rows:
            self.holds.append(Hold(x, len(self.rows) - 1))

    def seq(self, node: Sequence, x: int, depth: int) -> int:
        y = x
        outs = []
        for child in node.children:
            y = self.node(child, y, depth + 1)
            if not child.discard:
                outs.append((child.name, y))
        if node.copies:
            self.copies[node.name] = outs
        self._hold(x)
        return y

    def parallel(self, node: Parallel, x: int, depth: int) -> int:
        outs = tuple(self.node(branch, x, depth + 1) for branch in node.branches)
        y = self.merge(f"{node.name}.{node.merge}", MERGES[node.merge], outs, [b.name for b in node.branches],
                       depth + 1, node.loc, node.name)
        self._hold(x)
        return y

    def residual(self, node: Residual, x: int, depth: int) -> int:
        inp = self._shape_of(x)
        body = self.seq(node.body, x, depth)
        sc = node.shortcut
        if isinstance(sc, str) and sc != "identity" and self._shape_of(body) != inp:
            sc = self.projection(node, sc, inp, self._shape_of(body))
        shortcut = self.node(sc, x, depth + 1) if isinstance(sc, Sequence) else x
        added = self.merge(f"{node.name}.add", MERGES["add"], (body, shortcut), [f"{node.name} body",
                           f"{node.name}.shortcut"], depth + 1, node.loc, node.name)
        # `after` layers sit at the residual's own level in names (layer1.0.relu3); show them one level down.
        y = self.seq(node.after, added, depth)
        self._hold(x)
        return y

    def projection(self, node: Residual, mode: str, inp: Shape, out: Shape) -> Sequence:
        """The projection shortcut (He et al. 2016, option B): a 1x1 conv with the body's stride, then BN.

        The one place the engine names kinds: `shortcut: projection` is sugar for those two layers (no bias on the
        conv, as in torchvision's downsample), written here rather than in every spec."""
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


MAX_ELEMENTS = 2**63
"""The most elements an output may have, batch included: every figure stays an integer that formats (a size can
grow without an expression: `repeat: 1100` of `concat: [$input, $input]` doubles it 1,100 times)."""


def _check_size(out: Shape, batch: int) -> None:
    if numel(out) * batch > MAX_ELEMENTS:
        dims = _dims(out)
        text = dims if len(dims) <= 60 else f"a {len(str(numel(out)))}-digit number of elements"
        raise LayerError(f"the output ({text}, batch {batch}) has more than 2^63 elements")


def _dims(shape: Shape) -> str:
    return "x".join(map(str, shape))
