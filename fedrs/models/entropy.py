"""Entropy models: factorized bottleneck, Gaussian (mean-scale) and Gaussian-mixture conditionals.

The design follows CompressAI (Ballé et al. 2018; Minnen et al. 2018; Cheng et al. 2020):

* in training the latents get additive uniform noise and the models return their likelihoods;
* at evaluation (and when coding) a latent is quantised as ``round(x - mean) + mean``
  ("dequantize with means"); the coded symbols are the integers ``round(x - mean)``;
* ``update()`` builds quantised CDF tables (16-bit precision, last interval the escape symbol)
  for ``fedrs.coder.encode_with_indexes`` / ``decode_with_indexes``.

Differences from CompressAI: the factorized bottleneck finds its median and tail quantiles by
bisection of its cumulative in ``update()`` (no auxiliary loss and optimiser); the tables are
non-persistent buffers (pickled with the module, absent from ``state_dict``) rebuilt whenever the
density's parameters change, so they are a pure function of the weights.  The Gaussian mixture
builds one table per coded symbol.  All tables are built vectorised in float64.  For
autoregressive models the mixture also builds tables row by row independent of the rows built
with them (:meth:`GaussianMixtureConditional.element_tables`), codes groups of symbols with their
own tables into one stream and decodes it group by group (``compress_steps``,
``step_decoder``, ``decompress_steps``).

Bitstreams decode only on the same software stack that wrote them (the entropy parameters come
from a float network, whose rounding may change with the library version, the device, the
thread count or the input shape).  Within one stack a patch's bytes and hash code do not depend
on the batch it is coded or decoded in: at evaluation every network that feeds them (``g_a``,
``h_a``, ``h_s`` with the split into entropy parameters, the hash head) runs on pieces of exactly
``EVAL_CHUNK`` items, zero-padded (:func:`fedrs.models.layers.in_fixed_chunks`), and for a fixed
shape a layer's result for one item depends on that item alone.  What then runs on the whole
batch is per element (subtraction, rounding, the scale-table lookup, the mixture mean's sum over
its components in a fixed order) or per item (the mixture's float64 tables, the range coder).
Training (``model.train()``) runs the networks on the whole batch, so there ``y`` and the
likelihoods may differ in the last bits between batch sizes (|dy| up to ~5e-7 measured).

Whatever device the model is on, the range coder and the mixture's tables run on the CPU
(symbols, table indexes and entropy parameters copied once per batch).  Under mixed-precision
training (``train.amp``) the quantisation noise and the likelihoods are computed in float32,
autocast off (:func:`fedrs.devices.full_precision`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Sequence
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedrs.devices import full_precision
from fedrs.errors import InputError
from fedrs.models.errors import EntropyModelError
from fedrs.models.layers import lower_bound

__all__ = [
    "LIKELIHOOD_BOUND",
    "PRECISION",
    "ConditionalEntropyModel",
    "EntropyBottleneck",
    "EntropyModel",
    "EntropyModelError",
    "GaussianConditional",
    "GaussianMixtureConditional",
    "default_scale_table",
    "quantized_cdf_table",
]

PRECISION = 16
"""Bits of precision of the quantised CDFs (CompressAI's ``entropy_coder_precision``)."""
LIKELIHOOD_BOUND = 1e-9
"""Lower bound of every likelihood (keeps the rate finite)."""
SCALES_MIN = 0.11
SCALES_MAX = 256.0
SCALES_LEVELS = 64
CDF_GRID_LIMIT = 8.0
"""Half-width of the grid of the interpolated normal CDF (beyond it the CDF is 0 or 1)."""
CDF_GRID_BITS = 10
"""The grid has ``2**CDF_GRID_BITS`` points per unit."""


def default_scale_table(
    minimum: float = SCALES_MIN, maximum: float = SCALES_MAX, levels: int = SCALES_LEVELS
) -> Tensor:
    """Log-spaced scales of the Gaussian conditional's tables (CompressAI's default)."""
    return torch.exp(torch.linspace(math.log(minimum), math.log(maximum), levels))


def _coder() -> ModuleType:
    """The native range coder (imported on use so that models import and pickle without it)."""

    return importlib.import_module("fedrs.coder")


def _std_cumulative(x: Tensor) -> Tensor:
    """Standard normal CDF."""
    return 0.5 * torch.erfc(x * (-(2.0**-0.5)))


def _tail_multiplier(tail_mass: float) -> float:
    """``-Phi^-1(tail_mass / 2)``: the half-width of a table in units of the scale."""

    return -NormalDist().inv_cdf(tail_mass / 2)


@torch.no_grad()
def quantized_cdf_table(
    pmf: Tensor, lengths: Tensor, tail: Tensor, precision: int = PRECISION
) -> tuple[Tensor, Tensor]:
    """Quantise many pmfs at once into CDF tables with an escape symbol.

    Row ``t`` codes ``lengths[t]`` symbols with probabilities ``pmf[t, :lengths[t]]`` and one
    escape symbol with probability ``tail[t]``.  Every symbol gets a frequency of at least one;
    the frequencies sum to ``2**precision``.

    Args:
        pmf: (T, L) probabilities (entries past a row's length are ignored).
        lengths: (T,) number of symbols per row, 1 <= lengths[t] <= L.
        tail: (T,) probability of the escape symbol.
        precision: bits of the CDF (16 for ``fedrs.coder``).

    Returns:
        ``cdfs`` (T, L + 2) int32 (row t valid up to ``lengths[t] + 2``, starting at 0 and ending
        at ``2**precision``) and ``cdf_lengths`` (T,) int32 = ``lengths + 2``.
    """
    num_tables, width = pmf.shape
    lengths = lengths.to(torch.long)
    positions = torch.arange(width + 1, device=pmf.device)
    probs = torch.cat([pmf.to(torch.float64), pmf.new_zeros(num_tables, 1, dtype=torch.float64)], 1)
    probs = torch.where(positions[None, :] < lengths[:, None], probs, 0.0).clamp_min(0.0)
    probs[torch.arange(num_tables, device=pmf.device), lengths] = tail.to(torch.float64).clamp_min(
        0.0
    )
    valid = positions[None, :] <= lengths[:, None]
    total = torch.cumsum(probs, 1)[:, -1:]  # in order along the row: a row's own function
    count = (lengths + 1).to(torch.float64)[:, None]
    uniform = valid.to(torch.float64) / count  # for rows without mass (or not a number)
    probs = torch.where(total > 0, probs / total.clamp_min(1e-300), uniform)
    scale = float(1 << precision)
    freq = torch.where(valid, torch.floor(probs * (scale - count)) + 1.0, 0.0).to(torch.long)
    deficit = (1 << precision) - freq.sum(1)
    top = torch.where(valid, probs, -1.0).argmax(1)
    freq[torch.arange(num_tables, device=pmf.device), top] += deficit
    cdf = torch.cat([freq.new_zeros(num_tables, 1), torch.cumsum(freq, 1)], 1)
    return cdf.to(torch.int32), (lengths + 2).to(torch.int32)


def _full(x: Tensor) -> Tensor:
    """``x`` in float32 where it comes in a reduced precision (a mixed-precision forward pass:
    quantisation noise, rates and likelihoods are computed in float32 whatever the transforms
    ran in)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _np32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy().astype(np.int32, copy=False))


class EntropyModel(nn.Module):
    """Base of the entropy models: quantisation helpers and the calls into ``fedrs.coder``."""

    def __init__(self, tail_mass: float = 1e-9, likelihood_bound: float = LIKELIHOOD_BOUND) -> None:
        super().__init__()
        if not 0.0 < tail_mass < 1.0:
            raise InputError(f"tail_mass must lie in (0, 1), got {tail_mass}")
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        self._prepared: tuple[tuple[tuple[int, int, tuple[int, ...]], ...], Any] | None = None

    def _table_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The model's one set of coding tables ``(cdfs, cdf_lengths, offsets)``, as last built
        by :meth:`update` (callers update first)."""
        raise NotImplementedError

    def _coder_tables(self) -> Any:
        """:class:`fedrs.coder.CdfTables` of :meth:`_table_tensors`, validated once and kept
        until the tables change (preparing them costs more than coding one latent)."""
        tensors = self._table_tensors()
        key = tuple((int(t.data_ptr()), int(t._version), tuple(t.shape)) for t in tensors)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, _coder().CdfTables(*(_np32(t) for t in tensors)))
        return self._prepared[1]

    def _encode_symbols(self, symbols: Tensor, indexes: Tensor) -> bytes:
        """One stream of ``symbols`` coded with the tables ``indexes`` of :meth:`_coder_tables`."""
        stream: bytes = self._coder_tables().encode(
            _np32(symbols.reshape(-1)), _np32(indexes.reshape(-1))
        )
        return stream

    def _decode_symbols(self, stream: bytes, indexes: Tensor) -> Tensor:
        """Symbols of a stream of :meth:`_encode_symbols`, shaped like ``indexes``."""
        values = self._coder_tables().decode(stream, _np32(indexes.reshape(-1)))
        return torch.from_numpy(np.asarray(values, dtype=np.int32).copy()).reshape(indexes.shape)

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables the coder needs; True when they were (re)built."""
        return False

    def _bound_likelihood(self, likelihood: Tensor) -> Tensor:
        if self.likelihood_bound <= 0:
            return likelihood
        return lower_bound(likelihood, self.likelihood_bound)

    @staticmethod
    def quantize(inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        """``"noise"``: add U(-0.5, 0.5); ``"dequantize"``: ``round(x - m) + m``;
        ``"symbols"``: ``round(x - m)`` as int32."""
        if mode == "noise":
            inputs = _full(inputs)
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5)
        shifted = inputs if means is None else inputs - means
        rounded = torch.round(shifted)
        if mode == "symbols":
            return rounded.to(torch.int32)
        if mode == "dequantize":
            return rounded if means is None else rounded + means
        raise InputError(f"unknown quantisation mode {mode!r}")

    @staticmethod
    def dequantize(symbols: Tensor, means: Tensor | None = None) -> Tensor:
        """Symbols back to latent values: ``symbols + means``."""
        values = symbols.to(torch.float32 if means is None else means.dtype)
        return values if means is None else values + means

    @staticmethod
    def _encode(
        symbols: Tensor, indexes: Tensor, cdfs: Tensor, cdf_lengths: Tensor, offsets: Tensor
    ) -> bytes:
        stream: bytes = _coder().encode_with_indexes(
            _np32(symbols.reshape(-1)),
            _np32(indexes.reshape(-1)),
            _np32(cdfs),
            _np32(cdf_lengths),
            _np32(offsets),
        )
        return stream

    @staticmethod
    def _decode(
        stream: bytes, indexes: Tensor, cdfs: Tensor, cdf_lengths: Tensor, offsets: Tensor
    ) -> Tensor:
        values = _coder().decode_with_indexes(
            stream, _np32(indexes.reshape(-1)), _np32(cdfs), _np32(cdf_lengths), _np32(offsets)
        )
        return torch.from_numpy(np.asarray(values, dtype=np.int32).copy()).reshape(indexes.shape)


class EntropyBottleneck(EntropyModel):
    """Factorized (fully learned, per-channel) density for the hyper-latent ``z``.

    The density of channel ``c`` is the derivative of a monotone cumulative built from a small
    per-channel network (Ballé et al. 2018, appendix 6.1).  ``forward`` returns ``(z_hat,
    likelihoods)`` with noise in training and ``round(z - median) + median`` at evaluation.
    """

    _medians: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor
    _offset: Tensor

    def __init__(
        self,
        channels: int,
        *,
        tail_mass: float = 1e-9,
        init_scale: float = 10.0,
        filters: Sequence[int] = (3, 3, 3),
        max_table_length: int = 4096,
    ) -> None:
        super().__init__(tail_mass=tail_mass)
        if channels < 1:
            raise InputError(f"channels must be positive, got {channels}")
        self.channels = int(channels)
        self.max_table_length = int(max_table_length)
        dims = (1, *(int(f) for f in filters), 1)
        scale = float(init_scale) ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.register_buffer("_medians", torch.zeros(channels), persistent=False)
        self.register_buffer("_quantized_cdf", torch.zeros(0, 0, dtype=torch.int32), False)
        self.register_buffer("_cdf_length", torch.zeros(0, dtype=torch.int32), False)
        self.register_buffer("_offset", torch.zeros(0, dtype=torch.int32), False)
        self._fingerprint = ""

    def _logits_cumulative(self, inputs: Tensor) -> Tensor:
        """Logit of the cumulative at ``inputs`` (C, 1, L), in the dtype of ``inputs``."""
        logits = inputs
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix.to(inputs.dtype)), logits) + bias.to(
                inputs.dtype
            )
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i].to(inputs.dtype)) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lower = self._logits_cumulative(values - 0.5)
        upper = self._logits_cumulative(values + 0.5)
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(values.dtype)
        likelihood = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return likelihood, lower, upper

    def likelihood(self, z: Tensor) -> Tensor:
        """Probability mass of the unit interval around each value of ``z`` (B, C, ...), in
        float32 at least (autocast off)."""
        with full_precision(z):
            z = _full(z)
            perm = [1, 0, *range(2, z.dim())]
            values = z.permute(*perm).reshape(self.channels, 1, -1)
            likelihood, _, _ = self._likelihood(values)
            shape = [z.shape[1], z.shape[0], *z.shape[2:]]
            inverse = [1, 0, *range(2, z.dim())]
            return self._bound_likelihood(likelihood.reshape(shape).permute(*inverse).contiguous())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantise (noise in training, rounding with medians at evaluation) and return
        ``(z_hat, likelihoods)``."""
        if z.dim() < 2 or z.shape[1] != self.channels:
            raise InputError(f"expected {self.channels} channels, got shape {tuple(z.shape)}")
        z = _full(z)
        if self.training:
            z_hat = self.quantize(z, "noise")
        else:
            z_hat = self.quantize(z, "dequantize", self.medians(z.dim()))
        return z_hat, self.likelihood(z_hat)

    def medians(self, dims: int = 4) -> Tensor:
        """Per-channel medians shaped (1, C, 1, ...) for ``dims``-dimensional latents."""
        self.update()
        return self._medians.view(1, -1, *([1] * (dims - 2)))

    def _table_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._quantized_cdf, self._cdf_length, self._offset

    def fingerprint(self) -> str:
        """Digest of the density's parameters (the tables are rebuilt when it changes)."""
        digest = hashlib.blake2b(digest_size=16)
        for p in self.parameters():
            digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def _quantiles(self) -> Tensor:
        """(C, 3) lower tail point, median and upper tail point of each channel's density."""
        target_value = math.log(2.0 / self.tail_mass - 1.0)
        device = self._medians.device
        target = torch.tensor([-target_value, 0.0, target_value], dtype=torch.float64)
        target = target.to(device).expand(self.channels, 1, 3)
        lo = torch.full((self.channels, 1, 3), -1.0, dtype=torch.float64, device=device)
        hi = -lo
        for _ in range(64):  # widen the bracket until it holds the target
            low_out = self._logits_cumulative(lo) > target
            high_out = self._logits_cumulative(hi) < target
            if not (bool(low_out.any()) or bool(high_out.any())):
                break
            lo = torch.where(low_out, lo * 2.0, lo)
            hi = torch.where(high_out, hi * 2.0, hi)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            below = self._logits_cumulative(mid) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).reshape(self.channels, 3)

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Recompute the medians and CDF tables if the parameters changed (or ``force``).

        Returns:
            True when the tables were rebuilt.
        """
        fingerprint = self.fingerprint()
        if not force and fingerprint == self._fingerprint and self._quantized_cdf.numel() > 0:
            return False
        quantiles = self._quantiles()
        medians = quantiles[:, 1].to(torch.float32)
        limit = self.max_table_length // 2
        minima = torch.ceil(medians.double() - quantiles[:, 0]).clamp(0, limit).to(torch.long)
        maxima = torch.ceil(quantiles[:, 2] - medians.double()).clamp(0, limit).to(torch.long)
        lengths = minima + maxima + 1
        width = int(lengths.max())
        start = medians.double() - minima.double()
        samples = torch.arange(width, dtype=torch.float64, device=medians.device)
        samples = (samples[None, :] + start[:, None]).unsqueeze(1)
        pmf, lower, upper = self._likelihood(samples)
        pmf = pmf[:, 0, :]
        last = (lengths - 1)[:, None]
        tail = torch.sigmoid(lower[:, 0, 0]) + torch.sigmoid(
            -upper[:, 0, :].gather(1, last).squeeze(1)
        )
        cdf, cdf_lengths = quantized_cdf_table(pmf, lengths, tail)
        self._medians = medians
        self._quantized_cdf = cdf
        self._cdf_length = cdf_lengths
        self._offset = (-minima).to(torch.int32)
        self._fingerprint = fingerprint
        return True

    def _indexes(self, shape: Sequence[int]) -> Tensor:
        idx = torch.arange(self.channels, dtype=torch.int32).view(1, -1, *([1] * (len(shape) - 2)))
        return idx.expand(*shape).contiguous()

    @torch.no_grad()
    def compress(self, z: Tensor) -> list[bytes]:
        """Entropy-code ``z`` (B, C, ...) into one stream per item."""
        medians = self.medians(z.dim())
        symbols = self.quantize(z, "symbols", medians).cpu()
        indexes = self._indexes((1, *symbols.shape[1:]))[0]
        return [self._encode_symbols(symbols[i], indexes) for i in range(symbols.shape[0])]

    @torch.no_grad()
    def decompress(self, strings: Sequence[bytes], size: Sequence[int]) -> Tensor:
        """Decode streams of :meth:`compress`; ``size`` is the spatial shape of one item."""
        medians = self.medians(2 + len(size))
        indexes = self._indexes((1, self.channels, *size))[0]
        symbols = torch.stack([self._decode_symbols(s, indexes) for s in strings])
        return self.dequantize(symbols.to(medians.device), medians)


class ConditionalEntropyModel(EntropyModel):
    """Entropy model of ``y`` conditioned on parameters predicted by the hyper-synthesis.

    Subclasses define how many channels the hyper-synthesis must output
    (:meth:`hyper_channels`), how those channels split into named parameters
    (:meth:`parameters_from`), the likelihood, the dequantisation means and the coding.
    """

    def hyper_channels(self, latent_channels: int) -> int:
        """Channels of the hyper-synthesis output for ``latent_channels`` latent channels."""
        raise NotImplementedError

    def parameters_from(self, hyper: Tensor) -> dict[str, Tensor]:
        """Split the hyper-synthesis output into named entropy parameters."""
        raise NotImplementedError

    def means(self, params: dict[str, Tensor]) -> Tensor:
        """Dequantisation means (shape of ``y``): ``y_hat = round(y - means) + means``."""
        raise NotImplementedError

    def likelihood(self, y: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Probability mass of the unit interval around each value of ``y``."""
        raise NotImplementedError

    def forward(self, y: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(y_hat, likelihoods)``: noise in training, rounding with the means at evaluation."""
        y = _full(y)
        params = {k: _full(v) for k, v in params.items()}
        if self.training:
            y_hat = self.quantize(y, "noise")
        else:
            y_hat = self.quantize(y, "dequantize", self.means(params))
        return y_hat, self.likelihood(y_hat, params)

    def compress(self, y: Tensor, params: dict[str, Tensor]) -> list[bytes]:
        """Entropy-code ``y`` (B, M, h, w) into one stream per item."""
        raise NotImplementedError

    def decompress(self, strings: Sequence[bytes], params: dict[str, Tensor]) -> Tensor:
        """Decode the streams of :meth:`compress` to ``y_hat`` given the same parameters."""
        raise NotImplementedError


class GaussianConditional(ConditionalEntropyModel):
    """Gaussian conditional with predicted means and scales (Minnen et al. 2018).

    Scales are bounded below by ``scale_bound``; coding uses the table of the smallest tabulated
    scale not below the predicted one.
    """

    scale_table: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor
    _offset: Tensor

    def __init__(
        self,
        scale_table: Sequence[float] | Tensor | None = None,
        *,
        scale_bound: float = SCALES_MIN,
        tail_mass: float = 1e-9,
    ) -> None:
        super().__init__(tail_mass=tail_mass)
        table = default_scale_table() if scale_table is None else torch.as_tensor(scale_table)
        table = table.to(torch.float32).flatten()
        if table.numel() < 1 or bool((table <= 0).any()) or bool((table.diff() <= 0).any()):
            raise InputError("scale_table must be positive and strictly increasing")
        self.scale_bound = float(scale_bound)
        self.register_buffer("scale_table", table, persistent=False)
        self.register_buffer("_quantized_cdf", torch.zeros(0, 0, dtype=torch.int32), False)
        self.register_buffer("_cdf_length", torch.zeros(0, dtype=torch.int32), False)
        self.register_buffer("_offset", torch.zeros(0, dtype=torch.int32), False)
        self.update()

    def hyper_channels(self, latent_channels: int) -> int:
        return 2 * latent_channels

    def parameters_from(self, hyper: Tensor) -> dict[str, Tensor]:
        scales, means = hyper.chunk(2, dim=1)
        return {"scales": scales, "means": means}

    def means(self, params: dict[str, Tensor]) -> Tensor:
        return params["means"]

    def likelihood(self, y: Tensor, params: dict[str, Tensor]) -> Tensor:
        with full_precision(y):
            y = _full(y)
            scales = lower_bound(_full(params["scales"]), self.scale_bound)
            values = torch.abs(y - _full(params["means"]))
            upper = _std_cumulative((0.5 - values) / scales)
            lower = _std_cumulative((-0.5 - values) / scales)
            return self._bound_likelihood(upper - lower)

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Build the tables of the scale table (once; they depend on no weight)."""
        if not force and self._quantized_cdf.numel() > 0:
            return False
        scales = self.scale_table.to(torch.float64)
        multiplier = _tail_multiplier(self.tail_mass)
        centers = torch.ceil(scales * multiplier).to(torch.long)
        lengths = 2 * centers + 1
        width = int(lengths.max())
        samples = torch.arange(width, dtype=torch.float64, device=scales.device)
        samples = torch.abs(samples[None, :] - centers[:, None].double())
        upper = _std_cumulative((0.5 - samples) / scales[:, None])
        lower = _std_cumulative((-0.5 - samples) / scales[:, None])
        pmf = upper - lower
        tail = 2.0 * _std_cumulative(-(centers.double() + 0.5) / scales)
        cdf, cdf_lengths = quantized_cdf_table(pmf, lengths, tail)
        self._quantized_cdf = cdf
        self._cdf_length = cdf_lengths
        self._offset = (-centers).to(torch.int32)
        return True

    def _table_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._quantized_cdf, self._cdf_length, self._offset

    def build_indexes(self, scales: Tensor) -> Tensor:
        """Index of the table used for each scale: the smallest tabulated scale >= it."""
        bounded = torch.clamp(scales, min=self.scale_bound).contiguous()
        idx = torch.bucketize(bounded, self.scale_table.to(bounded.dtype))
        return idx.clamp(max=self.scale_table.numel() - 1).to(torch.int32)

    @torch.no_grad()
    def compress(self, y: Tensor, params: dict[str, Tensor]) -> list[bytes]:
        self.update()
        symbols = self.quantize(y, "symbols", params["means"]).cpu()
        indexes = self.build_indexes(params["scales"]).cpu()
        return [self._encode_symbols(symbols[i], indexes[i]) for i in range(symbols.shape[0])]

    @torch.no_grad()
    def decompress(self, strings: Sequence[bytes], params: dict[str, Tensor]) -> Tensor:
        self.update()
        indexes = self.build_indexes(params["scales"]).cpu()
        if len(strings) != indexes.shape[0]:
            raise InputError(f"{len(strings)} streams for {indexes.shape[0]} parameter sets")
        symbols = torch.stack([self._decode_symbols(s, indexes[i]) for i, s in enumerate(strings)])
        means = params["means"]
        return self.dequantize(symbols.to(means.device), means)


class GaussianMixtureConditional(ConditionalEntropyModel):
    """Mixture of ``components`` Gaussians per latent element (Cheng et al. 2020, K = 3).

    The hyper-synthesis predicts, per component, a weight logit, a mean and a scale.  The
    dequantisation mean is the mixture mean.  Coding builds one CDF table per symbol, covering
    ``tail_mass`` of every component up to ``max_half_width`` symbols either side of the mean
    (values further out are escaped and still round-trip).
    """

    def __init__(
        self,
        components: int = 3,
        *,
        scale_bound: float = SCALES_MIN,
        tail_mass: float = 1e-9,
        max_half_width: int = 128,
    ) -> None:
        super().__init__(tail_mass=tail_mass)
        if components < 1:
            raise InputError(f"components must be positive, got {components}")
        self.components = int(components)
        self.scale_bound = float(scale_bound)
        self.max_half_width = int(max_half_width)
        self._cdf_grid: Tensor | None = None  # not a buffer: stays float64 on the CPU

    def hyper_channels(self, latent_channels: int) -> int:
        return 3 * self.components * latent_channels

    def parameters_from(self, hyper: Tensor) -> dict[str, Tensor]:
        b, c = hyper.shape[:2]
        k = self.components
        m = c // (3 * k)
        parts = hyper.reshape(b, 3, k, m, *hyper.shape[2:])
        return {
            "weights": torch.softmax(parts[:, 0], dim=1),
            "means": parts[:, 1],
            "scales": lower_bound(parts[:, 2], self.scale_bound),
        }

    def means(self, params: dict[str, Tensor]) -> Tensor:
        return (params["weights"] * params["means"]).sum(1)

    @staticmethod
    def _mass(values: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        v = torch.abs(values - means)
        return _std_cumulative((0.5 - v) / scales) - _std_cumulative((-0.5 - v) / scales)

    def likelihood(self, y: Tensor, params: dict[str, Tensor]) -> Tensor:
        with full_precision(y):
            full = {k: _full(v) for k, v in params.items()}
            mass = self._mass(_full(y).unsqueeze(1), full["means"], full["scales"])
            return self._bound_likelihood((full["weights"] * mass).sum(1))

    def _tables(self, params: dict[str, Tensor], index: int) -> tuple[Tensor, ...]:
        """Tables of item ``index``: (cdfs, cdf_lengths, offsets, centre, table indexes)."""
        w = params["weights"][index].detach().double().flatten(1)  # (K, n)
        mu = params["means"][index].detach().double().flatten(1)
        sigma = params["scales"][index].detach().double().flatten(1).clamp_min(self.scale_bound)
        centre = (w * mu).sum(0)  # (n,)
        reach = torch.abs(mu - centre) + _tail_multiplier(self.tail_mass) * sigma
        half = torch.ceil(reach.max(0).values).clamp(1, self.max_half_width).to(torch.long)
        width = int(2 * half.max() + 1)
        offsets = torch.arange(width, dtype=torch.float64, device=w.device)[None, :] - half[:, None]
        values = centre[:, None] + offsets  # (n, L)
        mass = self._mass(values[None], mu[:, :, None], sigma[:, :, None])  # (K, n, L)
        pmf = (w[:, :, None] * mass).sum(0)
        lengths = 2 * half + 1
        pmf = torch.where(offsets <= half[:, None], pmf, 0.0)
        tail = (1.0 - pmf.sum(1)).clamp_min(0.0)
        cdf, cdf_lengths = quantized_cdf_table(pmf, lengths, tail)
        table_idx = torch.arange(cdf.shape[0], dtype=torch.int32)
        return cdf.cpu(), cdf_lengths.cpu(), (-half).to(torch.int32).cpu(), centre, table_idx

    def _normal_cdf_grid(self) -> Tensor:
        """The standard normal CDF on ``[-CDF_GRID_LIMIT, CDF_GRID_LIMIT]`` in steps of
        ``2**-CDF_GRID_BITS`` (float64), built on first use."""
        if self._cdf_grid is None:
            steps = int(CDF_GRID_LIMIT * 2**CDF_GRID_BITS)
            points = torch.arange(-steps, steps + 1, dtype=torch.float64) / 2**CDF_GRID_BITS
            self._cdf_grid = _std_cumulative(points)
        return self._cdf_grid

    @torch.no_grad()
    def element_tables(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Coding tables ``(cdfs, cdf_lengths, offsets)`` of every element of ``params``, one row
        per element in C order (item, channel, positions), on the CPU.

        Each row is a function of its own element's parameters alone, whatever the other rows:
        the normal CDF is interpolated linearly in a fixed float64 grid (error below 3e-8) and
        every sum runs in a fixed order (a loop over the components, prefix sums along a row),
        so only exactly rounded arithmetic touches an element.  An encoder building the tables
        of all items and positions at once and a decoder building them position by position
        get the same rows.  Coverage as :meth:`compress`'s tables: ``tail_mass`` of every
        component, at most ``max_half_width`` symbols either side of the mixture mean.
        """
        grid = self._normal_cdf_grid()
        k = self.components

        def rows(name: str) -> Tensor:
            value = params[name].detach().to(grid.device, torch.float64)
            return value.movedim(1, -1).reshape(-1, k)  # (n, K)

        def cdf(x: Tensor) -> Tensor:
            inside = x.nan_to_num(0.0).clamp(-CDF_GRID_LIMIT, CDF_GRID_LIMIT)
            scaled = (inside + CDF_GRID_LIMIT) * 2**CDF_GRID_BITS
            index = scaled.floor().clamp(max=grid.numel() - 2)
            low = grid[index.to(torch.long)]
            high = grid[index.to(torch.long) + 1]
            return low + (scaled - index) * (high - low)

        w, mu = rows("weights"), rows("means")
        sigma = rows("scales").clamp_min(self.scale_bound)
        centre = w[:, 0] * mu[:, 0]
        for c in range(1, k):
            centre = centre + w[:, c] * mu[:, c]
        reach = (torch.abs(mu - centre[:, None]) + _tail_multiplier(self.tail_mass) * sigma).amax(1)
        half = torch.ceil(reach).nan_to_num(float(self.max_half_width))
        half = half.clamp(1, self.max_half_width).to(torch.long)
        width = int(2 * half.max() + 1) if half.numel() else 1
        offsets = torch.arange(width, dtype=torch.float64)[None, :] - half[:, None]
        values = centre[:, None] + offsets  # (n, L)
        pmf = torch.zeros_like(values)
        for c in range(k):
            distance = torch.abs(values - mu[:, c : c + 1])
            scale = sigma[:, c : c + 1]
            mass = cdf((0.5 - distance) / scale) - cdf((-0.5 - distance) / scale)
            pmf = pmf + w[:, c : c + 1] * mass
        pmf = torch.where(offsets <= half[:, None], pmf, 0.0)
        tail = (1.0 - torch.cumsum(pmf, 1)[:, -1]).clamp_min(0.0)
        cdfs, cdf_lengths = quantized_cdf_table(pmf, 2 * half + 1, tail)
        return cdfs, cdf_lengths, (-half).to(torch.int32)

    @torch.no_grad()
    def compress_steps(
        self, symbols: Sequence[Tensor], tables: Sequence[tuple[Tensor, Tensor, Tensor]]
    ) -> bytes:
        """One stream of groups of symbols, group ``g`` coded with its own tables ``tables[g]``
        (from :meth:`element_tables`, one per symbol of ``symbols[g]``), in order.

        An autoregressive model, whose tables at a step depend on the symbols of the steps before,
        decodes it step by step (:meth:`step_decoder`, :meth:`decompress_steps`).
        """
        if not tables or len(symbols) != len(tables):
            raise InputError(f"{len(symbols)} groups of symbols for {len(tables)} groups of tables")
        width = max(int(cdf.shape[1]) for cdf, _, _ in tables)
        cdfs = torch.cat([F.pad(cdf, (0, width - int(cdf.shape[1]))) for cdf, _, _ in tables])
        lengths = torch.cat([cdf_lengths for _, cdf_lengths, _ in tables])
        offsets = torch.cat([offset for _, _, offset in tables])
        flat = torch.cat([group.reshape(-1).cpu() for group in symbols])
        if flat.numel() != cdfs.shape[0]:
            raise InputError(f"{flat.numel()} symbols for {cdfs.shape[0]} tables")
        indexes = torch.arange(flat.numel(), dtype=torch.int32)
        return self._encode(flat, indexes, cdfs, lengths, offsets)

    @staticmethod
    def step_decoder(stream: bytes, count: int) -> Any:
        """A :class:`fedrs.coder.StreamDecoder` of a stream of :meth:`compress_steps` that must
        hold ``count`` symbols.

        Raises:
            fedrs.coder.CorruptStreamError: the stream is damaged or holds another count.
        """
        coder = _coder()
        decoder = coder.StreamDecoder(stream)
        if decoder.count != count:
            raise coder.CorruptStreamError(
                f"stream holds {decoder.count} symbols, the latent has {count}"
            )
        return decoder

    @staticmethod
    def decompress_steps(decoders: Sequence[Any], tables: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The next step's symbols of several streams: ``decoders[k]`` (from
        :meth:`step_decoder`) decodes one symbol with each table of the ``k``-th of
        ``len(decoders)`` equal blocks of rows of ``tables``.

        Returns:
            int32 symbols (len(decoders), rows per block).
        """
        coder = _coder()
        cdfs, lengths, offsets = tables
        if not decoders or lengths.numel() % len(decoders):
            raise InputError(f"{lengths.numel()} tables do not split among {len(decoders)} streams")
        block = lengths.numel() // len(decoders)
        prepared = coder.CdfTables(_np32(cdfs), _np32(lengths), _np32(offsets))
        out = np.empty((len(decoders), block), dtype=np.int32)
        for k, decoder in enumerate(decoders):
            out[k] = decoder.decode(prepared, np.arange(k * block, (k + 1) * block, dtype=np.int32))
        return torch.from_numpy(out)

    @torch.no_grad()
    def compress(self, y: Tensor, params: dict[str, Tensor]) -> list[bytes]:
        symbols = self.quantize(y, "symbols", self.means(params)).cpu()
        host = {k: v.detach().cpu() for k, v in params.items()}  # one copy a batch
        streams = []
        for i in range(y.shape[0]):
            cdf, lengths, offsets, _, idx = self._tables(host, i)
            streams.append(self._encode(symbols[i], idx, cdf, lengths, offsets))
        return streams

    @torch.no_grad()
    def decompress(self, strings: Sequence[bytes], params: dict[str, Tensor]) -> Tensor:
        means = self.means(params)
        if len(strings) != means.shape[0]:
            raise InputError(f"{len(strings)} streams for {means.shape[0]} parameter sets")
        host = {k: v.detach().cpu() for k, v in params.items()}  # one copy a batch
        out = []
        for i, s in enumerate(strings):
            cdf, lengths, offsets, _, idx = self._tables(host, i)
            out.append(self._decode(s, idx, cdf, lengths, offsets).reshape(means.shape[1:]))
        symbols = torch.stack(out).to(means.device)
        return self.dequantize(symbols, means)
