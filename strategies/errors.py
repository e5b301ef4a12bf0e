"""Errors raised by the aggregation strategies.

A training round that cannot produce a model update stops the run with a typed error instead
of silently keeping the old model.  The errors derive from Flower's ``AggregationError`` as well
as from :class:`fedrs.errors.FedrsError`, so a ServerApp run by a SuperLink exits with Flower's
"aggregation error" exit code and the message below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.serverapp.exception import AggregationError

from fedrs.errors import FedrsError

_MAX_LISTED_FAILURES = 5
_MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class ClientFailure:
    """One client reply that was not used for aggregation.

    Attributes:
        node_id: Flower node id of the client (``0`` when unknown, e.g. a missing reply).
        reason: Why the reply was dropped, on one line.
        detail: The full text the client sent (e.g. a traceback), when there is one.
    """

    node_id: int
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        reason = self.reason
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 3] + "..."
        return f"node {self.node_id}: {reason}"


def _describe_failures(failures: Sequence[ClientFailure]) -> str:
    listed = "; ".join(str(f) for f in failures[:_MAX_LISTED_FAILURES])
    more = len(failures) - _MAX_LISTED_FAILURES
    if more > 0:
        listed += f"; ... and {more} more"
    return listed


class RoundFailedError(FedrsError, AggregationError):
    """A training round ended without an acceptable set of client replies.

    Raised by ``aggregate_train`` when fewer replies than ``min_successful`` were usable, or
    when ``accept_failures=False`` and at least one sampled client failed.

    Attributes:
        server_round: The round that failed.
        clients_ok: Number of usable replies.
        clients_failed: Number of sampled clients whose reply was unusable or missing.
        failures: The dropped replies with their reasons.
    """

    def __init__(
        self,
        server_round: int,
        clients_ok: int,
        clients_failed: int,
        failures: Sequence[ClientFailure],
        requirement: str,
    ) -> None:
        self.server_round = server_round
        self.clients_ok = clients_ok
        self.clients_failed = clients_failed
        self.failures = tuple(failures)
        message = (
            f"round {server_round}: {clients_ok} successful client replies, "
            f"{clients_failed} failed ({requirement})"
        )
        if self.failures:
            message += f": {_describe_failures(self.failures)}"
        super().__init__(message)


class NoSuccessfulClientsError(RoundFailedError):
    """A training round in which no client returned a usable reply."""

    def __init__(
        self,
        server_round: int,
        clients_failed: int,
        failures: Sequence[ClientFailure],
    ) -> None:
        super().__init__(
            server_round,
            0,
            clients_failed,
            failures,
            "no successful client: the global model cannot be updated",
        )


class NonFiniteModelError(RoundFailedError):
    """The usable replies of a round merge into a model holding NaN or infinite values.

    Raised by ``aggregate_train`` before the merged model is adopted, so the run stops loudly
    and the last good global model (and checkpoint) stays.

    Attributes:
        key: The first model key whose merged value is not finite.
    """

    def __init__(
        self,
        server_round: int,
        key: str,
        clients_ok: int,
        clients_failed: int,
        failures: Sequence[ClientFailure] = (),
    ) -> None:
        self.key = key
        super().__init__(
            server_round,
            clients_ok,
            clients_failed,
            failures,
            f"the merged model holds NaN or infinite values in {key!r}; it is not adopted",
        )
