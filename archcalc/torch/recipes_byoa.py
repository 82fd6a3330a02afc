"""The rules that read timm's byoanet attention modules as archcalc's kinds (archcalc.core.kinds.byoa), joined to
archcalc.torch.recipes' NAMED_MODULES by the importer's mapping (the recipe that builds each kind's module, and the
rule that reads archcalc's own module back, are in recipes, beside the others)."""

from __future__ import annotations

from typing import Any

from torch import nn

from archcalc.torch.recipes import Mapped, ModuleRule, Unmapped


def _one_by_one(conv: Any, stride: int = 1) -> bool:
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (stride,) * 2
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1)


def _pool(m: Any) -> bool:
    """timm's `pool`: nn.Identity, or the 2 x 2 average pool of a strided attention."""
    pool = m.pool
    if isinstance(pool, nn.Identity):
        return False
    if (isinstance(pool, nn.AvgPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and not pool.ceil_mode and pool.count_include_pad
            and pool.divisor_override is None):
        return True
    raise Unmapped(f"{type(m).__name__} whose pool is not a 2 x 2 average pool (halo_attention's stride 2)")


def _heads(m: Any, c: int) -> dict[str, Any]:
    heads, dk, dv = int(m.num_heads), int(m.dim_head_qk), int(m.dim_head_v)
    if getattr(m, "scale_pos_embed", False):
        raise Unmapped(f"{type(m).__name__} with scale_pos_embed (the scale applied to the relative logits too): "
                       "halo_attention scales Q K^T alone")
    args: dict[str, Any] = {"num_heads": heads}
    if heads * dv != c:
        args["out_channels"] = heads * dv
    if dk != dv:
        args["key_dim"] = dk
    return args


def _tables(m: Any, dk: int, wh: int, ww: int) -> None:
    pos = m.pos_embed
    if tuple(pos.height_rel.shape) != (2 * wh - 1, dk) or tuple(pos.width_rel.shape) != (2 * ww - 1, dk):
        raise Unmapped(f"{type(m).__name__} whose relative position tables are not (2 x {wh} - 1) and "
                       f"(2 x {ww} - 1) rows of {dk} (the grid or window in force)")


def read_bottleneck_attn(m: Any, inp: tuple[int, ...]) -> Mapped:
    """timm's BottleneckAttn (BoTNet, timm/layers/bottleneck_attn.py) as halo_attention with one block over the
    grid: a 1 x 1 qkv conv (C -> 2K + V, laid out q, k, v), the relative logits of PosEmbedRel from tables of the
    grid's size, softmax, A V laid back on the grid, and the 2 x 2 average pool of a strided one."""
    if len(inp) != 3:
        raise Unmapped("BottleneckAttn on a tensor that is not a C x H x W grid")
    c, height, width = inp
    args = _heads(m, c)
    k, v = int(m.dim_out_qk), int(m.dim_out_v)
    if not _one_by_one(m.qkv) or m.qkv.in_channels != c or m.qkv.out_channels != 2 * k + v:
        raise Unmapped(f"BottleneckAttn whose qkv is not a 1 x 1 conv of {c} -> {2 * k + v} channels")
    _tables(m, int(m.dim_head_qk), height, width)
    if _pool(m):
        args["stride"] = 2
    if m.qkv.bias is not None:
        args["bias"] = True
    return Mapped("halo_attention", args)


def read_halo_attn(m: Any, inp: tuple[int, ...]) -> Mapped:
    """timm's HaloAttn (HaloNet, timm/layers/halo_attn.py) as halo_attention: q from a 1 x 1 conv (strided by the
    block stride), k and v from another (laid out per head), the windows of block + 2 halo, PosEmbedRel's relative
    logits, softmax, A V folded back on the grid, and the 2 x 2 average pool of a strided one that does not
    subsample its queries."""
    if len(inp) != 3:
        raise Unmapped("HaloAttn on a tensor that is not a C x H x W grid")
    c = inp[0]
    args = _heads(m, c)
    k, v = int(m.dim_out_qk), int(m.dim_out_v)
    block, halo, block_stride = int(m.block_size), int(m.halo_size), int(m.block_stride)
    if (not _one_by_one(m.q, block_stride) or not _one_by_one(m.kv) or m.q.in_channels != c
            or m.kv.in_channels != c or m.q.out_channels != k or m.kv.out_channels != k + v
            or (m.q.bias is None) != (m.kv.bias is None)):
        raise Unmapped(f"HaloAttn whose q and kv are not 1 x 1 convs of {c} -> {k} and {c} -> {k + v} channels")
    _tables(m, int(m.dim_head_qk), block + 2 * halo, block + 2 * halo)
    args.update(block_size=block, **({"halo_size": halo} if halo else {}))
    if _pool(m):
        args["stride"] = 2
        if block % 2 == 0:
            args["avg_down"] = True
    elif block_stride == 2:
        args["stride"] = 2
    if m.q.bias is not None:
        args["bias"] = True
    return Mapped("halo_attention", args)


def _affine_norm(norm: Any, channels: int) -> bool:
    return (isinstance(norm, nn.BatchNorm2d) and norm.num_features == channels and norm.affine
            and norm.track_running_stats)


def read_lambda_layer(m: Any, inp: tuple[int, ...]) -> Mapped:
    """timm's LambdaLayer (timm/layers/lambda_layer.py) as lambda_layer: a 1 x 1 qkv conv (C -> heads dk + dk + dv),
    batch norms of q and v (affine, running statistics), k's softmax over the positions, the content lambda, the
    position lambdas from a Conv3d(1, dk, (r, r, 1)) with bias or from the relative embedding of the grid, their
    products with q, the sum laid back on the grid, the 2 x 2 average pool of a strided one."""
    if len(inp) != 3:
        raise Unmapped("LambdaLayer on a tensor that is not a C x H x W grid")
    c, height, width = inp
    heads, dk, dv = int(m.num_heads), int(m.dim_qk), int(m.dim_v)
    if heads * dv != c:
        raise Unmapped(f"LambdaLayer whose output ({heads} x {dv} channels) is not its input's {c}")
    if (not _one_by_one(m.qkv) or m.qkv.in_channels != c or m.qkv.out_channels != heads * dk + dk + dv
            or not _affine_norm(m.norm_q, heads * dk) or not _affine_norm(m.norm_v, dv)):
        raise Unmapped(f"LambdaLayer whose qkv conv or norms are not lambda_layer's on {c} channels")
    conv = m.conv_lambda
    r = 0
    if conv is not None:
        r = int(conv.kernel_size[0])
        if (not isinstance(conv, nn.Conv3d) or conv.in_channels != 1 or conv.out_channels != dk
                or tuple(conv.kernel_size) != (r, r, 1) or tuple(conv.padding) != (r // 2, r // 2, 0)
                or tuple(conv.stride) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or conv.bias is None
                or r % 2 == 0):
            raise Unmapped("LambdaLayer whose position conv is not a Conv3d(1, dk, (r, r, 1)) with bias, padded "
                           "to keep the grid")
    elif (tuple(m.pos_emb.shape) != (2 * height - 1, 2 * width - 1, dk)
          or tuple(m.rel_pos_indices.shape) != (2, height * width, height * width)):
        raise Unmapped(f"LambdaLayer whose relative embedding or index is not the {height}x{width} grid's")
    args: dict[str, Any] = {"num_heads": heads, "key_dim": dk, "r": r}
    if _pool(m):
        args["stride"] = 2
    if m.qkv.bias is not None:
        args["bias"] = True
    return Mapped("lambda_layer", args)


def _conv_norm_relu(m: Any, cin: int, cout: int) -> bool:
    """timm's ConvNormAct: a 1 x 1 conv without bias, then BatchNormAct2d (affine, running statistics, no drop)
    with a ReLU."""
    conv: Any = getattr(m, "conv", None)
    bn: Any = getattr(m, "bn", None)
    return (_one_by_one(conv) and conv.in_channels == cin and conv.out_channels == cout and conv.bias is None
            and _affine_norm(bn, cout) and isinstance(getattr(bn, "act", None), nn.ReLU)
            and isinstance(getattr(bn, "drop", nn.Identity()), nn.Identity)
            and isinstance(getattr(m, "aa", None) or nn.Identity(), nn.Identity))


def read_bilinear_attn(m: Any, inp: tuple[int, ...]) -> Mapped:
    """timm's BilinearAttnTransform (BAT, timm/layers/non_local_attn.py) as bilinear_attention: ConvNormAct to the
    groups, the (b, 1) and (1, b) convs with bias to b^2 per group, ConvNormAct back to C."""
    if len(inp) != 3:
        raise Unmapped("BilinearAttnTransform on a tensor that is not a C x H x W grid")
    c = inp[0]
    g, b = int(m.groups), int(m.block_size)
    for conv, kernel in ((m.conv_p, (b, 1)), (m.conv_q, (1, b))):
        if (not isinstance(conv, nn.Conv2d) or conv.in_channels != g or conv.out_channels != b * b * g
                or tuple(conv.kernel_size) != kernel or tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (0, 0)
                or tuple(conv.dilation) != (1, 1) or conv.groups != 1 or conv.bias is None):
            raise Unmapped(f"BilinearAttnTransform whose conv_p or conv_q is not a {kernel} conv of {g} -> {b * b * g}")
    if not _conv_norm_relu(m.conv1, c, g) or not _conv_norm_relu(m.conv2, c, c):
        raise Unmapped("BilinearAttnTransform whose conv1 or conv2 is not a 1 x 1 conv, batch norm and ReLU")
    return Mapped("bilinear_attention", {"groups": g, "block_size": b})


NAMED_MODULES: dict[str, ModuleRule] = {
    "timm.layers.bottleneck_attn.BottleneckAttn": read_bottleneck_attn,
    "timm.layers.halo_attn.HaloAttn": read_halo_attn,
    "timm.layers.lambda_layer.LambdaLayer": read_lambda_layer,
    "timm.layers.non_local_attn.BilinearAttnTransform": read_bilinear_attn,
}

