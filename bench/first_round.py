"""The first federated round of stage 1, opened up: each client's codec, their average, and the
centralized epochs from the same start.

Every client of the partition trains stage 1 for ``federation.local_epochs`` epochs at FedAvg's B
(``federation.local_batch_size``) from the one initial model, exactly as in round 1 of
``fedrs simulate``; the per-modality average (each state-dict key over the clients that train
it, weighted by their patches holding the modality: what modality-aware aggregation sends back)
is then measured next to each client's model, the initial model, and a centralized run of the
same number of epochs (batch ``train.batch_size``, one optimizer) on all the training patches.
Figures: bits per pixel of the real bitstreams and PSNR of the decoded test patches per modality.

Each ``--set`` group after the first is another setting run side by side (e.g. the codec init:
``--set model.codec_init=torch --set model.codec_init=unit`` runs both); the last line is one
JSON object with every figure.

    python bench/first_round.py [--config experiments/modality-split.toml] [--queries 200]
        [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrs.client_round import client_config
from fedrs.config import ExperimentConfig, load_config
from fedrs.models import JointModel
from fedrs.pipeline import RunData, client_rows, load_run_data
from fedrs.train import LocalTrainer, build_model, train_local, validate

REPO = Path(__file__).resolve().parents[1]


def average_states(
    init: Mapping[str, Tensor],
    states: Sequence[Mapping[str, Tensor]],
    trained: Sequence[set[str]],
    weights: Sequence[float],
) -> dict[str, Tensor]:
    """Each floating-point key of ``init`` averaged over the states whose ``trained`` keys hold
    it, weighted by ``weights``; a key no state trains keeps its initial value."""
    out: dict[str, Tensor] = {}
    for key, start in init.items():
        owners = [i for i, keys in enumerate(trained) if key in keys]
        if not owners or not start.is_floating_point():
            out[key] = start.clone()
            continue
        total = sum(weights[i] for i in owners)
        mean = sum(states[i][key].double() * (weights[i] / total) for i in owners)
        out[key] = torch.as_tensor(mean).to(start.dtype)
    return out


def figures(model: JointModel, data: RunData, rows: np.ndarray) -> dict[str, list[float]]:
    """``{modality: [bpp, PSNR dB]}`` of ``rows`` coded to bitstreams and decoded
    (:func:`fedrs.train.validate`)."""
    found = validate(model, data.archive, rows)
    return {
        m: [round(bpp, 4), round(float(found["psnr"][m]), 2)]
        for m, bpp in found["bpp"].items()
        if bpp is not None
    }


def first_round(config: ExperimentConfig, queries: int) -> dict[str, Any]:
    """The figures of one setting (see the module docstring)."""
    data = load_run_data(config.data)
    rows = data.query_rows[:queries]
    clients = config.partition.clients
    epochs = config.federation.local_epochs
    start = build_model(config)
    init = {k: v.clone() for k, v in start.state_dict().items()}
    result: dict[str, Any] = {"initial": figures(start, data, rows), "clients": []}
    states, trained, weights = [], [], []
    for cid in range(clients):
        shard, modalities = client_rows(data, config.partition, clients, cid)
        model = build_model(config)
        model.load_state_dict(init)
        local = client_config(config, {})
        started = time.perf_counter()
        train_local(
            model,
            data.archive,
            shard,
            local,
            modalities=modalities,
            stage=1,
            epochs=epochs,
            seed=(config.seed, 1, cid),
        )
        entry = {
            "client": cid,
            "modalities": list(modalities),
            "patches": len(shard),
            "figures": figures(model, data, rows),
            "train_s": round(time.perf_counter() - started, 1),
        }
        result["clients"].append(entry)
        print(f"client {cid} {','.join(modalities):6s} {entry['figures']}", flush=True)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        trained.append(set(model.keys_for_modalities(modalities)))
        weights.append(float(len(shard)))
    average = build_model(config)
    average.load_state_dict(average_states(init, states, trained, weights))
    result["average"] = figures(average, data, rows)
    central = build_model(config)
    central.load_state_dict(init)
    trainer = LocalTrainer(
        central, data.archive, data.train_rows, config, stage=1, seed=config.seed
    )
    result["centralized"] = []
    for _ in range(epochs):
        trainer.train(1)
        result["centralized"].append(figures(central, data, rows))
    result["queries"] = len(rows)
    return result


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def table(name: str, result: Mapping[str, Any]) -> None:
    print(f"\n{name}: {result['queries']} test patches; bpp / PSNR dB")
    print("| model | S1 | S2 |\n| --- | --- | --- |")

    def cell(f: Mapping[str, list[float]], m: str) -> str:
        return f"{f[m][0]:.3f} / {f[m][1]:.2f}" if m in f else "-"

    for label, f in (("initial", result["initial"]), ("average", result["average"])):
        print(f"| {label} | {cell(f, 's1')} | {cell(f, 's2')} |")
    ranges = []
    for m in ("s1", "s2"):
        own = [c["figures"][m] for c in result["clients"] if m in c["modalities"]]
        ranges.append(f"{spread([f[0] for f in own])} / {spread([f[1] for f in own])}")
    print(f"| each client holding the modality (range) | {ranges[0]} | {ranges[1]} |")
    for epoch, f in enumerate(result["centralized"], 1):
        print(f"| centralized, epoch {epoch} | {cell(f, 's1')} | {cell(f, 's2')} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/modality-split.toml")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], help="one setting a flag")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    settings = args.set or [""]
    results = {}
    for setting in settings:
        config = load_config(args.config, [setting] if setting else None)
        print(f"--- {setting or 'the config as it is'}", flush=True)
        results[setting or "config"] = first_round(config, args.queries)
    for name, result in results.items():
        table(name, result)
    print(json.dumps({"config": str(args.config), "settings": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
