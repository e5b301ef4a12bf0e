"""Binary hash codes: their two forms, and the conversions between them.

A batch of ``N`` hash codes of ``K`` bits (``K`` a multiple of 8: 16, 32, 64, 128, ...) is accepted
in two forms, told apart by dtype:

* **packed**: a ``uint8`` array ``(N, K/8)``, bits in ``numpy.packbits`` order (first bit = most
  significant bit of the first byte). This is what faiss stores. *Every* ``uint8`` array is read
  as packed bytes.
* **unpacked**: an array ``(N, K)`` of any other dtype (``bool``, signed or unsigned integers other
  than ``uint8``, floats), one value per bit; a bit is 1 where the value is ``> 0``. So ``±1``
  codes (the hash head's ``sign``), ``{0, 1}`` codes and raw ``tanh`` outputs all work; pass
  unpacked ``{0, 1}`` codes as ``bool`` or ``int8``, not ``uint8``.

:func:`pack_codes` and :func:`unpack_codes` convert between the two, and :func:`as_packed`
returns either form packed. The faiss index and Hamming distances over codes are in
:mod:`fedrs.retrieval`; the ``.fedrs`` container (:mod:`fedrs.container`) stores codes packed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.errors import InputError

__all__ = [
    "as_packed",
    "pack_codes",
    "unpack_codes",
]


def _as_2d(codes: Any, name: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array of codes (N, K) or packed (N, K/8), got shape "
            f"{arr.shape}; use codes[None, :] for a single code"
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: codes must be numeric or boolean, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name}: codes must be real, got dtype {arr.dtype}")
    return arr


def pack_codes(codes: Any, *, name: str = "codes") -> np.ndarray:
    """Pack unpacked codes ``(N, K)`` into bytes ``(N, K/8)``.

    Args:
        codes: ``(N, K)`` array, one value per bit (``±1``, ``{0, 1}``, bool or real scores); a
            bit is 1 where the value is ``> 0``. ``K`` must be a multiple of 8. A ``uint8`` array
            is taken as already packed and returned unchanged (as a C-contiguous copy-free view
            where possible).
        name: how the array is named in error messages.

    Returns:
        C-contiguous ``uint8`` array ``(N, K/8)`` in ``numpy.packbits`` bit order.

    Raises:
        InputError: not 2-D, ``K`` not a multiple of 8, non-numeric or non-finite values.
    """
    arr = _as_2d(codes, name)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = arr.shape[1]
    if bits == 0 or bits % 8 != 0:
        raise InputError(f"{name}: code length must be a positive multiple of 8 bits, got {bits}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name}: codes contain NaN or infinite values")
    return np.ascontiguousarray(np.packbits(arr > 0, axis=1))


def unpack_codes(
    packed: Any, bits: int | None = None, *, signed: bool = True, name: str = "codes"
) -> np.ndarray:
    """Unpack bytes ``(N, K/8)`` into one value per bit.

    Args:
        packed: ``uint8`` array ``(N, K/8)``.
        bits: ``K``; defaults to ``8 * packed.shape[1]``. Must equal it (codes are whole bytes).
        signed: ``True`` gives ``±1`` (bit 1 -> +1, bit 0 -> -1); ``False`` gives ``{0, 1}``.
        name: how the array is named in error messages.

    Returns:
        ``int8`` array ``(N, K)``; ``pack_codes(unpack_codes(p)) == p`` for both settings.

    Raises:
        InputError: not a 2-D ``uint8`` array, or ``bits`` does not match its width.
    """
    arr = np.asarray(packed)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise InputError(
            f"{name}: packed codes must be a 2-D uint8 array, got {arr.dtype} {arr.shape}"
        )
    width = 8 * arr.shape[1]
    if bits is not None and bits != width:
        raise InputError(f"{name}: {arr.shape[1]} bytes per code hold {width} bits, not {bits}")
    out = np.unpackbits(arr, axis=1).astype(np.int8)
    if signed:
        out = 2 * out - 1
    return out


def as_packed(codes: Any, bits: int | None = None, *, name: str = "codes") -> np.ndarray:
    """Return codes in packed form, accepting either format (see the module docstring).

    Args:
        codes: packed ``uint8`` ``(N, K/8)`` or unpacked ``(N, K)`` of any other dtype.
        bits: the expected ``K``, checked when given.
        name: how the array is named in error messages.

    Returns:
        C-contiguous ``uint8`` array ``(N, K/8)``.

    Raises:
        InputError: bad shape, dtype or values, or a code length other than ``bits``.
    """
    packed = pack_codes(codes, name=name)
    if bits is not None and 8 * packed.shape[1] != bits:
        arr = np.asarray(codes)
        hint = ""
        if arr.dtype == np.uint8 and arr.shape[1] == bits:
            hint = " (uint8 arrays are read as packed bytes; pass unpacked codes as bool or int8)"
        raise InputError(
            f"{name}: expected {bits}-bit codes ({bits // 8} packed bytes or {bits} values per "
            f"code), got shape {arr.shape} of {arr.dtype}{hint}"
        )
    return packed


def check_bits(bits: Any) -> int:
    """``bits`` as an int, a positive multiple of 8 (a code length); InputError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits <= 0 or bits % 8:
        raise InputError(f"bits: expected a positive multiple of 8 (16, 32, 64, 128), got {bits!r}")
    return int(bits)
