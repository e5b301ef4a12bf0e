"""The Flower ServerApp: strategy from the config, evaluation, checkpoints and MLflow each round.

Each round the global model is evaluated on the server's query/database split (mAP@k from hash
codes read from real bitstreams, bpp from their sizes, PSNR of the reconstructions), logged to
MLflow with ``step=round`` together with the round's client and byte counts, and checkpointed in
``<out>/checkpoints`` (:class:`fedrs.recorder.RunRecorder`).  A round without a successful
client stops the run with an error (the strategy raises); the MLflow run is then marked FAILED,
and what was logged stays.

The evaluation runs on ``train.device`` (``"auto"``: a GPU where the server sees one); each
round logs ``clients/cuda``, the clients that trained on a GPU (``client/<id>/device_cuda``
each), and the summary records the evaluation's ``device`` and ``client_devices``, the
client-rounds trained on each device type.

With ``federation.no_bpp_rounds`` > 0 stage 1 starts with distortion-only rounds and the model
stage 2 starts from is selected on the validation split; with ``eval.patience`` > 0 the run
ends once the validation figure stops improving (both in :mod:`fedrs.selection`).  The
selected model becomes the global model through the strategy's ``replace_global``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedrs import protocol
from fedrs.devices import resolve_device
from fedrs.errors import FedrsError
from fedrs.pipeline import load_run_data
from fedrs.plots import plot_rounds
from fedrs.recorder import RunRecorder, eval_metrics, federation_summary
from fedrs.selection import PlateauWatch, Selection
from fedrs.server_strategy import strategy_for
from fedrs.settings import RunSettings, check_out_folder
from fedrs.strategies import RoundStats
from fedrs.train import build_model, evaluate


class PlateauReached(Exception):  # control flow: caught below, never leaves this module
    """Raised from a round's evaluation to end the run: the validation figure has stopped
    improving (``eval.patience``)."""

    def __init__(self, round_: int) -> None:
        super().__init__(f"validation plateau reached at round {round_}")
        self.round = round_


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

    started = time.perf_counter()
    config = settings.experiment()
    out = settings.out_dir
    if not settings.resume:  # a run is replaced only on purpose (the commands' --overwrite)
        check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = resolve_device(config.train.device)  # the evaluation's: a GPU where one is seen
    model = build_model(config).to(device)
    data = load_run_data(config.data)

    recorder = RunRecorder(out)
    checkpoint = recorder.latest_checkpoint() if settings.resume else None
    done = 0
    if checkpoint is not None:
        done = int(checkpoint["round"])
        model.load_state_dict(recorder.load_model(checkpoint))
    tracker = recorder.track(
        config,
        f"{config.name}-{config.federation.strategy}",
        config.to_dict() | {"num_clients": num_clients},
        run_id=checkpoint["mlflow_run_id"] if checkpoint else None,
    )
    config_file = recorder.write_config(config)
    history = recorder.load_history(done) if checkpoint else []

    # no client can hold more training patches than the archive has: a bigger claimed weight
    # is a failed reply (federation.max_weight overrides)
    strategy = strategy_for(config, num_clients, max_weight=len(data.train_rows) or None)
    if checkpoint is not None and hasattr(strategy, "load_server_state"):
        strategy.round_offset = done
        if (server_state := recorder.load_server_state(checkpoint)) is not None:
            strategy.load_server_state(server_state)
    rounds = config.federation.rounds
    selection = Selection(config, out, checkpoint)
    if selection.enabled and not hasattr(strategy, "replace_global"):
        raise FedrsError(
            f"strategy {config.federation.strategy!r} cannot start stage 2 from a selected "
            "model (no replace_global): set federation.no_bpp_rounds = 0"
        )
    # Flower hands this record to every round's configure_train: the rate flag of the next
    # round is set after each round's evaluation
    train_config = ConfigRecord({protocol.ROUND_OFFSET: done})
    if selection.enabled:
        train_config[protocol.RATE] = selection.rate(done + 1)
    # eval.patience: stage 2 stops once the validation figure has stopped improving
    plateau, stage1 = PlateauWatch(config), config.federation.stage1_rounds
    plateau.replay(history, stage1)  # a resumed run counts the rounds it already did

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        round_ = done + server_round
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        validated: dict[str, float] = {}
        if selection.validates(round_):
            state = arrays.to_torch_state_dict()
            validated, chosen = selection.validate(round_, model, data, state)
            if chosen is not None:  # the next rounds start from the kept model
                arrays = ArrayRecord(chosen)
                strategy.replace_global(arrays)
        if selection.enabled:
            train_config[protocol.RATE] = selection.rate(round_ + 1)
        if plateau.enabled and round_ > stage1:
            validated |= plateau.validate(model, data)
        logged = eval_metrics(evaluate(model, data, config)) | validated
        per_client: dict[str, float] = {}
        if (stats := strategy.round_stats.get(server_round)) is not None:
            logged |= _round_metrics(stats)
            per_client = stats.client_metrics()  # MLflow only: history rows stay small
        tracker.log_metrics(logged | per_client, step=round_)
        history.append({"round": round_, **logged})
        recorder.save_history(history)  # before the checkpoint: a resumed run keeps this round
        server_state = strategy.server_state() if hasattr(strategy, "server_state") else None
        kept = {"kept": selection.record()} if selection.enabled else None
        recorder.save_checkpoint(round_, arrays.to_torch_state_dict(), server_state, kept)
        if selection.enabled:
            selection.prune()
        if plateau.reached:
            raise PlateauReached(round_)
        return MetricRecord({k: v for k, v in logged.items() if k.startswith("eval/")})

    status = "FAILED"
    stopped = plateau.reached
    try:
        if done < rounds and not stopped:
            wait_for_nodes(grid, num_clients, timeout=config.federation.round_timeout_s)
            try:
                strategy.start(
                    grid,
                    ArrayRecord(model.state_dict()),
                    num_rounds=rounds - done,
                    timeout=config.federation.round_timeout_s,
                    train_config=train_config,
                    evaluate_fn=evaluate_round,
                )
            except PlateauReached:
                stopped = True
        status = "FINISHED"
    finally:
        tracker.end(status)
    if len(history) < rounds and not stopped:
        raise FedrsError(f"federation ended after {len(history)} of {rounds} rounds")
    summary = federation_summary(
        config,
        history,
        metrics_final=history[-1],
        started=started,
        run_id=tracker.run_id,
        tracking_uri=recorder.tracking_uri,
        num_clients=num_clients,
        device=device,
    )
    if selection.enabled:
        summary["selection"] = selection.summary(len(history), len(data.validation_rows))
    if plateau.enabled:
        summary["plateau"] = plateau.summary("round")
    model_file = recorder.write_model(model.state_dict())
    plot = plot_rounds(history, out / "rounds.png")
    for artifact in (config_file, model_file, plot):
        tracker.log_artifact(artifact)
    tracker.log_dict(summary, "summary.json")
    recorder.write_summary(summary)  # last: a fresh summary.json means the run is complete
    return summary


def _round_metrics(stats: RoundStats) -> dict[str, float]:
    """A round's counts (``strategy.round_stats``) as metrics, with the clients' aggregated
    ``train/loss`` and ``clients/cuda``, the clients that trained on a GPU."""
    logged = {k: float(v) for k, v in stats.as_metrics().items()}
    if "loss" in stats.train_metrics:
        logged["train/loss"] = stats.train_metrics["loss"]
    cuda = sum(v.get("device_cuda", 0.0) for v in stats.per_client.values())
    logged["clients/cuda"] = float(cuda)
    return logged


app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    """The run config names the experiment (``RunSettings.from_run_config``) and the clients."""
    settings = RunSettings.from_run_config(context.run_config)
    clients = int(context.run_config.get("num-clients", 0) or 0)
    serve(grid, settings, num_clients=clients or len(list(grid.get_node_ids())))


"""The ServerApp of ``flwr run`` (``[tool.flwr.app.components] serverapp``)."""
