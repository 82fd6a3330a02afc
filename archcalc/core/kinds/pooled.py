"""Attention over pooled tokens: the multiscale attention of MViT (Fan et al. 2021, "Multiscale Vision
Transformers"; Li et al. 2022, "MViTv2: Improved Multiscale Vision Transformers for Classification and Detection";
torchvision.models.video.mvit.MultiscaleAttention), and the token pooling of its shortcut.

The tokens lie on a grid (`Tokens.grid`, T x H x W for a video), optionally after one class token, which the pooling
leaves out and puts back first. q, k and v are each pooled on the grid by a depthwise convolution (kernel k, stride
s, padding k // 2, no bias; its channels are one head's, the kernel shared by the heads) and a layer norm over a
head's channels; the output has as many tokens as the pooled q, on q's grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
    Tokens,
    numel,
    per_axis,
    register,
)
from archcalc.core.kinds.norm import normalize_full
from archcalc.core.kinds.tokens import token_input


def class_tokens(kind: str, inp: Shape) -> int:
    """How many class tokens come before the grid's tokens: N = 1 + the grid (MViT's class token) or the grid alone."""
    tokens = token_input(kind, inp)
    extra = tokens[0] - numel(tokens.grid)
    if extra not in (0, 1):
        raise LayerError(f"{kind} pools the tokens on their grid ({'x'.join(map(str, tokens.grid))} = "
                         f"{numel(tokens.grid)} tokens, after at most one class token), but its input has "
                         f"{tokens[0]} tokens")
    return extra


def pooled_grid(kind: str, grid: Sequence[int], kernel: Any, stride: Any, padding: Any = None
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Kernel, stride, padding (default kernel // 2) per axis and the pooled grid: (W + 2P - K) // S + 1."""
    rank = len(grid)
    if rank not in (1, 2, 3):
        raise LayerError(f"{kind} pools a grid of 1 to 3 axes; the tokens' grid has {rank}")
    k = per_axis(kernel, rank, "kernel")
    s = per_axis(stride, rank, "stride")
    p = tuple(ki // 2 for ki in k) if padding is None else per_axis(padding, rank, "padding")
    out = []
    for w, ki, si, pi in zip(grid, k, s, p):
        if 2 * pi > ki:
            raise LayerError(f"{kind} padding {pi} is more than half the kernel {ki}")
        if w + 2 * pi < ki:
            raise LayerError(f"{kind} kernel {ki} is larger than the padded grid {w + 2 * pi}")
        out.append((w + 2 * pi - ki) // si + 1)
    return k, s, p, tuple(out)


@register
class PooledAttention(Kind):
    name = "pooled_attention"
    synonyms = ("multiscale_attention", "mvit_attention", "pooling_attention")
    prefix = "attn"
    doc = ("Multi-head attention over pooled q, k, v (MViT's MultiscaleAttention, Fan et al. 2021; MViTv2, Li et "
           "al. 2022): a linear layer makes q, k, v (C -> 3D, bias), each is pooled on the tokens' grid by a "
           "depthwise conv (a head's d = D / heads channels, kernel k, stride s, padding k // 2, no bias) and a "
           "layer norm over d, the class token (if any) kept out of the conv and put back; per head "
           "softmax(Q K^T / sqrt(d) [+ decomposed relative positions]) V [+ q: residual pooling]; the heads "
           "joined and projected (D -> D, bias). Output: the pooled q's tokens, D channels, on q's grid. MACs "
           "3NCD + D(Mq kq + 2 Mk kkv) (the pooling convs on Mq, Mk grid tokens) + 2 Nq Nk D + [D Mq (kt + kh "
           "+ kw): rel_pos] + Nq D^2. Built as torchvision's math (every product a counted op: FlopCounterMode "
           "and fvcore count the same MACs, fvcore 5 more per element of each pooled q, k, v for its layer norm and "
           "its einsums as numpy's einsum_path reports them, to 4 significant digits, for one clip).")
    full_rule = ("2 per MAC; the biases (3D per input token, D per output token); the pooling norms' own rule "
                 "(7 per element + 4 per token and head); 1 per element of q for the 1/sqrt(d) scale; 3 per "
                 "attention weight (softmax); with rel_pos the H and W terms' sum (h Mq kh kw), the T term's (h Mq Mk) "
                 "and its addition to the scores (h Mq Mk); with residual_pool 1 per element of q's grid tokens")
    tokens = True
    step_unfollowed = ("its backward (the attention weights' and products' gradients, the pooling's) is not "
                       "modelled yet")
    args = (
        Arg("num_heads", "int", doc="number of heads; divides output_dim", aliases=("heads",), minimum=1),
        Arg("output_dim", "ints_or_none", None, "channels of q, k, v and the output (default: the input's)",
            aliases=("out",), minimum=1),
        Arg("kernel_q", "ints", 1, "q's pooling kernel per grid axis (1 and stride 1: q not pooled)", minimum=1),
        Arg("stride_q", "ints", 1, "q's pooling stride per grid axis: the output's grid", minimum=1),
        Arg("kernel_kv", "ints", 1, "k's and v's pooling kernel per grid axis", minimum=1),
        Arg("stride_kv", "ints", 1, "k's and v's pooling stride per grid axis", minimum=1),
        Arg("residual_pool", "bool", False, "add the pooled q to the heads' output, class token excepted (MViTv2)"),
        Arg("rel_pos", "bool", False, "decomposed relative position terms on a T x H x W grid (MViTv2): one "
            "table per axis of 2 max(q, k) - 1 rows of d"),
        Arg("eps", "float", 1e-5, "the pooling layer norms' eps"),
    )
    examples = (
        Example(Tokens(17, 8, (1, 4, 4)), {"num_heads": 2, "kernel_kv": 3, "stride_kv": [1, 2, 2]}),
        Example(Tokens(19, 8, (2, 3, 3)), {"num_heads": 2, "output_dim": 12, "kernel_q": 3, "stride_q": [1, 2, 2],
                                           "kernel_kv": 3, "stride_kv": [1, 2, 2], "residual_pool": True,
                                           "rel_pos": True}),
        Example(Tokens(16, 6, (4, 4)), {"num_heads": 3, "kernel_q": 3, "kernel_kv": [3, 1], "stride_kv": 2}),
        Example(Tokens(12, 4, (2, 2, 3)), {"num_heads": 1, "kernel_q": 3, "kernel_kv": 3, "rel_pos": True,
                                           "residual_pool": True}),
    )

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> dict[str, Any]:
        tokens = token_input(self.name, inp)
        cls = class_tokens(self.name, inp)
        out = a["output_dim"]
        if out is None:
            out = tokens[1]
        elif not isinstance(out, int):
            raise LayerError("pooled_attention output_dim is one number of channels")
        if out % a["num_heads"]:
            raise LayerError(f"pooled_attention: output_dim {out} is not divisible by num_heads {a['num_heads']}")
        grid = tokens.grid
        kq, sq, _, gq = pooled_grid(self.name, grid, a["kernel_q"], a["stride_q"])
        kk, sk, _, gk = pooled_grid(self.name, grid, a["kernel_kv"], a["stride_kv"])
        if a["rel_pos"] and len(grid) != 3:
            raise LayerError("pooled_attention rel_pos needs a T x H x W grid (MViTv2's three tables)")
        return {"cls": cls, "c": tokens[1], "d": out, "grid": grid, "kq": kq, "sq": sq, "gq": gq, "kk": kk,
                "sk": sk, "gk": gk, "pq": math.prod(kq) > 1 or math.prod(sq) > 1,
                "pkv": math.prod(kk) > 1 or math.prod(sk) > 1, "n": tokens[0], "head": out // a["num_heads"]}

    @staticmethod
    def rel_rows(g: Mapping[str, Any]) -> tuple[int, ...]:
        """Rows of the relative position tables (T, H, W): 2 max(q, k) - 1 per axis."""
        return tuple(2 * max(q, k) - 1 for q, k in zip(g["gq"], g["gk"]))

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        g = self.geometry(a, inp)
        return Tokens(numel(g["gq"]) + g["cls"], g["d"], g["gq"])

    def parts(self, a: Mapping[str, Any], inp: Shape) -> dict[str, int]:
        """Per-image MACs by part."""
        g = self.geometry(a, inp)
        d, mq, mk = g["d"], numel(g["gq"]), numel(g["gk"])
        nq, nk = mq + g["cls"], mk + g["cls"]
        return {"qkv": 3 * g["n"] * g["c"] * d, "pool_q": d * mq * math.prod(g["kq"]) if g["pq"] else 0,
                "pool_kv": 2 * d * mk * math.prod(g["kk"]) if g["pkv"] else 0, "products": 2 * nq * nk * d,
                "rel_pos": d * mq * sum(g["gk"]) if a["rel_pos"] else 0, "project": nq * d * d}

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        g = self.geometry(a, inp)
        d, head, h = g["d"], g["head"], a["num_heads"]
        mq, mk = numel(g["gq"]), numel(g["gk"])
        nq, nk = mq + g["cls"], mk + g["cls"]
        params = 3 * g["c"] * d + 3 * d + d * d + d
        if g["pq"]:
            params += head * math.prod(g["kq"]) + 2 * head
        if g["pkv"]:
            params += 2 * (head * math.prod(g["kk"]) + 2 * head)
        if a["rel_pos"]:
            params += head * sum(self.rel_rows(g))
        macs = sum(self.parts(a, inp).values())
        normed = (nq if g["pq"] else 0) + (2 * nk if g["pkv"] else 0)  # tokens of the pooled, normed q, k, v
        full = (2 * macs + 3 * d * g["n"] + d * nq + normalize_full(normed * d, normed * h, True)
                + d * nq + 3 * h * nq * nk
                + (h * mq * g["gk"][1] * g["gk"][2] + 2 * h * mq * mk if a["rel_pos"] else 0)
                + (d * mq if a["residual_pool"] else 0))
        fvcore = macs + 5 * normed * d
        if a["rel_pos"]:
            # fvcore counts an einsum from numpy's einsum_path report, whose "Optimized FLOP count" (2 per MAC) is
            # printed to 4 significant digits ('%.3e'), then halved and floored: the H and W terms (T is a matmul).
            for k in g["gk"][1:]:
                fvcore += int(float(f"{2 * d * mq * k:.3e}") // 2) - d * mq * k
        return Cost(params=params, macs=macs, fvcore=fvcore, full=full)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # What the built module (archcalc.torch.modules.PooledAttention, torchvision's order of ops) keeps, measured
        # with saved_tensors_hooks (tests/test_kind_rules.py): qkv's input (for its weight); per pooled tensor the
        # conv's input (the grid's contiguous copy, M D), the norm's input (the pooled tokens with the class token)
        # and its mean and 1/std (2 per token and head); the scaled q (Nq D), the normed k and v (Nk D each), the
        # softmax weights (h Nq Nk, kept by softmax and A V); with rel_pos what the einsums and the product over T
        # keep of q (below), and per batch the gathered table rows and their int64 indices; the joined heads (Nq D,
        # for the projection's weight).
        g = self.geometry(a, inp)
        d, h, m = g["d"], a["num_heads"], numel(g["grid"])
        mq = numel(g["gq"])
        nq, nk = mq + g["cls"], numel(g["gk"]) + g["cls"]
        extra = [(d * nq + d * 2 * nk + h * nq * nk, ACTIVATION)]
        stats = 0
        if g["pq"]:
            extra.append((m * d + nq * d, ACTIVATION))
            stats += 2 * h * nq
        if g["pkv"]:
            extra.append((2 * (m * d + nk * d), ACTIVATION))
            stats += 4 * h * nk
        if a["rel_pos"]:
            # The H einsum copies q's grid tokens (Mq D). The W einsum reads q in place without a class token, the
            # product over T where q's grid is 1 x 1 per step or, without a class token, has one step: then q's
            # storage (Nq D, once) is kept instead of a copy (Mq D). (At batch 1 with one head both read q in place
            # with a class token too; a per-sample figure cannot follow that: it is the larger batches'.)
            in_place = [g["cls"] == 0, g["gq"][1] * g["gq"][2] == 1 or (g["cls"] == 0 and g["gq"][0] == 1)]
            extra.append(((1 + in_place.count(False)) * mq * d + (nq * d if any(in_place) else 0), ACTIVATION))
        per_batch: tuple[tuple[int, int], ...] = ()
        if a["rel_pos"]:
            pairs = sum(q * k for q, k in zip(g["gq"], g["gk"]))
            per_batch = ((pairs * g["head"], ACTIVATION), (pairs, 8))
        return Saved(input_for_params=True, extra=(*extra, (stats, STATISTICS)), per_batch=per_batch,
                     extra_for_params=((nq * d, ACTIVATION),))

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # Two products of each forward product's size (FlopCounterMode's mm, bmm and conv backward rules). Only
        # qkv's input gradient (3NCD) is skipped when the input needs none. The depthwise pooling convs' weight
        # gradients count `groups` (d) times their forward where the installed FlopCounterMode does not divide by
        # groups (conventions.GROUPED_WEIGHT_GRADIENT, as for conv).
        parts = self.parts(a, inp)
        batch = macs // sum(parts.values())
        grad_input = parts["qkv"] * batch
        pools = (parts["pool_q"] + parts["pool_kv"]) * batch
        head = self.geometry(a, inp)["head"]
        return grad_input, 2 * macs - grad_input + (0 if divide_groups else (head - 1) * pools)

    def phases(self, a: Mapping[str, Any], inp: Shape) -> dict[str, int]:
        """Elements per sample alive at each point of the built module's inference forward where the most may be
        (the input and the parameters aside; the output included where it exists)."""
        g = self.geometry(a, inp)
        d, h, m = g["d"], a["num_heads"], numel(g["grid"])
        mq, mk = numel(g["gq"]), numel(g["gk"])
        nq, nk = mq + g["cls"], mk + g["cls"]
        qkv = 3 * g["n"] * d

        def pool(grid: int, tokens: int) -> int:  # the grid's copy and the conv's output; the cat, norm, stats
            return max(m * d + grid * d, grid * d + 2 * tokens * d + 2 * h * tokens)

        kv = 2 * nk * d
        q = nq * d if g["pq"] else qkv  # an unpooled q is a view of qkv's output, which it keeps alive
        attn = h * nq * nk
        found = {"pool_k": qkv + pool(mk, nk), "pool_v": qkv + nk * d + pool(mk, nk),
                 # the scaled q (and, for an unpooled q, its copy laid out per head for the product), the scores
                 "q_k": q + kv + nq * d * (1 if g["pq"] else 2) + attn,
                 "a_v": q + kv + 2 * attn + nq * d,  # the scores, the weights and A V
                 "project": q + kv + attn + 3 * nq * d}  # the scores, A V, the joined heads and the output
        if g["pq"]:
            found["pool_q"] = qkv + kv + pool(mq, nq)
        if a["rel_pos"]:
            # q's grid tokens laid out for the product over T, the three terms, their sum and its copy laid out as
            # the scores (the reshape of the broadcast sum)
            found["rel_pos"] = q + kv + attn + mq * d + h * mq * sum(g["gk"]) + 2 * h * mq * mk
        return found

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference (torch.profiler, tests/test_kind_rules.py),
        # less its output, which the engine counts beside it.
        return ((max(self.phases(a, inp).values()) - out[0] * out[1], ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The tables' rows gathered for each (query, key) pair of each axis, whatever the batch, alive with the
        # relative position terms when they are the peak.
        phases = self.phases(a, inp)
        if not a["rel_pos"] or max(phases.values()) != phases["rel_pos"]:
            return ()
        g = self.geometry(a, inp)
        return ((g["head"] * sum(q * k for q, k in zip(g["gq"], g["gk"])), ACTIVATION),)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # Every output token sees every input token (the keys cover the whole grid); the output's grid steps by
        # q's stride.
        g = self.geometry(a, inp)
        return [RFStep(stride=s, whole=True) for s in g["sq"]]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        g = self.geometry(a, inp)
        text = f"{a['num_heads']} heads of {g['head']}, q {'x'.join(map(str, g['gq']))}, kv " \
               f"{'x'.join(map(str, g['gk']))}"
        return text + (", rel pos" if a["rel_pos"] else "") + (", +q" if a["residual_pool"] else "")


@register
class TokenMaxPool(Kind):
    name = "token_maxpool"
    prefix = "pool"
    doc = ("Max pooling of tokens on their grid, the class token (if any) kept out and put back first (MViT's "
           "pool_skip, the shortcut of a block whose q is pooled: torchvision's Pool(nn.MaxPool3d)). The tokens "
           "are laid out as a C x grid tensor (a contiguous copy), pooled (nn.MaxPool1d/2d/3d by the grid's "
           "rank) and flattened back after the class token (a copy: torch.cat). No parameters; MACs 0.")
    full_rule = "prod(F) - 1 comparisons per output element"
    tokens = True
    step_unfollowed = "its backward (the max pooling's through the grid's copy, the concatenation's) is not checked yet"
    args = (
        Arg("kernel_size", "ints", doc="window per grid axis", aliases=("kernel",), minimum=1),
        Arg("stride", "ints_or_none", None, "step per grid axis (default: the kernel)", minimum=1),
        Arg("padding", "ints", 0, "implicit -inf padding per grid axis (at most half the kernel)", minimum=0),
    )
    examples = (
        Example(Tokens(17, 6, (1, 4, 4)), {"kernel_size": [1, 3, 3], "stride": [1, 2, 2], "padding": [0, 1, 1]}),
        Example(Tokens(26, 4, (5, 5)), {"kernel_size": 2}),
    )

    def geometry(self, a: Mapping[str, Any], inp: Shape) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                    tuple[int, ...], tuple[int, ...]]:
        tokens = token_input(self.name, inp)
        stride = a["kernel_size"] if a["stride"] is None else a["stride"]
        return pooled_grid(self.name, tokens.grid, a["kernel_size"], stride, a["padding"])

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        cls = class_tokens(self.name, inp)
        grid = self.geometry(a, inp)[3]
        return Tokens(numel(grid) + cls, inp[1], grid)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        k = self.geometry(a, inp)[0]
        return Cost(full=inp[1] * numel(self.geometry(a, inp)[3]) * (math.prod(k) - 1))

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # max_pool*d_with_indices keeps its input, the grid's contiguous copy (M C), and the int64 argmax indices.
        grid = self.geometry(a, inp)[3]
        return Saved(extra=((numel(inp.grid) * inp[1], ACTIVATION), (numel(grid) * inp[1], 8)))  # type: ignore[attr-defined]

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # At inference the most alive at once is while the pool runs: the grid's copy, the pooled grid and its int64
        # indices (dropped as it returns), before the output (the concatenation) is made, less that output, which
        # the engine counts beside it (torch.profiler, tests/test_kind_rules.py).
        c, pooled = inp[1], numel(self.geometry(a, inp)[3])
        return ((numel(inp.grid) * c + pooled * c - out[0] * c, ACTIVATION), (pooled * c, 8))  # type: ignore[attr-defined]

    def train_transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # In training the copy and the indices are kept (Saved); the pooled grid is alive beside the output.
        return ((numel(self.geometry(a, inp)[3]) * inp[1], ACTIVATION),)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        k, s, _, _ = self.geometry(a, inp)
        return [RFStep(ki, si) for ki, si in zip(k, s)]

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        k, s, p, grid = self.geometry(a, inp)
        return f"{'x'.join(map(str, k))}/{'x'.join(map(str, s))} p{'x'.join(map(str, p))} -> " \
               f"{'x'.join(map(str, grid))}"


@register
class SeparablePositionEmbedding(Kind):
    name = "separable_pos_embed"
    synonyms = ("spatiotemporal_pos_embed", "st_pos_embed")
    prefix = "pos"
    doc = ("A learned position embedding split over the grid's first axis and the others (MViT's "
           "PositionalEncoding, Fan et al. 2021, sec. 4.1: a T x C temporal and an H W x C spatial table, summed for "
           "each of the T H W grid tokens; the class token, if any, has its own C), added to the tokens. Params "
           "(H W + T + 1) C. The sum of the tables is made once per forward (whatever the batch); fvcore and "
           "FlopCounterMode count its additions as 0.")
    full_rule = "1 addition per element of the grid's tokens to make the embedding, 1 per element to add it"
    tokens = True
    step_unfollowed = "its backward (the tables' gradients, summed over the batch and the grid) is not checked yet"
    examples = (Example(Tokens(33, 4, (2, 4, 4))), Example(Tokens(12, 3, (3, 2, 2))))

    def geometry(self, inp: Shape) -> tuple[int, int, int]:
        """The class tokens, the first axis' length, the other axes' positions."""
        cls = class_tokens(self.name, inp)
        grid = inp.grid  # type: ignore[attr-defined]
        if len(grid) < 2:
            raise LayerError("separable_pos_embed splits the grid's first axis from the others: it needs 2 or 3 axes")
        return cls, grid[0], numel(grid[1:])

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        self.geometry(inp)
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        cls, t, hw = self.geometry(inp)
        c = inp[1]
        return Cost(params=(hw + t + cls) * c, full=t * hw * c + inp[0] * c)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        cls, t, hw = self.geometry(out)
        c = out[1]
        return (hw * c, t * c, c) if cls else (hw * c, t * c)

    # Nothing is kept for backward (additions, a repeat and a concatenation of parameters: measured).

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The embedding (N x C, made from the tables) is alive with the output.
        return ((inp[0] * inp[1], ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        cls, t, hw = self.geometry(inp)
        return f"{t} + {hw}" + (" + class" if cls else "")


__all__ = ["PooledAttention", "SeparablePositionEmbedding", "TokenMaxPool", "class_tokens", "pooled_grid"]
