"""timm's EfficientFormer-V2 attention (Li et al. 2023, "Rethinking Vision Transformers for MobileNet Size and
Speed"; timm/models/efficientformer_v2.py): Attention2d, on a channels-first C x H x W grid, is an optional strided
depthwise conv + batch norm, `effv2_attention` (q, k, v, v_local, the score table, the talking heads), with the
stride a bilinear upsampling back, the activation and the projection (a 1 x 1 conv + batch norm);
Attention2dDownsample (the stage transitions' local and global query) is `effv2_attention` with downsample, the
activation and the projection. Kept whole by the tracer (mapping.EFFV2) and read here, layer by layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import LayerError, Shape, Tokens
from archcalc.torch.importer import mapping
from archcalc.torch.importer.mapping import Unmapped

if TYPE_CHECKING:
    from archcalc.torch.importer.trace import _Converter, _Tensor

WHY = "timm's EfficientFormer-V2 "
# timm's GELU modules (F.gelu(x) and F.gelu(x, approximate='tanh')), the attention's activation
TIMM_GELU: dict[str, dict[str, Any]] = {"timm.layers.activations.GELU": {},
                                        "timm.layers.activations.GELUTanh": {"approximate": "tanh"}}


def _conv(conv: Any, cin: int, cout: int, kernel: int, stride: int, groups: int) -> bool:
    """An nn.Conv2d of these channels, square kernel and stride, groups, padding kernel // 2 and a bias."""
    return (type(conv) is nn.Conv2d and conv.in_channels == cin and conv.out_channels == cout
            and tuple(conv.kernel_size) == (kernel, kernel) and tuple(conv.stride) == (stride, stride)
            and tuple(conv.padding) == (kernel // 2, kernel // 2) and tuple(conv.dilation) == (1, 1)
            and conv.groups == groups and conv.bias is not None and conv.padding_mode == "zeros")


def _conv_norm(cn: Any, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> bool:
    """timm's ConvNorm: such a conv and an affine nn.BatchNorm2d with running statistics."""
    bn = getattr(cn, "bn", None)
    return (_conv(getattr(cn, "conv", None), cin, cout, kernel, stride, groups) and type(bn) is nn.BatchNorm2d
            and bn.num_features == cout and bn.affine and bn.track_running_stats)


def _index(h: int, w: int, stride: int) -> torch.Tensor:
    """|offset| of each query (the grid subsampled by `stride`) to each key, as row offset x W + column offset."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    qy, qx = torch.meshgrid(torch.arange(0, h, stride), torch.arange(0, w, stride), indexing="ij")
    ys, xs, qy, qx = ys.flatten(), xs.flatten(), qy.flatten(), qx.flatten()
    return (qy[:, None] - ys[None, :]).abs() * w + (qx[:, None] - xs[None, :]).abs()


def attention(conv: _Converter, node: fx.Node, m: Any, x: _Tensor | None) -> Any:
    """timm's Attention2d or Attention2dDownsample called on one C x H x W grid of the network, as its layers (the
    score table's index checked against |offset| on the grid where it holds values: not on the meta device; x:
    its one argument, a tensor of the network; None where it was called otherwise)."""
    if x is None or x.channels_last or isinstance(x.shape, Tokens) or len(x.shape) != 3 \
            or node.kwargs:
        raise Unmapped(WHY + "attention on other than a C x H x W grid")
    downsample = mapping.qualname(type(m)).endswith("Attention2dDownsample")
    c, h, w = x.shape
    heads, key = int(m.num_heads), int(m.key_dim)
    kh, d = heads * key, int(m.dh)
    value = d // heads
    stride_conv = None if downsample else m.stride_conv
    if stride_conv is not None and not _conv_norm(stride_conv, c, c, 3, 2, c):
        raise Unmapped(WHY + "Attention2d whose stride_conv is not a depthwise 3 x 3 conv of stride 2 + batch norm")
    gh, gw = ((h + 1) // 2, (w + 1) // 2) if stride_conv is not None else (h, w)
    if tuple(m.resolution) != (gh, gw) or value * heads != d:
        raise Unmapped(WHY + f"attention sized for {list(m.resolution)}, run on the grid {[gh, gw]}")
    if downsample:
        q = m.q
        ok = (_conv(getattr(q, "local", None), c, c, 3, 2, c) and type(getattr(q, "pool", None)) is nn.AvgPool2d
              and q.pool.kernel_size in (1, (1, 1)) and q.pool.stride in (2, (2, 2)) and q.pool.padding in (0, (0, 0))
              and _conv_norm(q.proj, c, kh))
        talking = False
    else:
        ok = _conv_norm(m.q, c, kh)
        talking = True
        ok = ok and all(_conv(t, heads, heads, 1, 1, 1) for t in (m.talking_head1, m.talking_head2))
    ok = (ok and _conv_norm(m.k, c, kh) and _conv_norm(m.v, c, d)
          and _conv_norm(m.v_local, d, d, 3, 2 if downsample else 1, d) and _conv_norm(m.proj, d, int(
              m.out_dim) if downsample else c))
    if not ok:
        raise Unmapped(WHY + "attention whose q, k, v, v_local, talking heads or projection are not timm's convs "
                       "and batch norms")
    index, found = _index(gh, gw, 2 if downsample else 1), m.attention_bias_idxs
    if tuple(found.shape) != tuple(index.shape) or (not found.is_meta and not torch.equal(found.cpu(), index)):
        raise Unmapped(WHY + "attention whose score table index is not |offset| on its grid")
    upsample = None if downsample else m.upsample
    if (stride_conv is None) != (upsample is None):
        raise Unmapped(WHY + "Attention2d with a stride conv and no upsampling, or the other way round")
    base = str(node.target).rsplit(".", 1)[-1]
    layers: list[tuple[str, nn.Module | None, str, dict[str, Any]]] = []
    if stride_conv is not None:
        layers += [(f"{base}_stride", stride_conv.conv, "", {}), (f"{base}_stride_norm", stride_conv.bn, "", {})]
    layers.append((base, None, "effv2_attention", {"num_heads": heads, "key_dim": key, "value_dim": value,
                                                   "talking_heads": talking, "downsample": downsample}))
    if upsample is not None:
        layers.append((f"{base}_upsample", upsample, "", {}))
    layers += [(f"{base}_act", m.act, "", {}), (f"{base}_proj", m.proj.conv, "", {}),
               (f"{base}_proj_norm", m.proj.bn, "", {})]
    out = x
    shape: Shape = x.shape
    for name, module, kind, given in layers:
        if module is not None and mapping.qualname(type(module)) in TIMM_GELU:
            kind, given = "gelu", TIMM_GELU[mapping.qualname(type(module))]
        elif module is not None:
            rule = mapping.module_rule(module)
            if rule is None:
                raise Unmapped(f"archcalc has no kind for {mapping.qualname(type(module))}")
            kind, given = rule(module, shape)
        k = REGISTRY[kind]
        full = {a.name: given.get(a.name, a.default) for a in k.args}
        try:
            shape = k.output(full, shape, lambda message: None)
        except LayerError as exc:
            raise Unmapped(f"archcalc's {kind} refuses it: {exc}") from None
        if kind == "effv2_attention" and k.cost(full, out.shape, shape).params != sum(
                p.numel() for p in m.parameters()) - sum(p.numel() for p in (
                    *((stride_conv.parameters()) if stride_conv is not None else ()), *m.proj.parameters())):
            raise Unmapped(WHY + "attention whose parameters are not archcalc's effv2_attention's")
        params = list(module.parameters()) if module is not None else list(m.parameters())
        trainable = not params or any(p.requires_grad for p in params)
        out = conv.emit(node, name, kind, None, given, [out], True, shape=shape, trainable=trainable)
    final = conv.values[node]
    if tuple(int(s) for s in final.shape[1:]) != tuple(shape):
        raise Unmapped(WHY + f"attention whose output ({list(final.shape[1:])}) is not {list(shape)}")
    return out
