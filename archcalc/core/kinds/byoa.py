"""The attention layers of timm's byoanet models (bring-your-own-attention ResNets): halo attention (Vaswani et al.
2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones"), which with one block over the whole
grid and no halo is BoTNet's bottleneck attention (Srinivas et al. 2021, "Bottleneck Transformers for Visual
Recognition"), and the lambda layer (Bello 2021, "LambdaNetworks"): no attention map at all, a linear function (the
lambda) of the keys and values applied to each query, its own kind.

Both act on a channels-first C x H x W grid, as the convolutions around them do: q, k and v come from 1 x 1 convs,
each query attends to the keys of its block's window with 2-D relative position logits (q times a height and a
width table: Bello et al. 2019, "Attention Augmented Convolutional Networks"), there is no output projection, and
the heads' values are laid back on the grid. Its own kind rather than an argument of self_attention: the input and
output are grids, the keys come from windows (block + halo) rather than from every token, the position term is a
product of q with learned tables (self_attention's score bias is a gathered constant), there is no output
projection, and the stride subsamples the queries or pools the output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archcalc.core.kinds.activation import Dropout
from archcalc.core.kinds.base import (
    ACTIVATION,
    STATISTICS,
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    RFStep,
    Saved,
    Shape,
    is_tokens,
    register,
)


class HaloGeometry:
    """The blocks, windows and widths of one halo_attention on a C x H x W grid (per image)."""

    def __init__(self, a: Mapping[str, Any], inp: Shape) -> None:
        if is_tokens(inp) or len(inp) != 3:
            raise LayerError(f"halo_attention needs a 2-D grid (C x H x W); its input is {'x'.join(map(str, inp))}"
                             + (" tokens: use `to_grid` first" if is_tokens(inp) else ""))
        c, height, width = inp
        heads = a["num_heads"]
        self.c, self.height, self.width, self.heads = c, height, width, heads
        self.out = a["out_channels"] or c
        if self.out % heads:
            raise LayerError(f"halo_attention: {self.out} output channels are not divisible by num_heads {heads}")
        self.dk = a["key_dim"] or self.out // heads
        self.dv = self.out // heads
        self.k, self.v = heads * self.dk, self.out
        block, halo, stride = a["block_size"], a["halo_size"], a["stride"]
        self.block = (block, block) if block else (height, width)
        if height % self.block[0] or width % self.block[1]:
            raise LayerError(f"halo_attention: the {height}x{width} grid is not a whole number of "
                             f"{block}x{block} blocks")
        if stride not in (1, 2):
            raise LayerError(f"halo_attention stride {stride}: 1 or 2")
        # timm's HaloAttn: a stride that divides the block subsamples the queries (a strided 1 x 1 conv); otherwise,
        # with avg_down, or with one block over the grid (BottleneckAttn), a 2 x 2 average pool of the output.
        self.pool = stride == 2 and (a["avg_down"] or not block or block % stride != 0)
        self.query_stride = 1 if self.pool else stride
        self.halo = halo
        self.blocks = (height // self.block[0]) * (width // self.block[1])
        self.qh, self.qw = self.block[0] // self.query_stride, self.block[1] // self.query_stride
        self.win = (self.block[0] + 2 * halo, self.block[1] + 2 * halo)
        self.n = height * width
        self.nq = self.blocks * self.qh * self.qw  # query positions
        self.m = self.win[0] * self.win[1]  # keys per block
        self.weights = heads * self.nq * self.m  # attention weights
        self.grid_out = (height // self.query_stride // (2 if self.pool else 1),
                         width // self.query_stride // (2 if self.pool else 1))
        self.rel = (2 * self.win[0] - 1) + (2 * self.win[1] - 1)  # rows of the two tables

    def macs(self) -> tuple[int, int]:
        """Per-image MACs of the two 1 x 1 convs (q; k and v) and of the products (Q K^T, the relative logits, A V)."""
        convs = self.nq * self.c * self.k + self.n * self.c * (self.k + self.v)
        products = self.nq * self.m * self.k + self.nq * self.k * self.rel + self.nq * self.m * self.v
        return convs, products


@register
class HaloAttention(Kind):
    name = "halo_attention"
    synonyms = ("halo_attn", "bottleneck_attention", "bottleneck_attn", "botnet_attention", "mhsa_2d")
    prefix = "attn"
    doc = ("Multi-head attention within blocks of a C x H x W grid, keys and values from the block and a halo "
           "around it (HaloNet, Vaswani et al. 2021; timm's HaloAttn); `block_size: 0` (the default) is one block "
           "over the whole grid, BoTNet's bottleneck attention (Srinivas et al. 2021; timm's BottleneckAttn). q = "
           "1 x 1 conv (C -> K = heads x key_dim), k and v = 1 x 1 conv (C -> K + V), zero-padded by the halo and "
           "cut into windows of M = (block + 2 halo)^2 positions; per head softmax(Q K^T / sqrt(key_dim) + R) V, "
           "R the relative logits q . T_h[dy] + q . T_w[dx] from two (2 w - 1) x key_dim tables; the heads' values "
           "(V = out channels) laid back on the grid, no output projection. `stride: 2` subsamples the queries "
           "(a strided q conv) when it divides the block, else (or with avg_down, or one block) average-pools the "
           "output 2 x 2. Params C K + C (K + V) (+ 2K + V with bias) + key_dim ((2 w_h - 1) + (2 w_w - 1)). MACs "
           "per image, Nq query positions: Nq C K + N C (K + V) + Nq M K + Nq K ((2 w_h - 1) + (2 w_w - 1)) + "
           "Nq M V. FlopCounterMode counts the convs (convolution) and the products (bmm, mm), fvcore the same "
           "(conv, matmul); neither counts the scale, the additions, the softmax or the pool.")
    full_rule = ("2 per MAC, the q and kv biases per position (Nq K + N (K + V)), per attention weight 1 for the "
                 "scale, 2 for the relative logits' additions and 3 for the softmax, and the pool's 5 per output "
                 "element")
    autocast = "mixed"
    step_unfollowed = "its backward (the windows', relative logits' and products' gradients) is not modelled yet"
    args = (
        Arg("num_heads", "int", doc="number of heads; divides the output channels", aliases=("heads",), minimum=1),
        Arg("out_channels", "int", 0, "output channels: the heads' values (0: the input's)", aliases=("out",),
            minimum=0),
        Arg("key_dim", "int", 0, "q and k channels per head (0: out_channels / num_heads; timm's dim_head)",
            aliases=("dim_head",), minimum=0),
        Arg("block_size", "int", 0, "query blocks of block_size x block_size positions (0: one block over the "
            "whole grid, BoTNet's bottleneck attention)", minimum=0),
        Arg("halo_size", "int", 0, "positions around each block that its queries also see", aliases=("halo",),
            minimum=0),
        Arg("stride", "int", 1, "2: subsample the queries (a strided q conv) when 2 divides the block, else "
            "average-pool the output 2 x 2", minimum=1),
        Arg("avg_down", "bool", False, "with stride 2, average-pool the output even when 2 divides the block"),
        Arg("bias", "bool", False, "learn biases in the q and kv convs (timm's qkv_bias)", aliases=("qkv_bias",)),
    )
    examples = (
        Example((8, 12, 12), {"num_heads": 2, "block_size": 4, "halo_size": 1}),
        Example((8, 6, 10), {"num_heads": 2, "out_channels": 16}),
        Example((4, 12, 12), {"num_heads": 2, "out_channels": 8, "key_dim": 2, "block_size": 4, "halo_size": 1,
                              "stride": 2}),
        Example((4, 6, 10), {"num_heads": 1, "out_channels": 8, "stride": 2, "bias": True}),
        Example((4, 12, 12), {"num_heads": 2, "block_size": 4, "halo_size": 2, "stride": 2, "avg_down": True,
                              "key_dim": 4}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        g = HaloGeometry(a, inp)
        return (g.out, *g.grid_out)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        g = HaloGeometry(a, inp)
        macs = sum(g.macs())
        bias = 2 * g.k + g.v if a["bias"] else 0
        params = g.c * g.k + g.c * (g.k + g.v) + bias + g.dk * g.rel
        biases = g.nq * g.k + g.n * (g.k + g.v) if a["bias"] else 0
        pool = 5 * g.out * g.grid_out[0] * g.grid_out[1] if g.pool else 0
        return Cost(params=params, macs=macs, fvcore=macs, full=2 * macs + biases + 6 * g.weights + pool)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # archcalc.torch.modules_byoa.HaloAttention registers the two tables first, then q's and kv's convs. The
        # input's channels follow from the count; one block over the grid has tables of the input grid's size (the
        # output's, or twice it, or one more, after the pool).
        heads, v, halo = a["num_heads"], out[0], a["halo_size"]
        dk = a["key_dim"] or v // heads
        k = heads * dk
        bias = 2 * k + v if a["bias"] else 0
        if a["block_size"]:
            windows = [(a["block_size"] + 2 * halo,) * 2]
        else:
            f = 2 if a["stride"] == 2 else 1
            windows = [(hh + 2 * halo, ww + 2 * halo) for hh in (out[1] * f, out[1] * f + f - 1)
                       for ww in (out[2] * f, out[2] * f + f - 1)]
        tables: tuple[int, ...] = ()
        c = 0
        for wh, ww in windows:
            tables = ((2 * wh - 1) * dk, (2 * ww - 1) * dk)
            rest = params - bias - sum(tables)
            if rest >= 0 and rest % (2 * k + v) == 0:
                c = rest // (2 * k + v)
                break
        convs = (c * k, k, c * (k + v), k + v) if a["bias"] else (c * k, c * (k + v))
        return tables + convs

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        g = HaloGeometry(a, inp)
        if not a["block_size"]:
            return [RFStep(whole=True), RFStep(whole=True)]
        # A query sees its block's window, whatever its place in the block: the widest span is the window; a 2 x 2
        # pool whose pair straddles two blocks (an odd block) sees both windows (window + block).
        steps = []
        for win, block in zip(g.win, g.block):
            span = win + (block if g.pool and block % 2 else 0)
            steps.append(RFStep(kernel=span, stride=2 if a["stride"] == 2 else 1))
        return steps

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules_byoa.HaloAttention), measured with saved_tensors_hooks
        # (tests/test_kind_rules.py): the input (for the convs' weights), q laid out per block (read by Q K^T and
        # the width logits' product) and its transposed copy (the height logits' product; a view when a block has
        # one row or column of queries), the windows of k and v (one tensor: blocks x M x (K + V)), the softmax
        # weights, and with the pool its input.
        g = HaloGeometry(a, inp)
        q = g.nq * g.k
        transposed = q if g.qh > 1 and g.qw > 1 else 0
        windows = g.blocks * g.m * (g.k + g.v)
        pooled = g.nq * g.v if g.pool else 0
        return Saved(input_for_params=True,
                     extra=((q + transposed + windows + g.weights + pooled, ACTIVATION),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # op by op: q's conv and its copy per block (2Q); kv's conv, its padded copy and the windows' copy; then, q
        # and the windows kept, the scores (S) and either relative logits' product and its two pads (the padded
        # rows (2 w - 1) + 1 wide, then the rows shifted: (cols + 1) x (2 w - 1) per row of queries), or the
        # softmax (2S), or the output's copy beside A V (2 x Nq V). Less the output, which the engine counts.
        g = HaloGeometry(a, inp)
        q = g.nq * g.k
        kv_grid = g.n * (g.k + g.v)
        padded = (g.height + 2 * g.halo) * (g.width + 2 * g.halo) * (g.k + g.v) if g.halo else 0
        windows = g.blocks * g.m * (g.k + g.v)
        base = q + windows + g.weights
        moments = [2 * q, q + kv_grid + padded, q + (padded or kv_grid) + windows, base + g.weights,
                   base + 2 * g.nq * g.v]
        per_row = g.heads * g.blocks
        for rows, cols, w, copy in ((g.qh, g.qw, g.win[1], 0), (g.qw, g.qh, g.win[0], q)):
            product = per_row * rows * cols * (2 * w - 1)
            pad1 = per_row * rows * cols * 2 * w
            pad2 = per_row * rows * (cols + 1) * (2 * w - 1)
            moments += [base + copy + product, base + product + pad1, base + pad1 + pad2]
        return ((max(moments) - g.out * g.grid_out[0] * g.grid_out[1], ACTIVATION),)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size (FlopCounterMode's conv and mm rules); only the convs' input
        # gradients are skipped when the input needs none.
        g = HaloGeometry(a, inp)
        convs, products = g.macs()
        batch = macs // (convs + products)
        return convs * batch, (convs + 2 * products) * batch

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        g = HaloGeometry(a, inp)
        where = (f"{g.blocks} blocks of {g.block[0]}x{g.block[1]}, halo {g.halo}" if a["block_size"]
                 else "the whole grid")
        return f"{g.heads} heads, {where}"


class LambdaGeometry:
    """The widths of one lambda_layer on a C x H x W grid (per image)."""

    def __init__(self, a: Mapping[str, Any], inp: Shape) -> None:
        if is_tokens(inp) or len(inp) != 3:
            raise LayerError(f"lambda_layer needs a 2-D grid (C x H x W); its input is {'x'.join(map(str, inp))}")
        c, height, width = inp
        heads, r = a["num_heads"], a["r"]
        if c % heads:
            raise LayerError(f"lambda_layer: {c} channels are not divisible by num_heads {heads}")
        if r and r % 2 == 0:
            raise LayerError(f"lambda_layer r {r}: the position lambdas' conv needs an odd size (0: a relative "
                             "position embedding)")
        if a["stride"] not in (1, 2):
            raise LayerError(f"lambda_layer stride {a['stride']}: 1 or 2")
        self.c, self.height, self.width, self.heads, self.r = c, height, width, heads, r
        self.dk, self.dv = a["key_dim"], c // heads
        self.k = heads * self.dk
        self.m = height * width
        self.pool = a["stride"] == 2
        self.grid_out = (height // 2, width // 2) if self.pool else (height, width)
        self.qkv = self.k + self.dk + self.dv  # the qkv conv's output channels

    def macs(self) -> tuple[int, int]:
        """Per-image MACs of the qkv conv and of the rest (the content lambda and its product with q, the position
        lambdas (a conv3d or a product with the gathered embedding) and their product with q)."""
        m, dk, dv = self.m, self.dk, self.dv
        position = m * dv * dk * self.r * self.r if self.r else m * m * dk * dv
        return m * self.c * self.qkv, m * dk * dv + 2 * self.heads * m * dk * dv + position


@register
class LambdaLayer(Kind):
    name = "lambda_layer"
    synonyms = ("lambda", "lambda_conv", "lambdanet")
    prefix = "lambda"
    doc = ("A lambda layer on a C x H x W grid (LambdaNetworks, Bello 2021; timm's LambdaLayer): one 1 x 1 conv "
           "makes q (heads x key_dim), k (key_dim) and v (dv = C / heads); q and v are batch-normed, k "
           "softmax-normalised over the M = H W positions. The content lambda K V (key_dim x dv) is shared by every "
           "position; the position lambdas (key_dim x dv per position) come from a r x r x 1 conv3d over (H, W, dv) "
           "with bias, or with `r: 0` from a learned (2H - 1) x (2W - 1) x key_dim relative embedding gathered by "
           "an int64 index (2 x M x M buffer) and multiplied by v; each head's q times both lambdas, the two "
           "added: C channels. `stride: 2` average-pools the output 2 x 2. Params C (K + key_dim + dv) (+ as many "
           "with bias) + 2 (K + dv) (the norms) + key_dim r^2 + key_dim (or (2H - 1)(2W - 1) key_dim), K = heads x "
           "key_dim. MACs per image: M C (K + key_dim + dv) + M key_dim dv + 2 heads M key_dim dv + M dv key_dim "
           "r^2 (or M^2 key_dim dv). FlopCounterMode counts the convs and the products (convolution, bmm), fvcore "
           "the same plus 2 per element of the two batch norms; neither counts the softmax, the gather or the sum.")
    full_rule = ("2 per MAC, the qkv bias per position, 4 per element of each batch norm, 3 per element of k for the "
                 "softmax, the conv3d's bias per element of the position lambdas, the sum of the two outputs (C per "
                 "position), and the pool's 5 per output element")
    autocast = "mixed"
    step_unfollowed = "its backward (the lambdas' and the norms' gradients) is not modelled yet"
    args = (
        Arg("num_heads", "int", doc="number of query heads; divides the channels (v has C / heads)",
            aliases=("heads",), minimum=1),
        Arg("key_dim", "int", 16, "q and k channels per head (timm's dim_head)", aliases=("dim_head",), minimum=1),
        Arg("r", "int", 9, "the position lambdas' conv size, odd (0: a relative position embedding over the grid)",
            minimum=0),
        Arg("stride", "int", 1, "2: average-pool the output 2 x 2", minimum=1),
        Arg("bias", "bool", False, "learn a bias in the qkv conv (timm's qkv_bias)", aliases=("qkv_bias",)),
    )
    examples = (
        Example((8, 6, 6), {"num_heads": 2, "key_dim": 4, "r": 3}),
        Example((8, 6, 6), {"num_heads": 4, "key_dim": 4, "r": 3, "stride": 2}),
        Example((8, 6, 6), {"num_heads": 2, "key_dim": 4, "r": 0}),
        Example((8, 4, 6), {"num_heads": 1, "key_dim": 3, "r": 0, "stride": 2, "bias": True}),
        Example((12, 4, 6), {"num_heads": 2, "key_dim": 3, "r": 5}),
    )

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        g = LambdaGeometry(a, inp)
        return (g.c, *g.grid_out)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        g = LambdaGeometry(a, inp)
        macs = sum(g.macs())
        position = g.dk * g.r * g.r + g.dk if g.r else (2 * g.height - 1) * (2 * g.width - 1) * g.dk
        params = g.c * g.qkv + (g.qkv if a["bias"] else 0) + 2 * (g.k + g.dv) + position
        norms = g.m * (g.k + g.dv)
        full = (2 * macs + (g.m * g.qkv if a["bias"] else 0) + 4 * norms + 3 * g.dk * g.m
                + (g.m * g.dk * g.dv if g.r else 0) + g.c * g.m
                + (5 * g.c * g.grid_out[0] * g.grid_out[1] if g.pool else 0))
        return Cost(params=params, buffers=2 * (g.k + g.dv), int_buffers=2 + (0 if g.r else 2 * g.m * g.m),
                    macs=macs, fvcore=macs + 2 * norms, full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # archcalc.torch.modules_byoa.LambdaLayer: the embedding (r: 0) first, then qkv's weight (and bias), the two
        # norms' weights and biases, the conv3d's weight and bias. The input's channels are the output's.
        heads, dk, r = a["num_heads"], a["key_dim"], a["r"]
        c = out[0]
        k, dv = heads * dk, c // heads
        qkv = k + dk + dv
        convs = (c * qkv, qkv) if a["bias"] else (c * qkv,)
        norms = (k, k, dv, dv)
        if r:
            return (*convs, *norms, dk * r * r, dk)
        return (params - sum(convs) - sum(norms), *convs, *norms)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # The content lambda sums over every position (k is normalised over all of them): every output depends on
        # the whole input.
        return [RFStep(whole=True), RFStep(whole=True)]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules_byoa.LambdaLayer, timm's order of ops), measured with
        # saved_tensors_hooks (tests/test_kind_rules.py): the input (for qkv's weight), qkv's output (the norms'
        # input: q, k and v are views of it), the normed q (for the content product) and its copy laid out per
        # position (for the position product), the normed v, the softmax of k, the content lambda as q's product
        # reads it (heads x key_dim x dv), the position lambdas as q's product reads them (heads x M x key_dim x dv),
        # with r: 0 the gathered embedding and v laid out per query (M^2 (key_dim + dv)), with the pool its input;
        # and per batch the norms' batch mean and inverse std (2 per channel).
        g = LambdaGeometry(a, inp)
        m, dk, dv, h = g.m, g.dk, g.dv, g.heads
        kept = (m * g.qkv + 2 * m * g.k + m * dv + dk * m + h * dk * dv + h * m * dk * dv
                + (0 if g.r else m * m * (dk + dv)) + (g.c * m if g.pool else 0))
        return Saved(input_for_params=True, extra=((kept, ACTIVATION),),
                     per_batch=((2 * (g.k + dv), STATISTICS),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # op by op: qkv's output beside the normed q and v and k's softmax; the content lambda, its copy over the
        # heads (several heads) and the content output; then, those four kept, the position lambdas (with r: 0 the
        # embedding and v laid out per query beside them), q's copy per position, the lambdas' copy over the heads
        # (with r: 0 several heads only) and the position output; or the sum and its copy (several heads) and the
        # pool. Less the output, which the engine counts; the gathered embedding is `transient_once`.
        g = LambdaGeometry(a, inp)
        m, dk, dv, h, cm = g.m, g.dk, g.dv, g.heads, g.c * g.m
        q, v, k, lam = m * g.k, m * dv, dk * m, m * dk * dv
        base = q + v + k + cm  # the normed q and v, k's softmax, the content output
        spread = h * lam if g.r or h > 1 else 0
        moments = [m * g.qkv + q + v + k, q + v + k + dk * dv + (h * dk * dv if h > 1 else 0) + cm,
                   base + lam + q + spread + cm, base + lam + cm + cm + (cm if h > 1 else 0),
                   base + lam + cm + cm + (g.c * g.grid_out[0] * g.grid_out[1] if g.pool else 0)]
        if not g.r:
            moments.append(base + m * m * (dk + dv) + lam)
        return ((max(moments) - g.c * g.grid_out[0] * g.grid_out[1], ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # With r: 0, the embedding gathered by the index (M x M x key_dim, whatever the batch), alive to the end.
        g = LambdaGeometry(a, inp)
        return () if g.r else ((g.m * g.m * g.dk, ACTIVATION),)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size; only qkv's input gradient is skipped when the input needs
        # none.
        g = LambdaGeometry(a, inp)
        qkv, rest = g.macs()
        batch = macs // (qkv + rest)
        return qkv * batch, (qkv + 2 * rest) * batch

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        g = LambdaGeometry(a, inp)
        where = f"position lambdas from a {g.r}x{g.r} conv" if g.r else "a relative position embedding"
        return f"{g.heads} heads of {g.dk}, {where}"


@register
class BilinearAttention(Kind):
    name = "bilinear_attention"
    synonyms = ("bilinear_attn_transform", "bat", "bilinear_attn")
    prefix = "bat"
    doc = ("BAT's bilinear attention transform on a C x H x W grid (Zheng et al. 2020, \"Learning Non-Local "
           "Spatial Correlations to Cope with Long-Range Dependencies\"; timm's BilinearAttnTransform, in "
           "bat_resnext26ts): a 1 x 1 conv to `groups` channels (no bias; batch norm, ReLU); max pools of it to "
           "b x 1 and 1 x b (b = block_size); a (b, 1) and a (1, b) conv (bias) to b^2 per group, a sigmoid, each "
           "normalised to sum to 1 along a row or a column: two b x b matrices per group, repeated over the "
           "group's C / groups channels and blown up to H x H and W x W (each entry times a t x t identity, t = "
           "H / b or W / b); per channel y = P x Q (two matmuls); a 1 x 1 conv (no bias; batch norm, ReLU). H and W "
           "multiples of b. Params C g + 2g + 2 (b^3 g^2 + b^2 g) + C^2 + 2C (buffers 2g + 2C and two counters). "
           "MACs per image: H W C g + 2 b^3 g^2 + C H^2 W + C H W^2 + H W C^2. FlopCounterMode counts the convs "
           "and the two products (convolution, bmm), fvcore the same plus 2 per element of the two batch norms; "
           "neither counts the pools, the sigmoids, the normalisation or the identity's products.")
    full_rule = ("2 per MAC; each batch norm 4 and each ReLU 1 per element; the max pools' comparisons (H W / b - 1 "
                 "per output); the two convs' biases, sigmoids (3) and divisions per element of the b x b "
                 "matrices, their sums' b additions per row; the identity's multiplications (C H^2 and C W^2 where "
                 "t > 1)")
    autocast = "mixed"
    step_unfollowed = "its backward (the two products', the pools' and the norms' gradients) is not modelled yet"
    args = (
        Arg("groups", "int", 2, "channels of the first 1 x 1 conv: one pair of b x b matrices each; divides C",
            minimum=1),
        Arg("block_size", "int", 7, "b: the size of the mixing matrices; divides H and W", minimum=1),
    )
    examples = (
        Example((8, 8, 12), {"groups": 2, "block_size": 4}),
        Example((6, 6, 6), {"groups": 3, "block_size": 3}),
        Example((8, 4, 4), {"groups": 4, "block_size": 4}),
        Example((4, 6, 9), {"groups": 1, "block_size": 3}),
    )

    @staticmethod
    def geometry(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int, int, int]:
        if is_tokens(inp) or len(inp) != 3:
            raise LayerError(f"bilinear_attention needs a 2-D grid (C x H x W); its input is "
                             f"{'x'.join(map(str, inp))}")
        c, height, width = inp
        g, b = a["groups"], a["block_size"]
        if c % g:
            raise LayerError(f"bilinear_attention: {c} channels are not divisible by groups {g}")
        if height % b or width % b:
            raise LayerError(f"bilinear_attention: the {height}x{width} grid is not a multiple of block_size {b}")
        return c, height, width, g, b

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.geometry(a, inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c, height, width, g, b = self.geometry(a, inp)
        hw = height * width
        convs = hw * c * g + 2 * b ** 3 * g * g + hw * c * c
        macs = convs + c * height * height * width + c * height * width * width
        matrices = b * b * g  # elements of one set of b x b matrices
        identity = (c * height * height if height > b else 0) + (c * width * width if width > b else 0)
        full = (2 * macs + 5 * hw * (g + c) + 2 * g * b * (hw // b - 1) + 2 * matrices * (1 + 3 + 1)
                + 2 * g * b * b + identity)
        return Cost(params=c * g + 2 * g + 2 * (b ** 3 * g * g + matrices) + c * c + 2 * c,
                    buffers=2 * (g + c), int_buffers=2, macs=macs, fvcore=macs + 2 * hw * (g + c), full=full)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        # archcalc.torch.modules_byoa.BilinearAttention: conv1, its norm, conv_p and conv_q (weight, bias), conv2,
        # its norm.
        c, g, b = out[0], a["groups"], a["block_size"]
        return (c * g, g, g, b ** 3 * g * g, b * b * g, b ** 3 * g * g, b * b * g, c * c, c, c)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # The matrices come from max pools over the whole grid: every output depends on every input.
        return [RFStep(whole=True), RFStep(whole=True)]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules_byoa.BilinearAttention, timm's order of ops), measured with
        # saved_tensors_hooks (tests/test_kind_rules.py): the input (conv1's and the first product's), conv1's
        # output and its norm's (ReLU'd in place: G = g H W each), the pools' outputs and int64 indices, the
        # sigmoids and the sums (per group b^2 and b), the blown-up matrices (C H^2, C W^2), the first product,
        # conv2's input and output and its norm's (C H W each); per batch the norms' statistics and the identities.
        c, height, width, g, b = self.geometry(a, inp)
        hw = height * width
        kept = 4 * c * hw + c * height * height + c * width * width + 2 * g * hw + 2 * g * b * b + 4 * g * b
        eyes = ((height // b) ** 2 if height > b else 0) + ((width // b) ** 2 if width > b else 0)
        return Saved(input_for_params=True, extra=((kept, ACTIVATION), (2 * g * b, 8)),
                     per_batch=((2 * (g + c), STATISTICS), (eyes, ACTIVATION)))

    def saved_for_params(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # When the input needs no gradient the first product keeps x alone (for P's gradient), not P (C H^2):
        # measured by tests/test_validate.py.
        c, height = inp[0], inp[1]
        full = self.saved(a, inp, out)
        (kept, code), *rest = full.extra
        return full._replace(extra=((kept - c * height * height, code), *rest))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py;
        # its batch norms' per-channel scratch aside), op by op, with the two matrices repeated over the channels
        # (2 C b^2) and conv1's output (g H W) alive from their making: conv1's norm; blowing P up (the identity's
        # product and its copies: two C H^2 at once); the first product; blowing Q up beside it; the second
        # product; conv2 and its norm. Less the output.
        c, height, width, g, b = self.geometry(a, inp)
        hw, chw = height * width, c * height * width
        base = 2 * c * b * b + g * hw
        p = c * height * height
        q = c * width * width
        moments = [2 * g * hw, base + (2 * p if height > b else 0), base + (p if height > b else 0) + chw,
                   base + chw + (2 * q if width > b else 0), base + chw + (q if width > b else 0) + chw,
                   base + 3 * chw]
        return ((max(moments) - chw, ACTIVATION),)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size; when the input needs no gradient, conv1's input gradient
        # and the first product's gradient of x are skipped.
        c, height, width, g, _ = self.geometry(a, inp)
        per = self.cost(a, inp, inp).macs
        batch = macs // per
        skipped = height * width * c * g + c * height * height * width
        return skipped * batch, (2 * per - skipped) * batch

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"{a['groups']} groups of {a['block_size']}x{a['block_size']} matrices"


@register
class ChannelDropout(Dropout):
    name = "channel_dropout"
    synonyms = ("spatial_dropout",)
    examples = (Example((6, 4, 4), {"p": 0.3}), Example((4, 3, 5), {"p": 0.0}), Example((8, 2, 2)))
    doc = ("Randomly zeroes whole channels in training (nn.Dropout2d on a C x H x W grid, as after BAT's attention "
           "in timm's bat_resnext26ts); the identity at inference, where it returns its input unchanged (no copy).")
    torch_class = "Dropout2d"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if is_tokens(inp) or len(inp) != 3:
            raise LayerError(f"channel_dropout needs a 2-D grid (C x H x W); its input is {'x'.join(map(str, inp))}")
        return super().output(a, inp, warn)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # torch's feature dropout is a composite on every device: a float noise of one value per channel (B x C x 1
        # x 1), kept by the multiplication.
        return Saved(extra=((inp[0], ACTIVATION),)) if a["p"] > 0 else Saved()

    def untracked_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((inp[0], ACTIVATION),) if a["p"] > 0 else ()
