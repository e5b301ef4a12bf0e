"""fedrs' guarantees around any Flower Message-API strategy.

:class:`GuardedStrategy` wraps a Flower strategy class (``FedAvg``, ``FedAdam``, ``Krum``, ...;
the :attr:`~GuardedStrategy.flower` attribute of a subclass) the way Flower's DP wrappers wrap
a strategy: Flower samples the nodes, builds the messages and does the aggregation arithmetic;
fedrs adds, around it,

* **local-only keys** (:class:`~fedrs.strategies.base.LocalKeyMatcher`): never broadcast, never
  aggregated, kept from the global model;
* **checked replies** (:func:`~fedrs.strategies.replies.read_reply`): any reply that cannot be
  read, decoded (coded updates) or checked (keys, dtypes, shapes, finite values, a weight that
  is positive, finite and at most ``max_weight``) is *failed*: counted, logged with its node and
  reason, never a server crash;
* **partial-key merging** (``partial_replies``): the shared keys are grouped by the set of
  replies that carry them (S1 codec keys by the S1 and S1+S2 clients, S2 codec keys by the S2
  and S1+S2 clients, the hash head by all) and the Flower strategy aggregates each group over
  its own replies; a strategy with server state (FedAvgM's momentum, FedAdam's moments, ...)
  keeps one instance per group, so its state is per key; keys nobody returned keep their
  value.  Without ``partial_replies`` every reply must carry every shared key and the Flower
  strategy sees whole models, exactly as in Flower;
* **float64 arithmetic, finite result**: the strategy aggregates float64 copies of the arrays;
  the merged model is checked finite before it is adopted
  (:class:`~fedrs.strategies.errors.NonFiniteModelError` otherwise, so the run fails loudly and
  the last good checkpoint stays) and cast back to the global dtypes;
* **a server step on chosen keys** (``server_keys``): the Flower strategy's server-side update
  (FedAvgM's momentum and learning rate, FedAdam's moments, ...) applies to the keys matching
  these patterns only; every other shared key is averaged plainly (FedAvg), e.g. the GDN and
  entropy-model parameters, which are only valid in a bounded region an extrapolated step can
  leave.  ``None`` (default): every key, as in Flower;
* **byte accounting, coded broadcasts and the failure policy** of
  :class:`~fedrs.strategies.base.AccountedFedAvg` (``round_stats``, ``min_successful``,
  ``accept_failures``, ``update_codec``).

A variant overrides one hook: :attr:`flower` (the Flower class), :attr:`partial_default`, or
:meth:`flower_options` (options it adds, e.g. FedProx's ``proximal_mu``).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)

from fedrs import protocol
from fedrs.errors import InputError
from fedrs.protocol import LocalKeyMatcher

from .base import PARTIAL_REPLIES_CONFIG_KEY, AccountedFedAvg
from .errors import RoundFailedError
from .registry import STRATEGIES
from .replies import CheckedReply

FEDRS_OPTIONS = (
    "local_keys",
    "min_successful",
    "accept_failures",
    "update_codec",
    "max_weight",
    "partial_replies",
    "dp",
    "statistics",
    "server_keys",
    "cyclic_rounds",
    "turn_seed",
    "sample_seed",
)
"""Options fedrs adds to every strategy (the rest go to the Flower class)."""
IN_TURN = (FedAvg, FedProx)
"""The Flower classes whose rounds may train the clients in turn (``cyclic_rounds``): those
whose aggregate is the clients' mean, which a chain of clients replaces."""


def trains_in_turn(name: str) -> bool:
    """Whether the strategy registered as ``name`` can train its clients in turn
    (``cyclic_rounds``); an unknown name raises :class:`InputError`."""
    strategy = STRATEGIES.lookup(name)
    return issubclass(strategy, GuardedStrategy) and strategy.flower in IN_TURN


_NOT_OPTIONS = {"self", "strategy", "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"}


class _PrimingGrid(Grid):
    """A grid of ``n`` nodes that sends nothing: lets a Flower strategy capture, in
    ``configure_train``, the arrays of a round (FedOpt's ``current_arrays``, ...)."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        raise RuntimeError("a priming grid runs nothing")

    @property
    def run(self) -> Any:  # type: ignore[override]
        raise RuntimeError("a priming grid runs nothing")

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        raise RuntimeError("a priming grid sends nothing")

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise RuntimeError("a priming grid sends nothing")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise RuntimeError("a priming grid sends nothing")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise RuntimeError("a priming grid sends nothing")


def flower_option_names(flower: type[Strategy]) -> list[str]:
    """The constructor options of a strategy class (Flower's or fedrs' base; callables
    excluded)."""
    params = inspect.signature(flower.__init__).parameters
    return [
        name
        for name, p in params.items()
        if name not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


class GuardedStrategy(AccountedFedAvg):
    """A Flower strategy (:attr:`flower`) with fedrs' guarantees (see the module docstring).

    Args:
        partial_replies: Clients send only what they trained (their modalities' codecs and
            the shared parts) and each key is aggregated over the replies that carry it;
            default :attr:`partial_default`.
        server_keys: Regular expressions (searched in each key) of the keys the Flower
            strategy's server step covers; the other keys are averaged plainly.  ``None``:
            every key.  Not with ``dp`` (the plainly averaged keys would escape its noise).
        local_keys, min_successful, accept_failures, update_codec, max_weight: see
            :class:`~fedrs.strategies.base.AccountedFedAvg`.
        **options: Options of the Flower class (its defaults where not given).

    Raises:
        InputError: An unknown option, or a value the Flower class or fedrs refuses.
    """

    flower: ClassVar[type[Strategy]] = FedAvg
    """The Flower strategy class that samples, configures and aggregates."""
    partial_default: ClassVar[bool] = True
    """Whether clients send partial replies unless ``partial_replies`` says otherwise."""

    def __init__(
        self,
        *,
        partial_replies: bool | None = None,
        dp: Mapping[str, Any] | None = None,
        server_keys: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        self.server_keys = (
            None if server_keys is None else LocalKeyMatcher(server_keys, option="server_keys")
        )
        if self.server_keys is not None and dp is not None:
            raise InputError("server_keys cannot be combined with dp: every key must be noised")
        if partial_replies is None:
            partial_replies = self.partial_default
        if not isinstance(partial_replies, bool):
            raise InputError(f"partial_replies must be true or false, got {partial_replies!r}")
        self.partial_replies = partial_replies
        self.dp = check_dp(dp, self.flower.__name__, partial_replies)
        self.requires_all_shared_keys = not partial_replies
        accepted = set(flower_option_names(self.flower))
        fedrs = {k: options.pop(k) for k in list(options) if k in FEDRS_OPTIONS}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise InputError(
                f"{self.flower.__name__}: unknown option(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(accepted | set(FEDRS_OPTIONS)))}"
            )
        base_names = set(flower_option_names(AccountedFedAvg))
        base = {k: v for k, v in options.items() if k in base_names}
        self._flower_options = self.flower_options(options)
        super().__init__(**base, **fedrs)
        if self.dp is not None and self.dp["side"] == "client" and self.update_codec.name != "none":
            raise InputError(
                "client-side DP clipping works on plain updates: use update_codec 'none' "
                f"with {self.flower.__name__}"
            )
        if self.cyclic_rounds and (self.flower not in IN_TURN or self.dp is not None):
            raise InputError(
                f"cyclic_rounds: clients train in turn only under FedAvg or FedProx without "
                f"dp, not {self.flower.__name__}{' with dp' if self.dp is not None else ''}: "
                "the model a round reaches is the last client's, not an aggregate "
                "(federation.cyclic_rounds = 0 averages every round)"
            )
        self.primary = self._new_flower()
        self._groups: dict[frozenset[str], Strategy] = {}
        self._plain = FedAvg(
            weighted_by_key=self.weighted_by_key, arrayrecord_key=self.arrayrecord_key
        )
        self._replacement: ArrayRecord | None = None

    @classmethod
    def option_names(cls) -> list[str]:
        """The options this strategy accepts: fedrs' and its Flower class's."""
        base = flower_option_names(AccountedFedAvg)
        extra = [n for n in flower_option_names(cls.flower) if n not in base]
        return [*base, *extra, *(n for n in FEDRS_OPTIONS if n not in base)]

    # ------------------------------------------------------------------ hooks

    def flower_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options the Flower class is built with (a variant may add or check some)."""
        return dict(options)

    def _new_flower(self) -> Strategy:
        try:
            strategy = self.flower(**self._flower_options)
            return strategy if self.dp is None else wrap_dp(strategy, self.dp)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.flower.__name__}: {exc}") from None

    # ------------------------------------------------------------------ configuration

    def summary(self) -> None:
        """Log the configuration (fedrs' settings, then the Flower strategy's)."""
        super().summary()
        self.primary.summary()

    def replace_global(self, arrays: ArrayRecord) -> None:
        """Make ``arrays`` (every key of the global model) the model the next round starts from.

        Flower's ``start`` keeps the global model in a local variable; the next
        :meth:`configure_train` uses ``arrays`` instead of the model it is given, once, so the
        broadcast, the base the round's replies merge into and the Flower strategy's own copy
        (FedOpt's ``current_arrays``, a DP wrapper's) all see ``arrays``.  E.g. a checkpoint
        selected on a validation split at the end of stage 1.
        """
        self._replacement = arrays

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """:meth:`AccountedFedAvg.configure_train` of the global model, or of the one
        :meth:`replace_global` set."""
        if self._replacement is not None:
            arrays, self._replacement = self._replacement, None
        return super().configure_train(server_round, arrays, config, grid)

    def sample_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The Flower strategy samples the nodes and builds the training messages."""
        config[PARTIAL_REPLIES_CONFIG_KEY] = self.partial_replies
        if self.dp is not None and self.dp["side"] == "client":
            config[protocol.DP_CLIENT_CLIPPING] = self.dp["clipping"]
        # Flower's strategies count rounds from 1 in each run; a resumed run continues the
        # count (FedAdam's bias correction depends on it) while clients keep the local one
        messages = list(
            self.primary.configure_train(server_round + self.round_offset, arrays, config, grid)
        )
        config[protocol.SERVER_ROUND] = server_round
        return messages

    def sample_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The Flower strategy samples the nodes and builds the evaluation messages."""
        return list(self.primary.configure_evaluate(server_round, arrays, config, grid))

    # ------------------------------------------------------------------ server state

    def server_state(self) -> dict[str, np.ndarray]:
        """The state the Flower strategies keep between rounds, as named numpy arrays.

        Arrays, dicts and lists of arrays, ArrayRecords and numbers held by each strategy
        instance (FedAvgM's momentum, FedAdam's moments, an adaptive clipping norm, ...; a DP
        wrapper's inner strategy too), so a resumed run continues where it stopped
        (:meth:`load_server_state`).  No pickling: plain arrays, written with ``numpy.savez``.
        """
        state: dict[str, np.ndarray] = {}
        _export(self.primary, "primary", state)
        for index, keys in enumerate(sorted(self._groups, key=sorted)):
            state[f"group{index}/__keys__"] = np.array(sorted(keys), dtype=np.str_)
            _export(self._groups[keys], f"group{index}", state)
        return state

    def load_server_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`server_state` into fresh strategy instances."""
        _import(self.primary, "primary", state)
        index = 0
        while f"group{index}/__keys__" in state:
            keys = frozenset(str(k) for k in state[f"group{index}/__keys__"])
            self._groups[keys] = strategy = self._new_flower()
            _import(strategy, f"group{index}", state)
            index += 1

    # ------------------------------------------------------------------ aggregation

    def _prime(self, strategy: Strategy, server_round: int, current: ArrayRecord) -> None:
        """Let ``strategy`` see the round's arrays as its ``configure_train`` would (nothing is
        sent; Python's random state, which Flower samples nodes with, is left as it was)."""
        nodes = max(1, self.min_available_nodes, self.min_train_nodes)
        state = random.getstate()
        try:
            strategy.configure_train(server_round, current, ConfigRecord(), _PrimingGrid(nodes))
        finally:
            random.setstate(state)

    def aggregate_arrays(
        self,
        server_round: int,
        global_arrays: ArrayRecord,
        replies: list[CheckedReply],
    ) -> dict[str, np.ndarray]:
        """Each group of keys aggregated by the Flower strategy over the replies carrying it.

        A group holds the keys of one modality (or the shared keys) carried by the same
        replies; each reply enters with its :meth:`key_weight` for that modality.

        Args:
            server_round: The round.
            global_arrays: The global model of the round.
            replies: The usable replies, in a fixed order.

        Returns:
            The aggregated arrays (float64) of every key some reply carried.
        """
        carriers: dict[str, list[int]] = {}
        for index, reply in enumerate(replies):
            for key in reply.arrays:
                carriers.setdefault(key, []).append(index)
        groups: dict[tuple[tuple[int, ...], str | None], list[str]] = {}
        for key, carried_by in carriers.items():
            modality = protocol.modality_of(key) if self.partial_replies else None
            groups.setdefault((tuple(carried_by), modality), []).append(key)
        out: dict[str, np.ndarray] = {}
        for (indexes, modality), keys in groups.items():
            stepped = keys
            if self.server_keys is not None:
                stepped = [k for k in keys if self.server_keys.is_local(k)]
                plain = [k for k in keys if not self.server_keys.is_local(k)]
                if plain:
                    out |= self._aggregate_group(
                        server_round, replies, indexes, modality, plain, self._plain
                    )
                if not stepped:
                    continue
            strategy = self.primary
            if self.partial_replies or self.server_keys is not None:
                # whole replies: one group, aggregated by the strategy that configured the
                # round, exactly as in Flower (its state, e.g. an adaptive clipping norm, too);
                # partial replies (or a server step on some keys): one strategy (and so one
                # server state) per group of keys
                found = self._groups.get(frozenset(stepped))
                if found is None:
                    found = self._groups[frozenset(stepped)] = self._new_flower()
                strategy = found
                current = ArrayRecord(
                    {k: Array(global_arrays[k].numpy().astype(np.float64)) for k in stepped}
                )
                self._prime(strategy, server_round + self.round_offset, current)
            out |= self._aggregate_group(
                server_round, replies, indexes, modality, stepped, strategy
            )
        return out

    def _aggregate_group(
        self,
        server_round: int,
        replies: list[CheckedReply],
        indexes: tuple[int, ...],
        modality: str | None,
        keys: list[str],
        strategy: Strategy,
    ) -> dict[str, np.ndarray]:
        """``keys`` aggregated by ``strategy`` over the replies ``indexes`` (float64)."""
        messages = [
            _reply_message(
                {k: replies[i].arrays[k].astype(np.float64) for k in keys},
                self.key_weight(replies[i], modality),
                node=i + 1,
                weighted_by_key=self.weighted_by_key,
                arrayrecord_key=self.arrayrecord_key,
            )
            for i in indexes
        ]
        aggregated, _ = strategy.aggregate_train(server_round + self.round_offset, messages)
        if aggregated is None:
            raise RoundFailedError(
                server_round,
                len(replies),
                0,
                [],
                f"{self.flower.__name__} aggregated nothing for {len(keys)} keys "
                f"({keys[0]!r}, ...) from the {len(indexes)} replies carrying them; "
                "it may need more replies (see its options)",
            )
        return {k: np.asarray(aggregated[k].numpy(), dtype=np.float64) for k in keys}


def _reply_message(
    arrays: Mapping[str, np.ndarray],
    weight: float,
    *,
    node: int,
    weighted_by_key: str,
    arrayrecord_key: str,
) -> Message:
    """A checked reply as the Flower strategy expects one (arrays and the weight only)."""
    content = RecordDict(
        {
            arrayrecord_key: ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
            ),
            "metrics": MetricRecord({weighted_by_key: float(weight)}),
        }
    )
    return Message(content, dst_node_id=node, message_type="train")


DP_CLIPPING = ("fixed", "adaptive")
DP_SIDES = ("server", "client")


def check_dp(dp: Mapping[str, Any] | None, flower: str, partial: bool) -> dict[str, Any] | None:
    """The DP settings (``federation.dp``) checked, or None when clipping is off.

    Keys: ``clipping`` (``"none"``, ``"fixed"``, ``"adaptive"``), ``side`` (``"server"``:
    the server clips each reply; ``"client"``: the clients clip and the server adds noise),
    ``noise_multiplier``, ``clipping_norm`` (fixed; the initial norm when adaptive),
    ``target_clipped_quantile``, ``clip_norm_lr``, ``clipped_count_stddev`` (adaptive), and
    ``num_sampled_clients`` (set by the server).

    Raises:
        InputError: Bad values, or partial replies: clipping bounds a client's whole update.
    """
    if dp is None or dp.get("clipping", "none") == "none":
        return None
    values = dict(dp)
    if values.get("clipping") not in DP_CLIPPING:
        raise InputError(f"dp.clipping must be one of none, fixed, adaptive: {values!r}")
    if values.setdefault("side", "server") not in DP_SIDES:
        raise InputError(f"dp.side must be server or client, got {values['side']!r}")
    if partial:
        raise InputError(
            f"DP clipping ({values['clipping']}, {values['side']} side) bounds each client's "
            f"whole update, and {flower} is set to partial replies: set "
            "federation.strategy_options.partial_replies = false or choose a whole-model strategy"
        )
    return values


def wrap_dp(strategy: Strategy, dp: Mapping[str, Any]) -> Strategy:
    """``strategy`` inside Flower's DP clipping wrapper that ``dp`` names."""

    noise = float(dp.get("noise_multiplier", 0.0))
    sampled = int(dp["num_sampled_clients"])
    norm = float(dp.get("clipping_norm", 1.0))
    if dp["clipping"] == "fixed":
        fixed = (
            DifferentialPrivacyServerSideFixedClipping
            if dp["side"] == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )
        return fixed(strategy, noise, norm, sampled)
    adaptive = (
        DifferentialPrivacyServerSideAdaptiveClipping
        if dp["side"] == "server"
        else DifferentialPrivacyClientSideAdaptiveClipping
    )
    return adaptive(
        strategy,
        noise,
        sampled,
        initial_clipping_norm=norm,
        target_clipped_quantile=float(dp.get("target_clipped_quantile", 0.5)),
        clip_norm_lr=float(dp.get("clip_norm_lr", 0.2)),
        clipped_count_stddev=dp.get("clipped_count_stddev"),
    )


STATE_NUMBERS = ("clipping_norm",)
"""Numeric attributes that are state, not options (an adaptive clipping norm)."""


def _export(obj: object, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Put the array-like and numeric attributes of ``obj`` into ``out`` (see server_state)."""
    for name, value in vars(obj).items():
        key = f"{prefix}/{name}"
        if isinstance(value, Strategy):
            _export(value, key, out)
        elif isinstance(value, ArrayRecord):
            for k, array in value.items():
                out[f"{key}/record/{k}"] = array.numpy()
        elif isinstance(value, np.ndarray):
            out[f"{key}/array"] = value
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            for k, array in value.items():
                out[f"{key}/dict/{k}"] = array
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            for i, array in enumerate(value):
                out[f"{key}/list/{i:06d}"] = array
        elif name in STATE_NUMBERS and isinstance(value, float | int):
            out[f"{key}/number"] = np.asarray(value)


def _import(obj: object, prefix: str, state: Mapping[str, np.ndarray]) -> None:
    """Set the attributes :func:`_export` wrote for ``obj`` back from ``state``."""
    for name, value in vars(obj).items():
        if isinstance(value, Strategy):
            _import(value, f"{prefix}/{name}", state)
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    head = f"{prefix}/"
    for key, array in state.items():
        if not key.startswith(head):
            continue
        parts = key[len(head) :].split("/", 2)
        if len(parts) < 2 or isinstance(getattr(obj, parts[0], None), Strategy):
            continue
        name, kind = parts[0], parts[1]
        found.setdefault(name, {}).setdefault(kind, {})[parts[2] if len(parts) > 2 else ""] = array
    for name, kinds in found.items():
        for kind, items in kinds.items():
            if kind == "record":
                setattr(obj, name, ArrayRecord({k: Array(v) for k, v in items.items()}))
            elif kind == "array":
                setattr(obj, name, items[""])
            elif kind == "dict":
                setattr(obj, name, dict(items))
            elif kind == "list":
                setattr(obj, name, [items[k] for k in sorted(items)])
            elif kind == "number":
                setattr(obj, name, items[""].item())
