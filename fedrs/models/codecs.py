"""Per-modality learned codecs and their registry.

Three codecs, all with an analysis transform ``g_a``, a synthesis ``g_s``, a hyperprior
``h_a`` / ``h_s``, a factorized bottleneck for ``z`` and a conditional entropy model for ``y``:

* ``"hyperprior"``: the mean-scale hyperprior of Minnen et al. 2018 / Ballé et al. 2018
  (5x5 strided convolutions with GDN; Gaussian conditional);
* ``"cheng2020-attn"``: Cheng et al. 2020 (residual and simplified attention blocks, sub-pixel
  upsampling; Gaussian mixture conditional with K = 3) without a context model: the parameters
  of ``y`` come from ``z`` alone, so all positions decode at once;
* ``"cheng2020-attn-ctx"``: the same transforms with the autoregressive context model of Minnen
  et al. 2018 ("Joint"), as in Cheng et al.'s full model: a 5x5 masked convolution over the
  already decoded latents joins the hyperprior in predicting the mixture's parameters.  The
  context can lower the rate, but coding is serial: ``h * w`` sequential steps per piece of
  ``EVAL_CHUNK`` patches (64 for 120x120 patches), each a few small convolutions, the tables of
  one position and a call into the range coder; the encoder runs the same steps as the decoder.

The latent ``y`` has stride 16 and ``z`` stride 64: inputs are padded (replicated edge) to a
multiple of 64 and the reconstruction is cropped back (120 -> 128, ``y`` 8x8, ``z`` 2x2).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

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
from fedrs.models.errors import UnknownImageCodecError
from fedrs.models.layers import (
    EVAL_CHUNK,
    GDN,
    AttentionBlock,
    MaskedConv2d,
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
from fedrs.registry import Registry, store_name

__all__ = [
    "CODEC_INITS",
    "IMAGE_CODECS",
    "Cheng2020AttnCodec",
    "Cheng2020AttnContextCodec",
    "CompressedPatch",
    "HyperpriorCodec",
    "ImageCodec",
    "UnknownImageCodecError",
    "available_codecs",
    "build_image_codec",
    "register_image_codec",
]


IMAGE_CODECS: Registry[type[ImageCodec]] = Registry(
    "image codec", error=UnknownImageCodecError, on_register=store_name
)
"""Registered codec classes by name (the name is also stored as the class's ``name``)."""

CODEC_INITS: tuple[str, ...] = ("unit", "torch")
"""How the convolutions of a codec's transforms are initialised
(:meth:`ImageCodec.init_transforms`).

``"unit"`` keeps the variance of a signal through each of them (weights of variance
``1 / fan_in``), so the latents of a new codec are live (most round to non-zero symbols);
``"torch"`` is PyTorch's default (``1 / (3 fan_in)``), under which ``y`` of the 5x5 hyperprior
starts with a spread of about 0.1 and nearly every symbol rounds to zero.  Each codec class
names its own default (:attr:`ImageCodec.default_init`): ``"unit"`` for the hyperprior's plain
chains of convolutions and GDN, ``"torch"`` for the residual transforms of Cheng et al., whose
output a variance-preserving start blows up (reconstructions with a spread of 10^2-10^3)."""

register_image_codec = IMAGE_CODECS.register
"""``@register_image_codec("name")``: register an :class:`ImageCodec` subclass (taken:
ValueError)."""


def available_codecs() -> tuple[str, ...]:
    """Names of the registered codecs."""
    return tuple(IMAGE_CODECS.names())


def build_image_codec(
    name: str,
    in_channels: int,
    *,
    width: int = 32,
    latent: int = 48,
    init: str | None = None,
    **options: int,
) -> ImageCodec:
    """Instantiate the codec registered under ``name``.

    Args:
        name: registry name (``"hyperprior"``, ``"cheng2020-attn"``, ``"cheng2020-attn-ctx"``).
        in_channels: image bands.
        width: channels N of the transforms.
        latent: channels M of ``y``.
        init: how the transforms' convolutions start (one of :data:`CODEC_INITS`; default:
            the codec's :attr:`~ImageCodec.default_init`).
        **options: further keyword arguments of the codec (e.g. ``gmm_components``).

    Raises:
        UnknownImageCodecError: no image codec has that name.
        InputError: ``init`` is not one of :data:`CODEC_INITS`.
    """
    cls: Any = IMAGE_CODECS.lookup(name)
    codec: ImageCodec = cls(in_channels, width=width, latent=latent, **options)
    codec.init_transforms(cls.default_init if init is None else init)
    return codec


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

    def check_shapes(
        self, *, stride: int | None = None, image_size: tuple[int, int] | None = None
    ) -> None:
        """Refuse shapes no codec produces, before anything is allocated from them.

        ``z_shape`` must be that of ``image_size`` padded to a multiple of ``stride`` (the
        codecs' :attr:`ImageCodec.stride`, 64 unless given): ``ceil(H / stride) x ceil(W /
        stride)``.  With ``image_size`` given, the patch's own image size must equal it.

        Raises:
            InputError: the sizes disagree (the message gives both).
        """
        step = ImageCodec.stride if stride is None else stride
        height, width = self.image_size
        if height < 1 or width < 1:
            raise InputError(f"image size {height}x{width} is empty")
        if image_size is not None and (height, width) != tuple(image_size):
            raise InputError(
                f"image size {height}x{width} is not the patch size {image_size[0]}x{image_size[1]}"
            )
        expected = (-(-height // step), -(-width // step))
        if tuple(self.z_shape) != expected:
            raise InputError(
                f"latent z shape {self.z_shape[0]}x{self.z_shape[1]} does not fit a "
                f"{height}x{width} image (stride {step}: {expected[0]}x{expected[1]})"
            )

    def to_bytes(self) -> bytes:
        """Self-describing container: magic, shapes, stream lengths, ``z`` then ``y``."""
        header = _HEADER.pack(_MAGIC, *self.image_size, *self.z_shape, len(self.z), len(self.y))
        return header + self.z + self.y

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressedPatch:
        """Parse :meth:`to_bytes` output.

        Raises:
            InputError: the data is not such a container, is truncated, or its shapes
                disagree (:meth:`check_shapes`).
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
        patch = cls(
            y=bytes(data[start + nz : start + nz + ny]),
            z=bytes(data[start : start + nz]),
            z_shape=(zh, zw),
            image_size=(height, width),
        )
        patch.check_shapes()
        return patch


class ImageCodec(nn.Module):
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
    default_init: ClassVar[str] = "torch"
    """How :func:`build_image_codec` initialises the transforms unless told
    (:data:`CODEC_INITS`)."""

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

    def compress_hyperlatent(self, z: Tensor) -> tuple[list[bytes], Tensor]:
        """The bitstreams of ``z`` (one per item) and ``z_hat``, the values the decoder gets."""
        strings = self.entropy_bottleneck.compress(z)
        medians = self.entropy_bottleneck.medians(z.dim())
        return strings, self.entropy_bottleneck.quantize(z, "dequantize", medians)

    @torch.no_grad()
    def compress(self, x: Tensor) -> list[CompressedPatch]:
        """Entropy-code a batch (B, C, H, W) into one :class:`CompressedPatch` per image."""
        y, z = self.encode_latents(x, invariant=True)
        z_strings, z_hat = self.compress_hyperlatent(z)
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

    def _decompress_hyper(self, patches: Sequence[CompressedPatch]) -> Tensor:
        """``z_hat`` (B, N, h, w) of a batch of patches, on the model's device."""
        if not patches:
            raise InputError("no compressed patches given")
        shapes = {p.z_shape for p in patches}
        if len(shapes) != 1:
            raise InputError(f"patches of different latent shapes in one batch: {sorted(shapes)}")
        for patch in patches:
            patch.check_shapes(stride=self.stride)
        z_hat = self.entropy_bottleneck.decompress([p.z for p in patches], patches[0].z_shape)
        return z_hat.to(self._device())

    @torch.no_grad()
    def decompress_latents(self, patches: Sequence[CompressedPatch]) -> Tensor:
        """Entropy-decode ``y_hat`` (B, M, h, w) only, without the synthesis transform."""
        z_hat = self._decompress_hyper(patches)
        params = self.entropy_parameters(z_hat, invariant=True)
        return self.conditional.decompress([p.y for p in patches], params)

    @torch.no_grad()
    def decompress(self, patches: Sequence[CompressedPatch]) -> dict[str, Tensor]:
        """Decode patches to ``{"x_hat": (B, C, H, W), "y_hat": (B, M, h, w)}``."""
        sizes = {p.image_size for p in patches}
        if len(sizes) > 1:
            raise InputError(f"patches of different image sizes in one batch: {sorted(sizes)}")
        y_hat = self.decompress_latents(patches)
        return {"x_hat": self.synthesis(y_hat, patches[0].image_size), "y_hat": y_hat}

    @torch.no_grad()
    def init_transforms(self, init: str) -> None:
        """Initialise the weights of the convolutions of ``g_a``, ``g_s``, ``h_a`` and ``h_s``
        as ``init`` says (:data:`CODEC_INITS`; ``"torch"`` leaves them as built).

        Why it matters to a federation: from PyTorch's default the latents start dead (a
        spread of about 0.1, so nearly every symbol rounds to zero) and each client grows
        them along its own directions in its first round; their average then falls back to a
        dead codec (measured: S2 of the modality split stayed at the new codec's 0.07 bpp /
        20 dB after one round, while each client reached 0.35-0.55 bpp / 21-23.5 dB).  With
        ``"unit"`` the shared starting point already codes, and the clients refine it together.
        """
        if init not in CODEC_INITS:
            raise InputError(f"unknown codec init {init!r}; expected one of {list(CODEC_INITS)}")
        if init == "torch":
            return
        for transform in (self.g_a, self.g_s, self.h_a, self.h_s):
            for module in transform.modules():
                if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                    nn.init.kaiming_uniform_(module.weight, nonlinearity="linear")

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``g_a`` (shared by the rate-distortion and hashing objectives)."""
        return list(self.g_a.parameters())

    def density_parameters(self) -> list[nn.Parameter]:
        """Parameters of the hyper-latent's factorized density (``entropy_bottleneck``), which
        a trainer may give their own learning rate (``train.density_lr_scale``)."""
        return list(self.entropy_bottleneck.parameters())


@register_image_codec("hyperprior")
class HyperpriorCodec(ImageCodec):
    """Mean-scale hyperprior (Minnen et al. 2018 "Joint autoregressive and hierarchical priors",
    without the context model; Ballé et al. 2018 transforms with GDN)."""

    default_init: ClassVar[str] = "unit"

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


@register_image_codec("cheng2020-attn")
class Cheng2020AttnCodec(ImageCodec):
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


StepSymbols = Callable[[int, int, dict[str, Tensor], Tensor], Tensor]
"""``(row, column, parameters, means) -> symbols``: the symbols (b, M, 1, 1) int32 of one
position of a piece, given its entropy parameters and dequantisation means (b, M, 1, 1)."""


def _pieces(total: int) -> list[slice]:
    """Consecutive slices of ``EVAL_CHUNK`` items covering a batch of ``total``."""
    return [slice(start, min(start + EVAL_CHUNK, total)) for start in range(0, total, EVAL_CHUNK)]


def _padded(t: Tensor) -> Tensor:
    """``t`` zero-padded along the batch dimension to ``EVAL_CHUNK`` items."""
    missing = EVAL_CHUNK - int(t.shape[0])
    return torch.cat([t, t.new_zeros(missing, *t.shape[1:])]) if missing > 0 else t


@register_image_codec("cheng2020-attn-ctx")
class Cheng2020AttnContextCodec(Cheng2020AttnCodec):
    """Cheng et al. 2020 with the autoregressive context model of Minnen et al. 2018 ("Joint").

    The transforms are those of :class:`Cheng2020AttnCodec`, except that ``h_s`` stops at 2M
    hyper features.  A type-A 5x5 masked convolution (``context_prediction``) over ``y_hat``
    gives 2M context features per position; ``entropy_net`` (1x1 convolutions 4M -> 10M/3 ->
    8M/3 -> 3KM) turns the concatenated hyper and context features into the mixture's weights,
    means and scales (CompressAI's ``JointAutoregressiveHierarchicalPriors`` and
    ``Cheng2020Attention``).

    In training the context sees the noisy latents and all positions are computed at once.  At
    evaluation, in :meth:`compress` and in :meth:`decompress_latents` the positions are visited
    serially in raster order, in fixed pieces of ``EVAL_CHUNK`` items: at each position the
    masked convolution runs on the 5x5 neighbourhood of the latents quantised so far, then
    ``entropy_net``, then the position is quantised (``round(y - mean) + mean``) or decoded with
    tables built from its parameters alone.  Encoder, decoder and the forward pass run the very
    same computation, so they agree bit for bit, and a patch's bytes do not depend on its batch.
    The ``y`` stream holds the symbols position by position (the M channels of each), each with
    the table of its own element
    (:meth:`~fedrs.models.entropy.GaussianMixtureConditional.element_tables`).  Coding costs
    ``h * w`` sequential steps per piece (64 for a 120x120 patch), each building the tables of
    one position for the piece's items; the decoder reads each stream with an incremental
    :class:`fedrs.coder.StreamDecoder`.
    """

    conditional: GaussianMixtureConditional
    context_prediction: MaskedConv2d

    def __init__(
        self, in_channels: int, *, width: int = 32, latent: int = 48, gmm_components: int = 3
    ) -> None:
        super().__init__(in_channels, width=width, latent=latent, gmm_components=gmm_components)
        m = latent
        self.h_s = cast(nn.Sequential, self.h_s)[:-2]  # up to the 2M hyper features
        self.context_prediction = MaskedConv2d(m, 2 * m, kernel_size=5, padding=2, stride=1)
        first, second = max(m * 10 // 3, 1), max(m * 8 // 3, 1)
        self.entropy_net = nn.Sequential(
            conv1x1(4 * m, first),
            nn.LeakyReLU(inplace=True),
            conv1x1(first, second),
            nn.LeakyReLU(inplace=True),
            conv1x1(second, self.conditional.hyper_channels(m)),
        )

    def hyper_features(self, z_hat: Tensor, *, invariant: bool) -> Tensor:
        """``h_s(z_hat)``: 2M features per position of ``y`` (in fixed pieces if ``invariant``)."""
        if invariant:
            features: Tensor = in_fixed_chunks(self.h_s, z_hat)
        else:
            features = self.h_s(z_hat)
        return features

    def context_parameters(self, y_hat: Tensor, hyper: Tensor) -> dict[str, Tensor]:
        """Entropy parameters of all positions at once from the masked context of ``y_hat`` and
        the hyper features (the training path; position ``p`` depends only on ``y_hat`` before
        ``p`` in raster order and on ``hyper``)."""
        context = self.context_prediction(y_hat)
        return self.conditional.parameters_from(self.entropy_net(torch.cat([hyper, context], 1)))

    def entropy_parameters(self, z_hat: Tensor, *, invariant: bool) -> dict[str, Tensor]:
        """Not defined for this codec: its parameters depend on ``y_hat`` as well (see
        :meth:`context_parameters`)."""
        raise InputError(
            f"{self.name} conditions y on its decoded context: its entropy parameters come from "
            "context_parameters(y_hat, hyper_features(z_hat)), or serially in compress/decompress"
        )

    def _serial_piece(
        self, hyper: Tensor, symbols_at: StepSymbols
    ) -> tuple[Tensor, list[tuple[dict[str, Tensor], Tensor]]]:
        """Visit the positions of one piece (``EVAL_CHUNK`` items) in raster order.

        Returns:
            ``y_hat`` (b, M, h, w) and, per position, its parameters and symbols (b, M, 1, 1).
        """
        kernel = int(self.context_prediction.kernel_size[0])
        pad = kernel // 2
        b, _, height, width = hyper.shape
        y_hat = hyper.new_zeros(b, self.latent, height + 2 * pad, width + 2 * pad)
        weight = self.context_prediction.masked_weight()
        bias = self.context_prediction.bias
        steps: list[tuple[dict[str, Tensor], Tensor]] = []
        for i in range(height):
            for j in range(width):
                crop = y_hat[:, :, i : i + kernel, j : j + kernel]
                context = F.conv2d(crop, weight, bias)
                features = torch.cat([hyper[:, :, i : i + 1, j : j + 1], context], 1)
                params = self.conditional.parameters_from(self.entropy_net(features))
                means = self.conditional.means(params)
                symbols = symbols_at(i, j, params, means)
                if torch.is_grad_enabled():  # earlier crops are views of y_hat
                    y_hat = y_hat.clone()
                values = self.conditional.dequantize(symbols, means)
                y_hat[:, :, i + pad : i + pad + 1, j + pad : j + pad + 1] = values
                steps.append((params, symbols))
        return y_hat[:, :, pad : pad + height, pad : pad + width], steps

    def _quantise_piece(
        self, y: Tensor, hyper: Tensor
    ) -> tuple[Tensor, list[tuple[dict[str, Tensor], Tensor]]]:
        """:meth:`_serial_piece` quantising ``y`` (the encoder and the forward pass)."""

        def quantise(i: int, j: int, params: dict[str, Tensor], means: Tensor) -> Tensor:
            return self.conditional.quantize(y[:, :, i : i + 1, j : j + 1], "symbols", means)

        return self._serial_piece(hyper, quantise)

    def _decoding(self, decoders: Sequence[Any]) -> StepSymbols:
        """Step function of :meth:`_serial_piece` decoding item ``k`` of the piece from
        ``decoders[k]`` (the padding items get the symbols the encoder gives them)."""
        count = len(decoders)

        def decode(i: int, j: int, params: dict[str, Tensor], means: Tensor) -> Tensor:
            tables = self.conditional.element_tables({k: v[:count] for k, v in params.items()})
            decoded = self.conditional.decompress_steps(decoders, tables)
            symbols = self.conditional.quantize(torch.zeros_like(means), "symbols", means)
            symbols[:count] = decoded.view(count, -1, 1, 1).to(symbols.device)
            return symbols

        return decode

    @staticmethod
    def _stack(steps: list[tuple[dict[str, Tensor], Tensor]], height: int) -> dict[str, Tensor]:
        """Per-position parameters (b, K, M, 1, 1) stacked into maps (b, K, M, h, w)."""
        return {
            key: torch.cat([params[key].flatten(-2) for params, _ in steps], -1).unflatten(
                -1, (height, -1)
            )
            for key in steps[0][0]
        }

    def autoregress(self, y: Tensor, hyper: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``y_hat`` and the entropy parameters of the serial pass, as :meth:`compress` codes
        them (pieces of ``EVAL_CHUNK`` items)."""
        y_hats: list[Tensor] = []
        maps: list[dict[str, Tensor]] = []
        for rows in _pieces(int(y.shape[0])):
            count = rows.stop - rows.start
            y_hat, steps = self._quantise_piece(_padded(y[rows]), _padded(hyper[rows]))
            y_hats.append(y_hat[:count])
            stacked = self._stack(steps, int(y.shape[-2]))
            maps.append({key: value[:count] for key, value in stacked.items()})
        params = {key: torch.cat([m[key] for m in maps]) for key in maps[0]}
        return torch.cat(y_hats), params

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        y, z = self.encode_latents(x, invariant=not self.training)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        hyper = self.hyper_features(z_hat, invariant=not self.training)
        if self.training:
            y_tilde = self.conditional.quantize(y, "noise")
            params = self.context_parameters(y_tilde, hyper)
            y_likelihoods = self.conditional.likelihood(y_tilde, params)
            means = self.conditional.means(params)
            y_hat = ste_round(y - means) + means
        else:
            y_hat, params = self.autoregress(y, hyper)
            y_likelihoods = self.conditional.likelihood(y_hat, params)
        return {
            "x_hat": self.synthesis(y_hat, x.shape[-2:]),
            "y": y,
            "y_hat": y_hat,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
        }

    @torch.no_grad()
    def compress(self, x: Tensor) -> list[CompressedPatch]:
        y, z = self.encode_latents(x, invariant=True)
        z_strings, z_hat = self.compress_hyperlatent(z)
        hyper = self.hyper_features(z_hat, invariant=True)
        y_strings: list[bytes] = []
        m = self.latent
        for rows in _pieces(int(y.shape[0])):
            count = rows.stop - rows.start
            _, steps = self._quantise_piece(_padded(y[rows]), _padded(hyper[rows]))
            tables = [
                self.conditional.element_tables({k: v[:count] for k, v in params.items()})
                for params, _ in steps
            ]
            for item in range(count):
                rows_of_item = slice(item * m, (item + 1) * m)
                y_strings.append(
                    self.conditional.compress_steps(
                        [symbols[item] for _, symbols in steps],
                        [(c[rows_of_item], n[rows_of_item], o[rows_of_item]) for c, n, o in tables],
                    )
                )
        size = (int(x.shape[-2]), int(x.shape[-1]))
        z_shape = (int(z.shape[-2]), int(z.shape[-1]))
        return [
            CompressedPatch(y=ys, z=zs, z_shape=z_shape, image_size=size)
            for ys, zs in zip(y_strings, z_strings, strict=True)
        ]

    @torch.no_grad()
    def decompress_latents(self, patches: Sequence[CompressedPatch]) -> Tensor:
        """Entropy-decode ``y_hat`` (B, M, h, w) serially, position by position.

        Raises:
            fedrs.coder.CorruptStreamError: a stream is damaged or does not match the model.
        """
        hyper = self.hyper_features(self._decompress_hyper(patches), invariant=True)
        height, width = int(hyper.shape[-2]), int(hyper.shape[-1])
        count = height * width * self.latent
        decoders = [self.conditional.step_decoder(p.y, count) for p in patches]
        y_hats: list[Tensor] = []
        for rows in _pieces(len(patches)):
            members = decoders[rows]
            y_hat, _ = self._serial_piece(_padded(hyper[rows]), self._decoding(members))
            y_hats.append(y_hat[: len(members)])
        for decoder in decoders:
            decoder.finish()
        return torch.cat(y_hats)
