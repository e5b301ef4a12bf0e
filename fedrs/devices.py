"""Which torch device a process computes on, and how batches and mixed precision reach it.

``train.device`` (and ``--device`` of ``fedrs compress``, ``decompress`` and ``search``) names
it: ``"auto"`` is the first GPU this process sees, else the CPU; ``"cpu"``, ``"cuda"`` and
``"cuda:N"`` are taken as given, and a GPU this process does not see is refused
(:class:`~fedrs.errors.InputError` naming the key and the value).  A simulated client is a Ray
actor: Ray sets its ``CUDA_VISIBLE_DEVICES`` to the GPU it reserved for it (``--num-gpus``), which
torch then numbers ``cuda:0``, so ``"auto"`` finds it and two clients sharing one card both
train on their ``cuda:0``.  A client given no GPU share resolves ``"auto"`` with
``cuda_allowed=False``: the CPU, whatever the machine holds.

The range coder always runs on the CPU: symbols, table indexes and coding tables are copied off
the device once per batch.  Bitstreams carry no promise across device types: the entropy
parameters come from float networks whose rounding differs between a GPU and a CPU, so an
archive records the device type that wrote it and a reader on another type is warned
(:func:`cross_device_note`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from fedrs.errors import InputError

__all__ = [
    "AUTO",
    "AmpMode",
    "autocast",
    "cross_device_note",
    "full_precision",
    "pins_memory",
    "resolve_device",
    "to_device",
]

AUTO = "auto"
"""The device spec that picks CUDA where this process sees a GPU, else the CPU."""

AmpMode = Literal["off", "bf16"]
"""Mixed precision of the transforms' forward pass in training (``train.amp``)."""

_KINDS = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if value is None else f" (CUDA_VISIBLE_DEVICES={value!r})"


def resolve_device(
    spec: str | torch.device = AUTO, *, key: str = "train.device", cuda_allowed: bool = True
) -> torch.device:
    """The device ``spec`` names, checked against what this process sees.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a ``torch.device`` is checked
            the same way).
        key: The setting the spec comes from, named in the error (``train.device``,
            ``--device``).
        cuda_allowed: Whether ``"auto"`` may pick a GPU (False: a simulated client that was
            given no GPU share).

    Returns:
        ``cpu`` or ``cuda:N`` (``"auto"`` and ``"cuda"``: the current CUDA device, ``cuda:0``
        in a Ray actor).

    Raises:
        InputError: Not a device spec, a device type other than CPU and CUDA, or a GPU this
            process does not see.
    """
    text = str(spec).strip().lower()
    if text == AUTO:
        if cuda_allowed and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"{key} = {spec!r}: not a device; use {_KINDS}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise InputError(f"{key} = {spec!r}: fedrs computes on the CPU or CUDA; use {_KINDS}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise InputError(
            f"{key} = {spec!r}: this process sees no CUDA GPU{_visible()}; use 'auto' or 'cpu'"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise InputError(
            f"{key} = {spec!r}: this process sees {count} CUDA GPU(s), cuda:0 to "
            f"cuda:{count - 1}{_visible()}"
        )
    return torch.device("cuda", index)


def pins_memory(device: torch.device) -> bool:
    """Whether host batches bound for ``device`` go through pinned (page-locked) memory, so
    that the copy runs asynchronously (``non_blocking``): for CUDA only."""
    return device.type == "cuda"


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; a host tensor bound for a GPU is pinned and copied without
    blocking the host (kernels queued after it on the stream wait for it)."""
    if tensor.device == device:
        return tensor
    if pins_memory(device) and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def autocast(device: torch.device, amp: AmpMode) -> contextlib.AbstractContextManager[None]:
    """The mixed-precision context of a training forward pass on ``device``.

    ``"off"``: nothing; ``"bf16"``: ``torch.autocast`` to bfloat16 (the entropy models compute
    their likelihoods in float32 inside it, :mod:`fedrs.models.entropy`).

    Raises:
        InputError: ``"bf16"`` on a GPU without bfloat16 support.
    """
    if amp == "off":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise InputError(f"train.amp = {amp!r}: use 'off' or 'bf16'")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"train.amp = 'bf16': {device} has no bfloat16 support; use 'off'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def full_precision(like: Tensor) -> Iterator[None]:
    """Autocast switched off for ``like``'s device type (float32 computations inside)."""
    with torch.autocast(like.device.type, enabled=False):
        yield


def cross_device_note(written_on: object, device: torch.device, what: str) -> str | None:
    """One line warning that ``what`` runs on another device type than the one that wrote an
    archive (``written_on``: its ``meta["device"]``), or None (same type, or not recorded).

    Args:
        written_on: The device type the archive records (``"cpu"``, ``"cuda"``), if any.
        device: Where this process decodes or hashes.
        what: What runs here, e.g. ``"decoding"``, ``"the query's hash code"``.
    """
    if not isinstance(written_on, str) or not written_on or written_on == device.type:
        return None
    return (
        f"the archive was written on {written_on}, {what} runs on {device.type}: the entropy "
        "parameters may round differently there, so results may differ from the writer's "
        f"(--device {written_on} matches it)"
    )
