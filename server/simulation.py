"""Run the ServerApp and ClientApps on Flower's simulation engine (Ray actors).

Each simulated client is a Ray actor with ``federation.num_cpus`` CPUs and ``federation.num_gpus``
GPUs (fractions allowed: 0.25 puts four clients on one GPU).  GPUs asked for where none is seen
are refused before anything starts: Ray would otherwise wait for them until the round timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from fedrs.errors import FedrsError, InputError
from fedrs.server.app import RoundCallback
from fedrs.settings import RunSettings


def visible_gpus(ray_address: str | None) -> float:
    """GPUs the simulation could use: the Ray cluster's (with an address), else this machine's."""
    if ray_address:
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, logging_level=logging.ERROR)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        ray.shutdown()
        return gpus
    import torch

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


def run_simulation(
    settings: RunSettings,
    *,
    on_round: RoundCallback | None = None,
) -> dict[str, Any]:
    """Run a whole federated simulation; returns the summary written to ``<out>/summary.json``."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedrs.clients.app import make_client_app
    from fedrs.server.app import make_server_app

    config = settings.experiment()
    fed = config.federation
    check_resources(fed.num_cpus, fed.num_gpus, fed.ray_address)
    if fed.ray_address and config.data.cache_dir is None:
        # a cluster's workers run with the environment of `ray start`, not this process':
        # name the cache folder ($FEDRS_CACHE_DIR or the default) in the run's own settings
        from fedrs.pipeline import cache_base

        overrides = settings.overrides | {"data.cache_dir": str(cache_base(config.data).resolve())}
        settings = dataclasses.replace(settings, overrides=overrides)
        config = settings.experiment()
    num_clients = config.partition.clients
    results: dict[str, Any] = {}
    server_app = make_server_app(
        settings, num_clients=num_clients, on_round=on_round, results=results
    )
    client_app = make_client_app(settings)
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": True,
    }
    if fed.ray_address:
        init_args["address"] = fed.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
        init_args["num_gpus"] = int(visible_gpus(None)) if fed.num_gpus > 0 else 0
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": fed.num_cpus, "num_gpus": fed.num_gpus},
        "init_args": init_args,
    }
    flwr_run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if "summary" not in results:
        raise FedrsError("the simulation ended without a result (see the log above)")
    summary: dict[str, Any] = results["summary"]
    return summary
