"""Check a whole experiment once, before any data is prepared and before Ray starts.

Everything a client or the server builds from an experiment is built or checked here: the
partition and its options (without data: the names, and the values a partitioner can judge
without metadata), the model with its codecs, the update codec and the strategy with its
options.  A bad combination is then one :class:`~fedrs.errors.InputError` naming the component
and the option, not an error on every client in round 1.  Every command that runs an
experiment (``simulate``, ``centralized``, ``compare``, ``deploy-local``) calls
:func:`check_experiment` before its data preparation.
"""

from __future__ import annotations

import logging

import torch

from fedrs.config import ExperimentConfig
from fedrs.devices import autocast, resolve_device
from fedrs.errors import InputError
from fedrs.partitions import check_partition
from fedrs.server_strategy import strategy_for
from fedrs.train import build_model


def check_experiment(config: ExperimentConfig) -> None:
    """Build or check every component of ``config``; cheap (a fraction of a second).

    Args:
        config: A loaded experiment (file and overrides already merged and validated).

    Raises:
        InputError: Unknown partition, partition option or bad option value; a model that
            cannot be built; a bad update codec option; unknown strategy or strategy option,
            or a bad option value; a ``train.device`` this process does not see (``"cuda"``
            without a GPU), or ``train.amp = "bf16"`` on a GPU without bfloat16.  The message
            names the component.
    """
    _check_device(config)
    _check_partition(config)
    _check_model(config)
    _check_update_codec(config)
    _check_strategy(config)


def _named(word: str, label: str, exc: Exception) -> InputError:
    """``exc`` as an InputError whose message names the component (``label``) where it does not
    already mention ``word``."""
    message = str(exc)
    return InputError(message if word in message else f"{label}: {message}")


def _check_device(config: ExperimentConfig) -> None:
    autocast(resolve_device(config.train.device), config.train.amp)  # built, not entered


def _check_partition(config: ExperimentConfig) -> None:
    part = config.partition
    try:
        check_partition(part.name, part.clients, seed=part.seed, **part.options)
    except InputError as exc:
        raise _named("partition", f"partition {part.name!r}", exc) from None


def _check_model(config: ExperimentConfig) -> None:
    try:
        with torch.random.fork_rng(devices=[]):  # build_model seeds torch: leave no trace
            build_model(config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _named("model", "model", exc) from None


def _check_update_codec(config: ExperimentConfig) -> None:
    fed = config.federation
    try:
        fed.build_update_codec(config.seed)
    except (TypeError, ValueError) as exc:
        raise _named("update codec", f"update codec {fed.update_codec!r}", exc) from None


def _check_strategy(config: ExperimentConfig) -> None:
    fed = config.federation
    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    flower_log.setLevel(logging.ERROR)  # a strategy built only to check it warns of its own
    try:
        strategy_for(config, config.partition.clients)
    except (TypeError, ValueError) as exc:
        raise _named("strategy", f"strategy {fed.strategy!r}", exc) from None
    finally:
        flower_log.setLevel(level)
