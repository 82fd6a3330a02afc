"""timm's TinyViT blocks (tiny_vit.py, TinyVitBlock) read as window_attention: the channels-last token grid
(B x H x W x C) cut into windows by views, x.view(B, nH, w, nW, w, C).transpose(2, 3).reshape(B nH nW, w w, C),
timm's tiny_vit.Attention on them (kept whole: its layer norm, a qkv linear C -> 3C, scaled dot-product attention
with a learned bias per head and absolute offset |dy|, |dx| gathered by an index, LeViT's attention biases; a
projection C -> C), and the windows put back by the inverse views. The cut becomes `to_tokens` (the tokens of the
grid: the norm acts per token), the attention `layernorm` and `window_attention` with `position_bias: offsets` on
the whole grid, the way back `to_grid` (channels last, as the block holds it). A grid that is one window is
attended as it is (x.reshape(B, L, C): the importer's own to_tokens), the same window_attention of one window.
Padded grids (a side not a multiple of the window) are refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from torch import nn

from archcalc.core.kinds.base import Tokens
from archcalc.torch.importer import mapping
from archcalc.torch.importer.mapping import Unmapped

if TYPE_CHECKING:
    import torch.fx as fx

# The attention module kept whole by the tracer (mapping.is_leaf) and read here.
ATTENTION = "timm.models.tiny_vit.Attention"


class Windows(NamedTuple):
    """A token grid on its way into windows or back: the tokens (archcalc's N x C on their grid), the window, and
    how far the views have gone ('view', 'transposed', 'cut'; after the attention 'attended', 'unview',
    'untransposed')."""

    tokens: Any  # trace._Tensor: the grid's tokens (to_tokens' output, or the attention's)
    window: tuple[int, int]
    step: str


def open_windows(conv: Any, node: fx.Node, x: Any, out: tuple[int, ...]) -> Windows | None:
    """x.view(B, H / w, w, W / w, w, C) of a channels-last grid (C x H x W): the first view of the cut, as
    `to_tokens`; None when the view is not that."""
    if not (getattr(x, "channels_last", False) and not isinstance(x.shape, Tokens) and len(x.shape) == 3
            and len(out) == 5):
        return None
    c, h, w = x.shape
    if out[4] != c or out[0] * out[1] != h or out[2] * out[3] != w or not _cut_follows(conv, node, out):
        return None
    tokens = conv.emit(node, "to_tokens", "to_tokens", None, {}, [x], fixed=False, shape=Tokens(h * w, c, (h, w)))
    return Windows(tokens, (out[1], out[3]), "view")


def _cut_follows(conv: Any, node: fx.Node, out: tuple[int, ...]) -> bool:
    """The view's one reader is transpose(2, 3), whose one reader is a reshape to (windows, M, C): TinyViT's cut
    (another network's view of its grid is refused where it is, as before)."""
    users = list(node.users)
    t = users[0] if len(users) == 1 else None
    dims: list[Any] = list(t.args[1:]) if t is not None else []
    if t is None or t.op != "call_method" or str(t.target) != "transpose" or len(dims) != 2 or t.kwargs \
            or not all(isinstance(d, int) for d in dims) or sorted(d % 6 for d in dims) != [2, 3]:
        return False
    after = list(t.users)
    r = after[0] if len(after) == 1 else None
    value = conv.values.get(r) if r is not None else None
    return (r is not None and r.op == "call_method" and str(r.target) in ("reshape", "view")
            and value is not None and tuple(int(s) for s in value.shape) == (out[0] * out[2], out[1] * out[3], out[4]))


def follow(conv: Any, node: fx.Node, method: str | None, args: list[Any]) -> Windows | Any:
    """The views of the cut and of its inverse, step by step; the last one (B x H x W x C) is `to_grid`."""
    win: Windows = args[0]
    tokens, (wh, ww) = win.tokens, win.window
    c, (h, w) = tokens.shape[1], tokens.shape.grid
    shape = tuple(int(s) for s in conv.values[node].shape)
    dims = sorted(int(d) % 6 for d in args[1:]) if method == "transpose" and len(args) == 3 else []
    if win.step in ("view", "unview") and dims == [2, 3]:
        return win._replace(step="transposed" if win.step == "view" else "untransposed")
    if method in ("reshape", "view"):
        windows = (h // wh) * (w // ww)
        if win.step == "transposed" and shape == (windows, wh * ww, c):
            return win._replace(step="cut")
        if win.step == "attended" and shape == (1, h // wh, w // ww, wh, ww, c):
            return win._replace(step="unview")
        if win.step == "untransposed" and shape == (1, h, w, c):
            return conv.emit(node, "to_grid", "to_grid", None, {"size": [h, w]}, [tokens], fixed=False,
                             channels_last=True, shape=(c, h, w))
    raise Unmapped(f"a {method or 'function'} of a TinyViT block's windows (step '{win.step}'): archcalc follows "
                   "x.view(B, nH, w, nW, w, C).transpose(2, 3).reshape(B nH nW, w w, C), the attention, and its "
                   "inverse")


def attention(conv: Any, node: fx.Node, m: Any, args: list[Any]) -> Any:
    """timm's tiny_vit.Attention on a TinyViT block's windows (or on a grid that is one window): `layernorm` (its
    norm) and window_attention (qkv C -> 3C with q, k, v per head C / heads channels; attention biases, a
    heads x w_h w_w table gathered by an M x M index: position_bias offsets; proj C -> C)."""
    x = args[0] if len(args) == 1 and not node.kwargs else None
    if isinstance(x, Windows) and x.step == "cut":
        tokens, window = x.tokens, x.window
    elif x is not None and isinstance(getattr(x, "shape", None), Tokens) and not x.channels_last \
            and len(x.shape.grid) == 2 and x.shape[0] == x.shape.grid[0] * x.shape.grid[1]:
        tokens, window = x, tuple(x.shape.grid)
    else:
        raise Unmapped("timm's TinyViT Attention on other than a block's windows or a grid that is one window")
    c, heads = tokens.shape[1], int(m.num_heads)
    wh, ww = window
    d = c // heads
    norm, qkv, proj = m.norm, m.qkv, m.proj
    if (c % heads or int(m.key_dim) != d or int(m.val_dim) != d or tuple(m.resolution) != (wh, ww)
            or type(norm) is not nn.LayerNorm or tuple(norm.normalized_shape) != (c,)
            or type(qkv) is not nn.Linear or tuple(qkv.weight.shape) != (3 * c, c)
            or type(proj) is not nn.Linear or tuple(proj.weight.shape) != (c, c)
            or (qkv.bias is None) != (proj.bias is None)
            or tuple(m.attention_biases.shape) != (heads, wh * ww)
            or tuple(m.attention_bias_idxs.shape) != (wh * ww, wh * ww)):
        raise Unmapped(f"timm's TinyViT Attention whose norm, qkv/proj weights, key/value dims or attention biases "
                       f"are not layernorm and window_attention's on {c} channels, {heads} heads and a {wh} x {ww} "
                       "window (key_dim = val_dim = C / heads, a heads x w^2 table, an M x M index)")
    rule = mapping.module_rule(norm)
    assert rule is not None
    trainable = any(t.requires_grad for t in m.parameters())
    path = str(node.target)
    conv.called.update((path, f"{path}.norm", f"{path}.qkv", f"{path}.proj"))
    name = path.rsplit(".", 1)[-1]
    normed = conv.emit(node, f"{name}_norm", "layernorm", None, rule(norm, tokens.shape).args, [tokens], False,
                       shape=tokens.shape, trainable=trainable)
    args_: dict[str, Any] = {"num_heads": heads, "window_size": wh if wh == ww else [wh, ww],
                             "position_bias": "offsets", **({} if qkv.bias is not None else {"bias": False})}
    out = conv.emit(node, name, "window_attention", None, args_, [normed], True, shape=tokens.shape,
                    trainable=trainable)
    return Windows(out, x.window, "attended") if isinstance(x, Windows) else out
