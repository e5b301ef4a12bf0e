"""A client's rows: worked out once per run and kept in the node's state; the run's cache opened
once per process (``fedrs.clients.app.load_client_data``, ``fedrs.pipeline.open_cache``).

The archive here is the official BigEarthNet v2 metadata (480,038 patches) behind a cache that
holds no pixels: setting a client up reads metadata only.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _data import V2_METADATA
from flwr.app import Context, Message, RecordDict

import fedrs.partitions
import fedrs.pipeline as pipeline
from fedrs import protocol
from fedrs.client_data import node_client_id
from fedrs.clients.app import SHARD_META_KEY, client_id, load_client_data
from fedrs.config import ExperimentConfig, load_config
from fedrs.data.archive import PatchArchive
from fedrs.data.cache import MARKER, CachedArchive
from fedrs.data.metadata import load_metadata
from fedrs.errors import InputError

CLIENTS = 100
SETUP_BOUND_S = 0.1
"""A later round's set-up on the whole BigEarthNet v2 metadata (the bound the issue sets)."""


class MetadataOnlyCache(CachedArchive):
    """A cache over a metadata table with no pixel arrays behind it."""

    def __init__(self, root: Path, metadata: pd.DataFrame, **kwargs: Any) -> None:
        PatchArchive.__init__(self, root, metadata, **kwargs)

    def _index_columns(self) -> None:
        PatchArchive._index_columns(self)


@pytest.fixture(scope="module")
def v2_archive(tmp_path_factory: pytest.TempPathFactory) -> MetadataOnlyCache:
    root = tmp_path_factory.mktemp("v2-index")
    meta = load_metadata(V2_METADATA)
    return MetadataOnlyCache(
        root, meta, modalities=("s1", "s2"), split=None, resample="bilinear", on_error="raise"
    )


@dataclass
class Calls:
    """How often the cache was opened and the training rows partitioned."""

    cache: Path
    opens: int = 0
    partitions: int = 0
    modalities: list[tuple[str, ...]] = field(default_factory=list)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, v2_archive: MetadataOnlyCache) -> Calls:
    """Every client's data resolves to one cache folder whose opening is counted."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MARKER).write_text("{}", encoding="utf-8")
    counted = Calls(cache)

    def open_archive(root: Path, *, modalities: tuple[str, ...]) -> CachedArchive:
        assert Path(root) == cache
        counted.opens += 1
        counted.modalities.append(tuple(modalities))
        return v2_archive

    real_partition = fedrs.partitions.partition

    def partition(*args: Any, **kwargs: Any) -> Any:
        counted.partitions += 1
        return real_partition(*args, **kwargs)

    monkeypatch.setattr(pipeline, "resolve_cache", lambda config, progress=None: cache)
    monkeypatch.setattr(pipeline, "open_archive", open_archive)
    monkeypatch.setattr(pipeline, "_OPENED", OrderedDict())
    monkeypatch.setattr(fedrs.partitions, "partition", partition)
    return counted


def _config(**overrides: Any) -> ExperimentConfig:
    return load_config(None, {"partition.clients": CLIENTS, **overrides})


def _node(client: int, clients: int = CLIENTS) -> dict[str, Any]:
    return {"partition-id": client, "num-partitions": clients}


def _membership_rows(config: ExperimentConfig, client: int, clients: int) -> np.ndarray:
    """The rows of a shard by set membership over the training rows (reference)."""
    run = pipeline.load_run_data(config.data)
    train_meta = run.archive.metadata.iloc[run.train_rows]
    part = config.partition
    shard = fedrs.partitions.partition(
        part.name, train_meta, clients, seed=part.seed, **part.options
    )[client]
    wanted = set(shard.patch_ids)
    inside = [p in wanted for p in train_meta["patch_id"]]
    return run.train_rows[np.asarray(inside, dtype=bool)]


def _median_s(call: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_later_rounds_reuse_the_shard(calls: Calls) -> None:
    config = _config()
    state = RecordDict()
    first = load_client_data(config, _node(7), state)
    assert (calls.opens, calls.partitions) == (1, 1)
    assert len(first.rows) > 0 and first.archive.metadata.shape[0] == 480_038
    assert np.array_equal(first.rows, _membership_rows(config, 7, CLIENTS))

    def later() -> None:
        again = load_client_data(config, _node(7), state)
        assert np.array_equal(again.rows, first.rows)
        assert again.modalities == first.modalities and again.client_id == 7
        assert again.archive is first.archive

    opens, partitions = calls.opens, calls.partitions
    seconds = _median_s(later)
    assert (calls.opens, calls.partitions) == (opens, partitions)
    assert seconds <= SETUP_BOUND_S, f"later round set-up {seconds:.3f} s"


def test_clients_of_one_process_open_the_cache_once(calls: Calls) -> None:
    config = _config()
    shards = [load_client_data(config, _node(c), RecordDict()) for c in (0, 1, CLIENTS - 1)]
    assert calls.opens == 1 and calls.partitions == 3
    together = np.concatenate([s.rows for s in shards])
    assert len(np.unique(together)) == len(together)


@pytest.mark.parametrize(
    ("overrides", "node"),
    [
        ({"partition.seed": 1}, _node(7)),
        ({"partition.name": "iid"}, _node(7)),
        ({"data.max_train": 50_000}, _node(7)),
        ({}, _node(7, clients=50)),
        ({}, _node(8)),
    ],
)
def test_changed_settings_are_not_served_from_the_state(
    calls: Calls, overrides: dict[str, Any], node: dict[str, Any]
) -> None:
    state = RecordDict()
    before = load_client_data(_config(), _node(7), state)
    changed = _config(**overrides)
    after = load_client_data(changed, node, state)
    assert calls.partitions == 2
    fresh = load_client_data(changed, node)
    assert np.array_equal(after.rows, fresh.rows)
    assert after.modalities == fresh.modalities
    assert not np.array_equal(after.rows, before.rows)
    # the state now holds the new shard
    partitions = calls.partitions
    assert np.array_equal(load_client_data(changed, node, state).rows, fresh.rows)
    assert calls.partitions == partitions


def test_a_rebuilt_cache_is_opened_again(calls: Calls) -> None:
    config = _config()
    state = RecordDict()
    load_client_data(config, _node(3), state)
    fingerprint = state.config_records[SHARD_META_KEY]["fingerprint"]
    marker = calls.cache / MARKER
    marker.write_text('{"rebuilt": true}', encoding="utf-8")
    stat = marker.stat()
    os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_client_data(config, _node(3), state)
    assert calls.opens == 2 and calls.partitions == 2
    assert state.config_records[SHARD_META_KEY]["fingerprint"] != fingerprint


def test_deployed_node_keeps_its_training_rows(calls: Calls) -> None:
    config = _config()
    state = RecordDict()
    node = {"data-path": str(calls.cache), "modalities": "s2"}
    first = load_client_data(config, node, state)
    run = pipeline.load_run_data(config.data)
    assert np.array_equal(first.rows, run.train_rows) and first.modalities == ("s2",)
    opens = calls.opens
    again = load_client_data(config, node, state)
    assert np.array_equal(again.rows, first.rows) and again.modalities == ("s2",)
    assert calls.opens == opens and calls.partitions == 0
    other = load_client_data(config, {**node, "modalities": "s1,s2"}, state)
    assert other.modalities == ("s1", "s2")


def test_open_cache_reuses_only_when_asked(calls: Calls) -> None:
    first = pipeline.open_cache(calls.cache, ("s1", "s2"), reuse=True)
    assert pipeline.open_cache(calls.cache, ("s1", "s2"), reuse=True) is first
    assert calls.opens == 1
    pipeline.open_cache(calls.cache, ("s1", "s2"))
    pipeline.open_cache(calls.cache, ("s2",), reuse=True)
    assert calls.opens == 3 and calls.modalities[-1] == ("s2",)


def test_a_partition_id_outside_the_partition_is_refused(calls: Calls) -> None:
    from fedrs.errors import InputError

    with pytest.raises(InputError, match="partition-id"):
        load_client_data(_config(), _node(CLIENTS), RecordDict())


@pytest.mark.parametrize(
    ("node_config", "expected"),
    [
        ({"partition-id": 3, "num-partitions": 10}, 3),
        ({"data-path": "/archive"}, 0),
        ({"data-path": "/archive", "partition-id": "4"}, 4),
    ],
)
@pytest.mark.usefixtures("task_identity")
def test_a_query_is_answered_with_the_nodes_client_id(
    node_config: dict[str, Any], expected: int
) -> None:
    query = Message(RecordDict(), dst_node_id=1, message_type="query")
    context = Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
    )
    answer = client_id(query, context)
    assert answer.content.metric_records[protocol.METRICS][protocol.CLIENT_ID] == expected


@pytest.mark.parametrize(
    "node_config",
    [{}, {"partition-id": "x"}, {"partition-id": 1.5}, {"partition-id": True}],
)
def test_a_bad_partition_id_is_a_typed_error(node_config: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="partition-id"):
        node_client_id(node_config)
