"""Element-wise activations, softmax, maxout, dropout and identity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from archcalc.core.kinds.base import MASK, Arg, Cost, Example, Kind, LayerError, Saved, Shape, numel, register

_EXAMPLES = (Example((16, 8, 8)), Example((10,)), Example((4, 12)))


class _Elementwise(Kind):
    """Same shape out as in; `per_element` full-convention operations (a transcendental counts as one)."""

    same_shape = True
    elementwise = True
    per_element: ClassVar[int] = 1
    saves: ClassVar[str] = "input"  # what the autograd node keeps: "input", "output" or ""
    examples: ClassVar[tuple[Example, ...]] = _EXAMPLES

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=self.per_element * numel(inp))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved(input=self.saves == "input", output=self.saves == "output")

    def inplace(self, a: Mapping[str, Any]) -> bool:
        return bool(a.get("inplace", False))




_INPLACE = Arg("inplace", "bool", False, "overwrite the input (saves one activation of memory at inference)")


@register
class ReLU(_Elementwise):
    name = "relu"
    doc = "max(0, x) (nn.ReLU)."
    full_rule = "1 per element"
    saves = "output"
    args = (_INPLACE,)
    torch_class = "ReLU"
    torch_functions = ("F.relu", "torch.relu")
    torch_methods = ("relu", "relu_")


@register
class LeakyReLU(_Elementwise):
    name = "leaky_relu"
    synonyms = ("leakyrelu", "lrelu")
    doc = "max(0, x) + negative_slope * min(0, x) (nn.LeakyReLU)."
    full_rule = "2 per element (compare, multiply)"
    per_element = 2
    args = (Arg("negative_slope", "float", 0.01, "slope for x < 0"), _INPLACE)
    torch_class = "LeakyReLU"
    torch_functions = ("F.leaky_relu",)


@register
class PReLU(_Elementwise):
    name = "prelu"
    autocast = "lower"
    doc = "Leaky ReLU with a learned slope (nn.PReLU): num_parameters 1 (shared) or C (one per channel)."
    full_rule = "2 per element (compare, multiply)"
    per_element = 2
    args = (Arg("num_parameters", "int", 1, "1, or the number of channels", minimum=1),
            Arg("init", "float", 0.25, "initial slope"))
    examples = (Example((16, 8, 8), {"num_parameters": 16}), Example((10,)))
    elementwise = False  # one slope per channel
    torch_class = "PReLU"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["num_parameters"] not in (1, inp[0]):
            raise LayerError(f"prelu num_parameters must be 1 or the channel count {inp[0]}, "
                             f"not {a['num_parameters']}")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(params=a["num_parameters"], full=2 * numel(inp))

    def backward_kernel(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                        input_grad: bool) -> tuple[tuple[int, int], ...]:
        # _prelu_kernel_backward returns the input's gradient and the weight's gradient unreduced (input-sized),
        # whichever is needed (derivatives.yaml: `self, weight: _prelu_kernel_backward(grad, self, weight)`);
        # an unneeded input gradient is dropped as the node returns (measured by storage on the CPU)
        return ((numel(inp) if input_grad else 2 * numel(inp), 0),)

    def backward_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape,
                           input_grad: bool = True) -> tuple[tuple[int, int], ...]:
        # the weight's unreduced gradient, alive while the engine sums it to the weight's shape (sum_to_size in
        # validate_outputs), beside the input's gradient and the reduced weight gradient
        return ((numel(inp), 0),)


@register
class ELU(_Elementwise):
    name = "elu"
    doc = "x if x > 0 else alpha * (exp(x) - 1) (nn.ELU)."
    full_rule = "4 per element (compare, exp, subtract, multiply)"
    per_element = 4
    args = (Arg("alpha", "float", 1.0, "scale for x < 0"), _INPLACE)
    torch_class = "ELU"
    torch_functions = ("F.elu",)


@register
class SELU(_Elementwise):
    name = "selu"
    doc = ("scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha = 1.6733, scale = 1.0507 (nn.SELU; Klambauer et "
           "al. 2017, self-normalizing networks).")
    full_rule = "5 per element (compare, exp, subtract, multiply by alpha, multiply by scale)"
    per_element = 5
    args = (_INPLACE,)
    torch_class = "SELU"
    torch_functions = ("F.selu", "torch.selu")


@register
class GELU(_Elementwise):
    name = "gelu"
    doc = "x * Phi(x) (nn.GELU); approximate 'tanh' uses the tanh formula."
    full_rule = "5 per element exact (x * 0.5 * (1 + erf(x / sqrt 2))), 9 with the tanh approximation"
    args = (Arg("approximate", "str", "none", "'none' (erf) or 'tanh'", choices=("none", "tanh")),)
    torch_class = "GELU"
    torch_functions = ("F.gelu",)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(inp) * (5 if a["approximate"] == "none" else 9))


@register
class SiLU(_Elementwise):
    name = "silu"
    synonyms = ("swish",)
    doc = "x * sigmoid(x) (nn.SiLU, also called swish)."
    full_rule = "4 per element (negate+exp, add, divide, multiply)"
    per_element = 4
    args = (_INPLACE,)
    torch_class = "SiLU"
    torch_functions = ("F.silu",)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # SiLUBackward needs x itself; in place, autograd saves a copy of x before it is overwritten (measured:
        # the packed tensor has its own storage), so the copy is an extra tensor, not the shared input.
        if a["inplace"]:
            return Saved(extra=((numel(inp), 0),))
        return Saved(input=True)


@register
class Sigmoid(_Elementwise):
    name = "sigmoid"
    synonyms = ("logistic",)
    doc = "1 / (1 + exp(-x)) (nn.Sigmoid)."
    full_rule = "3 per element (exp, add, divide)"
    per_element = 3
    saves = "output"
    torch_class = "Sigmoid"
    torch_functions = ("F.sigmoid", "torch.sigmoid")
    torch_methods = ("sigmoid",)


@register
class Tanh(_Elementwise):
    name = "tanh"
    doc = "tanh(x) (nn.Tanh)."
    full_rule = "1 per element"
    saves = "output"
    torch_class = "Tanh"
    torch_functions = ("F.tanh", "torch.tanh")
    torch_methods = ("tanh",)


@register
class Softmax(_Elementwise):
    name = "softmax"
    doc = ("exp(x) / sum(exp(x)) along `dim` (1 = channels, counting the batch as dim 0 as PyTorch does; after a "
           "flatten, dim 1 is the whole sample).")
    full_rule = "3 per element (exp, add to the sum, divide)"
    per_element = 3
    saves = "output"
    args = (Arg("dim", "int", 1, "axis to normalize, batch = 0", minimum=1),)
    elementwise = False  # normalizes along an axis
    torch_class = "Softmax"  # read back by its own importer rules (a negative or implicit dim)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["dim"] > len(inp):
            raise LayerError(f"softmax dim {a['dim']} does not exist: the input has dims 1..{len(inp)} "
                             "(0 is the batch)")
        return inp


@register
class Maxout(Kind):
    name = "maxout"
    doc = ("Maxout (Goodfellow et al. 2013): the maximum over each group of `pieces` consecutive channels; "
           "C channels in, C / pieces out. The preceding conv or linear layer makes the pieces.")
    full_rule = "pieces - 1 comparisons per output element"
    args = (Arg("pieces", "int", doc="linear pieces per unit (k)", aliases=("k",), minimum=1),)
    examples = (Example((96, 8, 8), {"pieces": 2}), Example((240,), {"pieces": 5}))
    torch_class = "Maxout"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if inp[0] % a["pieces"]:
            raise LayerError(f"maxout: {inp[0]} channels are not divisible by pieces {a['pieces']}")
        return (inp[0] // a["pieces"], *inp[1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        return Cost(full=numel(out) * (a["pieces"] - 1))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        return Saved(input=True, output=True)  # amax's backward compares the input with the result

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"k={a['pieces']}"



@register
class Dropout(_Elementwise):
    name = "dropout"
    synonyms = ("dropout2d",)
    doc = ("Randomly zeroes elements in training (nn.Dropout); the identity at inference, where it returns its "
           "input unchanged (no copy).")
    full_rule = "0 at inference"
    per_element = 0
    alias = True
    saves = ""
    args = (Arg("p", "float", 0.5, "drop probability", minimum=0),)
    torch_class = "Dropout"  # read back by its own importer rule for F.dropout (which also takes `training`)

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if a["p"] >= 1:
            raise LayerError(f"dropout p must be below 1, not {a['p']}")
        return inp

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # CUDA's fused native_dropout keeps a bool keep-mask; the CPU's composite keeps its float noise (MASK).
        return Saved(extra=((numel(inp), MASK),)) if a["p"] > 0 else Saved()

    def alias_in_training(self, a: Mapping[str, Any]) -> bool:
        return a["p"] == 0  # in training it writes a new, masked tensor

    def untracked_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # Not recorded (nothing before it needs a gradient), it still makes its noise (or mask) and frees it as it
        # returns: measured by tests/test_property_tokens.py
        return ((numel(inp), MASK),) if a["p"] > 0 else ()

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"p={a['p']}"



@register
class Identity(_Elementwise):
    name = "identity"
    synonyms = ("noop", "passthrough")
    doc = "Passes its input through unchanged (nn.Identity)."
    full_rule = "0"
    per_element = 0
    alias = True
    saves = ""
    torch_class = "Identity"
