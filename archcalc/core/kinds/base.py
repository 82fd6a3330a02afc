"""The layer-kind registry and what every kind provides.

A kind is one registered class that owns its arguments (named like PyTorch's), its output shape, its costs under
every convention, its receptive-field step, what it saves for backward and allocates while it runs, and a few
example inputs. Nothing here imports torch: the module that computes a kind is its recipe in
archcalc.torch.recipes, the only place where kinds meet torch.
"""


import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

Shape = tuple[int, ...]
"""A per-sample tensor shape: (C, *spatial), or (features,) after a flatten or linear layer, or a token sequence
(N, C): a `Tokens`."""


class Tokens(tuple):  # type: ignore[type-arg]
    """The per-sample shape of a token sequence: N tokens of C channels, (N, C), as torch holds it batch-first
    (B x N x C: nn.Linear and nn.LayerNorm act on the last axis, C). A grid is (C, *spatial), channels first; the
    layout is the type, so the engine can refuse a grid layer on tokens and a token layer on a grid.

    `grid`: the spatial sizes of the grid the tokens were flattened from (14 x 14 for ViT-B/16 at 224), kept through
    token layers (a class token adds one token, the grid stays): the receptive field of a layer that sees every token
    (attention) is the whole of that grid. Compares equal to the plain tuple (N, C)."""

    grid: tuple[int, ...]

    def __new__(cls, n: int, c: int, grid: tuple[int, ...]) -> "Tokens":
        obj = super().__new__(cls, (n, c))
        obj.grid = tuple(grid)
        return obj

    def __getnewargs__(self) -> tuple[int, int, tuple[int, ...]]:  # copy and pickle keep the layout
        return (self[0], self[1], self.grid)

    def __repr__(self) -> str:
        return f"Tokens({self[0]}, {self[1]}, grid={self.grid})"


def is_tokens(shape: Shape) -> bool:
    return isinstance(shape, Tokens)


def tokens_like(inp: Shape, n: int, c: int) -> "Tokens":
    """A token shape of n tokens of c channels on `inp`'s grid."""
    assert isinstance(inp, Tokens)
    return Tokens(n, c, inp.grid)


class LayerError(Exception):
    """A problem with one layer (bad argument combination, shape that does not fit); the engine adds the location."""


REQUIRED = object()


class Arg(NamedTuple):
    """One argument of a kind.

    `type` is one of: int, float, bool, str, ints (an int or one int per spatial axis), padding (ints, pairs,
    'same' or 'valid'), number_or_numbers, ints_or_none.
    """

    name: str
    type: str
    default: object = REQUIRED
    doc: str = ""
    aliases: tuple[str, ...] = ()
    choices: tuple[object, ...] = ()
    minimum: int | float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Cost(NamedTuple):
    """Per-sample costs of one layer. Every count is an integer.

    macs: multiply-accumulates of conv / transposed conv / linear (torchvision's "GFLOPS").
    fvcore: what fvcore's FlopCountAnalysis attributes to this layer in eval mode.
    full: every arithmetic operation (see each kind's doc for its rule).
    params: learnable parameters; buffers / int_buffers: non-trainable float / int64 buffers (BN running stats).
    fvcore_once / full_once: work a forward does once whatever the batch, on the weights rather than on the samples
    (weight standardisation: std_conv), under the fvcore and full conventions; not multiplied by the batch.
    macs_once: multiply-accumulates a forward does once whatever the batch (Swin V2's position-bias MLP, run on a
    table of relative coordinates); not multiplied by the batch.
    """

    params: int = 0
    buffers: int = 0
    int_buffers: int = 0
    macs: int = 0
    fvcore: int = 0
    full: int = 0
    fvcore_once: int = 0
    full_once: int = 0
    macs_once: int = 0


class RFStep(NamedTuple):
    """How one spatial axis' receptive field grows through a layer: rf += (kernel - 1) * jump; jump *= stride.

    `whole` marks layers that see the entire axis (global pooling, flatten + linear).
    """

    kernel: int = 1
    stride: int | Fraction = 1  # a Fraction only where the grid gets finer (transposed conv, upsampling)
    whole: bool = False


# Item sizes in Saved.extra / Saved.per_batch and Kind.transient: a positive number is bytes per element; these
# codes stand for a dtype that depends on the activation dtype and the device (see `itemsize_for`).
ACTIVATION = 0  # the activation dtype
STATISTICS = -1  # batch / layer norm's saved mean and 1/std: the activation dtype on the CPU; on CUDA float32 or wider
MASK = -2  # dropout's keep-mask: a bool mask on CUDA (fused native_dropout); the CPU's composite keeps a float noise
ACCUMULATE = -3  # a fused kernel's float accumulator (attention's log-sum-exp): float32 for 16-bit activations


def itemsize_for(code: int, itemsize: int, device: str) -> int:
    """Bytes per element of a saved or temporary tensor whose size is given as `code` (bytes, or one of the codes
    above), for activations of `itemsize` bytes on `device` ('cuda' or 'cpu'), the model cast as a whole.

    STATISTICS, from the kernels' source (PyTorch 2.x): on the CPU, batch_norm_cpu_update_stats_template,
    layer_norm_cpu and native_group_norm allocate the statistics in the parameters' dtype (`param_scalar_type`:
    the input's own dtype unless the parameters are float32 and the input reduced); on CUDA, batch_norm_cuda and
    layer_norm_cuda allocate them in the accumulate type (`toAccumulateType(dtype, is_cuda=true)`: float32 for
    float16/bfloat16, the dtype itself for float32/float64), and cudnn_batch_norm (float32/float64 inputs) in the
    weight's dtype, which is the same. Group norm's native_group_norm is shared by both devices (ACTIVATION).
    """
    if code > 0:
        return code
    if code == ACTIVATION:
        return itemsize
    if code == STATISTICS:
        return max(itemsize, 4) if device == "cuda" else itemsize
    if code == MASK:
        return 1 if device == "cuda" else itemsize
    if code == ACCUMULATE:  # at::opmath_type: float32 for float16/bfloat16, the dtype itself otherwise
        return max(itemsize, 4)
    raise ValueError(f"unknown item-size code {code}")


class Saved(NamedTuple):
    """Tensors autograd saves for backward when the layer's node is recorded (its input or its parameters need a
    gradient): the layer's input and/or output (shared with neighbours, so the engine de-duplicates them by tensor),
    plus extra tensors of its own as (elements per sample, itemsize), itemsize in bytes or a code above (e.g.
    max-pool indices are (out elements, 8): int64).

    `input_for_params`: the input is kept only for the parameters' gradient, so a frozen layer does not keep it
    (linear: addmm/mm keep mat1 only when mat2, the weight, needs a gradient)."""

    input: bool = False
    output: bool = False
    extra: tuple[tuple[int, int], ...] = ()
    per_batch: tuple[tuple[int, int], ...] = ()  # extras not multiplied by batch (e.g. BN's per-channel stats)
    input_for_params: bool = False
    # extras kept only for the parameters' gradient, as `input_for_params` (attention's joined heads, the input of
    # its output projection): a frozen layer does not keep them
    extra_for_params: tuple[tuple[int, int], ...] = ()


class BackwardMoment(NamedTuple):
    """One moment of a composite layer's backward (`Kind.backward_moments`), what is alive beyond the bytes alive
    as its backward begins (its output's gradient, its saved tensors and its input among them)."""

    elements: int  # per sample, in the activation dtype: intermediate gradients made less saved tensors freed
    params: int = 0  # parameter elements whose gradients (kept: they become .grad) exist by then
    output_grad_freed: bool = False  # its output's gradient has been freed (when nothing else holds it)
    more: tuple[tuple[int, int], ...] = ()  # per sample (elements, item size or code) beside `elements`
    once: int = 0  # elements in the activation dtype whatever the batch (window attention's position bias gradient)


class Example(NamedTuple):
    input: Shape
    args: Mapping[str, object] = MappingProxyType({})


REGISTRY: "dict[str, Kind]" = {}


def register(cls: "type[Kind]") -> "type[Kind]":
    if cls.name in REGISTRY:
        raise RuntimeError(f"layer kind '{cls.name}' registered twice")
    if cls.elementwise and not cls.same_shape:
        raise RuntimeError(f"layer kind '{cls.name}' is element-wise but not same_shape")
    if any(m.endswith("_") for m in cls.torch_methods) and "inplace" not in {a.name for a in cls.args}:
        raise RuntimeError(f"layer kind '{cls.name}' names an in-place method but has no `inplace` argument")
    REGISTRY[cls.name] = cls()
    return cls


class Kind:
    name: ClassVar[str]
    prefix: ClassVar[str] = ""  # default name prefix for auto-naming (conv1, bn1, fc1); the kind name if empty
    doc: ClassVar[str] = ""
    full_rule: ClassVar[str] = ""  # how `full` counts, shown by `archcalc kinds`
    args: ClassVar[tuple[Arg, ...]] = ()
    synonyms: ClassVar[tuple[str, ...]] = ()  # other frameworks' names (conv2d, fc, dense, bn), for suggestions only
    examples: ClassVar[tuple[Example, ...]] = ()
    alias: ClassVar[bool] = False  # output shares the input's storage in eval (views, identity, dropout)
    # Its backward hands its output's gradient to its input as it is, no new tensor (x + b: AddBackward returns
    # the gradient itself for x), as a view kind passes a view of it
    passes_gradient: ClassVar[bool] = False
    # A view whose backward makes its input's gradient anew, not a view of its own: zeros of the input's size with
    # the gradient written in (take_token's x[:, i]: select_backward; measured in tests/test_attention_kernels.py)
    scatters_gradient: ClassVar[bool] = False
    # Its backward kernel makes its output's gradient contiguous first: a copy, freed as it returns, where that
    # gradient is the loss seed's expanded view (the op's output is a network output): native_group_norm_backward
    contiguous_gradient: ClassVar[bool] = False
    weighted: ClassVar[bool] = False  # counts as a "weight layer" (conv, linear) in compare
    same_shape: ClassVar[bool] = False  # the output always has the input's shape
    # Each output element is its own input element under one rule for all (no per-channel parameter, no axis
    # argument): the layer is indifferent to the layout, so it runs as it is on a channels-last view. Implies
    # same_shape.
    elementwise: ClassVar[bool] = False
    # The module makes its input contiguous before it computes (x.contiguous(), or flatten's reshape): a strided
    # view (`Tensor.strided`, a crop) is copied first, and the copy, not the view's base, is what it reads and keeps
    # for backward (a view kind with it, flatten, returns that copy). Measured per kind in tests/test_memory_views.py.
    contiguous_input: ClassVar[bool] = False
    # Only when autograd records it, the module keeps a contiguous copy of a strided view it reads (not the view's
    # base), as `contiguous_input` does: self_attention's in_proj (matmul folds a strided 3-D input into a matrix
    # with a copy when it records; under no_grad it reads the view in place). Measured: tests/test_attention_step.py.
    # An int above 1: that many copies, one per projection reading the view (SwiftFormer's q and k: 2).
    contiguous_recorded_input: ClassVar[bool | int] = False
    # torch.autocast on the CPU (the torch.amp documentation's op lists, "CPU Ops that can autocast to bfloat16 / to
    # float32"): "lower", the op runs in the low-precision type, its floating-point inputs and parameters cast to it
    # (a copy each; the copies of parameters that need a gradient cached for the autocast region); "float32", it
    # runs in float32 (a copy of a low-precision input); "promotes", it runs in its input's type but a float32
    # parameter promotes its output to float32; "mixed", several ops of both kinds inside; "" it runs in its
    # input's type. `autocast_on` may depend on the arguments and the input (3-D pooling runs in float32).
    autocast: ClassVar[str] = ""
    # The kind takes a token sequence (N x C, a `Tokens`) as its input. The engine refuses a token input to a kind
    # without it (and not element-wise): a conv or a batch norm would read N as the channels.
    tokens: ClassVar[bool] = False
    # Why the training step's timeline does not follow this kind's backward yet ('' when it does: every kind checked
    # against torch in tests/test_training_step.py and the property test); calc then gives no step peak.
    step_unfollowed: ClassVar[str] = ""

    def step_unfollowed_for(self, a: Mapping[str, Any], inp: Shape) -> str:
        """`step_unfollowed` for these arguments and this input (per-sample shape): '' when the timeline follows
        its backward."""
        return self.step_unfollowed

    # --- torch, as plain data (the core never imports torch) ---------------------------------------------
    # A kind with a `torch_class` is built as torch_class(**its arguments) and recognised in a torch model by that
    # class, its arguments read back from the module's attributes of the same names (the kinds' arguments are named
    # like PyTorch's), by one generic recipe (archcalc.torch.recipes) and one generic importer rule
    # (archcalc.torch.importer.mapping). A kind without one registers its own recipe and importer rules there, under
    # its name; a kind with neither fails at import of the torch side.
    torch_class: ClassVar[str] = ""  # a torch.nn class name ("ReLU"), or a class of archcalc.torch.modules
    # Functions the importer maps to this kind, called as f(x, *the kind's arguments in order): "F.relu" is
    # torch.nn.functional.relu, "torch.relu" torch.relu.
    torch_functions: ClassVar[tuple[str, ...]] = ()
    # Tensor methods the importer maps to this kind, called as x.method(*arguments); a name ending in "_" is the
    # in-place form (inplace=True: the kind needs an `inplace` argument).
    torch_methods: ClassVar[tuple[str, ...]] = ()

    # --- shape -------------------------------------------------------------------------------------------
    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        raise NotImplementedError

    # --- costs -------------------------------------------------------------------------------------------
    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost()

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep] | None:
        """Per spatial axis of the input; None when the layer does not change the receptive field."""
        return None

    def inplace(self, a: Mapping[str, Any]) -> bool:
        return False

    def strided(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> bool:
        """Whether the output is a non-contiguous view of the input (a crop that cuts something)."""
        return False

    def alias_in_training(self, a: Mapping[str, Any]) -> bool:
        """Whether the output shares the input's storage in a training-mode forward (dropout does not)."""
        return self.alias or self.inplace(a)

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries the op allocates while it runs at inference and frees before it returns, as (elements per
        sample, itemsize; 0 = the activation dtype) -- part of the inference peak. Implementation workspace that
        depends on the backend's algorithm choice (im2col buffers, cuDNN workspace) is not predicted."""
        return ()

    def autocast_on(self, a: Mapping[str, Any], inp: Shape) -> str:
        """How torch.autocast on the CPU runs this layer on an input of per-sample shape `inp` (see `autocast`)."""
        return self.autocast

    def keeps_weight(self, input_needs_grad: bool) -> bool:
        """Whether its autograd node keeps the (autocast copy of the) weight for backward; convolutions and PReLU
        keep it whenever they are recorded."""
        return True

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        """Elements of each parameter tensor, in registration order (weight, then bias: one per output channel
        where the kind has a `bias` argument that is true). Optimizers without foreach (torch.optim on the CPU) walk
        them one by one."""
        if not params:
            return ()
        if a.get("bias") is True:
            return (params - out[0], out[0])
        return (params,)

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries in a training-mode forward (`transient` less what the op keeps for backward instead)."""
        return self.transient(a, inp, out)

    def frozen_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...] | None:
        """What a frozen layer (recorded: its input needs a gradient) makes beside `train_transient` at its peak, in
        place of what it would keep for its parameters' gradient (`Saved.extra_for_params`, the default: None), for
        a composite that frees some of those before its peak (window attention's windows)."""
        return None

    def untracked_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries in a training-mode forward that autograd does not record (neither its input nor its
        parameters need a gradient): nothing is kept, so what it would keep for backward is freed as it returns.
        By default the inference op's `transient` (a kind whose forward differs in training mode overrides it)."""
        return self.transient(a, inp, out)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries as `transient`, but whatever the batch (elements, not per sample): made from the weights
        (std_conv's standardised weight)."""
        return ()

    def train_transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """`transient_once` in a training-mode forward, less what the op keeps for backward (Saved.per_batch)."""
        return self.transient_once(a, inp, out)

    def backward_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                           input_grad: bool = True) -> tuple[tuple[int, int], ...]:
        """Temporaries alive at the peak of the layer's backward beside its input's gradient, freed before it is
        done (a composite's intermediate gradients), as `transient`; `input_grad`: whether its input needs a
        gradient. None for a single backward kernel."""
        return ()

    def backward_late(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries of a composite's backward made once its output's gradient is freed (by the composite's
        first node), beside what was alive when its backward began, as `transient`. None by default."""
        return ()

    def backward_kernel(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                        input_grad: bool) -> tuple[tuple[int, int], ...]:
        """What the layer's backward kernel makes beside its input's gradient before its parameters' gradients are
        made from it, as `transient` (freed before it is done): a kernel that always returns every gradient, each
        at full size (PReLU's _prelu_kernel_backward: the input's gradient even when `input_grad` is false, the
        weight's unreduced), the parameters' gradients reduced from them afterwards. None by default."""
        return ()

    def backward_moments(self, a: Mapping[str, Any], inp: Shape, out: Shape, input_grad: bool,
                         params_grad: bool) -> tuple[BackwardMoment, ...]:
        """A composite's backward, node by node, as the moments its memory peaks at (measured: each kind says
        how), in place of the single-kernel rule (all parameters' gradients and the input's at once, beside
        `backward_transient`); the input's gradient is then counted at the last moment only if `input_grad`.
        After it, as for any layer, its saved tensors and its output's gradient are freed and its input's
        gradient and parameters' gradients are alive. () for the single-kernel rule."""
        return ()

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        """What torch.utils.flop_counter.FlopCounterMode counts for this layer's backward, in MACs (2 FLOPs each),
        given its forward MACs (batch included) and its per-sample input shape: (grad of the input, grad of the
        weight). FlopCounterMode counts only conv and
        matmul ops; a layer with MACs runs one, and its backward runs two more of the same size (mm_flop,
        conv_backward_flop in torch/utils/flop_counter.py). A layer without MACs costs nothing backward.
        `divide_groups`: the installed FlopCounterMode's rule for grouped convs
        (conventions.GROUPED_WEIGHT_GRADIENT)."""
        return macs, macs

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        """What this layer's autograd nodes keep for backward in training mode (parameters excluded)."""
        return Saved()

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        """`saved` when only the parameters need a gradient, not the input (the network's first trainable layer):
        a layer of several ops whose first ones see no parameter records only those after (GRN). By default the
        same as `saved` (one op keeps what it keeps whichever gradient is wanted)."""
        return self.saved(a, inp, out)

    # --- presentation ------------------------------------------------------------------------------------
    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return ""

    @property
    def name_prefix(self) -> str:
        return self.prefix or self.name

    def arg(self, name: str) -> Arg:
        for arg in self.args:
            if arg.name == name:
                return arg
        raise KeyError(name)


def _normal(name: str) -> str:
    """Case, separators and a trailing 1d/2d/3d do not matter when matching a kind name (MaxPool2d ~ maxpool)."""
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    return key[:-2] if len(key) > 3 and key[-1] == "d" and key[-2] in "123" else key


def suggest_kind(name: str) -> str | None:
    """The registered kind that `name` most likely means (other case, a synonym, PyTorch's class name), or None."""
    table: dict[str, str] = {}
    for kind_name, kind in REGISTRY.items():
        table.setdefault(_normal(kind_name), kind_name)
        for synonym in type(kind).__dict__.get("synonyms", ()):
            table.setdefault(_normal(synonym), kind_name)
    found = table.get(_normal(name))
    return found if found != name else None


# ---- shared helpers for kinds ------------------------------------------------------------------------------


def numel(shape: Shape) -> int:
    return math.prod(shape)


def spatial_rank(kind: str, inp: Shape, allowed: Sequence[int] = (1, 2, 3)) -> int:
    rank = len(inp) - 1
    if rank not in allowed:
        dims = "x".join(map(str, inp))
        want = " or ".join(f"{r}-D" for r in allowed)
        raise LayerError(f"{kind} needs a {want} input with channels first; got {dims} "
                         f"({'flattened' if rank == 0 else f'{rank}-D'})")
    return rank


@lru_cache(maxsize=4096)
def window_geometry(kind: str, inp: Shape, kernel: Any, stride: Any, dilation: Any, padding: Any
                    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Kernel, stride, dilation and (before, after) padding per spatial axis of a sliding-window layer.

    A pure function of hashable arguments, cached: a layer's shape, costs, receptive field and description all need
    it, and large specs repeat the same few configurations.
    """
    rank = spatial_rank(kind, inp)
    k = per_axis(kernel, rank, "kernel_size")
    s = per_axis(stride, rank, "stride")
    d = per_axis(dilation, rank, "dilation")
    keff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    return k, s, d, resolve_padding(padding, inp[1:], keff, s)


def per_axis(value: Any, rank: int, arg: str) -> tuple[int, ...]:
    """Expand an int to one per spatial axis; check a list has one entry per axis."""
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(value)
    if len(values) != rank:
        raise LayerError(f"'{arg}' has {len(values)} values but the input has {rank} spatial axes")
    return values


def resolve_padding(padding: Any, sizes: Sequence[int], kernels: Sequence[int],
                    strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Padding per spatial axis as (before, after).

    'valid' is no padding. 'same' is TensorFlow's rule (also PyTorch's for stride 1): the output is ceil(W / S),
    the total padding is max((out - 1) * S + F - W, 0), split evenly with the odd column added after
    (to the right / bottom), as the lecture note on TensorFlow padding describes.
    """
    rank = len(sizes)
    if padding == "valid":
        return ((0, 0),) * rank
    if padding == "same":
        pads = []
        for w, k, s in zip(sizes, kernels, strides):
            out = -(-w // s)
            total = max((out - 1) * s + k - w, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    values = list(padding)
    if len(values) != rank:
        raise LayerError(f"'padding' has {len(values)} entries but the input has {rank} spatial axes")
    return tuple((p, p) if isinstance(p, int) else (p[0], p[1]) for p in values)


AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def window_output(kind: str, sizes: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                  pads: Sequence[tuple[int, int]], dilations: Sequence[int], warn: Callable[[str], None],
                  ceil_mode: bool = False) -> tuple[int, ...]:
    """Output size of a sliding window per axis: floor((W - F_eff + P_before + P_after) / S) + 1.

    F_eff = D * (F - 1) + 1 (PyTorch's Conv2d/MaxPool2d docs). With ceil_mode the division rounds up, but a
    window that would start in the right padding is dropped, and the window may reach past the padded input
    (PyTorch's pooling_output_shape, aten/src/ATen/native/Pool.h: ceil mode adds S - 1 before a floor division,
    then drops the last window when (out - 1) * S >= W + P_before; only an output below 1 is an error. ONNX's
    MaxPool states the same rule for [before, after] pads, where more than one window can start in a large
    after-padding: all of them are dropped). So a kernel larger than the padded input is an error
    in floor mode but gives one window in ceil mode (kernel 2 on one position: output 1, as torch returns).

    Warns when (W - F + 2P)/S is not an integer and the windows leave real input positions at the end uncovered
    (not when only padding is dropped, nor for kernels smaller than the stride, which skip positions by design).
    """
    out = []
    notes: dict[str, list[str]] = {}
    for axis, (w, k, s, (p0, p1), d) in enumerate(zip(sizes, kernels, strides, pads, dilations)):
        keff = d * (k - 1) + 1
        span = w + p0 + p1 - keff
        if ceil_mode:
            # ceil(span / S) + 1 windows, but none that starts in the after-padding: starts i * S < W + P_before.
            # With PyTorch's padding limit (half the kernel) at most the last one does, and torch drops just that.
            o = min(-(-span // s) + 1, -(-(w + p0) // s))
        else:
            o = span // s + 1
        if o < 1:  # floor mode: the kernel is larger than the padded input (span < 0); ceil mode: span <= -S
            raise LayerError(f"{kind} kernel {keff}{' (dilated)' if d > 1 else ''} is larger than the padded "
                             f"input {w + p0 + p1} on axis {AXIS_NAMES[len(sizes)][axis]}; use a smaller kernel or "
                             "more padding")
        missed = span % s - p1
        if not ceil_mode and missed > 0 and keff >= s:
            padded = f"2*{p0}" if p0 == p1 else f"{p0}+{p1}"
            text = (f"(W - F + 2P)/S = ({w} - {keff} + {padded})/{s} = {span}/{s} is not an integer: PyTorch "
                    f"floors it to an output of {o} and the last {missed} input position(s) are never covered")
            notes.setdefault(text, []).append(AXIS_NAMES[len(sizes)][axis])
        out.append(o)
    for text, axes in notes.items():
        warn(f"on {'/'.join(axes)}: {text}")
    return tuple(out)


def fmt_axes(values: Sequence[object]) -> str:
    """'3' when all axes agree, '3x5' otherwise."""
    if len(set(values)) == 1:
        return str(values[0])
    return "x".join(map(str, values))


def fmt_pads(pads: Sequence[tuple[int, int]]) -> str:
    if all(p0 == p1 for p0, p1 in pads):
        return fmt_axes([p0 for p0, _ in pads])
    return ",".join(f"{p0}/{p1}" for p0, p1 in pads)
