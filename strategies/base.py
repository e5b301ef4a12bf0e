"""Machinery shared by the fedrs strategies: local-only keys, checked replies, round accounting.

:class:`AccountedFedAvg` subclasses Flower's message-based ``FedAvg`` (node sampling, message
construction and FedProx's config injection stay Flower's) and replaces the aggregation of
training replies with a checked one:

* **Local-only keys** (FedBN-style): ArrayRecord keys matching any pattern of ``local_keys``
  (regular expressions searched anywhere in the key, so a plain substring works; default
  :data:`DEFAULT_LOCAL_KEYS`: BatchNorm running statistics and feature-whitening statistics)
  are stripped from what ``configure_train`` / ``configure_evaluate`` broadcast (no bytes are
  sent) and are never aggregated: should a client send them back, they are ignored.  The
  patterns travel to the clients in the ConfigRecord under :data:`LOCAL_KEYS_CONFIG_KEY` so a
  ClientApp can keep the same keys at home.  The global model keeps its own (initial) values
  for these keys.
* **Checked replies**: a reply is *failed* (dropped, counted, logged; never a crash) when it
  carries an error (``Message.has_error()``), when it has no usable ArrayRecord or MetricRecord,
  when the weight (``weighted_by_key``, Flower's default ``"num-examples"``) is missing, not a
  positive finite number or above ``max_weight``, when a metric is not finite, when it carries a
  key the global model does not have, an array whose dtype or shape (declared, or in its
  ``.npy`` header) differs from the global one, an array that cannot be decoded or that holds
  NaN/inf, or (strategies that need every key) misses a shared key; and when reading it raises
  anything else (the exception is the reason).  The checks are the pure functions of
  :mod:`fedrs.strategies.replies`.  Sampled clients that did not reply before the timeout are
  counted as failed too.
* **Pooled statistics** (``statistics``, a :class:`fedrs.models.statistics.WhiteningPool`):
  clients send the count, sum and sums of outer products of the features each whitened branch
  sees (an ArrayRecord under :data:`fedrs.protocol.STATISTICS`, checked like the arrays); the
  server adds those of all usable replies and sets the whitening buffers (``running_mean``,
  ``running_whitening``) from the pooled mean and covariance, the statistics of the union of
  the clients' features.  A reply's count may not exceed its weight (``weighted_by_key``).
  These keys are never averaged; a reply that sends them is not
  required to and they are ignored.  Under local-only whitening keys (FedBN-style) the pooled
  values are the server's alone: they are not broadcast.
* **Merging**: aggregated keys replace those of the previous global model; every other key
  (local-only keys, keys no client returned) is kept, so ``aggregate_train`` always returns the
  full global ArrayRecord, in the same key order, dtypes and shapes.
* **Coded updates**: a reply whose ArrayRecord holds :data:`fedrs.comm.UPDATE_PAYLOAD_KEY` is
  decoded against the global model sent in this round (:func:`fedrs.comm.decode_payload`)
  before the checks above, so every strategy aggregates coded and plain replies alike; a
  payload that cannot be decoded makes a failed reply.  With a codec that ``codes_broadcast``
  (``update_codec="entropy"``), the next global model is itself coded as a difference to the
  current one (its shared float keys become ``current + step * symbols``, with server-side
  error feedback), and ``configure_train`` sends that difference instead of the full model to
  every node known to hold the current one (it replied successfully to the last round), the
  full model to the others.  The ConfigRecord tells the clients the fingerprint of the model
  they get (:data:`fedrs.comm.GLOBAL_FINGERPRINT_KEY`) and, for a difference, of the model it
  applies to (:data:`fedrs.comm.GLOBAL_BASE_KEY`).
* **Clients in turn** (``cyclic_rounds``, cyclic weight transfer): in the first
  ``cyclic_rounds`` rounds the sampled clients train one after another instead of in
  parallel: each gets the model the previous one returned (its keys over the round's global
  model; a failed reply is skipped, so the next client gets the last usable model), and the
  round's model is where the last one left it.  The same bytes and passes as an averaged
  round, one client's training time after another's.  A reply is checked as it arrives,
  before anything of it is passed on.  With ``turn_seed`` the order of the turns is a seeded
  permutation of the clients' ids (each node answers a query message with its id once), so a
  run is repeated exactly at the same seed.
* **Seeded sampling** (``sample_seed``): with ``fraction_train`` (or ``fraction_evaluate``)
  below 1, Flower's sampler draws from the connected nodes listed by client id, under a
  ``random`` seeded with ``(sample_seed, round)``: the same seed samples the same clients.
* **Accounting**: :attr:`AccountedFedAvg.round_stats` maps each round to a :class:`RoundStats`
  (clients ok/failed, bytes up/down); :meth:`RoundStats.as_metrics` names them as the MLflow
  metrics ``clients/ok``, ``clients/failed``, ``comm/bytes_up``, ``comm/bytes_down``;
  :attr:`RoundStats.per_client` keeps, for each usable reply that reports its ``client-id``, the
  metrics of :data:`CLIENT_METRICS` it carries, named ``client/<id>/<name>`` by
  :meth:`RoundStats.client_metrics` (the straggler or the diverging client of a round).
* **Failing loudly**: ``aggregate_train`` raises
  :class:`~fedrs.strategies.errors.NoSuccessfulClientsError` when no reply is usable, and
  :class:`~fedrs.strategies.errors.RoundFailedError` when fewer than ``min_successful`` are or
  (``accept_failures=False``) when any sampled client failed, and
  :class:`~fedrs.strategies.errors.NonFiniteModelError` (never adopting it) when the merged
  model holds NaN or inf.  A round in which no client was sampled (``fraction_train=0``)
  returns ``(None, None)`` as in Flower.

Bytes are measured on the messages themselves (:func:`message_bytes`): the objects Flower
transfers for a message (the message, its RecordDict, records, arrays and array chunks, each
deflated as Flower pushes and pulls them, each distinct object once), summed over messages.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrs import protocol
from fedrs.comm import (
    GLOBAL_BASE_KEY,
    GLOBAL_FINGERPRINT_KEY,
    PlainUpdateCodec,
    UpdateCodec,
    build_update_codec,
    fingerprint,
)
from fedrs.errors import InputError

from .accounting import RoundStats, message_bytes, messages_bytes
from .errors import (
    ClientFailure,
    NonFiniteModelError,
    NoSuccessfulClientsError,
    RoundFailedError,
)
from .merging import MetricsAggregationFn, aggregate_metrics_per_key, cast_like
from .replies import CLIENT_ID_KEY as CLIENT_ID_KEY  # re-exported
from .replies import CLIENT_METRICS as CLIENT_METRICS  # re-exported
from .replies import (
    METRICS_RECORD_KEY,
    CheckedReply,
    KeyFilter,
    RejectedReply,
    StatisticsPool,
    as_rejection,
    client_metrics,
    first_non_finite,
    read_reply,
    reply_metrics,
    reply_order,
    reply_statistics,
    reported_client_id,
)

DEFAULT_LOCAL_KEYS = protocol.DEFAULT_LOCAL_KEYS
"""Patterns of the keys that stay on the clients unless ``local_keys`` says otherwise."""

LOCAL_KEYS_CONFIG_KEY = protocol.LOCAL_KEYS
"""ConfigRecord key under which the local-only key patterns are sent to the clients."""
PARTIAL_REPLIES_CONFIG_KEY = protocol.PARTIAL_REPLIES
"""ConfigRecord key telling the clients whether to send only what they trained."""


class _NumpyView(Mapping[str, "npt.NDArray[Any]"]):
    """The arrays of an ArrayRecord as numpy arrays, each converted once, when first read."""

    def __init__(self, record: ArrayRecord) -> None:
        self._record = record
        self._cache: dict[str, npt.NDArray[Any]] = {}

    def __getitem__(self, key: str) -> npt.NDArray[Any]:
        value = self._cache.get(key)
        if value is None:
            if key not in self._record:
                raise KeyError(key)
            value = self._cache[key] = self._record[key].numpy()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._record.keys()))

    def __len__(self) -> int:
        return len(self._record)


@dataclass(frozen=True)
class _Transition:
    """The coded step from one global model (``base``) to the next (``target``)."""

    base: str
    target: str
    payload: dict[str, npt.NDArray[Any]]


class LocalKeyMatcher(protocol.LocalKeyMatcher):
    """:class:`fedrs.protocol.LocalKeyMatcher` (the clients' own) with the record view the server
    needs (:meth:`shared`)."""

    def shared(self, record: ArrayRecord) -> ArrayRecord:
        """Return a record holding only the shared (non-local) entries of ``record``."""
        out = ArrayRecord()
        for key, array in record.items():
            if not self.is_local(key):
                out[key] = array
        return out


def _check_fraction(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_key_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f"{name} must be a non-empty string, got {value!r}")


class _NotAveraged:
    """Keys no reply contributes to by averaging: the local-only keys and the keys derived from
    pooled statistics (ignored when a client sends them, never required in a reply)."""

    def __init__(self, local: KeyFilter, derived: Iterable[str]) -> None:
        self.local = local
        self.derived = frozenset(derived)

    def is_local(self, key: str) -> bool:
        return key in self.derived or self.local.is_local(key)


class _GridProxy(Grid):
    """``grid`` as it is: what the views below change, they override."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self.grid.set_run(run_id)  # type: ignore[arg-type]

    @property
    def run(self) -> Any:  # type: ignore[override]
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class _TurnGrid(_GridProxy):
    """``grid``, except that the training messages of a round whose clients train in turn
    (:meth:`AccountedFedAvg.take_turns`) go out one after another
    (:meth:`AccountedFedAvg.train_in_turn`)."""

    def __init__(self, grid: Grid, strategy: AccountedFedAvg) -> None:
        super().__init__(grid)
        self.strategy = strategy

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        server_round = self.strategy.take_turns(messages)
        if server_round is None:
            return self.grid.send_and_receive(messages, timeout=timeout)
        return self.strategy.train_in_turn(self.grid, server_round, list(messages), timeout)


class _RankedGrid(_GridProxy):
    """``grid``, except that it lists the connected nodes by their client ids (then node ids),
    asking a node not yet known (:meth:`AccountedFedAvg.rank_nodes`): a sampler seeded alike
    then picks the same clients whatever node ids the federation assigned."""

    def __init__(self, grid: Grid, strategy: AccountedFedAvg, server_round: int) -> None:
        super().__init__(grid)
        self.strategy = strategy
        self.server_round = server_round

    def get_node_ids(self) -> Iterable[int]:
        return self.strategy.rank_nodes(self.grid, self.server_round, self.grid.get_node_ids())


@contextmanager
def _seeded_random(*words: int) -> Iterator[None]:
    """Python's ``random`` (what Flower samples nodes with) seeded from ``words`` inside,
    and left as it was outside."""
    state = random.getstate()
    random.seed(int(np.random.SeedSequence(list(words)).generate_state(1)[0]))
    try:
        yield
    finally:
        random.setstate(state)


class AccountedFedAvg(FedAvg):
    """Flower ``FedAvg`` with local-only keys, checked replies and per-round accounting.

    See the module docstring for the behaviour.  Subclasses choose whether every reply must
    carry every shared key (:attr:`requires_all_shared_keys`).

    Args:
        fraction_train: Fraction of the connected nodes sampled for training.
        fraction_evaluate: Fraction of the connected nodes sampled for evaluation.
        min_train_nodes: Minimum number of nodes sampled for training.
        min_evaluate_nodes: Minimum number of nodes sampled for evaluation.
        min_available_nodes: Nodes that must be connected before sampling.
        weighted_by_key: MetricRecord key holding each reply's weight (example count).
        arrayrecord_key: RecordDict key of the ArrayRecord in messages (and in replies).
        configrecord_key: RecordDict key of the ConfigRecord in messages.
        train_metrics_aggr_fn: Aggregates the training MetricRecords; default
            :func:`aggregate_metrics_per_key`.
        evaluate_metrics_aggr_fn: Aggregates the evaluation MetricRecords; default
            :func:`aggregate_metrics_per_key`.
        local_keys: Patterns of the local-only keys (see :class:`LocalKeyMatcher`);
            ``None`` for :data:`DEFAULT_LOCAL_KEYS`, ``[]`` to share every key.
        min_successful: Fewest usable training replies a round needs (>= 1).
        accept_failures: When ``False``, a round in which any sampled client failed raises
            :class:`~fedrs.strategies.errors.RoundFailedError`.
        update_codec: How the global model travels to the clients: a
            :class:`fedrs.comm.UpdateCodec` or its name; ``None`` is ``"none"``.  Coded
            replies are decoded whatever this is.
        max_weight: The largest weight (``weighted_by_key``) a reply may claim, e.g. the most
            examples any client can hold; a reply above it is failed.  ``None``: no bound.
        statistics: Pools feature statistics (:class:`fedrs.models.statistics.WhiteningPool`):
            clients are asked to send the statistics of their features
            (:data:`fedrs.protocol.STATISTICS`) instead of the keys it derives, which are never
            averaged but computed from the statistics of all the round's usable replies.
            ``None``: every shared key is averaged.
        cyclic_rounds: The first rounds (counted over resumed runs too) in which the sampled
            clients train in turn, each from the model the previous one returned, instead of
            in parallel and averaged; 0: none.  Only with plain updates (``update_codec``
            ``"none"``): a coded reply is a difference to the model its client received.
        turn_seed: Seeds the order of the turns: the clients of an in-turn round take them
            in a permutation, drawn from ``(turn_seed, round)``, of their client ids (each node
            is asked its id once, by a query message), so the same seed gives the same order
            whatever node ids the federation assigned.  ``None``: the order Flower sampled
            the nodes in.
        sample_seed: Seeds which nodes a round samples (``fraction_train`` or
            ``fraction_evaluate`` below 1): Flower's sampler draws, from a generator seeded
            with ``(sample_seed, round)``, among the connected nodes listed by their client ids
            (asked once, as for ``turn_seed``), so the same seed samples the same clients.
            ``None``: Flower's random draw.
        **flower_options: Further keyword arguments of the Flower parent class.

    Raises:
        InputError: An option has a bad value.
    """

    requires_all_shared_keys: bool = True
    """Whether a reply missing a shared key of the global model is a failed reply."""

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregationFn | None = None,
        local_keys: Sequence[str] | str | None = None,
        min_successful: int = 1,
        accept_failures: bool = True,
        update_codec: UpdateCodec | str | None = None,
        max_weight: float | None = None,
        statistics: StatisticsPool | None = None,
        cyclic_rounds: int = 0,
        turn_seed: int | None = None,
        sample_seed: int | None = None,
        **flower_options: Any,
    ) -> None:
        _check_fraction("fraction_train", fraction_train)
        _check_count("cyclic_rounds", cyclic_rounds, 0)
        if turn_seed is not None:
            _check_count("turn_seed", turn_seed, 0)
        if sample_seed is not None:
            _check_count("sample_seed", sample_seed, 0)
        _check_fraction("fraction_evaluate", fraction_evaluate)
        _check_count("min_train_nodes", min_train_nodes, 0)
        _check_count("min_evaluate_nodes", min_evaluate_nodes, 0)
        _check_count("min_available_nodes", min_available_nodes, 0)
        _check_count("min_successful", min_successful, 1)
        _check_key_name("weighted_by_key", weighted_by_key)
        _check_key_name("arrayrecord_key", arrayrecord_key)
        _check_key_name("configrecord_key", configrecord_key)
        if not isinstance(accept_failures, bool):
            raise InputError(f"accept_failures must be true or false, got {accept_failures!r}")
        if max_weight is not None and (
            isinstance(max_weight, bool)
            or not isinstance(max_weight, int | float)
            or not math.isfinite(max_weight)
            or max_weight <= 0
        ):
            raise InputError(f"max_weight must be a positive finite number, got {max_weight!r}")
        self.max_weight = None if max_weight is None else float(max_weight)
        for name, fn in (
            ("train_metrics_aggr_fn", train_metrics_aggr_fn),
            ("evaluate_metrics_aggr_fn", evaluate_metrics_aggr_fn),
        ):
            if fn is not None and not callable(fn):
                raise InputError(f"{name} must be callable, got {fn!r}")
        self.local_keys = LocalKeyMatcher(local_keys)
        self.statistics = statistics
        self._not_averaged = _NotAveraged(
            self.local_keys, () if statistics is None else statistics.derived_keys()
        )
        if update_codec is None:
            update_codec = PlainUpdateCodec()
        elif isinstance(update_codec, str):
            update_codec = build_update_codec(update_codec)
        elif not isinstance(update_codec, UpdateCodec):
            raise InputError(
                f"update_codec must be an update codec or its name, got {update_codec!r}"
            )
        self.update_codec: UpdateCodec = update_codec
        if cyclic_rounds and update_codec.name != "none":
            raise InputError(
                f"cyclic_rounds trains clients in turn on plain models: update_codec "
                f"{update_codec.name!r} codes each reply against the round's global model "
                "(federation.cyclic_rounds = 0 averages every round)"
            )
        self.cyclic_rounds = int(cyclic_rounds)
        self.turn_seed = None if turn_seed is None else int(turn_seed)
        self.sample_seed = None if sample_seed is None else int(sample_seed)
        self._client_ids: dict[int, float] = {}
        """Each node's reported client id (inf: none), asked once (:meth:`rank_nodes`)."""
        self._query_timeout = 3600.0
        """How long a query for client ids waits (the timeout ``start`` was given)."""
        self.round_offset = 0
        """Rounds done before this run (a resumed run): ``cyclic_rounds`` count global rounds."""
        super().__init__(
            fraction_train=float(fraction_train),
            fraction_evaluate=float(fraction_evaluate),
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn or aggregate_metrics_per_key,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn or aggregate_metrics_per_key,
            **flower_options,
        )
        self.min_successful = min_successful
        self.accept_failures = accept_failures
        self.round_stats: dict[int, RoundStats] = {}
        """Per-round counts, filled by configure/aggregate; keyed by server round."""
        self._train_globals: dict[int, ArrayRecord] = {}
        self._sent_globals: dict[int, str] = {}
        self._node_globals: dict[int, str] = {}
        self._transition: _Transition | None = None
        self._broadcast_residual: dict[str, npt.NDArray[np.float32]] = {}
        self._turns: dict[int, list[Message]] = {}
        self._chained: dict[int, dict[str, npt.NDArray[Any]]] = {}
        # each in-turn reply's check (or why it failed), by id() of the reply: done once
        self._turn_checks: dict[int, dict[int, tuple[CheckedReply, Any] | Exception]] = {}

    # ------------------------------------------------------------------ configuration

    def summary(self) -> None:
        """Log the configuration of the strategy."""
        log(INFO, "\t├──> fedrs settings:")
        log(INFO, "\t│\t├── Local-only keys: %s", list(self.local_keys.patterns) or "(none)")
        log(INFO, "\t│\t├── Every reply must carry every key: %s", self.requires_all_shared_keys)
        log(INFO, "\t│\t├── Update codec: %s", self.update_codec.describe())
        log(INFO, "\t│\t├── Rounds with clients in turn: %d", self.cyclic_rounds)
        log(
            INFO,
            "\t│\t└── Min successful replies: %d | accept failures: %s",
            self.min_successful,
            self.accept_failures,
        )
        super().summary()

    def _stats(self, server_round: int) -> RoundStats:
        stats = self.round_stats.get(server_round)
        if stats is None:
            stats = self.round_stats[server_round] = RoundStats(server_round=server_round)
        return stats

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send them the shared part of the global model.

        Local-only keys are removed from the broadcast; their patterns are added to the
        ConfigRecord under :data:`LOCAL_KEYS_CONFIG_KEY`.  The full ``arrays`` are kept as the
        base that ``aggregate_train`` of the same round merges into.  With a codec that codes
        broadcasts, nodes holding the previous global model get the coded difference to it.
        """
        shared = self.local_keys.shared(arrays)
        config[LOCAL_KEYS_CONFIG_KEY] = list(self.local_keys.patterns)
        config[PARTIAL_REPLIES_CONFIG_KEY] = not self.requires_all_shared_keys
        config[protocol.STATISTICS] = self.statistics is not None
        with self._sampling(server_round, grid, stream=1) as sampling_grid:
            messages = self.sample_train(server_round, shared, config, sampling_grid)
        self._train_globals[server_round] = arrays
        if messages and self.update_codec.codes_broadcast:
            self._code_broadcast(server_round, shared, messages)
        stats = self._stats(server_round)
        stats.sampled = len(messages)
        if messages and self.in_turn(server_round):
            self._turns[server_round] = messages  # sent and counted by train_in_turn (start)
        else:
            stats.bytes_down += messages_bytes(messages)
        return messages

    def in_turn(self, server_round: int) -> bool:
        """Whether the clients of ``server_round`` train in turn (``cyclic_rounds``)."""
        return server_round + self.round_offset <= self.cyclic_rounds

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Flower's ``start``; with ``cyclic_rounds`` the training messages of those rounds
        go out one after another (:meth:`train_in_turn`) through a :class:`_TurnGrid`.
        Queries for client ids wait ``timeout`` too."""
        self._query_timeout = timeout
        return super().start(
            _TurnGrid(grid, self) if self.cyclic_rounds else grid,
            initial_arrays,
            num_rounds,
            timeout,
            *args,
            **kwargs,
        )

    @contextmanager
    def _sampling(self, server_round: int, grid: Grid, stream: int) -> Iterator[Grid]:
        """The grid to sample ``server_round``'s nodes from: with ``sample_seed``, one that
        lists them by client id, under a ``random`` seeded with ``(sample_seed, round,
        stream)``; else ``grid`` itself."""
        if self.sample_seed is None:
            yield grid
            return
        with _seeded_random(self.sample_seed, server_round + self.round_offset, stream):
            yield _RankedGrid(grid, self, server_round)

    def take_turns(self, messages: Iterable[Message]) -> int | None:
        """The round whose in-turn training messages ``messages`` are (then forgotten), or
        None for any other messages."""
        for server_round, pending in self._turns.items():
            if pending is messages:
                del self._turns[server_round]
                return server_round
        return None

    def train_in_turn(
        self, grid: Grid, server_round: int, messages: list[Message], timeout: float | None
    ) -> list[Message]:
        """Send the round's training messages one after another, each with the shared model as
        the previous usable reply left it; returns the replies.

        Every reply is checked (:func:`read_reply`, the pooled statistics) before any of it is
        passed on; an unusable or missing one is skipped.  The model reached is what
        :meth:`aggregate_train` adopts for this round, and it takes each reply's check from
        here instead of repeating it.
        """
        messages = self.turn_order(grid, server_round, messages)
        global_arrays = self._train_globals[server_round]
        global_numpy = _NumpyView(global_arrays)
        first = messages[0].content.array_records[self.arrayrecord_key]
        current = {key: array.numpy() for key, array in first.items()}
        trained: set[str] = set()
        replies: list[Message] = []
        checks: dict[int, tuple[CheckedReply, Any] | Exception] = {}
        for turn, msg in enumerate(messages):
            if turn:
                config = msg.content.config_records[self.configrecord_key]
                record = ArrayRecord({key: Array(value) for key, value in current.items()})
                msg.content = RecordDict(
                    {self.arrayrecord_key: record, self.configrecord_key: config}
                )
            got = list(grid.send_and_receive([msg], timeout=timeout))
            replies.extend(got)
            for reply in got:
                try:
                    checked, found = self._check_reply(reply, global_arrays, global_numpy)
                except Exception as exc:  # aggregate_train counts and logs it
                    checks[id(reply)] = exc
                    continue
                checks[id(reply)] = (checked, found)
                for key, value in checked.arrays.items():
                    current[key] = cast_like(value, global_arrays[key].dtype)
                    trained.add(key)
            log(
                INFO,
                "round %d: client %d of %d trained in turn",
                server_round,
                turn + 1,
                len(messages),
            )
        self._chained[server_round] = {key: current[key] for key in trained}
        self._turn_checks[server_round] = checks
        self._stats(server_round).bytes_down += messages_bytes(messages)
        return replies

    def turn_order(self, grid: Grid, server_round: int, messages: list[Message]) -> list[Message]:
        """The order in which the clients of an in-turn round train.

        With ``turn_seed``: the messages sorted by their nodes' client ids (then node ids),
        permuted by a generator seeded with ``(turn_seed, round)``; a node not yet known is
        first asked its id (:meth:`ask_client_ids`).  Without: ``messages`` as sampled.
        """
        if self.turn_seed is None:
            return messages
        by_node = {m.metadata.dst_node_id: m for m in messages}
        ranked = [by_node[node] for node in self.rank_nodes(grid, server_round, by_node)]
        round_seed = server_round + self.round_offset
        permutation = np.random.default_rng([self.turn_seed, round_seed, 2]).permutation
        return [ranked[i] for i in permutation(len(ranked))]

    def rank_nodes(self, grid: Grid, server_round: int, nodes: Iterable[int]) -> list[int]:
        """``nodes`` sorted by their client ids (then node ids; inf: none), each known or asked
        once (:meth:`ask_client_ids`, waiting the ``start`` timeout)."""
        nodes = list(nodes)
        unknown = [node for node in nodes if node not in self._client_ids]
        if unknown:
            found = self.ask_client_ids(grid, server_round, unknown, self._query_timeout)
            self._client_ids.update(found)
        return sorted(nodes, key=lambda node: (self._client_ids[node], node))

    def ask_client_ids(
        self, grid: Grid, server_round: int, nodes: list[int], timeout: float | None
    ) -> dict[int, float]:
        """Each of ``nodes``' client id, from its reply to a query message (its
        :data:`CLIENT_ID_KEY` metric); inf for a node that reports none (no reply, an error,
        a value that is not a finite number), which then takes its turn after the others.
        The messages count in the round's bytes."""
        queries = [
            Message(
                RecordDict(),
                dst_node_id=node,
                message_type=MessageType.QUERY,
                group_id=str(server_round),
            )
            for node in nodes
        ]
        found = dict.fromkeys(nodes, math.inf)
        stats = self._stats(server_round)
        stats.bytes_down += messages_bytes(queries)
        for reply in grid.send_and_receive(queries, timeout=timeout):
            node = reply.metadata.src_node_id
            try:
                stats.bytes_up += message_bytes(reply)
            except Exception as exc:  # a reply that cannot be measured is not read either
                log(WARNING, "round %d: node %d's id unreadable: %s", server_round, node, exc)
                continue
            if node in found:
                found[node] = reported_client_id(reply)
        silent = sum(1 for value in found.values() if value == math.inf)
        if silent:
            log(
                WARNING,
                "round %d: %d of %d nodes reported no client id; they train last, by node id",
                server_round,
                silent,
                len(nodes),
            )
        return found

    def sample_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample the nodes and build the training messages (Flower's ``FedAvg`` here)."""
        return list(FedAvg.configure_train(self, server_round, arrays, config, grid))

    def sample_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample the nodes and build the evaluation messages (Flower's ``FedAvg`` here)."""
        return list(FedAvg.configure_evaluate(self, server_round, arrays, config, grid))

    def _code_broadcast(
        self, server_round: int, shared: ArrayRecord, messages: list[Message]
    ) -> None:
        """Give each training message the full model or the coded difference its node can use."""
        held = fingerprint(_NumpyView(shared))
        self._sent_globals[server_round] = held
        config = ConfigRecord(dict(messages[0].content.config_records[self.configrecord_key]))
        config[GLOBAL_FINGERPRINT_KEY] = held
        full = RecordDict({self.arrayrecord_key: shared, self.configrecord_key: config})
        coded: RecordDict | None = None
        step = self._transition
        if step is not None and step.target == held:
            coded_config = ConfigRecord(dict(config))
            coded_config[GLOBAL_BASE_KEY] = step.base
            payload = ArrayRecord({k: Array(v) for k, v in step.payload.items()})
            coded = RecordDict({self.arrayrecord_key: payload, self.configrecord_key: coded_config})
        for msg in messages:
            node = msg.metadata.dst_node_id
            use_coded = step is not None and self._node_globals.get(node) == step.base
            msg.content = coded if coded is not None and use_coded else full
            # What the node holds is known again once it replies successfully.
            self._node_globals.pop(node, None)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send them the shared part of the global model to evaluate."""
        shared = self.local_keys.shared(arrays)
        config[LOCAL_KEYS_CONFIG_KEY] = list(self.local_keys.patterns)
        with self._sampling(server_round, grid, stream=3) as sampling_grid:
            messages = self.sample_evaluate(server_round, shared, config, sampling_grid)
        stats = self._stats(server_round)
        stats.eval_sampled = len(messages)
        stats.bytes_down_eval = messages_bytes(messages)
        return messages

    # ------------------------------------------------------------------ aggregation

    def _reject(
        self, server_round: int, stats: RoundStats, node_id: int, exc: RejectedReply
    ) -> None:
        failure = ClientFailure(node_id=node_id, reason=exc.reason, detail=exc.detail)
        log(WARNING, "round %d: reply dropped: %s", server_round, failure)
        stats.failures.append(failure)

    def _track_client(self, stats: RoundStats, metrics: MetricRecord) -> None:
        found = client_metrics(metrics)
        if found is None:
            return
        client, values = found
        if client in stats.per_client:
            log(
                WARNING,
                "round %d: several replies report client-id %d; the first one is tracked",
                stats.server_round,
                client,
            )
            return
        stats.per_client[client] = values

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the usable training replies into the next full global model.

        Each shared key is averaged over the usable replies that carry it, weighted by
        ``weighted_by_key``; the result is cast back to the global dtype and merged into the
        global model sent by ``configure_train`` for this round.

        Returns:
            The next global ArrayRecord (all keys) and the aggregated training metrics, or
            ``(None, None)`` when no client was sampled in this round.

        Raises:
            NoSuccessfulClientsError: No usable reply although clients were sampled.
            RoundFailedError: Fewer than ``min_successful`` usable replies, or a failure
                with ``accept_failures=False``.
            RuntimeError: ``configure_train`` was not called for this round.
        """
        global_arrays = self._train_globals.pop(server_round, None)
        if global_arrays is None:
            raise RuntimeError(f"aggregate_train for round {server_round} without configure_train")
        sent = self._sent_globals.pop(server_round, None)
        global_numpy = _NumpyView(global_arrays)
        # A fixed order makes the floating-point sums, hence the global model, independent of
        # the order in which replies arrive.
        replies = sorted(replies, key=reply_order)
        stats = self._stats(server_round)
        stats.failures.clear()
        stats.per_client.clear()
        if stats.sampled == 0 and not replies:
            log(INFO, "round %d: no client sampled for training", server_round)
            return None, None

        checks = self._turn_checks.pop(server_round, {})  # in turn: checked as they came
        usable: list[CheckedReply] = []
        moments: list[Any] = []
        metric_records: list[RecordDict] = []
        bytes_up = 0
        for msg in replies:
            node_id = msg.metadata.src_node_id
            try:
                bytes_up += message_bytes(msg)
                done = checks.get(id(msg))
                if isinstance(done, Exception):
                    raise done
                checked, found = done or self._check_reply(msg, global_arrays, global_numpy)
                if found is not None:
                    moments.append(found)
            except Exception as exc:  # MemoryError, RecursionError, bugs: this reply fails alone
                self._reject(server_round, stats, node_id, as_rejection(exc))
                continue
            if sent is not None:
                self._node_globals[node_id] = sent
            usable.append(checked)
            metric_records.append(RecordDict({METRICS_RECORD_KEY: checked.metrics}))
            self._track_client(stats, checked.metrics)

        missing = max(0, stats.sampled - len(replies))
        for _ in range(missing):
            stats.failures.append(ClientFailure(node_id=0, reason="no reply before the timeout"))
        if missing:
            log(WARNING, "round %d: %d sampled clients did not reply", server_round, missing)
        stats.clients_ok = len(metric_records)
        stats.clients_failed = len(stats.failures)
        stats.clients_missing = missing
        stats.bytes_up += bytes_up
        log(
            INFO,
            "round %d: aggregate_train: %d usable replies, %d failed (%d missing)",
            server_round,
            stats.clients_ok,
            stats.clients_failed,
            missing,
        )
        self._check_round(stats)

        if self.in_turn(server_round):
            if server_round not in self._chained:
                raise RuntimeError(f"round {server_round} is trained in turn: run it with start")
            aggregated = self._chained.pop(server_round)
        else:
            aggregated = self.aggregate_arrays(server_round, global_arrays, usable)
        if self.statistics is not None and moments:
            pooled = self.statistics.pool(moments)
            aggregated |= self.statistics.running_arrays(pooled)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            cast_back = {k: cast_like(v, global_arrays[k].dtype) for k, v in aggregated.items()}
        bad = first_non_finite(aggregated)
        if bad is None:
            bad = first_non_finite(cast_back)
        if bad is not None:  # never adopted: the run stops, the last good checkpoint stays
            raise NonFiniteModelError(
                server_round, bad, stats.clients_ok, stats.clients_failed, stats.failures
            )
        merged = ArrayRecord()
        for key, array in global_arrays.items():
            merged[key] = Array(cast_back[key]) if key in cast_back else array
        if self.update_codec.codes_broadcast:
            merged = self._code_next_global(server_round, merged, global_numpy, sent)
        metrics_out = self.train_metrics_aggr_fn(metric_records, self.weighted_by_key)
        stats.train_metrics = {
            k: float(v) for k, v in metrics_out.items() if isinstance(v, int | float)
        }
        return merged, metrics_out

    def _check_reply(
        self,
        msg: Message,
        global_arrays: ArrayRecord,
        global_numpy: Mapping[str, npt.NDArray[Any]],
    ) -> tuple[CheckedReply, Any]:
        """``msg`` read and checked (:func:`read_reply`) with its pooled statistics (None
        without); raises when it is unusable."""
        checked = read_reply(
            msg,
            global_arrays,
            global_numpy,
            local_keys=self._not_averaged,
            weighted_by_key=self.weighted_by_key,
            arrayrecord_key=self.arrayrecord_key,
            requires_all_shared_keys=self.requires_all_shared_keys,
            max_weight=self.max_weight,
        )
        found = None
        if self.statistics is not None:
            # features of no more patches than the reply's weight claims
            found = reply_statistics(msg, self.statistics, checked.weight)
        return checked, found

    def aggregate_arrays(
        self,
        server_round: int,
        global_arrays: ArrayRecord,
        replies: list[CheckedReply],
    ) -> dict[str, np.ndarray]:
        """The aggregated value (float64) of every key some usable reply carried.

        Here: each key's weighted mean over the replies that carry it, weighted by
        :meth:`key_weight`.  Variants (a Flower strategy per group of keys, see
        :mod:`fedrs.strategies.guard`) override this hook.

        Args:
            server_round: The round.
            global_arrays: The global model of the round.
            replies: The usable replies, in a fixed order.
        """
        sums: dict[str, np.ndarray] = {}
        totals: dict[str, float] = {}
        for reply in replies:
            for key, value in reply.arrays.items():
                weight = self.key_weight(reply, protocol.modality_of(key))
                contribution = weight * value.astype(np.float64)
                if key in sums:
                    sums[key] += contribution
                else:
                    sums[key] = contribution
                totals[key] = totals.get(key, 0.0) + weight
        return {key: total / totals[key] for key, total in sums.items()}

    def key_weight(self, reply: CheckedReply, modality: str | None) -> float:
        """The weight of ``reply`` for the keys of ``modality`` (None: shared keys).

        Under partial replies a client sends a modality's keys because it trained them, so they
        are weighted by the patches of that modality it trained on (``num-examples-s1``); whole
        replies (FedAvg: untrained codecs are sent back unchanged) use the reply's weight.
        """
        if self.requires_all_shared_keys:
            return reply.weight
        return reply.modality_weight(modality)

    def _code_next_global(
        self,
        server_round: int,
        merged: ArrayRecord,
        current: Mapping[str, npt.NDArray[Any]],
        current_fingerprint: str | None,
    ) -> ArrayRecord:
        """Put the shared keys of ``merged`` on the codec's grid around the current model.

        The result is exactly what a client holding the current model rebuilds from the coded
        difference kept in :attr:`_transition`; what rounding left out is carried to the next
        round (error feedback of the codec).
        """
        shared = {k: a.numpy() for k, a in merged.items() if not self.local_keys.is_local(k)}
        reference = {k: current[k] for k in shared}
        rng = np.random.default_rng([self.update_codec.seed, server_round, 1])
        encoded = self.update_codec.encode(
            shared, reference, residual=self._broadcast_residual, rng=rng
        )
        self._broadcast_residual = encoded.residual
        self._transition = _Transition(
            base=current_fingerprint or fingerprint(reference),
            target=fingerprint(encoded.decoded),
            payload=encoded.payload,
        )
        out = ArrayRecord()
        for key, array in merged.items():
            out[key] = Array(encoded.decoded[key]) if key in encoded.decoded else array
        return out

    def _check_round(self, stats: RoundStats) -> None:
        if stats.clients_ok == 0:
            raise NoSuccessfulClientsError(stats.server_round, stats.clients_failed, stats.failures)
        if stats.clients_ok < self.min_successful:
            raise RoundFailedError(
                stats.server_round,
                stats.clients_ok,
                stats.clients_failed,
                stats.failures,
                f"at least {self.min_successful} required",
            )
        if stats.clients_failed and not self.accept_failures:
            raise RoundFailedError(
                stats.server_round,
                stats.clients_ok,
                stats.clients_failed,
                stats.failures,
                "failures are not accepted",
            )

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        """Aggregate the usable evaluation replies; dropped replies are counted and logged.

        Returns ``None`` when no reply is usable (a warning is logged when clients were
        sampled); evaluation failures never stop the run.
        """
        replies = list(replies)
        stats = self._stats(server_round)
        usable: list[RecordDict] = []
        for msg in replies:
            try:
                metrics, _ = reply_metrics(msg, self.weighted_by_key, self.max_weight)
            except Exception as exc:
                log(
                    WARNING,
                    "round %d: evaluation reply from node %d dropped: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    as_rejection(exc).reason,
                )
                continue
            usable.append(RecordDict({METRICS_RECORD_KEY: metrics}))
        stats.eval_ok = len(usable)
        stats.eval_failed = max(stats.eval_sampled, len(replies)) - len(usable)
        if not usable:
            if stats.eval_sampled:
                log(WARNING, "round %d: no usable evaluation reply", server_round)
            return None
        return cast(MetricRecord, self.evaluate_metrics_aggr_fn(usable, self.weighted_by_key))
