"""Building blocks of the learned codecs: GDN/IGDN, strided, sub-pixel and masked convolutions,
residual and attention blocks (the layers of Ballé et al. 2018, Minnen et al. 2018 and Cheng et al.
2020, after CompressAI's design).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedrs.errors import InputError

__all__ = [
    "EVAL_CHUNK",
    "GDN",
    "AttentionBlock",
    "MaskedConv2d",
    "NonNegativeParametrizer",
    "ResidualBlock",
    "ResidualBlockUpsample",
    "ResidualBlockWithStride",
    "conv",
    "conv1x1",
    "conv3x3",
    "deconv",
    "in_fixed_chunks",
    "lower_bound",
    "ste_round",
    "subpel_conv3x3",
]


EVAL_CHUNK = 16
"""Items per call of the layers whose results must not depend on the batch an item came in."""

Batch = Tensor | Mapping[str, "Batch"]
"""A tensor with a leading batch dimension, or a (nested) mapping of them."""


def _map(fn: Callable[[Tensor], Tensor], tree: Batch) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree)
    return {key: _map(fn, value) for key, value in tree.items()}


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    return {key: _cat([part[key] for part in parts]) for key in first}


def _batch_size(tree: Batch) -> int:
    if isinstance(tree, Tensor):
        return int(tree.shape[0])
    sizes = {_batch_size(value) for value in tree.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs with different batch sizes: {sorted(sizes)}")
    return sizes.pop()


def _rows(start: int, count: int) -> Callable[[Tensor], Tensor]:
    return lambda t: t[start : start + count]


def in_fixed_chunks(fn: Callable[[Any], Any], inputs: Batch, chunk: int = EVAL_CHUNK) -> Any:
    """``fn(inputs)`` computed on pieces of exactly ``chunk`` items, the last one zero-padded.

    A convolution or matrix product may round differently for different batch sizes (the
    library picks its kernels and blocking by shape), but for a fixed shape each item's result
    depends on that item alone.  Running ``fn`` on fixed-size pieces therefore gives every item
    the same bits whatever batch it arrives in, which the entropy coder and the hash codes need
    (the encoder and the decoder must agree exactly), at nearly the speed of a whole batch.

    Args:
        fn: maps a batch (a tensor or a nested mapping of tensors, batch dimension first) to a
            result of the same kind.
        inputs: the batch.
        chunk: items per call.

    Returns:
        The pieces' results concatenated, trimmed to the batch size.
    """
    total = _batch_size(inputs)
    pad = (-total) % chunk
    if pad:
        inputs = _map(lambda t: torch.cat([t, t.new_zeros(pad, *t.shape[1:])]), inputs)
    parts = [fn(_map(_rows(start, chunk), inputs)) for start in range(0, total + pad, chunk)]
    return _map(lambda t: t[:total], _cat(parts))


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient passes through where it pushes ``x`` back above the bound."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through.to(grad_output.dtype) * grad_output, None


def lower_bound(x: Tensor, bound: float | Tensor) -> Tensor:
    """Lower-bound ``x`` by ``bound`` keeping a useful gradient below the bound."""
    b = bound if isinstance(bound, Tensor) else torch.tensor(bound, dtype=x.dtype, device=x.device)
    out: Tensor = _LowerBound.apply(x, b.to(dtype=x.dtype, device=x.device))
    return out


def ste_round(x: Tensor) -> Tensor:
    """Round with a straight-through (identity) gradient."""
    return x + (torch.round(x) - x).detach()


class NonNegativeParametrizer(nn.Module):
    """Re-parametrisation ``v = max(p, bound)^2 - pedestal`` keeping a parameter non-negative."""

    pedestal: Tensor
    bound: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2.0**-18) -> None:
        super().__init__()
        self.minimum = float(minimum)
        pedestal = float(reparam_offset) ** 2
        self.register_buffer("pedestal", torch.tensor(pedestal), persistent=False)
        self.register_buffer(
            "bound", torch.tensor((self.minimum + pedestal) ** 0.5), persistent=False
        )

    def init(self, x: Tensor) -> Tensor:
        """Parameter value representing ``x``."""
        return torch.sqrt(torch.clamp(x + self.pedestal, min=float(self.pedestal)))

    def forward(self, x: Tensor) -> Tensor:
        return lower_bound(x, self.bound) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalised divisive normalisation (Ballé et al. 2016); ``inverse=True`` gives IGDN.

    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (IGDN multiplies instead of dividing).
    """

    def __init__(
        self,
        channels: int,
        *,
        inverse: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
    ) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).view(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Convolution with "same" padding (downsamples by ``stride``)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )


def deconv(
    in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2
) -> nn.ConvTranspose2d:
    """Transposed convolution upsampling exactly by ``stride``."""
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        output_padding=stride - 1,
        padding=kernel_size // 2,
    )


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride)


def subpel_conv3x3(in_channels: int, out_channels: int, r: int = 1) -> nn.Sequential:
    """3x3 convolution followed by a pixel shuffle upsampling by ``r``."""
    return nn.Sequential(conv3x3(in_channels, out_channels * r**2), nn.PixelShuffle(r))


class MaskedConv2d(nn.Conv2d):
    """Convolution whose kernel sees only the positions before its centre in raster order.

    Mask ``"A"`` hides the centre and everything after it, mask ``"B"`` only what follows the
    centre (van den Oord et al. 2016; CompressAI's ``MaskedConv2d``).  The context model of
    Minnen et al. 2018 is a type-A 5x5 masked convolution over ``y_hat``.  The kernel is
    multiplied by the mask at every call (:meth:`masked_weight`), so the hidden weights get no
    gradient and the result never depends on them.
    """

    mask: Tensor

    def __init__(self, *args: Any, mask_type: str = "A", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if mask_type not in ("A", "B"):
            raise InputError(f'mask_type must be "A" or "B", got {mask_type!r}')
        self.mask_type = mask_type
        height, width = self.weight.shape[-2:]
        mask = torch.ones(1, 1, height, width)
        mask[:, :, height // 2, width // 2 + (mask_type == "B") :] = 0
        mask[:, :, height // 2 + 1 :] = 0
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        """The kernel with the hidden positions zeroed."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class ResidualBlockWithStride(nn.Module):
    """Residual block downsampling by ``stride`` (conv, LeakyReLU, conv, GDN + 1x1 skip)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.gdn = GDN(out_channels)
        self.skip: nn.Module | None = (
            conv1x1(in_channels, out_channels, stride=stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.skip is None else self.skip(x)
        out = self.gdn(self.conv2(self.leaky_relu(self.conv1(x))))
        return out + identity


class ResidualBlockUpsample(nn.Module):
    """Residual block upsampling by ``upsample`` (sub-pixel conv, LeakyReLU, conv, IGDN)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: int = 2) -> None:
        super().__init__()
        self.subpel_conv = subpel_conv3x3(in_channels, out_channels, upsample)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv = conv3x3(out_channels, out_channels)
        self.igdn = GDN(out_channels, inverse=True)
        self.upsample = subpel_conv3x3(in_channels, out_channels, upsample)

    def forward(self, x: Tensor) -> Tensor:
        out = self.igdn(self.conv(self.leaky_relu(self.subpel_conv(x))))
        return out + self.upsample(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with LeakyReLU and an identity (or 1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.skip: nn.Module | None = (
            conv1x1(in_channels, out_channels) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.skip is None else self.skip(x)
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        return out + identity


class _ResidualUnit(nn.Module):
    """Bottleneck residual unit of the attention block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = max(channels // 2, 1)
        self.conv = nn.Sequential(
            conv1x1(channels, half),
            nn.ReLU(inplace=True),
            conv3x3(half, half),
            nn.ReLU(inplace=True),
            conv1x1(half, channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x) + x)


class AttentionBlock(nn.Module):
    """Simplified attention module of Cheng et al. 2020: ``a * sigmoid(b) + x``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = nn.Sequential(*(_ResidualUnit(channels) for _ in range(3)))
        self.conv_b = nn.Sequential(
            *(_ResidualUnit(channels) for _ in range(3)), conv1x1(channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_a(x) * torch.sigmoid(self.conv_b(x)) + x
