"""Centralized reference figures, cached beside the archive they were measured on.

``fedrs compare`` trains a centralized model on the pooled training split and writes its final
figures here; ``fedrs simulate`` shows them next to a federation's figures when the same
archive, model, training recipe, evaluation and seed have a reference, so the cost of not
pooling is visible at a glance.

A reference is one JSON file ``<cache folder>/references/<key>.json``; ``key`` is a digest of
what the centralized figures depend on: the data section (archive, splits and caps; not where
the cache lives), the model, loss, training (not the device or threads) and evaluation
sections, the seed, and the epochs a stage the federation's rounds amount to
(:func:`centralized_overrides`).  The partition, the strategy and the rest of the federation
section do not enter it: every federation of one recipe shares one reference.  A reference file
is read as hostile input: anything but the expected figures is ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from fedrs.config import ExperimentConfig
from fedrs.io import atomic_write_text

FORMAT = "fedrs-centralized-reference"
FIGURES = ("map@20", "map@20_min_k_r", "map@20_random", "map@20_min_k_r_random")
"""Scalar figures a reference keeps (beside ``bpp`` and ``psnr`` per modality)."""
_MAX_BYTES = 1 << 20


def centralized_overrides(config: ExperimentConfig) -> dict[str, Any]:
    """Overrides giving a centralized run the federation's total local epochs per stage (and
    its distortion-only warm-up, in epochs)."""
    fed = config.federation
    stage1 = min(fed.stage1_rounds, fed.rounds)
    return {
        "train.stage1_epochs": stage1 * fed.local_epochs,
        "train.no_bpp_epochs": min(fed.no_bpp_rounds, stage1) * fed.local_epochs,
        "train.stage2_epochs": (fed.rounds - stage1) * fed.local_epochs,
    }


def reference_key(config: ExperimentConfig) -> str:
    """The digest naming the reference of ``config`` (a federation's experiment)."""
    values = config.to_dict()
    data = dict(values["data"])
    data.pop("cache_dir", None)
    if config.data.path is not None:
        data["path"] = str(Path(config.data.path).expanduser().resolve())
    train = {k: v for k, v in values["train"].items() if k not in ("device", "threads")}
    train |= {k.split(".", 1)[1]: v for k, v in centralized_overrides(config).items()}
    identity = {
        "seed": values["seed"],
        "data": data,
        "model": values["model"],
        "loss": values["loss"],
        "train": train,
        "eval": {k: v for k, v in values["eval"].items() if k not in ("patience",)},
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def reference_path(config: ExperimentConfig) -> Path:
    # heavy: pandas, rasterio; `fedrs --help` loads this module
    from fedrs.pipeline import cache_base

    return cache_base(config.data) / "references" / f"{reference_key(config)}.json"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _per_modality(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for modality in ("s1", "s2"):
        number = _number(value.get(modality))
        if number is not None:
            out[modality] = number
    return out


def reference_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What a reference keeps of a run's summary: :data:`FIGURES`, ``bpp`` and ``psnr`` per
    modality, and how long the run trained (``epochs``)."""
    out: dict[str, Any] = {}
    for key in FIGURES:
        number = _number(summary.get(key))
        if number is not None:
            out[key] = number
    for key in ("bpp", "psnr"):
        out[key] = _per_modality(summary.get(key))
    epochs = _number(summary.get("epochs"))
    if epochs is not None:
        out["epochs"] = epochs
    return out


def write_reference(config: ExperimentConfig, summary: dict[str, Any], source: Path) -> Path:
    """Keep the centralized ``summary`` (of the run made from federation experiment
    ``config``, in folder ``source``) as the reference of ``config``'s recipe."""
    path = reference_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "key": reference_key(config),
        "experiment": config.name,
        "run": str(Path(source).resolve()),
        "figures": reference_figures(summary),
    }
    atomic_write_text(path, json.dumps(record, indent=2))
    return path


def read_reference(config: ExperimentConfig) -> dict[str, Any] | None:
    """The reference of ``config``'s recipe (``experiment``, ``run``, ``figures``), or None
    when there is none or the file is not one."""
    path = reference_path(config)
    try:
        if path.stat().st_size > _MAX_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    if record.get("key") != reference_key(config) or not isinstance(record.get("figures"), dict):
        return None
    return {
        "experiment": str(record.get("experiment", "")),
        "run": str(record.get("run", "")),
        "figures": reference_figures(record["figures"]),
    }
