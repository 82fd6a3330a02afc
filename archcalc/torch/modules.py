"""The few torch modules archcalc needs beyond torch.nn (the recipes in archcalc.torch.recipes use them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Pads = Sequence[tuple[int, int]]


def f_pad(pads: Pads) -> tuple[int, ...]:
    # F.pad takes (last axis before, last axis after, second-to-last before, ...).
    flat: list[int] = []
    for before, after in reversed(list(pads)):
        flat += [before, after]
    return tuple(flat)


def symmetric(pads: Pads) -> bool:
    return all(before == after for before, after in pads)


class AsymmetricPadConv(nn.Module):
    """A convolution whose padding differs before and after (TensorFlow SAME with stride > 1).

    Parameters stay `weight` and `bias` (the padding is applied functionally), so names match the spec.
    """

    def __init__(self, conv: nn.Module, pads: Pads) -> None:
        super().__init__()
        self.pad = f_pad(pads)
        self.weight = conv.weight
        self.bias = conv.bias
        self._conv: Any = conv._conv_forward  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(F.pad(x, self.pad), self.weight, self.bias)


class StdConv(nn.Module):
    """A convolution whose weight is standardised per filter at each forward (weight standardisation, as timm's
    StdConv2d; with `gain`, times a learned gain per filter and gamma / sqrt(fan-in), as ScaledStdConv2d), by
    F.batch_norm over the weight. 1-, 2- or 3-D by the kernel's length; `pads` (before, after) per axis, applied
    with F.pad when they differ. Parameters: weight, bias, gain."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
                 pads: Pads, dilation: Sequence[int], groups: int, bias: bool, eps: float, gain: bool,
                 gamma: float) -> None:
        super().__init__()
        self.stride, self.dilation, self.groups, self.eps = tuple(stride), tuple(dilation), groups, eps
        same = all(before == after for before, after in pads)  # (symmetric: the convolution pads)
        self.pad = () if same else f_pad(pads)
        self.padding = tuple(p for p, _ in pads) if same else (0,) * len(pads)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = nn.Parameter(torch.ones(out_channels, *(1,) * (len(kernel_size) + 1))) if gain else None
        self.scale = gamma * self.weight[0].numel() ** -0.5  # gamma / sqrt(fan-in)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv's initialisation
        self.conv: Any = (F.conv1d, F.conv2d, F.conv3d)[len(kernel_size) - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, self.pad)
        # (the gain times its factor is an argument, not a local: freed when batch_norm returns, as in timm)
        weight = F.batch_norm(self.weight.reshape(1, self.weight.shape[0], -1), None, None,
                              weight=None if self.gain is None else (self.gain * self.scale).view(-1),
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return self.conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PaddedPool(nn.Module):
    """A pooling layer with asymmetric padding: pads with -inf (max) or zeros (avg), then pools unpadded.

    `pads` come from the kind's explicit_pads: with ceil_mode the after-padding may be cut so that no window starts
    in it, as with symmetric padding."""

    def __init__(self, pool: nn.Module, pads: Pads, value: float) -> None:
        super().__init__()
        self.pool = pool
        self.pad = f_pad(pads)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.pad, value=self.value))


class FlattenLinear(nn.Linear):
    """nn.Linear that first flattens a C x H x W input to one vector per sample (a view, no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1) if x.dim() > 2 else x)


class Bias(nn.Module):
    """A learned additive bias of a given per-sample shape (broadcast over the batch and any size-1 axes)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scalar(nn.Module):
    """Arithmetic with a constant: x + c, x - c, c - x, x * c, x / c, x ** c."""

    def __init__(self, op: str, value: float) -> None:
        super().__init__()
        self.op = op
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.value
        return {"add": lambda: x + c, "sub": lambda: x - c, "rsub": lambda: c - x, "mul": lambda: x * c,
                "div": lambda: x / c, "pow": lambda: x ** c}[self.op]()


class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): the maximum over groups of `pieces` consecutive channels."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *rest = x.shape
        return x.view(n, c // self.pieces, self.pieces, *rest).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class ChannelSliceModule(nn.Module):
    """x[:, start:stop]: a view of a range of channels."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of each position, as torchvision's ConvNeXt computes it: permute to
    channels-last, F.layer_norm over C, permute back."""

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(x.dim()))
        last = dims[:1] + dims[2:] + dims[1:2]  # N, *spatial, C
        back = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        x = x.permute(*last)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(*back)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt-V2, Woo et al. 2023), channels first, written as timm writes it:
    gx = the L2 norm over the spatial axes, nx = gx / (mean of gx over channels + eps), x + (bias + weight * x * nx).
    """

    def __init__(self, channels: int, rank: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.spatial = tuple(range(2, rank + 2))
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = x.norm(p=2, dim=self.spatial, keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(self.shape), self.weight.view(self.shape), x * nx)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020), as timm's EvoNorm2dS0 computes it: x * sigmoid(v * x) / group_std(x) * weight +
    bias, or without v x / group_std(x) * weight + bias; group_std the square root of each group's biased variance
    plus eps, expanded back to x's shape."""

    def __init__(self, channels: int, rank: int, groups: int, eps: float, act: bool) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.groups, c // self.groups, *x.shape[2:])
        dims = tuple(range(2, grouped.dim()))
        std = grouped.var(dim=dims, unbiased=False, keepdim=True).add(self.eps).sqrt()
        std = std.expand(grouped.shape).reshape(x.shape)
        if self.v is not None:
            x = x * (x * self.v.view(self.shape)).sigmoid()
        return x / std * self.weight.view(self.shape) + self.bias.view(self.shape)


class RMSNorm(nn.Module):
    """RMS normalization over the channels of each position, as timm's rms_norm2d computes it (x * rsqrt(mean of x^2
    over dim 1 + eps) * weight); with statistic 'variance', as its SimpleNorm2d (channels-last, the variance over
    the channels in place of the mean square)."""

    def __init__(self, channels: int, rank: int, eps: float, elementwise_affine: bool, statistic: str) -> None:
        super().__init__()
        self.eps, self.statistic = eps, statistic
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.statistic == "variance":
            rank = x.dim()
            x = x.permute(0, *range(2, rank), 1)
            v = torch.var(x, dim=(-1,), keepdim=True)
            x = x * torch.rsqrt(v + self.eps)
            if self.weight is not None:
                x = x * self.weight
            return x.permute(0, rank - 1, *range(1, rank - 1))
        v = x.pow(2)
        v = torch.mean(v, dim=1, keepdim=True)
        x = x * torch.rsqrt(v + self.eps)
        if self.weight is not None:
            x = x * self.weight.reshape(self.shape)
        return x


class FRN(nn.Module):
    """Filter Response Normalization (Singh and Krishnan 2019) as timm's FilterResponseNormTlu2d computes it:
    x * rsqrt(mean of x^2 over the spatial axes + eps) * weight + bias, then max(., tau) with tlu."""

    def __init__(self, channels: int, rank: int, eps: float, tlu: bool) -> None:
        super().__init__()
        self.eps = eps
        self.spatial = tuple(range(2, rank + 2))
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.tau = nn.Parameter(torch.zeros(channels)) if tlu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * x.square().mean(dim=self.spatial, keepdim=True).add(self.eps).rsqrt().expand(x.shape)
        x = x * self.weight.view(self.shape) + self.bias.view(self.shape)
        return torch.maximum(x, self.tau.reshape(self.shape)) if self.tau is not None else x


class LayerScale(nn.Module):
    """x * gamma with a learned per-channel gamma (ConvNeXt's layer_scale)."""

    def __init__(self, shape: Sequence[int], init: float = 1e-6) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.init = init
        self.gamma = nn.Parameter(torch.full(self.shape, float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: the identity at inference; in training drops a sample's (mode 'row') or
    the batch's ('batch') input with probability p and divides the survivors by 1 - p."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class Mean(nn.Module):
    """x.mean(dims): MNASNet's and ShuffleNetV2's global pooling in torchvision."""

    def __init__(self, dims: Sequence[int], keepdim: bool = False) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(list(self.dims), keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"


class ContextPool(nn.Module):
    """GCNet's global attention pooling (Cao et al. 2019; timm's GlobalContext with use_attn): a 1x1 conv to one
    logit per position, a softmax over the positions, and the input's weighted sum over them (a matrix product):
    B x C x H x W -> B x C x 1 x 1."""

    def __init__(self, channels: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        conv: Any = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
        self.conv_attn = conv(channels, 1, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = self.conv_attn(x).reshape(b, 1, -1).softmax(dim=-1).unsqueeze(3)  # B x 1 x HW x 1
        context = x.reshape(b, c, -1).unsqueeze(1) @ weights  # B x 1 x C x 1
        return context.reshape(b, c, *(1,) * (x.dim() - 2))


class Reshape(nn.Module):
    """x.view(B, *shape, *x.shape[-keep:]): ECA's view of C pooled channels as one 1-D signal for a Conv1d, and
    back; ResNeSt's view of radix x C channels as (radix, C) with the spatial axes kept."""

    def __init__(self, shape: Sequence[int] | int, keep: int = 0) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape, *x.shape[x.dim() - self.keep:])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, keep={self.keep}"


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019; timm's BlurPool2d): pad, then a depthwise conv with a fixed binomial
    filter, held in a buffer (not a parameter)."""

    def __init__(self, channels: int, kernel_size: Sequence[int], stride: Sequence[int], pads: Pads,
                 padding_mode: str) -> None:
        super().__init__()
        rows = []
        for k in kernel_size:
            taps = [1.0]
            for _ in range(k - 1):  # Pascal's triangle: the binomial coefficients C(k - 1, i)
                taps = [a + b for a, b in zip([0.0, *taps], [*taps, 0.0])]
            row = torch.tensor(taps, dtype=torch.float32)
            rows.append(row / row.sum())
        filt = rows[0][:, None] * rows[1][None, :]
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.stride = tuple(stride)
        self.pad = f_pad(pads)
        self.mode = "reflect" if padding_mode == "reflect" else "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.mode)
        return F.conv2d(x, self.get_buffer("filt"), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}, mode={self.mode}"


class SpaceToDepth(nn.Module):
    """TensorFlow's space_to_depth (TResNet's stem): each r x r block of positions into the channels, block position
    first: view as (C, H/r, r, W/r, r), permute the two r axes before C, view as (r*r*C, H/r, W/r)."""

    def __init__(self, block_size: int) -> None:
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        r = self.block_size
        x = x.view(n, c, h // r, r, w // r, r).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * r * r, h // r, w // r)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


class Sum(nn.Module):
    """x.sum(dim): ResNeSt's and SKNet's sum over a split sample's branches."""

    def __init__(self, dim: int, keepdim: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Transpose(nn.Module):
    """x.transpose(dim0, dim1): a view."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


class CenterCrop(nn.Module):
    """x[..., o:o+s, ...] per spatial axis: a view (U-Net's crop before concatenation)."""

    def __init__(self, offsets: Sequence[int], sizes: Sequence[int]) -> None:
        super().__init__()
        self.offsets = tuple(offsets)
        self.sizes = tuple(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))
        return x[index]

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}, sizes={self.sizes}"


class DFL(nn.Module):
    """Ultralytics' DFL: softmax over each box side's reg_max bins, then their expectation (a 1x1 conv with the
    weights 0..reg_max-1); 4 x reg_max channels in, 4 out, any spatial shape. `shared`: the weights are an earlier
    DFL's, so this one holds none (made in forward)."""

    def __init__(self, reg_max: int = 16, shared: bool = False) -> None:
        super().__init__()
        self.reg_max, self.shared = reg_max, shared
        bins = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)
        if shared:  # a plain tensor, neither parameter nor buffer: made once, moved at the first use elsewhere
            self._bins = bins
        else:
            self.weight = nn.Parameter(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, spatial = x.shape[0], x.shape[2:]
        if self.shared and (self._bins.device != x.device or self._bins.dtype != x.dtype):
            self._bins = self._bins.to(x)
        w = self._bins if self.shared else self.weight
        bins = x.reshape(b, 4, self.reg_max, -1).transpose(2, 1).softmax(1)
        return F.conv2d(bins, w).reshape(b, 4, *spatial)

    def extra_repr(self) -> str:
        return f"reg_max={self.reg_max}, shared={self.shared}"


class PSAAttention(nn.Module):
    """The attention of Ultralytics' PSABlock: qkv 1x1 conv + BN, per-head softmax(q^T k * scale), v attn^T, plus a
    depthwise 3x3 conv + BN of v, then a 1x1 conv + BN."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.dim, self.num_heads, self.attn_ratio = dim, num_heads, attn_ratio
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = self.conv_bn(dim, dim + 2 * self.key_dim * num_heads)
        self.proj = self.conv_bn(dim, dim)
        self.pe = self.conv_bn(dim, dim, 3, g=dim)

    @staticmethod
    def conv_bn(c1: int, c2: int, k: int = 1, g: int = 1) -> nn.Sequential:
        """Ultralytics' Conv with act=False: conv (no bias, padding k // 2), then BatchNorm2d."""
        seq = nn.Sequential()
        seq.add_module("conv", nn.Conv2d(c1, c2, k, 1, k // 2, groups=g, bias=False))
        seq.add_module("bn", nn.BatchNorm2d(c2))
        return seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, attn_ratio={self.attn_ratio}"


# ---- tokens and attention (archcalc.core.kinds.tokens) ---------------------------------------------------------------


class ToTokens(nn.Module):
    """B x C x (spatial) -> B x N x C: flatten the spatial axes and move the channels last (a view, as torchvision's
    ViT writes it: reshape to B x C x N, then permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ToGrid(nn.Module):
    """B x N x C -> B x C x (size): the channels first again, the tokens laid out on the grid (a copy: the
    transposed tokens are not contiguous)."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.size)


class ClassToken(nn.Module):
    """A learned token put before the sequence (torchvision's VisionTransformer: `class_token`, expanded over the
    batch and concatenated); with `mean`, the mean of the tokens instead (CLIP's attention pool, timm's
    AttentionPool2d: no parameter)."""

    def __init__(self, channels: int, mean: bool = False, count: int = 1) -> None:
        super().__init__()
        self.mean = mean
        if not mean:
            self.class_token = nn.Parameter(torch.zeros(1, count, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean:
            return torch.cat([x.mean(1, keepdim=True), x], dim=1)
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """A learned N x C tensor added to the tokens (torchvision's Encoder: `input + self.pos_embedding`)."""

    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, channels).normal_(std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embedding


class TakeToken(nn.Module):
    """x[:, index]: one token of a B x N x C sequence (torchvision's ViT takes the class token, `x[:, 0]`); with
    `stop`, x[:, index:stop]: a sequence of them."""

    def __init__(self, index: int = 0, stop: int | None = None) -> None:
        super().__init__()
        self.index = index
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index] if self.stop is None else x[:, self.index:self.stop]


class TokenBatchNorm(nn.Module):
    """Batch normalization of B x N x C tokens per channel, over the batch and the tokens: nn.BatchNorm1d(C) on
    x.flatten(0, 1), reshaped back (LeViT's LinearNorm, timm/models/levit.py). (A wrapper, not a subclass: an
    exported file then needs no private base class of torch's.)"""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over B x N x C tokens, computed as PyTorch's math path does (the reference
    `scaled_dot_product_attention` in torch.nn.functional's docs): one linear layer makes q, k and v, each head
    takes Q K^T / sqrt(d) and a softmax over the keys, then A V; the heads are joined and projected. Its parameters
    are nn.MultiheadAttention's (in_proj: 3C x C and 3C, out_proj: C x C and C). Written out so that every
    product is an op torch's FlopCounterMode and fvcore count (their fused kernels count nothing on the CPU:
    docs/conventions.md)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, kernel: str = "math",
                 qkv_bias: bool = True, key_dim: int = 0, value_dim: int = 0, grid: Sequence[int] | None = None,
                 score_bias: bool = False, norm: str = "none", act: str = "none", stride: int = 1,
                 out_features: int = 0, sr_ratio: int = 1, kv_pool: int = 0, kv_avgpool: int = 0,
                 kv_norm: bool = True, proj: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.kernel = kernel
        # LeViT's and EfficientFormer's arguments (archcalc.core.kinds.tokens.SelfAttention): q and k of key_dim
        # channels per head, v of value_dim (C / heads by default); each projection a linear layer and a batch norm
        # over the tokens (norm); an activation before the output projection (act); queries from the `grid`
        # subsampled by `stride`, with their own projection; `out_features` output channels (CLIP's pool too).
        self.key_dim = key_dim or embed_dim // num_heads
        self.value_dim = value_dim or embed_dim // num_heads
        self.norm_kind, self.act, self.stride, self.out = norm, act, stride, out_features or embed_dim
        keys, values = num_heads * self.key_dim, num_heads * self.value_dim
        batchnorm = norm == "batchnorm"
        self.grid = tuple(grid) if grid is not None else None
        self.sr_ratio, self.kv_pool = sr_ratio, kv_pool
        self.kv_avgpool, self.kv_norm = kv_avgpool, kv_norm
        self.norm: nn.Module | None = None
        if sr_ratio > 1 or kv_pool or kv_avgpool:
            # Keys and values from a reduced sequence (PVT's spatial-reduction attention, Wang et al. 2021/2022):
            # q from every token, k and v from the tokens' grid reduced by a conv (kernel = stride = sr_ratio) or
            # adaptive-average-pooled to kv_pool x kv_pool and a 1x1 conv, then a layer norm (and, pooled, a GELU);
            # or (Next-ViT's E-MHSA) from runs of kv_avgpool consecutive tokens averaged and a batch norm.
            self.q = nn.Linear(embed_dim, embed_dim, bias=bias and qkv_bias)
            self.kv = nn.Linear(embed_dim, 2 * embed_dim, bias=bias and qkv_bias)
            if kv_avgpool:
                self.norm = nn.BatchNorm1d(embed_dim) if kv_norm else None
            else:
                self.sr = nn.Conv2d(embed_dim, embed_dim, 1 if kv_pool else sr_ratio, 1 if kv_pool else sr_ratio)
                self.norm = nn.LayerNorm(embed_dim)
        else:
            # (the norms: BatchNorm1d over the tokens flattened with the batch, `normed`: no class of archcalc's, so
            # an exported file needs no other source)
            if stride > 1:
                self.q_proj = nn.Linear(embed_dim, keys, bias=bias and qkv_bias)
                self.q_norm = nn.BatchNorm1d(keys) if batchnorm else nn.Identity()
            self.in_proj = nn.Linear(embed_dim, (keys if stride == 1 else 0) + keys + values, bias=bias and qkv_bias)
            self.in_norm = nn.BatchNorm1d(self.in_proj.out_features) if batchnorm else nn.Identity()
        # (proj false: no output projection, SHViT's; the joined heads are the output)
        self.out_proj: nn.Module = nn.Linear(values, self.out, bias=bias) if proj else nn.Identity()
        self.out_norm = nn.BatchNorm1d(self.out) if batchnorm and proj else nn.Identity()
        self.score_bias = score_bias
        if score_bias:  # a table per head and |offset| on the 2-D grid (LeViT), gathered for q's (strided) tokens
            assert self.grid is not None
            gh, gw = self.grid
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            qy, qx = torch.meshgrid(torch.arange(0, gh, stride), torch.arange(0, gw, stride), indexing="ij")
            qy, qx = qy.flatten(), qx.flatten()
            index = (qy[:, None] - ys[None, :]).abs() * gw + (qx[:, None] - xs[None, :]).abs()
            self.attention_biases = nn.Parameter(torch.empty(num_heads, gh * gw).normal_(std=0.02))
            self.register_buffer("attention_bias_idxs", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        if self.sr_ratio > 1 or self.kv_pool or self.kv_avgpool:
            return self.reduced(x)
        if self.score_bias or self.norm_kind != "none" or self.act != "none" or self.stride > 1 or self.out != c \
                or isinstance(self.out_proj, nn.Identity) or (
                self.key_dim, self.value_dim) != (c // h, c // h):
            return self.biased(x)
        q, k, v = self.in_proj(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kernel == "fused":  # torch's fused kernel: on the CPU _scaled_dot_product_flash_attention_for_cpu
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
                joined = F.scaled_dot_product_attention(q, k, v)
            return self.out_proj(joined.transpose(1, 2).reshape(b, n, c))
        # k and v as contiguous B x h x N x d copies: the products then keep these (at every batch size), not the
        # whole q/k/v tensor as they would at batch 1.
        weights = ((q * (c // h) ** -0.5) @ k.contiguous().transpose(-2, -1)).softmax(dim=-1)
        return self.out_proj((weights @ v.contiguous()).transpose(1, 2).reshape(b, n, c))

    def reduced(self, x: torch.Tensor) -> torch.Tensor:
        """Keys and values from a reduced sequence (sr_ratio, kv_pool, kv_avgpool)."""
        b, n, c = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        if self.kv_avgpool:
            pooled = F.avg_pool1d(x.transpose(1, 2), self.kv_avgpool)
            if self.norm is not None:
                pooled = self.norm(pooled)
            # (a copy laid out as tokens, also where the pool's output, laid out channels last as its input
            # was, would not need one: what is alive is then the same with or without the norm)
            kv = pooled.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        else:
            assert self.grid is not None
            grid = x.transpose(1, 2).reshape(b, c, *self.grid)
            if self.kv_pool:
                grid = F.adaptive_avg_pool2d(grid, self.kv_pool)
            else:  # a copy of its own, which the conv keeps for its weight (not the input's storage)
                grid = grid.clone(memory_format=torch.contiguous_format)
            assert self.norm is not None
            reduced = self.sr(grid)
            if not self.kv_pool:
                del grid
            kv = self.norm(reduced.flatten(2).transpose(1, 2))
            del reduced
            if self.kv_pool:
                kv = F.gelu(kv)
        m = kv.shape[1]
        k, v = self.kv(kv).reshape(b, m, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        weights = ((q * (c // h) ** -0.5) @ k.contiguous().transpose(-2, -1)).softmax(dim=-1)
        return self.out_proj((weights @ v.contiguous()).transpose(1, 2).reshape(b, n, c))

    def biased(self, x: torch.Tensor) -> torch.Tensor:
        """The math path with LeViT's and EfficientFormer's arguments: the bias gathered first (from the table
        alone, whatever the batch) and added to the scores in place; each temporary freed as soon as it is read."""
        b, n, c = x.shape
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        index: torch.Tensor = self.attention_bias_idxs if self.score_bias else None  # type: ignore[assignment]
        bias = self.attention_biases[:, index] if self.score_bias else None
        if self.stride > 1:
            assert self.grid is not None
            s = self.stride
            sub = x.view(b, *self.grid, c)[:, ::s, ::s].reshape(b, -1, c)  # a copy: the strided grid
            q = self.normed(self.q_norm, self.q_proj(sub))
            del sub
            k, v = self.normed(self.in_norm, self.in_proj(x)).split([h * kd, h * vd], dim=-1)
        else:
            q, k, v = self.normed(self.in_norm, self.in_proj(x)).split([h * kd, h * kd, h * vd], dim=-1)
        nq = q.shape[1]
        q = q.reshape(b, nq, h, kd).transpose(1, 2)
        k, v = (t.reshape(b, n, h, -1).transpose(1, 2) for t in (k, v))
        scores = (q * kd ** -0.5) @ k.contiguous().transpose(-2, -1)
        if bias is not None:
            scores += bias
        weights = scores.softmax(dim=-1)
        del scores  # (freed as in the plain path's one expression)
        joined = (weights @ v.contiguous()).transpose(1, 2).reshape(b, nq, h * vd)
        if self.act != "none":
            joined = F.hardswish(joined) if self.act == "hardswish" else F.silu(joined)
        return self.normed(self.out_norm, self.out_proj(joined))

    @staticmethod
    def normed(norm: nn.Module, t: torch.Tensor) -> torch.Tensor:
        """LeViT's LinearNorm's batch norm over B x N x C tokens (BatchNorm1d on t.flatten(0, 1), shaped back)."""
        return t if isinstance(norm, nn.Identity) else norm(t.flatten(0, 1)).reshape_as(t)


# ---- window attention and patch merging (archcalc.core.kinds.windows) -----------------------------------------------


class WindowAttention(nn.Module):
    """Swin's (shifted) window multi-head self-attention over B x N x C tokens laid out on a 2-D `grid` (Liu et al.
    2021; torchvision's ShiftedWindowAttention and ShiftedWindowAttentionV2, with their parameters and buffers):
    the grid padded to a multiple of the window, cyclically shifted (torch.roll) when `shift_size` is in force,
    cut into windows of M tokens; per window q, k, v = x W_qkv, per head softmax(Q K^T / sqrt(d) + B + mask) V (v2:
    cosine attention, cos(q, k) times a learned per-head logit scale, and B = 16 sigmoid of a position-bias MLP run
    on a table of relative coordinates), the heads joined and projected; then the windows merged, the shift undone
    and the padding cropped. Every product is an op torch's FlopCounterMode and fvcore count. On a 3-D grid
    (T x H x W, the video Swin: torchvision's ShiftedWindowAttention3d) the same with 3-D windows and a 3-D table;
    `shrink` cuts a window longer than the grid to the grid (torchvision's _get_window_and_shift_size), the table
    and index staying the configured window's. `partition="grid"` (MaxViT's grid attention, 2-D) groups the tokens
    of a window_size grid spaced evenly over the whole grid instead of a contiguous window; `einsum` computes the two
    products with torch.einsum (torchvision's MaxViT), not matmul; `position_bias` "mlp" and "lookup" are timm's
    RelPosMlp and RelPosBiasTf (2-D), "offsets" a table of one bias per absolute offset (timm's TinyViT), "none" no
    position bias at all (timm's DaViT and Twins-SVT windows, MobileViT's attention over each patch position)."""

    def __init__(self, channels: int, grid: Sequence[int], num_heads: int, window_size: Sequence[int],
                 shift_size: Sequence[int], bias: bool = True, v2: bool = False, partition: str = "window",
                 einsum: bool = False, position_bias: str = "table", shrink: bool = False, out_features: int = 0,
                 expand_first: bool = False, mlp_hidden: int = 512) -> None:
        super().__init__()
        # the output's channels and the attention's (q, k, v, the joined heads): timm's dim_out and expand_first
        out_features = out_features or channels
        width = out_features if expand_first else channels
        self.grid, self.num_heads, self.v2, self.shrink = tuple(grid), num_heads, v2, shrink
        self.partition, self.einsum, self.bias_kind = partition, einsum, position_bias
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        self.qkv = nn.Linear(channels, 3 * width, bias=bias)
        self.proj = nn.Linear(width, out_features, bias=bias)
        table = WindowAttention.prod(2 * w - 1 for w in self.window_size)
        if position_bias == "offsets":  # LeViT-style biases (timm's TinyViT): one per absolute offset |dy|, |dx|
            table = WindowAttention.prod(self.window_size)
        if v2:
            wh, ww = self.window_size
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads,
                                                                                             bias=False))
            # relative coordinates (dy, dx) in -(w-1)..w-1, scaled to [-8, 8] and log-spaced (Swin V2, eq. 4)
            dy, dx = torch.meshgrid(torch.arange(1 - wh, wh, dtype=torch.float32) / max(wh - 1, 1),
                                    torch.arange(1 - ww, ww, dtype=torch.float32) / max(ww - 1, 1), indexing="ij")
            coords = torch.stack([dy, dx], dim=-1).unsqueeze(0) * 8
            self.register_buffer("relative_coords_table", torch.sign(coords) * torch.log2(coords.abs() + 1) / 3)
        elif position_bias == "mlp":  # timm's RelPosMlp ('cr'): an MLP on log-spaced relative coordinates
            wh, ww = self.window_size
            self.rel_mlp = nn.Sequential(nn.Linear(2, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden,
                                                                                                    num_heads))
            dy, dx = torch.meshgrid(torch.arange(1 - wh, wh, dtype=torch.float32),
                                    torch.arange(1 - ww, ww, dtype=torch.float32), indexing="ij")
            coords = torch.stack([dy, dx], dim=-1)
            self.register_buffer("rel_coords_log", torch.sign(coords) * torch.log1p(coords.abs()))
        elif position_bias == "lookup":  # timm's RelPosBiasTf: a heads x rows x columns table, one-hot lookups
            wh, ww = self.window_size
            self.relative_position_bias_table = nn.Parameter(torch.empty(num_heads, 2 * wh - 1, 2 * ww - 1)
                                                             .normal_(std=0.02))
            for name, w in (("height_lookup", wh), ("width_lookup", ww)):
                i, x = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
                self.register_buffer(name, F.one_hot(x - i + w - 1, 2 * w - 1).float())  # [i, x, x - i + w - 1]
        elif position_bias != "none":
            self.relative_position_bias_table = nn.Parameter(torch.empty(table, num_heads).normal_(std=0.02))
        if position_bias not in ("lookup", "none") or v2:
            # the relative position of two tokens of a window, (d_1 + w_1 - 1) (2 w_2 - 1) ... + (d_r + w_r - 1)
            axes = [c.flatten() for c in torch.meshgrid(*(torch.arange(w) for w in self.window_size), indexing="ij")]
            index = torch.zeros(len(axes[0]), len(axes[0]), dtype=torch.long)
            for c, w in zip(axes, self.window_size):
                if position_bias == "offsets":
                    index = index * w + (c[:, None] - c[None, :]).abs()
                else:
                    index = index * (2 * w - 1) + (c[:, None] - c[None, :] + w - 1)
            self.register_buffer("relative_position_index", index.flatten())

    @staticmethod
    def prod(values: Any) -> int:
        """The product of some sizes (math.prod; the exported file imports no math)."""
        result = 1
        for v in values:
            result *= v
        return int(result)

    def windows(self) -> tuple[int, ...]:
        """The window in force: with `shrink`, cut to the grid along an axis the grid is shorter than."""
        return tuple(min(w, g) for w, g in zip(self.window_size, self.grid)) if self.shrink else self.window_size

    @staticmethod
    def shift_in_force(window: Sequence[int], shift: Sequence[int], grid: Sequence[int]) -> tuple[int, ...]:
        """The shift per axis: none along an axis whose window covers the whole padded grid (as torchvision's
        shifted_window_attention sets it)."""
        padded = [-(-g // w) * w for g, w in zip(grid, window)]
        return tuple(0 if w >= p else s for w, s, p in zip(window, shift, padded))

    def position_bias(self) -> torch.Tensor | None:
        if not self.v2 and self.bias_kind == "none":
            return None
        full, m = WindowAttention.prod(self.window_size), WindowAttention.prod(self.windows())
        if not self.v2 and self.bias_kind == "lookup":
            looked = torch.einsum("nhw,ixh->nixw", self.relative_position_bias_table, self.height_lookup)
            return torch.einsum("nixw,jyw->nijxy", looked, self.width_lookup).reshape(1, self.num_heads, m, m)
        if not self.v2 and self.bias_kind == "mlp":
            table_: torch.Tensor = self.rel_mlp(self.rel_coords_log).view(-1, self.num_heads)
            index_: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
            return table_[index_].view(m, m, -1).permute(2, 0, 1).unsqueeze(0)
        table: torch.Tensor = (self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2
                               else self.relative_position_bias_table)
        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        if m != full:  # a shrunk window reads the index's first M rows and columns (as torchvision's video Swin)
            index = index.view(full, full)[:m, :m].flatten()
        bias = table[index].view(m, m, -1).permute(2, 0, 1).unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    @staticmethod
    def cut(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
        """B x G_1 x ... x G_r x C (each G a multiple of its window) -> (B windows) x M x C."""
        b, *grid, c = x.shape
        split = [d for g, w in zip(grid, window) for d in (g // w, w)]
        r = len(window)
        order = (0, *range(1, 2 * r, 2), *range(2, 2 * r + 1, 2), 2 * r + 1)
        return x.view(b, *split, c).permute(order).reshape(-1, WindowAttention.prod(window), c)

    @staticmethod
    def merge(x: torch.Tensor, b: int, grid: Sequence[int], window: Sequence[int]) -> torch.Tensor:
        """cut's inverse: (B windows) x M x C -> B x G_1 x ... x G_r x C."""
        r, c = len(window), x.shape[-1]
        order = (0, *(d for i in range(r) for d in (1 + i, 1 + r + i)), 2 * r + 1)
        return x.view(b, *(g // w for g, w in zip(grid, window)), *window, c).permute(order).reshape(b, *grid, c)

    def mask(self, padded: Sequence[int], shift: Sequence[int], device: torch.device) -> torch.Tensor:
        """-100 between two tokens of a window that came from different regions of the rolled grid, else 0:
        (windows, 1, M, M)."""
        window = self.windows()
        label = torch.zeros((), dtype=torch.long, device=device)
        for size, w, s in zip(padded, window, shift):
            r = torch.zeros(size, dtype=torch.long, device=device)
            if s:
                r[size - w:] = 1
                r[size - s:] = 2
            label = label.unsqueeze(-1) * 3 + r
        label = self.cut(label.unsqueeze(0).unsqueeze(-1), window).transpose(1, 2)  # windows x 1 x M
        return (label.transpose(1, 2) != label).unsqueeze(1) * -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each step reassigns `x` (or deletes what it no longer needs), so a temporary is freed as soon as the next
        # step has read it: what is alive at once is what archcalc's window_attention declares (its transient).
        b, n, c = x.shape
        d, f = self.proj.in_features, self.proj.out_features  # the attention's channels, the output's
        grid, window, heads = self.grid, self.windows(), self.num_heads
        padded = tuple(-(-g // w) * w for g, w in zip(grid, window))
        shift = self.shift_in_force(window, self.shift_size, grid)
        m = WindowAttention.prod(window)
        windows = WindowAttention.prod(padded) // m
        axes = tuple(range(1, len(grid) + 1))
        bias = self.position_bias()  # first: made from the weights alone (whatever the batch), held throughout
        x = x.view(b, *grid, c)
        if padded != grid:
            x = F.pad(x, [0, 0, *(d for g, p in zip(reversed(grid), reversed(padded)) for d in (0, p - g))])
        if any(shift):
            x = torch.roll(x, tuple(-s for s in shift), axes)
        if self.partition == "grid":  # a group: the tokens (i * nh + a, j * nw + b) of one offset (a, b)
            (wh, ww), (nh, nw) = window, (padded[0] // window[0], padded[1] // window[1])
            x = x.view(b, wh, nh, ww, nw, c).permute(0, 2, 4, 1, 3, 5).reshape(b * windows, m, c)
        else:
            x = self.cut(x, window)
        qkv_bias: torch.Tensor | None = self.qkv.bias
        if self.v2 and qkv_bias is not None:  # v2: the keys' bias held at zero (a parameter all the same)
            qkv_bias = torch.cat([qkv_bias[:c], torch.zeros_like(qkv_bias[c:2 * c]), qkv_bias[2 * c:]])
        q, k, v = F.linear(x, self.qkv.weight, qkv_bias).reshape(b * windows, m, 3, heads, d // heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        del x, qkv_bias
        # Every operand of the two products made contiguous: they keep these copies at every batch size and head
        # count, not a view of the whole qkv tensor as they would with one window at batch 1.
        if self.v2:
            x = (F.normalize(q, dim=-1).contiguous() @ F.normalize(k, dim=-1).contiguous().transpose(-2, -1)) * (
                torch.clamp(self.logit_scale, max=4.605170185988092).exp())  # (the logit scale at most ln 100)
        elif self.einsum:
            x = torch.einsum("bhid,bhjd->bhij", (q * (d // heads) ** -0.5).contiguous(), k.contiguous())
        else:
            x = (q * (d // heads) ** -0.5).contiguous() @ k.contiguous().transpose(-2, -1)
        del q, k
        if bias is not None:
            x = x + bias
        if any(shift):
            x = (x.view(b, windows, heads, m, m) + self.mask(padded, shift, x.device)).view(-1, heads, m, m)
        if self.einsum:
            x = torch.einsum("bhij,bhjd->bhid", x.softmax(dim=-1), v.contiguous())
        else:
            x = x.softmax(dim=-1) @ v.contiguous()
        del v, bias
        x = self.proj(x.transpose(1, 2).reshape(b * windows, m, d))
        if self.partition == "grid":
            (wh, ww), (nh, nw) = window, (padded[0] // window[0], padded[1] // window[1])
            x = x.view(b, nh, nw, wh, ww, f).permute(0, 3, 1, 4, 2, 5).reshape(b, *padded, f)
        else:
            x = self.merge(x, b, padded, window)
        if any(shift):
            x = torch.roll(x, shift, axes)
        if padded != grid:  # the crop as a tensor of its own (a view would keep the padded grid's storage)
            crop = (slice(None), *(slice(0, g) for g in grid))
            x = x[crop].clone(memory_format=torch.contiguous_format)
        return x.reshape(b, n, f)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, v2={self.v2}, partition={self.partition!r}, einsum={self.einsum}, "
                f"position_bias={self.bias_kind!r}" + (", shrink=True" if self.shrink else "")
                + (f", out_features={self.proj.out_features}" if self.proj.out_features != self.qkv.in_features else "")
                + (", expand_first=True" if self.proj.in_features != self.qkv.in_features else ""))


class PatchMerging(nn.Module):
    """Each 2 x 2 neighbourhood of a token grid as one token of 4C channels (x[0::2, 0::2], x[1::2, 0::2],
    x[0::2, 1::2], x[1::2, 1::2] concatenated, torchvision's _patch_merging_pad; the grid zero-padded to even sizes
    first): B x N x C on an H x W grid -> B x (H/2 W/2) x 4C; on a T x H x W grid, H and W merged and T kept."""

    def __init__(self, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.grid[-2:]
        grid = x.view(b, *self.grid, c)
        if h % 2 or w % 2:
            grid = F.pad(grid, (0, 0, 0, w % 2, 0, h % 2))
        out = torch.cat([grid[..., 0::2, 0::2, :], grid[..., 1::2, 0::2, :], grid[..., 0::2, 1::2, :],
                         grid[..., 1::2, 1::2, :]], -1)
        return out.reshape(b, -1, 4 * c)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


class GridPool(nn.Module):
    """Pools B x N x C tokens (or B x heads x N x d) on their grid, the class tokens first kept out and put back
    (MViT's Pool): a depthwise conv without bias and a layer norm over the channels after it (`conv`), or a max pool
    (`max`). The tokens are laid out as a (B heads) x C x grid tensor (a contiguous copy), pooled, and flattened
    back."""

    def __init__(self, channels: int, grid: Sequence[int], class_tokens: int, kernel: Sequence[int],
                 stride: Sequence[int], padding: Sequence[int], mode: str = "conv", eps: float = 1e-5) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.cls = class_tokens
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)
        rank = len(self.grid)
        self.pool: nn.Module
        if mode == "conv":
            conv: Any = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
            self.pool = conv(channels, channels, tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                             groups=channels, bias=False)
            self.norm: nn.Module | None = nn.LayerNorm(channels, eps=eps)
        else:
            pool: Any = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[rank - 1]
            self.pool = pool(tuple(kernel), stride=tuple(stride), padding=tuple(padding))
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.dim() == 3
        if tokens:
            x = x.unsqueeze(1)
        first, rest = torch.tensor_split(x, (self.cls,), dim=2)
        b, h, _, c = rest.shape
        grid = self.pool(rest.transpose(2, 3).reshape(b * h, c, *self.grid).contiguous())
        x = torch.cat((first, grid.reshape(b, h, c, -1).transpose(2, 3)), dim=2)
        if self.norm is not None:
            x = self.norm(x)
        return x.squeeze(1) if tokens else x


class PooledAttention(nn.Module):
    """MViT's multiscale attention over B x N x C tokens on a grid: qkv, q, k and v each pooled on the grid
    (GridPool: a depthwise conv and a layer norm per head's channels), Q K^T / sqrt(d) (with MViTv2's decomposed
    relative positions), softmax, A V (plus the pooled q: residual pooling), heads joined and projected. Every
    product an op FlopCounterMode and fvcore count; the order of ops is torchvision's MultiscaleAttention's, so the
    memory measured on it is the real model's."""

    def __init__(self, embed_dim: int, output_dim: int, num_heads: int, grid: Sequence[int], class_tokens: int,
                 kernel_q: Sequence[int], stride_q: Sequence[int], kernel_kv: Sequence[int],
                 stride_kv: Sequence[int], pool_q: nn.Module | None, pool_k: nn.Module | None,
                 pool_v: nn.Module | None, residual_pool: bool, rel_rows: Sequence[int] | None,
                 grid_q: Sequence[int], grid_kv: Sequence[int], eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.output_dim = output_dim
        self.kernel_q, self.stride_q = tuple(kernel_q), tuple(stride_q)
        self.kernel_kv, self.stride_kv = tuple(kernel_kv), tuple(stride_kv)
        self.eps = eps
        self.head_dim = output_dim // num_heads
        self.cls = class_tokens
        self.residual_pool = residual_pool
        self.grid_q, self.grid_kv = tuple(grid_q), tuple(grid_kv)
        self.qkv = nn.Linear(embed_dim, 3 * output_dim)
        self.project = nn.Linear(output_dim, output_dim)
        d = self.head_dim
        self.pool_q, self.pool_k, self.pool_v = pool_q, pool_k, pool_v  # GridPool: conv and norm, or None
        self.rel_pos_t: nn.Parameter | None = None
        self.rel_pos_h: nn.Parameter | None = None
        self.rel_pos_w: nn.Parameter | None = None
        if rel_rows is not None:
            t, h, w = rel_rows
            self.rel_pos_t = nn.Parameter(torch.randn(t, d) * 0.02)
            self.rel_pos_h = nn.Parameter(torch.randn(h, d) * 0.02)
            self.rel_pos_w = nn.Parameter(torch.randn(w, d) * 0.02)

    @staticmethod
    def rel_index(q: int, k: int) -> torch.Tensor:
        """Rows of a relative position table for each (query, key) position pair along one axis: the distance
        scaled to the finer of the two grids, shifted to start at 0 (MViTv2, Li et al. 2022, eq. 4)."""
        q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
        return (torch.arange(q)[:, None] * q_ratio - (torch.arange(k)[None, :] + (1.0 - k)) * k_ratio).long()

    def rel_pos(self, attn: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Add q's dot products with the tables' rows for each axis' distance, per (query, key) pair of the grid
        tokens: einsums over H and W, a batched product over T (as torchvision writes them)."""
        assert self.rel_pos_t is not None and self.rel_pos_h is not None and self.rel_pos_w is not None
        (qt, qh, qw), (kt, kh, kw) = self.grid_q, self.grid_kv
        rt = self.rel_pos_t[self.rel_index(qt, kt).to(q.device)]
        rh = self.rel_pos_h[self.rel_index(qh, kh).to(q.device)]
        rw = self.rel_pos_w[self.rel_index(qw, kw).to(q.device)]
        b, heads, _, d = q.shape
        r_q = q[:, :, self.cls:].reshape(b, heads, qt, qh, qw, d)
        on_h = torch.einsum("bythwc,hkc->bythwk", r_q, rh)
        on_w = torch.einsum("bythwc,wkc->bythwk", r_q, rw)
        r_q = r_q.permute(2, 0, 1, 3, 4, 5).reshape(qt, b * heads * qh * qw, d)
        on_t = torch.matmul(r_q, rt.transpose(1, 2)).transpose(0, 1)
        on_t = on_t.view(b, heads, qh, qw, qt, kt).permute(0, 1, 4, 2, 3, 5)
        terms = (on_h[:, :, :, :, :, None, :, None] + on_w[:, :, :, :, :, None, None, :]
                 + on_t[:, :, :, :, :, :, None, None]).reshape(b, heads, qt * qh * qw, kt * kh * kw)
        attn[:, :, self.cls:, self.cls:] += terms
        return attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        if self.pool_k is not None and self.pool_v is not None:
            k, v = self.pool_k(k), self.pool_v(v)
        if self.pool_q is not None:
            q = self.pool_q(q)
        attn = torch.matmul(1.0 / self.head_dim ** 0.5 * q, k.transpose(2, 3))
        if self.rel_pos_t is not None:
            attn = self.rel_pos(attn, q)
        x = torch.matmul(attn.softmax(dim=-1), v)
        if self.residual_pool:
            x[:, :, self.cls:, :] += q[:, :, self.cls:, :]
        return self.project(x.transpose(1, 2).reshape(b, -1, self.output_dim))


class SeparablePositionEmbedding(nn.Module):
    """MViT's spatio-temporal position embedding: a T x C table repeated over the H W positions of each step plus
    an H W x C table repeated over the T steps, after a C-vector for the class token (if any); added to the tokens
    (torchvision's PositionalEncoding, out of place)."""

    def __init__(self, grid: Sequence[int], channels: int, class_tokens: int) -> None:
        super().__init__()
        self.steps, self.positions = grid[0], 1
        for size in grid[1:]:
            self.positions *= size
        self.spatial_pos = nn.Parameter(torch.randn(self.positions, channels) * 0.02)
        self.temporal_pos = nn.Parameter(torch.randn(self.steps, channels) * 0.02)
        self.class_pos = nn.Parameter(torch.randn(channels) * 0.02) if class_tokens else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.spatial_pos.shape[1]
        pos = torch.repeat_interleave(self.temporal_pos, self.positions, dim=0)
        pos.add_(self.spatial_pos.unsqueeze(0).expand(self.steps, -1, -1).reshape(-1, c))
        if self.class_pos is not None:
            pos = torch.cat((self.class_pos.unsqueeze(0), pos), dim=0)
        return x + pos.unsqueeze(0)


# ---- cross-covariance attention and Fourier position encoding (archcalc.core.kinds.covariance) -----------------------


class CrossCovarianceAttention(nn.Module):
    """XCiT's cross-covariance attention over B x N x C tokens (El-Nouby et al. 2021; timm's XCA and EdgeNeXt's
    CrossCovarianceAttn): one linear layer makes q, k and v, each laid out per head as d x N (d = C / heads
    channels over the N tokens); q and k L2-normalised over the tokens; per head softmax(temperature * Q K^T) over
    the d x d channel pairs, times V; the heads joined and projected. A learned temperature per head.
    `normalize=False` (DaViT's channel attention): no normalisation, no temperature, q scaled by d^-1/2 (`scale`
    "head") or N^-1/2 ("tokens")."""

    def __init__(self, channels: int, num_heads: int, qkv_bias: bool = True, normalize: bool = True,
                 scale: str = "head") -> None:
        super().__init__()
        self.num_heads, self.normalize, self.scale = num_heads, normalize, scale
        if normalize:
            self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 4, 1).unbind(0)
        if not self.normalize:
            q = q * ((c // h) ** -0.5 if self.scale == "head" else n ** -0.5)
            weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            return self.proj((weights @ v).permute(0, 3, 1, 2).reshape(b, n, c))
        weights = ((F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1))
                   * self.temperature).softmax(dim=-1)
        return self.proj((weights @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class FourierPositionEncoding(nn.Module):
    """XCiT's position encoding (El-Nouby et al. 2021, after Vaswani et al. 2017; timm's PositionalEncodingFourier,
    in XCiT and EdgeNeXt): per position of the H x W grid, `hidden_dim` sines and cosines of its row and as many of
    its column (each normalised to (0, 2 pi]: frequencies temperature ** (2 floor(i / 2) / hidden_dim)), projected
    by a 1 x 1 conv (2 hidden_dim -> C, bias) and added to the tokens. The features are made at forward time, not
    kept (no buffer); the projection runs once per forward and broadcasts over the batch (`once`: XCiT) or runs on
    every image (EdgeNeXt)."""

    def __init__(self, channels: int, grid: Sequence[int], hidden_dim: int = 32, temperature: float = 10000.0,
                 once: bool = False) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.once = once
        self.token_projection = nn.Conv2d(2 * hidden_dim, channels, kernel_size=1)

    def features(self) -> torch.Tensor:
        """1 x H W x 2 hidden_dim: per position the row's sines and cosines, then the column's (timm's order)."""
        h, w = self.grid
        device = self.token_projection.weight.device
        steps = torch.arange(self.hidden_dim, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / self.hidden_dim)

        def axis(size: int) -> torch.Tensor:  # size x hidden_dim
            pos = torch.arange(1, size + 1, device=device, dtype=torch.float32) / (size + 1e-6) * (2 * torch.pi)
            angles = pos[:, None] / dim_t
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

        rows = axis(h)[:, None, :].expand(h, w, self.hidden_dim)
        cols = axis(w)[None, :, :].expand(h, w, self.hidden_dim)
        return torch.cat((rows, cols), dim=2).reshape(1, h * w, 2 * self.hidden_dim).to(
            self.token_projection.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1 x N x 2 hidden_dim in the tokens' layout, projected as the 1 x 1 conv computes it (a matrix product:
        # the same MACs, no copy of its input)
        pos = self.features()
        if not self.once:
            pos = pos.expand(x.shape[0], -1, -1)
        return x + F.linear(pos, self.token_projection.weight.flatten(1), self.token_projection.bias)


class ClassAttention(nn.Module):
    """CaiT's class attention (Touvron et al. 2021, "Going deeper with image transformers", sec. 3; timm's
    ClassAttn, in CaiT and XCiT): only the first token (the class token) queries: q = W_q x_0, k = W_k x, v = W_v x
    (three C x C projections), per head softmax(q K^T / sqrt(d)) V, the heads joined and projected (C -> C, bias):
    B x N x C -> B x 1 x C. Written out as torch's math path (every product a counted op)."""

    def __init__(self, channels: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(channels, channels, bias=qkv_bias)
        self.k = nn.Linear(channels, channels, bias=qkv_bias)
        self.v = nn.Linear(channels, channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        q = self.q(x[:, 0]).reshape(b, h, 1, d)
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        weights = ((q * d ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, 1, c))


# ---- SwiftFormer's efficient additive attention (archcalc.core.kinds.additive) -----------------------------------


class AdditiveAttention(nn.Module):
    """SwiftFormer's efficient additive attention over B x N x C tokens (Shaker et al. 2023, sec. 3.2; timm's
    EfficientAdditiveAttention, one head): q and k from two C -> C linears, each L2-normalised over its channels;
    per token the score q w_g / sqrt(C), the scores L2-normalised over the tokens; the global query g = sum over
    the tokens of score x q; out = final(proj(g * k) + q). Parameters in timm's order and names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels ** -0.5
        self.to_query = nn.Linear(channels, channels)
        self.to_key = nn.Linear(channels, channels)
        self.w_g = nn.Parameter(torch.randn(channels, 1))
        self.proj = nn.Linear(channels, channels)
        self.final = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.to_query(x), dim=-1)
        k = F.normalize(self.to_key(x), dim=-1)
        scores = F.normalize(q @ self.w_g * self.scale, dim=1)
        g = torch.sum(scores * q, dim=1, keepdim=True)
        return self.final(self.proj(g * k) + q)


class SeparableAttention(nn.Module):
    """MobileViT-v2's separable self-attention (Mehta & Rastegari 2022; timm's LinearSelfAttention) on a B x C x H x W
    grid, without the unfolding: the P = ph x pw sequences are the positions of one offset in every patch, viewed in
    place (B x C x H/ph x ph x W/pw x pw). qkv = a 1 x 1 conv (C -> 1 + 2C); per sequence softmax of the scores q over
    its tokens, the context sum(k x scores) over them, ReLU(v) x context, a 1 x 1 output conv."""

    def __init__(self, channels: int, patch: Sequence[int], bias: bool = True) -> None:
        super().__init__()
        self.channels, self.patch = channels, tuple(patch)
        self.qkv_proj = nn.Conv2d(channels, 1 + 2 * channels, 1, bias=bias)
        self.out_proj = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each step deletes what it no longer needs, so what is alive at once is what separable_attention declares.
        b, c, h, w = x.shape
        ph, pw = self.patch
        nh, nw = h // ph, w // pw
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([1, c, c], dim=1)
        scores = q.reshape(b, nh, ph, nw, pw).permute(0, 2, 4, 1, 3).reshape(b, ph, pw, nh * nw).softmax(dim=-1)
        scores = scores.view(b, 1, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3)  # B x 1 x nh x ph x nw x pw (a view)
        weighted = k.reshape(b, c, nh, ph, nw, pw) * scores
        del q, k, scores
        context = weighted.sum(dim=(2, 4), keepdim=True)  # B x C x 1 x ph x 1 x pw
        del weighted
        values = F.relu(v)
        del qkv, v
        out = values.view(b, c, nh, ph, nw, pw) * context
        del values, context
        return self.out_proj(out.view(b, c, h, w))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, patch={self.patch}"


# ---- ReLU linear attention (archcalc.core.kinds.linattn) ----------------------------------------------------------


class LinearAttention(nn.Module):
    """EfficientViT-MIT's ReLU linear attention (timm's LiteMLA between its qkv convs and its projection, in its
    order of ops): the input's channels are heads of [q, k, v] (head_dim each); per head ReLU(q) (ReLU(k)^T [v, 1]),
    each position's values divided by the last plus eps; the heads laid out channels first again."""

    def __init__(self, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.head_dim, self.eps = head_dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = x.shape
        n = 1
        for size in spatial:
            n *= size
        qkv = x.reshape(b, -1, 3 * self.head_dim, n).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0)
        out = self._attn(q, k, v)
        return out.transpose(-1, -2).reshape(b, -1, *spatial)

    def _attn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = k.transpose(-1, -2) @ v
        out = q @ kv
        return out[..., :-1] / (out[..., -1:] + self.eps)


class MultiQueryAttention(nn.Module):
    """Multi-query attention on a B x C x H x W grid (MobileNetV4's Mobile MQA; timm's MultiQueryAttention2d, its
    submodules in the same order and the heads laid out alike): q = 1x1 conv (C -> h kd); k and v each a 1x1 conv
    (C -> kd, C -> vd) of the grid, or with kv_stride of the grid through a depthwise conv and a batch norm of their
    own (MobileNetV5: an RMS norm); every query head attends over the one key and value head; the heads joined
    and projected by a 1x1 conv.
    Written out as torch's math path: the h heads' queries as the rows of one matrix (h N x kd), so Q K^T and A V
    are one bmm each (counted by FlopCounterMode and fvcore), each temporary freed as soon as it is read."""

    exports_with = (RMSNorm,)  # (archcalc export copies it with this class: kv_norm rmsnorm makes one)

    def __init__(self, channels: int, num_heads: int, key_dim: int, value_dim: int, kv_stride: int = 1,
                 kv_kernel: int = 3, out_features: int = 0, kv_norm: str = "batchnorm", norm: str = "none",
                 gate: bool = False, kv_pads: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.kv_stride, self.gate = kv_stride, gate
        # (iFormer's ConvNorm: a batch norm after each projection; its gate: v's projection twice as wide)
        normed = norm == "batchnorm"
        self.query = nn.Conv2d(channels, num_heads * key_dim, 1, bias=False)
        self.query_norm = nn.BatchNorm2d(num_heads * key_dim) if normed else nn.Identity()
        pad = ((kv_stride - 1) + (kv_kernel - 1)) // 2  # timm's symmetric default (create_conv2d, padding '')
        # TF-'same' (timm's Conv2dSame): F.pad's (left, right, top, bottom) before the conv, which pads nothing
        self.kv_pads = tuple(p for before_after in reversed(tuple(kv_pads)) for p in before_after)
        if kv_pads:
            pad = 0
        self.key_down: nn.Module | None = None
        self.value_down: nn.Module | None = None
        if kv_stride > 1:
            self.key_down = nn.Conv2d(channels, channels, kv_kernel, kv_stride, pad, groups=channels, bias=False)
            self.key_norm = nn.BatchNorm2d(channels) if kv_norm == "batchnorm" else RMSNorm(channels, 2, 1e-6, True,
                                                                                           "mean_square")
        self.key = nn.Conv2d(channels, key_dim, 1, bias=False)
        self.key_proj_norm = nn.BatchNorm2d(key_dim) if normed else nn.Identity()
        if kv_stride > 1:
            self.value_down = nn.Conv2d(channels, channels, kv_kernel, kv_stride, pad, groups=channels, bias=False)
            self.value_norm = nn.BatchNorm2d(channels) if kv_norm == "batchnorm" else RMSNorm(channels, 2, 1e-6,
                                                                                               True, "mean_square")
        self.value = nn.Conv2d(channels, (2 if gate else 1) * value_dim, 1, bias=False)
        self.value_proj_norm = nn.BatchNorm2d(self.value.out_channels) if normed else nn.Identity()
        self.out = nn.Conv2d(num_heads * value_dim, out_features or channels, 1, bias=False)
        self.out_norm = nn.BatchNorm2d(self.out.out_channels) if normed else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, hh, ww = x.shape
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        n = hh * ww
        q = self.query_norm(self.query(x))
        # per head, its positions' queries as rows: B x (h N) x kd (a copy), scaled in place
        qs = q.view(b, h, kd, n).transpose(-1, -2).contiguous().mul_(kd ** -0.5).view(b, h * n, kd)
        del q
        if self.key_down is not None and any(self.kv_pads):
            kx = self.key_norm(self.key_down(F.pad(x, self.kv_pads)))
        else:
            kx = self.key_norm(self.key_down(x)) if self.key_down is not None else x
        k = self.key_proj_norm(self.key(kx)).flatten(2)  # B x kd x M
        del kx
        if self.value_down is not None and any(self.kv_pads):
            vx = self.value_norm(self.value_down(F.pad(x, self.kv_pads)))
        else:
            vx = self.value_norm(self.value_down(x)) if self.value_down is not None else x
        v = self.value_proj_norm(self.value(vx))
        del vx
        gate = None
        if self.gate:  # v and the gate: views of the sigmoid's output
            v = v.sigmoid()
            v, gate = v[:, :vd], v[:, vd:]
        v = v.flatten(2)  # B x vd x M
        scores = qs @ k
        del qs, k
        weights = scores.softmax(dim=-1)
        del scores
        o = weights @ v.transpose(1, 2)  # B x (h N) x vd
        del weights, v
        joined = o.view(b, h, n, vd).transpose(-1, -2).reshape(b, h * vd, hh, ww)  # a copy
        del o
        if gate is not None:
            joined = joined * gate
            del gate
        return self.out_norm(self.out(joined))


# ---- EfficientViT-MSRA's cascaded group attention (archcalc.core.kinds.msra) ------------------------------------


class CascadedAttention(nn.Module):
    """EfficientViT-MSRA's local window attention (Liu et al. 2023, sec. 3.2; timm's LocalWindowAttention around
    CascadedGroupAttention, whose parameter and buffer names it keeps): a B x C x H x W grid, unless it is one
    window, zero-padded (channels last) to a multiple of the window w and cut into w x w windows; in each window,
    per head i, the input's i-th channel split plus the previous head's output through a 1 x 1 conv and a batch norm
    to q, k (key_dim each) and v (C / heads), a depthwise conv and a batch norm on q, softmax(Q^T K key_dim^-1/2 +
    B_i) with B_i a learned bias per absolute offset |dy| w + |dx| gathered by an index buffer, V A^T; the heads
    joined, ReLU, a 1 x 1 conv and a batch norm back to C; the windows put back and the padding cropped."""

    def __init__(self, dim: int, num_heads: int, key_dim: int, window: int, kernels: Sequence[int]) -> None:
        super().__init__()
        value_dim = dim // num_heads  # (v is the next head's input)
        self.num_heads, self.key_dim, self.val_dim, self.window = num_heads, key_dim, value_dim, window
        self.scale = key_dim ** -0.5

        def conv_norm(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
            seq = nn.Sequential()
            seq.add_module("conv", nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False))
            seq.add_module("bn", nn.BatchNorm2d(cout))
            return seq
        self.qkvs = nn.ModuleList(conv_norm(dim // num_heads, 2 * key_dim + value_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(conv_norm(key_dim, key_dim, k, key_dim) for k in kernels)
        self.proj = nn.Sequential(nn.ReLU(), conv_norm(value_dim * num_heads, dim))
        m = window * window
        self.attention_biases = nn.Parameter(torch.randn(num_heads, m) * 0.1)
        points = [(y, x) for y in range(window) for x in range(window)]
        index = [abs(p[0] - q[0]) * window + abs(p[1] - q[1]) for p in points for q in points]
        self.register_buffer("attention_bias_idxs", torch.tensor(index, dtype=torch.long).view(m, m),
                             persistent=False)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        chunks = x.chunk(self.num_heads, dim=1)
        index: torch.Tensor = self.attention_bias_idxs  # type: ignore[assignment]
        bias = self.attention_biases[:, index]
        outs = []
        feat = chunks[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + chunks[i]
            q, k, v = qkv(feat).view(b, -1, h, w).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q, k, v = dw(q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q * self.scale).transpose(-2, -1) @ k + bias[i]).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(b, self.val_dim, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window
        if h == ws and w == ws:
            return self.attend(x)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws, ws, c).permute(0, 3, 1, 2)
        x = self.attend(x)
        x = x.permute(0, 2, 3, 1).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].contiguous().permute(0, 3, 1, 2)


class EfficientFormerV2Attention(nn.Module):
    """EfficientFormer-V2's attention on a B x C x H x W grid (Li et al. 2023; timm's Attention2d and
    Attention2dDownsample, without their activation and output projection, which are layers of their own): q, k, v
    from 1 x 1 convs + batch norms (C -> heads x key_dim, heads x key_dim, heads x value_dim = D), v_local a
    depthwise 3 x 3 conv + batch norm of v; per head the scaled scores q^T k plus a learned table per head and
    |offset| of two positions (LeViT's); with talking heads a 1 x 1 conv over the heads' score maps before the
    softmax and another after; A V, laid out as D x H x W, plus v_local. `downsample`: q from the grid subsampled by
    2 plus a strided depthwise 3 x 3 conv of it (its local and global query), projected by a 1 x 1 conv + batch
    norm; v_local strided by 2: the output is D x ceil(H / 2) x ceil(W / 2)."""

    def __init__(self, channels: int, num_heads: int, key_dim: int, value_dim: int, size: Sequence[int],
                 talking_heads: bool = True, downsample: bool = False) -> None:
        super().__init__()
        h, w = size
        kh, dh = num_heads * key_dim, num_heads * value_dim
        self.num_heads, self.key_dim, self.downsample = num_heads, key_dim, downsample
        if downsample:
            self.q_local = nn.Conv2d(channels, channels, 3, 2, 1, groups=channels)
        self.q = nn.Sequential(nn.Conv2d(channels, kh, 1), nn.BatchNorm2d(kh))
        self.k = nn.Sequential(nn.Conv2d(channels, kh, 1), nn.BatchNorm2d(kh))
        self.v = nn.Sequential(nn.Conv2d(channels, dh, 1), nn.BatchNorm2d(dh))
        self.v_local = nn.Sequential(nn.Conv2d(dh, dh, 3, 2 if downsample else 1, 1, groups=dh), nn.BatchNorm2d(dh))
        self.talking_heads = talking_heads
        if talking_heads:
            self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
            self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        s = 2 if downsample else 1
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        qy, qx = torch.meshgrid(torch.arange(0, h, s), torch.arange(0, w, s), indexing="ij")
        ys, xs, qy, qx = ys.flatten(), xs.flatten(), qy.flatten(), qx.flatten()
        index = (qy[:, None] - ys[None, :]).abs() * w + (qx[:, None] - xs[None, :]).abs()
        self.attention_biases = nn.Parameter(torch.empty(num_heads, h * w).normal_(std=0.02))
        self.register_buffer("attention_bias_idxs", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        heads = self.num_heads
        index: torch.Tensor = self.attention_bias_idxs  # type: ignore[assignment]
        bias = self.attention_biases[:, index]  # (from the table alone, whatever the batch)
        if self.downsample:
            query = self.q_local(x) + x[:, :, ::2, ::2]
            q = self.q(query)
            del query
        else:
            q = self.q(x)
        k = self.k(x)
        v = self.v(x)
        local = self.v_local(v)
        oh, ow = q.shape[2:]
        q = q.flatten(2).view(b, heads, -1, oh * ow).transpose(-2, -1)
        k = k.flatten(2).view(b, heads, self.key_dim, -1)
        v = v.flatten(2).view(b, heads, -1, k.shape[-1]).transpose(-2, -1)
        scores = torch.add(bias, q @ k, alpha=self.key_dim ** -0.5)  # (alpha: no scalar tensor made)
        del q, k
        if self.talking_heads:
            scores = self.talking_head1(scores)
        weights = scores.softmax(dim=-1)
        del scores
        if self.talking_heads:
            weights = self.talking_head2(weights)
        joined = (weights @ v).transpose(-2, -1)
        del weights, v
        return joined.reshape(b, -1, oh, ow) + local


class GlobalQueryAttention(nn.Module):
    """GCViT's global query attention (Hatamizadeh et al. 2023; timm's WindowAttentionGlobal with use_global) on
    B x (M + N) x C tokens: the first M = w_h w_w the query grid, the other N those of the H x W `grid`. The grid cut
    into windows of M tokens; per window k, v = x W_kv (C -> 2C); the queries repeated for every window of the image
    (not projected), scaled by d^-1/2; softmax(Q K^T + B) V per head with B gathered from Swin's relative position
    table; the heads joined, projected (C -> C) and the windows merged: B x N x C."""

    def __init__(self, channels: int, grid: Sequence[int], num_heads: int, window_size: Sequence[int],
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.grid, self.num_heads, self.window_size = tuple(grid), num_heads, tuple(window_size)
        self.kv = nn.Linear(channels, 2 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * wh - 1) * (2 * ww - 1), num_heads)
                                                         .normal_(std=0.02))
        y, x = (c.flatten() for c in torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
        index = (y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + (x[:, None] - x[None, :] + ww - 1)
        self.register_buffer("relative_position_index", index.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        heads, (wh, ww), (h, w) = self.num_heads, self.window_size, self.grid
        m, d = wh * ww, c // heads
        windows = (h // wh) * (w // ww)
        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        bias = self.relative_position_bias_table[index].view(m, m, -1).permute(2, 0, 1).unsqueeze(0)
        q = x[:, :m].reshape(b, 1, m, c).expand(b, windows, m, c).reshape(b * windows, m, heads, d)
        t = x[:, m:].reshape(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, m, c)
        del x
        k, v = self.kv(t).reshape(b * windows, m, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        del t
        x = (q.permute(0, 2, 1, 3) * d ** -0.5) @ k.transpose(-2, -1)
        del q, k
        x = (x + bias).softmax(dim=-1) @ v
        del v, bias
        x = self.proj(x.transpose(1, 2).reshape(b * windows, m, c))
        return x.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, c)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_heads={self.num_heads}, window_size={self.window_size}"
