"""timm's CoAtNet attention (Dai et al. 2021, "CoAtNet: Marrying Convolution and Attention for All Data Sizes";
timm/models/maxxvit.py, `Attention2d`): multi-head self-attention over every token of a channels-first C x H x W
grid, q, k and v from one 1 x 1 conv (C -> 3D), the heads split along the channels, a relative position bias over
the whole grid (timm's RelPosBias or RelPosMlp sized for H x W), the joined heads projected by a 1 x 1 conv
(D -> F). The computation is window attention with one window, the whole grid: read as `to_tokens`,
`window_attention` with window_size = the grid (and `out_features` F, `expand_first` where D is F) and `to_grid`,
the same products and parameters. Kept whole by the tracer (mapping.MAXVIT) and read here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch import nn

from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import LayerError, Tokens
from archcalc.torch.importer.mapping import Unmapped

if TYPE_CHECKING:
    from archcalc.torch.importer.trace import _Converter, _Tensor

WHY = "timm's Attention2d "


def _conv1x1(conv: Any, cin: int) -> bool:
    """A plain 1 x 1 conv of cin input channels (no stride, padding, dilation or groups)."""
    return (isinstance(conv, nn.Conv2d) and conv.in_channels == cin and tuple(conv.kernel_size) == (1, 1)
            and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def attention2d(conv: _Converter, node: fx.Node, m: Any, x: _Tensor | None) -> Any:
    """timm's Attention2d(x) on a C x H x W grid as to_tokens, window_attention over the whole grid, to_grid (x:
    its one argument, a tensor of the network; None where it was called otherwise)."""
    if (x is None or x.channels_last
            or isinstance(x.shape, Tokens) or len(x.shape) != 3
            or any(k != "shared_rel_pos" or v is not None for k, v in node.kwargs.items())):
        raise Unmapped(WHY + "on other than a C x H x W grid (or with a shared position bias)")
    c, h, w = x.shape
    qkv, proj, rel = m.qkv, m.proj, m.rel_pos
    heads = int(m.num_heads)
    d = qkv.out_channels // 3 if isinstance(qkv, nn.Conv2d) else 0
    f = proj.out_channels if isinstance(proj, nn.Conv2d) else 0
    bias = getattr(qkv, "bias", None) is not None
    if (not _conv1x1(qkv, c) or qkv.out_channels != 3 * d or not _conv1x1(proj, d) or heads * int(m.dim_head) != d
            or (proj.bias is not None) != bias or d not in (c, f)):
        raise Unmapped(WHY + f"whose qkv and proj are not 1 x 1 convs C -> 3D and D -> F with biases alike, D the "
                       f"input's {c} channels or the output's, {heads} heads")
    if m.attn_drop.p or m.proj_drop.p:
        raise Unmapped(WHY + "with dropout: archcalc's window_attention has none")
    if rel is None:
        raise Unmapped(WHY + "without a relative position bias: not window_attention")
    position = conv.timm_position_bias(rel, heads, (h, w))
    if position == "lookup":
        raise Unmapped(WHY + "with RelPosBiasTf: not followed over the whole grid")
    args_: dict[str, Any] = {"num_heads": heads, "window_size": [h, w] if h != w else h, "bias": bias,
                             **({"position_bias": position} if position != "table" else {}),
                             **conv.timm_mlp_hidden(rel),
                             **({"out_features": f} if f != c else {}),
                             **({"expand_first": True} if d != c else {})}
    kind = REGISTRY["window_attention"]
    full = {a.name: args_.get(a.name, a.default) for a in kind.args}
    tokens = Tokens(h * w, c, (h, w))
    try:
        out = kind.output(full, tokens, lambda message: None)
        params = kind.cost(full, tokens, out).params
    except LayerError as exc:
        raise Unmapped(f"archcalc's window_attention refuses it: {exc}") from None
    if sum(p.numel() for p in m.parameters()) != params:
        raise Unmapped(WHY + f"whose parameters are not the {params:,} of archcalc's window_attention")
    value = conv.values[node]
    if tuple(int(s) for s in value.shape) != (1, f, h, w):
        raise Unmapped(WHY + f"whose output ({list(value.shape[1:])}) is not {[f, h, w]}")
    trainable = any(t.requires_grad for t in m.parameters())
    name = str(node.target).rsplit(".", 1)[-1]
    seq = conv.emit(node, f"{name}_tokens", "to_tokens", None, {}, [x], fixed=False, shape=tokens)
    att = conv.emit(node, name, "window_attention", None, args_, [seq], True, shape=out, trainable=trainable)
    return conv.emit(node, f"{name}_grid", "to_grid", None, {"size": [h, w]}, [att], fixed=False, shape=(f, h, w))


def cat_channels(conv: _Converter, node: fx.Node, tensors: Sequence[_Tensor], dim: int) -> Any:
    """torch.cat of token sequences on one grid along their channels (timm's maxvit_tiny_pm_256: the block and the
    grid attention's halves, torch.cat([x_window, x_grid], dim=-1) of B x H x W x C): `to_grid` each, `concat` of
    the grids' channels, `to_tokens` (views around the same copy). None where it is not that (tensors: the
    network's)."""
    value = conv.values[node]
    rank = value.dim()
    first = tensors[0].shape if tensors else None
    if (len(tensors) < 2 or dim % rank != rank - 1 or not isinstance(first, Tokens) or len(first.grid) < 2
            or first[0] != math.prod(first.grid) or not all(
                not t.channels_last and isinstance(t.shape, Tokens)
                and t.shape.grid == first.grid and t.shape[0] == first[0] for t in tensors)):
        return None
    grid = tuple(first.grid)
    grids = [conv.emit(node, "concat_grid", "to_grid", None, {"size": list(grid)}, [t], fixed=False,
                       shape=(t.shape[1], *grid)) for t in tensors]
    channels = sum(t.shape[1] for t in tensors)
    joined = conv.emit(node, "concat", None, "concat", {}, grids, fixed=False, shape=(channels, *grid))
    return conv.emit(node, "concat_tokens", "to_tokens", None, {}, [joined], fixed=False,
                     shape=Tokens(first[0], channels, grid))
