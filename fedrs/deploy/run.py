"""``fedrs deploy-local``: archives for the nodes, the run config, the run and its outcome.

:func:`prepare_node_data` gives each SuperNode its own archive (synthetic ones, built once and
cached, unless archives are given); :func:`run_federation` submits the app with ``flwr run`` to a
:class:`~fedrs.deploy.local.LocalDeployment`, follows the rounds and checks the outcome:
``flwr run`` returns as soon as the run is submitted and a run whose ServerApp failed is not an
error to it, so the run's final status (``flwr ls``) and a fresh ``summary.json`` decide.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

import fedrs
from fedrs import pipeline
from fedrs.config import ExperimentConfig
from fedrs.data.archive import open_archive
from fedrs.deploy.errors import DeploymentError
from fedrs.deploy.local import COMPLETED, FINISHED, LocalDeployment, NodeSpec
from fedrs.errors import InputError
from fedrs.pipeline import Progress
from fedrs.settings import RunSettings

RoundCallback = Callable[[int, int, dict[str, float]], None]
"""``on_round(round, total_rounds, metrics)``, called once for each round that was logged."""


def _toml_value(key: str, value: Any) -> str:
    """A value as one line of TOML, as the ``overrides`` run config entry reads it."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)  # also TOML's inf, -inf and nan
    elif isinstance(value, str | Path):
        text = json.dumps(str(value), ensure_ascii=False)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    elif isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))} = {_toml_value(key, v)}" for k, v in value.items())
        text = "{" + ", ".join(items) + "}"
    else:
        raise InputError(f"override {key!r}: {value!r} cannot be passed to a deployment")
    if ";" in text:
        raise InputError(f"override {key!r}: values passed to a deployment may not contain ';'")
    return text


def overrides_text(overrides: Mapping[str, Any]) -> str:
    """``{"a.b": 1, "c": "x"}`` -> ``'a.b=1; c="x"'`` (the run config's ``overrides``)."""
    return "; ".join(f"{k}={_toml_value(k, v)}" for k, v in overrides.items())


def node_kinds(modalities: Sequence[str], count: int) -> list[tuple[str, ...]]:
    """Modalities of the synthetic archives of ``count`` nodes: both, S1 only, S2 only, ..."""
    wanted = tuple(m for m in ("s1", "s2") if m in modalities)
    if wanted != ("s1", "s2"):
        return [wanted] * count
    cycle: list[tuple[str, ...]] = [("s1", "s2"), ("s1",), ("s2",)]
    return [cycle[i % len(cycle)] for i in range(count)]


def prepare_node_data(
    config: ExperimentConfig,
    count: int,
    data: Sequence[Path] = (),
    *,
    progress: Progress | None = None,
) -> list[NodeSpec]:
    """One archive (as a fedrs cache) per node, built once and cached.

    With ``data``: one path per node, or one path for all nodes.  Else, when the experiment
    names a ``data.path``, every node reads it.  Else each node gets its own synthetic archive
    (the experiment's size, seeds ``data.seed + 1 + i``): the first with both modalities, the
    next S1 only, the next S2 only, and so on.  A node trains the modalities its archive holds
    (and the experiment reads).

    Raises:
        InputError: as many paths as neither 1 nor ``count``; an archive with no usable modality.
    """

    if data and len(data) not in (1, count):
        raise InputError(f"--data: give one archive for all nodes or one per node ({count})")
    base = config.data
    configs = []
    if data:
        paths = list(data) if len(data) == count else [data[0]] * count
        configs = [base.model_copy(update={"path": Path(p).resolve()}) for p in paths]
    elif base.path is not None:
        configs = [base] * count
    else:
        for index, kind in enumerate(node_kinds(base.modalities, count)):
            update = {
                "seed": base.seed + 1 + index,
                "s1_only_fraction": 1.0 if kind == ("s1",) else 0.0,
                "s2_only_fraction": 1.0 if kind == ("s2",) else 0.0,
            }
            configs.append(base.model_copy(update=update))
    nodes = []
    for index, node_config in enumerate(configs):
        cache = pipeline.resolve_cache(node_config, progress=progress)
        meta = open_archive(cache).metadata
        present = [m for m in ("s1", "s2") if bool(meta[f"has_{m}"].any())]
        modalities = tuple(m for m in present if m in base.modalities)
        if not modalities:
            raise InputError(
                f"{node_config.path or cache}: holds none of the modalities "
                f"{', '.join(base.modalities)} the experiment reads"
            )
        nodes.append(NodeSpec(f"node-{index + 1}", cache, modalities, index))
    return nodes


def default_app() -> Path:
    """The Flower app folder: the source checkout fedrs runs from, else the current folder."""

    checkout = Path(fedrs.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "experiments").is_dir():
        return checkout
    return Path.cwd()


def check_app(app: Path) -> Path:
    """Refuse a folder that is not a Flower app (``pyproject.toml`` with ``[tool.flwr.app]``)."""

    pyproject = app / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        raise InputError(f"{app}: not a Flower app (no readable pyproject.toml)") from None
    if "app" not in project.get("tool", {}).get("flwr", {}):
        raise InputError(f"{pyproject}: has no [tool.flwr.app] section")
    return app.resolve()


def read_history(out: Path) -> list[dict[str, Any]]:
    """The rounds logged so far (``<out>/history.json``, written by the ServerApp)."""
    try:
        history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return history if isinstance(history, list) else []


def write_run_config(path: Path, values: Mapping[str, Any]) -> Path:
    """The ``--run-config`` file of ``flwr run``."""

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(values)), encoding="utf-8")
    return path


def _resume_hint(out: Path) -> str:
    """``"; round 2 is checkpointed: ..."`` when ``out`` holds a checkpoint, else ``""``."""
    try:
        latest = json.loads((out / "checkpoints" / "latest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return f" (round {latest.get('round')} is checkpointed: continue with --resume)"


@dataclass
class _RoundWatch:
    """Calls ``on_round`` once for each round that appears in ``history.json``."""

    out: Path
    total: int
    on_round: RoundCallback | None
    seen: int = 0

    def __call__(self) -> None:
        history = read_history(self.out)
        for entry in history:
            round_ = int(entry.get("round", 0))
            if round_ > self.seen:
                self.seen = round_
                if self.on_round is not None:
                    metrics = {k: float(v) for k, v in entry.items() if k != "round"}
                    self.on_round(round_, self.total, metrics)


def run_federation(
    deployment: LocalDeployment,
    settings: RunSettings,
    *,
    app: Path,
    timeout: float = 1800.0,
    on_round: RoundCallback | None = None,
    on_poll: Callable[[], None] | None = None,
    on_submit: Callable[[int], object] | None = None,
    federation_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Submit the federation of ``settings`` to a running deployment and check its outcome.

    Args:
        deployment: a started :class:`LocalDeployment`.
        settings: a :class:`fedrs.settings.RunSettings` (experiment, overrides, out, resume).
        app: the Flower app folder given to ``flwr run``.
        timeout: seconds the run may take once submitted.
        on_round: called for each round logged.
        on_poll: called at each check while the run goes on (e.g. to show its log).
        on_submit: called with the run id once the run is submitted.
        federation_config: ``flwr run --federation-config`` values (simulation runtime:
            ``num-supernodes``, ``client-resources-num-cpus``, ...).

    Returns:
        ``<out>/summary.json``, with ``run_id`` added.

    Raises:
        DeploymentError: a process failed, the run failed (the ServerApp's error, with a hint
            to ``--resume`` when a round is checkpointed), or it did not end within ``timeout``.
    """
    config = settings.experiment()
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    values = {
        "config": settings.config_path or "",
        "overrides": overrides_text(settings.overrides),
        "out": str(out),
        "resume": bool(settings.resume),
        "num-clients": len(deployment.nodes) or config.partition.clients,
    }
    run_config = write_run_config(out / "run-config.toml", values)
    federation_file = None
    if federation_config is not None:
        federation_file = write_run_config(out / "federation-config.toml", federation_config)
    summary_path = out / "summary.json"
    submitted = time.time()

    def summary_is_new() -> bool:
        try:
            return summary_path.stat().st_mtime >= submitted
        except OSError:
            return False

    watch = _RoundWatch(out, config.federation.rounds, on_round)

    def poll() -> None:
        if on_poll is not None:
            on_poll()
        watch()

    try:
        run_id = deployment.submit(app, run_config, federation_file)
        if on_submit is not None:
            on_submit(run_id)
        status = deployment.wait_run(
            run_id, timeout=timeout, on_poll=poll, succeeded=summary_is_new, poll=0.5
        )
        poll()
    except DeploymentError as exc:
        raise DeploymentError(f"{exc}{_resume_hint(out)}") from None
    state = str(status.get("status", ""))
    details = str(status.get("status-details", "") or "").strip()
    if state != COMPLETED:
        reason = details if details and details != "N/A" else state
        raise DeploymentError(
            f"run {run_id} {state.removeprefix(FINISHED)}: {reason}{_resume_hint(out)}"
        )
    if not summary_is_new():
        raise DeploymentError(f"run {run_id} completed but wrote no {summary_path}")
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["run_id"] = run_id
    return summary


def run_local_deployment(
    settings: RunSettings,
    nodes: Sequence[NodeSpec],
    *,
    app: Path,
    tls: bool = True,
    node_auth: bool | None = None,
    timeout: float = 1800.0,
    on_round: RoundCallback | None = None,
    on_start: Callable[[LocalDeployment], None] | None = None,
) -> dict[str, Any]:
    """Start a :class:`LocalDeployment` in ``settings.out_dir``, run the federation, stop it.

    Args:
        settings: a :class:`fedrs.settings.RunSettings` (experiment, overrides, out, resume).
        nodes: the SuperNodes (see :func:`prepare_node_data`).
        app: the Flower app folder given to ``flwr run``.
        tls: TLS on every connection.
        node_auth: only registered SuperNodes may join (default: with TLS).
        timeout: seconds the run may take once submitted.
        on_round: called for each round logged.
        on_start: called with the deployment once every node is online.

    Returns:
        ``<out>/summary.json``, with ``run_id`` added.

    Raises:
        DeploymentError: see :func:`run_federation`; also when a process does not start.
    """
    with LocalDeployment(settings.out_dir, nodes, tls=tls, node_auth=node_auth) as deployment:
        if on_start is not None:
            on_start(deployment)
        return run_federation(deployment, settings, app=app, timeout=timeout, on_round=on_round)
