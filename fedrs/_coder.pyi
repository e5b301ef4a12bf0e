"""Native rANS coder of fedrs (private; use :mod:`fedrs.coder`)."""

import numpy as np
import numpy.typing as npt

PRECISION: int
FORMAT_VERSION: int
DEBUG_BUILD: bool

_I32 = npt.NDArray[np.int32]

class TableError(ValueError): ...
class StreamError(ValueError): ...
class ArgumentError(ValueError): ...

class Tables:
    """Validated tables prepared for encoding and decoding."""

    def __init__(self, cdfs: _I32, cdf_lengths: _I32, offsets: _I32) -> None: ...
    @property
    def num_tables(self) -> int: ...
    def encode(self, symbols: _I32, indexes: _I32, threads: int = 1) -> bytes: ...
    def decode(self, stream: bytes, indexes: _I32, threads: int = 1) -> _I32: ...

class StreamDecoder:
    """Incremental decoder of one stream."""

    def __init__(self, stream: bytes) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def position(self) -> int: ...
    def decode(self, tables: Tables, indexes: _I32) -> _I32: ...
    def finish(self) -> None: ...

def encode_with_indexes(
    symbols: _I32,
    indexes: _I32,
    cdfs: _I32,
    cdf_lengths: _I32,
    offsets: _I32,
    threads: int = 1,
) -> bytes: ...
def decode_with_indexes(
    stream: bytes,
    indexes: _I32,
    cdfs: _I32,
    cdf_lengths: _I32,
    offsets: _I32,
    threads: int = 1,
) -> _I32: ...
def stream_symbol_count(stream: bytes) -> int: ...
def pmf_to_quantized_cdf(
    pmfs: npt.NDArray[np.float32], lengths: _I32, precision: int = 16
) -> _I32: ...
