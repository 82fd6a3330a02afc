"""The analysis settings, one frozen value, and the vocabularies they draw on (optimizers, mixed precision).

Every analysis takes one `Settings`: the CLI builds it from its options, the library from keyword arguments
(`Settings(batch=8, dtype="float16")`, or `settings.replace(batch=8)`). A new setting is one field here and one CLI
option; nothing in between threads it through by hand. Values are checked when the value is made, so a bad one is
an error at the door, never a silent default further down.

Nothing here imports torch.
"""

from typing import Any, NamedTuple

from archcalc.core.errors import ArchcalcError, did_you_mean

# ---- optimizers ---------------------------------------------------------------------------------------------------


class Optimizer(NamedTuple):
    """One optimizer as training memory, `profile --train` and every command's `--optimizer` choices see it.

    `state`: the state tensors torch.optim keeps per trainable parameter, each the parameter's size (SGD without
    momentum keeps none; with momentum a `momentum_buffer`; Adam and AdamW `exp_avg` and `exp_avg_sq`; the scalar
    `step` per parameter tensor is a few bytes and not counted). `torch_class` and `torch_kwargs` construct it
    (torch.optim.<torch_class>(params, **torch_kwargs)), so what is predicted is what `profile --train` runs."""

    name: str
    state: int
    torch_class: str
    torch_kwargs: tuple[tuple[str, Any], ...]
    doc: str


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in (
        Optimizer("sgd", 0, "SGD", (("lr", 1e-3),), "plain SGD, no momentum: no state"),
        Optimizer("momentum", 1, "SGD", (("lr", 1e-3), ("momentum", 0.9)),
                  "SGD with momentum 0.9: one momentum buffer per parameter"),
        Optimizer("adam", 2, "Adam", (("lr", 1e-3),), "Adam: exp_avg and exp_avg_sq per parameter"),
        Optimizer("adamw", 2, "AdamW", (("lr", 1e-3),), "AdamW: exp_avg and exp_avg_sq per parameter"),
    )
}
"""The one optimizer table: `--optimizer` of calc, sweep, check and profile, training memory and profile's
optimizer all read it. `sgd` means the same thing everywhere."""

# Mixed precision (torch.autocast): parameters, gradients and optimizer state stay float32 ("master weights");
# activations are computed in the low-precision type.
AMP: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16"}

FIT_FOR = ("training", "inference")
"""What `--fit SIZE` sizes: the training step's memory, or the inference peak."""


# ---- the settings value -------------------------------------------------------------------------------------------


class _Fields(NamedTuple):
    batch: int = 1
    dtype: str = "float32"
    convention: str = "torch"
    input_shape: tuple[int, ...] | None = None
    device: str = "cuda"
    input_requires_grad: bool = False
    strict: bool = False
    optimizer: str = "sgd"
    amp: str | None = None


class Settings(_Fields):
    """What an analysis is asked for, besides the network. Every field has the CLI's default. Immutable (a
    NamedTuple: cheap to make, which start-up needs; dataclasses cost a millisecond each to define).

    batch: samples per step (counts and activations scale with it, parameters do not);
    dtype: element type of memory figures (parameters and activations; float32 under `amp`);
    convention: what a FLOP is ('macs', 'torch', 'fvcore', 'full'; core.conventions);
    input_shape: the per-sample input (C, *spatial), None for the spec's own;
    device: whose kernels the training saved-bytes figure follows ('cuda' or 'cpu');
    input_requires_grad: saved bytes for an input that needs a gradient (adversarial training, saliency);
    strict: warnings (a window that does not fit, a channels-last input) are errors;
    optimizer: the optimizer whose state training memory counts (OPTIMIZERS);
    amp: mixed precision, 'bf16' or 'fp16' (AMP), or None.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "Settings":
        self = super().__new__(cls, *args, **kwargs)
        self._check()
        if self.input_shape is not None and not isinstance(self.input_shape, tuple):
            self = super().__new__(cls, *self[:3], tuple(self.input_shape), *self[4:])
        return self

    def _check(self) -> None:
        from archcalc.core.conventions import CONVENTIONS, DTYPES
        from archcalc.core.memory import SAVED_DEVICES

        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ArchcalcError(f"batch must be a positive integer, not {self.batch!r}")
        _choice("dtype", self.dtype, DTYPES)
        _choice("convention", self.convention, CONVENTIONS)
        _choice("device", self.device, SAVED_DEVICES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.amp is not None:
            _choice("amp", self.amp, AMP)
            if self.dtype != "float32":
                raise ArchcalcError(f"--amp {self.amp} keeps float32 weights and optimizer state (autocast computes "
                                    f"in {self.amp}); leave --dtype at float32, not {self.dtype}")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ArchcalcError(f"input shape must be positive integers (C, *spatial), not {self.input_shape!r}")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (checked again)."""
        return Settings(**{**self._asdict(), **changes})

    _replace = replace  # the tuple's own _replace would skip the checks

    @property
    def activation_dtype(self) -> str:
        """The dtype activations are computed in: amp's low-precision type, else `dtype`."""
        return AMP[self.amp] if self.amp else self.dtype

    @classmethod
    def of(cls, settings: "Settings | None" = None, **overrides: Any) -> "Settings":
        """`settings` (or the defaults) with keyword overrides; an unknown keyword is an error naming the fields."""
        for key in overrides:
            if key not in cls._fields:
                raise TypeError(f"unknown setting {key!r}{did_you_mean(key, cls._fields)}")
        base = settings if settings is not None else cls()
        return base.replace(**overrides) if overrides else base


def _choice(what: str, value: object, choices: Any) -> None:
    if value not in choices:
        raise ArchcalcError(f"unknown {what} {value!r}{did_you_mean(str(value), choices)}")
