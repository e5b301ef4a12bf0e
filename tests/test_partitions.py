"""Tests of fedrs.partitions and the ``fedrs partitions`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _data import V2_METADATA, V2_SAMPLE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrs.cli import main as cli_main
from fedrs.data.facts import LABELS_19
from fedrs.data.metadata import load_metadata, normalize_metadata
from fedrs.errors import InputError
from fedrs.partitions import (
    PARTITIONS,
    Assignment,
    ClientShard,
    load_shards,
    option_names,
    partition,
    register_partition,
    save_shards,
    summarize_shards,
)
from fedrs.partitions._grouping import clients_per_group
from fedrs.partitions.dirichlet import primary_labels
from fedrs.partitions.modality import client_counts, water_fill

NAMES = ("iid", "dirichlet", "modality", "country", "season")

# Patches per country in BigEarthNet v2.0 (the official v2.0 metadata).
REAL_COUNTRIES = {
    "Finland": 155227,
    "Portugal": 89792,
    "Serbia": 73385,
    "Lithuania": 48365,
    "Ireland": 48326,
    "Austria": 43797,
    "Belgium": 11196,
    "Switzerland": 4874,
    "Luxembourg": 3460,
    "Kosovo": 1616,
}
SEASONS = ("Winter", "Spring", "Summer", "Fall")


def make_metadata(
    n: int = 3000,
    *,
    seed: int = 0,
    s1_only: float = 0.0,
    s2_only: float = 0.0,
    countries: dict[str, int] | None = None,
) -> pd.DataFrame:
    """A normalised table: countries in real-archive proportions, random seasons and labels."""
    rng = np.random.default_rng(seed)
    countries = countries or REAL_COUNTRIES
    names = list(countries)
    weights = np.array([countries[c] for c in names], dtype=np.float64)
    counts = np.floor(weights / weights.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    country = np.repeat(names, counts)
    # Labels: a few per patch, skewed towards the first classes as in the real archive.
    label_weights = 1.0 / (1.0 + np.arange(len(LABELS_19)))
    label_weights /= label_weights.sum()
    labels = [
        tuple(
            LABELS_19[i]
            for i in sorted(
                rng.choice(len(LABELS_19), size=rng.integers(1, 4), replace=False, p=label_weights)
            )
        )
        for _ in range(n)
    ]
    kind = rng.choice(3, size=n, p=[s1_only, s2_only, 1.0 - s1_only - s2_only])
    return pd.DataFrame(
        {
            "patch_id": [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i}_0" for i in range(n)],
            "s1_name": [f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i}_0" for i in range(n)],
            "labels": labels,
            "split": rng.choice(["train", "validation", "test"], size=n),
            "country": rng.permutation(country),
            "season": rng.choice(SEASONS, size=n, p=[0.15, 0.35, 0.2, 0.3]),
            "has_s1": kind != 1,
            "has_s2": kind != 0,
        }
    )


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    return make_metadata(3000)


@pytest.fixture(scope="module")
def raw_v2() -> pd.DataFrame:
    """The official v2 metadata table as stored (not normalised)."""
    return pd.read_parquet(V2_METADATA)


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    """A table with 20 % S1-only and 20 % S2-only patches."""
    return make_metadata(2000, seed=3, s1_only=0.2, s2_only=0.2)


def rows_of(shard: ClientShard, table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("patch_id").loc[list(shard.patch_ids)]


def check_invariants(shards: list[ClientShard], table: pd.DataFrame, num_clients: int) -> None:
    """Client ids 0..K-1, non-empty, disjoint, known patches, modalities allowed by the data."""
    assert [s.client_id for s in shards] == list(range(num_clients))
    assert all(len(s) > 0 for s in shards)
    ids = [p for s in shards for p in s.patch_ids]
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(table["patch_id"])
    indexed = table.set_index("patch_id")
    for s in shards:
        rows = indexed.loc[list(s.patch_ids)]
        assert s.modalities in (("s1",), ("s2",), ("s1", "s2"))
        assert (rows["has_s1"] | rows["has_s2"]).all()
        if s.modalities == ("s1",):
            assert rows["has_s1"].all()
        if s.modalities == ("s2",):
            assert rows["has_s2"].all()


# -- registry and entry point ----------------------------------------------------------------


def test_registry_names() -> None:
    assert set(NAMES) <= set(PARTITIONS)
    assert option_names("dirichlet") == ("alpha", "min_size")
    assert option_names("modality") == ("s1_only", "s2_only", "both")
    assert option_names("iid") == ()


def test_unknown_partition_lists_names(meta: pd.DataFrame) -> None:
    with pytest.raises(InputError, match=r"unknown partition 'nope'.*country.*dirichlet.*iid"):
        partition("nope", meta, 3, seed=0)


def test_register_custom_partition(meta: pd.DataFrame) -> None:
    @register_partition("test-halves")
    def halves(table: pd.DataFrame, num_clients: int, rng: np.random.Generator) -> Assignment:
        return Assignment(np.arange(len(table)) % num_clients)

    try:
        shards = partition("test-halves", meta, 2, seed=0)
        assert [len(s) for s in shards] == [1500, 1500]
        with pytest.raises(ValueError, match="already registered"):
            register_partition("test-halves")(halves)
    finally:
        PARTITIONS.pop("test-halves")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_clients", [1, 7, 13])
def test_invariants(name: str, num_clients: int, meta: pd.DataFrame) -> None:
    shards = partition(name, meta, num_clients, seed=1)
    check_invariants(shards, meta, num_clients)
    if name != "modality":  # all patches have both modalities here: every patch is used
        assert sum(len(s) for s in shards) == len(meta)
        assert all(s.modalities == ("s1", "s2") for s in shards)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name: str, meta: pd.DataFrame) -> None:
    first = partition(name, meta, 13, seed=5)
    again = partition(name, meta, 13, seed=5)
    other = partition(name, meta, 13, seed=6)
    assert first == again
    assert first != other  # 13 clients > 10 countries > 4 seasons: every partition draws


@pytest.mark.parametrize("name", NAMES)
def test_invariants_with_single_modality_patches(name: str, mixed: pd.DataFrame) -> None:
    shards = partition(name, mixed, 10, seed=2)
    check_invariants(shards, mixed, 10)


@pytest.mark.parametrize("name", NAMES)
def test_too_many_clients(name: str) -> None:
    small = make_metadata(12)
    with pytest.raises(InputError, match="13 non-empty clients from 12"):
        partition(name, small, 13, seed=0)
    shards = partition(name, small, 12, seed=0)
    assert all(len(s) == 1 for s in shards)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0}, "num_clients must be >= 1"),
        ({"num_clients": True}, "num_clients must be an integer"),
        ({"num_clients": 2.5}, "num_clients must be an integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": "x"}, "seed must be a non-negative integer"),
        ({"alpha": 0.1}, r"unknown option\(s\) alpha.*accepted: none"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str, meta: pd.DataFrame) -> None:
    args: dict[str, object] = {"num_clients": 3, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=message):
        partition("iid", meta, **args)  # type: ignore[arg-type]


def test_not_a_dataframe() -> None:
    with pytest.raises(InputError, match="DataFrame"):
        partition("iid", [{"patch_id": "a"}], 1, seed=0)  # type: ignore[arg-type]


def test_duplicate_patch_ids_rejected(meta: pd.DataFrame) -> None:
    doubled = pd.concat([meta, meta.iloc[:3]], ignore_index=True)
    with pytest.raises(InputError, match="more than once"):
        partition("iid", doubled, 3, seed=0)


def test_patches_without_modality_left_out(meta: pd.DataFrame) -> None:
    table = meta.copy()
    table.loc[:99, ["has_s1", "has_s2"]] = False
    shards = partition("iid", table, 4, seed=0)
    ids = {p for s in shards for p in s.patch_ids}
    assert len(ids) == len(table) - 100
    assert not ids & set(table["patch_id"].iloc[:100])


def test_raw_official_table_is_normalised(raw_v2: pd.DataFrame) -> None:
    raw = raw_v2.iloc[:1500]
    shards = partition("season", raw, 6, seed=0)
    normal = normalize_metadata(raw)
    check_invariants(shards, normal, 6)
    assert sum(len(s) for s in shards) == 1500
    for s in shards:
        assert rows_of(s, normal)["season"].nunique() == 1


# -- iid ---------------------------------------------------------------------------------------


def test_iid_sizes_and_mix(meta: pd.DataFrame) -> None:
    shards = partition("iid", meta, 7, seed=0)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    finland = (meta["country"] == "Finland").mean()
    for s in shards:  # each client is a random sample: ~ the archive's share of Finland
        assert abs((rows_of(s, meta)["country"] == "Finland").mean() - finland) < 0.1


# -- dirichlet ------------------------------------------------------------------------------


def test_primary_label_is_rarest() -> None:
    labels = pd.Series(
        [
            ("Arable land", "Pastures"),
            ("Arable land",),
            ("Arable land", "Pastures"),
            ("Arable land", "Beaches, dunes, sands"),
            (),
        ]
    )
    primary = primary_labels(labels)
    index = {name: i for i, name in enumerate(LABELS_19)}
    assert primary.tolist() == [
        index["Pastures"],
        index["Arable land"],
        index["Pastures"],
        index["Beaches, dunes, sands"],
        len(LABELS_19),
    ]


def _label_skew(shards: list[ClientShard], table: pd.DataFrame) -> float:
    """Mean total-variation distance between client and global primary-label distributions."""
    primary = pd.Series(primary_labels(table["labels"]), index=table["patch_id"])
    overall = np.bincount(primary, minlength=20) / len(primary)
    distances = []
    for s in shards:
        local = np.bincount(primary.loc[list(s.patch_ids)], minlength=20) / len(s)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def test_dirichlet_alpha_controls_skew(meta: pd.DataFrame) -> None:
    skewed = _label_skew(partition("dirichlet", meta, 5, seed=0, alpha=0.05), meta)
    mild = _label_skew(partition("dirichlet", meta, 5, seed=0, alpha=1000.0), meta)
    assert skewed > 0.4
    assert mild < 0.1
    assert skewed > 4 * mild


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_min_size(seed: int, meta: pd.DataFrame) -> None:
    shards = partition("dirichlet", meta, 20, seed=seed, alpha=0.001, min_size=60)
    assert min(len(s) for s in shards) >= 60
    check_invariants(shards, meta, 20)
    assert sum(len(s) for s in shards) == len(meta)


def test_dirichlet_min_size_capped_by_data() -> None:
    small = make_metadata(40)
    shards = partition("dirichlet", small, 8, seed=0, alpha=0.01, min_size=100)
    assert min(len(s) for s in shards) >= 5  # 40 // 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0}, "alpha must be > 0"),
        ({"alpha": -1.5}, "alpha must be > 0"),
        ({"alpha": "many"}, "alpha must be a number"),
        ({"alpha": float("nan")}, "alpha must be finite"),
        ({"alpha": True}, "alpha must be a number"),
        ({"min_size": 0}, "min_size must be >= 1"),
        ({"min_size": 2.5}, "min_size must be an integer"),
        ({"beta": 1}, r"unknown option\(s\) beta \(accepted: alpha, min_size\)"),
    ],
)
def test_dirichlet_bad_options(
    options: dict[str, object], message: str, meta: pd.DataFrame
) -> None:
    with pytest.raises(InputError, match=message):
        partition("dirichlet", meta, 3, seed=0, **options)


def test_dirichlet_accepts_numeric_strings(meta: pd.DataFrame) -> None:
    assert partition("dirichlet", meta, 3, seed=0, alpha="0.5") == partition(
        "dirichlet", meta, 3, seed=0, alpha=0.5
    )


# -- modality -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fractions", "clients", "expected"),
    [
        ((0.3, 0.3, 0.4), 10, [3, 3, 4]),
        ((0.3, 0.3, 0.4), 4, [1, 1, 2]),
        ((0.3, 0.3, 0.4), 5, [2, 1, 2]),
        ((0.3, 0.3, 0.4), 1, [0, 0, 1]),
        ((1 / 3, 1 / 3, 1 / 3), 9, [3, 3, 3]),
        ((0.0, 0.5, 0.5), 7, [0, 4, 3]),
        ((0.0, 0.0, 1.0), 3, [0, 0, 3]),
    ],
)
def test_client_counts(fractions: tuple[float, ...], clients: int, expected: list[int]) -> None:
    counts = client_counts(np.array(fractions), clients)
    assert counts.tolist() == expected
    assert counts.sum() == clients


def test_water_fill() -> None:
    rng = np.random.default_rng(0)
    assert water_fill(np.array([0, 0, 0]), 9, rng).tolist() == [3, 3, 3]
    assert water_fill(np.array([5, 0, 2]), 4, rng).tolist() == [0, 3, 1]
    quotas = water_fill(np.array([10, 0, 0]), 5, rng)
    assert quotas[0] == 0 and sorted(quotas[1:].tolist()) == [2, 3]
    assert water_fill(np.array([4, 1]), 0, rng).tolist() == [0, 0]


def test_modality_default_kinds(meta: pd.DataFrame) -> None:
    shards = partition("modality", meta, 10, seed=0)
    assert [s.modalities for s in shards] == [("s1",)] * 3 + [("s2",)] * 3 + [("s1", "s2")] * 4
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # all patches paired: equal sizes
    assert sum(sizes) == len(meta)


def test_modality_rules_with_single_modality_patches(mixed: pd.DataFrame) -> None:
    shards = partition("modality", mixed, 10, seed=0)
    check_invariants(shards, mixed, 10)
    assert sum(len(s) for s in shards) == len(mixed)  # every kind of patch has a taker
    for s in shards:
        rows = rows_of(s, mixed)
        if s.modalities == ("s1", "s2"):  # single-modality patches went to their own kind
            assert (rows["has_s1"] & rows["has_s2"]).all()
        if s.modalities == ("s1",):
            assert not (rows["has_s2"] & ~rows["has_s1"]).any()
            assert (rows["has_s1"] & ~rows["has_s2"]).any()
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # paired patches even the sizes out


def test_modality_single_patches_fall_back_to_both_clients(mixed: pd.DataFrame) -> None:
    shards = partition("modality", mixed, 6, seed=0, s2_only=0.5, both=0.5)
    s1_only = mixed["has_s1"] & ~mixed["has_s2"]
    both_clients = [s for s in shards if s.modalities == ("s1", "s2")]
    got = set().union(*(set(s.patch_ids) for s in both_clients))
    assert set(mixed.loc[s1_only, "patch_id"]) <= got
    assert sum(len(s) for s in shards) == len(mixed)


def test_modality_patches_without_taker_left_out(mixed: pd.DataFrame) -> None:
    shards = partition("modality", mixed, 4, seed=0, s1_only=1)
    assert all(s.modalities == ("s1",) for s in shards)
    assert sum(len(s) for s in shards) == int(mixed["has_s1"].sum())
    check_invariants(shards, mixed, 4)


def test_modality_infeasible(mixed: pd.DataFrame) -> None:
    no_pairs = mixed[~(mixed["has_s1"] & mixed["has_s2"])]
    with pytest.raises(InputError, match="0 paired patches"):
        partition("modality", no_pairs, 10, seed=0)
    only_s2 = mixed[~mixed["has_s1"]]
    with pytest.raises(InputError, match="cannot give every client"):
        partition("modality", only_s2, 10, seed=0, s1_only=0.5, s2_only=0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"s1_only": 1.5, "both": -0.5}, r"s1_only must be in \[0, 1\]"),
        ({"s1_only": 0.5, "s2_only": 0.6, "both": -0.1}, r"both must be in \[0, 1\]"),
        ({"s1_only": 0.2}, "must sum to 1"),
        ({"s1_only": 0.5, "s2_only": 0.5, "both": 0.5}, "must sum to 1"),
        ({"both": "all"}, "both must be a number"),
        ({"s3_only": 0.5}, r"unknown option\(s\) s3_only"),
    ],
)
def test_modality_bad_options(options: dict[str, object], message: str, meta: pd.DataFrame) -> None:
    with pytest.raises(InputError, match=message):
        partition("modality", meta, 10, seed=0, **options)


# -- country and season -----------------------------------------------------------------------


def _countries_of(shards: list[ClientShard], table: pd.DataFrame) -> list[set[str]]:
    return [set(rows_of(s, table)["country"]) for s in shards]


def test_country_one_client_per_country(meta: pd.DataFrame) -> None:
    shards = partition("country", meta, 10, seed=0)
    counts = meta["country"].value_counts()
    expected = counts.loc[sorted(counts.index, key=lambda c: (-counts[c], c))]  # ties by name
    assert [next(iter(c)) for c in _countries_of(shards, meta)] == list(expected.index)
    assert [len(s) for s in shards] == expected.tolist()


def test_country_splits_big_countries(meta: pd.DataFrame) -> None:
    shards = partition("country", meta, 20, seed=0)
    countries = _countries_of(shards, meta)
    assert all(len(c) == 1 for c in countries)  # a split country: one country per client
    owner = [next(iter(c)) for c in countries]
    per_country = pd.Series(owner).value_counts()
    sizes = meta["country"].value_counts()
    assert set(per_country.index) == set(sizes.index)  # every country has a client
    # Clients per country follow country size, and Finland is split the most.
    ordered = per_country.reindex(sizes.index).to_numpy()
    assert (np.diff(ordered) <= 0).all()
    assert per_country.idxmax() == "Finland" and per_country["Finland"] >= 5
    # A split country's patches are all there, in parts that differ by at most one.
    for country in per_country.index:
        parts = [len(s) for s, o in zip(shards, owner, strict=True) if o == country]
        assert max(parts) - min(parts) <= 1
        assert sum(parts) == sizes[country]
    assert sum(len(s) for s in shards) == len(meta)


def test_country_groups_small_countries(meta: pd.DataFrame) -> None:
    shards = partition("country", meta, 4, seed=0)
    countries = _countries_of(shards, meta)
    assert countries[0] == {"Finland"}  # the biggest country stays alone
    all_countries = [c for group in countries for c in group]
    assert sorted(all_countries) == sorted(REAL_COUNTRIES)  # each country in exactly one client
    sizes = [len(s) for s in shards]
    assert max(sizes) / min(sizes) < 2.5


def test_clients_per_group_dhondt() -> None:
    sizes = np.array(list(REAL_COUNTRIES.values()))
    counts = clients_per_group(sizes, 20)
    assert counts.sum() == 20 and (counts >= 1).all()
    assert counts.tolist() == [5, 3, 2, 2, 2, 2, 1, 1, 1, 1]


def test_country_unknown_group(meta: pd.DataFrame) -> None:
    table = meta.copy()
    table.loc[:49, "country"] = None
    shards = partition("country", table, 11, seed=0)
    assert sum(len(s) for s in shards) == len(table)
    summaries = summarize_shards(shards, table)
    assert any(s.countries[0][0] == "unknown" for s in summaries)


def test_country_needs_values(meta: pd.DataFrame) -> None:
    table = meta.assign(country=None)
    with pytest.raises(InputError, match="no country values"):
        partition("country", table, 3, seed=0)


def test_season_one_client_per_season(meta: pd.DataFrame) -> None:
    shards = partition("season", meta, 4, seed=0)
    seasons = [set(rows_of(s, meta)["season"]) for s in shards]
    assert all(len(s) == 1 for s in seasons)
    assert [next(iter(s)) for s in seasons] == list(meta["season"].value_counts().index)


def test_season_split_and_grouped(meta: pd.DataFrame) -> None:
    split = partition("season", meta, 9, seed=0)
    assert all(rows_of(s, meta)["season"].nunique() == 1 for s in split)
    grouped = partition("season", meta, 2, seed=0)
    seasons = [set(rows_of(s, meta)["season"]) for s in grouped]
    assert seasons[0] | seasons[1] == set(SEASONS) and not seasons[0] & seasons[1]


# -- shards, JSON and summaries ----------------------------------------------------------------


def test_client_shard_round_trip() -> None:
    shard = ClientShard(3, ("a", "b"), ("s2", "s1"))
    assert shard.modalities == ("s1", "s2") and len(shard) == 2
    data = json.loads(json.dumps(shard.to_dict()))
    assert ClientShard.from_dict(data) == shard
    assert ClientShard.from_dict({"client_id": 0, "patch_ids": ["x"]}).modalities == ("s1", "s2")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"client_id": -1, "patch_ids": []}, "client_id must be >= 0"),
        ({"client_id": "1", "patch_ids": []}, "client_id must be an integer"),
        ({"client_id": 1, "patch_ids": "abc"}, "patch_ids must be a list"),
        ({"client_id": 1, "patch_ids": [1, 2]}, "must be a string"),
        ({"client_id": 1, "patch_ids": [], "modalities": ["s3"]}, "unknown modality 's3'"),
        ({"client_id": 1, "patch_ids": [], "modalities": []}, "at least one modality"),
        ({"patch_ids": []}, "lacks client_id"),
    ],
)
def test_client_shard_validation(data: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ClientShard.from_dict(data)


def test_save_and_load_shards(tmp_path: Path, meta: pd.DataFrame) -> None:
    shards = partition("modality", meta, 5, seed=0)
    path = save_shards(tmp_path / "out" / "shards.json", shards, partition="modality", seed=0)
    assert load_shards(path) == shards
    assert json.loads(path.read_text())["partition"] == "modality"


def test_load_shards_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_shards(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        load_shards(bad)
    twice = tmp_path / "twice.json"
    twice.write_text(
        json.dumps(
            {"shards": [{"client_id": 0, "patch_ids": ["a"]}, {"client_id": 1, "patch_ids": ["a"]}]}
        )
    )
    with pytest.raises(InputError, match="'a' is in more than one shard"):
        load_shards(twice)


def test_summaries(meta: pd.DataFrame) -> None:
    shards = partition("country", meta, 10, seed=0)
    summaries = summarize_shards(shards, meta, top=2)
    first = summaries[0]
    assert first.patches == len(shards[0]) and first.countries == (("Finland", 1.0),)
    rows = rows_of(shards[0], meta)
    exploded = rows["labels"].explode().value_counts()
    assert first.labels[0] == (exploded.index[0], exploded.iloc[0] / len(rows))
    assert len(first.labels) == 2
    with pytest.raises(InputError, match="not in the metadata"):
        summarize_shards([ClientShard(0, ("nope",))], meta)


# -- property test ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    n=st.integers(1, 60),
    num_clients=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    s1_only=st.floats(0, 0.5),
    s2_only=st.floats(0, 0.5),
)
def test_property_invariants(
    name: str, n: int, num_clients: int, seed: int, s1_only: float, s2_only: float
) -> None:
    table = make_metadata(n, seed=seed % 1000, s1_only=s1_only, s2_only=s2_only)
    try:
        shards = partition(name, table, num_clients, seed=seed)
    except InputError as exc:  # allowed only when the data cannot fill the clients
        assert num_clients > n or (name == "modality" and "cannot give every" in str(exc))
        return
    check_invariants(shards, table, num_clients)
    if name != "modality":
        assert sum(len(s) for s in shards) == n
    assert partition(name, table, num_clients, seed=seed) == shards


# -- the real archive metadata ------------------------------------------------------------------


def test_real_v2_metadata_all_partitions() -> None:
    table = load_metadata(V2_METADATA)
    assert len(table) == 480038
    for name in NAMES:
        shards = partition(name, table, 10, seed=0)
        assert [s.client_id for s in shards] == list(range(10))
        sizes = np.array([len(s) for s in shards])
        assert (sizes > 0).all()
        ids = np.concatenate([np.asarray(s.patch_ids, dtype=object) for s in shards])
        assert len(pd.unique(ids)) == len(ids) == len(table)  # all real patches have S1 and S2
        if name in ("iid", "modality"):
            assert sizes.max() - sizes.min() <= 1
        if name == "country":
            assert sizes.tolist() == list(REAL_COUNTRIES.values())
        if name == "modality":
            assert [s.modalities for s in shards].count(("s1",)) == 3
        if name == "dirichlet":
            assert sizes.min() >= 10


# -- command line ---------------------------------------------------------------------------


@pytest.fixture
def parquet(tmp_path: Path, mixed: pd.DataFrame) -> Path:
    path = tmp_path / "metadata.parquet"
    mixed.to_parquet(path)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_cli_table(name: str, parquet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["partitions", str(parquet), "--clients", "4", "--partition", name]) == 0
    out = capsys.readouterr().out
    for header in ("client", "patches", "modalities", "countries", "top labels"):
        assert header in out
    assert "4 clients" in out


def test_cli_json_and_options(
    tmp_path: Path, parquet: Path, mixed: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards.json"
    args = ["partitions", str(parquet), "-n", "6", "-p", "modality", "--seed", "3"]
    options = ["--option", "s1_only=0.5", "--option", "s2_only=0", "--option", "both=0.5"]
    assert cli_main([*args, *options, "--json", str(out)]) == 0
    shards = load_shards(out)
    assert shards == partition("modality", mixed, 6, seed=3, s1_only=0.5, s2_only=0, both=0.5)
    assert json.loads(out.read_text())["options"] == {"s1_only": 0.5, "s2_only": 0, "both": 0.5}
    assert "S1+S2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--partition", "nope"], "unknown partition 'nope'"),
        (["--partition", "dirichlet", "--option", "alpha=0"], "alpha must be > 0"),
        (["--partition", "dirichlet", "--option", "alpha"], "expected key=value"),
        (["--partition", "modality", "--option", "both=0.9"], "must sum to 1"),
        (["--clients", "0"], "num_clients must be >= 1"),
        (["--clients", "100000"], "non-empty clients"),
    ],
)
def test_cli_bad_input(
    extra: list[str], message: str, parquet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["partitions", str(parquet), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedrs: error: ") and message in err[0]


def test_cli_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["partitions", str(tmp_path / "missing.parquet")]) == 2
    text = tmp_path / "meta.csv"
    text.write_text("patch_id\na\n")
    assert cli_main(["partitions", str(text)]) == 2
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    assert cli_main(["partitions", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "missing.parquet" in err and "meta.csv" in err and "broken.parquet" in err


def _product(name: str, parts: int) -> str:
    pattern = r"_\d+_\d+$" if parts == 2 else r"_[^_]+_\d+_\d+$"
    return re.sub(pattern, "", name)


def test_cli_archive_folder(
    tmp_path: Path, raw_v2: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    """A v2 archive folder: real metadata rows, patch folders for some S2 and some S1 sides."""
    raw = raw_v2.iloc[:40]
    root = tmp_path / "archive"
    for pid in raw["patch_id"].iloc[:30]:
        (root / "BigEarthNet-S2" / _product(pid, 2) / pid).mkdir(parents=True)
    for name in raw["s1_name"].iloc[10:]:
        (root / "BigEarthNet-S1" / _product(name, 3) / name).mkdir(parents=True)
    raw.to_parquet(root / "metadata.parquet")
    out = tmp_path / "shards.json"
    args = ["partitions", str(root), "-n", "5", "-p", "modality", "--json", str(out)]
    assert cli_main(args) == 0
    assert "5 clients, 40 of 40 patches" in capsys.readouterr().out
    shards = load_shards(out)
    s1_found = set(raw["s1_name"].iloc[10:]) | set(raw["patch_id"].iloc[10:30])
    for s in shards:
        if s.modalities == ("s1",):  # an S1-only client only gets patches whose S1 exists
            assert set(s.patch_ids) <= s1_found


def test_cli_real_v2_sample(
    tmp_path: Path, raw_v2: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real v2 sample patches, with their rows of the official metadata given apart."""
    sample = V2_SAMPLE
    s2 = {p.name for p in (sample / "BigEarthNet-S2").glob("*/*")}
    s1 = {p.name for p in (sample / "BigEarthNet-S1").glob("*/*")}
    rows = raw_v2[raw_v2["patch_id"].isin(s2) | raw_v2["s1_name"].isin(s1)]
    metadata = tmp_path / "metadata.parquet"
    rows.to_parquet(metadata)
    out = tmp_path / "shards.json"
    args = ["partitions", str(sample), "--metadata", str(metadata), "-n", "2", "--json", str(out)]
    assert cli_main(args) == 0
    assert "2 clients" in capsys.readouterr().out
    ids = {p for s in load_shards(out) for p in s.patch_ids}
    assert s2 <= ids  # every S2 patch of the sample is in a shard
