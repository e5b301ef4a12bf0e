"""Client shards, the partitioner registry and the ``partition()`` entry point.

A partitioner is a function registered by name with ``@register_partition("name")``.  It receives
the prepared metadata table (normalised, only patches that have at least one modality, unique
``patch_id``), the number of clients, a seeded ``numpy.random.Generator`` and its own keyword
options, and returns an :class:`Assignment`: the client index of every row (``-1`` for a patch
that goes to nobody) and, optionally, the modalities of every client.  ``partition()`` turns that
into :class:`ClientShard` objects, so no patch can ever land in two shards.

Every partitioner is vectorised (numpy over the rows; Python loops only over clients, classes or
groups) and deterministic for a seed.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrs.data.metadata import normalize_metadata
from fedrs.errors import FedrsError, InputError
from fedrs.registry import Registry

MODALITIES: tuple[str, ...] = ("s1", "s2")
"""Modalities a client may hold, in their canonical order."""

SHARDS_FORMAT = "fedrs.partitions/1"
"""Value of the ``format`` key of a shards JSON file."""

_REQUIRED_COLUMNS = ("patch_id", "labels", "country", "season", "has_s1", "has_s2")


def _canonical_modalities(value: Iterable[str], *, source: str) -> tuple[str, ...]:
    """Sorted-by-canonical-order tuple of modality names; unknown names raise InputError."""
    if isinstance(value, str):
        value = (value,)
    names = set()
    for name in value:
        if name not in MODALITIES:
            raise InputError(
                f"{source}: unknown modality {name!r} (known: {', '.join(MODALITIES)})"
            )
        names.add(name)
    if not names:
        raise InputError(f"{source}: a client needs at least one modality")
    return tuple(m for m in MODALITIES if m in names)


@dataclass(frozen=True)
class ClientShard:
    """The patches one client holds and the modalities it uses from them.

    Attributes:
        client_id: Index of the client, ``0 .. num_clients - 1``.
        patch_ids: Patch identifiers (``patch_id`` of the metadata: the S2 name, or the S1 name
            when only S1 exists), in metadata order.
        modalities: Subset of ``("s1", "s2")`` in that order.  A client with ``("s1",)`` reads only
            the S1 side of its patches, even where the S2 side exists.
    """

    client_id: int
    patch_ids: tuple[str, ...]
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        if isinstance(self.client_id, bool) or not isinstance(self.client_id, int | np.integer):
            raise InputError(f"client_id must be an integer, got {self.client_id!r}")
        if self.client_id < 0:
            raise InputError(f"client_id must be >= 0, got {self.client_id}")
        object.__setattr__(self, "client_id", int(self.client_id))
        if isinstance(self.patch_ids, str) or not isinstance(self.patch_ids, Iterable):
            raise InputError(f"client {self.client_id}: patch_ids must be a sequence of strings")
        ids = tuple(self.patch_ids)
        if set(map(type, ids)) - {str}:  # fast path above; str subclasses become plain str
            if not all(isinstance(p, str) for p in ids):
                raise InputError(f"client {self.client_id}: every patch id must be a string")
            ids = tuple(map(str, ids))
        object.__setattr__(self, "patch_ids", ids)
        modalities = _canonical_modalities(self.modalities, source=f"client {self.client_id}")
        object.__setattr__(self, "modalities", modalities)

    def __len__(self) -> int:
        return len(self.patch_ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``client_id``, ``modalities``, ``patch_ids``)."""
        return {
            "client_id": self.client_id,
            "modalities": list(self.modalities),
            "patch_ids": list(self.patch_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientShard:
        """Inverse of :meth:`to_dict`; a malformed dict raises InputError."""
        if not isinstance(data, Mapping):
            raise InputError(f"a client shard must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("client_id", "patch_ids") if key not in data]
        if missing:
            raise InputError(f"client shard lacks {', '.join(missing)}")
        patch_ids = data["patch_ids"]
        if isinstance(patch_ids, str) or not isinstance(patch_ids, Sequence):
            raise InputError("client shard: patch_ids must be a list of strings")
        return cls(
            client_id=data["client_id"],
            patch_ids=tuple(patch_ids),
            modalities=tuple(data.get("modalities", MODALITIES)),
        )


@dataclass(frozen=True)
class Assignment:
    """What a partitioner returns.

    Attributes:
        clients: int64 array, one entry per row of the prepared table: the client index
            (``0 .. num_clients - 1``) or ``-1`` for a patch no client gets.
        modalities: Modalities of each client, or None to give each client the modalities that
            at least one of its patches has.
    """

    clients: np.ndarray
    modalities: tuple[tuple[str, ...], ...] | None = field(default=None)


Partitioner = Callable[..., Assignment]
"""``fn(table, num_clients, rng, **options) -> Assignment``; options are keyword-only."""

PARTITIONS: Registry[Partitioner] = Registry("partition")
"""Registered partitioners by name."""

OptionCheck = Callable[..., object]
"""``check(**options)``: raises InputError for an option value that is bad whatever the data."""

_OPTION_CHECKS: dict[str, OptionCheck] = {}


def register_partition(
    name: str, *, check: OptionCheck | None = None
) -> Callable[[Partitioner], Partitioner]:
    """Class-free registry decorator: ``@register_partition("country")``.

    Args:
        name: The name users give to ``partition()`` and ``fedrs partitions --partition``.
        check: Checks the partitioner's option values without data (see
            :func:`check_partition`); called with every keyword option, defaults filled in.

    Raises:
        ValueError: ``name`` is empty or already registered.
    """
    register = PARTITIONS.register(name)

    def decorator(fn: Partitioner) -> Partitioner:
        register(fn)
        if check is not None:
            _OPTION_CHECKS[name] = check
        else:
            _OPTION_CHECKS.pop(name, None)
        return fn

    return decorator


def option_names(name: str) -> tuple[str, ...]:
    """The keyword options partitioner ``name`` accepts."""
    signature = inspect.signature(PARTITIONS.lookup(name))
    return tuple(
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def number_option(partition: str, name: str, value: object) -> float:
    """A finite float from an option value (number or numeric string), else InputError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
        raise InputError(f"partition {partition!r}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(
            f"partition {partition!r}: {name} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise InputError(f"partition {partition!r}: {name} must be finite, got {value!r}")
    return number


def int_option(partition: str, name: str, value: object) -> int:
    """An integer from an option value (integral number or string), else InputError."""
    number = number_option(partition, name, value)
    if number != int(number):
        raise InputError(f"partition {partition!r}: {name} must be an integer, got {value!r}")
    return int(number)


def prepare_metadata(metadata: pd.DataFrame) -> pd.DataFrame:
    """The table partitioners see: normalised, patches with a modality, unique ids.

    A table that lacks any normalised column (for example the official v2 ``metadata.parquet``
    read as is) goes through ``fedrs.data.metadata.normalize_metadata`` first.  Rows with neither
    S1 nor S2 are dropped: no client could read them.

    Raises:
        InputError: ``metadata`` is not a DataFrame or repeats a ``patch_id``.
    """

    if not isinstance(metadata, pd.DataFrame):
        raise InputError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
    if any(column not in metadata.columns for column in _REQUIRED_COLUMNS):
        metadata = normalize_metadata(metadata)
    ids = metadata["patch_id"].astype(str)
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        first = ids.to_numpy()[np.flatnonzero(duplicated)[0]]
        raise InputError(
            f"metadata lists patch {first!r} more than once ({int(duplicated.sum())} repeats)"
        )
    usable = metadata["has_s1"].to_numpy(dtype=bool) | metadata["has_s2"].to_numpy(dtype=bool)
    table = metadata.loc[usable] if not usable.all() else metadata
    return table.reset_index(drop=True)


def partition(
    name: str,
    metadata: pd.DataFrame,
    num_clients: int,
    *,
    seed: int,
    **options: Any,
) -> list[ClientShard]:
    """Split the patches of ``metadata`` among ``num_clients`` clients.

    Args:
        name: A registered partitioner: ``iid``, ``dirichlet``, ``modality``, ``country``,
            ``season`` (see ``PARTITIONS``).
        metadata: Archive metadata; normalised columns (``fedrs.data.metadata``) or the raw
            official table, which is normalised here.
        num_clients: Number of clients (>= 1).
        seed: Seed of the ``numpy.random.Generator``; the same seed gives the same shards.
        **options: Options of the partitioner (e.g. ``alpha=0.3`` for ``dirichlet``).

    Returns:
        ``num_clients`` shards, ``client_id`` 0 .. num_clients - 1, each non-empty; no patch in
        two shards.  Patches with neither modality are in no shard; partitioners document which
        others they leave out.

    Raises:
        InputError: Unknown name or option, bad option value, bad ``num_clients`` or ``seed``,
            or more clients than the data can fill.
    """
    check_partition(name, num_clients, seed=seed, **options)
    fn = PARTITIONS[name]
    num_clients = int(num_clients)
    table = prepare_metadata(metadata)
    if num_clients > len(table):
        raise InputError(
            f"cannot make {num_clients} non-empty clients from {len(table)} usable patches"
        )
    rng = np.random.default_rng(int(seed))
    assignment = fn(table, num_clients, rng, **options)
    return build_shards(name, table, assignment, num_clients)


def check_partition(name: str, num_clients: int, *, seed: int, **options: Any) -> None:
    """Everything :func:`partition` checks before it reads the metadata.

    The name, the option names, the option values the partitioner can judge without data (its
    ``check``, see :func:`register_partition`), ``num_clients`` and ``seed``.  An experiment is
    checked with this before any data is prepared.

    Raises:
        InputError: Unknown name or option, bad option value, bad ``num_clients`` or ``seed``.
    """
    fn = PARTITIONS.lookup(name)
    known = option_names(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(known) if known else "none"
        raise InputError(
            f"partition {name!r}: unknown option(s) {', '.join(unknown)} (accepted: {accepted})"
        )
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise InputError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise InputError(f"num_clients must be >= 1, got {num_clients}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    check = _OPTION_CHECKS.get(name)
    if check is not None:
        defaults = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
        }
        check(**(defaults | options))


def build_shards(
    name: str, table: pd.DataFrame, assignment: Assignment, num_clients: int
) -> list[ClientShard]:
    """Shards from a row -> client assignment (vectorised grouping, metadata order kept).

    Raises:
        InputError: A client got no patch.
        FedrsError: The assignment breaks the partitioner contract (wrong shape or client index,
            or a patch given to a client that needs a modality the patch lacks).
    """
    clients = np.asarray(assignment.clients)
    if clients.shape != (len(table),) or not np.issubdtype(clients.dtype, np.integer):
        raise FedrsError(f"partition {name!r} returned a malformed assignment")
    if len(clients) and (clients.min() < -1 or clients.max() >= num_clients):
        raise FedrsError(f"partition {name!r} returned a client index out of range")
    taken = clients >= 0
    sizes = np.bincount(clients[taken], minlength=num_clients)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        shown = ", ".join(str(i) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise InputError(
            f"partition {name!r} cannot give every one of {num_clients} clients a patch "
            f"({len(empty)} empty: {shown}); use fewer clients or other options"
        )
    has = {
        "s1": table["has_s1"].to_numpy(dtype=bool),
        "s2": table["has_s2"].to_numpy(dtype=bool),
    }
    if assignment.modalities is None:
        modalities = [
            tuple(m for m in MODALITIES if c)
            for c in zip(
                *(
                    np.bincount(clients[taken], weights=has[m][taken], minlength=num_clients) > 0
                    for m in MODALITIES
                ),
                strict=True,
            )
        ]
    else:
        if len(assignment.modalities) != num_clients:
            raise FedrsError(f"partition {name!r} returned modalities for the wrong client count")
        modalities = [tuple(m) for m in assignment.modalities]
        for m in MODALITIES:
            needs = np.array([m in mods and len(mods) == 1 for mods in modalities])
            if (taken & ~has[m] & needs[np.where(taken, clients, 0)]).any():
                raise FedrsError(f"partition {name!r} gave a {m}-only client a patch without {m}")
    order = np.argsort(clients, kind="stable")
    sorted_clients = clients[order]
    ids = table["patch_id"].to_numpy(dtype=object)[order]
    starts = np.searchsorted(sorted_clients, np.arange(num_clients), side="left")
    ends = np.searchsorted(sorted_clients, np.arange(num_clients), side="right")
    return [
        ClientShard(i, tuple(ids[starts[i] : ends[i]].tolist()), modalities[i])
        for i in range(num_clients)
    ]


def shards_to_json(shards: Sequence[ClientShard], **info: Any) -> dict[str, Any]:
    """JSON-ready object of shards plus descriptive ``info`` (partition, seed, options...)."""
    return {"format": SHARDS_FORMAT, **info, "shards": [s.to_dict() for s in shards]}


def save_shards(path: str | Path, shards: Sequence[ClientShard], **info: Any) -> Path:
    """Write shards (and ``info``) to a JSON file; returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(shards_to_json(shards, **info)), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write shards ({exc.strerror or exc})") from None
    return path


def shards_from_json(data: Any, *, source: str = "shards") -> list[ClientShard]:
    """Shards from the object of :func:`shards_to_json` (or a bare list of shard dicts).

    Raises:
        InputError: Malformed object, repeated client id, or a patch in two shards.
    """
    items = data.get("shards") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise InputError(f"{source}: expected a list of client shards under 'shards'")
    try:
        shards = [ClientShard.from_dict(item) for item in items]
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    ids = [s.client_id for s in shards]
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: a client id appears in more than one shard")
    all_ids = pd.Series([p for s in shards for p in s.patch_ids], dtype=object)
    repeated = all_ids[all_ids.duplicated()]
    if len(repeated):
        raise InputError(f"{source}: patch {repeated.iloc[0]!r} is in more than one shard")
    return shards


def load_shards(path: str | Path) -> list[ClientShard]:
    """Read shards written by :func:`save_shards` (``fedrs partitions --json``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: shards file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable shards file ({exc})") from None
    return shards_from_json(data, source=str(path))


def even_split(count: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """Part index (0 .. parts - 1) of ``count`` items, sizes equal up to one, random order."""
    return rng.permutation(np.arange(count) % parts)
