"""What a run leaves in its output folder and in MLflow, for federations and centralized runs.

A :class:`RunRecorder` owns ``<out>``: the round checkpoints (``checkpoints/round-NNNN.pt``,
the strategy's server state next to them, ``checkpoints/latest.json`` naming the newest),
``history.json`` (one row a round), ``config.toml``, ``model.pt``, ``summary.json`` (written
last: a fresh one means the run is complete) and the MLflow run (:class:`fedrs.tracking.Tracker`,
by default in a sqlite store under ``<out>``).  Every file is written whole or not at all.  It
takes and returns torch state dicts and numpy arrays; no Flower type crosses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrs.config import ExperimentConfig
from fedrs.io import atomic_file, atomic_torch_save, atomic_write_text
from fedrs.tracking import Tracker, default_tracking_uri

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


def latest_checkpoint(out: Path) -> dict[str, Any] | None:
    """The newest checkpoint record of ``out`` (round, file, MLflow run id), or None."""
    path = out / CHECKPOINTS / LATEST
    if not path.is_file():
        return None
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info


class RunRecorder:
    """The output folder ``out`` of one run and its MLflow run (:meth:`track`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.checkpoints = out / CHECKPOINTS
        self.tracking_uri: str | None = None
        self._tracker: Tracker | None = None

    # ------------------------------------------------------------------------ checkpoints

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint record (``latest.json``), or None."""
        return latest_checkpoint(self.out)

    def load_model(self, checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
        """The global model a checkpoint record names."""

        state: dict[str, Tensor] = torch.load(
            self.checkpoints / checkpoint["file"], weights_only=True
        )
        return state

    def load_server_state(self, checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The strategy's server state a checkpoint record names (None when it has none)."""

        if not checkpoint.get("strategy_file"):
            return None
        with np.load(self.checkpoints / checkpoint["strategy_file"], allow_pickle=False) as saved:
            return dict(saved)

    def save_checkpoint(
        self,
        round_: int,
        state: Mapping[str, Tensor],
        server_state: Mapping[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """The global model of ``round_`` and, where the strategy keeps one, its server state
        (named numpy arrays); ``extra`` entries go into ``latest.json`` with them."""

        folder = self.checkpoints
        folder.mkdir(parents=True, exist_ok=True)
        file = atomic_torch_save(state, folder / f"round-{round_:04d}.pt")
        record: dict[str, Any] = {
            "round": round_,
            "file": file.name,
            "mlflow_run_id": self.tracker.run_id,
        }
        if server_state is not None:
            state_file = folder / f"round-{round_:04d}.strategy.npz"
            with atomic_file(state_file) as handle:
                np.savez(handle, **server_state)
            record["strategy_file"] = state_file.name
        record |= extra or {}
        atomic_write_text(folder / LATEST, json.dumps(record))
        return file

    # ------------------------------------------------------------------------ history

    def load_history(self, until: int) -> list[dict[str, Any]]:
        """The rows of ``history.json`` up to round ``until`` (none when there is no file)."""
        path = self.out / "history.json"
        history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        return [h for h in history if h["round"] <= until]

    def save_history(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.out / "history.json", json.dumps(history, indent=1))

    # ------------------------------------------------------------------------ MLflow

    def track(
        self,
        config: ExperimentConfig,
        run_name: str,
        params: Mapping[str, Any],
        *,
        run_id: str | None = None,
    ) -> Tracker:
        """Start the run's MLflow run (continue ``run_id``) and log ``params``: the store is
        ``tracking.uri``, else a sqlite file under ``out``."""

        self.tracking_uri = config.tracking.uri or default_tracking_uri(self.out)
        self._tracker = Tracker(
            self.tracking_uri,
            experiment=config.tracking.experiment,
            run_name=run_name,
            run_id=run_id,
            artifact_root=self.out / "mlartifacts",
        )
        self._tracker.log_params(params)
        return self._tracker

    @property
    def tracker(self) -> Tracker:
        """The MLflow run :meth:`track` started."""
        if self._tracker is None:
            raise RuntimeError("no MLflow run yet: RunRecorder.track starts it")
        return self._tracker

    # ------------------------------------------------------------------------ final files

    def write_config(self, config: ExperimentConfig) -> Path:
        return atomic_write_text(self.out / "config.toml", config.to_toml())

    def write_model(self, state: Mapping[str, Tensor]) -> Path:
        """``model.pt``: the final model, on the CPU."""
        return atomic_torch_save({k: v.cpu() for k, v in state.items()}, self.out / "model.pt")

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """``summary.json``; write it last: a fresh one means the run is complete."""
        return atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))


def eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
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


def federation_summary(
    config: ExperimentConfig,
    history: list[dict[str, Any]],
    *,
    metrics_final: dict[str, Any],
    started: float,
    run_id: str,
    tracking_uri: str | None,
    num_clients: int,
    device: object,
) -> dict[str, Any]:
    """A federation's ``summary.json`` from its history: the final round's figures, the run's
    totals (clients, bytes), the history, the configuration, the MLflow run and the devices
    (the evaluation's ``device``; ``client_devices``: the client-rounds on each type)."""

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
    # the 95 % bootstrap interval of each mAP@20 over the queries
    retrieval |= {
        f"map@20{convention}_ci_{end}": final(f"eval/map@20{convention}_ci_{end}")
        for convention in ("", "_min_k_r")
        for end in ("low", "high")
    }
    summary: dict[str, Any] = {
        **retrieval,
        "eval_queries": count("eval/eval_queries"),
        "eval_database": count("eval/eval_database"),
        "encode_s_per_10k": final("eval/encode_s_per_10k"),
        "decode_s_per_10k": final("eval/decode_s_per_10k"),
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
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "num_clients": num_clients,
    }
    on_gpu = int(sum(h.get("clients/cuda", 0) for h in history))  # client-rounds on a GPU
    return summary | {
        "device": str(device),
        "client_devices": {"cuda": on_gpu, "cpu": summary["clients_ok"] - on_gpu},
    }
