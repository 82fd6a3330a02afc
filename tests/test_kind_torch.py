"""Every kind's torch half is reachable from its registration, and a kind without one cannot be imported.

The module a kind's recipe builds is read back by the importer as that kind with the same arguments (no export in
between: tests/test_import.py does the round trip through exported source); every torch function and Tensor method
a kind names maps back to it; the torch side refuses, when it is imported, a kind with no torch half, a class or
function claimed twice, and a torch_class that names nothing. The kinds' `same_shape` and `elementwise` are checked
on torch itself: a same-shape kind's module keeps the input's shape, an element-wise one gives the same result on a
channels-last view (the importer relies on it to follow ConvNeXt's permutes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from archcalc.core.kinds import REGISTRY, Kind
from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer.trace import trace_module
from archcalc.torch.recipes import module_call

CASES = [(name, i, ex) for name, kind in sorted(REGISTRY.items()) for i, ex in enumerate(kind.examples)]
IDS = [f"{n}-{i}" for n, i, _ in CASES]


def _args(kind: Kind, given: Any) -> dict[str, Any]:
    args = {a.name: a.default for a in kind.args}
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})  # as the spec loader does
    return args


@pytest.mark.parametrize(("name", "index", "example"), CASES, ids=IDS)
def test_the_built_module_imports_as_its_kind(name, index, example) -> None:  # type: ignore[no-untyped-def]
    kind = REGISTRY[name]
    a = _args(kind, example.args)
    if name == "linear" and isinstance(example.input, Tokens):
        pytest.skip("a module whose own input is a token sequence: the importer follows tokens made inside the "
                    "traced module (to_tokens; tests/test_import.py round-trips this example after one), and a "
                    "spec's input is a grid")
    module = module_call(kind, a, example.input).make().eval()
    ops = trace_module(module, example.input).ops
    got = [op.kind for op in ops]
    if name.startswith("adaptive_") and all(o == 1 for o in kind.output(a, example.input, lambda message: None)[1:]):
        assert got == [name.replace("adaptive_", "global_")]  # adaptive pooling to 1 is global pooling
    else:
        assert got == [name]
    if kind.torch_class:  # the generic rule reads back every argument the generic recipe passed
        assert ops[0].args == a


class _Calls(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


FUNCTIONS = [(name, f) for name, kind in sorted(REGISTRY.items()) for f in kind.torch_functions + tuple(
    "." + m for m in kind.torch_methods)]


@pytest.mark.parametrize(("name", "function"), FUNCTIONS, ids=[f"{n}-{f}" for n, f in FUNCTIONS])
def test_every_named_function_and_method_imports_as_its_kind_and_computes_it(name: str, function: str) -> None:
    kind = REGISTRY[name]
    example = kind.examples[0]
    a = _args(kind, example.args)
    space, _, attr = function.partition(".")
    x = torch.randn(1, *example.input)
    if not space:  # a Tensor method, without arguments; a trailing _ is the in-place form
        fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: getattr(t, attr)()  # noqa: E731
        expected = {"inplace": True} if attr.endswith("_") else {}
    else:
        f = getattr(torch.nn.functional if space == "F" else torch, attr)
        values = [a[arg.name] for arg in kind.args]
        try:
            f(x.clone(), *values)
            fn, expected = (lambda t: f(t, *values)), a  # noqa: E731
        except TypeError:  # torch.relu(x) takes the tensor only
            fn, expected = f, {}
    ops = trace_module(_Calls(fn), example.input).ops
    assert [(op.kind, op.args) for op in ops] == [(name, expected)]
    # and it computes what the kind's module computes with those arguments
    module = module_call(kind, _args(kind, expected), example.input).make().eval()
    with torch.no_grad():
        torch.testing.assert_close(fn(x.clone()), module(x.clone()))


def _import_fails(kind_source: str) -> str:
    """Register a kind in a fresh interpreter, import the torch side; the error it raises."""
    code = "from archcalc.core.kinds.base import Kind, register\n" + textwrap.dedent(kind_source) + textwrap.dedent("""
        import archcalc.torch.recipes
        import archcalc.torch.importer.mapping
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, "the torch side accepted the kind"
    return proc.stderr.strip().splitlines()[-1]


def test_a_kind_without_its_torch_half_is_refused() -> None:
    message = _import_fails("""
        @register
        class Lonely(Kind):
            name = "lonely"
        """)
    assert message == ("RuntimeError: layer kind 'lonely' has neither a torch_class nor a recipe in "
                       "archcalc.torch.recipes"), message


def test_a_torch_class_claimed_twice_or_naming_nothing_is_refused() -> None:
    message = _import_fails("""
        @register
        class Twin(Kind):
            name = "twin"
            torch_class = "ReLU"
        """)
    assert message == "RuntimeError: two importer rules for torch.nn.modules.activation.ReLU", message
    message = _import_fails("""
        @register
        class Ghost(Kind):
            name = "ghost"
            torch_class = "NoSuchModule"
        """)
    assert "torch_class 'NoSuchModule', which is neither" in message, message
    message = _import_fails("""
        @register
        class Again(Kind):
            name = "again"
            torch_class = "Softsign"
            torch_functions = ("torch.relu",)
        """)
    assert message == "RuntimeError: two importer rules for torch.relu", message


SAME = [(n, i, ex) for n, i, ex in CASES if REGISTRY[n].same_shape]


@pytest.mark.parametrize(("name", "index", "example"), SAME, ids=[f"{n}-{i}" for n, i, _ in SAME])
def test_same_shape_and_elementwise_hold_on_torch(name, index, example) -> None:  # type: ignore[no-untyped-def]
    kind = REGISTRY[name]
    a = _args(kind, example.args)
    assert kind.output(a, example.input, lambda message: None) == example.input
    module = module_call(kind, a, example.input).make().eval()
    x = torch.randn(2, *example.input)
    with torch.no_grad():
        y = module(x)
        assert y.shape == x.shape
        if kind.elementwise and x.dim() > 2:
            last = (0, *range(2, x.dim()), 1)
            back = (0, x.dim() - 1, *range(1, x.dim() - 1))
            torch.testing.assert_close(module(x.permute(*last)).permute(*back), y)


def test_the_layout_free_kinds_are_the_elementwise_ones() -> None:
    # Independent of the flag: a kind whose module on a channels-last view differs is not element-wise (softmax
    # over channels, prelu's per-channel slopes), and the flag implies the same shape.
    for name in ("softmax", "prelu"):
        assert REGISTRY[name].same_shape and not REGISTRY[name].elementwise
    for name in ("relu", "gelu", "dropout", "identity", "stochastic_depth"):
        assert REGISTRY[name].elementwise


def test_a_new_arithmetic_merge_needs_only_its_core_class() -> None:
    # A merge that states its Python operator is run by the builder, written by export and recognised by the
    # importer with no torch-side edit: here a difference that does not accumulate in place, registered in a fresh
    # interpreter before the torch side in place of core's own `sub`.
    code = textwrap.dedent("""
        import operator, torch
        from archcalc.core.merges import MERGES, Add
        class Sub(Add):
            name = "sub"
            symbol = "-"
            accumulates = False
        MERGES["sub"] = Sub()
        from archcalc.torch.recipes import MERGE_RECIPES
        from archcalc.torch.importer import mapping
        a, b, c = torch.tensor([5.0]), torch.tensor([2.0]), torch.tensor([1.0])
        print(MERGE_RECIPES["sub"].run(a, b, c).item(), MERGE_RECIPES["sub"].source("y", ["a", "b", "c"]))
        print(sorted(k for k, v in mapping.BINARY_METHODS.items() if v == "sub"), mapping.BINARY[operator.isub],
              mapping.BINARY[torch.sub])
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["2.0 ['y = a - b', 'y = y - c']", "['__isub__', 'sub', 'sub_'] sub sub"]
