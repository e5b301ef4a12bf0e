"""Coverage-guided fuzz target of the archive readers with atheris (beside test_fuzz_readers.py).

Each input is written to a file and read the way an archive reads it, chosen by its first
bytes: a TIFF (``II*\\0`` / ``MM\\0*``) by ``read_band`` with every size and dtype a
BigEarthNet band may have, a parquet file (``PAR1``) by ``load_metadata``, anything else as a
``*_labels_metadata.json`` by ``read_json`` and the 43-to-19 label mapping.  A read must either
succeed with the promised shape, dtype and finite values or raise ``CorruptPatchError`` naming
the file; any other exception is a finding.  GDAL, libtiff and pyarrow are native code and
not instrumented, but a crash in them still stops the fuzzer with the input that caused it.

Start from the real files, so that mutations begin from valid structure::

    mkdir -p /tmp/readers-corpus
    cp tests/data/bigearthnet/v1-sample/*/*/* /tmp/readers-corpus/
    .venv/bin/python -c "import pandas as pd; pd.read_parquet(
        'tests/data/bigearthnet/metadata/v2-metadata.parquet').head(20).to_parquet(
        '/tmp/readers-corpus/metadata.parquet')"
    .venv/bin/python tests/fuzz/atheris_readers.py /tmp/readers-corpus -max_total_time=600 \\
        -rss_limit_mb=4096 -timeout=30
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris
import numpy as np
import pandas  # noqa: F401  (imported before, so that only fedrs is instrumented)
import rasterio  # noqa: F401
import torch  # noqa: F401

with atheris.instrument_imports(include=["fedrs"]):
    from fedrs.data.archive import _labels_19
    from fedrs.data.errors import CorruptPatchError
    from fedrs.data.geotiff import read_band, read_json
    from fedrs.data.metadata import load_metadata

FOLDER = Path(tempfile.mkdtemp(prefix="fedrs-atheris-"))
BANDS = ((120, "uint16"), (60, "uint16"), (20, "uint16"), (120, "float32"))


class Finding(Exception):
    """A read that returned something other than what the reader promises."""


def _named(exc: CorruptPatchError, path: Path) -> None:
    if exc.path != path:
        raise Finding(f"CorruptPatchError names {exc.path}, not {path}: {exc}")


def test_one_input(data: bytes) -> None:
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        path = FOLDER / "patch_B02.tif"
        path.write_bytes(data)
        for size, dtype in BANDS:
            try:
                band = read_band(path, size=size, dtype=dtype)
            except CorruptPatchError as exc:
                _named(exc, path)
                continue
            if band.shape != (size, size) or str(band.dtype) != dtype:
                raise Finding(f"band {band.shape} {band.dtype} for {size}x{size} {dtype}")
            if not np.isfinite(band).all():
                raise Finding("band with non-finite values")
    elif data[:4] == b"PAR1":
        path = FOLDER / "metadata.parquet"
        path.write_bytes(data)
        try:
            load_metadata(path)
        except CorruptPatchError as exc:
            _named(exc, path)
    else:
        path = FOLDER / "patch_labels_metadata.json"
        path.write_bytes(data)
        try:
            read_json(path)
            _labels_19(path)
        except CorruptPatchError as exc:
            _named(exc, path)


def main() -> None:
    warnings.simplefilter("ignore")  # rasterio warns about every file without georeferencing
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
