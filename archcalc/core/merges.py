"""Merge ops: the nodes that combine several tensors (concat, add, mul), registered like layer kinds.

A merge owns its output shape (with an error that names where each input came from), its `full`-convention cost
and what it keeps for backward. It has no parameters and no nn.Module of its own in torchvision's models (a `+`, a
`torch.cat`). An arithmetic merge states its Python operator (`symbol`) as plain data: the builder runs it, export
writes it and the importer recognises it (the operator, its in-place form, torch's function and Tensor's methods
of the operator's name) from that alone; a merge without one (concat) registers its torch form in
archcalc.torch.recipes and its importer rule in archcalc.torch.importer.trace. A new merge is one class here, added
to MERGES.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from archcalc.core.kinds.base import LayerError, Shape, Tokens, numel


def dims(shape: Shape) -> str:
    return "x".join(map(str, shape))


class MergeOp:
    name: ClassVar[str]
    doc: ClassVar[str]
    symbol: ClassVar[str] = ""  # Python's binary operator, applied left to right over the inputs ("+"); "" if none
    # The third and later inputs are accumulated in place on the fresh result of the first operation (a sum); else
    # each partial result is a new tensor (a product keeps its partial products for backward: `intermediates`).
    accumulates: ClassVar[bool] = False
    # `running: true` may be written: the merge of n tensors is then n - 1 merges of two, each run as soon as its
    # input is made (core.analyze: `skip = skip + s` in a loop), with the all-at-once form's costs.
    running: ClassVar[bool] = False
    # Token sequences (N x C) may be merged: an element-wise merge of equal shapes is indifferent to the layout.
    tokens: ClassVar[bool] = False
    # A product: its backward runs one multiply's backward per input after the first, the last first
    # (core.memory.training_timeline's `product_backward`)
    products: ClassVar[bool] = False

    def output(self, shapes: Sequence[Shape], sources: Sequence[str]) -> Shape:
        raise NotImplementedError

    def saved(self, shapes: Sequence[Shape], needs_grad: Sequence[bool]) -> tuple[tuple[int, ...], int]:
        """What the merge keeps for backward in training, given which inputs need a gradient: the indices of the
        inputs it keeps, and the elements per sample of intermediate tensors it keeps (in the activation dtype)."""
        return (), 0

    def transient(self, shapes: Sequence[Shape], out: Shape) -> tuple[tuple[int, int], ...]:
        """Temporaries beside the output while the merge runs at inference, as Kind.transient."""
        return ()

    def train_transient(self, shapes: Sequence[Shape], out: Shape, needs_grad: Sequence[bool]) -> int:
        """Elements per sample alive beside the output and what the merge keeps (`saved`) while it runs in a
        training-mode forward, given which inputs need a gradient (none: autograd does not record it)."""
        return 0

    def full(self, shapes: Sequence[Shape], out: Shape) -> int:
        """Arithmetic operations under the `full` convention: one per output element per extra input."""
        return (len(shapes) - 1) * numel(out)

    def intermediates(self, shapes: Sequence[Shape]) -> list[Shape]:
        """Tensors made on the way to the result (a chain of binary ops), beyond the inputs and the output."""
        return []


class Concat(MergeOp):
    name = "concat"
    doc = ("torch.cat along channels: the other axes must agree; token sequences are joined along the tokens "
           "(dim 1 of B x N x C: PiT's class tokens put before the grid's), on the last one's grid")
    tokens = True

    def output(self, shapes: Sequence[Shape], sources: Sequence[str]) -> Shape:
        first = shapes[0]
        if isinstance(first, Tokens):
            for shape, source in zip(shapes[1:], sources[1:]):
                if shape[1] != first[1]:
                    raise LayerError(f"{sources[0]} gives {dims(first)} but {source} gives {dims(shape)}; token "
                                     "sequences are joined along the tokens: their channels must agree")
            last = shapes[-1]
            assert isinstance(last, Tokens)
            return Tokens(sum(s[0] for s in shapes), first[1], last.grid)
        for shape, source in zip(shapes[1:], sources[1:]):
            if len(shape) != len(first) or shape[1:] != first[1:]:
                raise LayerError(f"{sources[0]} gives {dims(first)} but {source} gives {dims(shape)}; they cannot "
                                 "be concatenated along channels")
        return (sum(s[0] for s in shapes), *first[1:])

    def full(self, shapes: Sequence[Shape], out: Shape) -> int:
        return 0


class Add(MergeOp):
    name = "add"
    doc = ("element-wise sum: the shapes must be equal, or on a grid an axis of size 1 stretches (GCNet's "
           "x + C x 1 x 1 context) where the first two inputs make the full shape")
    symbol = "+"
    accumulates = True
    running = True
    tokens = True

    def output(self, shapes: Sequence[Shape], sources: Sequence[str]) -> Shape:
        first = shapes[0]
        if isinstance(first, Tokens) or any(isinstance(s, Tokens) for s in shapes):
            for shape, source in zip(shapes[1:], sources[1:]):
                if shape != first:
                    raise LayerError(f"{sources[0]} gives {dims(first)} but {source} gives {dims(shape)}; they "
                                     "cannot be added")
            return first
        out: list[int] = list(first)
        for k, (shape, source) in enumerate(zip(shapes[1:], sources[1:]), 1):
            fits = len(shape) == len(out) and all(a == b or a == 1 or (b == 1 and k == 1) for a, b in zip(shape, out))
            if not fits:  # (a third input and on is added in place: it cannot widen the sum)
                raise LayerError(f"{sources[0]} gives {dims(first)} but {source} gives {dims(shape)}; they cannot "
                                 "be added")
            out = [max(a, b) for a, b in zip(shape, out)]
        return tuple(out)


class Sub(MergeOp):
    name = "sub"
    doc = "element-wise difference, first minus the others: the shapes must be equal (PoolFormer's pool(x) - x)"
    symbol = "-"
    accumulates = True
    tokens = True

    def output(self, shapes: Sequence[Shape], sources: Sequence[str]) -> Shape:
        first = shapes[0]
        for shape, source in zip(shapes[1:], sources[1:]):
            if shape != first:
                raise LayerError(f"{sources[0]} gives {dims(first)} but {source} gives {dims(shape)}; one cannot "
                                 "be subtracted from the other")
        return first


class Mul(MergeOp):
    name = "mul"
    doc = "element-wise product with broadcasting (an axis of size 1 stretches, as squeeze-excitation's C x 1 x 1)"
    symbol = "*"
    products = True
    tokens = True

    def saved(self, shapes: Sequence[Shape], needs_grad: Sequence[bool]) -> tuple[tuple[int, ...], int]:
        # Built as ((x0 * x1) * x2) * ...: each multiply keeps its right factor for the left one's gradient and its
        # left factor (x0, or a partial product: an intermediate tensor) for the right one's.
        partial = self.intermediates(shapes)
        kept: list[int] = []
        elements = 0
        left_grad = needs_grad[0]
        for k in range(1, len(shapes)):
            if left_grad:
                kept.append(k)
            if needs_grad[k]:
                if k == 1:
                    kept.append(0)
                else:
                    elements += numel(partial[k - 2])
            left_grad = left_grad or needs_grad[k]
        return tuple(kept), elements

    def transient(self, shapes: Sequence[Shape], out: Shape) -> tuple[tuple[int, int], ...]:
        # While a multiply runs, its left factor (the previous partial product) is alive beside its result; the last
        # result is the output, which the liveness model already counts.
        products = [*self.intermediates(shapes), out]
        alive = max(numel(products[k]) + (numel(products[k - 1]) if k else 0) for k in range(len(products)))
        return ((alive - numel(out), 0),) if alive > numel(out) else ()

    def train_transient(self, shapes: Sequence[Shape], out: Shape, needs_grad: Sequence[bool]) -> int:
        # At multiply j: the partial products kept so far (`saved`), the left factor if it is a partial product
        # not kept (freed after), and the result P_j; the most of these beyond the output and all kept ones.
        products = [*self.intermediates(shapes), out]  # P_1 .. P_{k-1}
        kept = {j - 1 for j in range(2, len(shapes)) if needs_grad[j]}  # P_m kept for x_{m+1}'s gradient
        most = max(sum(numel(products[m - 1]) for m in kept if m < j)
                   + (numel(products[j - 2]) if j >= 2 and j - 1 not in kept else 0) + numel(products[j - 1])
                   for j in range(1, len(shapes)))
        return most - numel(out) - sum(numel(products[m - 1]) for m in kept)

    def output(self, shapes: Sequence[Shape], sources: Sequence[str]) -> Shape:
        if isinstance(shapes[0], Tokens):  # token sequences: equal shapes only (a gated MLP's act(g) * x)
            for shape, source in zip(shapes[1:], sources[1:]):
                if shape != shapes[0]:
                    raise LayerError(f"{sources[0]} gives {dims(shapes[0])} but {source} gives {dims(shape)}; token "
                                     "sequences are multiplied element by element (equal shapes)")
            return shapes[0]
        out = list(shapes[0])
        for shape, source in zip(shapes[1:], sources[1:]):
            if len(shape) != len(out) or any(a != b and 1 not in (a, b) for a, b in zip(shape, out)):
                raise LayerError(f"{sources[0]} gives {dims(shapes[0])} but {source} gives {dims(shape)}; they "
                                 "cannot be multiplied (each axis must match or be 1)")
            out = [max(a, b) for a, b in zip(shape, out)]
        return tuple(out)

    def intermediates(self, shapes: Sequence[Shape]) -> list[Shape]:
        # (a * b) * c: the partial products a*b, (a*b)*c, ... before the last are new tensors (a sum accumulates in
        # place instead); each multiply keeps its factors for backward, so a partial product is saved too.
        partial, result = list(shapes[0]), []
        for shape in shapes[1:-1]:
            partial = [max(a, b) for a, b in zip(partial, shape)]
            result.append(tuple(partial))
        return result


MERGES: dict[str, MergeOp] = {m.name: m for m in (Concat(), Add(), Sub(), Mul())}
