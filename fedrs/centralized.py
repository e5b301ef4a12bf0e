"""A centralized run: the same model and local-training routine on the union of all the data.

It is the reference a federation is compared with (``fedrs compare``): the same archive, model,
losses and total local epochs, but one trainer that sees every patch and every modality.  Each
stage keeps one :class:`fedrs.train.LocalTrainer` (one optimizer) across its epochs, as
``train_local(..., epochs=n)`` would: epochs are stepped one at a time only to log each.

With ``train.no_bpp_epochs`` > 0, stage 1 starts with that many distortion-only epochs (a
trainer of their own, ``rate=False``), the model being validated on the validation rows after
each and the highest-PSNR one kept; the remaining stage-1 epochs (a new trainer, with rate)
start from that model, and the lowest-bpp one of them is kept.  Stage 1 ends with the kept
model (the lowest-bpp one; the highest-PSNR one when every stage-1 epoch is distortion-only),
which stage 2 starts from.  ``summary.json`` names the epoch kept on each criterion
(``selection``); the validation figures are logged as ``val/psnr``, ``val/bpp`` (and per
modality) at each stage-1 step, and at the end of the warm-up and of stage 1 the epoch whose
model the training goes on from as ``val/selected_epoch``.

Before the evaluation the whitening statistics are set from the features of all the training
data (:func:`fedrs.train.refresh_statistics`), as a federation pools its clients' ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrs.config import ExperimentConfig
from fedrs.devices import resolve_device
from fedrs.pipeline import Progress, load_run_data
from fedrs.recorder import RunRecorder
from fedrs.selection import PlateauWatch, kept_checkpoints, selection_summary
from fedrs.train import (
    LocalTrainer,
    build_model,
    evaluate,
    refresh_statistics,
    validate,
    validation_metrics,
)

EpochCallback = Callable[[int, int, int, dict[str, float]], None]
"""``on_epoch(stage, epoch, epochs, metrics)``."""


def run_centralized(
    config: ExperimentConfig,
    out: str | Path,
    *,
    progress: Progress | None = None,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train stage 1 then stage 2 on all training rows, evaluate, write ``<out>/summary.json``."""
    started = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_run_data(config.data, progress=progress)
    device = resolve_device(config.train.device)  # training and evaluation
    model = build_model(config).to(device)
    recorder = RunRecorder(out)
    params = config.to_dict() | {"mode": "centralized"}
    tracker = recorder.track(config, f"{config.name}-centralized", params)
    history: list[dict[str, float]] = []
    step = 0
    warmup = min(config.train.no_bpp_epochs, config.train.stage1_epochs)
    kept = kept_checkpoints()
    plateau = PlateauWatch(config)
    status = "FAILED"
    try:
        for stage, epochs in ((1, config.train.stage1_epochs), (2, config.train.stage2_epochs)):
            if epochs == 0:
                continue
            # one trainer a stage (a stage-1 warm-up has its own): Adam's moments and the
            # shuffling stream last across its epochs
            phases: list[tuple[int, int, bool, tuple[int, ...]]]
            phases = [(0, epochs, True, (config.seed, stage))]
            if stage == 1 and warmup:
                phases = [(0, warmup, False, (config.seed, stage))]
                if epochs > warmup:
                    phases.append((warmup, epochs, True, (config.seed, stage, 1)))
            for first, last, rate, seed in phases:
                trainer = LocalTrainer(
                    model,
                    data.archive,
                    data.train_rows,
                    config,
                    stage=stage,
                    seed=seed,
                    rate=rate,
                )
                for epoch in range(first, last):
                    step += 1
                    metrics = trainer.train(1)
                    logged = {f"train/{k}": v for k, v in metrics.items()}
                    logged["stage"] = float(stage)
                    if stage == 1 and warmup:
                        figures = validate(model, data)
                        logged |= validation_metrics(figures) | {"rate": float(rate)}
                        criterion = "bpp" if rate else "psnr"
                        kept[criterion].offer(
                            epoch + 1, figures[f"{criterion}_all"], model.state_dict()
                        )
                    if stage == 2 and plateau.enabled:  # stopped on the validation split
                        if config.model.whitening:  # as it will be evaluated
                            refresh_statistics(model, data.archive, data.train_rows, config)
                        logged |= plateau.validate(model, data)
                    tracker.log_metrics(logged, step=step)
                    history.append({"step": float(step), **logged})
                    if on_epoch is not None:
                        on_epoch(stage, epoch + 1, epochs, metrics)
                    if stage == 2 and plateau.reached:
                        break
                if stage == 1 and warmup:  # the next phase or stage starts from the kept model
                    chosen = kept["bpp" if rate else "psnr"]
                    model.load_state_dict(chosen.restore())
                    selected = {"val/selected_epoch": float(chosen.step or 0)}
                    tracker.log_metrics(selected, step=step)
                    history[-1] |= selected
        if config.model.whitening:  # whitening from all the training data, as a federation
            refresh_statistics(model, data.archive, data.train_rows, config)  # pools its clients'
        result = evaluate(model, data, config)
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.end(status)
    flat = {f"eval/{k}": float(v) for k, v in result.items() if isinstance(v, int | float)}
    for key in ("bpp", "psnr"):
        flat |= {f"eval/{key}_{m}": float(v) for m, v in result[key].items() if v is not None}
    tracker.log_metrics(flat, step=step)
    validation_rows = len(data.validation_rows)
    summary = {
        **{k: v for k, v in result.items() if k != "eval_s"},
        "wall_s": round(time.perf_counter() - started, 2),
        "train_patches": len(data.train_rows),
        "device": str(device),
        "epochs": step,
        "plateau": plateau.summary("epoch"),
        "history": history,
        **({"selection": selection_summary(kept, "epoch", validation_rows)} if warmup else {}),
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": recorder.tracking_uri,
        "config": config.to_dict(),
    }
    # each file whole or not at all; the summary last: a summary.json means a complete run
    recorder.write_config(config)
    recorder.write_model(model.state_dict())
    recorder.write_summary(summary)
    for name in ("summary.json", "config.toml", "model.pt"):
        tracker.log_artifact(out / name)
    tracker.end("FINISHED")
    return summary
