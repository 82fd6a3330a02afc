"""EfficientViT-MSRA's cascaded group attention in local windows (Liu et al. 2023, "EfficientViT: Memory Efficient
Vision Transformer with Cascaded Group Attention", sec. 3.2; timm's efficientvit_msra.py LocalWindowAttention around
CascadedGroupAttention).

Its own kind: each head reads its split of the channels plus the previous head's output (the cascade), so the heads
run one after another and no argument of self_attention or window_attention (whose heads all read one projection
of the input) describes it; its q, k and v come from a 1 x 1 conv and a batch norm per head, q passes a depthwise
conv and a batch norm, and the joined heads a ReLU before the projection.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

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
    register,
)


class Dims(NamedTuple):
    """One cascaded_attention's sizes: channels C, heads h, per head C_i = C / h input channels, key_dim kd,
    vd = C_i, the window w (min of window_size and the grid's sides), the padded tokens T, the window's M = w^2
    tokens, the depthwise kernels (one per head) and the padded grid."""

    c: int
    h: int
    ci: int
    kd: int
    vd: int
    w: int
    t: int
    m: int
    kernels: tuple[int, ...]
    padded: tuple[int, int]
    grid: tuple[int, int]


def dims(a: Mapping[str, Any], inp: Shape) -> Dims:
    if len(inp) != 3 or hasattr(inp, "grid"):
        raise LayerError(f"cascaded_attention needs a C x H x W grid; got {'x'.join(map(str, inp))}")
    c, hh, ww = inp
    h = a["num_heads"]
    if c % h:
        raise LayerError(f"cascaded_attention: {c} channels are not divisible by num_heads {h}")
    kernels = a["kernels"] if isinstance(a["kernels"], tuple) else (a["kernels"],) * h
    if len(kernels) != h:
        raise LayerError(f"cascaded_attention: {len(kernels)} kernels for {h} heads (one per head, or one for all)")
    if any(k % 2 == 0 for k in kernels):
        raise LayerError(f"cascaded_attention: kernels {list(kernels)} must be odd (padding k // 2 keeps the window)")
    kd = a["key_dim"]
    vd = c // h  # v is the next head's input: C / heads channels (timm's attn_ratio x key_dim)
    w = min(a["window_size"], hh, ww)
    padded = (-(-hh // w) * w, -(-ww // w) * w)
    return Dims(c, h, c // h, kd, vd, w, padded[0] * padded[1], w * w, tuple(kernels), padded, (hh, ww))


@register
class CascadedAttention(Kind):
    name = "cascaded_attention"
    synonyms = ("cascaded_group_attention", "local_window_attention", "efficientvit_attention")
    prefix = "attn"
    doc = ("EfficientViT-MSRA's cascaded group attention in local windows (Liu et al. 2023, sec. 3.2; timm's "
           "efficientvit_msra LocalWindowAttention and CascadedGroupAttention) on a C x H x W grid: unless the grid "
           "is one window, zero-padded to a multiple of the window w = min(window_size, H, W) and cut into w x w "
           "windows of M = w^2 positions (T padded positions in all); in each window, per head i, x_i (the i-th of "
           "h channel splits, C_i = C / h) plus the previous head's output through a 1 x 1 conv and a batch norm "
           "to q, k (key_dim kd each) and v (vd = C_i: the next head adds it to its split); q through a depthwise "
           "k_i x k_i conv and a batch norm; softmax(Q^T K kd^-1/2 + B_i) with B_i a learned bias per absolute "
           "offset (|dy| w + |dx|: h x M, gathered by an M x M index buffer, LeViT's attention biases); V A^T; the "
           "heads joined (h vd), ReLU, a 1 x 1 conv and a batch norm to C; the windows put back, the padding "
           "cropped. Params h C_i (2kd + vd) + sum_i kd k_i^2 + h M + h vd C + the batch norms' 2 (h (3kd + vd) + "
           "C). MACs per image h T C_i (2kd + vd) + sum_i T kd k_i^2 + h T M (kd + vd) + T h vd C: what "
           "FlopCounterMode counts; fvcore adds 2 per batch-norm element.")
    full_rule = ("2 per MAC, 4 per element of each batch norm (h T (3kd + vd) + T C), 1 per element for each "
                 "cascade sum ((h - 1) T C_i), for q's scale (h T kd) and the ReLU (h T vd), 1 per attention "
                 "weight for the bias and 3 for the softmax (h T M weights)")
    step_unfollowed = "its backward (the cascade's, the products' and the batch norms' gradients) is not modelled yet"
    autocast = "mixed"
    args = (
        Arg("num_heads", "int", doc="heads; divide the channels", aliases=("heads",), minimum=1),
        Arg("key_dim", "int", 16, "channels of q and k per head", minimum=1),
        Arg("window_size", "int", 7, "the window's side; a grid side smaller than it makes the window that side "
            "(timm's min(window_resolution, resolution))", minimum=1),
        Arg("kernels", "ints", 5, "the depthwise conv's kernel on q: one per head, or one for all (odd)",
            minimum=1),
    )
    examples = (
        Example((8, 6, 6), {"num_heads": 2, "key_dim": 3, "window_size": 3, "kernels": [3, 1]}),
        Example((8, 4, 4), {"num_heads": 4, "key_dim": 3, "window_size": 7, "kernels": 3}),
        Example((6, 5, 7), {"num_heads": 3, "key_dim": 2, "window_size": 3, "kernels": [3, 3, 1]}),
        Example((4, 3, 3), {"num_heads": 1, "key_dim": 4, "window_size": 3, "kernels": 3}),
    )
    torch_class = ""
    same_shape = True

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        dims(a, inp)
        return inp

    @staticmethod
    def parts(d: Dims) -> tuple[int, int, int, int]:
        """Per-image MACs of the qkv convs, the depthwise convs, the two products, the projection."""
        return (d.h * d.t * d.ci * (2 * d.kd + d.vd), sum(d.t * d.kd * k * k for k in d.kernels),
                d.h * d.t * d.m * (d.kd + d.vd), d.t * d.h * d.vd * d.c)

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        d = dims(a, inp)
        macs = sum(self.parts(d))
        bn_channels = d.h * (3 * d.kd + d.vd) + d.c
        bn = d.t * bn_channels
        params = (d.h * d.ci * (2 * d.kd + d.vd) + sum(d.kd * k * k for k in d.kernels) + d.h * d.m
                  + d.h * d.vd * d.c + 2 * bn_channels)
        full = (2 * macs + 4 * bn + (d.h - 1) * d.t * d.ci + d.h * d.t * d.kd + d.h * d.t * d.vd
                + 4 * d.h * d.t * d.m)
        return Cost(params=params, buffers=2 * bn_channels, int_buffers=2 * d.h + 1 + d.m * d.m, macs=macs,
                    fvcore=macs + 2 * bn, full=full)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # (the input's gradient through the first head's qkv conv, the rest): every conv's weight and input
        # gradient (the depthwise weight's counted `groups` = kd times unless the installed torch divides by
        # groups), both operands' gradients of both products.
        d = dims(a, inp)
        qkv, dw, products, proj = self.parts(d)
        batch = macs // sum(self.parts(d))
        dw_weight = dw if divide_groups else dw * d.kd
        first = d.t * d.ci * (2 * d.kd + d.vd)
        return batch * first, batch * (2 * qkv - first + dw + dw_weight + 2 * products + 2 * proj)

    def param_tensors(self, a: Mapping[str, Any], out: Shape, params: int) -> tuple[int, ...]:
        d = dims(a, out)
        qkv = d.ci * (2 * d.kd + d.vd)
        tensors: list[int] = []
        for _ in range(d.h):
            tensors += [qkv, 2 * d.kd + d.vd, 2 * d.kd + d.vd]
        for k in d.kernels:
            tensors += [d.kd * k * k, d.kd, d.kd]
        return (d.h * d.m, *tensors, d.h * d.vd * d.c, d.c, d.c)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Sequence[RFStep]:
        # A position sees its window (the depthwise conv pads within the window): w positions, the whole axis
        # where the window covers the padded grid.
        d = dims(a, inp)
        return [RFStep(whole=True) if d.w >= p else RFStep(kernel=d.w) for p in d.padded]

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.CascadedAttention, timm's order of ops) keeps, measured with
        # saved_tensors_hooks (tests/test_kind_rules.py): the windows (the first head's qkv conv reads a view of
        # them: the input itself when the grid is one window, else their copy, T C), each later head's cascade sum
        # (T C_i), each qkv conv's output and its batch norm's output (T (2kd + vd) each: q, k and v are views of
        # it), each depthwise conv's output (T kd) and the scaled q (T kd), each head's softmax weights (T M), the
        # ReLU's output and the projection conv's (T C each); every batch norm's mean and 1/std per channel.
        d = dims(a, inp)
        u = 2 * d.kd + d.vd
        windows = 0 if self.one_window(d) else d.t * d.c
        per_head = d.t * (2 * u + 2 * d.kd + d.m)
        extra = windows + (d.h - 1) * d.t * d.ci + d.h * per_head + 2 * d.t * d.c
        return Saved(input=self.one_window(d), extra=((extra, ACTIVATION),),
                     per_batch=((2 * (d.h * (u + d.kd) + d.c), STATISTICS),))

    @staticmethod
    def one_window(d: Dims) -> bool:
        """The grid is one window: attended as it is (no padding, no cut)."""
        return d.grid == (d.w, d.w)

    def moments(self, a: Mapping[str, Any], inp: Shape) -> list[tuple[int, int]]:
        """What is alive at each moment of an inference forward beside the input, output included: (per image,
        once per forward). Measured with torch.profiler (tests/test_kind_rules.py, batch 2 and 3): the padded
        grid and the windows' copy (2TC); in the windows, the bias gathered once (h M^2) and per head i the
        windows (TC, unless the input is one window), the heads done (i T vd), the previous head's q, k, v and
        weights (T (2kd + vd + kd + M)) until replaced, the cascade sum (T C_i), then in turn qkv's conv and batch
        norm outputs, the depthwise conv's and its norm's beside the new q, k, v (the CPU batch norm's scale and
        shift, 2 per channel, once), the scaled q and the scores, the biased scores and the weights beside the
        previous weights, the head's output; then the joined heads, the ReLU's, the projection conv's and its
        norm's outputs (4TC) beside the heads and the last head's tensors; then the windows put back (2TC) and
        the crop (TC + NC)."""
        d = dims(a, inp)
        t, u, kd, m, c = d.t, 2 * d.kd + d.vd, d.kd, d.m, d.c
        one = self.one_window(d)
        windows = 0 if one else t * c
        bias = d.h * m * m
        moments = [] if one else [(2 * t * c, 0), (t * c + inp[1] * inp[2] * c, 0)]
        for i in range(d.h):
            base = windows + i * t * d.vd + (t * d.ci if i else 0)
            last, weights = (t * (u + kd + m), t * m) if i else (0, 0)
            moments += [(base + last + 2 * t * u, bias + 2 * u), (base + t * u + weights + 2 * t * kd, bias + 2 * kd),
                        (base + t * (u + 2 * kd + m) + weights, bias), (base + t * (u + kd + 2 * m) + weights, bias),
                        (base + t * (u + kd + m + d.vd), bias)]
        moments.append((windows + t * (c + u + kd + m + 4 * c), bias + 2 * c))
        return moments

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The largest moment (per image first), less the output (CHW), which the engine counts beside it.
        per, _ = max(self.moments(a, inp))
        return ((per - inp[0] * inp[1] * inp[2], ACTIVATION),)

    def transient_once(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((max(self.moments(a, inp))[1], ACTIVATION),)

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        d = dims(a, inp)
        return (f"{d.h} heads, key {d.kd}, value {d.vd}, {d.w}x{d.w} windows"
                + (f" (padded to {d.padded[0]}x{d.padded[1]})" if d.padded != d.grid else ""))


__all__ = ["CascadedAttention"]
