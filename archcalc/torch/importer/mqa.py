"""timm's MultiQueryAttention2d (timm/layers/attention2d.py: MobileNetV4's hybrids, MobileNetV5), kept whole by the
tracer and read as archcalc's `multi_query_attention` after checking every submodule against what the kind
computes:

    query = Sequential(proj: Conv2d(C, heads x key_dim, 1, bias=False))                    (no query stride)
    key   = Sequential([down_conv: depthwise Conv2d(C, C, k, kv_stride) (or Conv2dSame: kv_padding same),
                        norm: BatchNorm2d(C) or RmsNorm2d(C)],
                       proj: Conv2d(C, key_dim, 1, bias=False))                               (the [...] with kv_stride)
    value = the same, to value_dim
    output = Sequential(proj: Conv2d(heads x value_dim, D, 1, bias=False), drop)             (no upsampling)

called as m(x) on a C x H x W grid; and iFormer's SHMA (timm/models/iformer.py), single-head attention whose q, k and
v projections are 1x1 ConvNorms (a conv and a batch norm), v's twice as wide through a sigmoid and split into v and
a gate that multiplies the head's output before the output ConvNorm: `norm: batchnorm, gate: true`. Anything
else (a query stride with its pool and upsampling, a norm other than batch norm or timm's RmsNorm2d, dropout,
iFormer's windows) is refused with the reason."""

from __future__ import annotations

from typing import Any

from torch import nn

from archcalc.core.kinds.base import Tokens
from archcalc.core.kinds.mqa import kv_padding
from archcalc.torch.recipes import Unmapped

MQA = "timm.layers.attention2d.MultiQueryAttention2d"
SHMA = "timm.models.iformer.SHMA"  # iFormer's single-head modulation attention
CLASSES = (MQA, SHMA)
CONV2D_SAME = "timm.layers.conv2d_same.Conv2dSame"  # (TF-'same' padding: F.pad by the input's size, then the conv)
RMS_NORM = "timm.layers.norm.RmsNorm2d"  # (MobileNetV5's norm: x / sqrt(mean of x^2 over the channels + eps) x weight)


def _qualname(m: Any) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _plain_1x1(m: Any, cin: int, cout: int) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels == cin and m.out_channels == cout and tuple(m.kernel_size) == (1, 1)
            and tuple(m.stride) == (1, 1) and tuple(m.padding) == (0, 0) and tuple(m.dilation) == (1, 1)
            and m.groups == 1 and m.bias is None)


def _source(seq: Any, c: int, dim: int, stride: int, what: str) -> tuple[int, str, bool]:
    """The kernel of the depthwise conv of k's or v's path, its norm and whether it pads TF-'same' (0, '' and False
    without kv_stride), after checking the path."""
    names = [name for name, _ in seq.named_children()]
    if not _plain_1x1(getattr(seq, "proj", None), c, dim):
        raise Unmapped(f"timm's MultiQueryAttention2d whose {what} projection is not a 1x1 conv {c} -> {dim} "
                       "without bias")
    if stride == 1:
        if names != ["proj"]:
            raise Unmapped(f"timm's MultiQueryAttention2d with more than a 1x1 conv on {what}'s path and no kv_stride")
        return 0, "", False
    down: Any = getattr(seq, "down_conv", None)
    norm: Any = getattr(seq, "norm", None)
    same = _qualname(down) == CONV2D_SAME  # TF-'same' padding, computed from the input (the conv pads nothing)
    k = int(down.kernel_size[0]) if isinstance(down, nn.Conv2d) else 0
    if (names != ["down_conv", "norm", "proj"] or (type(down) is not nn.Conv2d and not same) or down.in_channels != c
            or down.out_channels != c or down.groups != c or tuple(down.kernel_size) != (k, k)
            or tuple(down.stride) != (stride, stride) or tuple(down.dilation) != (1, 1) or down.bias is not None
            or down.padding_mode != "zeros"
            or tuple(down.padding) != ((0, 0) if same else (kv_padding(k, stride),) * 2)):
        raise Unmapped(f"timm's MultiQueryAttention2d whose {what} path is not a depthwise conv of stride {stride} "
                       "(symmetric padding ((s - 1) + (k - 1)) // 2 or timm's Conv2dSame, no bias), a norm and a 1x1 "
                       "conv")
    if type(norm) is nn.BatchNorm2d and norm.num_features == c and norm.affine and norm.track_running_stats:
        return k, "batchnorm", same
    weight = getattr(norm, "weight", None)
    if _qualname(norm) == RMS_NORM and tuple(norm.normalized_shape) == (c,) and weight is not None:
        return k, "rmsnorm", same
    raise Unmapped(f"timm's MultiQueryAttention2d whose {what} norm is {type(norm).__name__}, not an affine "
                   "BatchNorm2d with running statistics or an RmsNorm2d with its weight (archcalc's "
                   "multi_query_attention)")


def read(m: Any, inp: tuple[int, ...]) -> dict[str, Any]:
    """multi_query_attention's arguments for timm's MultiQueryAttention2d `m` on a C x H x W input."""
    if len(inp) != 3:
        raise Unmapped("timm's MultiQueryAttention2d on a tensor that is not a C x H x W grid")
    c = inp[0]
    heads, key, value, stride = int(m.num_heads), int(m.key_dim), int(m.value_dim), int(m.kv_stride)
    if any(s != 1 for s in m.query_strides) or [name for name, _ in m.query.named_children()] != ["proj"]:
        raise Unmapped("timm's MultiQueryAttention2d with query_strides (its queries pooled and its output "
                       "upsampled): archcalc's multi_query_attention has no query stride")
    if not _plain_1x1(m.query.proj, c, heads * key):
        raise Unmapped(f"timm's MultiQueryAttention2d whose query projection is not a 1x1 conv {c} -> {heads} x {key} "
                       "without bias")
    kernels = {_source(m.key, c, key, stride, "key"), _source(m.value, c, value, stride, "value")}
    if len(kernels) != 1:
        raise Unmapped("timm's MultiQueryAttention2d whose key and value depthwise convs or norms differ")
    out = getattr(m.output, "proj", None)
    drop = getattr(m.output, "drop", None)
    if [name for name, _ in m.output.named_children()] != ["proj", "drop"] or not isinstance(out, nn.Conv2d) \
            or not _plain_1x1(out, heads * value, out.out_channels):
        raise Unmapped("timm's MultiQueryAttention2d whose output is not a 1x1 conv without bias (no upsampling)")
    if m.attn_drop.p or not isinstance(drop, nn.Dropout) or drop.p:
        raise Unmapped("timm's MultiQueryAttention2d with dropout: archcalc's multi_query_attention has none")
    args: dict[str, Any] = {"num_heads": heads, "key_dim": key, "value_dim": value}
    if stride > 1:
        args["kv_stride"] = stride
        kernel, norm, same = kernels.pop()
        if kernel != 3:
            args["kv_kernel"] = kernel
        if norm != "batchnorm":
            args["kv_norm"] = norm
        if same:
            args["kv_padding"] = "same"
    if out.out_channels != c:
        args["out_features"] = int(out.out_channels)
    return args




def _conv_norm(m: Any, cin: int, cout: int) -> bool:
    """iFormer's ConvNorm: a 1x1 conv without bias and an affine batch norm with running statistics."""
    conv, bn = getattr(m, "c", None), getattr(m, "bn", None)
    return ([name for name, _ in m.named_children()] == ["c", "bn"] and _plain_1x1(conv, cin, cout)
            and type(bn) is nn.BatchNorm2d and bn.num_features == cout and bn.affine and bn.track_running_stats)


def read_shma(m: Any, inp: tuple[int, ...]) -> dict[str, Any]:
    """multi_query_attention's arguments for iFormer's SHMA (timm/models/iformer.py) on a C x H x W input: one head,
    q and k ConvNorm(C, C / r), v_gate ConvNorm(C, 2 mid) through a sigmoid and split in v and the gate, the
    head's output times the gate, proj ConvNorm(mid, C)."""
    if len(inp) != 3:
        raise Unmapped("iFormer's SHMA on a tensor that is not a C x H x W grid")
    c = inp[0]
    if m.window_size:
        raise Unmapped("iFormer's SHMA with window_size (its grid padded and cut into windows): archcalc's "
                       "multi_query_attention attends over the whole grid")
    key = int(m.q.c.out_channels) if isinstance(getattr(m.q, "c", None), nn.Conv2d) else 0
    mid = int(m.proj.c.in_channels) if isinstance(getattr(m.proj, "c", None), nn.Conv2d) else 0
    if not (key and mid and _conv_norm(m.q, c, key) and _conv_norm(m.k, c, key) and _conv_norm(m.v_gate, c, 2 * mid)
            and _conv_norm(m.proj, mid, c)) or abs(float(m.scale) - key ** -0.5) > 1e-12:
        raise Unmapped(f"iFormer's SHMA whose q, k, v_gate or proj are not 1x1 ConvNorms {c} -> {key}, {key}, "
                       f"{2 * mid} and {mid} -> {c}, or whose scale is not key_dim^-1/2")
    if type(m.gate_act) is not nn.Sigmoid or m.attn_drop.p:
        raise Unmapped("iFormer's SHMA with another gate than a sigmoid, or with dropout")
    return {"num_heads": 1, "key_dim": key, "value_dim": mid, "norm": "batchnorm", "gate": True}


def convert(converter: Any, node: Any, m: Any, args: list[Any]) -> Any:
    """The traced call m(x) as one multi_query_attention op (trace.py's converter emits it)."""
    x: Any = args[0] if args else None
    if len(args) != 1 or node.kwargs or not hasattr(x, "shape") or getattr(x, "channels_last", False) \
            or isinstance(x.shape, Tokens):
        raise Unmapped(f"timm's {type(m).__name__} called with other than one channels-first grid (no mask)")
    a = (read_shma if _qualname(m) == SHMA else read)(m, tuple(x.shape))
    shape = (a.get("out_features", x.shape[0]), *x.shape[1:])
    if tuple(int(s) for s in converter.values[node].shape[1:]) != shape:
        raise Unmapped(f"timm's {type(m).__name__} whose output is not the {list(shape)} of archcalc's "
                       "multi_query_attention")
    trainable = any(p.requires_grad for p in m.parameters())
    return converter.emit(node, str(node.target).rsplit(".", 1)[-1], "multi_query_attention", None, a, [x], True,
                          shape=shape, trainable=trainable)


__all__ = ["CLASSES", "convert", "read", "read_shma"]
