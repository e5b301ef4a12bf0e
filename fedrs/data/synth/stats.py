"""Compact statistics of the real BigEarthNet v2.0 metadata, used by the synthetic archive.

The synthetic archive (``fedrs.data.synth``) draws the country, split, label set and Sentinel
products of each patch from the rows of the official v2.0 ``metadata.parquet`` (480,038 patches).
The installed package does not carry that file: it carries ``stats.json``, a small
derivative made by this module, holding

* per country: the number of patches, the split fractions, the frequencies of every label set
  seen at least ``min_count`` times (a label set is stored as a 19-bit mask in the order of
  ``LABELS_19``; sets kept this way cover 99.7 % of the patches), and
* per country: the Sentinel-2 products (tile and date) with their patch counts, the Sentinel-1
  products paired with each, and the EPSG code and upper-left corner of the product's MGRS tile
  (computed from the tile name), from which patch geotransforms follow.

Regenerate it with ``python -m fedrs.data.synth stats /path/to/v2-metadata.parquet``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import LABELS_19
from fedrs.data.metadata import labels_matrix, read_parquet
from fedrs.errors import InputError

STATS_FILE = Path(__file__).with_name("stats.json")
"""The packaged derivative of the v2.0 metadata."""

STATS_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "validation", "test")

_MGRS_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_MGRS_COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # indexed by zone % 3
_LATITUDE_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_TILE = re.compile(r"^(?P<zone>\d{1,2})(?P<band>[C-X])(?P<column>[A-Z])(?P<row>[A-V])$")
_S2_PRODUCT = re.compile(r"^S2[AB]_MSIL2A_\d{8}T\d{6}_N\d{4}_R\d{3}_T(?P<tile>\d{2}[A-Z]{3})$")
_S1_PRODUCT = re.compile(r"^S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}$")


def _meridian_arc(latitude_deg: float) -> float:
    """UTM northing (m) of a latitude on the central meridian (WGS 84, scale 0.9996)."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e4, e6 = e2 * e2, e2 * e2 * e2
    phi = math.radians(latitude_deg)
    arc = a * (
        (1 - e2 / 4 - 3 * e4 / 64 - 5 * e6 / 256) * phi
        - (3 * e2 / 8 + 3 * e4 / 32 + 45 * e6 / 1024) * math.sin(2 * phi)
        + (15 * e4 / 256 + 45 * e6 / 1024) * math.sin(4 * phi)
        - (35 * e6 / 3072) * math.sin(6 * phi)
    )
    return 0.9996 * arc


def tile_origin(tile: str) -> tuple[int, float, float]:
    """EPSG code and upper-left corner of a Sentinel-2 MGRS tile of the northern hemisphere.

    Sentinel-2 tiles start at the lower-left corner of their 100 km MGRS square and reach
    100 km up (and 9.8 km beyond, overlapping the next square); BigEarthNet numbers its 1200 m
    patches from the tile's upper-left corner, ``<column>_<row>`` with the row counted down.

    Args:
        tile: MGRS tile name such as ``"33UUP"`` (with or without a leading ``T``).

    Returns:
        ``(epsg, ulx, uly)``, e.g. ``(32633, 300000.0, 5400000.0)`` for ``33UUP``.

    Raises:
        InputError: the name is not a northern-hemisphere MGRS tile.
    """
    match = _TILE.match(tile.removeprefix("T"))
    if match is None:
        raise InputError(f"not an MGRS tile name: {tile!r}")
    zone = int(match.group("zone"))
    band = match.group("band")
    if not 1 <= zone <= 60 or band < "N":
        raise InputError(f"not a northern-hemisphere MGRS tile: {tile!r}")
    columns = _MGRS_COLUMN_SETS[zone % 3]
    if match.group("column") not in columns:
        raise InputError(f"column letter of {tile!r} is not used in UTM zone {zone}")
    easting = 100_000.0 * (columns.index(match.group("column")) + 1)
    row_index = _MGRS_ROW_LETTERS.index(match.group("row"))
    if zone % 2 == 0:
        row_index = (row_index - 5) % len(_MGRS_ROW_LETTERS)
    base = 100_000.0 * row_index
    band_index = _LATITUDE_BANDS.index(band)
    lat_lo = -80.0 + 8.0 * band_index
    lat_hi = 84.0 if band == "X" else lat_lo + 8.0
    lo, hi = _meridian_arc(lat_lo), _meridian_arc(lat_hi)

    def distance(northing: float) -> float:
        centre = northing + 50_000.0
        return max(lo - centre, 0.0, centre - hi)

    lower_left = min((base + 2_000_000.0 * k for k in range(5)), key=distance)
    return 32600 + zone, easting, lower_left + 100_000.0


def label_masks(labels: pd.Series) -> np.ndarray:
    """19-bit masks (int64) of a column of label lists, bit ``i`` for ``LABELS_19[i]``."""
    matrix = labels_matrix(labels).astype(np.int64)
    return matrix @ (np.int64(1) << np.arange(len(LABELS_19), dtype=np.int64))


def mask_labels(mask: int) -> list[str]:
    """The label names of a 19-bit mask, in the order of ``LABELS_19``."""
    return [name for i, name in enumerate(LABELS_19) if mask >> i & 1]


def build_stats(metadata: pd.DataFrame, *, min_count: int = 2) -> dict[str, Any]:
    """Summarise the official v2.0 metadata into the compact statistics of the synthetic archive.

    Args:
        metadata: the v2.0 table (columns ``patch_id``, ``labels``, ``split``, ``country``,
            ``s1_name``).
        min_count: label sets seen fewer times than this in a country are left out.

    Returns:
        A JSON-ready dict (see the module docstring).

    Raises:
        InputError: a column is missing or a product name does not follow the v2.0 pattern.
    """
    missing = {"patch_id", "labels", "split", "country", "s1_name"} - set(metadata.columns)
    if missing:
        raise InputError(f"metadata lacks column(s) {sorted(missing)}")
    frame = pd.DataFrame(
        {
            "country": metadata["country"].astype(str).to_numpy(),
            "split": metadata["split"].astype(str).replace({"val": "validation"}).to_numpy(),
            "mask": label_masks(metadata["labels"]),
            "s2": metadata["patch_id"].astype(str).str.rsplit("_", n=2).str[0].to_numpy(),
            "s1": metadata["s1_name"].astype(str).str.rsplit("_", n=3).str[0].to_numpy(),
        }
    )
    bad_splits = sorted(set(frame["split"]) - set(SPLITS))
    if bad_splits:
        raise InputError(f"metadata has unknown split(s) {bad_splits}")
    countries: list[dict[str, Any]] = []
    for country, rows in frame.groupby("country", sort=True):
        split_counts = rows["split"].value_counts()
        sets = rows["mask"].value_counts()
        sets = sets[sets >= min_count].sort_index(kind="stable")
        sets = sets.sort_values(ascending=False, kind="stable")
        products: list[dict[str, Any]] = []
        for s2_product, product_rows in rows.groupby("s2", sort=True):
            match = _S2_PRODUCT.match(str(s2_product))
            if match is None:
                raise InputError(f"not a Sentinel-2 L2A product name: {s2_product!r}")
            epsg, ulx, uly = tile_origin(match.group("tile"))
            s1_counts = product_rows["s1"].value_counts().sort_index()
            bad_s1 = [name for name in s1_counts.index if not _S1_PRODUCT.match(str(name))]
            if bad_s1:
                raise InputError(f"not a Sentinel-1 GRD product name: {bad_s1[0]!r}")
            products.append(
                {
                    "s2": str(s2_product),
                    "patches": len(product_rows),
                    "epsg": epsg,
                    "ulx": ulx,
                    "uly": uly,
                    "s1": [str(name) for name in s1_counts.index],
                    "s1_patches": [int(n) for n in s1_counts.to_numpy()],
                }
            )
        countries.append(
            {
                "name": str(country),
                "patches": len(rows),
                "split": {s: round(int(split_counts.get(s, 0)) / len(rows), 6) for s in SPLITS},
                "label_sets": [int(m) for m in sets.index],
                "label_set_patches": [int(n) for n in sets.to_numpy()],
                "products": products,
            }
        )
    return {
        "version": STATS_VERSION,
        "source": "BigEarthNet v2.0 metadata.parquet",
        "rows": len(frame),
        "min_count": min_count,
        "labels": list(LABELS_19),
        "countries": countries,
    }


@dataclass(frozen=True)
class Product:
    """A Sentinel-2 product (one tile, one date) and the Sentinel-1 products paired with it."""

    s2: str
    patches: int
    epsg: int
    ulx: float
    uly: float
    s1: tuple[str, ...]
    s1_patches: tuple[int, ...]

    @property
    def tile(self) -> str:
        """MGRS tile name without the leading ``T`` (``33UUP``)."""
        return self.s2.rsplit("_T", 1)[1]


@dataclass(frozen=True)
class CountryStats:
    """Statistics of one country of the v2.0 archive."""

    name: str
    patches: int
    split: dict[str, float]
    label_sets: np.ndarray
    label_set_patches: np.ndarray
    products: tuple[Product, ...]


@dataclass(frozen=True)
class SynthStats:
    """The compact statistics of the v2.0 metadata that the synthetic archive samples from."""

    rows: int
    countries: tuple[CountryStats, ...]

    @property
    def country_patches(self) -> np.ndarray:
        """Patches per country (int64), in the order of ``countries``."""
        return np.array([c.patches for c in self.countries], dtype=np.int64)


def _parse(raw: dict[str, Any], source: Path) -> SynthStats:
    if raw.get("version") != STATS_VERSION or list(raw.get("labels", ())) != list(LABELS_19):
        raise CorruptPatchError(source, f"not synthetic-archive statistics v{STATS_VERSION}")
    countries = []
    for entry in raw["countries"]:
        products = tuple(
            Product(
                s2=p["s2"],
                patches=int(p["patches"]),
                epsg=int(p["epsg"]),
                ulx=float(p["ulx"]),
                uly=float(p["uly"]),
                s1=tuple(p["s1"]),
                s1_patches=tuple(int(n) for n in p["s1_patches"]),
            )
            for p in entry["products"]
        )
        sets = np.asarray(entry["label_sets"], dtype=np.int64)
        counts = np.asarray(entry["label_set_patches"], dtype=np.int64)
        if not products or len(sets) == 0 or len(sets) != len(counts):
            raise CorruptPatchError(source, f"country {entry['name']!r} has no products or sets")
        countries.append(
            CountryStats(
                name=str(entry["name"]),
                patches=int(entry["patches"]),
                split={s: float(entry["split"][s]) for s in SPLITS},
                label_sets=sets,
                label_set_patches=counts,
                products=products,
            )
        )
    return SynthStats(rows=int(raw["rows"]), countries=tuple(countries))


def load_stats(path: str | Path = STATS_FILE) -> SynthStats:
    """Read the statistics file (default: the packaged one).

    Raises:
        CorruptPatchError: the file is missing or malformed.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return _parse(raw, path)
    except FileNotFoundError:
        raise CorruptPatchError(path, "statistics file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CorruptPatchError):
            raise
        raise CorruptPatchError(
            path, f"malformed statistics ({type(exc).__name__}: {exc})"
        ) from None


def write_stats(stats: dict[str, Any], path: str | Path = STATS_FILE) -> Path:
    """Write statistics made by ``build_stats`` as compact JSON (one country a line)."""
    path = Path(path)
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in stats["countries"])
    head = {k: v for k, v in stats.items() if k != "countries"}
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',"countries":[\n' + lines + "\n]}\n"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the packaged statistics from an official v2.0 metadata parquet file."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrs.data.synth stats",
        description="Summarise BigEarthNet v2.0 metadata.parquet for the synthetic archive.",
    )
    parser.add_argument("metadata", type=Path, help="official v2.0 metadata.parquet")
    parser.add_argument("--out", type=Path, default=STATS_FILE, help="output JSON file")
    parser.add_argument("--min-count", type=int, default=2, help="rarest label set kept")
    args = parser.parse_args(argv)
    stats = build_stats(read_parquet(args.metadata), min_count=args.min_count)
    out = write_stats(stats, args.out)
    kept = sum(sum(c["label_set_patches"]) for c in stats["countries"])
    print(f"{out}: {stats['rows']} rows, label sets cover {kept / stats['rows']:.2%}")
    return 0
