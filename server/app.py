"""The Flower ServerApp: strategy from the config, evaluation, checkpoints and MLflow each round.

Each round the global model is evaluated on the server's query/database split (mAP@k from hash
codes read from real bitstreams, bpp from their sizes, PSNR of the reconstructions), logged to
MLflow with ``step=round`` together with the round's client and byte counts, and checkpointed in
``<out>/checkpoints``.  A round without a successful client stops the run with an error (the
strategy raises); the MLflow run is then marked FAILED, and what was logged stays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fedrs.preload  # noqa: F401  (before the apps run: see its docstring)
from fedrs.config import ExperimentConfig
from fedrs.errors import FedrsError
from fedrs.settings import RunSettings

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


def latest_checkpoint(out: Path) -> dict[str, Any] | None:
    """The newest checkpoint record of ``out`` (round, file, MLflow run id), or None."""
    path = out / CHECKPOINTS / LATEST
    if not path.is_file():
        return None
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info


def _save_checkpoint(
    out: Path, round_: int, arrays: ArrayRecord, run_id: str, strategy: Any = None
) -> Path:
    """The global model of ``round_`` and, where the strategy keeps one, its server state."""
    import numpy as np
    import torch

    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"round-{round_:04d}.pt"
    tmp = file.with_suffix(".tmp")
    torch.save(arrays.to_torch_state_dict(), tmp)
    tmp.replace(file)
    record: dict[str, Any] = {"round": round_, "file": file.name, "mlflow_run_id": run_id}
    if hasattr(strategy, "server_state"):
        state_file = folder / f"round-{round_:04d}.strategy.npz"
        with (folder / "strategy.tmp").open("wb") as handle:
            np.savez(handle, **strategy.server_state())
        (folder / "strategy.tmp").replace(state_file)
        record["strategy_file"] = state_file.name
    (folder / "latest.tmp").write_text(json.dumps(record), encoding="utf-8")
    (folder / "latest.tmp").replace(folder / LATEST)
    return file


def strategy_for(
    config: ExperimentConfig, num_clients: int, max_weight: float | None = None
) -> Any:
    """The configured strategy, with client counts that never wait for absent nodes.

    ``max_weight`` (the most examples a reply may claim) applies when the configuration sets
    no ``federation.max_weight``; ``None`` and no configured bound leave replies unbounded.
    """
    from fedrs.strategies import build_strategy

    fed = config.federation
    # a node lost mid-run must not make later rounds wait for it: rounds need only as many
    # nodes as must succeed (the first round waits for all of them, see wait_for_nodes)
    least = min(fed.min_clients, num_clients)
    options: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": least,
        "min_evaluate_nodes": 0,
        "min_available_nodes": least,
        "min_successful": fed.min_clients,
        "local_keys": list(fed.local_keys),
        "update_codec": fed.build_update_codec(config.seed),
    }
    if fed.max_weight is not None or max_weight is not None:
        options["max_weight"] = fed.max_weight if fed.max_weight is not None else max_weight
    if fed.dp.clipping != "none":
        sampled = max(least, round(num_clients * fed.fraction_train))
        options["dp"] = fed.dp.model_dump() | {"num_sampled_clients": sampled}
    options.update(fed.strategy_options)
    return build_strategy(fed.strategy, **options)


def wait_for_nodes(grid: Grid, count: int, *, timeout: float) -> None:
    """Wait until ``count`` nodes are connected (the first round starts with all of them)."""
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < count:
        if time.monotonic() > deadline:
            raise FedrsError(f"only {connected} of {count} nodes connected within {timeout:g} s")
        time.sleep(1.0)


def serve(
    grid: Grid,
    settings: RunSettings,
    *,
    num_clients: int,
) -> dict[str, Any]:
    """Run the whole federation on ``grid``; returns the summary (also ``<out>/summary.json``)."""
    import torch

    from fedrs.pipeline import load_run_data
    from fedrs.tracking import Tracker, default_tracking_uri
    from fedrs.train import build_model, evaluate

    started = time.perf_counter()
    config = settings.experiment()
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(config)
    data = load_run_data(config.data)

    checkpoint = latest_checkpoint(out) if settings.resume else None
    done = 0
    if checkpoint is not None:
        done = int(checkpoint["round"])
        state = torch.load(out / CHECKPOINTS / checkpoint["file"], weights_only=True)
        model.load_state_dict(state)
    uri = config.tracking.uri or default_tracking_uri(out)
    tracker = Tracker(
        uri,
        experiment=config.tracking.experiment,
        run_name=f"{config.name}-{config.federation.strategy}",
        run_id=checkpoint["mlflow_run_id"] if checkpoint else None,
        artifact_root=out / "mlartifacts",
    )
    tracker.log_params(config.to_dict() | {"num_clients": num_clients})
    config_file = out / "config.toml"
    config_file.write_text(config.to_toml(), encoding="utf-8")
    history = _load_history(out) if checkpoint else []
    history = [h for h in history if h["round"] <= done]

    # no client can hold more training patches than the archive has: a bigger claimed weight
    # is a failed reply (federation.max_weight overrides)
    strategy = strategy_for(config, num_clients, max_weight=len(data.train_rows) or None)
    if checkpoint is not None and hasattr(strategy, "load_server_state"):
        strategy.round_offset = done
        if checkpoint.get("strategy_file"):
            import numpy as np

            path = out / CHECKPOINTS / checkpoint["strategy_file"]
            with np.load(path, allow_pickle=False) as saved:
                strategy.load_server_state(dict(saved))
    rounds = config.federation.rounds

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        round_ = done + server_round
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        metrics = evaluate(model, data, config)
        stats = strategy.round_stats.get(server_round)
        logged = _flat_eval(metrics)
        per_client: dict[str, float] = {}
        if stats is not None:
            logged |= {k: float(v) for k, v in stats.as_metrics().items()}
            if "loss" in stats.train_metrics:
                logged["train/loss"] = stats.train_metrics["loss"]
            per_client = stats.client_metrics()  # MLflow only: history rows stay small
        tracker.log_metrics(logged | per_client, step=round_)
        history.append({"round": round_, **logged})
        _save_history(out, history)  # before the checkpoint: a resumed run keeps this round
        _save_checkpoint(out, round_, arrays, tracker.run_id, strategy)
        return MetricRecord({k: v for k, v in logged.items() if k.startswith("eval/")})

    status = "FAILED"
    try:
        if done < rounds:
            wait_for_nodes(grid, num_clients, timeout=config.federation.round_timeout_s)
            strategy.start(
                grid,
                ArrayRecord(model.state_dict()),
                num_rounds=rounds - done,
                timeout=config.federation.round_timeout_s,
                train_config=ConfigRecord({"round-offset": done}),
                evaluate_fn=evaluate_round,
            )
        status = "FINISHED"
    finally:
        tracker.end(status)
    if len(history) < rounds:
        raise FedrsError(f"federation ended after {len(history)} of {rounds} rounds")
    summary = _summary(config, history, metrics_final=history[-1], started=started)
    summary |= {"mlflow_run_id": tracker.run_id, "tracking_uri": uri, "num_clients": num_clients}
    torch.save(model.state_dict(), out / "model.pt")
    plot = _plot_history(history, out / "rounds.png")
    for artifact in (config_file, out / "model.pt", plot):
        tracker.log_artifact(artifact)
    tracker.log_dict(summary, "summary.json")
    # the summary is written last: a fresh summary.json means the run is complete
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    tmp.replace(out / "summary.json")
    return summary


def _flat_eval(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"map@20": x, "bpp": {"s1": y}}`` -> ``{"eval/map@20": x, "eval/bpp_s1": y}``."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if v is not None:
                    flat[f"eval/{key}_{sub}"] = float(v)
        elif isinstance(value, int | float):
            flat[f"eval/{key}"] = float(value)
    return flat


def _load_history(out: Path) -> list[dict[str, Any]]:
    path = out / "history.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def _save_history(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / "history.tmp"
    tmp.write_text(json.dumps(history, indent=1), encoding="utf-8")
    tmp.replace(out / "history.json")


def _summary(
    config: ExperimentConfig,
    history: list[dict[str, Any]],
    *,
    metrics_final: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    def final(key: str) -> float | None:
        value = metrics_final.get(key)
        return None if value is None else float(value)

    def count(key: str) -> int | None:
        value = metrics_final.get(key)
        return None if value is None else int(value)

    modalities = ("s1", "s2")
    # map@k: AP over the relevant items retrieved in the top k; map@k_min_k_r: AP / min(k, R);
    # each with its random-code baseline (map@20, map@20_random, map@20_min_k_r, ...)
    retrieval = {
        f"map@{k}{convention}{baseline}": final(f"eval/map@{k}{convention}{baseline}")
        for k in (20, 10, 100)
        for convention in ("", "_min_k_r")
        for baseline in ("", "_random")
    }
    return {
        **retrieval,
        "eval_queries": count("eval/eval_queries"),
        "eval_database": count("eval/eval_database"),
        "bpp": {m: final(f"eval/bpp_{m}") for m in modalities},
        "psnr": {m: final(f"eval/psnr_{m}") for m in modalities},
        "wall_s": round(time.perf_counter() - started, 2),
        "rounds": len(history),
        "clients_ok": int(sum(h.get("clients/ok", 0) for h in history)),
        "clients_failed": int(sum(h.get("clients/failed", 0) for h in history)),
        "bytes_up": int(sum(h.get("comm/bytes_up", 0) for h in history)),
        "bytes_down": int(sum(h.get("comm/bytes_down", 0) for h in history)),
        "update_codec": config.federation.update_codec,
        "history": history,
        "config": config.to_dict(),
    }


def _plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [h["round"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(rounds, [h.get("eval/map@20") for h in history], marker="o", label="model")
    axes[0].plot(rounds, [h.get("eval/map@20_random") for h in history], ls="--", label="random")
    strict = [h.get("eval/map@20_min_k_r") for h in history]
    if any(v is not None for v in strict):  # runs from before the min(k, R) convention lack it
        axes[0].plot(rounds, strict, marker="s", label="model, min(k,R)")
        strict_random = [h.get("eval/map@20_min_k_r_random") for h in history]
        axes[0].plot(rounds, strict_random, ls=":", label="random, min(k,R)")
    axes[0].set(xlabel="round", ylabel="mAP@20", title="retrieval")
    axes[0].legend()
    for modality in ("s1", "s2"):
        values = [h.get(f"eval/bpp_{modality}") for h in history]
        if any(v is not None for v in values):
            axes[1].plot(rounds, values, marker="o", label=modality.upper())
    axes[1].set(xlabel="round", ylabel="bits per pixel", title="compression")
    axes[1].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    """The run config names the experiment (``RunSettings.from_run_config``) and the clients."""
    settings = RunSettings.from_run_config(context.run_config)
    clients = int(context.run_config.get("num-clients", 0) or 0)
    serve(grid, settings, num_clients=clients or len(list(grid.get_node_ids())))


"""The ServerApp of ``flwr run`` (``[tool.flwr.app.components] serverapp``)."""
