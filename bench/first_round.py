"""The first federated rounds of stage 1, opened up: each client's codec, their average, and the
centralized epochs from the same start.

Every client of the partition trains stage 1 for ``federation.local_epochs`` epochs at FedAvg's B
(``federation.local_batch_size``) from the one initial model, exactly as in round 1 of
``fedrs simulate``; the per-modality average (each state-dict key over the clients that train
it, weighted by their patches holding the modality: what modality-aware aggregation sends back)
is then measured next to each client's model, the initial model, and a centralized run of the
same number of epochs (batch ``train.batch_size``, one optimizer) on all the training patches.
Figures: bits per pixel of the real bitstreams and PSNR of the decoded test patches per modality.

``--rounds R`` goes on with rounds 2..R of stage 1 from each average (the clients' own figures
are measured in round 1 only) and gives the centralized run the same passes, ``R x
local_epochs`` epochs; for each modality it then says which centralized epoch the last average
first matches in PSNR, and so how many federated passes a centralized pass is worth.
``--in-turn`` trains the clients of each round one after another instead (cyclic weight
transfer, ``federation.cyclic_rounds``): each from the model the previous one left, in a
seeded order, the round's model being the last one's; ``--server-lr`` does not apply then.
``--server-lr T`` moves the codecs' convolutions (weights and biases of ``g_a``, ``g_s``,
``h_a``, ``h_s``) by T times the mean update instead of once (``fedavgm`` with
``server_learning_rate = T`` and ``server_keys`` on them; the GDN and entropy-model parameters
are averaged plainly).

Each ``--set`` group after the first is another setting run side by side (e.g. the codec init:
``--set model.codec_init=torch --set model.codec_init=unit`` runs both); the last line is one
JSON object with every figure.

    python bench/first_round.py [--config experiments/modality-split.toml] [--queries 200]
        [--rounds 1] [--server-lr 1 | --in-turn] [--threads 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrs.client_round import client_config
from fedrs.config import ExperimentConfig, load_config
from fedrs.convergence import first_reaching
from fedrs.models import JointModel
from fedrs.pipeline import RunData, client_rows, load_run_data
from fedrs.train import LocalTrainer, build_model, train_local, validate

REPO = Path(__file__).resolve().parents[1]
CONVOLUTIONS = re.compile(r"^codecs\.[^.]+\.(g_a|g_s|h_a|h_s)\.\d+\.(weight|bias)$")
"""The keys ``--server-lr`` extrapolates: the codecs' convolutions."""


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


def server_step(
    start: Mapping[str, Tensor], average: Mapping[str, Tensor], lr: float
) -> dict[str, Tensor]:
    """``average`` with each codec convolution (:data:`CONVOLUTIONS`) moved ``lr`` times the
    mean update from ``start`` (FedAvgM without momentum); every other key as averaged."""
    out = dict(average)
    if lr != 1.0:
        for key in average:
            if CONVOLUTIONS.match(key):
                step = average[key].double() - start[key].double()
                out[key] = (start[key].double() + lr * step).to(start[key].dtype)
    return out


def matching_epoch(federated: float, centralized: Sequence[float]) -> int | None:
    """The first centralized epoch (from 1) whose PSNR reaches ``federated``; None when none
    does (:func:`fedrs.convergence.first_reaching` over the epochs)."""
    found = first_reaching([{"psnr": psnr} for psnr in centralized], "psnr", federated)
    return None if found is None else int(found["round"])


def figures(model: JointModel, data: RunData, rows: np.ndarray) -> dict[str, list[float]]:
    """``{modality: [bpp, PSNR dB]}`` of ``rows`` coded to bitstreams and decoded
    (:func:`fedrs.train.validate`)."""
    found = validate(model, data.archive, rows)
    return {
        m: [round(bpp, 4), round(float(found["psnr"][m]), 2)]
        for m, bpp in found["bpp"].items()
        if bpp is not None
    }


def train_clients(
    config: ExperimentConfig,
    data: RunData,
    start: Mapping[str, Tensor],
    round_: int,
    in_turn: bool = False,
) -> list[tuple[int, JointModel, np.ndarray, tuple[str, ...]]]:
    """Every client's stage-1 round from ``start``, as ``fedrs simulate`` trains it: its id,
    model, rows and modalities.  ``in_turn``: one after another in a seeded order,
    each from the model the previous one left (listed in that order)."""
    clients = config.partition.clients
    order = range(clients)
    if in_turn:
        order = np.random.default_rng([config.seed, round_]).permutation(clients).tolist()
    trained = []
    for cid in order:
        shard, modalities = client_rows(data, config.partition, clients, cid)
        model = build_model(config)
        model.load_state_dict(start)
        train_local(
            model,
            data.archive,
            shard,
            client_config(config, {}),
            modalities=modalities,
            stage=1,
            epochs=config.federation.local_epochs,
            seed=(config.seed, round_, cid),
        )
        trained.append((cid, model, shard, modalities))
        if in_turn:
            start = {k: v.clone() for k, v in model.state_dict().items()}
    return trained


def first_round(
    config: ExperimentConfig,
    queries: int,
    rounds: int = 1,
    server_lr: float = 1.0,
    in_turn: bool = False,
) -> dict[str, Any]:
    """The figures of one setting (see the module docstring)."""
    data = load_run_data(config.data)
    rows = data.query_rows[:queries]
    epochs = config.federation.local_epochs
    start = build_model(config)
    init = {k: v.clone() for k, v in start.state_dict().items()}
    result: dict[str, Any] = {"initial": figures(start, data, rows), "clients": [], "rounds": []}
    current = init
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        clients = train_clients(config, data, current, round_, in_turn)
        if round_ == 1:
            for cid, model, shard, modalities in clients:
                entry = {
                    "client": cid,
                    "modalities": list(modalities),
                    "patches": len(shard),
                    "figures": figures(model, data, rows),
                }
                result["clients"].append(entry)
                print(f"client {cid} {','.join(modalities):6s} {entry['figures']}", flush=True)
        if in_turn:
            current = {k: v.clone() for k, v in clients[-1][1].state_dict().items()}
        else:
            averaged = average_states(
                current,
                [model.state_dict() for _, model, _, _ in clients],
                [set(model.keys_for_modalities(mods)) for _, model, _, mods in clients],
                [float(len(shard)) for _, _, shard, _ in clients],
            )
            current = server_step(current, averaged, server_lr)
        average = build_model(config)
        average.load_state_dict(current)
        result["rounds"].append(figures(average, data, rows))
        print(
            f"round {round_}: {'in turn' if in_turn else 'average'} {result['rounds'][-1]} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    result["average"] = result["rounds"][0]
    central = build_model(config)
    central.load_state_dict(init)
    trainer = LocalTrainer(
        central, data.archive, data.train_rows, config, stage=1, seed=config.seed
    )
    result["centralized"] = []
    for epoch in range(rounds * epochs):
        trainer.train(1)
        result["centralized"].append(figures(central, data, rows))
        print(f"centralized epoch {epoch + 1}: {result['centralized'][-1]}", flush=True)
    result["matches"] = {
        m: matching_epoch(psnr, [f[m][1] for f in result["centralized"]])
        for m, (_, psnr) in result["rounds"][-1].items()
    }
    result["queries"] = len(rows)
    result["passes"] = rounds * epochs
    result["in_turn"] = in_turn
    return result


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def table(name: str, result: Mapping[str, Any]) -> None:
    print(f"\n{name}: {result['queries']} test patches; bpp / PSNR dB")
    print("| model | S1 | S2 |\n| --- | --- | --- |")

    def cell(f: Mapping[str, list[float]], m: str) -> str:
        return f"{f[m][0]:.3f} / {f[m][1]:.2f}" if m in f else "-"

    print(f"| initial | {cell(result['initial'], 's1')} | {cell(result['initial'], 's2')} |")
    ranges = []
    for m in ("s1", "s2"):
        own = [c["figures"][m] for c in result["clients"] if m in c["modalities"]]
        ranges.append(f"{spread([f[0] for f in own])} / {spread([f[1] for f in own])}")
    print(f"| each client holding the modality, round 1 (range) | {ranges[0]} | {ranges[1]} |")
    federated = "clients in turn" if result.get("in_turn") else "average"
    for round_, f in enumerate(result["rounds"], 1):
        print(f"| {federated}, round {round_} | {cell(f, 's1')} | {cell(f, 's2')} |")
    for epoch, f in enumerate(result["centralized"], 1):
        print(f"| centralized, epoch {epoch} | {cell(f, 's1')} | {cell(f, 's2')} |")
    for m, epoch in result["matches"].items():
        found = (
            f"centralized epoch {epoch}: a centralized pass is worth "
            f"{result['passes'] / epoch:.2g} federated passes"
            if epoch
            else "no centralized epoch (the average is ahead)"
        )
        print(f"{m}: the last average's PSNR is first reached at {found}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/modality-split.toml")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="stage-1 rounds")
    parser.add_argument("--server-lr", type=float, default=1.0, help="on the convolutions")
    parser.add_argument("--in-turn", action="store_true", help="clients one after another")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="one setting a flag")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.server_lr <= 0:
        parser.error("--rounds must be at least 1 and --server-lr positive")
    if args.in_turn and args.server_lr != 1.0:
        parser.error("--server-lr steps an average: not with --in-turn")
    torch.set_num_threads(args.threads)
    settings = args.set or [""]
    results = {}
    for setting in settings:
        config = load_config(args.config, [setting] if setting else None)
        print(f"--- {setting or 'the config as it is'}", flush=True)
        results[setting or "config"] = first_round(
            config, args.queries, args.rounds, args.server_lr, args.in_turn
        )
    for name, result in results.items():
        table(name, result)
    print(
        json.dumps(
            {
                "config": str(args.config),
                "rounds": args.rounds,
                "server_lr": args.server_lr,
                "in_turn": args.in_turn,
                "settings": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
