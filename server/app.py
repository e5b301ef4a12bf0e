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

With ``federation.no_bpp_rounds`` > 0, rounds 1 to ``no_bpp_rounds`` train on distortion alone
(the training ConfigRecord says :data:`fedrs.protocol.RATE` false), and every stage-1 round the
global model is also validated on the validation rows (``val/psnr``, ``val/bpp`` and per
modality): the highest-PSNR model of the distortion-only rounds and the lowest-bpp one of the
other stage-1 rounds are kept (``kept-<criterion>.round-NNNN.pt`` next to the round
checkpoints, named in ``latest.json``).  The last distortion-only round ends with the
highest-PSNR model, the last stage-1 round with the lowest-bpp one (the highest-PSNR one when
every stage-1 round is distortion-only): it becomes the global model the next round starts
from (``replace_global`` of the strategy), that round's evaluation and checkpoint are of it,
and ``val/selected_round`` names it; the summary's ``selection`` records both kept models.

With ``eval.patience`` > 0 every stage-2 round is also validated (the validation split as
queries against the database, ``val/map@20``, and its compression figures), and the run ends
at the round after which ``eval.plateau_metric`` has not improved by more than
``eval.tolerance`` for ``patience`` rounds (``federation.rounds`` is then a cap); the summary's
``plateau`` says where and which round was best.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fedrs.preload  # noqa: F401  (before the apps run: see its docstring)
from fedrs import protocol
from fedrs.config import ExperimentConfig
from fedrs.errors import FedrsError
from fedrs.io import atomic_torch_save
from fedrs.recorder import CHECKPOINTS
from fedrs.settings import RunSettings, check_out_folder

if TYPE_CHECKING:
    from fedrs.strategies import RoundStats
    from fedrs.train import KeptCheckpoint


class PlateauReached(Exception):
    """Raised from a round's evaluation to end the run: the validation figure has stopped
    improving (``eval.patience``)."""

    def __init__(self, round_: int) -> None:
        super().__init__(f"validation plateau reached at round {round_}")
        self.round = round_


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
    if fed.statistics != "averaged" and config.model.whitening:
        import torch

        from fedrs.models import JointModel
        from fedrs.models.statistics import WhiteningPool

        with torch.random.fork_rng(devices=[]):  # a model's shape only: leave the RNG alone
            pool = WhiteningPool(JointModel(config.model))
        options["statistics"] = pool
        if fed.statistics == "local":  # FedBN-style: pooled for the server's evaluation only
            options["local_keys"] += [re.escape(k) for k in pool.derived_keys()]
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


class _Selection:
    """Checkpoint selection over stage 1 when it starts with distortion-only rounds (see the
    module docstring): what is kept, on which criterion, and its files for a resumed run."""

    def __init__(self, config: ExperimentConfig, out: Path, checkpoint: dict[str, Any] | None):
        import torch

        from fedrs.train import KeptCheckpoint

        fed = config.federation
        self.no_bpp_rounds, self.stage1_rounds = fed.no_bpp_rounds, fed.stage1_rounds
        self.folder = out / CHECKPOINTS
        self.kept = {c: KeptCheckpoint(c) for c in ("psnr", "bpp")}
        for criterion, info in ((checkpoint or {}).get("kept") or {}).items():
            kept = self.kept[criterion]
            kept.step, kept.score = int(info["round"]), float(info["score"])
            kept.state = torch.load(self.folder / info["file"], weights_only=True)
        self.files = {c: self._file(c) for c in self.kept if self.kept[c].step is not None}

    @property
    def enabled(self) -> bool:
        return self.no_bpp_rounds > 0

    def validates(self, round_: int) -> bool:
        """Whether the global model of ``round_`` is validated (a stage-1 round)."""
        return self.enabled and round_ <= self.stage1_rounds

    def rate(self, round_: int) -> bool:
        """Whether clients optimise the rate in ``round_``."""
        return round_ > self.no_bpp_rounds

    def ends_phase(self, round_: int) -> bool:
        """Whether ``round_`` ends the warm-up or stage 1 (the next round starts from
        :meth:`selected`)."""
        return self.enabled and round_ in (self.no_bpp_rounds, self.stage1_rounds)

    def _file(self, criterion: str) -> str:
        return f"kept-{criterion}.round-{self.kept[criterion].step:04d}.pt"

    def offer(self, round_: int, figures: dict[str, Any], arrays: ArrayRecord) -> None:
        """Keep the global model of ``round_`` when it beats the kept one (and save it)."""
        criterion = "bpp" if self.rate(round_) else "psnr"
        kept = self.kept[criterion]
        if kept.offer(round_, figures[f"{criterion}_all"], arrays.to_torch_state_dict()):
            self.folder.mkdir(parents=True, exist_ok=True)
            file = atomic_torch_save(kept.state, self.folder / self._file(criterion))
            self.files[criterion] = file.name

    def selected(self) -> KeptCheckpoint:
        """The model the warm-up or stage 1 ends with: the lowest-bpp kept one, else (the
        warm-up, or a stage 1 of warm-up only) the best-PSNR one."""
        return self.kept["bpp"] if self.kept["bpp"].state is not None else self.kept["psnr"]

    def record(self) -> dict[str, Any]:
        """``latest.json``'s ``kept`` entry: round, score and file of each kept model."""
        return {
            c: {"round": k.step, "score": k.score, "file": self.files[c]}
            for c, k in self.kept.items()
            if k.step is not None
        }

    def prune(self) -> None:
        """Remove kept files ``latest.json`` no longer names."""
        for path in self.folder.glob("kept-*.pt"):
            if path.name not in self.files.values():
                path.unlink(missing_ok=True)

    def summary(self, rounds_done: int, validation_rows: int) -> dict[str, Any]:
        """The summary's ``selection``: round and score of each kept model and, once stage 1
        is over, the one stage 2 started from."""
        over = rounds_done >= self.stage1_rounds
        return {
            "psnr": self.kept["psnr"].record("round"),
            "bpp": self.kept["bpp"].record("round"),
            "selected": self.selected().criterion if over else None,
            "selected_round": self.selected().step if over else None,
            "validation_patches": validation_rows,
        }


def serve(
    grid: Grid,
    settings: RunSettings,
    *,
    num_clients: int,
) -> dict[str, Any]:
    """Run the whole federation on ``grid``; returns the summary (also ``<out>/summary.json``)."""
    import torch

    from fedrs.devices import resolve_device
    from fedrs.pipeline import load_run_data
    from fedrs.plots import plot_rounds
    from fedrs.recorder import RunRecorder, eval_metrics, federation_summary
    from fedrs.train import (
        build_model,
        evaluate,
        plateau_for,
        plateau_summary,
        plateau_value,
        validate,
        validation_metrics,
    )

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
    selection = _Selection(config, out, checkpoint)
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
    plateau = plateau_for(config)
    metric, stage1 = config.eval.plateau_metric, config.federation.stage1_rounds
    if plateau is not None:  # a resumed run counts the rounds it already did
        for entry in history:
            if entry["round"] > stage1:
                plateau.update(entry.get(f"val/{metric}", math.nan))

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        round_ = done + server_round
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        validated: dict[str, float] = {}
        if selection.validates(round_):
            figures = validate(model, data)
            validated = validation_metrics(figures)
            selection.offer(round_, figures, arrays)
            if selection.ends_phase(round_):  # the next rounds start from the kept model
                chosen = selection.selected()
                state = chosen.restore()
                model.load_state_dict(state, strict=False)
                arrays = ArrayRecord(state)
                strategy.replace_global(arrays)
                validated["val/selected_round"] = float(chosen.step or 0)
        if selection.enabled:
            train_config[protocol.RATE] = selection.rate(round_ + 1)
        if plateau is not None and round_ > stage1:
            figures = validate(model, data, retrieval=metric.startswith("map"))
            validated |= validation_metrics(figures)
            if plateau.update(plateau_value(figures, metric)):
                validated["val/plateau"] = 1.0
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
        if plateau is not None and plateau.reached:
            raise PlateauReached(round_)
        return MetricRecord({k: v for k, v in logged.items() if k.startswith("eval/")})

    status = "FAILED"
    stopped = plateau is not None and plateau.reached
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
    if plateau is not None:
        summary["plateau"] = plateau_summary(plateau, metric, "round")
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
