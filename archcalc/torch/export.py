"""Export an analyzed spec as a standalone PyTorch source file (it needs only torch).

The file holds the source (inspect.getsource) of every module class the network uses that torch.nn lacks
(archcalc.torch.build's containers, archcalc.torch.modules) and a `build_model()` that makes exactly the module
archcalc.torch.build.build_module makes: both come from the same recipes (archcalc.torch.recipes), so the classes,
constructor arguments and submodule names are the same and a state_dict moves between the two.

Nothing from the spec is spliced into code as written. Every value is emitted by `_literal` (ints, floats, bools,
None, tuples, and strings through ascii(), which gives a quoted, escaped, one-line ASCII literal), submodule names
go through add_module(<literal>, ...), Python variable names are made from the spec's names by keeping [A-Za-z0-9_]
and prefixing `m_` (never a keyword or a builtin), and free text (the spec's name and description) appears only in
string literals or in comments from which every non-printable character (newlines included) is removed.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from archcalc import __version__
from archcalc.core.analyze import ALayer, ANode, APar, ARes, ASeq, Report
from archcalc.torch.recipes import Call, module_call


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
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
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


class _Writer:
    def __init__(self, custom: dict[str, type]) -> None:
        self.lines: list[str] = []
        self.used: set[str] = set()
        self.custom = custom

    def var(self, name: str) -> str:
        base = "m_" + (re.sub(r"[^A-Za-z0-9_]", "_", name) or "root")
        var, n = base, 1
        while var in self.used:
            n += 1
            var = f"{base}_{n}"
        self.used.add(var)
        return var

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    def node(self, node: ANode, parent: str, parent_var: str) -> None:
        local = node.name[len(parent) + 1:] if parent else node.name
        if isinstance(node, ALayer):
            dims = "x".join(map(str, node.output))
            config = node.kind.describe(node.args, node.input)
            what = " ".join(_comment(t) for t in (node.kind.name, config) if t)
            self.emit(f"# {_comment(node.name)}: {what} -> {dims}")
            ctor = _constructor(module_call(node.kind, node.args, node.input), self.custom)
            if node.trainable:
                self.emit(f"{parent_var}.add_module({_literal(local)}, {ctor})")
            else:
                self.emit(f"{parent_var}.add_module({_literal(local)}, _frozen({ctor}))")
            return
        var = self.var(node.name)
        if isinstance(node, ASeq):
            self.emit(f"{var} = SpecSequence()")
            self.emit(f"{parent_var}.add_module({_literal(local)}, {var})")
            for child in node.children:
                self.node(child, node.name, var)
        elif isinstance(node, APar):
            self.emit(f"{var} = SpecParallel({_literal(node.merge)})")
            self.emit(f"{parent_var}.add_module({_literal(local)}, {var})")
            for branch in node.branches:
                self.node(branch, node.name, var)
        else:
            self.residual(node, local, var, parent_var)

    def residual(self, node: ARes, local: str, var: str, parent_var: str) -> None:
        def names(seq: ASeq) -> list[str]:
            return [c.name[len(node.name) + 1:] for c in seq.children]

        self.emit(f"{var} = SpecResidual({_literal(names(node.body))}, {_literal(names(node.after))}, "
                  f"{_literal(node.shortcut is not None)})")
        self.emit(f"{parent_var}.add_module({_literal(local)}, {var})")
        for child in node.body.children:
            self.node(child, node.name, var)
        if node.shortcut is not None:
            self.node(node.shortcut, node.name, var)
        for child in node.after.children:
            self.node(child, node.name, var)


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
INPUT_SHAPE = {input}  # one sample: channels, then spatial sizes
OUTPUT_SHAPE = {output}

Pads = Sequence[tuple[int, int]]

'''

_FOOTER = '''

def _frozen(module: nn.Module) -> nn.Module:
    """A layer marked `trainable: false` in the spec: its parameters get no gradient."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_model() -> nn.Module:
    """The network of the spec named in SPEC_NAME, in eval mode."""
    model = SpecSequence()
{body}
    model.eval()
    return model


if __name__ == "__main__":
    net = build_model()
    y = net(torch.randn(1, *INPUT_SHAPE))
    print(SPEC_NAME, sum(p.numel() for p in net.parameters()), "parameters, output", tuple(y.shape[1:]))
'''


def export_source(report: Report) -> str:
    import textwrap

    from archcalc.torch import build
    from archcalc.torch import modules as torchmods

    custom: dict[str, type] = {}
    for cls in (build.SpecSequence, build.SpecParallel, build.SpecResidual):
        _add_custom(cls, custom)
    writer = _Writer(custom)
    for child in report.tree.children:
        writer.node(child, "", "model")
    about = [f"# Spec: {_comment(ascii(report.name))}"]
    if report.source:
        about.append(f"# Source: {_comment(ascii(report.source))}")
    for line in report.description.splitlines():
        about.append(f"#   {_comment(line)}")
    about.append(f"# Parameters: {report.totals.params:,}   MACs per sample: {report.totals.macs // report.batch:,}")
    header = _HEADER.format(version=_comment(__version__), about="\n".join(about), name=_literal(report.name),
                            input=_literal(tuple(report.input)), output=_literal(tuple(report.totals.output)))
    # torchmods' padding helper is used by its padded modules' constructors; the classes follow in use order
    # (a class defined inside a function is dedented to the top level).
    helpers = [torchmods.f_pad, *custom.values()]
    sources = "\n\n\n".join(textwrap.dedent(inspect.getsource(h)).rstrip() for h in helpers)  # type: ignore[arg-type]
    footer = _FOOTER.format(body="\n".join(writer.lines))
    return header + "\n" + sources + "\n\n" + footer
