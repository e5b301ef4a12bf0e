"""A centralized run: the same model and local-training routine on the union of all the data.

It is the reference a federation is compared with (``fedrs compare``): the same archive, model,
losses and total local epochs, but one trainer that sees every patch and every modality.  Each
stage keeps one :class:`fedrs.train.LocalTrainer` (one optimizer) across its epochs, as
``train_local(..., epochs=n)`` would: epochs are stepped one at a time only to log each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedrs.config import ExperimentConfig
from fedrs.pipeline import Progress, load_run_data
from fedrs.tracking import Tracker, default_tracking_uri
from fedrs.train import LocalTrainer, build_model, evaluate

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
    model = build_model(config)
    uri = config.tracking.uri or default_tracking_uri(out)
    tracker = Tracker(
        uri,
        experiment=config.tracking.experiment,
        run_name=f"{config.name}-centralized",
        artifact_root=out / "mlartifacts",
    )
    tracker.log_params(config.to_dict() | {"mode": "centralized"})
    history: list[dict[str, float]] = []
    step = 0
    status = "FAILED"
    try:
        for stage, epochs in ((1, config.train.stage1_epochs), (2, config.train.stage2_epochs)):
            if epochs == 0:
                continue
            # one trainer a stage: Adam's moments (and the shuffling stream) last across epochs
            trainer = LocalTrainer(
                model, data.archive, data.train_rows, config, stage=stage, seed=(config.seed, stage)
            )
            for epoch in range(epochs):
                step += 1
                metrics = trainer.train(1)
                logged = {f"train/{k}": v for k, v in metrics.items()} | {"stage": float(stage)}
                tracker.log_metrics(logged, step=step)
                history.append({"step": float(step), **logged})
                if on_epoch is not None:
                    on_epoch(stage, epoch + 1, epochs, metrics)
        result = evaluate(model, data, config)
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.end(status)
    flat = {f"eval/{k}": float(v) for k, v in result.items() if isinstance(v, int | float)}
    for key in ("bpp", "psnr"):
        flat |= {f"eval/{key}_{m}": float(v) for m, v in result[key].items() if v is not None}
    tracker.log_metrics(flat, step=step)
    summary = {
        **{k: v for k, v in result.items() if k != "eval_s"},
        "wall_s": round(time.perf_counter() - started, 2),
        "train_patches": len(data.train_rows),
        "epochs": step,
        "history": history,
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": uri,
        "config": config.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    torch.save(model.state_dict(), out / "model.pt")
    for name in ("summary.json", "config.toml", "model.pt"):
        tracker.log_artifact(out / name)
    tracker.end("FINISHED")
    return summary
