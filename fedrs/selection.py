"""What the validation split decides during training: the model stage 1 keeps, when stage 2 stops.

Selection.  With ``federation.no_bpp_rounds`` > 0, rounds 1 to ``no_bpp_rounds`` train on
distortion alone (the training ConfigRecord says :data:`fedrs.protocol.RATE` false), and every
stage-1 round the global model is also validated on the validation rows (``val/psnr``,
``val/bpp`` and per modality): the highest-PSNR model of the distortion-only rounds and the
lowest-bpp one of the other stage-1 rounds are kept (``kept-<criterion>.round-NNNN.pt`` next to
the round checkpoints, named in ``latest.json``).  The last distortion-only round ends with the
highest-PSNR model, the last stage-1 round with the lowest-bpp one (the highest-PSNR one when
every stage-1 round is distortion-only): it becomes the global model the next round starts
from, that round's evaluation and checkpoint are of it, and ``val/selected_round`` names it;
the summary's ``selection`` records both kept models.  A centralized run keeps its models by
epoch the same way (:mod:`fedrs.centralized`).

Plateau.  With ``eval.patience`` > 0 every stage-2 round (or epoch) is also validated (the
validation split as queries against the database, ``val/map@20``, and its compression figures),
and the run ends at the round after which ``eval.plateau_metric`` has not improved by more than
``eval.tolerance`` for ``patience`` rounds (``federation.rounds`` is then a cap); the summary's
``plateau`` says where and which round was best.

Models go in and out as torch state dicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedrs.config import ExperimentConfig
from fedrs.io import atomic_torch_save
from fedrs.models import JointModel
from fedrs.pipeline import RunData
from fedrs.recorder import CHECKPOINTS
from fedrs.train import (
    KeptCheckpoint,
    plateau_for,
    plateau_summary,
    plateau_value,
    validate,
    validation_metrics,
)


def kept_checkpoints() -> dict[str, KeptCheckpoint]:
    """An empty kept model for each criterion: the highest PSNR, the lowest bpp."""
    return {c: KeptCheckpoint(c) for c in ("psnr", "bpp")}


def selected(kept: Mapping[str, KeptCheckpoint]) -> KeptCheckpoint:
    """The model the warm-up or stage 1 ends with: the lowest-bpp kept one, else (the warm-up,
    or a stage 1 of warm-up only) the best-PSNR one."""
    return kept["bpp"] if kept["bpp"].state is not None else kept["psnr"]


def selection_summary(
    kept: Mapping[str, KeptCheckpoint], unit: str, validation_rows: int, *, over: bool = True
) -> dict[str, Any]:
    """The summary's ``selection``: the ``unit`` (epoch or round) and validation score of each
    kept model (``bpp`` None when every stage-1 step was distortion-only) and, once stage 1 is
    ``over``, the one stage 2 started from."""
    chosen = selected(kept)
    return {
        "psnr": kept["psnr"].record(unit),
        "bpp": kept["bpp"].record(unit),
        "selected": chosen.criterion if over else None,
        f"selected_{unit}": chosen.step if over else None,
        "validation_patches": validation_rows,
    }


class Selection:
    """Checkpoint selection over a federation's stage 1 when it starts with distortion-only
    rounds (see the module docstring): what is kept, on which criterion, and its files in
    ``<out>/checkpoints`` for a resumed run (``checkpoint``: the ``latest.json`` record)."""

    def __init__(self, config: ExperimentConfig, out: Path, checkpoint: dict[str, Any] | None):
        fed = config.federation
        self.no_bpp_rounds, self.stage1_rounds = fed.no_bpp_rounds, fed.stage1_rounds
        self.folder = out / CHECKPOINTS
        self.kept = kept_checkpoints()
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

    def offer(self, round_: int, figures: dict[str, Any], state: Mapping[str, Tensor]) -> None:
        """Keep the global model of ``round_`` when it beats the kept one (and save it)."""
        criterion = "bpp" if self.rate(round_) else "psnr"
        kept = self.kept[criterion]
        if kept.offer(round_, figures[f"{criterion}_all"], state):
            self.folder.mkdir(parents=True, exist_ok=True)
            file = atomic_torch_save(kept.state, self.folder / self._file(criterion))
            self.files[criterion] = file.name

    def validate(
        self, round_: int, model: JointModel, data: RunData, state: Mapping[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor] | None]:
        """Validate ``model`` (the global model of ``round_``, ``state``) and :meth:`offer` it:
        its ``val/`` metrics and, when ``round_`` ends a phase, the selected model (loaded into
        ``model``) the next rounds start from, else None."""
        figures = validate(model, data)
        validated = validation_metrics(figures)
        self.offer(round_, figures, state)
        if not self.ends_phase(round_):
            return validated, None
        chosen = self.selected()
        restored = chosen.restore()
        model.load_state_dict(restored, strict=False)
        validated["val/selected_round"] = float(chosen.step or 0)
        return validated, restored

    def selected(self) -> KeptCheckpoint:
        """The model the warm-up or stage 1 ends with (:func:`selected`)."""
        return selected(self.kept)

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
        return selection_summary(self.kept, "round", validation_rows, over=over)


class PlateauWatch:
    """The stopping rule of ``config.eval`` (:func:`fedrs.train.plateau_for`; off when
    ``eval.patience`` is 0): the validation figure ``eval.plateau_metric`` each stage-2 epoch or
    round, and whether it has stopped improving."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.plateau = plateau_for(config)
        self.metric = config.eval.plateau_metric

    @property
    def enabled(self) -> bool:
        return self.plateau is not None

    @property
    def reached(self) -> bool:
        return self.plateau is not None and self.plateau.reached

    def replay(self, history: Iterable[Mapping[str, Any]], stage1_rounds: int) -> None:
        """Count the stage-2 rounds a resumed run already did (``history.json``'s rows)."""
        if self.plateau is None:
            return
        for entry in history:
            if entry["round"] > stage1_rounds:
                self.plateau.update(entry.get(f"val/{self.metric}", math.nan))

    def validate(self, model: JointModel, data: RunData) -> dict[str, float]:
        """Validate ``model`` and count its figure: the ``val/`` metrics, with
        ``val/plateau`` = 1 once the plateau is reached."""
        if self.plateau is None:
            raise RuntimeError("no plateau rule: eval.patience is 0")
        figures = validate(model, data, retrieval=self.metric.startswith("map"))
        validated = validation_metrics(figures)
        if self.plateau.update(plateau_value(figures, self.metric)):
            validated["val/plateau"] = 1.0
        return validated

    def summary(self, unit: str) -> dict[str, Any] | None:
        """The summary's ``plateau`` (:func:`fedrs.train.plateau_summary`), None when off."""
        if self.plateau is None:
            return None
        return plateau_summary(self.plateau, self.metric, unit)
