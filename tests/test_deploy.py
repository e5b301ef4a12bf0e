"""Real Flower processes on 127.0.0.1: deploy-local end to end, faults, TLS and node auth.

The slow tests start a SuperLink and SuperNodes as separate processes (``flower-superlink``,
``flower-supernode``) and run the smoke experiment with ``flwr run``; each is bounded in time.
A killed SuperNode is noticed by the SuperLink when it misses its heartbeats (about a minute),
which is what the fault tests wait for.  The fast tests cover certificates, the process
supervisor and argument checks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _data import REPO, SMOKE

from fedrs.cli import main as cli
from fedrs.deploy.certs import create_credentials, create_node_key
from fedrs.deploy.local import DeploymentError, LocalDeployment, NodeSpec
from fedrs.deploy.processes import ProcessSupervisor, is_running
from fedrs.deploy.run import node_kinds, overrides_text, prepare_node_data, run_federation
from fedrs.settings import RunSettings

pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA, server certificate and three node keys, copied into each deployment."""
    folder = tmp_path_factory.mktemp("certs")
    create_credentials(folder, nodes=3)
    return folder


def with_certs(certs: Path, folder: Path) -> Path:
    """``folder`` with a copy of the shared certificates in ``folder/certs``."""
    import shutil

    shutil.copytree(certs, folder / "certs")
    return folder


def smoke_nodes(count: int) -> list[NodeSpec]:
    return prepare_node_data(RunSettings(config_path=str(SMOKE)).experiment(), count)


def rounds_settings(out: Path, rounds: int, min_clients: int) -> RunSettings:
    """The smoke experiment for ``rounds`` rounds, each needing ``min_clients``, into ``out``."""
    overrides = {"federation.rounds": rounds, "federation.min_clients": min_clients}
    return RunSettings(config_path=str(SMOKE), overrides=overrides, out=str(out))


def left_running(out: Path) -> list[str]:
    """Processes of ``<out>/logs/processes.json`` (and their descendants) still running."""
    record = json.loads((out / "logs" / "processes.json").read_text())
    assert record["processes"], "no process was recorded"
    alive = [
        f"{p['name']} ({p['pid']})"
        for p in record["processes"]
        if is_running(p["pid"], p["start_time"])
    ]
    alive += [
        f"{d['argv']} ({d['pid']}, of {d['of']})"
        for d in record["descendants"]
        if is_running(d["pid"], d["start_time"])
    ]
    return alive


def metric_steps(summary: dict[str, Any], key: str) -> list[tuple[int, float]]:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=summary["tracking_uri"])
    points = client.get_metric_history(summary["mlflow_run_id"], key)
    return sorted((p.step, p.value) for p in points)


def _logged(out: Path) -> bool:
    try:
        return bool(json.loads((out / "history.json").read_text()))
    except (OSError, ValueError):
        return False


def after_checkpoint(out: Path, action: Any, timeout: float = 600.0) -> threading.Thread:
    """Run ``action()`` in a thread as soon as round 1 of ``out`` is checkpointed and logged."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout
        while not (out / "checkpoints" / "latest.json").is_file() or not _logged(out):
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def control_status(address: str, folder: Path) -> int:
    """HTTP status of the Control API's ``list-nodes`` (unauthenticated in open-source Flower)
    asked at ``address`` over TLS (the deployment's CA)."""
    import http.client
    import ssl

    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(folder / "certs" / "ca.crt"))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.request(
            "POST",
            "/v1/control/list-nodes",
            body=b"",
            headers={"Content-Type": "application/protobuf", "Accept": "application/protobuf"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def with_fleet_connection(deployment: LocalDeployment) -> None:
    """Add a Flower CLI connection ``fleet`` aimed at the Fleet gateway (as an outsider would
    aim at the address SuperNodes use)."""
    import tomllib

    import tomli_w

    path = deployment.home / "config.toml"
    config = tomllib.loads(path.read_text())
    config["superlink"]["fleet"] = config["superlink"]["local"] | {
        "address": deployment.fleet_address
    }
    path.write_text(tomli_w.dumps(config))


# ------------------------------------------------------------------------------------ fast


def test_certificates_fit_flower(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    made = create_credentials(tmp_path / "c", nodes=2)
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert len(made.node_keys) == 2
    for index, key_path in enumerate(made.node_keys):
        key = load_ssh_private_key(key_path.read_bytes(), None)
        public = load_ssh_public_key(made.node_public_key(index).read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == public.public_numbers()
        assert key_path.stat().st_mode & 0o077 == 0
    assert made.ca_key.stat().st_mode & 0o077 == 0
    assert made.server_key.stat().st_mode & 0o077 == 0

    before = {p: p.read_bytes() for p in (made.ca_cert, made.server_cert, made.node_keys[0])}
    again = create_credentials(tmp_path / "c", nodes=3)
    assert {p: p.read_bytes() for p in before} == before  # kept
    assert len(again.node_keys) == 3
    moved = create_credentials(tmp_path / "c", nodes=3, hosts=["10.1.2.3", "fl.example.org"])
    assert moved.ca_cert.read_bytes() == before[made.ca_cert]
    renewed = x509.load_pem_x509_certificate(moved.server_cert.read_bytes())
    renewed.verify_directly_issued_by(ca)
    names = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",  # the loopback names always: the Control API and the gateway use them
    ]
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]


def test_planted_temporary_key_files_are_not_used(tmp_path: Path) -> None:
    """A world-readable file, or a link, at the old fixed temporary name does not carry the
    private keys: each key is created afresh, exclusively, with mode 0600."""
    folder = tmp_path / "c"
    (folder / "nodes").mkdir(parents=True)
    planted = folder / "ca.key.tmp"
    planted.write_bytes(b"planted")
    planted.chmod(0o644)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not a key")
    (folder / "server.key.tmp").symlink_to(elsewhere)
    (folder / "nodes" / "node-1.tmp").symlink_to(elsewhere)
    made = create_credentials(folder, nodes=1)
    for key in (made.ca_key, made.server_key, made.node_keys[0]):
        assert key.stat().st_mode & 0o777 == 0o600, key
        assert not key.is_symlink() and b"PRIVATE KEY" in key.read_bytes()
    assert planted.read_bytes() == b"planted" and elsewhere.read_bytes() == b"not a key"
    assert not list(folder.glob(".*.tmp")) and not list((folder / "nodes").glob(".*.tmp"))


def test_expired_certificates_are_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired (or soon-expiring) server certificate is made again by the same CA, said in
    one line; an expired CA is refused; validity has an upper bound."""
    import datetime as dt

    from cryptography import x509

    import fedrs.deploy.certs as certs
    from fedrs.errors import InputError

    real_now = certs._now
    folder = tmp_path / "c"
    monkeypatch.setattr(certs, "_now", lambda: real_now() - dt.timedelta(days=400))
    made = create_credentials(folder, nodes=1, days=365)
    monkeypatch.setattr(certs, "_now", real_now)
    old_ca = made.ca_cert.read_bytes()
    old_key = made.node_keys[0].read_bytes()
    assert cli(["certs", "--out", str(folder), "--nodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "server.pem: expired on" in out and "made again by the same CA" in out
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert server.not_valid_after_utc > real_now() + dt.timedelta(days=300)
    assert made.ca_cert.read_bytes() == old_ca and made.node_keys[0].read_bytes() == old_key
    again = create_credentials(folder, nodes=1)
    assert again.notes == ()  # valid now: kept

    monkeypatch.setattr(certs, "_now", lambda: real_now() - dt.timedelta(days=3640))
    create_credentials(tmp_path / "old", nodes=0, ca_days=3650)
    monkeypatch.setattr(certs, "_now", real_now)
    with pytest.raises(InputError, match=r"CA certificate expires on .* in \d+ days.*--overwrite"):
        create_credentials(tmp_path / "old", nodes=0)
    assert create_credentials(tmp_path / "old", nodes=0, overwrite=True).notes == ()
    for days, ca_days in ((826, 1825), (0, 1825), (365, 3651)):
        with pytest.raises(InputError, match="days must be a whole number of days"):
            create_credentials(tmp_path / "bounds", nodes=0, days=days, ca_days=ca_days)
    assert cli(["certs", "--out", str(tmp_path / "d"), "--days", "100000"]) == 2
    assert "from 1 to 825" in capsys.readouterr().err


def test_certs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["certs", "--out", str(tmp_path / "c"), "--nodes", "2"]) == 0
    for name in ("ca.crt", "ca.key", "server.pem", "server.key", "nodes/node-2.pub"):
        assert (tmp_path / "c" / name).is_file(), name
    capsys.readouterr()
    assert cli(["certs", "--out", str(tmp_path / "d"), "--host", "no such host"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'no such host'" in err[0]
    assert cli(["certs", "--out", str(tmp_path / "e"), "--nodes", "-1"]) == 2


def test_overrides_reach_the_apps_unchanged() -> None:
    overrides = {
        "federation.rounds": 2,
        "federation.round_timeout_s": 90.5,
        "federation.fail_clients": [1, 2],
        "data.path": '/data/my "archive" dir',
        "tracking.experiment": "x=y",
        "loss.weights": {"rate": 1.0, "hash bits": float("inf")},
    }
    text = overrides_text(overrides)
    assert RunSettings.from_run_config({"overrides": text}).overrides == overrides
    with pytest.raises(ValueError, match="';'"):
        overrides_text({"tracking.experiment": "a;b"})


def test_supervisor_stops_escaped_descendants(tmp_path: Path) -> None:
    """A child that left its parent's session is still stopped, the group leader too."""
    child = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
        f"open({str(child)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    supervisor = ProcessSupervisor(record=tmp_path / "processes.json")
    parent = supervisor.start("parent", [sys.executable, "-c", script], log=tmp_path / "p.log")
    deadline = time.monotonic() + 30
    while not child.is_file() or not child.read_text():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.1)
    child_pid = int(child.read_text())
    supervisor.note_descendants()
    assert child_pid in supervisor.descendants
    supervisor.stop(grace=2.0)
    assert parent.returncode is not None
    assert not is_running(child_pid)
    record = json.loads((tmp_path / "processes.json").read_text())
    assert record["processes"][0]["pid"] == parent.pid
    assert [d["pid"] for d in record["descendants"]] == [child_pid]


class _SignalsInFinaliser:
    """Sends ``signum`` to this process from ``__del__``, where Python drops the exception."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        time.sleep(0.2)  # the handler runs here; what it raises is printed and dropped


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
@pytest.mark.usefixtures("default_signals")
def test_a_signal_dropped_by_a_finaliser_is_raised_again(
    tmp_path: Path, signum: int, raised: type[BaseException]
) -> None:
    """A Ctrl-C or SIGTERM that arrives while a finaliser runs still stops the deployment."""
    deployment = LocalDeployment(tmp_path, [], simulation=True)
    deployment._trap_signals()
    try:
        _SignalsInFinaliser(signum)  # dropped at once: __del__ runs, its exception is lost
        assert deployment.signalled == signum
        with pytest.raises(raised) as caught:
            deployment.raise_signalled()
        if isinstance(caught.value, SystemExit):
            assert caught.value.code == 128 + signum
    finally:
        deployment.stop()
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)


def test_each_node_gets_an_archive(v2_copy: Path) -> None:
    both, s1, s2 = ("s1", "s2"), ("s1",), ("s2",)
    assert node_kinds(both, 4) == [both, s1, s2, both]
    assert node_kinds(("s2",), 2) == [s2, s2]
    config = RunSettings(config_path=str(SMOKE)).experiment()
    nodes = prepare_node_data(config, 2, [v2_copy])
    assert [(n.name, n.partition_id) for n in nodes] == [("node-1", 0), ("node-2", 1)]
    assert nodes[0].data_path == nodes[1].data_path != v2_copy  # the archive's fedrs cache
    assert nodes[0].modalities == both
    assert nodes[0].node_config() == {
        "data-path": str(nodes[0].data_path),
        "modalities": "s1,s2",
        "partition-id": 0,
    }
    with pytest.raises(ValueError, match=r"one per node \(3\)"):
        prepare_node_data(config, 3, [v2_copy, v2_copy])


def test_deploy_local_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["deploy-local", "--config", str(SMOKE), "--out", str(tmp_path / "o")]
    cases = {
        ("--supernodes", "0"): "--supernodes must be at least 1",
        ("--supernodes", "2", "--min-clients", "3"): "only 2 SuperNodes",
        ("--resume",): "nothing to resume",
        ("--supernodes", "3", "--data", "a", "--data", "b"): "one per node (3)",
        ("--set", "federation.strategy=nope"): "unknown strategy",
    }
    for args, message in cases.items():
        assert cli([*base, *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "o" / "logs").exists()


# ------------------------------------------------------------------------------------ slow


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deploy_local_tls_end_to_end(tmp_path: Path, certs: Path) -> None:
    """``fedrs deploy-local --supernodes 3 --tls --rounds 2``: the whole run, then nothing left."""
    out = with_certs(certs, tmp_path / "run")
    args = ["deploy-local", "--supernodes", "3", "--tls", "--rounds", "2"]
    code = cli([*args, "--config", str(SMOKE), "--out", str(out), "--timeout", "720"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["num_clients"] == 3
    assert summary["clients_ok"] == 2 * 3
    assert summary["clients_failed"] == 0
    assert [h["round"] for h in summary["history"]] == [1, 2]
    assert summary["bpp"]["s1"] > 0 and summary["bpp"]["s2"] > 0
    assert summary["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"
    assert metric_steps(summary, "clients/ok") == [(1, 3.0), (2, 3.0)]
    assert [s for s, _ in metric_steps(summary, "eval/map_at_20")] == [1, 2]
    # each node its own archive, S1+S2 / S1 / S2, given as node config
    configs = [(out / "nodes" / f"node-{i}.toml").read_text() for i in (1, 2, 3)]
    assert [c.count("data-path") for c in configs] == [1, 1, 1]
    assert len({c.splitlines()[0] for c in configs}) == 3
    assert ['modalities = "s1,s2"', 'modalities = "s1"', 'modalities = "s2"'] == [
        next(line for line in c.splitlines() if line.startswith("modalities")) for c in configs
    ]
    record = json.loads((out / "logs" / "processes.json").read_text())
    argv = {p["name"]: p["argv"] for p in record["processes"]}
    assert "--enable-supernode-auth" in argv["superlink"]
    assert "--ssl-certfile" in argv["superlink"] and "--insecure" not in argv["superlink"]
    assert argv["superlink"][argv["superlink"].index("--host") + 1] == "127.0.0.1"
    gateway = argv["fleet-gateway"]
    assert "--ssl-certfile" in gateway and "--insecure" not in gateway
    fleet = gateway[gateway.index("--listen") + 1]
    assert fleet != gateway[gateway.index("--superlink") + 1]
    for node in ("node-1", "node-2", "node-3"):
        assert "--auth-supernode-private-key" in argv[node]
        assert "--root-certificates" in argv[node]
        assert argv[node][argv[node].index("--superlink") + 1] == fleet
    assert "Uvicorn running on https://" in (out / "logs" / "superlink.log").read_text()
    assert left_running(out) == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_supernode_killed_mid_round(tmp_path: Path) -> None:
    """A node killed in round 2: the run goes on with the others; with min 3 it stops, loudly."""
    import mlflow

    nodes = smoke_nodes(3)
    folder = tmp_path / "deployment"
    with LocalDeployment(folder, nodes) as deployment:
        out = tmp_path / "min2"
        settings = rounds_settings(out, rounds=3, min_clients=2)
        killer = after_checkpoint(out, lambda: deployment.kill("node-3"))
        summary = run_federation(deployment, settings, app=REPO, timeout=600)
        killer.join(timeout=5)
        # round 2 misses the killed node; round 3 goes on with the two left
        assert summary["rounds"] == 3
        assert [(h["clients/ok"], h["clients/failed"]) for h in summary["history"]] == [
            (3, 0),
            (2, 1),
            (2, 0),
        ]
        assert summary["clients_ok"] == 7 and summary["clients_failed"] == 1
        assert metric_steps(summary, "clients/failed") == [(1, 0.0), (2, 1.0), (3, 0.0)]

        deployment.start_supernode(nodes[2])
        deployment.wait_online(3)
        out = tmp_path / "min3"
        settings = rounds_settings(out, rounds=2, min_clients=3)
        killer = after_checkpoint(out, lambda: deployment.kill("node-2"))
        with pytest.raises(DeploymentError) as failed:
            run_federation(deployment, settings, app=REPO, timeout=600)
        killer.join(timeout=5)
    message = str(failed.value)
    assert "\n" not in message
    assert "failed: ServerApp failed with exception: round 2: 2 successful" in message
    assert "(at least 3 required)" in message
    assert "round 1 is checkpointed: continue with --resume" in message
    assert not (out / "summary.json").exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["round"] for h in history] == [1]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedrs")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    points = client.get_metric_history(run.info.run_id, "clients/ok")
    assert [(p.step, p.value) for p in points] == [(1, 3.0)]
    assert left_running(folder) == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_server_killed_then_resumed(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SuperLink host dies after round 1; ``--resume`` with the same out finishes the run."""
    out = with_certs(certs, tmp_path / "run")
    args = ["deploy-local", "--supernodes", "2", "--tls", "--rounds", "2", "--config", str(SMOKE)]
    args += ["--out", str(out), "--timeout", "600"]

    def kill_server() -> None:
        record = json.loads((out / "logs" / "processes.json").read_text())
        (link,) = [p for p in record["processes"] if p["name"] == "superlink"]
        if is_running(link["pid"], link["start_time"]):
            os.killpg(link["pid"], signal.SIGKILL)
        for entry in record["descendants"]:
            if entry["of"] == "superlink" and is_running(entry["pid"], entry["start_time"]):
                os.kill(entry["pid"], signal.SIGKILL)

    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(cli(args)))
    runner.start()
    killer = after_checkpoint(out, kill_server)
    runner.join(timeout=900)
    killer.join(timeout=5)
    assert codes == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedrs: error: the SuperLink"), err
    assert "round 1 is checkpointed: continue with --resume" in err[0]
    assert not (out / "summary.json").exists()
    assert left_running(out) == []
    first_run = json.loads((out / "checkpoints" / "latest.json").read_text())["mlflow_run_id"]

    assert cli([*args, "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [h["round"] for h in summary["history"]] == [1, 2]
    assert summary["clients_ok"] == 2 * 2
    assert summary["mlflow_run_id"] == first_run
    assert metric_steps(summary, "clients/ok") == [(1, 2.0), (2, 2.0)]
    assert left_running(out) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unregistered_supernodes_are_rejected(tmp_path: Path, certs: Path) -> None:
    """TLS + node auth: registered nodes come online; a stranger's key, or none, is refused."""
    nodes = smoke_nodes(1)
    folder = with_certs(certs, tmp_path / "auth")
    stranger = create_node_key(tmp_path / "stranger" / "key")

    def shadow(name: str) -> NodeSpec:
        return NodeSpec(name, nodes[0].data_path, nodes[0].modalities, 9)

    with pytest.raises(KeyboardInterrupt), LocalDeployment(folder, nodes, tls=True) as deployment:
        assert deployment.node_auth
        listed = deployment.supernodes()
        assert [n["status"] for n in listed] == ["online"]
        intruders = [
            deployment.start_supernode(shadow("stranger"), key=stranger),
            deployment.start_supernode(shadow("keyless")),
        ]
        for intruder in intruders:
            intruder.popen.wait(timeout=120)
            assert intruder.returncode not in (0, None), intruder.name
        assert "Failed to activate SuperNode" in intruders[0].log.read_text()
        assert "must be registered" in intruders[1].log.read_text()
        told = (folder / "logs" / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in told
        assert deployment.online() == 1
        assert len(deployment.supernodes()) == 1

        # the nodes came through the Fleet gateway; the Control API is not served there
        assert deployment.fleet_address != deployment.address
        record = json.loads((folder / "logs" / "processes.json").read_text())
        argv = {p["name"]: p["argv"] for p in record["processes"]}
        assert argv["node-1"][argv["node-1"].index("--superlink") + 1] == deployment.fleet_address
        assert control_status(deployment.address, folder) == 200
        assert control_status(deployment.fleet_address, folder) == 404
        with_fleet_connection(deployment)
        with pytest.raises(DeploymentError, match="supernode register"):
            deployment.flwr("supernode", "register", str(stranger) + ".pub", "fleet")
        assert len(deployment.supernodes()) == 1
        raise KeyboardInterrupt  # leaving on Ctrl-C stops everything as well
    assert left_running(folder) == []
