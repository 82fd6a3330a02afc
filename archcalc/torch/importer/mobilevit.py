"""MobileViT's unfolding into patches (Mehta & Rastegari 2022, "MobileViT"; v2: Mehta & Rastegari 2022,
"Separable Self-attention for Mobile Vision Transformers"), as timm's MobileVitBlock and MobileVitV2Block write it.

A C x H x W grid is cut into patches of ph x pw positions; the tokens at one position of every patch (N = H W / P of
them, P = ph pw) form one sequence, and attention mixes the tokens of a sequence only:

- v1: `reshape`s and `transpose`s make B P x N x C (the batch axis multiplied by P); the transformer's norms, linear
  layers and timm's Attention run on that, and the reverse chain folds the tokens back. Read as `to_tokens` (the
  tokens in the grid's own order: per-token layers do not care) and `to_grid`, the values between per sample as
  P N x C, and the attention as `window_attention` with a grid partition of window_size = (H / ph, W / pw) (the
  tokens of one patch position lie ph and pw apart) and no position bias.
- v2: `reshape`, `permute`, `reshape` make B x C x P x N; its 1 x 1 convs, group norms and LinearSelfAttention run
  on that, and the reverse chain folds it back. The layout passes unread (a permutation of the grid: the convs and
  a GroupNorm(1) are the same on either), the values between per sample as C x H x W, and LinearSelfAttention is
  `separable_attention` with that patch.

Each chain is recognised by what it computes: replayed on the positions of its input, it must give their unfold
(or fold).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.fx as fx
from torch import nn

from archcalc.core.kinds.base import Tokens

if TYPE_CHECKING:
    from archcalc.torch.importer.trace import _Converter

BLOCKS = ("MobileVitBlock", "MobileVitV2Block")
_VIEWS = ("reshape", "view", "transpose", "permute", "contiguous", "flatten")


class Unfolded(NamedTuple):
    """An unfolding in force: its version (1: B P x N x C tokens; 2: B x C x P x N), patch and grid (H, W)."""

    version: int
    patch: tuple[int, int]
    grid: tuple[int, int]


def per_sample(unfolded: Unfolded | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A value's shape as archcalc's layout sees it while an unfolding is in force: B P x N x C as B x P N x C (v1),
    B x C x P x N as B x C x H x W (v2); any other shape as it is."""
    if unfolded is None:
        return shape
    (ph, pw), (h, w) = unfolded.patch, unfolded.grid
    p, n = ph * pw, h * w // (ph * pw)
    if unfolded.version == 1 and len(shape) == 3 and shape[:2] == (p, n):
        return (1, p * n, shape[2])
    if unfolded.version == 2 and len(shape) == 4 and shape[0] == 1 and shape[2:] == (p, n):
        return (1, shape[1], h, w)
    return shape


def _unfold(x: torch.Tensor, version: int, patch: tuple[int, int]) -> torch.Tensor:
    """timm's unfolding of a 1 x C x H x W value: P x N x C (v1) or 1 x C x P x N (v2)."""
    _, c, h, w = x.shape
    ph, pw = patch
    cut = x.reshape(c, h // ph, ph, w // pw, pw)
    if version == 1:
        return cut.permute(2, 4, 1, 3, 0).reshape(ph * pw, -1, c)
    return cut.permute(0, 2, 4, 1, 3).reshape(1, c, ph * pw, -1)


def _fold(t: torch.Tensor, version: int, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The unfolding's inverse, to 1 x C x H x W."""
    (ph, pw), (h, w) = patch, grid
    if version == 1:
        c = t.shape[-1]
        return t.reshape(ph, pw, h // ph, w // pw, c).permute(4, 2, 0, 3, 1).reshape(1, c, h, w)
    c = t.shape[1]
    return t.reshape(c, ph, pw, h // ph, w // pw).permute(0, 3, 1, 4, 2).reshape(1, c, h, w)


def _block(conv: _Converter, node: fx.Node) -> nn.Module | None:
    """The MobileViT block whose forward the node runs in (its own ops, not a submodule's)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if not paths:
        return None
    m = conv.root.get_submodule(paths[-1]) if paths[-1] else conv.root
    return m if type(m).__name__ in BLOCKS else None


def _chain(conv: _Converter, node: fx.Node, start: torch.Tensor, want: torch.Tensor) -> list[fx.Node] | None:
    """The nodes from `node` on, each the one reader of the one before and a view or copy of it, up to the one that
    makes `want` of `start` (an index tensor of the chain's input's shape: the chain replayed on it, with the
    nodes' own sizes and axes, so a model on the meta device is read too); None when there is none."""
    nodes: list[fx.Node] = []
    n, x = node, start
    for _ in range(8):
        if n.op != "call_method" or str(n.target) not in _VIEWS or not n.args or n.args[0] is not (
                nodes[-1] if nodes else node.args[0]):
            return None
        args = [conv.arg(a) for a in n.args[1:]]
        kwargs = {k: conv.arg(v) for k, v in n.kwargs.items()}
        if any(isinstance(a, (fx.Node, torch.Tensor)) or not isinstance(a, (int, tuple, list)) for a in
               [*args, *kwargs.values()]):
            return None
        try:
            x = getattr(x, str(n.target))(*args, **kwargs)
        except (RuntimeError, TypeError, ValueError, IndexError):
            return None
        nodes.append(n)
        if x.shape == want.shape and torch.equal(x, want):
            return nodes
        if len(n.users) != 1:
            return None
        n = next(iter(n.users))
    return None


def layout(conv: _Converter, node: fx.Node) -> bool:
    """At the first op of a MobileViT block's unfolding or folding: read the chain (v1: `to_tokens` or `to_grid`;
    v2: nothing, the grid passes) and say True; else False, and nothing done."""
    if node.op != "call_method" or str(node.target) not in _VIEWS or not node.args:
        return False
    block = _block(conv, node)
    if block is None:
        return False
    x = conv.vals.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    value = conv.values.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if x is None or not isinstance(value, torch.Tensor) or getattr(x, "channels_last", True):
        return False
    index = torch.arange(value.numel()).reshape(value.shape)  # (the values' positions, on the CPU)
    version = 1 if type(block).__name__ == "MobileVitBlock" else 2
    patch: Any = tuple(int(p) for p in block.patch_size)  # type: ignore[union-attr]
    opened = conv.unfolded
    if opened is None:  # the unfolding: a C x H x W grid whose sides the patch divides
        if isinstance(x.shape, Tokens) or len(x.shape) != 3 or x.shape[1] % patch[0] or x.shape[2] % patch[1]:
            return False
        nodes = _chain(conv, node, index, _unfold(index, version, patch))
        if nodes is None:
            return False
        grid = (int(x.shape[1]), int(x.shape[2]))
        conv.composed.update(nodes)
        if version == 1:
            out = conv.emit(nodes[-1], "unfold", "to_tokens", None, {}, [x], fixed=False,
                            shape=Tokens(grid[0] * grid[1], x.shape[0], grid))
        else:
            out = x  # (the grid in another order: nothing to count)
        conv.vals[nodes[-1]] = out
        conv.unfolded = Unfolded(version, patch, grid)
        return True
    if opened.version != version or patch != opened.patch:
        return False
    if (version == 1) != isinstance(x.shape, Tokens):
        return False
    nodes = _chain(conv, node, index, _fold(index, version, patch, opened.grid))
    if nodes is None:
        return False
    conv.composed.update(nodes)
    conv.unfolded = None
    if version == 1:
        out = conv.emit(nodes[-1], "fold", "to_grid", None, {"size": list(opened.grid)}, [x], fixed=False,
                        shape=(x.shape[1], *opened.grid))
    else:
        out = x
    conv.vals[nodes[-1]] = out
    return True


def attention(unfolded: Unfolded | None, kind: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The kind of an attention the matcher read as `kind` with `args`: as it is outside an unfolding; inside a v1
    one, self-attention of each patch position's tokens: window_attention, a grid partition of the grid / the
    patch, no position bias (None when the attention has more than heads and biases)."""
    if unfolded is None:
        return kind, args
    if kind != "self_attention" or unfolded.version != 1 or set(args) - {"num_heads", "bias", "qkv_bias"} \
            or args.get("qkv_bias", True) is not True:
        return None
    (ph, pw), (h, w) = unfolded.patch, unfolded.grid
    return "window_attention", {"num_heads": args["num_heads"], "window_size": [h // ph, w // pw],
                                "partition": "grid", "position_bias": "none",
                                **({"bias": False} if not args.get("bias", True) else {})}


class _OnePatchPosition(Mapping[fx.Node, Any]):
    """The traced values inside a v1 unfolding as the attention matcher reads them: the batch axis B P (the first
    axis of P's size: it comes before the heads) as one sample's, 1, so the matcher sees one sequence of N tokens."""

    def __init__(self, values: Mapping[fx.Node, Any], p: int) -> None:
        self.traced, self.p = values, p

    def __getitem__(self, n: fx.Node) -> Any:
        v = self.traced[n]
        if isinstance(v, torch.Tensor) and self.p in v.shape:
            shape = list(v.shape)
            shape[shape.index(self.p)] = 1
            return torch.empty(shape, device="meta")
        return v

    def __iter__(self) -> Iterator[fx.Node]:
        return iter(self.traced)

    def __len__(self) -> int:
        return len(self.traced)


def matcher_values(unfolded: Unfolded | None, values: Any) -> Any:
    """The values the attention matcher reads: as traced, or inside a v1 unfolding one patch position's."""
    if unfolded is None or unfolded.version != 1:
        return values
    return _OnePatchPosition(values, unfolded.patch[0] * unfolded.patch[1])


def _op(conv: _Converter, n: fx.Node) -> str:
    """What a node runs: a module's class name, a Tensor method's or a function's name."""
    if n.op == "call_module":
        return type(conv.root.get_submodule(str(n.target))).__name__
    return str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))


# timm's LinearSelfAttention._forward_self_attn, op by op (the three getitems of the split in their order)
_SEPARABLE = ("Conv2d", "split", "getitem", "getitem", "getitem", "softmax", "Dropout", "mul", "sum", "relu",
              "expand_as", "mul", "Conv2d", "Dropout")


def separable(conv: _Converter, node: fx.Node) -> bool:
    """At the qkv conv of timm's LinearSelfAttention inside a v2 unfolding: the module's ops read as one
    `separable_attention` with the unfolding's patch (its softmax and sum over the last axis, the N tokens of a patch
    position); True when read, else False and nothing done."""
    if node.op != "call_module" or conv.unfolded is None or conv.unfolded.version != 2:
        return False
    path, _, attr = str(node.target).rpartition(".")
    m: Any = conv.root.get_submodule(path) if path else conv.root
    if type(m).__name__ != "LinearSelfAttention" or attr != "qkv_proj" or not node.args:
        return False
    run = []
    for n in conv.nodes[conv.order[node]:]:
        if n.op == "get_attr":
            continue
        stack = n.meta.get("nn_module_stack") or {}
        inside = path in [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
        if n.op not in ("call_function", "call_method", "call_module") or not (
                inside or (n.op == "call_module" and str(n.target).startswith(path + "."))):
            break
        run.append(n)
    x = conv.vals.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    c = int(m.embed_dim)
    qkv, out = m.qkv_proj, m.out_proj
    if tuple(_op(conv, n) for n in run) != _SEPARABLE or x is None or getattr(x, "shape", None) is None \
            or tuple(x.shape[:1]) != (c,) or len(x.shape) != 3:
        return False
    softmax, total = run[5], run[8]
    dims = [softmax.kwargs.get("dim", softmax.args[1] if len(softmax.args) > 1 else None),
            total.kwargs.get("dim", total.args[1] if len(total.args) > 1 else None)]
    if (any(d not in (-1, 3) for d in dims) or not total.kwargs.get("keepdim", False)
            or any(not isinstance(t, nn.Conv2d) or t.kernel_size != (1, 1) or t.stride != (1, 1) or t.groups != 1
                   or t.padding != (0, 0) for t in (qkv, out))
            or (qkv.in_channels, qkv.out_channels, out.in_channels, out.out_channels) != (c, 1 + 2 * c, c, c)
            or (qkv.bias is None) != (out.bias is None) or (conv.root.training and (m.attn_drop.p or m.out_drop.p))
            or any(u not in run for n in run[:-1] for u in n.users)):
        return False
    args: dict[str, Any] = {"patch": list(conv.unfolded.patch), **({"bias": False} if qkv.bias is None else {})}
    return conv.module_op(path, run, "separable_attention", args, x)
