"""Cross-validate a Report against execution: build the module, run it, measure, compare.

    Spec ──analyze──▶ Report ──build──▶ nn.Module ──measure──▶ Measurement ──compare──▶ Validation

What is measured, and by what:
  output_shape      forward hooks on every leaf module (merge ops: the parallel module's output, or the input of
                    the first `after` layer of a residual)
  params, buffers   the leaf module's parameters / buffers; the total over the whole model
  macs              torch.utils.flop_counter.FlopCounterMode (2 FLOPs per MAC of conv / linear), per module fqn / 2
  fvcore_flops      fvcore.nn.FlopCountAnalysis in eval mode, .by_module() and .total()
  activation_bytes  numel * element_size of every output tensor the hooks see
  saved_bytes       torch.autograd.graph.saved_tensors_hooks during one training-mode forward of a real training
                    step (the input batch needs no gradient, unless input_requires_grad): the bytes of every
                    tensor autograd packs, de-duplicated by untyped storage, parameters and buffers excluded
  training_flops    FlopCounterMode around one training step (train-mode forward, backward of the output's sum,
                    the input needing no gradient), per module fqn: forward + grad input + grad weight

torch and fvcore are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from archcalc.core.analyze import Report, analyze
from archcalc.core.conventions import dtypes
from archcalc.core.errors import ArchcalcError, SpecError
from archcalc.core.kinds import Shape
from archcalc.core.overwrites import overwrites
from archcalc.core.spec import Spec

QUANTITIES = ("output_shape", "params", "buffers", "macs", "fvcore_flops", "activation_bytes", "saved_bytes",
              "training_flops")
DEVICES = ("cpu", "cuda", "meta")
DTYPES = dtypes("runs")

Value = Any  # an int, or a shape as a list of ints


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: `layer` is None for a whole-model total."""

    quantity: str
    layer: str | None
    predicted: Value
    measured: Value
    ok: bool


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one execution of the built module showed. A mapping is None when its counter could not run."""

    device: str
    batch: int
    dtype: str
    shapes: Mapping[str, tuple[int, ...]]  # row name -> output shape, batch included
    output_bytes: Mapping[str, int]
    params: Mapping[str, int]
    buffers: Mapping[str, int]
    total_params: int
    total_buffers: int
    output: tuple[int, ...]
    macs: Mapping[str, int] | None
    total_macs: int | None
    fvcore: Mapping[str, int] | None
    total_fvcore: int | None
    saved_bytes: int | None
    notes: tuple[str, ...] = ()
    outputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # with several outputs: each by name
    training_flops: Mapping[str, int] | None = None  # module name -> FLOPs of one training step
    total_training_flops: int | None = None


@dataclass(frozen=True, slots=True)
class Validation:
    name: str
    device: str
    batch: int
    dtype: str
    input: Shape
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def as_dict(self) -> dict[str, Any]:
        """The JSON contract: {"ok", "checks": [{"quantity", "layer", "predicted", "measured", "ok"}], ...}."""
        return {
            "name": self.name,
            "device": self.device,
            "batch": self.batch,
            "dtype": self.dtype,
            "input": list(self.input),
            "ok": self.ok,
            "checks": [{"quantity": c.quantity, "layer": c.layer, "predicted": c.predicted, "measured": c.measured,
                        "ok": c.ok} for c in self.checks],
            "notes": list(self.notes),
        }


# ---- entry point --------------------------------------------------------------------------------------------------


def validate(spec: Spec, device: str = "cpu", batch: int = 1, dtype: str = "float32",
             input_shape: Shape | None = None, seed: int = 0, input_requires_grad: bool = False,
             force: bool = False) -> Validation:
    """Analyze `spec`, build and run its module on `device`, and compare every figure. A run predicted not to fit
    in the memory the process may still allocate is refused (OutOfMemory) unless `force`."""
    if device not in DEVICES:
        raise ArchcalcError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if dtype not in DTYPES:
        raise ArchcalcError(f"--dtype {dtype} cannot run a model; use one of {', '.join(DTYPES)}")
    # One analysis gives both: rows carry MACs always and FLOPs under the convention asked for.
    # Saved tensors follow the kernels of the device that runs (meta: no saved-bytes check).
    report = analyze(spec, batch=batch, dtype=dtype, convention="fvcore", input_shape=input_shape,
                     device="cpu" if device == "cpu" else "cuda", input_requires_grad=input_requires_grad)
    for found in overwrites(report.graph, input_requires_grad):  # torch would refuse the step's backward
        op = report.graph.ops[found.op]
        raise SpecError(op.loc, f"{op.name}: {found.message(report.graph)} (validate measures a training step)")
    if device != "meta":
        _preflight(report, device, force)
    try:
        measured = measure(report, device, seed, input_requires_grad)
    except RuntimeError as exc:
        if "modified by an inplace operation" not in str(exc):
            raise
        # The network runs forward, but torch cannot train it: an in-place layer overwrites a tensor another layer
        # keeps for its backward (two in-place ReLUs in a row: the first keeps its output). archcalc's figures
        # follow the spec; the module torch builds from it cannot take a training step, so validate cannot check.
        raise ArchcalcError(f"{report.name}: torch cannot take a training step of this network: an in-place layer "
                            "overwrites a tensor another layer keeps for backward (torch: 'one of the variables "
                            "needed for gradient computation has been modified by an inplace operation'); write "
                            "'inplace: false' on the layer that follows the one it overwrites") from None
    return compare(report, measured)


# The most multiply-accumulates of one forward pass a CPU validation runs without --force: VGG-16 at batch 64 (0.99 T)
# runs, at batch 128 (1.98 T; 5.6 GB and many minutes on two cores) it is refused.
MAX_CPU_MACS = 10**12


def _preflight(report: Report, device: str, force: bool) -> None:
    """Refuse a run that cannot fit before allocating anything (as `profile` does): the inference peak, then a
    training forward and backward (weights, gradients, buffers, saved activations) -- an upper bound of what
    validate holds at once."""
    from archcalc.core.training import training_memory
    from archcalc.torch.profile.machine import available_memory
    from archcalc.torch.profile.work import preflight

    if device == "cuda":
        import torch

        from archcalc.torch.profile.probes import CudaMemory

        if not torch.cuda.is_available():
            return  # the run says so, in its own words
        available = CudaMemory().available()
    else:
        available = available_memory()
    predicted = max(report.totals.peak_bytes, training_memory(report, "sgd").total)
    where = f"validate {report.name} at batch {report.batch}"
    preflight(predicted, available, force, where)
    if device == "cpu" and not force and report.totals.macs > MAX_CPU_MACS:
        raise ArchcalcError(f"{where}: one forward pass is {report.totals.macs / 1e12:.2f} T multiply-accumulates, and "
                            "validate makes four and a backward (many minutes on a CPU), more than the "
                            f"{MAX_CPU_MACS / 1e12:g} T a CPU run takes without --force; every check is the same at a "
                            "small batch (--batch 2), or use --force to run it anyway")


# ---- measurement --------------------------------------------------------------------------------------------------


def measure(report: Report, device: str = "cpu", seed: int = 0, input_requires_grad: bool = False) -> Measurement:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from archcalc.torch.build import build_module

    if device == "cuda" and not torch.cuda.is_available():
        raise ArchcalcError("--device cuda: CUDA is not available here (try --device cpu or meta)")
    torch_dtype = getattr(torch, report.dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = build_module(report)
    model.to(dtype=torch_dtype)
    notes: list[str] = []
    # One random tensor per named input (the --input override applies to the first).
    shapes_in = [report.input] + [report.graph.tensors[t].shape for _, t in report.graph.inputs[1:]]
    xs = tuple(torch.randn(report.batch, *shape, device=device, dtype=torch_dtype) for shape in shapes_in)

    # -- structure: parameters and buffers per leaf --
    leaves = {r.name: model.get_submodule(r.name) for r in report.rows if r.module}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in leaves.items()}
    buffers = {name: sum(b.numel() for b in m.buffers()) for name, m in leaves.items()}

    # -- one eval forward: hooks on every leaf and merge site, FlopCounterMode around it --
    shapes: dict[str, tuple[int, ...]] = {}
    nbytes: dict[str, int] = {}

    def record(name: str, t: Any) -> None:
        shapes[name] = tuple(t.shape)
        nbytes[name] = t.numel() * t.element_size()

    # Every op's output (layers and merges alike), seen by the executor as it runs: rows are in op order.
    names = [r.name for r in report.rows]
    model.record = lambda i, t: record(names[i], t)  # type: ignore[assignment]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            y = model(*xs)
    finally:
        model.record = None  # type: ignore[assignment]
    first = next(iter(y.values())) if isinstance(y, dict) else y
    prefix = type(model).__name__
    counts = counter.get_flop_counts()
    macs = {name: sum(counts.get(f"{prefix}.{name}", {}).values()) // 2 for name in leaves}
    total_macs = counter.get_total_flops() // 2

    # -- fvcore (traces the model with torch.jit; needs real tensors) --
    fv: dict[str, int] | None = None
    total_fv: int | None = None
    if device == "meta":
        notes.append("fvcore_flops: not checked on the meta device (fvcore traces the model with real tensors)")
    else:
        fv, total_fv, fv_notes = _fvcore(model, xs, list(leaves))
        notes.extend(fv_notes)

    # -- saved tensors in a training-mode forward --
    saved: int | None = None
    if device == "meta":
        notes.append("saved_bytes: not checked on the meta device (meta tensors have no storage to de-duplicate)")
    else:
        saved, saved_notes = _saved_run(model, xs, input_requires_grad)
        notes.extend(saved_notes)
    train_flops, total_train, train_notes = _training_flops(model, xs, list(leaves))
    notes.extend(train_notes)
    model.eval()
    return Measurement(device=device, batch=report.batch, dtype=report.dtype, shapes=shapes, output_bytes=nbytes,
                       params=params, buffers=buffers, total_params=sum(p.numel() for p in model.parameters()),
                       total_buffers=sum(b.numel() for b in model.buffers()), output=tuple(first.shape), macs=macs,
                       total_macs=total_macs, fvcore=fv, total_fvcore=total_fv, saved_bytes=saved,
                       notes=tuple(notes), training_flops=train_flops, total_training_flops=total_train,
                       outputs={k: tuple(v.shape) for k, v in y.items()} if isinstance(y, dict) else {})


def _training_flops(model: Any, xs: Any, leaves: list[str]) -> tuple[dict[str, int] | None, int | None, list[str]]:
    """FLOPs of one training step as FlopCounterMode counts them: in total, and per leaf module.

    The total: FlopCounterMode around a train-mode forward on an input that needs no gradient (a batch from a
    data loader) and the backward of the output's sum (a sum costs nothing in its counting). Per module, its
    attribution is not used: in backward its module tracker also credits a branch's ops to modules of sibling
    branches. Instead each leaf module runs one training step of its own under FlopCounterMode, on an input of
    the shape it saw in the whole-model step that needs a gradient exactly when that input did there.
    FlopCounterMode counts from shapes, so every step runs on the meta device (parameters and buffers swapped
    for meta tensors with the same requires_grad): nothing is computed.
    """
    import torch
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    def on_meta(module: Any, *inputs: Any) -> Any:
        state = {n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
                 for n, p in module.named_parameters()}
        state.update({n: torch.empty_like(b, device="meta") for n, b in module.named_buffers()})
        return functional_call(module, state, inputs)

    def loss(y: Any) -> Any:  # the sum of every output (a dict when the network has several)
        outs = list(y.values()) if isinstance(y, dict) else [y]
        return sum((o.sum() for o in outs[1:]), outs[0].sum())

    seen: dict[str, tuple[tuple[int, ...], bool]] = {}
    modules = {name: model.get_submodule(name) for name in leaves}

    def note(name: str, inp: Any) -> None:  # a pre-hook that returns None leaves the input alone
        seen.setdefault(name, (tuple(inp.shape), inp.requires_grad))

    handles = [m.register_forward_pre_hook(lambda _m, inp, n=name: note(n, inp[0])) for name, m in modules.items()]
    counter = FlopCounterMode(display=False)
    model.train()
    try:
        with counter:
            total = loss(on_meta(model, *(torch.empty_like(x, device="meta") for x in xs)))
            if total.requires_grad:
                total.backward()
        for h in handles:
            h.remove()
        per_layer = {}
        for name, module in modules.items():
            shape, needs_grad = seen[name]
            base = torch.empty(shape, device="meta", dtype=xs[0].dtype, requires_grad=needs_grad)
            inp = base.clone() if needs_grad else base  # not a leaf: in-place activations may write into it
            one = FlopCounterMode(display=False)
            with one:
                out = on_meta(module, inp)
                if out.requires_grad:
                    out.sum().backward()
            per_layer[name] = one.get_total_flops()
    except ValueError as exc:
        return None, None, [f"training_flops: not checked: the training-mode forward fails: {exc} (try a larger "
                            "--batch)"]
    finally:
        for h in handles:
            h.remove()
        model.eval()
    return per_layer, counter.get_total_flops(), []


def _fvcore(model: Any, x: Any, leaves: list[str]) -> tuple[dict[str, int], int, list[str]]:
    import logging

    from fvcore.nn import FlopCountAnalysis

    model.eval()
    analysis = FlopCountAnalysis(model, x if len(x) > 1 else x[0])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    # fvcore logs through `logging` while tracing; keep its chatter off the user's terminal (it is reported below).
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        total = int(analysis.total())
        by_module = analysis.by_module()
        unsupported = analysis.unsupported_ops()
    finally:
        logger.setLevel(level)
    notes = []
    if unsupported:
        ops = ", ".join(f"{op} ({n}x)" for op, n in sorted(unsupported.items()))
        notes.append(f"fvcore_flops: fvcore has no formula for {ops}; it counts them as 0, as the fvcore "
                     "convention does")
    return {name: int(by_module.get(name, 0)) for name in leaves}, total, notes


class _Packed:
    """What the saved-tensor hook hands autograd: the node holds it, and it dies with the node."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


def _saved_run(model: Any, x: Any, input_requires_grad: bool) -> tuple[int | None, list[str]]:
    """Bytes of the tensors autograd holds for backward at the end of one training-mode forward, by storage,
    parameters and buffers excluded. What an op no output depends on kept dies with its node when its output is
    dropped mid-forward, and is not counted (each packed tensor is wrapped in an object the node holds)."""
    import weakref

    import torch

    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed: list[Any] = []

    def pack(t: Any) -> Any:
        holder = _Packed(t.detach())  # detached: a saved output would hold its own node in a cycle, never freed
        packed.append(weakref.ref(holder))
        return holder

    model.train()
    inp = [t.detach().clone().requires_grad_(input_requires_grad) for t in x]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
            out = model(*inp)
    except ValueError as exc:
        # e.g. batch norm in training mode on one value per channel (batch 1 after global pooling).
        return None, [f"saved_bytes: not checked: the training-mode forward fails: {exc} (try a larger --batch)"]
    finally:
        model.eval()
    storages: dict[int, int] = {}  # every holder still alive is alive at once: distinct addresses, distinct storages
    for ref in packed:
        holder = ref()
        if holder is not None:
            storage = holder.tensor.untyped_storage()
            if storage.data_ptr() not in exclude and storage.nbytes():
                storages[storage.data_ptr()] = storage.nbytes()
    del out
    return sum(storages.values()), []


# ---- comparison ---------------------------------------------------------------------------------------------------


def compare(report: Report, m: Measurement) -> Validation:
    """Every analytic figure beside its measurement.

    Layers no output depends on (`unused: allow`) are built and run, so the whole-model measurements include them,
    while the report's totals leave them out (docs/spec.md): their own measured params, buffers, MACs and forward
    FLOPs are taken off the whole-model figures, and the activation total adds the used rows alone. Their fvcore
    and training FLOPs are not checked per layer: fvcore's trace drops ops no output depends on, and no gradient
    reaches them."""
    checks: list[Check] = []
    notes = list(m.notes)
    dead = [r for r in report.rows if not r.used]
    dead_modules = [r.name for r in dead if r.module]
    if dead:
        listed = ", ".join(r.name for r in dead[:5]) + (", ..." if len(dead) > 5 else "")
        notes.append(f"{len(dead)} op{'s' if len(dead) > 1 else ''} no output depends on ({listed}) run in the "
                     "built module but are left out of the totals, "
                     "as in calc: their measured figures are taken off the whole-model ones; their fvcore and "
                     "training FLOPs are not checked")

    # Ops only `discard: true` items depend on run and count in every total, but fvcore's trace drops them (no
    # output depends on them) and no gradient reaches them in a training step: their fvcore FLOPs are taken off the
    # predicted total for that check, and their fvcore and training FLOPs are not checked per layer (a layer's own
    # training step runs its backward).
    graph = report.graph
    reaches = graph.used(discarded=False)
    side = {r.name for r, reach in zip(report.rows, reaches) if r.used and not reach}
    if side:
        listed = ", ".join(sorted(side)[:5]) + (", ..." if len(side) > 5 else "")
        notes.append(f"{len(side)} op{'s' if len(side) > 1 else ''} only 'discard: true' items depend on ({listed}) "
                     "count in every total; fvcore drops them from its trace, so its total is compared without "
                     "them, and their training FLOPs (forward only) are not checked per layer")

    def add(quantity: str, layer: str | None, predicted: Value, measured: Value) -> None:
        checks.append(Check(quantity, layer, predicted, measured, predicted == measured))

    def live(total: int | None, per_layer: Mapping[str, int] | None, scale: int = 1) -> int | None:
        """A whole-model measurement less the measured share of the layers no output depends on."""
        if total is None or per_layer is None:
            return total
        return total - scale * sum(per_layer[name] for name in dead_modules)

    for row in report.rows:
        add("output_shape", row.name, [report.batch, *row.output], list(m.shapes[row.name]) if row.name in m.shapes
            else None)
    add("output_shape", None, [report.batch, *report.totals.output], list(m.output))
    if len(report.outputs) > 1:  # every output of the network, by name
        for name, shape in report.outputs:
            add("output_shape", f"output {name}", [report.batch, *shape],
                list(m.outputs[name]) if name in m.outputs else None)
    for row in report.rows:
        if row.module:
            add("params", row.name, row.params, m.params[row.name])
    add("params", None, report.totals.params, live(m.total_params, m.params))
    for row in report.rows:
        if row.module:
            add("buffers", row.name, row.buffers, m.buffers[row.name])
    add("buffers", None, report.totals.buffers, live(m.total_buffers, m.buffers))
    if m.macs is not None:
        for row in report.rows:
            if row.module:
                add("macs", row.name, row.macs, m.macs[row.name])
        add("macs", None, report.totals.macs, live(m.total_macs, m.macs))
    if m.fvcore is not None:
        for row in report.rows:
            if row.module and row.used and row.name not in side:
                add("fvcore_flops", row.name, row.flops, m.fvcore[row.name])
        add("fvcore_flops", None, report.totals.flops - sum(r.flops for r in report.rows if r.name in side),
            m.total_fvcore)
    for row in report.rows:
        add("activation_bytes", row.name, row.activation_bytes, m.output_bytes.get(row.name))
    add("activation_bytes", None, report.totals.activation_bytes,
        sum(m.output_bytes.get(r.name, 0) for r in report.rows if r.used))
    if m.saved_bytes is not None:
        add("saved_bytes", None, report.totals.saved_bytes, m.saved_bytes)
    if m.training_flops is not None:
        from archcalc.core.training import training_flops

        step = training_flops(report)
        per_layer = {f.name: f.total for f in step.layers}
        for row in report.rows:
            if row.module and row.used and row.name not in side:
                add("training_flops", row.name, per_layer.get(row.name, 0), m.training_flops[row.name])
        # A layer no output depends on runs its forward in the step (2 FLOPs per MAC), and nothing backward.
        add("training_flops", None, step.total, live(m.total_training_flops, m.macs, scale=2))
    order = {q: i for i, q in enumerate(QUANTITIES)}
    checks.sort(key=lambda c: order[c.quantity])  # stable: layers in execution order, the total last
    return Validation(report.name, m.device, report.batch, report.dtype, report.input, tuple(checks), tuple(notes))
