"""Update codecs: how a model update travels between a client and the server, by name.

A codec turns the values a sender wants the receiver to hold (``values``: a client's trained
arrays, or the server's next global model) into a *payload* of numpy arrays, given a
*reference* both sides hold exactly (the global model the server sent).  The receiver rebuilds
the values with :func:`decode_update` and the same reference.

* ``"none"`` (:class:`PlainUpdateCodec`): the payload is the values themselves (float32 ``.npy``).
* ``"entropy"`` (:class:`EntropyUpdateCodec`): for each floating-point tensor the difference
  ``values - reference`` (plus the error-feedback residual) is optionally sparsified (top-k by
  magnitude), quantised with a step relative to the difference's RMS (or set by a bit budget;
  nearest or stochastic rounding), and the integer symbols are entropy-coded with
  :mod:`fedrs.coder` using frequency tables fitted to them and sent with them
  (:mod:`fedrs.comm.payload`).  The receiver gets ``reference + step * symbols``: each element
  within ``step / 2`` of the sent difference with nearest rounding, and the symbols exactly.
  Integer tensors, keys matching ``raw_keys`` (counters, entropy-model tables) and keys without
  a matching reference are sent unchanged, so they round-trip exactly.

Everything a receiver needs is in the payload (steps, shapes, dtypes, tables), so decoding
does not depend on the sender's options: a server decodes any mix of coded and plain replies.

>>> codec = build_update_codec("entropy", step=0.5)
>>> sent = codec.encode(trained, reference=global_model)
>>> received = decode_update(sent.payload, reference=global_model)
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedrs.errors import InputError
from fedrs.registry import Registry, store_name

from .errors import UpdateCodecError
from .payload import CodedTensor, pack, unpack

UPDATE_PAYLOAD_KEY = "__fedrs_update__"
"""Record key of the entropy-coded part of a payload (a 1-D uint8 array)."""

DEFAULT_RAW_KEYS: tuple[str, ...] = (
    "num_batches_tracked",
    "_quantized_cdf",
    "_cdf_length",
    "_offset",
    "scale_table",
)
"""Patterns of floating-point keys that are not averaged weights: always sent unchanged."""

_SYMBOL_LIMIT = (1 << 31) - 1

Arrays = Mapping[str, npt.NDArray[Any]]


UPDATE_CODECS: Registry[type[UpdateCodec]] = Registry("update codec", on_register=store_name)
"""Registered update codecs by name (the name is also stored as the class's ``name``)."""

register_update_codec = UPDATE_CODECS.register
"""``@register_update_codec("name")``: register an update codec class (taken: ValueError)."""

update_codec_names = UPDATE_CODECS.names
"""The registered update codec names, sorted."""


def update_codec_options(name: str) -> list[str]:
    """The option names the codec ``name`` accepts.

    Raises:
        InputError: ``name`` is not a registered codec.
    """
    return UPDATE_CODECS.parameters(name)


def build_update_codec(name: str, **options: Any) -> UpdateCodec:
    """Build the update codec registered as ``name``.

    Args:
        name: A registered name (``"none"``, ``"entropy"``).
        **options: Constructor options of that codec (``-`` in a name is read as ``_``);
            options a codec does not take, or one given twice, are refused.

    Raises:
        InputError: Unknown name or option, an option given twice, or a bad option value.
    """
    return UPDATE_CODECS.lookup(name)(**UPDATE_CODECS.options(name, options))


@dataclass
class EncodedUpdate:
    """What :meth:`UpdateCodec.encode` produces.

    Attributes:
        payload: The arrays to send (record key -> array).
        decoded: What the receiver will rebuild from ``payload`` (key -> array), exactly.
        residual: Error-feedback state to pass to the next ``encode`` (key -> float32
            array); empty when the codec keeps none.
    """

    payload: dict[str, npt.NDArray[Any]]
    decoded: dict[str, npt.NDArray[Any]]
    residual: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)


class UpdateCodec(ABC):
    """Encodes model updates against a reference both sides hold."""

    name: ClassVar[str] = ""
    codes_broadcast: bool = False
    """Whether the server should also send its global model coded (see the strategies)."""
    seed: int = 0
    """Seed of the codec's own randomness (stochastic rounding)."""

    @abstractmethod
    def encode(
        self,
        values: Arrays,
        reference: Arrays,
        *,
        residual: Arrays | None = None,
        rng: np.random.Generator | None = None,
    ) -> EncodedUpdate:
        """Encode ``values`` against ``reference``.

        Args:
            values: What the receiver should hold (key -> array).
            reference: The arrays the receiver decodes against (usually a superset of the
                keys of ``values``).
            residual: Error-feedback state returned by the previous call, if any.
            rng: Random generator of stochastic rounding (seeded by the caller).
        """

    def describe(self) -> str:
        """One line for logs."""
        return self.name


@register_update_codec("none")
class PlainUpdateCodec(UpdateCodec):
    """No coding: the arrays travel as they are (``.npy`` bytes)."""

    def __init__(self) -> None:
        pass

    def encode(
        self,
        values: Arrays,
        reference: Arrays,
        *,
        residual: Arrays | None = None,
        rng: np.random.Generator | None = None,
    ) -> EncodedUpdate:
        arrays = {k: np.asarray(v) for k, v in values.items()}
        return EncodedUpdate(payload=arrays, decoded=dict(arrays))


def _check_positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InputError(f"update codec: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"update codec: {name} must be true or false, got {value!r}")
    return value


@register_update_codec("entropy")
class EntropyUpdateCodec(UpdateCodec):
    """Quantised differences to the reference, entropy-coded with fitted tables.

    Args:
        step: Quantisation step as a fraction of the RMS of each tensor's difference (the
            step of a tensor is ``step * rms(difference)``); smaller is finer.
        bits: When set, a bit budget instead of ``step``: each tensor's difference is
            quantised to ``2**bits - 1`` levels spanning ``[-max|d|, max|d|]`` (2 ... 16).
        stochastic: Stochastic rounding (unbiased: ``floor(x + u)``, ``u ~ U[0, 1)``) instead
            of rounding to the nearest level.
        topk: When set, the fraction (0, 1] of each tensor's elements sent (largest
            magnitudes); the others are sent as zero differences.
        error_feedback: Keep what was not sent (sparsification and quantisation error) and
            add it to the next update (the caller stores :attr:`EncodedUpdate.residual`).
        broadcast: Let the server send its global model as a coded difference to the
            previous one to the clients that hold it.
        raw_keys: Patterns (regular expressions searched in the key) of floating-point keys
            sent unchanged.
        own_table_from: Tensors with at least this many elements get their own frequency
            table; smaller ones share one.
        seed: Seed of stochastic rounding when the caller passes no generator.

    Raises:
        InputError: An option has a bad value.
    """

    def __init__(
        self,
        step: float = 0.25,
        bits: int | None = None,
        stochastic: bool = False,
        topk: float | None = None,
        error_feedback: bool = True,
        broadcast: bool = True,
        raw_keys: Sequence[str] = DEFAULT_RAW_KEYS,
        own_table_from: int = 4096,
        seed: int = 0,
    ) -> None:
        self.step = _check_positive("step", step)
        if bits is not None and (
            isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16
        ):
            raise InputError(f"update codec: bits must be an integer in [2, 16], got {bits!r}")
        self.bits = bits
        self.stochastic = _check_bool("stochastic", stochastic)
        if topk is not None and not 0 < _check_positive("topk", topk) <= 1:
            raise InputError(f"update codec: topk must lie in (0, 1], got {topk!r}")
        self.topk = None if topk is None else float(topk)
        self.error_feedback = _check_bool("error_feedback", error_feedback)
        self.codes_broadcast = _check_bool("broadcast", broadcast)
        if isinstance(raw_keys, str) or not all(isinstance(p, str) for p in raw_keys):
            raise InputError(f"update codec: raw_keys must be a list of patterns, got {raw_keys!r}")
        try:
            self._raw = [re.compile(p) for p in raw_keys]
        except re.error as exc:
            raise InputError(f"update codec: bad raw_keys pattern: {exc}") from None
        self.raw_keys = tuple(raw_keys)
        if isinstance(own_table_from, bool) or not isinstance(own_table_from, int):
            raise InputError(
                f"update codec: own_table_from must be an integer, got {own_table_from!r}"
            )
        self.own_table_from = max(1, own_table_from)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"update codec: seed must be an integer, got {seed!r}")
        self.seed = seed

    def describe(self) -> str:
        level = f"bits={self.bits}" if self.bits is not None else f"step={self.step:g}xRMS"
        parts = [
            level,
            "stochastic" if self.stochastic else "nearest",
            f"topk={self.topk:g}" if self.topk is not None else "dense",
            "error feedback" if self.error_feedback else "no error feedback",
            "coded broadcast" if self.codes_broadcast else "plain broadcast",
        ]
        return f"entropy ({', '.join(parts)})"

    def _codable(
        self, key: str, value: npt.NDArray[Any], reference: npt.NDArray[Any] | None
    ) -> bool:
        return (
            value.dtype.kind == "f"
            and value.size > 0
            and reference is not None
            and reference.dtype == value.dtype
            and reference.shape == value.shape
            and not any(p.search(key) for p in self._raw)
        )

    def _step(self, sent: npt.NDArray[np.float64], rms: float) -> float:
        if self.bits is None:
            return self.step * rms
        peak = float(np.abs(sent).max())
        return peak / float((1 << (self.bits - 1)) - 1)

    def _quantise(
        self, scaled: npt.NDArray[np.float64], rng: np.random.Generator
    ) -> npt.NDArray[np.float64]:
        if self.stochastic:
            return np.floor(scaled + rng.random(scaled.shape))
        return np.rint(scaled)

    def encode(
        self,
        values: Arrays,
        reference: Arrays,
        *,
        residual: Arrays | None = None,
        rng: np.random.Generator | None = None,
    ) -> EncodedUpdate:
        """Encode ``values`` as quantised differences to ``reference`` (see the class)."""
        generator = rng if rng is not None else np.random.default_rng(self.seed)
        raw: dict[str, npt.NDArray[Any]] = {}
        tensors: list[CodedTensor] = []
        decoded: dict[str, npt.NDArray[Any]] = {}
        kept: dict[str, npt.NDArray[np.float32]] = {}
        for key, given in values.items():
            value = np.asarray(given)
            found = reference.get(key)
            ref = None if found is None else np.asarray(found)
            if ref is None or not self._codable(key, value, ref):
                raw[key] = value
                decoded[key] = value
                continue
            base = ref.astype(np.float64).reshape(-1)
            target = value.astype(np.float64).reshape(-1) - base
            previous = residual.get(key) if residual is not None and self.error_feedback else None
            if previous is not None and np.shape(previous) == value.shape:
                target = target + np.asarray(previous, dtype=np.float64).reshape(-1)
            if not np.isfinite(target).all():
                raw[key] = value
                decoded[key] = value
                continue
            rms = math.sqrt(float(np.mean(np.square(target))))
            sent = target
            if self.topk is not None and rms > 0:
                count = max(1, math.ceil(self.topk * target.size))
                if count < target.size:
                    keep = np.argpartition(np.abs(target), target.size - count)[-count:]
                    sent = np.zeros_like(target)
                    sent[keep] = target[keep]
            step = self._step(sent, rms) if rms > 0 else 0.0
            symbols: npt.NDArray[np.int32] | None = None
            if step > 0 and math.isfinite(step):
                levels = self._quantise(sent / step, generator)
                if float(np.abs(levels).max()) > _SYMBOL_LIMIT:
                    raw[key] = value
                    decoded[key] = value
                    continue
                if levels.any():
                    symbols = levels.astype(np.int32).reshape(value.shape)
            if symbols is None:
                step = 0.0
            rebuilt = _rebuild(ref, step, symbols)
            decoded[key] = rebuilt
            tensors.append(CodedTensor(key, value.dtype.str, value.shape, step, symbols))
            if self.error_feedback:
                left = base + target - rebuilt.astype(np.float64).reshape(-1)
                if left.any():
                    kept[key] = left.astype(np.float32).reshape(value.shape)
        payload = dict(raw)
        if tensors:
            if UPDATE_PAYLOAD_KEY in payload:
                raise UpdateCodecError(UPDATE_PAYLOAD_KEY, "is a reserved key")
            blob = pack(tensors, own_table_from=self.own_table_from)
            payload[UPDATE_PAYLOAD_KEY] = np.frombuffer(blob, dtype=np.uint8)
        return EncodedUpdate(payload=payload, decoded=decoded, residual=kept)


def _rebuild(
    reference: npt.NDArray[Any], step: float, symbols: npt.NDArray[np.int32] | None
) -> npt.NDArray[Any]:
    """``reference + step * symbols`` in float64, cast to the reference dtype (both sides)."""
    if symbols is None:
        return np.array(reference, copy=True)
    out = reference.astype(np.float64) + step * symbols.astype(np.float64)
    return np.asarray(out.astype(reference.dtype))


def decode_payload(blob: bytes, reference: Arrays) -> dict[str, npt.NDArray[Any]]:
    """Rebuild the tensors of an entropy-coded payload against ``reference``.

    Raises:
        UpdateCodecError: The payload is damaged, or names a key the reference lacks or holds
            with another dtype or shape (the message names the key).
    """

    def expect(key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        ref = reference.get(key)
        if ref is None:
            raise UpdateCodecError(key, "is not in the reference model")
        if ref.dtype != dtype or ref.shape != shape:
            raise UpdateCodecError(
                key, f"coded as {dtype}{shape}, reference model has {ref.dtype}{ref.shape}"
            )

    return {
        key: _rebuild(np.asarray(reference[key]), step, symbols)
        for key, _, _, step, symbols in unpack(blob, name=UPDATE_PAYLOAD_KEY, expect=expect)
    }


def decode_update(payload: Arrays, reference: Arrays) -> dict[str, npt.NDArray[Any]]:
    """Rebuild the values of a payload of any codec against ``reference``.

    Args:
        payload: Record key -> array, as sent.
        reference: The arrays the sender coded against.

    Returns:
        Model key -> array.

    Raises:
        UpdateCodecError: The coded part is damaged or does not match ``reference``.
    """
    out = {k: np.asarray(v) for k, v in payload.items() if k != UPDATE_PAYLOAD_KEY}
    if UPDATE_PAYLOAD_KEY not in payload:
        return out
    blob = np.asarray(payload[UPDATE_PAYLOAD_KEY])
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise UpdateCodecError(
            UPDATE_PAYLOAD_KEY, f"must be a 1-D uint8 array, got {blob.dtype}{blob.shape}"
        )
    for key, value in decode_payload(blob.tobytes(), reference).items():
        if key in out:
            raise UpdateCodecError(key, "is sent both coded and plain")
        out[key] = value
    return out


def fingerprint(arrays: Arrays) -> str:
    """A digest of keys, dtypes, shapes and bytes (order-independent): equal iff identical."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:32]
