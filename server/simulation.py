"""Run the ServerApp and ClientApps on Flower's simulation runtime (the one ``flwr run`` uses).

:func:`run_simulation` starts a private ``flower-superlink --simulation`` on a free loopback port
(its own ``FLWR_HOME``, no per-run dependency installation: the installed fedrs runs), submits
the fedrs apps with ``flwr run`` and a federation config (number of simulated SuperNodes, Ray
resources per client), follows the rounds from ``<out>/history.json``, and stops every process
it started (the SuperLink, the ``flwr-simulation`` process it spawns, Ray's workers) on success,
failure, Ctrl-C and SIGTERM.  The outcome is judged from the run's final status and a fresh
``<out>/summary.json``: a run whose ServerApp failed is an error here, even though Flower's CLI
reports it as submitted.

Each simulated client is a Ray actor with ``federation.num_cpus`` CPUs and
``federation.num_gpus`` GPUs (fractions allowed: 0.25 puts four clients on one GPU).  GPUs asked
for where none is seen are refused before anything starts: Ray would otherwise wait for them
until the round timeout.  The SuperLink's log goes to ``<out>/logs/superlink.log``;
``verbose`` prints it as it comes, with the run's own log (ServerApp, ClientApps, Ray:
``flwr log --stream`` into ``<out>/logs/run.log``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import tomli_w
import torch

from fedrs import __version__
from fedrs.deploy.local import LocalDeployment
from fedrs.deploy.run import RoundCallback, run_federation
from fedrs.errors import InputError
from fedrs.pipeline import cache_base
from fedrs.settings import RunSettings

APP_COMPONENTS = {"serverapp": "fedrs.server.app:app", "clientapp": "fedrs.clients.app:app"}
"""The Flower apps of fedrs (``[tool.flwr.app.components]``)."""
APP_CONFIG: dict[str, Any] = {
    "config": "",
    "overrides": "",
    "out": "",
    "resume": False,
    "num-clients": 0,
}
"""The run config the apps read (``[tool.flwr.app.config]``), with its defaults."""
STARTUP_S = 300.0
"""Seconds a run may take beyond its rounds' timeouts (Ray, model and data set-up)."""


def visible_gpus(ray_address: str | None) -> float:
    """GPUs the simulation could use: the Ray cluster's (with an address), else this machine's."""
    if ray_address:
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, logging_level=logging.ERROR)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        ray.shutdown()
        return gpus

    return float(torch.cuda.device_count())


def check_resources(num_cpus: float, num_gpus: float, ray_address: str | None) -> None:
    """Refuse a GPU request nobody can serve, and CPU requests larger than this machine."""
    if num_gpus > 0:
        gpus = visible_gpus(ray_address)
        if gpus == 0:
            where = f"the Ray cluster at {ray_address}" if ray_address else "this machine"
            raise InputError(
                f"--num-gpus {num_gpus:g} asked for, but {where} has no GPU; use --num-gpus 0"
            )
    if ray_address is None and num_cpus > (os.cpu_count() or 1):
        raise InputError(
            f"--num-cpus {num_cpus:g} per client exceeds the {os.cpu_count()} CPUs of this machine"
        )


def write_app(folder: Path) -> Path:
    """A Flower app folder for ``flwr run``: a ``pyproject.toml`` naming the fedrs apps.

    The bundle carries configuration only; the installed fedrs package runs (a bundled copy
    of the sources would shadow it, see DESIGN's note on bundles).
    """

    project = {
        "project": {
            "name": "fedrs",
            "version": __version__,
            "description": "fedrs federated simulation",
            "license": "Apache-2.0",
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedrs",
                    "components": APP_COMPONENTS,
                    "config": APP_CONFIG,
                }
            }
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return folder


def federation_config(config: Any, *, verbose: bool = False) -> dict[str, Any]:
    """``flwr run --federation-config`` values: SuperNodes and Ray resources of the experiment."""
    fed = config.federation
    cpus = os.cpu_count() or 1
    client_cpus = int(fed.num_cpus)
    if client_cpus != fed.num_cpus:
        # Flower takes whole CPUs per client: a fraction f of this machine's n CPUs is
        # 1 CPU of n / f logical ones (as many clients per machine)
        if fed.ray_address:
            raise InputError(
                f"--num-cpus {fed.num_cpus:g}: a Ray cluster takes whole CPUs per client"
            )
        client_cpus, cpus = 1, max(1, round(cpus / fed.num_cpus))
    values: dict[str, Any] = {
        "num-supernodes": int(config.partition.clients),
        "client-resources-num-cpus": client_cpus,
        "client-resources-num-gpus": float(fed.num_gpus),
        "init-args-logging-level": "INFO" if verbose else "ERROR",
        "init-args-log-to-driver": True,
        "verbose": False,
    }
    if not fed.ray_address:  # joining a cluster (RAY_ADDRESS) takes no resource counts
        values["init-args-num-cpus"] = cpus
        values["init-args-num-gpus"] = int(visible_gpus(None)) if fed.num_gpus > 0 else 0
    return values


class LogFollower:
    """Prints the lines a log file gains (``--verbose``), called at each poll."""

    def __init__(self, path: Path, write: Callable[[str], None]) -> None:
        self.path = path
        self.write = write
        self.offset = 0

    def __call__(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1
        if end:
            self.offset += end
            for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
                self.write(line)


def run_simulation(
    settings: RunSettings,
    *,
    on_round: RoundCallback | None = None,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a whole federated simulation; returns the summary written to ``<out>/summary.json``.

    Args:
        settings: the experiment, its overrides, the output folder and the resume flag.
        on_round: called for each round logged.
        verbose: print Flower's and Ray's log lines (``<out>/logs/superlink.log``) with ``echo``.
        echo: where ``verbose`` lines go.

    Raises:
        InputError: resources nobody can serve.
        DeploymentError: the run failed (the ServerApp's error, e.g. too few clients), a
            process did not start, or the run did not end within its rounds' timeouts.
    """

    config = settings.experiment()
    fed = config.federation
    check_resources(fed.num_cpus, fed.num_gpus, fed.ray_address)
    env: dict[str, str] = {}
    if fed.ray_address:
        # a cluster's workers run with the environment of `ray start`, not this process':
        # name the cache folder ($FEDRS_CACHE_DIR or the default) in the run's own settings

        if config.data.cache_dir is None:
            overrides = settings.overrides | {
                "data.cache_dir": str(cache_base(config.data).resolve())
            }
            settings = dataclasses.replace(settings, overrides=overrides)
            config = settings.experiment()
        env["RAY_ADDRESS"] = fed.ray_address
    out = settings.out_dir
    app = write_app(out / "flower-app")
    timeout = STARTUP_S + fed.rounds * fed.round_timeout_s
    with LocalDeployment(out, [], simulation=True, env=env) as deployment:
        followers = [
            LogFollower(deployment.logs / name, echo) for name in ("superlink.log", "run.log")
        ]

        def follow() -> None:
            for follower in followers:
                follower()

        return run_federation(
            deployment,
            settings,
            app=app,
            timeout=timeout,
            on_round=on_round,
            on_poll=follow if verbose else None,
            on_submit=deployment.stream_run_log if verbose else None,
            federation_config=federation_config(config, verbose=verbose),
        )
