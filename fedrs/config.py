"""Experiment configuration: pydantic models, TOML loading and overrides.

An experiment is validated once, at the boundary: a TOML file (``experiments/*.toml``) merged with
dotted overrides from the command line (``train.lr=0.001``) or from a Flower run config, into an
:class:`ExperimentConfig`.  Everything inside fedrs reads typed attributes.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedrs.comm import UPDATE_CODECS, UpdateCodec, build_update_codec, update_codec_options
from fedrs.errors import InputError
from fedrs.losses import LossConfig
from fedrs.models.config import ModelConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the archive comes from; with no ``path`` a cached synthetic archive is used."""

    path: Path | None = None
    metadata: Path | None = None
    patches: int = Field(2000, ge=20, description="size of the synthetic archive")
    seed: int = 0
    s1_only_fraction: float = Field(0.0, ge=0.0, le=1.0)
    s2_only_fraction: float = Field(0.0, ge=0.0, le=1.0)
    modalities: tuple[Literal["s1", "s2"], ...] = ("s1", "s2")
    cache_dir: Path | None = Field(None, description="default: $FEDRS_CACHE_DIR or ~/.cache/fedrs")
    max_train: int = Field(0, ge=0, description="cap on training patches; 0: all")
    max_queries: int = Field(
        0,
        ge=0,
        description="cap on evaluation queries (test split); 0: all (set a cap for large "
        "archives: every round encodes them); also accepted as eval.max_queries",
    )
    max_database: int = Field(
        800,
        ge=0,
        description="cap on the evaluation database (train split); 0: all; also accepted as "
        "eval.max_database",
    )
    max_validation: int = Field(
        200, ge=0, description="cap on validation patches (checkpoint selection); 0: all"
    )


def _at_most_stage1(value: int, info: ValidationInfo, name: str, stage1: str) -> int:
    """``value`` (distortion-only epochs or rounds) checked against the stage-1 length."""
    limit = info.data.get(stage1)
    if isinstance(limit, int) and value > limit:
        raise ValueError(
            f"{name} = {value} exceeds {stage1} = {limit}: the distortion-only "
            "part is the start of stage 1"
        )
    return value


class TrainConfig(_Section):
    """Local training: the same for a centralized run and for each federated client."""

    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    codec_lr_scale: float = Field(0.1, gt=0, description="stage 2: codec lr = lr * this")
    density_lr_scale: float = Field(
        10.0,
        gt=0,
        description="the hyper-latent's factorized density (entropy bottleneck) trains at "
        "lr * this in both stages (not scaled by codec_lr_scale)",
    )
    stage1_epochs: int = Field(1, ge=0, description="codec only (rate-distortion)")
    stage2_epochs: int = Field(2, ge=0, description="codec and hash head jointly")
    no_bpp_epochs: int = Field(
        0,
        ge=0,
        description="first stage-1 epochs on distortion alone (best validation PSNR kept); "
        "0: none, and no validation",
    )
    max_batches: int | None = Field(None, ge=1, description="cap on batches per epoch")
    pcgrad: bool = True
    mgda: bool = True
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")
    threads: int = Field(1, ge=1, description="torch threads per trainer")
    device: str = Field(
        "auto",
        description="'auto' (the GPU this process sees, e.g. the one Ray reserved for a client, "
        "else the CPU), 'cpu', 'cuda' or 'cuda:N' (refused where no such GPU is seen)",
    )
    amp: Literal["off", "bf16"] = Field(
        "off",
        description="mixed precision of the training forward pass; rate and likelihoods stay "
        "float32",
    )

    @field_validator("device")
    @classmethod
    def _device_spec(cls, device: str) -> str:
        text = device.strip().lower()
        kind, _, index = text.partition(":")
        if text not in ("auto", "cpu", "cuda") and not (kind == "cuda" and index.isdigit()):
            raise ValueError(f"{device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return text

    @field_validator("no_bpp_epochs")
    @classmethod
    def _within_stage1(cls, epochs: int, info: ValidationInfo) -> int:
        return _at_most_stage1(epochs, info, "no_bpp_epochs", "stage1_epochs")


class EvalConfig(_Section):
    """Retrieval and compression evaluation (queries: test split; database: train split)."""

    ks: tuple[int, ...] = (10, 20, 100)
    random_seed: int = Field(
        0, description="seed of the random-code baseline and of the bootstrap over queries"
    )
    bootstrap_resamples: int = Field(
        1000, ge=1, description="resamples of the 95 % bootstrap interval of mAP@20 over queries"
    )
    patience: int = Field(
        0,
        ge=0,
        description="stop stage 2 when the validation figure has not improved by more than "
        "tolerance for this many epochs (centralized) or rounds (federated); 0: never",
    )
    tolerance: float = Field(0.002, ge=0, allow_inf_nan=False)
    plateau_metric: Literal["map@20", "map@20_min_k_r", "psnr", "bpp"] = Field(
        "map@20", description="the validation figure watched (validation split as queries)"
    )

    @field_validator("ks")
    @classmethod
    def _has_20(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be positive")
        return tuple(sorted(set(ks) | {20}))


class PartitionConfig(_Section):
    name: str = "modality"
    clients: int = Field(10, ge=1)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class UpdateCodecConfig(_Section):
    """Options of the ``entropy`` update codec (:class:`fedrs.comm.EntropyUpdateCodec`)."""

    step: float = Field(
        0.25, gt=0, description="quantisation step as a fraction of each tensor's update RMS"
    )
    bits: int | None = Field(
        None, ge=2, le=16, description="bit budget per element instead of step (2**bits-1 levels)"
    )
    stochastic: bool = Field(False, description="stochastic (unbiased) rounding")
    topk: float | None = Field(
        None, gt=0, le=1, description="fraction of each tensor's elements sent (largest first)"
    )
    error_feedback: bool = Field(True, description="carry what was not sent into the next round")
    broadcast: bool = Field(
        True, description="send the global model as a coded difference where clients hold the last"
    )
    raw_keys: tuple[str, ...] = Field(
        ("num_batches_tracked", "_quantized_cdf", "_cdf_length", "_offset", "scale_table"),
        description="regexes of floating-point keys always sent unchanged",
    )


class DPConfig(_Section):
    """Differential privacy: Flower's clipping wrappers around the strategy (whole replies)."""

    clipping: Literal["none", "fixed", "adaptive"] = "none"
    side: Literal["server", "client"] = Field(
        "server", description="who clips: the server (each reply) or the clients"
    )
    noise_multiplier: float = Field(0.0, ge=0)
    clipping_norm: float = Field(1.0, gt=0, description="fixed norm; initial norm if adaptive")
    target_clipped_quantile: float = Field(0.5, ge=0, le=1, description="adaptive")
    clip_norm_lr: float = Field(0.2, gt=0, description="adaptive")
    clipped_count_stddev: float | None = Field(None, ge=0, description="adaptive")


class FederationConfig(_Section):
    rounds: int = Field(3, ge=1)
    strategy: str = "modality-aware"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    local_keys: tuple[str, ...] = Field(
        (),
        description="regexes of keys that never leave a client (FedBN-style), e.g. "
        "['running_', 'whiten']; empty: every key is shared",
    )
    statistics: Literal["pooled", "local", "averaged"] = Field(
        "pooled",
        description="whitening statistics: 'pooled' (clients send count, sum and outer "
        "products of their features; the server whitens with those of the union), 'local' "
        "(FedBN-style: each client keeps its own; the server evaluates with the pooled ones), "
        "'averaged' (the buffers averaged like weights: the only choice under DP clipping)",
    )
    local_whitening: Literal["batch", "running"] = Field(
        "batch",
        description="how a client's hash head whitens while it trains: 'batch' (each batch's "
        "own covariance, as the centralized run) or 'running' (the whitening statistics of "
        "the model it received, with which it is evaluated; with 'pooled' statistics those of "
        "all clients' features)",
    )
    keep_optimizer: bool = Field(
        False,
        description="a client keeps its Adam state in its node state between rounds of a "
        "stage instead of starting each round with a fresh optimizer",
    )
    head_epochs: int = Field(
        32,
        ge=0,
        description="stage-2 head phase: epochs a client trains the hash head alone, on its "
        "frozen quantised latents, after its local epochs (0: none)",
    )
    head_batch_size: int = Field(16, ge=2, description="batch size of the head phase")
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_clients: int = Field(1, ge=1, description="fewer successful replies fail the round")
    stage1_rounds: int = Field(1, ge=0, description="rounds of codec-only training first")
    no_bpp_rounds: int = Field(
        0,
        ge=0,
        description="first stage-1 rounds on distortion alone (best validation PSNR kept); "
        "0: none, and no validation",
    )
    cyclic_rounds: int = Field(
        1,
        ge=0,
        description="first rounds in which the sampled clients train in turn, each from the "
        "model the previous one returned (cyclic weight transfer), instead of in parallel "
        "from one model and averaged: the same bytes and passes, the clients' training times "
        "added up; FedAvg, modality-aware and FedProx only; 0: none (1: stage 1's round, see the "
        "README)",
    )
    local_epochs: int = Field(2, ge=1, description="FedAvg's E: epochs a client trains a round")
    local_batch_size: int | None = Field(
        4,
        ge=1,
        description="FedAvg's B: the batch size of a client's local training (more local steps "
        "a round when smaller; 4 measured best, see the README); None: train.batch_size",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs per simulated client (Ray)")
    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per simulated client (Ray)")
    round_timeout_s: float = Field(900.0, gt=0)
    max_weight: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="largest example count (aggregation weight) a reply may claim; a larger "
        "one is a failed reply; unset: the number of training patches of the server's archive "
        "(set it when clients train on archives of their own)",
    )
    ray_address: str | None = None
    fail_clients: tuple[int, ...] = Field(
        (), description="client ids that raise when training (fault-tolerance tests)"
    )
    update_codec: str = Field(
        "none", description="how updates travel: 'none' (plain arrays) or 'entropy' (coded)"
    )
    codec: UpdateCodecConfig = Field(default_factory=UpdateCodecConfig)  # type: ignore[arg-type]
    dp: DPConfig = Field(default_factory=DPConfig)  # type: ignore[arg-type]

    @field_validator("dp")
    @classmethod
    def _statistics_under_dp(cls, dp: DPConfig, info: ValidationInfo) -> DPConfig:
        statistics = info.data.get("statistics", "pooled")
        if dp.clipping != "none" and statistics != "averaged":
            raise ValueError(
                f"federation.statistics = {statistics!r} sends feature statistics outside DP "
                "clipping and noise; set federation.statistics = 'averaged' with federation.dp"
            )
        return dp

    @field_validator("no_bpp_rounds")
    @classmethod
    def _within_stage1(cls, rounds: int, info: ValidationInfo) -> int:
        return _at_most_stage1(rounds, info, "no_bpp_rounds", "stage1_rounds")

    @field_validator("update_codec")
    @classmethod
    def _known_codec(cls, name: str) -> str:
        UPDATE_CODECS.lookup(name)
        return name

    def build_update_codec(self, seed: int = 0) -> UpdateCodec:
        """The configured update codec, given the ``codec`` options it takes and ``seed``."""

        accepted = update_codec_options(self.update_codec)
        options = self.codec.model_dump() | {"seed": seed}
        return build_update_codec(
            self.update_codec, **{k: v for k, v in options.items() if k in accepted}
        )


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="default: sqlite file under the output folder")
    experiment: str = "fedrs"


_EVAL_SIZE_ALIASES = ("max_queries", "max_database")
"""Keys of ``[data]`` also accepted under ``[eval]``."""


class ExperimentConfig(_Section):
    """A whole experiment: data, model, losses, training, evaluation, federation, tracking."""

    name: str = "default"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)  # type: ignore[arg-type]
    eval: EvalConfig = Field(default_factory=EvalConfig)  # type: ignore[arg-type]
    partition: PartitionConfig = Field(default_factory=PartitionConfig)  # type: ignore[arg-type]
    federation: FederationConfig = Field(default_factory=FederationConfig)  # type: ignore[arg-type]
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # type: ignore[arg-type]

    @model_validator(mode="before")
    @classmethod
    def _evaluation_sizes(cls, values: Any) -> Any:
        """``eval.max_queries`` / ``eval.max_database``: other names of ``data.max_queries`` /
        ``data.max_database`` (where they are kept), e.g. ``--set eval.max_queries=0``; given
        under both names, the ``eval`` one is used."""
        if not isinstance(values, Mapping) or not isinstance(values.get("eval"), Mapping):
            return values
        sizes = {k: v for k, v in values["eval"].items() if k in _EVAL_SIZE_ALIASES}
        data = values.get("data", {})
        if isinstance(data, BaseModel):
            data = data.model_dump(exclude_unset=True)
        if not sizes or not isinstance(data, Mapping):
            return values  # nothing to move, or a bad [data] that validation will name
        rest = {k: v for k, v in values["eval"].items() if k not in _EVAL_SIZE_ALIASES}
        return {**values, "eval": rest, "data": {**data, **sizes}}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (paths as strings)."""
        return json.loads(self.model_dump_json())

    def to_toml(self) -> str:
        """The configuration as TOML text (round-trips through :func:`load_config`)."""

        return tomli_w.dumps(_drop_none(self.to_dict()))


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``; the value is read as TOML, else as a string."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not of the form key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key:
        raise InputError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys of a nested dict (a copy); intermediate tables are created."""
    out = json.loads(json.dumps(values, default=str))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"override {key!r}: {part!r} is not a table")
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> ExperimentConfig:
    """Build an experiment from a TOML file (optional) and overrides, validated once.

    Raises:
        InputError: unreadable TOML, an unknown key, or a value of the wrong type (the message
            names the file and the key).
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: invalid TOML ({exc})") from None
    if overrides is not None:
        pairs = (
            dict(overrides)
            if isinstance(overrides, Mapping)
            else dict(parse_override(o) for o in overrides)
        )
        values = apply_overrides(values, pairs)
    try:
        return ExperimentConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InputError(f"{source}: {problems}") from None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: leave None values out (every field that may be None defaults to it)."""
    return {
        k: _drop_none(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None
    }
