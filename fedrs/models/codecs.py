"""Per-modality learned codecs and their registry.

Two architectures, both with an analysis transform ``g_a``, a synthesis ``g_s``, a hyperprior
``h_a`` / ``h_s``, a factorized bottleneck for ``z`` and a conditional entropy model for ``y``:

* ``"hyperprior"``: the mean-scale hyperprior of Minnen et al. 2018 / Ballé et al. 2018
  (5x5 strided convolutions with GDN; Gaussian conditional);
* ``"cheng2020-attn"``: Cheng et al. 2020 (residual and simplified attention blocks, sub-pixel
  upsampling; Gaussian mixture conditional with K = 3).  The autoregressive context model is
  left out, so decoding stays parallel.

The latent ``y`` has stride 16 and ``z`` stride 64: inputs are padded (replicated edge) to a
multiple of 64 and the reconstruction is cropped back (120 -> 128, ``y`` 8x8, ``z`` 2x2).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedrs.errors import InputError
from fedrs.models.entropy import (
    ConditionalEntropyModel,
    EntropyBottleneck,
    GaussianConditional,
    GaussianMixtureConditional,
)
from fedrs.models.layers import (
    GDN,
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv,
    conv1x1,
    conv3x3,
    deconv,
    in_fixed_chunks,
    ste_round,
    subpel_conv3x3,
)

__all__ = [
    "Cheng2020AttnCodec",
    "Codec",
    "CompressedPatch",
    "HyperpriorCodec",
    "UnknownCodecError",
    "available_codecs",
    "build_codec",
    "register_codec",
]


class UnknownCodecError(InputError):
    """A codec name that no codec is registered under."""


_CODECS: dict[str, type[Codec]] = {}

C = TypeVar("C", bound="type[Codec]")


def register_codec(name: str) -> Callable[[C], C]:
    """Class decorator registering a :class:`Codec` subclass under ``name``."""

    def decorator(cls: C) -> C:
        if name in _CODECS and _CODECS[name] is not cls:
            raise ValueError(f"codec {name!r} is already registered")
        _CODECS[name] = cls
        cls.name = name
        return cls

    return decorator


def available_codecs() -> tuple[str, ...]:
    """Names of the registered codecs."""
    return tuple(sorted(_CODECS))


def build_codec(
    name: str, in_channels: int, *, width: int = 32, latent: int = 48, **options: int
) -> Codec:
    """Instantiate the codec registered under ``name``.

    Args:
        name: registry name (``"hyperprior"``, ``"cheng2020-attn"``).
        in_channels: image bands.
        width: channels N of the transforms.
        latent: channels M of ``y``.
        **options: further keyword arguments of the codec (e.g. ``gmm_components``).

    Raises:
        UnknownCodecError: no codec has that name.
    """
    try:
        cls: Any = _CODECS[name]
    except KeyError:
        raise UnknownCodecError(
            f"unknown codec {name!r}; expected one of {list(available_codecs())}"
        ) from None
    return cls(in_channels, width=width, latent=latent, **options)


_HEADER = struct.Struct("<4sHHHHII")
_MAGIC = b"FRC1"


@dataclass(frozen=True)
class CompressedPatch:
    """Bitstreams of one patch of one modality.

    Attributes:
        y: entropy-coded latent symbols.
        z: entropy-coded hyper-latent symbols.
        z_shape: spatial shape (h, w) of ``z``.
        image_size: spatial shape (H, W) of the original image.
    """

    y: bytes
    z: bytes
    z_shape: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def num_bytes(self) -> int:
        """Payload size (both streams, without the container header)."""
        return len(self.y) + len(self.z)

    def to_bytes(self) -> bytes:
        """Self-describing container: magic, shapes, stream lengths, ``z`` then ``y``."""
        header = _HEADER.pack(_MAGIC, *self.image_size, *self.z_shape, len(self.z), len(self.y))
        return header + self.z + self.y

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressedPatch:
        """Parse :meth:`to_bytes` output.

        Raises:
            InputError: the data is not such a container or is truncated.
        """
        if len(data) < _HEADER.size:
            raise InputError(f"compressed patch too short ({len(data)} bytes)")
        magic, height, width, zh, zw, nz, ny = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise InputError(f"not a compressed patch (magic {magic!r})")
        if len(data) != _HEADER.size + nz + ny:
            raise InputError(
                f"compressed patch has {len(data)} bytes, header says {_HEADER.size + nz + ny}"
            )
        start = _HEADER.size
        return cls(
            y=bytes(data[start + nz : start + nz + ny]),
            z=bytes(data[start : start + nz]),
            z_shape=(zh, zw),
            image_size=(height, width),
        )


class Codec(nn.Module):
    """Learned image codec with a hyperprior.

    Subclasses build ``g_a``, ``g_s``, ``h_a``, ``h_s`` and choose the conditional model.
    ``forward`` returns ``{"x_hat", "y", "y_hat", "likelihoods": {"y", "z"}}``: in training
    ``y_hat`` is ``round(y - means) + means`` with a straight-through gradient (used by ``g_s``
    and the hash head) and the likelihoods are those of the noisy latents; at evaluation both
    use the rounded latents, exactly as :meth:`compress` / :meth:`decompress` code them.

    At evaluation and in :meth:`compress` / :meth:`decompress` the transforms that feed the
    bitstreams (``g_a``, ``h_a``, ``h_s``) run on fixed-size pieces of the batch, so a patch
    gets the same bytes alone and in any batch (see :mod:`fedrs.models.entropy`).
    """

    name: ClassVar[str] = ""
    stride: ClassVar[int] = 64
    """Total downsampling of ``z``; inputs are padded to a multiple of it."""
    latent_stride: ClassVar[int] = 16
    """Downsampling of ``y``."""

    g_a: nn.Module
    g_s: nn.Module
    h_a: nn.Module
    h_s: nn.Module

    def __init__(
        self,
        in_channels: int,
        width: int,
        latent: int,
        conditional: ConditionalEntropyModel,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or latent < 1:
            raise InputError(
                f"codec sizes must be positive (in_channels={in_channels}, width={width}, "
                f"latent={latent})"
            )
        self.in_channels = int(in_channels)
        self.width = int(width)
        self.latent = int(latent)
        self.entropy_bottleneck = EntropyBottleneck(width)
        self.conditional = conditional

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"{self.name} codec expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[0] < 1:
            raise InputError("empty batch")

    def pad(self, x: Tensor) -> Tensor:
        """Replicate the right/bottom edge up to a multiple of :attr:`stride`."""
        height, width = x.shape[-2:]
        ph = (-height) % self.stride
        pw = (-width) % self.stride
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def analysis(self, x: Tensor) -> Tensor:
        """``y = g_a(pad(x))`` on the whole batch (see :meth:`encode_latents` for coding)."""
        self._check(x)
        y: Tensor = self.g_a(self.pad(x))
        return y

    def encode_latents(self, x: Tensor, *, invariant: bool) -> tuple[Tensor, Tensor]:
        """``y = g_a(pad(x))`` and ``z = h_a(y)``.

        With ``invariant`` both run on fixed-size pieces of the batch
        (:func:`~fedrs.models.layers.in_fixed_chunks`), so an item's ``y`` and ``z`` are the
        same bits whatever batch it came in; without, on the whole batch (training: faster).
        """
        self._check(x)

        def encode(piece: Tensor) -> dict[str, Tensor]:
            y = self.g_a(self.pad(piece))
            return {"y": y, "z": self.h_a(y)}

        out = in_fixed_chunks(encode, x) if invariant else encode(x)
        return out["y"], out["z"]

    def synthesis(self, y_hat: Tensor, image_size: Sequence[int]) -> Tensor:
        """``g_s(y_hat)`` cropped to ``image_size``."""
        x_hat: Tensor = self.g_s(y_hat)
        return x_hat[..., : image_size[0], : image_size[1]]

    def entropy_parameters(self, z_hat: Tensor, *, invariant: bool) -> dict[str, Tensor]:
        """Parameters of the conditional model from ``h_s(z_hat)``.

        With ``invariant`` ``h_s`` and the split into parameters run on fixed-size pieces of
        the batch (:func:`~fedrs.models.layers.in_fixed_chunks`), so that an item's parameters
        do not depend on the batch it came in (encoder and decoder then agree bit for bit).
        """

        def parameters(piece: Tensor) -> dict[str, Tensor]:
            return self.conditional.parameters_from(self.h_s(piece))

        return in_fixed_chunks(parameters, z_hat) if invariant else parameters(z_hat)

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        y, z = self.encode_latents(x, invariant=not self.training)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        params = self.entropy_parameters(z_hat, invariant=not self.training)
        y_tilde, y_likelihoods = self.conditional(y, params)
        if self.training:
            means = self.conditional.means(params)
            y_hat = ste_round(y - means) + means
        else:
            y_hat = y_tilde
        return {
            "x_hat": self.synthesis(y_hat, x.shape[-2:]),
            "y": y,
            "y_hat": y_hat,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
        }

    def update(self, force: bool = False) -> bool:
        """Rebuild the entropy models' tables if needed; True if any was rebuilt."""
        updated = self.entropy_bottleneck.update(force=force)
        return self.conditional.update(force=force) or updated

    @torch.no_grad()
    def compress(self, x: Tensor) -> list[CompressedPatch]:
        """Entropy-code a batch (B, C, H, W) into one :class:`CompressedPatch` per image."""
        y, z = self.encode_latents(x, invariant=True)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.quantize(
            z, "dequantize", self.entropy_bottleneck.medians(z.dim())
        )
        params = self.entropy_parameters(z_hat, invariant=True)
        y_strings = self.conditional.compress(y, params)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        z_shape = (int(z.shape[-2]), int(z.shape[-1]))
        return [
            CompressedPatch(y=ys, z=zs, z_shape=z_shape, image_size=size)
            for ys, zs in zip(y_strings, z_strings, strict=True)
        ]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def decompress_latents(self, patches: Sequence[CompressedPatch]) -> Tensor:
        """Entropy-decode ``y_hat`` (B, M, h, w) only, without the synthesis transform."""
        if not patches:
            raise InputError("no compressed patches given")
        shapes = {p.z_shape for p in patches}
        if len(shapes) != 1:
            raise InputError(f"patches of different latent shapes in one batch: {sorted(shapes)}")
        z_hat = self.entropy_bottleneck.decompress([p.z for p in patches], patches[0].z_shape)
        params = self.entropy_parameters(z_hat.to(self._device()), invariant=True)
        return self.conditional.decompress([p.y for p in patches], params)

    @torch.no_grad()
    def decompress(self, patches: Sequence[CompressedPatch]) -> dict[str, Tensor]:
        """Decode patches to ``{"x_hat": (B, C, H, W), "y_hat": (B, M, h, w)}``."""
        sizes = {p.image_size for p in patches}
        if len(sizes) > 1:
            raise InputError(f"patches of different image sizes in one batch: {sorted(sizes)}")
        y_hat = self.decompress_latents(patches)
        return {"x_hat": self.synthesis(y_hat, patches[0].image_size), "y_hat": y_hat}

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``g_a`` (shared by the rate-distortion and hashing objectives)."""
        return list(self.g_a.parameters())


@register_codec("hyperprior")
class HyperpriorCodec(Codec):
    """Mean-scale hyperprior (Minnen et al. 2018 "Joint autoregressive and hierarchical priors",
    without the context model; Ballé et al. 2018 transforms with GDN)."""

    def __init__(self, in_channels: int, *, width: int = 32, latent: int = 48) -> None:
        super().__init__(in_channels, width, latent, GaussianConditional())
        n, m = width, latent
        self.g_a = nn.Sequential(
            conv(in_channels, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m)
        )
        self.g_s = nn.Sequential(
            deconv(m, n),
            GDN(n, inverse=True),
            deconv(n, n),
            GDN(n, inverse=True),
            deconv(n, n),
            GDN(n, inverse=True),
            deconv(n, in_channels),
        )
        self.h_a = nn.Sequential(
            conv(m, n, stride=1, kernel_size=3),
            nn.LeakyReLU(inplace=True),
            conv(n, n),
            nn.LeakyReLU(inplace=True),
            conv(n, n),
        )
        mid = max(m * 3 // 2, 1)
        self.h_s = nn.Sequential(
            deconv(n, m),
            nn.LeakyReLU(inplace=True),
            deconv(m, mid),
            nn.LeakyReLU(inplace=True),
            conv(mid, self.conditional.hyper_channels(m), stride=1, kernel_size=3),
        )


@register_codec("cheng2020-attn")
class Cheng2020AttnCodec(Codec):
    """Cheng et al. 2020 "Learned image compression with discretized Gaussian mixture likelihoods
    and attention modules": residual blocks, attention, sub-pixel upsampling, GMM (K = 3)."""

    def __init__(
        self, in_channels: int, *, width: int = 32, latent: int = 48, gmm_components: int = 3
    ) -> None:
        super().__init__(
            in_channels, width, latent, GaussianMixtureConditional(components=gmm_components)
        )
        n, m = width, latent
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(in_channels, n, stride=2),
            ResidualBlock(n, n),
            ResidualBlockWithStride(n, n, stride=2),
            AttentionBlock(n),
            ResidualBlock(n, n),
            ResidualBlockWithStride(n, n, stride=2),
            ResidualBlock(n, n),
            conv3x3(n, m, stride=2),
            AttentionBlock(m),
        )
        self.g_s = nn.Sequential(
            AttentionBlock(m),
            ResidualBlock(m, n),
            ResidualBlockUpsample(n, n, 2),
            ResidualBlock(n, n),
            ResidualBlockUpsample(n, n, 2),
            AttentionBlock(n),
            ResidualBlock(n, n),
            ResidualBlockUpsample(n, n, 2),
            ResidualBlock(n, n),
            subpel_conv3x3(n, in_channels, 2),
        )
        self.h_a = nn.Sequential(
            conv3x3(m, n),
            nn.LeakyReLU(inplace=True),
            conv3x3(n, n),
            nn.LeakyReLU(inplace=True),
            conv3x3(n, n, stride=2),
            nn.LeakyReLU(inplace=True),
            conv3x3(n, n),
            nn.LeakyReLU(inplace=True),
            conv3x3(n, n, stride=2),
        )
        mid = max(n * 3 // 2, 1)
        self.h_s = nn.Sequential(
            conv3x3(n, n),
            nn.LeakyReLU(inplace=True),
            subpel_conv3x3(n, n, 2),
            nn.LeakyReLU(inplace=True),
            conv3x3(n, mid),
            nn.LeakyReLU(inplace=True),
            subpel_conv3x3(mid, mid, 2),
            nn.LeakyReLU(inplace=True),
            conv3x3(mid, 2 * m),
            nn.LeakyReLU(inplace=True),
            conv1x1(2 * m, self.conditional.hyper_channels(m)),
        )
