"""Coded broadcasts, the client's side: the global model a training message carries.

The server asks a client to keep the global model it sends by naming its fingerprint
(:data:`GLOBAL_FINGERPRINT_KEY` in the training ConfigRecord).  A later message may then carry
only the coded difference to that model (the payload under
:data:`fedrs.comm.UPDATE_PAYLOAD_KEY`, the model it is a difference to named by
:data:`GLOBAL_BASE_KEY`), which the client rebuilds from the model it kept
(:func:`fedrs.comm.decode_update`).  A client that no longer holds that model fails the round
with :class:`MissingGlobalModelError`, and the server sends it the full model next time.

Framework-free: models are dicts of numpy arrays, which the Flower app keeps in the node's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .codec import UPDATE_PAYLOAD_KEY, decode_update, fingerprint
from .errors import MissingGlobalModelError, UpdateCodecError

GLOBAL_FINGERPRINT_KEY = "global-fingerprint"
"""Training ConfigRecord key: fingerprint of the global model the message carries; a client
keeps that model (as the reference of later coded broadcasts) when the key is present."""

GLOBAL_BASE_KEY = "global-base"
"""Training ConfigRecord key: fingerprint of the model a coded broadcast is a difference to."""


def rebuild_global(
    arrays: dict[str, np.ndarray],
    cfg: Mapping[str, Any],
    held_fingerprint: object = None,
    held: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], str | None]:
    """The global model a training message carries, rebuilt when it is sent coded.

    Args:
        arrays: The message's arrays.
        cfg: The message's ConfigRecord.
        held_fingerprint: The fingerprint of the model this node kept (``None``: none).
        held: The arrays of the model this node kept, if any.

    Returns:
        The global model, and the fingerprint to keep it under when the message names one
        (``None``: not to be kept).

    Raises:
        MissingGlobalModelError: The message is a coded difference to a model this node does
            not hold.
        UpdateCodecError: The coded difference is damaged, or the model rebuilt differs from
            the one the server sent.
    """
    if UPDATE_PAYLOAD_KEY in arrays:
        base = str(cfg.get(GLOBAL_BASE_KEY, ""))
        if held_fingerprint != base or held is None:
            raise MissingGlobalModelError(
                GLOBAL_BASE_KEY,
                f"the server sent a difference to global model {base[:12]}, this node holds "
                f"{str(held_fingerprint)[:12] if held_fingerprint else 'none'}; it gets the "
                "full model next round",
            )
        arrays = decode_update(arrays, held)
    expected = cfg.get(GLOBAL_FINGERPRINT_KEY)
    if expected is None:
        return arrays, None
    if fingerprint(arrays) != str(expected):
        raise UpdateCodecError(
            GLOBAL_FINGERPRINT_KEY, "the global model received differs from the server's"
        )
    return arrays, str(expected)
