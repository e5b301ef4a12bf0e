"""Overhead of the federation machinery: the same local training in one process vs ``simulate``.

(a) plain: one Python process runs, round by round, every client's ``train_local`` on its shard
    (same partition, seeds, stages and local epochs as the simulation), averages the replies per
    key weighted by examples (what modality-aware aggregation does) and evaluates the global
    model on the server split each round, as the ServerApp does;
(b) simulate: ``fedrs simulate`` with the same experiment: Flower ServerApp + ClientApps on Ray
    actors (startup, serialisation, scheduling included).

Both use all cores: (a) gives torch every core, (b) runs one client per core.  The last line is
a JSON object with both wall times and their ratio (simulate / plain).

    python bench/federation_overhead.py [--config experiments/default.toml] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def plain_federation(settings) -> float:  # type: ignore[no-untyped-def]
    from fedrs.clients.app import load_client_data
    from fedrs.pipeline import load_run_data
    from fedrs.train import build_model, evaluate, train_local

    config = settings.experiment()
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"threads": os.cpu_count() or 1})}
    )
    started = time.perf_counter()
    data = load_run_data(config.data)
    model = build_model(config)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = config.partition.clients
    shards = [
        load_client_data(config, {"partition-id": c, "num-partitions": clients})
        for c in range(clients)
    ]
    for round_ in range(1, config.federation.rounds + 1):
        sums: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        for shard in shards:
            local = build_model(config)
            local.load_state_dict(global_state)
            stage = 1 if round_ <= config.federation.stage1_rounds else 2
            metrics = train_local(
                local,
                shard.archive,
                shard.rows,
                config,
                modalities=shard.modalities,
                stage=stage,
                epochs=config.federation.local_epochs,
                seed=(config.seed, round_, shard.client_id),
            )
            state = local.state_dict()
            n = metrics["num-examples"]
            for key in local.keys_for_modalities(shard.modalities):
                value = state[key].double() * n
                sums[key] = sums[key] + value if key in sums else value
                weights[key] = weights.get(key, 0.0) + n
        for key, total in sums.items():
            global_state[key] = (total / weights[key]).to(global_state[key].dtype)
        model.load_state_dict(global_state)
        result = evaluate(model, data, config)
        print(f"plain round {round_}: mAP@20 {result['map@20']:.4f}", flush=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments" / "default.toml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    from fedrs.cli.simulate import prepare_data_with_progress
    from fedrs.server.simulation import run_simulation
    from fedrs.settings import RunSettings

    overrides = {"federation.rounds": args.rounds, "partition.clients": args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        settings = RunSettings(str(args.config.resolve()), overrides, str(Path(tmp) / "sim"))
        prepare_data_with_progress(settings)  # data built once, outside both timings
        plain_s = plain_federation(settings)
        started = time.perf_counter()
        summary = run_simulation(settings)
        simulate_s = time.perf_counter() - started
    figures = {
        "clients": args.clients,
        "rounds": args.rounds,
        "plain_s": round(plain_s, 1),
        "simulate_s": round(simulate_s, 1),
        "simulate_vs_plain_ratio": round(simulate_s / plain_s, 3),
        "simulate_map@20": summary["map@20"],
        "cores": os.cpu_count(),
    }
    print(f"plain process      {plain_s:8.1f} s")
    print(f"fedrs simulate     {simulate_s:8.1f} s   ({simulate_s / plain_s:.2f}x plain)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
