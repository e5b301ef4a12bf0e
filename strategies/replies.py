"""Checks of client replies: what the server reads from a reply, refused before it is used.

A client's reply is untrusted input.  These pure functions read one training (or evaluation)
reply against the global model the server sent, and either return what may be aggregated or
raise :class:`RejectedReply` with a one-line reason; the strategies turn that into a *failed*
reply (counted, logged with the node id, never a crash).  Nothing here allocates more than the
global model would before the reply is checked:

* **weights** (``num-examples``) must be positive finite numbers, not above the server's
  ``max_weight`` when it sets one (:func:`reply_weight`);
* **metrics** must be finite numbers or lists of finite numbers (:func:`check_metrics`);
* **plain arrays** (Flower ``Array``, ``.npy`` bytes) have their ``.npy`` header parsed without
  loading the data and checked against the global array's dtype and shape, and their byte
  length against the header, before any allocation (:func:`decode_array`);
* **coded arrays** (:data:`fedrs.comm.UPDATE_PAYLOAD_KEY`) are decoded by
  :func:`fedrs.comm.decode_payload`, which bounds what a payload may make it allocate
  (:func:`decode_coded`);
* **values** must match the global dtype and shape and be finite (:func:`check_value`).

:func:`read_reply` does all of it for one training reply and returns a :class:`CheckedReply`;
:func:`as_rejection` turns any other exception raised while reading a reply into a rejection
(the strategies' catch-all).  :func:`first_non_finite` checks the merged model before a
strategy adopts it.
"""

from __future__ import annotations

import io
import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode, SType
from numpy.lib import format as npy_format

from fedrs import protocol
from fedrs.comm import UPDATE_PAYLOAD_KEY, UpdateCodecError, decode_payload
from fedrs.comm.payload import short_repr
from fedrs.errors import InputError

METRICS_RECORD_KEY = protocol.METRICS
"""Preferred key of the MetricRecord in a reply when a reply carries several."""

CLIENT_ID_KEY = protocol.CLIENT_ID
"""MetricRecord key under which a client reports its id (its partition id)."""

CLIENT_METRICS: dict[str, str] = {
    "loss": "loss",
    protocol.NUM_EXAMPLES: "examples",
    "train_s": "train_s",
    "has-s1": "has_s1",
    "has-s2": "has_s2",
    "device-cuda": "device_cuda",
    "cuda-max-memory-mb": "cuda_max_memory_mb",
}
"""Reply metrics kept per client (MetricRecord key -> tracking name under ``client/<id>/``)."""

_MAX_REASON_CHARS = 300
_ERROR_CODE_NAMES = {
    value: name.lower().replace("_", " ")
    for name, value in vars(ErrorCode).items()
    if name.isupper() and isinstance(value, int)
}


R = TypeVar("R")


class RejectedReply(Exception):  # control flow: the strategies record it as a ClientFailure
    """The reply under inspection is unusable.

    Args:
        reason: Why, on one line (it names the key concerned, if any).
        detail: The full text behind the reason (e.g. a client's traceback), if any.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return self.reason


class KeyFilter(Protocol):
    """What :func:`read_reply` needs of :class:`~fedrs.strategies.base.LocalKeyMatcher`."""

    def is_local(self, key: str) -> bool:
        """Whether ``key`` stays on the clients (is never aggregated)."""
        ...


class StatisticsPool(Protocol):
    """What the strategies need of :class:`fedrs.models.statistics.WhiteningPool`: the keys it
    derives from pooled feature statistics, the arrays a reply may carry, and how to read,
    pool and apply them."""

    def derived_keys(self) -> list[str]:
        """Global-model keys computed from pooled statistics (never averaged)."""
        ...

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The float64 arrays a reply's statistics may hold, by key."""
        ...

    def read(self, arrays: Mapping[str, np.ndarray], max_count: float | None = None) -> Any:
        """A reply's statistics, checked (raises an ``InputError`` otherwise)."""
        ...

    def pool(self, parts: list[Any]) -> Any:
        """The statistics of several replies added up."""
        ...

    def running_arrays(self, pooled: Any) -> dict[str, np.ndarray]:
        """The derived keys' values from pooled statistics."""
        ...


@dataclass(frozen=True)
class CheckedReply:
    """A training reply that passed every check.

    Attributes:
        node_id: Flower node id of the sender.
        weight: Its aggregation weight (``weighted_by_key``), positive and finite.
        arrays: The shared arrays it carries, decoded, each with the global dtype and shape
            and finite values.
        metrics: Its MetricRecord (finite values only).
    """

    node_id: int
    weight: float
    arrays: dict[str, np.ndarray]
    metrics: MetricRecord

    def modality_weight(self, modality: str | None) -> float:
        """The weight of the keys of ``modality`` (None: shared keys): the patches of that
        modality the client trained on (``num-examples-<modality>``) where it reports them,
        else :attr:`weight`."""
        if modality is None:
            return self.weight
        value = self.metrics.get(protocol.modality_examples(modality))
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return self.weight


def check_modality_weights(checked: CheckedReply) -> None:
    """A reply's per-modality example counts must lie in ``[0, weight]``.

    Raises:
        RejectedReply: A count is not a finite number in that range.
    """
    for modality in protocol.MODALITIES:
        key = protocol.modality_examples(modality)
        value = checked.metrics.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= checked.weight
        ):
            raise RejectedReply(
                f"metric {key!r} = {short_repr(value)} must be a number in "
                f"[0, {checked.weight:g}] (the reply's weight)"
            )


def as_rejection(exc: BaseException) -> RejectedReply:
    """The rejection of a reply whose reading raised ``exc`` (itself if it is one).

    Any other exception (``MemoryError``, ``RecursionError``, a bug in a decoder ...) becomes a
    rejection whose reason names the exception type and message, with the traceback as
    detail.
    """
    if isinstance(exc, RejectedReply):
        return exc
    message = " ".join(str(exc).split())
    reason = f"reply cannot be read: {type(exc).__name__}"
    if message:
        reason += f": {message}"
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    detail = "".join(traceback.format_exception(exc))
    return RejectedReply(reason, detail)


def _as_finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (not a number, a bool, infinite, NaN, too big)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None


def describe_error(error: Error) -> tuple[str, str]:
    """Return a one-line reason and the full text of an error reply."""
    text = error.reason or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kind = _ERROR_CODE_NAMES.get(error.code, "unknown error")
    reason = f"error reply (code {error.code}, {kind})"
    if lines:
        reason += f": {lines[-1]}"
    return reason, text


def reported_client_id(msg: Message) -> float:
    """The ``client-id`` metric a reply reports, or inf when it reports none.

    Never raises on what a client sends: a ``client-id`` that is not a finite number counts as
    none.
    """
    if msg.has_content():
        for record in msg.content.metric_records.values():
            value = _as_finite(record.get(CLIENT_ID_KEY))
            if value is not None:
                return value
    return math.inf


def reply_order(msg: Message) -> tuple[float, int]:
    """Sort key of a reply: its ``client-id`` metric when it reports one
    (:func:`reported_client_id`), then its node id."""
    return (reported_client_id(msg), int(msg.metadata.src_node_id))


def client_metrics(metrics: MetricRecord) -> tuple[int, dict[str, float]] | None:
    """The client id of a reply and its :data:`CLIENT_METRICS` under their tracking names.

    Metrics the reply lacks (or that are not finite numbers) are left out; ``None`` when the
    reply reports no ``client-id``.
    """
    client = _as_finite(metrics.get(CLIENT_ID_KEY))
    if client is None:
        return None
    values: dict[str, float] = {}
    for key, name in CLIENT_METRICS.items():
        value = _as_finite(metrics.get(key))
        if value is not None:
            values[name] = value
    return int(client), values


def pick_record(records: Mapping[str, R], preferred: str, kind: str) -> R:
    """The record of a reply to use: the one under ``preferred``, else the only one.

    Raises:
        RejectedReply: No record, or several and none under ``preferred``.
    """
    if preferred in records:
        return records[preferred]
    if len(records) == 1:
        return next(iter(records.values()))
    if not records:
        raise RejectedReply(f"reply carries no {kind}")
    raise RejectedReply(f"reply carries {len(records)} {kind}s and none under {preferred!r}")


def reply_weight(
    metrics: MetricRecord, weighted_by_key: str, max_weight: float | None = None
) -> float:
    """The aggregation weight of a reply.

    Args:
        metrics: The reply's MetricRecord.
        weighted_by_key: The metric holding the weight (e.g. ``"num-examples"``).
        max_weight: The largest weight the server accepts (e.g. the most examples any
            client can hold); ``None``: no bound.

    Raises:
        RejectedReply: The weight is missing, not a number, not a positive finite number, or
            above ``max_weight``.
    """
    if weighted_by_key not in metrics:
        raise RejectedReply(f"MetricRecord lacks the weight {weighted_by_key!r}")
    value = metrics[weighted_by_key]
    if isinstance(value, list | bool):
        raise RejectedReply(f"weight {weighted_by_key!r} is not a number: {short_repr(value)}")
    weight = _as_finite(value)
    if weight is None or weight <= 0:
        raise RejectedReply(
            f"weight {weighted_by_key!r} must be a positive finite number, got {short_repr(value)}"
        )
    if max_weight is not None and weight > max_weight:
        raise RejectedReply(
            f"weight {weighted_by_key!r} = {weight:g} exceeds max_weight {max_weight:g}"
        )
    return weight


def check_metrics(metrics: MetricRecord) -> None:
    """Refuse metrics the server could not average: each value a finite number or a list of them.

    Raises:
        RejectedReply: A value is infinite, NaN, or an integer beyond the float range (the
            message names the metric).
    """
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(_as_finite(v) is not None for v in values):
            raise RejectedReply(f"metric {key!r} is not a finite number: {short_repr(value)}")


def reply_metrics(
    msg: Message, weighted_by_key: str, max_weight: float | None = None
) -> tuple[MetricRecord, float]:
    """The MetricRecord of a reply and its weight (:func:`reply_weight`).

    Raises:
        RejectedReply: An error reply, a reply without content or MetricRecord, a bad weight
            or bad metric values.
    """
    if msg.has_error():
        raise RejectedReply(*describe_error(msg.error))
    if not msg.has_content():
        raise RejectedReply("reply has neither content nor error")
    metrics = pick_record(dict(msg.content.metric_records), METRICS_RECORD_KEY, "MetricRecord")
    weight = reply_weight(metrics, weighted_by_key, max_weight)
    check_metrics(metrics)
    return metrics, weight


def _npy_layout(key: str, data: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Dtype, shape, Fortran order and data offset that the ``.npy`` header of ``data`` declares.

    Reads only the header (numpy's own parser, its size bounded by numpy); nothing is allocated
    for the data.

    Raises:
        RejectedReply: No readable version 1 or 2 ``.npy`` header.
    """
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise RejectedReply(f"array {key!r}: unsupported .npy format version {version}")
    except RejectedReply:
        raise
    except Exception as exc:  # any parse error of the header: the reply, not the server
        message = " ".join(str(exc).split())[:120]
        raise RejectedReply(
            f"array {key!r} has no readable .npy header: {type(exc).__name__}: {message}"
        ) from exc
    return np.dtype(dtype), tuple(int(n) for n in shape), bool(fortran_order), stream.tell()


def _npy_values(key: str, array: Array, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The values of ``array`` if its ``.npy`` bytes hold exactly ``dtype`` and ``shape``.

    Raises:
        RejectedReply: Not ``.npy`` bytes, a header declaring another dtype or shape, or a byte
            length that differs from what the header declares.
    """
    if array.stype != SType.NUMPY:
        raise RejectedReply(f"array {key!r} has serialization type {short_repr(array.stype)}")
    data = array.data
    declared, declared_shape, fortran_order, offset = _npy_layout(key, data)
    if declared != dtype or declared_shape != shape:
        raise RejectedReply(
            f"array {key!r}: its .npy header declares {declared}{declared_shape}, "
            f"expected {dtype}{shape}"
        )
    count = math.prod(shape)
    expected = offset + count * dtype.itemsize
    if len(data) != expected:
        raise RejectedReply(
            f"array {key!r}: {len(data)} bytes, its .npy header declares {expected}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return np.array(flat.reshape(shape, order="F" if fortran_order else "C"), order="C")


def check_value(key: str, value: np.ndarray, reference: Array) -> np.ndarray:
    """Check a decoded array against the global ``reference`` (dtype, shape, finite values).

    Raises:
        RejectedReply: Another dtype or shape, or NaN / infinite values.
    """
    if str(value.dtype) != reference.dtype or value.shape != tuple(reference.shape):
        raise RejectedReply(
            f"array {key!r} decodes to {value.dtype}{value.shape}, "
            f"global model has {reference.dtype}{tuple(reference.shape)}"
        )
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise RejectedReply(f"array {key!r} holds NaN or infinite values")
    return value


def decode_array(key: str, array: Array, reference: Array) -> np.ndarray:
    """Decode a plain ``array`` of a reply, checked against the global ``reference``.

    The declared dtype and shape (the Array's metadata, then the ``.npy`` header of its bytes)
    must equal the reference's, and the byte length what the header declares, before anything
    is allocated; then the values are copied out and checked with :func:`check_value`.

    Raises:
        RejectedReply: A dtype or shape mismatch (the message names the key), bytes that are
            not such an array, or values that fail :func:`check_value`.
    """
    if array.dtype != reference.dtype:
        raise RejectedReply(
            f"dtype mismatch for {key!r}: got {short_repr(array.dtype)}, "
            f"global model has {reference.dtype}"
        )
    if tuple(array.shape) != tuple(reference.shape):
        raise RejectedReply(
            f"shape mismatch for {key!r}: got {short_repr(tuple(array.shape))}, "
            f"global model has {tuple(reference.shape)}"
        )
    value = _npy_values(key, array, np.dtype(reference.dtype), tuple(reference.shape))
    return check_value(key, value, reference)


def decode_coded(array: Array, reference: Mapping[str, npt.NDArray[Any]]) -> dict[str, np.ndarray]:
    """The arrays of a coded payload (:data:`fedrs.comm.UPDATE_PAYLOAD_KEY`), rebuilt.

    Args:
        array: The payload: a 1-D uint8 array.
        reference: The global model sent to the client (key -> array).

    Raises:
        RejectedReply: Not a 1-D uint8 array, or a payload :func:`fedrs.comm.decode_payload`
            refuses (the message names the payload or the key).
    """
    key = UPDATE_PAYLOAD_KEY
    if array.stype != SType.NUMPY:
        raise RejectedReply(f"array {key!r} has serialization type {short_repr(array.stype)}")
    dtype, shape, _, _ = _npy_layout(key, array.data)
    if dtype != np.uint8 or len(shape) != 1:
        raise RejectedReply(f"array {key!r} must be 1-D uint8, got {dtype}{shape}")
    blob = _npy_values(key, array, dtype, shape)
    try:
        return decode_payload(blob.tobytes(), reference)
    except UpdateCodecError as exc:
        raise RejectedReply(f"coded update cannot be decoded: {exc}") from exc


def reply_arrays(
    msg: Message,
    global_arrays: ArrayRecord,
    global_numpy: Mapping[str, npt.NDArray[Any]],
    *,
    local_keys: KeyFilter,
    arrayrecord_key: str,
    requires_all_shared_keys: bool,
) -> dict[str, np.ndarray]:
    """Decode and check the shared arrays of a reply against the global model.

    Args:
        msg: The reply (with content).
        global_arrays: The global model sent to the clients in this round (all keys).
        global_numpy: The same as numpy arrays (the reference of coded payloads).
        local_keys: Which keys are local-only (ignored when a client sends them back).
        arrayrecord_key: Preferred key of the ArrayRecord in the reply.
        requires_all_shared_keys: Whether a reply missing a shared key is refused.

    Returns:
        The shared arrays of the reply, decoded and checked.

    Raises:
        RejectedReply: See the module docstring.
    """
    record = pick_record(dict(msg.content.array_records), arrayrecord_key, "ArrayRecord")
    items: dict[str, Array | np.ndarray] = {
        k: a for k, a in record.items() if k != UPDATE_PAYLOAD_KEY
    }
    if UPDATE_PAYLOAD_KEY in record:
        for key, value in decode_coded(record[UPDATE_PAYLOAD_KEY], global_numpy).items():
            if key in items:
                raise RejectedReply(f"key {key!r} is sent both coded and plain")
            items[key] = value
    decoded: dict[str, np.ndarray] = {}
    for key, item in items.items():
        if local_keys.is_local(key):
            continue
        reference = global_arrays.get(key)
        if reference is None:
            raise RejectedReply(f"key {short_repr(key)} is not in the global model")
        if isinstance(item, Array):
            decoded[key] = decode_array(key, item, reference)
        else:
            decoded[key] = check_value(key, item, reference)
    if not decoded:
        raise RejectedReply("reply carries no shared arrays")
    if requires_all_shared_keys:
        missing = [k for k in global_arrays if not local_keys.is_local(k) and k not in decoded]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise RejectedReply(
                f"reply misses {len(missing)} shared keys ({shown}{more}); "
                "use the 'modality-aware' strategy for partial updates"
            )
    return decoded


def read_reply(
    msg: Message,
    global_arrays: ArrayRecord,
    global_numpy: Mapping[str, npt.NDArray[Any]],
    *,
    local_keys: KeyFilter,
    weighted_by_key: str,
    arrayrecord_key: str,
    requires_all_shared_keys: bool,
    max_weight: float | None = None,
) -> CheckedReply:
    """Read and check one training reply (:func:`reply_metrics`, then :func:`reply_arrays`).

    Raises:
        RejectedReply: The reply is unusable; other exceptions (a decoder's bug, memory) are
            the caller's to turn into a rejection with :func:`as_rejection`.
    """
    metrics, weight = reply_metrics(msg, weighted_by_key, max_weight)
    arrays = reply_arrays(
        msg,
        global_arrays,
        global_numpy,
        local_keys=local_keys,
        arrayrecord_key=arrayrecord_key,
        requires_all_shared_keys=requires_all_shared_keys,
    )
    checked = CheckedReply(
        node_id=int(msg.metadata.src_node_id), weight=weight, arrays=arrays, metrics=metrics
    )
    check_modality_weights(checked)
    return checked


def reply_statistics(
    msg: Message, pool: StatisticsPool, max_count: float | None = None
) -> Any | None:
    """The feature statistics a training reply carries (:data:`fedrs.protocol.STATISTICS`),
    read and checked, or None when it carries none.

    Each array's ``.npy`` header is checked against the shape the pool expects before its data
    is read.

    Raises:
        RejectedReply: An unknown key, a bad array, or statistics the pool refuses.
    """
    record = msg.content.array_records.get(protocol.STATISTICS)
    if record is None:
        return None
    shapes = pool.shapes()
    arrays: dict[str, np.ndarray] = {}
    for key, array in record.items():
        if key not in shapes:
            raise RejectedReply(f"statistics key {short_repr(key)} is not expected")
        arrays[key] = _npy_values(key, array, np.dtype(np.float64), shapes[key])
    try:
        return pool.read(arrays, max_count=max_count)
    except InputError as exc:
        raise RejectedReply(f"statistics: {exc}") from exc


def first_non_finite(arrays: Mapping[str, npt.NDArray[Any]]) -> str | None:
    """The first key (in order) of a floating-point array holding NaN or inf, else ``None``."""
    for key, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return cast(str, key)
    return None
