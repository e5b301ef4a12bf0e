"""Communication of model updates: codecs that shrink what clients and server exchange.

>>> from fedrs.comm import build_update_codec, decode_update
>>> codec = build_update_codec("entropy", step=0.5)
>>> sent = codec.encode(trained, reference=global_model)      # client
>>> update = decode_update(sent.payload, reference=global_model)  # server

Names: ``"none"`` (arrays as they are) and ``"entropy"`` (quantised differences to the
reference, entropy-coded with :mod:`fedrs.coder`); see :mod:`fedrs.comm.codec`.  A client
rebuilds a global model broadcast coded with :func:`rebuild_global` (:mod:`fedrs.comm.broadcast`).
Framework-free: payloads are dicts of numpy arrays, which the Flower apps put into
``ArrayRecord`` s.
"""

from __future__ import annotations

from .broadcast import (
    GLOBAL_BASE_KEY,
    GLOBAL_FINGERPRINT_KEY,
    rebuild_global,
)
from .codec import (
    DEFAULT_RAW_KEYS,
    UPDATE_CODECS,
    UPDATE_PAYLOAD_KEY,
    EncodedUpdate,
    EntropyUpdateCodec,
    PlainUpdateCodec,
    UpdateCodec,
    build_update_codec,
    decode_payload,
    decode_update,
    fingerprint,
    register_update_codec,
    update_codec_names,
    update_codec_options,
)
from .errors import MissingGlobalModelError, UpdateCodecError

__all__ = [
    "DEFAULT_RAW_KEYS",
    "GLOBAL_BASE_KEY",
    "GLOBAL_FINGERPRINT_KEY",
    "UPDATE_CODECS",
    "UPDATE_PAYLOAD_KEY",
    "EncodedUpdate",
    "EntropyUpdateCodec",
    "MissingGlobalModelError",
    "PlainUpdateCodec",
    "UpdateCodec",
    "UpdateCodecError",
    "build_update_codec",
    "decode_payload",
    "decode_update",
    "fingerprint",
    "rebuild_global",
    "register_update_codec",
    "update_codec_names",
    "update_codec_options",
]
