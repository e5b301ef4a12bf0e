"""A trained joint model for the archive tools: weights, configuration, fingerprint.

A training run (``fedrs centralized``, ``fedrs simulate``) leaves ``<run>/model.pt`` (the state
dict) and ``<run>/config.toml`` (the experiment).  :func:`load_trained_model` accepts the run
folder or the ``model.pt`` path; when no ``config.toml`` lies beside the weights, the model
configuration stored in a ``.fedrs`` archive's header (``meta["model"]["config"]``) is used.

The *fingerprint* names the exact model that produced an archive's bitstreams and codes: a
SHA-256 over the model configuration (canonical JSON) and every tensor of the state dict (name,
dtype, shape, bytes, in key order).  Codes of models with different fingerprints are not
comparable, and a bitstream can be decoded only by the model that wrote it, so decompression and
query hashing check it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedrs.compression.errors import ModelMismatchError
from fedrs.config import load_config
from fedrs.container import CompressedArchive
from fedrs.errors import InputError
from fedrs.models import JointModel
from fedrs.models.config import ModelConfig

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "ModelMismatchError",
    "TrainedModel",
    "as_trained_model",
    "load_trained_model",
    "model_fingerprint",
    "model_for_archive",
]

MODEL_FILE = "model.pt"
"""Weights file of a run folder (a ``torch.save``'d state dict)."""

CONFIG_FILE = "config.toml"
"""Experiment file of a run folder (read with :func:`fedrs.config.load_config`)."""


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A joint model in evaluation mode with what identifies it.

    Attributes:
        model: the :class:`~fedrs.models.JointModel` (eval mode, entropy tables built).
        config: its architecture.
        fingerprint: ``"sha256:<hex>"`` of configuration and weights (:func:`model_fingerprint`).
        weights: the ``model.pt`` it was loaded from, if any.
        experiment: the experiment name of the run, if known.
    """

    model: JointModel
    config: ModelConfig
    fingerprint: str
    weights: Path | None = None
    experiment: str | None = None

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        return int(self.config.hash_bits)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the model has a codec for."""
        return tuple(self.config.modalities)

    def header_meta(self) -> dict[str, Any]:
        """The ``model`` entry of a ``.fedrs`` header: configuration, fingerprint, experiment."""
        return {
            "config": self.config.model_dump(mode="json"),
            "fingerprint": self.fingerprint,
            "experiment": self.experiment,
        }


def model_fingerprint(model: JointModel) -> str:
    """``"sha256:<hex>"`` of a model's configuration and state dict (see the module docstring).

    The entropy coders' tables are not part of the state dict (they are derived from it), so the
    fingerprint does not change when they are rebuilt.
    """

    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.model_dump(mode="json"), sort_keys=True).encode())
    for key, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"\0{key}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        if data.numel():
            flat = data.reshape(-1)
            raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
            digest.update(raw.numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def _ready(model: JointModel) -> JointModel:
    model.eval()
    model.update()
    return model


def as_trained_model(model: TrainedModel | JointModel | str | Path) -> TrainedModel:
    """A :class:`TrainedModel` from one, from a model object, or from a run folder / weights."""
    if isinstance(model, TrainedModel):
        return model
    if isinstance(model, str | Path):
        return load_trained_model(model)

    if isinstance(model, JointModel):
        _ready(model)
        return TrainedModel(model, model.config, model_fingerprint(model))
    raise InputError(
        f"model: expected a run folder, a model.pt path or a JointModel, got {type(model).__name__}"
    )


def _locate(path: Path) -> tuple[Path, Path | None]:
    """``(weights, config.toml or None)`` of a run folder or a weights file."""
    if path.is_dir():
        weights = path / MODEL_FILE
        if not weights.is_file():
            raise InputError(f"{path}: no {MODEL_FILE} in this folder (give a training run folder)")
    elif path.is_file():
        weights = path
    else:
        raise InputError(f"{path}: model not found (give a run folder or its {MODEL_FILE})")
    config = weights.parent / CONFIG_FILE
    return weights, (config if config.is_file() else None)


def _config_from_meta(meta: Any, where: str) -> ModelConfig | None:
    entry = meta.get("model") if isinstance(meta, Mapping) else None
    config = entry.get("config") if isinstance(entry, Mapping) else None
    if config is None:
        return None
    try:
        return ModelConfig.model_validate(config)
    except ValueError as exc:
        raise InputError(f"{where}: the stored model configuration is invalid ({exc})") from None


def load_trained_model(
    path: str | Path,
    *,
    config: ModelConfig | None = None,
    device: str = "cpu",
) -> TrainedModel:
    """Load a trained model from a run folder or its ``model.pt``.

    Args:
        path: a run folder holding ``model.pt`` (and ``config.toml``), or the ``model.pt`` file.
        config: the architecture to use when no ``config.toml`` lies beside the weights (e.g.
            the configuration stored in an archive); ``config.toml`` wins when both exist.
        device: where to put the model.

    Returns:
        The model in evaluation mode, with its fingerprint.

    Raises:
        InputError: no weights, no configuration, an unreadable file, or weights that do not fit
            the configuration (the message names the file).
    """

    weights, config_file = _locate(Path(path))
    experiment: str | None = None
    if config_file is not None:
        loaded = load_config(config_file)
        model_config, experiment = loaded.model, loaded.name
    elif config is not None:
        model_config = config
    else:
        raise InputError(
            f"{weights}: no {CONFIG_FILE} beside the weights; give the run folder (or an archive "
            "that stores the model configuration)"
        )
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise InputError(f"{weights}: unreadable model weights ({type(exc).__name__})") from None
    if not isinstance(state, Mapping):
        raise InputError(f"{weights}: not a state dict")
    model = JointModel(model_config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise InputError(
            f"{weights}: the weights do not fit the model configuration ({' '.join(first)})"
        ) from None
    model.to(device)
    _ready(model)
    return TrainedModel(model, model_config, model_fingerprint(model), weights, experiment)


def model_for_archive(
    archive: CompressedArchive, model: TrainedModel | JointModel | str | Path
) -> TrainedModel:
    """The model that wrote ``archive``, checked by fingerprint.

    A weights file without ``config.toml`` beside it is loaded with the configuration stored in
    the archive's header.

    Raises:
        ModelMismatchError: the model's fingerprint is not the archive's.
    """
    if isinstance(model, str | Path):
        stored = _config_from_meta(archive.meta, str(archive.path))
        trained = load_trained_model(model, config=stored)
    else:
        trained = as_trained_model(model)
    if trained.fingerprint != archive.model_fingerprint:
        source = trained.weights if trained.weights is not None else "the given model"
        raise ModelMismatchError(
            f"{source}: not the model of {archive.path} (its fingerprint is "
            f"{_short(trained.fingerprint)}, the archive was written by "
            f"{_short(archive.model_fingerprint)})"
        )
    return trained


def _short(fingerprint: str) -> str:
    return fingerprint if len(fingerprint) <= 23 else fingerprint[:23] + "..."
