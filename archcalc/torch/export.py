"""Export an analyzed spec as a standalone PyTorch source file (it needs only torch).

The file holds the source (inspect.getsource) of every module class the network uses that torch.nn lacks
(archcalc.torch.build's SpecGroup container, archcalc.torch.modules) and a `Network` whose submodules are exactly
those archcalc.torch.build.build_module makes: both come from the same recipes (archcalc.torch.recipes), so the
classes, constructor arguments and submodule names are the same and a state_dict moves between the two. Its
forward is the analysed graph written out as statements (one per op, `del` where the builder drops a tensor), so
it runs the same ops in the same order with the same memory.

Nothing from the spec is spliced into code as written. Every value is emitted by `_literal` (ints, floats, bools,
None, tuples, and strings through ascii(), which gives a quoted, escaped, one-line ASCII literal), submodule names
go through add_module(<literal>, ...), Python variable names are made from the spec's names by keeping [A-Za-z0-9_]
and prefixing `m_` (never a keyword or a builtin), and free text (the spec's name and description) appears only in
string literals or in comments from which every non-printable character (newlines included) is removed.
"""

from __future__ import annotations

import inspect
import keyword
import math
import re
from typing import Any

from archcalc import __version__
from archcalc.core.analyze import Report
from archcalc.torch.build import module_paths, plan
from archcalc.torch.recipes import MERGE_RECIPES, Call, module_call


def _literal(value: Any) -> str:
    """Python source for a plain value; anything else is a bug in the exporter (a TypeError, not a guess)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return repr(float(value))
    if isinstance(value, str):
        return ascii(value)
    if isinstance(value, (tuple, list)):
        items = [_literal(v) for v in value]
        if isinstance(value, tuple):
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        return f"[{', '.join(items)}]"
    raise TypeError(f"cannot export a value of type {type(value).__name__}: {value!r}")


def _comment(text: str) -> str:
    """Text safe inside a `#` comment: printable ASCII only (a newline would end the comment)."""
    return "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text)


def _add_custom(cls: type, custom: dict[str, type]) -> None:
    """Record a module class whose source must go into the file, after its own non-torch base classes."""
    from torch import nn

    for base in reversed(cls.__mro__[1:]):
        if issubclass(base, nn.Module) and getattr(nn, base.__name__, None) is not base and base is not nn.Module:
            _add_custom(base, custom)
    for used in getattr(cls, "exports_with", ()):  # module classes its constructor makes (not a recipe's own),
        _add_custom(used, custom)                      # before it: its class body names them
    if cls.__name__ in custom and custom[cls.__name__] is not cls:
        raise TypeError(f"two module classes named {cls.__name__} cannot share one exported file")
    custom.setdefault(cls.__name__, cls)


def _constructor(c: Call, custom: dict[str, type]) -> str:
    """`nn.Conv2d(in_channels=3, ...)`: the recipe's call as source, arguments in the constructor's order and those
    equal to their default left out. A class that is not torch.nn's is recorded in `custom`; its source goes into
    the file."""
    from torch import nn

    cls = c.cls
    if getattr(nn, cls.__name__, None) is cls:
        prefix = "nn."
    else:
        _add_custom(cls, custom)
        prefix = ""
    given = dict(c.kwargs)
    args = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # type: ignore[misc]
        if p.name not in given:
            continue
        value = given.pop(p.name)
        if isinstance(value, Call):
            args.append(f"{p.name}={_constructor(value, custom)}")
            continue
        if p.default is not p.empty and type(value) is type(p.default) and value == p.default:
            continue
        args.append(f"{p.name}={_literal(value)}")
    if given:
        raise TypeError(f"{cls.__name__} takes no argument {', '.join(given)}")
    return f"{prefix}{cls.__name__}({', '.join(args)})"


_MODULE_ATTRS = set(dir(object())) | {"forward", "training", "eval", "train", "to", "cuda", "cpu", "float", "half",
                                     "apply", "state_dict", "parameters", "buffers", "modules", "children", "type"}


def _identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text) and text not in _MODULE_ATTRS and \
        not text.startswith("_")


def _module_expr(path: str) -> str:
    """`self.layer1.conv1` where every part is a plain identifier, else `self.get_submodule('layer1.0.conv1')`."""
    parts = path.split(".")
    if all(_identifier(p) for p in parts):
        return "self." + ".".join(parts)
    return f"self.get_submodule({_literal(path)})"


class _Writer:
    def __init__(self, report: Report, custom: dict[str, type]) -> None:
        self.report = report
        self.graph = report.graph
        self.custom = custom
        self.used: set[str] = {"self", "torch", "nn", "F"}
        self.vars: dict[int, str] = {}

    def var(self, t: int) -> str:
        if t not in self.vars:
            base = re.sub(r"[^A-Za-z0-9_]", "_", self.graph.tensors[t].name) or "t"
            base = base if _identifier(base) and base not in ("x", "y") else "t_" + base
            name, n = base, 1
            while name in self.used:
                n += 1
                name = f"{base}_{n}"
            self.used.add(name)
            self.vars[t] = name
        return self.vars[t]

    def init_lines(self) -> list[str]:
        lines = []
        for path, index in module_paths(self.graph):
            parent, _, local = path.rpartition(".")
            owner = "self" if not parent else f"self.get_submodule({_literal(parent)})"
            if index is None:
                lines.append(f"{owner}.add_module({_literal(local)}, SpecGroup())")
                continue
            op = self.graph.ops[index]
            kind = op.kind
            assert kind is not None
            src = self.graph.tensors[op.inputs[0]].shape
            out = self.graph.tensors[op.output].shape
            what = " ".join(_comment(t) for t in (kind.name, kind.describe(op.args, src)) if t)
            lines.append(f"# {_comment(op.name)}: {what} -> {'x'.join(map(str, out))}")
            ctor = _constructor(module_call(kind, op.args, src), self.custom)
            lines.append(f"{owner}.add_module({_literal(local)}, {ctor if op.trainable else f'_frozen({ctor})'})")
        return lines

    def forward_lines(self) -> list[str]:
        keep = {t for _, t in self.graph.inputs + self.graph.outputs}
        discarded = set(self.graph.discarded)
        lines = []
        for (target, inputs, output, frees), op in zip(plan(self.graph), self.graph.ops):
            args = [self.var(t) for t in inputs]
            y = self.var(output)
            if op.merge is None:
                lines.append(f"{y} = {_module_expr(target)}({args[0]})")
            else:
                lines += MERGE_RECIPES[op.merge.name].source(y, args)
            # (an output nothing reads is kept, except that of a `discard: true` item: deleted at once)
            dropped = [self.var(t) for t in frees if t not in keep and (t != output or t in discarded)]
            if dropped:
                lines.append(f"del {', '.join(dropped)}")
        outs = self.graph.outputs
        if len(outs) == 1:
            lines.append(f"return {self.var(outs[0][1])}")
        else:
            lines.append("return {" + ", ".join(f"{_literal(n)}: {self.var(t)}" for n, t in outs) + "}")
        return lines


_HEADER = '''\
# Generated by archcalc {version}: a standalone PyTorch definition of the network below (needs only torch).
# Parameter names match archcalc's built module, so state_dicts move between the two.
#
{about}
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SPEC_NAME = {name}
INPUT_SHAPES = {inputs}  # per named input, one sample: channels, then spatial sizes
INPUT_SHAPE = {input}
OUTPUT_SHAPE = {output}

Pads = Sequence[tuple[int, int]]

'''

_FOOTER = '''

def _frozen(module: nn.Module) -> nn.Module:
    """A layer marked `trainable: false` in the spec: its parameters get no gradient."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Network(nn.Module):
    """The network of the spec named in SPEC_NAME. Each tensor is dropped (del) as soon as nothing needs it."""

    def __init__(self) -> None:
        super().__init__()
{init}

    def forward(self, {params}) -> Any:
{forward}


def build_model() -> nn.Module:
    """The network, in eval mode."""
    model = Network()
    model.eval()
    return model


if __name__ == "__main__":
    net = build_model()
    y = net(*(torch.randn(1, *shape) for shape in INPUT_SHAPES.values()))
    shapes = {{k: tuple(v.shape[1:]) for k, v in y.items()}} if isinstance(y, dict) else tuple(y.shape[1:])
    print(SPEC_NAME, sum(p.numel() for p in net.parameters()), "parameters, output", shapes)
'''


def export_source(report: Report) -> str:
    import textwrap

    from archcalc.torch import build
    from archcalc.torch import modules as torchmods

    custom: dict[str, type] = {}
    _add_custom(build.SpecGroup, custom)
    writer = _Writer(report, custom)
    init = writer.init_lines()
    graph = report.graph
    for _, t in graph.inputs:
        writer.vars[t] = "x" if len(graph.inputs) == 1 else writer.var(t)
    forward = writer.forward_lines()
    about = [f"# Spec: {_comment(ascii(report.name))}"]
    if report.source:
        about.append(f"# Source: {_comment(ascii(report.source))}")
    for line in report.description.splitlines():
        about.append(f"#   {_comment(line)}")
    about.append(f"# Parameters: {report.totals.params:,}   MACs per sample: {report.totals.macs // report.batch:,}")
    shapes = {name: tuple(report.input if i == 0 else graph.tensors[t].shape)
              for i, (name, t) in enumerate(graph.inputs)}
    header = _HEADER.format(version=_comment(__version__), about="\n".join(about), name=_literal(report.name),
                            inputs="{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in shapes.items()) + "}",
                            input=_literal(tuple(report.input)), output=_literal(tuple(report.totals.output)))
    # torchmods' padding helper is used by its padded modules' constructors; the classes follow in use order.
    helpers = [torchmods.f_pad, *custom.values()]
    sources = "\n\n\n".join(textwrap.dedent(inspect.getsource(h)).rstrip() for h in helpers)  # type: ignore[arg-type]
    footer = _FOOTER.format(init="\n".join("        " + line for line in init),
                            params=", ".join(writer.vars[t] for _, t in graph.inputs),
                            forward="\n".join("        " + line for line in forward))
    return header + "\n" + sources + "\n\n" + footer
