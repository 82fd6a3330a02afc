"""Build the torch nn.Module for an analyzed spec. torch is imported here and in the modules that execute models.

Submodules carry the spec's hierarchical names (`layer1.0.conv1` is `model.layer1[0].conv1`), and each forward
does exactly the spec's computation: a sequence runs its children in order, a parallel node concatenates (adds,
multiplies) its branches, a residual node adds the body and the shortcut and then runs its `after` layers.
"""

from __future__ import annotations

import torch
from torch import nn

from archcalc.core.analyze import ALayer, ANode, APar, ARes, ASeq, Report
from archcalc.torch.recipes import module_call


def _local(name: str, parent: str) -> str:
    return name[len(parent) + 1:] if parent else name


class SpecSequence(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._modules.values():
            x = module(x)  # type: ignore[misc]
        return x


class SpecParallel(nn.Module):
    def __init__(self, merge: str) -> None:
        super().__init__()
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self._modules.values()]  # type: ignore[misc]
        if self.merge == "concat":
            return torch.cat(outs, 1)
        if self.merge == "mul":
            y = outs[0] * outs[1]
            for extra in outs[2:]:
                y = y * extra
            return y
        y = outs[0] + outs[1]
        for extra in outs[2:]:
            y += extra  # y is a fresh tensor: accumulate in place
        return y

    def extra_repr(self) -> str:
        return f"merge={self.merge}"


class SpecResidual(nn.Module):
    """y = after(body(x) + shortcut(x)); the body and after layers are direct children, as in torchvision."""

    def __init__(self, body: list[str], after: list[str], has_shortcut: bool) -> None:
        super().__init__()
        self._body = body
        self._after = after
        self._has_shortcut = has_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self._body:
            y = self._modules[name](y)  # type: ignore[misc]
        # Written inline so the shortcut's output is freed right after the add (no local keeps it alive).
        y = y + (self._modules["shortcut"](x) if self._has_shortcut else x)  # type: ignore[misc]
        for name in self._after:
            y = self._modules[name](y)  # type: ignore[misc]
        return y


def build_node(node: ANode, parent: str) -> nn.Module:
    if isinstance(node, ALayer):
        module = module_call(node.kind, node.args, node.input).make()
        if not node.trainable:
            for p in module.parameters():
                p.requires_grad_(False)
        return module
    if isinstance(node, ASeq):
        seq = SpecSequence()
        for child in node.children:
            seq.add_module(_local(child.name, node.name), build_node(child, node.name))
        return seq
    if isinstance(node, APar):
        par = SpecParallel(node.merge)
        for branch in node.branches:
            par.add_module(_local(branch.name, node.name), build_node(branch, node.name))
        return par
    assert isinstance(node, ARes)
    body = [_local(c.name, node.name) for c in node.body.children]
    after = [_local(c.name, node.name) for c in node.after.children]
    res = SpecResidual(body, after, node.shortcut is not None)
    for child in node.body.children:
        res.add_module(_local(child.name, node.name), build_node(child, node.name))
    if node.shortcut is not None:
        res.add_module("shortcut", build_node(node.shortcut, node.name))
    for child in node.after.children:
        res.add_module(_local(child.name, node.name), build_node(child, node.name))
    return res


def build_module(report: Report) -> nn.Module:
    """The nn.Module for an analyzed spec, in eval mode, float32 on the CPU."""
    model = build_node(report.tree, "")
    model.eval()
    return model


def leaf_modules(model: nn.Module, report: Report) -> dict[str, nn.Module]:
    """The module of every leaf row, by its spec name (merge ops have none)."""
    return {r.name: model.get_submodule(r.name) for r in report.rows if r.module}
