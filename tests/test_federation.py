"""End-to-end federations on Flower's simulation engine (Ray), on a tiny synthetic archive.

Each simulation starts Ray and trains a smoke model: these tests take a minute or so each and
guard the main job's promises (summary, MLflow history, failures, resume, GPU refusal).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _client import client_context
from _data import REPO, SMOKE

from fedrs.cli import main as cli
from fedrs.deploy.processes import is_running

pytestmark = pytest.mark.usefixtures("cache_env")


def simulate(out: Path, *args: str) -> int:
    return cli(["simulate", "--config", str(SMOKE), "--out", str(out), *args])


FEDRS = Path(sys.executable).parent / "fedrs"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """An uninterrupted 2-round, 3-client modality-aware federation, run as a user runs it
    (the ``fedrs`` command in a process of its own; its output in ``<out>.txt``)."""
    out = tmp_path_factory.mktemp("full") / "run"
    done = subprocess.run(
        [str(FEDRS), "simulate", "--config", str(SMOKE), "--out", str(out)],
        env=os.environ | {"FEDRS_CACHE_DIR": str(cache_dir)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out.with_suffix(".txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_simulation_output_is_ours_only(full_run: Path) -> None:
    """Rounds and summary, no third-party warnings or Flower INFO lines; nothing left running."""
    text = full_run.with_suffix(".txt").read_text(encoding="utf-8")
    assert "round 1/2" in text and "round 2/2" in text
    assert "clients 3 ok, 0 failed" in text
    assert "map@20" in text  # the summary table
    for noise in ("DeprecationWarning", "FutureWarning", "deprecated", "Warning:"):
        assert noise not in text, noise
    assert not re.search(r"\bINFO\b", text), text
    assert not re.search(r"\bWARNING\b", text), text
    record = json.loads((full_run / "logs" / "processes.json").read_text())
    assert record["processes"] and record["descendants"]  # SuperLink, flwr-simulation, Ray
    assert any("flwr-simulation" in d["argv"] for d in record["descendants"])
    for entry in record["processes"] + record["descendants"]:
        assert not is_running(entry["pid"], entry["start_time"]), entry


@pytest.mark.slow
def test_simulation_summary_and_mlflow_history(full_run: Path) -> None:
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["clients_ok"] == 2 * 3
    assert summary["clients_failed"] == 0
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert [h["round"] for h in summary["history"]] == [1, 2]
    assert summary["bytes_up"] == sum(h["comm/bytes_up"] for h in summary["history"])
    assert 0.0 <= summary["map@20"] <= 1.0
    assert summary["bpp"]["s1"] > 0 and summary["bpp"]["s2"] > 0
    assert summary["map@20"] == summary["history"][-1]["eval/map@20"]
    assert summary["tracking_uri"] == f"sqlite:///{full_run / 'mlflow.db'}"
    for name in ("model.pt", "config.toml", "rounds.png", "checkpoints/round-0002.pt"):
        assert (full_run / name).is_file(), name

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["federation.strategy"] == "modality-aware"
    for key in ("eval/map_at_20", "eval/bpp_s1", "eval/psnr_s2", "train/loss", "clients/ok"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(p.step for p in history) == [1, 2], key
    ok = client.get_metric_history(run.info.run_id, "clients/ok")
    assert [p.value for p in sorted(ok, key=lambda p: p.step)] == [3.0, 3.0]
    for key in ("loss", "examples", "train_s", "has_s1", "has_s2"):
        for client_id in range(3):
            history = client.get_metric_history(run.info.run_id, f"client/{client_id}/{key}")
            assert sorted(p.step for p in history) == [1, 2], (client_id, key)
    assert not any(k.startswith("client/") for k in summary["history"][0])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "summary.json", "model.pt", "rounds.png"} <= artifacts


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path: Path, full_run: Path) -> None:
    out = tmp_path / "resumed"
    assert simulate(out, "--rounds", "1") == 0
    first = json.loads((out / "summary.json").read_text())
    assert first["rounds"] == 1
    assert simulate(out, "--rounds", "2", "--resume") == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert [h["round"] for h in resumed["history"]] == [1, 2]
    assert resumed["mlflow_run_id"] == first["mlflow_run_id"]
    a = torch.load(full_run / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_sampled_federation_repeats_a_run_exactly_at_the_same_seed(tmp_path: Path) -> None:
    """Which clients a round samples (2 of 3) and the order of the turns (round 1 in turn)
    come from the seed and the clients' ids, not from the node ids the simulation draws
    afresh each run (nor from Flower's random sample of them); round 2 averages."""
    models = []
    for name in ("first", "again"):
        out = tmp_path / name
        options = ("federation.cyclic_rounds=1", "federation.fraction_train=0.67")
        assert simulate(out, *(arg for option in options for arg in ("--set", option))) == 0
        assert json.loads((out / "summary.json").read_text())["clients_ok"] == 4  # 2 a round
        models.append(torch.load(out / "model.pt", weights_only=True))
    first, again = models
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("cyclic", [0, 1], ids=["parallel", "in-turn"])
def test_failing_client_is_counted_and_run_finishes(tmp_path: Path, cyclic: int) -> None:
    """Also with the clients in turn (``federation.cyclic_rounds``), through Flower's grid."""
    out = tmp_path / "faulty"
    assert (
        simulate(
            out,
            "--rounds",
            "1",
            "--set",
            "federation.fail_clients=[1]",
            "--set",
            f"federation.cyclic_rounds={cyclic}",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_ok"] == 2
    assert summary["clients_failed"] == 1


@pytest.mark.slow
def test_too_few_clients_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "too-few"
    code = simulate(
        out,
        "--rounds",
        "1",
        "--set",
        "federation.fail_clients=[0, 1]",
        "--set",
        "federation.min_clients=2",
    )
    assert code == 1
    assert "round 1" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    import mlflow

    runs = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    found = runs.search_runs([runs.get_experiment_by_name("fedrs").experiment_id])
    assert [r.info.status for r in found] == ["FAILED"]


def test_gpu_request_refused_without_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import fedrs.server.simulation as simulation

    monkeypatch.setattr(simulation, "visible_gpus", lambda address: 0.0)
    assert simulate(tmp_path / "gpu", "--num-gpus", "0.25") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--num-gpus 0.25 asked for, but this machine has no GPU" in err[0]
    assert not (tmp_path / "gpu").exists()


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert simulate(tmp_path / "x", "--strategy", "nope", "--rounds", "1") == 2
    assert "unknown strategy" in capsys.readouterr().err.lower()
    assert simulate(tmp_path / "y", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def _train_message(arrays: Any, server_round: int) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type="train")


def test_client_replies_hold_no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's reply: model arrays of its modalities and scalar metrics, nothing else."""
    from flwr.app import ArrayRecord
    from flwr.supercore.task_identity import TaskIdentity

    from fedrs.clients.app import load_client_data, train
    from fedrs.settings import RunSettings
    from fedrs.train import build_model

    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", "t", raising=False)
    settings = RunSettings(config_path=str(SMOKE))
    config = settings.experiment()
    model = build_model(config)
    message = _train_message(ArrayRecord(model.state_dict()), 1)
    for client in range(config.partition.clients):
        context = client_context(client, config.partition.clients)
        reply = train(message, context, settings)
        content = reply.content
        assert set(content.keys()) == {"arrays", "metrics"}
        arrays = content.array_records["arrays"]
        state = model.state_dict()
        for key, array in arrays.items():
            assert key in state, key
            assert tuple(array.shape) == tuple(state[key].shape), key
            assert not (len(array.shape) >= 2 and tuple(array.shape[-2:]) == (120, 120)), key
        metrics = content.metric_records["metrics"]
        assert all(isinstance(v, int | float) for v in metrics.values())
        assert metrics["num-examples"] > 0
        sent = {k.split(".")[1] for k in arrays.keys() if k.startswith("codecs.")}
        assert sent and sent <= {"s1", "s2"}
        # what per-client tracking reads (client/<id>/...)
        assert metrics["client-id"] == client and metrics["train_s"] > 0
        held = load_client_data(config, dict(context.node_config)).modalities
        assert {m: metrics[f"has-{m}"] for m in ("s1", "s2")} == {
            m: int(m in held) for m in ("s1", "s2")
        }
        # the weight of each modality's keys: the patches of that modality trained on
        counts = {m: metrics.get(f"num-examples-{m}") for m in ("s1", "s2")}
        assert {m for m, n in counts.items() if n is not None} == set(held)
        assert all(0 < n <= metrics["num-examples"] for n in counts.values() if n is not None)


@pytest.mark.slow
def test_compare_runs_then_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compare"
    args = ["compare", "--config", str(SMOKE), "--out", str(out), "--set", "federation.rounds=1"]
    assert cli(args) == 0
    table = json.loads((out / "comparison.json").read_text())
    assert list(table) == ["centralized", "fedavg", "modality-aware"]
    for row in table.values():
        assert 0.0 <= row["mAP@20"] <= 1.0
        # each run's mAP@20 with its bootstrap interval over the queries, both conventions
        assert row["mAP@20 low"] <= row["mAP@20"] <= row["mAP@20 high"]
        assert row["mAP@20 min(k,R) low"] <= row["mAP@20 min(k,R)"] <= row["mAP@20 min(k,R) high"]
    assert "±queries" in capsys.readouterr().out
    central = json.loads((out / "centralized" / "summary.json").read_text())
    assert central["encode_s_per_10k"] > 0
    assert central["epochs"] == 1  # the federation's 1 round x 1 local epoch
    fedavg = json.loads((out / "fedavg" / "summary.json").read_text())
    aware = json.loads((out / "modality-aware" / "summary.json").read_text())
    # whole models travel under FedAvg, only the trained parts under modality-aware
    assert fedavg["bytes_up"] > aware["bytes_up"]
    assert fedavg["clients_failed"] == aware["clients_failed"] == 0
    assert aware["map@20_ci_low"] == aware["history"][-1]["eval/map@20_ci_low"]
    assert aware["encode_s_per_10k"] > 0
    assert (out / "comparison.png").is_file()
    # the centralized figures are kept as the reference a federation of the recipe is shown
    from fedrs.config import load_config
    from fedrs.reference import read_reference

    reference = read_reference(load_config(SMOKE, {"federation.rounds": 1}))
    assert reference is not None and reference["run"] == str(out / "centralized")
    assert reference["figures"]["map@20"] == central["map@20"]
    assert reference["figures"]["bpp"] == central["bpp"]
    capsys.readouterr()
    assert cli(args) == 0  # second time: reads the three summaries
    assert capsys.readouterr().out.count("reading") == 3


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flwr_run_runs_the_same_apps(tmp_path: Path, cache_dir: Path) -> None:
    """``flwr run .`` against a SuperLink (simulation runtime, no per-run dependency install)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    bin_dir = Path(sys.executable).parent
    port = _free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FEDRS_CACHE_DIR": str(cache_dir),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (tmp_path / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the SuperLink did not open its port within 60 s")
        out = tmp_path / "out"
        run_config = f'config="{SMOKE}" out="{out}" num-clients=2'
        done = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                str(REPO),
                "test",
                "--run-config",
                run_config,
                "--stream",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=480,
        )
        told = done.stdout[-3000:] + done.stderr[-3000:]
        assert done.returncode == 0, told
        log.flush()
        assert (out / "summary.json").is_file(), (
            told + (tmp_path / "superlink.log").read_text()[-4000:]
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds"] == 2
        assert summary["clients_ok"] == 2 * 2
        assert summary["clients_failed"] == 0
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)


def _wait_for(condition: Any, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)], ids=["ctrl-c", "sigterm"])
@pytest.mark.usefixtures("default_signals")  # as from a terminal, even in a background job
def test_interrupted_simulation_stops_every_process(
    tmp_path: Path, cache_dir: Path, signum: int, code: int
) -> None:
    """Ctrl-C or SIGTERM once round 1 is logged: exit 130 / 143, nothing left running."""
    out = tmp_path / "run"
    log = (tmp_path / "output.txt").open("w")
    process = subprocess.Popen(
        [str(FEDRS), "simulate", "--config", str(SMOKE), "--out", str(out), "--rounds", "5"],
        env=os.environ | {"FEDRS_CACHE_DIR": str(cache_dir)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _wait_for(lambda: (out / "history.json").is_file(), 400), "round 1 never logged"
        process.send_signal(signum)
        assert process.wait(timeout=120) == code
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    record = json.loads((out / "logs" / "processes.json").read_text())
    assert any("raylet" in d["argv"] for d in record["descendants"]), "Ray was not seen"
    alive = [
        entry
        for entry in record["processes"] + record["descendants"]
        if is_running(entry["pid"], entry["start_time"])
    ]
    assert alive == []
    assert not (out / "summary.json").exists()
