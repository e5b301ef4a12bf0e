"""Archive metadata: one table, the same columns whatever the layout.

Columns of a normalised table (``normalize_metadata``):

``patch_id`` (str, S2 name; the S1 name when only S1 exists), ``s1_name`` (str or None),
``labels`` (tuple of 19-class names, order of ``LABELS_19``), ``split`` (train / validation /
test, or None), ``country`` (str or None), ``season`` (Winter / Spring / Summer / Fall or None),
``has_s1`` (bool), ``has_s2`` (bool).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import LABELS_19
from fedrs.errors import InputError

COLUMNS = ("patch_id", "s1_name", "labels", "split", "country", "season", "has_s1", "has_s2")
SEASONS = ("Winter", "Spring", "Summer", "Fall")
_LABEL_INDEX = {name: i for i, name in enumerate(LABELS_19)}
_DATE = re.compile(r"_(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})T")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
"""Other names of the validation split, read as ``validation``."""


def season_of(name: str) -> str | None:
    """Meteorological season of a Sentinel product or patch name (``..._20170613T...``)."""
    match = _DATE.search(name)
    if match is None:
        return None
    month = int(match.group("month"))
    return SEASONS[(month % 12) // 3]


def multi_hot(labels: Iterable[str], *, source: str | Path = "labels") -> np.ndarray:
    """Multi-hot float32 (19,) vector of label names; an unknown name raises CorruptPatchError."""
    vec = np.zeros(len(LABELS_19), dtype=np.float32)
    for name in labels:
        index = _LABEL_INDEX.get(str(name))
        if index is None:
            raise CorruptPatchError(source, f"unknown 19-class label {name!r}")
        vec[index] = 1.0
    return vec


def labels_matrix(labels: Sequence[Iterable[str]] | pd.Series) -> np.ndarray:
    """(N, 19) multi-hot float32 matrix of a column of label lists (vectorised)."""
    values = labels.to_numpy(dtype=object) if isinstance(labels, pd.Series) else list(labels)
    items = [
        np.asarray(v, dtype=object).ravel() if v is not None else np.empty(0, object)
        for v in values
    ]
    out = np.zeros((len(items), len(LABELS_19)), dtype=np.float32)
    lengths = np.fromiter((len(v) for v in items), dtype=np.int64, count=len(items))
    if lengths.sum():
        flat = np.concatenate(items)
        codes = pd.Categorical(flat.astype(str), categories=LABELS_19).codes
        if (codes < 0).any():
            bad = sorted(set(flat[codes < 0].astype(str)))
            raise CorruptPatchError("labels", f"unknown 19-class label(s) {bad}")
        out[np.repeat(np.arange(len(items)), lengths), codes] = 1.0
    return out


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a metadata parquet file; any failure raises CorruptPatchError naming the file.

    The table is validated in full before it becomes a DataFrame (string columns must hold
    valid UTF-8, offsets must stay in bounds): pyarrow decodes string data lazily, and a damaged
    page would otherwise fail much later, far from the file, with an ``ArrowException``.
    """

    path = Path(path)
    try:
        with pq.ParquetFile(path) as source:  # one open (read_table opens a file twice)
            table = source.read(use_pandas_metadata=True)
        table.validate(full=True)
        return table.to_pandas()  # what pd.read_parquet does, after the validation
    except FileNotFoundError:
        raise CorruptPatchError(path, "metadata file not found") from None
    except Exception as exc:  # pyarrow raises several types for a malformed file
        raise CorruptPatchError(path, f"unreadable parquet ({type(exc).__name__}: {exc})") from None


ARROW_TYPES: dict[str, pa.DataType] = {
    "patch_id": pa.string(),
    "labels": pa.list_(pa.string()),
    "split": pa.string(),
    "country": pa.string(),
    "season": pa.string(),
    "s1_name": pa.string(),
    "s2v1_name": pa.string(),
    "contains_seasonal_snow": pa.bool_(),
    "contains_cloud_or_shadow": pa.bool_(),
    "has_s1": pa.bool_(),
    "has_s2": pa.bool_(),
}
"""Type of each column fedrs writes to a ``metadata.parquet``: those of the official v2.0 file
that fedrs knows, ``season``, ``has_s1`` and ``has_s2``."""


def write_metadata(columns: Mapping[str, Any], path: str | Path) -> Path:
    """Write a ``metadata.parquet`` of the v2 layout, read back by :func:`load_metadata`.

    Args:
        columns: column name -> values (a list, an array or a pandas Series; None is null), in
            the order of the file; every name is one of :data:`ARROW_TYPES`.
        path: the file to write.

    Raises:
        InputError: a column that :data:`ARROW_TYPES` does not name.
    """
    unknown = sorted(set(columns) - set(ARROW_TYPES))
    if unknown:
        raise InputError(f"no metadata column(s) {unknown}; known: {sorted(ARROW_TYPES)}")

    schema = pa.schema([(name, ARROW_TYPES[name]) for name in columns])
    path = Path(path)
    pq.write_table(pa.table(dict(columns), schema=schema), path)
    return path


def normalize_metadata(df: pd.DataFrame, *, source: str | Path = "metadata") -> pd.DataFrame:
    """Return a copy of ``df`` with every column of ``COLUMNS`` present and typed.

    Accepts the official v2 ``metadata.parquet`` (patch_id, labels, split, country, s1_name, ...)
    as well as tables that already carry ``season``/``has_s1``/``has_s2``.  Missing ``has_s1`` /
    ``has_s2`` default to True where a name is present; a missing ``season`` is derived from the
    acquisition date in the patch name.

    Raises:
        CorruptPatchError: (naming ``source``) no ``patch_id`` column, or a column of the wrong
            kind: names and text columns must hold strings (``patch_id`` without gaps),
            ``labels`` lists of known 19-class names, ``has_s1`` / ``has_s2`` booleans.
    """
    if "patch_id" not in df.columns:
        raise CorruptPatchError(source, "metadata has no 'patch_id' column")
    patch_ids = _strings(df["patch_id"], "patch_id", source)
    if patch_ids.isna().any():
        missing = int(patch_ids.isna().sum())
        raise CorruptPatchError(source, f"'patch_id' is missing in {missing} row(s)")
    out = pd.DataFrame({"patch_id": patch_ids.to_numpy(dtype=object)})
    if "s1_name" in df.columns:
        s1 = _strings(df["s1_name"], "s1_name", source)
        s1[s1 == ""] = None
        out["s1_name"] = s1
    else:
        out["s1_name"] = None
    out["labels"] = _label_lists(df["labels"], source) if "labels" in df.columns else [()] * len(df)
    for column_name in ("split", "country", "season"):
        if column_name in df.columns:
            out[column_name] = _strings(df[column_name], column_name, source)
        else:
            out[column_name] = None
    out["split"] = out["split"].replace(SPLIT_ALIASES)
    if "season" not in df.columns:
        ids = pa.array(out["patch_id"].to_numpy(dtype=object), type=pa.string())
        found = pc.extract_regex(ids, _DATE.pattern)
        months = pc.cast(pc.fill_null(pc.struct_field(found, [1]), "0"), pa.int64()).to_numpy()
        seasons = np.array((*SEASONS, None), dtype=object)
        index = np.where(months == 0, len(SEASONS), (months % 12) // 3)
        out["season"] = pd.Series(seasons[index], dtype=object)
    out["has_s1"] = (
        _flags(df["has_s1"], "has_s1", source)
        if "has_s1" in df.columns
        else out["s1_name"].notna().to_numpy()
    )
    out["has_s2"] = _flags(df["has_s2"], "has_s2", source) if "has_s2" in df.columns else True
    return out[list(COLUMNS)].reset_index(drop=True)


def _objects(column: pd.Series) -> pd.Series:
    """Object-dtype copy of ``column`` with every missing value (NaN, NA, None) as None."""
    values = column.to_numpy(dtype=object, copy=True)
    values[column.isna().to_numpy()] = None
    return pd.Series(values, dtype=object)


def _strings(column: pd.Series, name: str, source: str | Path) -> pd.Series:
    """:func:`_objects` of a column that must hold strings (or gaps)."""
    values = _objects(column)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind not in ("string", "empty"):
        raise CorruptPatchError(source, f"{name!r} holds {kind} values, not strings")
    return values


def _label_lists(column: pd.Series, source: str | Path) -> np.ndarray:
    """Object array of the ``labels`` cells: a list of known 19-class names each (None: none)."""
    values = column.to_numpy(dtype=object, copy=True)
    missing = column.isna().to_numpy()
    empty = np.empty(int(missing.sum()), dtype=object)
    empty.fill(())  # ``values[missing] = ()`` would broadcast the empty tuple, not store it
    values[missing] = empty
    sizes = np.fromiter(
        (len(v) if isinstance(v, list | tuple | np.ndarray) else -1 for v in values),
        dtype=np.int64,
        count=len(values),
    )
    if (sizes < 0).any():
        row = int(np.flatnonzero(sizes < 0)[0])
        raise CorruptPatchError(
            source,
            f"'labels' of row {row} is {type(values[row]).__name__}, not a list of class names",
        )
    names = pd.Series(values, dtype=object).explode()
    gaps = int(names.isna().sum()) - int(np.count_nonzero(sizes == 0))
    names = names.dropna()
    kind = pd.api.types.infer_dtype(names, skipna=False)
    if gaps or kind not in ("string", "empty"):
        what = "missing names" if gaps else f"{kind} values"
        raise CorruptPatchError(source, f"'labels' holds {what}, not 19-class names")
    unknown = sorted(set(names.unique()) - set(LABELS_19))
    if unknown:
        raise CorruptPatchError(source, f"unknown 19-class label(s) {unknown}")
    return values


def _flags(column: pd.Series, name: str, source: str | Path) -> np.ndarray:
    """A boolean column (bool, nullable boolean without gaps, Python bools, or 0/1) as bool."""
    if column.isna().any():
        raise CorruptPatchError(source, f"{name!r} is missing in {int(column.isna().sum())} row(s)")
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_integer_dtype(column.dtype) and column.isin((0, 1)).all():
        return column.to_numpy(dtype=bool)
    values = column.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=False) in ("boolean", "empty"):
        return values.astype(bool)
    raise CorruptPatchError(source, f"{name!r} is not a column of booleans ({column.dtype})")


def load_metadata(path: str | Path) -> pd.DataFrame:
    """Read and normalise a metadata parquet file (official v2, synthetic, or a fedrs cache)."""
    return normalize_metadata(read_parquet(path), source=path)
