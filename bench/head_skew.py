"""The hash head under label skew: centralized against federated training on frozen latents.

The codecs of a model are frozen and the latents the hash head reads (the rounded latents the
bitstreams carry) are computed once for the training, validation, query and database rows of
the experiment.  A fresh hash head (the experiment's seeded init) is then trained

- centralized: ``--epochs`` epochs on batches of ``train.batch_size`` over all training rows;
- federated, for each partition of ``--partitions``: ``--rounds`` rounds in which every client
  trains a copy of the global head for H epochs of ``federation.head_batch_size`` on its rows
  (each H of ``--head-epochs``), exactly the head phase of a stage-2 client round
  (:func:`fedrs.train.fit_hash_head`); the server averages the copies, each key over the clients
  that train it weighted by their rows (modality-aware: an S1-only client does not average
  into the S2 encoder), and sets the whitening from the statistics pooled over all clients;
  with ``--in-turn`` the clients of a round instead train one after another in a seeded order,
  each from the head the previous one left (``federation.cyclic_rounds``: cyclic weight
  transfer), and the last one's head, whitened with the pooled statistics, ends the round;

the centralized side likewise whitens with the statistics of all its rows after every epoch.
Both sides are read at the epoch or round of their best validation mAP@20 (the plateau rule's
figure) and at their last one: mAP@20 of the test queries against the database in both
conventions (AP over the top 20 / over min(k, R)).  What differs between partitions is what
each client's labels look like, measured as the label skew: the mean over clients, weighted by
rows, of the total-variation distance between the client's and the whole training set's label
frequencies (0 when every client sees the classes in the same proportions).

It takes seconds a round, so the federated head's gap can be measured where a full federation
takes hours; the last line is one JSON object with every figure.

    python bench/head_skew.py [--config runs/x/config.toml] [--model runs/x/model.pt]
        [--partitions iid,season,modality,country] [--rounds 8] [--head-epochs 32]
        [--epochs 8] [--seeds 0] [--in-turn] [--threads 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrs.config import ExperimentConfig, load_config
from fedrs.models.statistics import apply_moments, moments_from_features, pool_moments
from fedrs.pipeline import RunData, client_rows, load_run_data
from fedrs.retrieval import evaluate_retrieval
from fedrs.train import HeadLatents, build_model, fit_hash_head, head_latents, trainable_rows

REPO = Path(__file__).resolve().parents[1]
WHITEN = "hash_head.whiten"


def label_skew(labels: Sequence[np.ndarray]) -> float:
    """Mean over clients, weighted by rows, of the total-variation distance between a client's
    label frequencies and those of all clients' rows together; each of ``labels`` is a
    client's (N_i, classes) multi-hot labels."""
    sizes = np.array([len(part) for part in labels], dtype=np.float64)
    if sizes.sum() == 0:
        raise ValueError("label_skew: no rows")

    def share(counts: np.ndarray) -> np.ndarray:
        total = counts.sum()
        return counts / total if total > 0 else counts

    whole = share(np.concatenate(labels).sum(0).astype(np.float64))
    distances = [
        0.5 * np.abs(share(part.sum(0).astype(np.float64)) - whole).sum() if len(part) else 0.0
        for part in labels
    ]
    return float(np.dot(sizes / sizes.sum(), distances))


def average_heads(
    states: Sequence[Mapping[str, Tensor]],
    modalities: Sequence[Sequence[str]],
    weights: Sequence[float],
) -> dict[str, Tensor]:
    """The clients' head states averaged key by key, weighted by ``weights``: a modality's
    encoder (``encoders.<m>.…``) over the clients holding ``m``, every other floating-point
    key over all; a key none trains, and a non-float one, is the first state's."""
    out: dict[str, Tensor] = {}
    for key, first in states[0].items():
        parts = key.split(".")
        owners = [
            i for i, held in enumerate(modalities) if parts[0] != "encoders" or parts[1] in held
        ]
        if not owners or not first.is_floating_point():
            out[key] = first.clone()
            continue
        total = sum(weights[i] for i in owners)
        mean = sum(states[i][key].double() * (weights[i] / total) for i in owners)
        out[key] = torch.as_tensor(mean).to(first.dtype)
    return out


class _Holder(torch.nn.Module):
    """A head under the name the whitening statistics use (``hash_head.whiten``)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.hash_head = head


@torch.no_grad()
def whiten_with(head: torch.nn.Module, parts: Sequence[HeadLatents]) -> None:
    """Set the head's whitening from the statistics pooled over ``parts`` (a federation's
    clients, or a centralized run's rows), as the server and a centralized run do."""
    whiten = getattr(head, "whiten", None)
    if not isinstance(whiten, torch.nn.Module) or not hasattr(whiten, "group"):
        return
    head.eval()
    moments = [
        {WHITEN: moments_from_features(head.fused_features(p.latents, p.masks), whiten.group)}
        for p in parts
    ]
    apply_moments(_Holder(head), pool_moments(moments))


@torch.no_grad()
def retrieval(head: torch.nn.Module, queries: HeadLatents, database: HeadLatents) -> list[float]:
    """mAP@20 of the queries' codes against the database's: [AP over the top 20, over
    min(k, R)]."""
    head.eval()
    q = head(queries.latents, queries.masks)["codes"]
    d = head(database.latents, database.masks)["codes"]
    figures = evaluate_retrieval(
        (q > 0).cpu().numpy(),
        (d > 0).cpu().numpy(),
        queries.labels.cpu().numpy(),
        database.labels.cpu().numpy(),
        ks=(20,),
    )
    return [round(float(figures["map@20"]), 4), round(float(figures["map@20_min_k_r"]), 4)]


def whitened_point(
    head: torch.nn.Module, parts: Sequence[HeadLatents], splits: Mapping[str, HeadLatents]
) -> dict[str, list[float]]:
    """One step of a curve: the head whitened with the statistics of ``parts``
    (:func:`whiten_with`), then its validation and test mAP@20 against the database."""
    whiten_with(head, parts)
    return {
        "val": retrieval(head, splits["validation"], splits["database"]),
        "test": retrieval(head, splits["queries"], splits["database"]),
    }


def read_out(curve: list[dict[str, list[float]]]) -> dict[str, Any]:
    """The figures of a run: its curve, the test figures at its best validation mAP@20 (the
    first such step) and at its last step."""
    best = max(range(len(curve)), key=lambda i: (curve[i]["val"][0], -i))
    return {
        "curve": curve,
        "best_step": best + 1,
        "best": curve[best]["test"],
        "last": curve[-1]["test"],
    }


def centralized(
    head: torch.nn.Module,
    train: HeadLatents,
    splits: Mapping[str, HeadLatents],
    config: ExperimentConfig,
    epochs: int,
) -> dict[str, Any]:
    """``epochs`` epochs of one head (one Adam per epoch, as the head phase) on all rows."""
    curve = []
    for epoch in range(epochs):
        fit_hash_head(
            head,
            train,
            config,
            epochs=1,
            batch_size=config.train.batch_size,
            seed=(config.seed, epoch, 7),
        )
        curve.append(whitened_point(head, [train], splits))
    return read_out(curve)


def federated(
    head: torch.nn.Module,
    clients: Sequence[tuple[HeadLatents, tuple[str, ...]]],
    splits: Mapping[str, HeadLatents],
    config: ExperimentConfig,
    rounds: int,
    head_epochs: int,
    in_turn: bool = False,
) -> dict[str, Any]:
    """``rounds`` rounds of ``head_epochs`` local head epochs a client, averaged (or, with
    ``in_turn``, trained in turn: :func:`in_turn_round`)."""
    curve = []
    parts = [data for data, _ in clients]
    whiten_with(head, parts)
    for server_round in range(1, rounds + 1):
        if in_turn:
            in_turn_round(head, clients, config, server_round, head_epochs)
        else:
            averaged_round(head, clients, config, server_round, head_epochs)
        curve.append(whitened_point(head, parts, splits))
    return read_out(curve)


def averaged_round(
    head: torch.nn.Module,
    clients: Sequence[tuple[HeadLatents, tuple[str, ...]]],
    config: ExperimentConfig,
    server_round: int,
    head_epochs: int,
) -> None:
    """One averaged round: every client trains a copy of ``head`` for ``head_epochs`` epochs,
    and ``head`` becomes their average (:func:`average_heads`, weighted by rows)."""
    states = []
    for client_id, (data, _) in enumerate(clients):
        local = copy.deepcopy(head)
        fit_hash_head(
            local,
            data,
            config,
            epochs=head_epochs,
            batch_size=config.federation.head_batch_size,
            seed=(config.seed, server_round, client_id, 3),
        )
        states.append(local.state_dict())
    head.load_state_dict(
        average_heads(states, [held for _, held in clients], [len(d) for d, _ in clients])
    )


def in_turn_round(
    head: torch.nn.Module,
    clients: Sequence[tuple[HeadLatents, tuple[str, ...]]],
    config: ExperimentConfig,
    server_round: int,
    head_epochs: int,
) -> list[int]:
    """One round with the clients in turn: each, in an order seeded by ``(seed, round)``, trains
    ``head`` itself for ``head_epochs`` epochs from where the previous one left it; returns the
    order."""
    order = [
        int(c) for c in np.random.default_rng((config.seed, server_round)).permutation(len(clients))
    ]
    for client_id in order:
        fit_hash_head(
            head,
            clients[client_id][0],
            config,
            epochs=head_epochs,
            batch_size=config.federation.head_batch_size,
            seed=(config.seed, server_round, client_id, 3),
        )
    return order


def client_latents(
    run: RunData, train: HeadLatents, train_rows: np.ndarray, config: ExperimentConfig, name: str
) -> list[tuple[HeadLatents, tuple[str, ...]]]:
    """Each client's slice of the training latents under partition ``name`` (the experiment's
    partition settings otherwise), with the modalities it holds."""
    partition = config.partition.model_copy(update={"name": name})
    if name != config.partition.name:
        partition = partition.model_copy(update={"options": {}})
    position = {int(row): i for i, row in enumerate(train_rows)}
    out = []
    for client in range(config.partition.clients):
        rows, held = client_rows(run, partition, config.partition.clients, client)
        index = [position[int(r)] for r in rows if int(r) in position]
        part = train.take(torch.as_tensor(index, dtype=torch.long))
        # a client holds only its modalities: the others are masked out of its rows
        masks = {m: k if m in held else torch.zeros_like(k) for m, k in part.masks.items()}
        out.append((HeadLatents(part.latents, masks, part.labels), tuple(held)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/country-split.toml")
    parser.add_argument("--model", type=Path, help="a model.pt of the config (default: its init)")
    parser.add_argument("--partitions", default="iid,season,modality,country")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--head-epochs", default=None, help="default: federation.head_epochs")
    parser.add_argument("--epochs", type=int, default=8, help="centralized epochs")
    parser.add_argument("--seeds", default="0", help="head inits and shuffles, e.g. 0,1,2")
    parser.add_argument("--set", action="append", default=[], help="one setting a flag")
    parser.add_argument("--in-turn", action="store_true", help="federated clients in turn")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_config(args.config, args.set or None)
    head_epochs = [
        int(h) for h in (args.head_epochs or str(base.federation.head_epochs or 32)).split(",")
    ]
    run = load_run_data(base.data)
    model = build_model(base)
    if args.model is not None:
        model.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    model.eval()
    started = time.perf_counter()
    held = tuple(model.modalities)
    train_rows = trainable_rows(run.archive, np.asarray(run.train_rows), held)
    train = head_latents(model, run.archive, train_rows, base)
    splits = {
        "queries": head_latents(model, run.archive, run.query_rows, base),
        "database": head_latents(model, run.archive, run.database_rows, base),
        "validation": head_latents(model, run.archive, run.validation_rows, base),
    }
    print(
        f"latents of {len(train)} training rows: {time.perf_counter() - started:.0f} s", flush=True
    )
    partitions = {
        name: client_latents(run, train, train_rows, base, name)
        for name in args.partitions.split(",")
    }
    results: dict[str, Any] = {
        "config": str(args.config),
        "model": str(args.model),
        "in_turn": args.in_turn,
        "seeds": {},
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = base.model_copy(update={"seed": seed})
        init = build_model(config).hash_head
        found: dict[str, Any] = {
            "centralized": centralized(copy.deepcopy(init), train, splits, config, args.epochs)
        }
        for name, clients in partitions.items():
            skew = label_skew([data.labels.cpu().numpy() for data, _ in clients])
            for epochs in head_epochs:
                key = f"{name}, {epochs} head epochs"
                found[key] = federated(
                    copy.deepcopy(init), clients, splits, config, args.rounds, epochs, args.in_turn
                ) | {"label_skew": round(skew, 3), "clients": [len(d) for d, _ in clients]}
                print(
                    f"seed {seed} {key}: {found[key]['best']} ({found[key]['best_step']})",
                    flush=True,
                )
        results["seeds"][str(seed)] = found
    table(results)
    print(json.dumps(results))
    return 0


def table(results: Mapping[str, Any]) -> None:
    """Per seed and run: the test mAP@20 at the best validation step and at the last, and as a
    share of the centralized run's."""
    print("| seed | run | label skew | best at | mAP@20 / min(k,R) | % of centralized | last |")
    print("| --- | --- | ---: | ---: | --- | --- | --- |")
    for seed, found in results["seeds"].items():
        central = found["centralized"]["best"]
        for name, run in found.items():
            share = " / ".join(
                f"{100 * a / b:.1f}" for a, b in zip(run["best"], central, strict=True)
            )
            best = " / ".join(f"{v:.3f}" for v in run["best"])
            last = " / ".join(f"{v:.3f}" for v in run["last"])
            skew = f"{run['label_skew']:.3f}" if "label_skew" in run else ""
            print(f"| {seed} | {name} | {skew} | {run['best_step']} | {best} | {share} | {last} |")


if __name__ == "__main__":
    raise SystemExit(main())
