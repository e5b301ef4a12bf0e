"""``fedrs simulate --ray-address auto`` joining a Ray cluster started by ``ray start --head``.

The cluster is this machine alone (2 CPUs, no GPU), started in its own session and temporary
folder, with every port it opens chosen free, so that it neither meets nor disturbs another
Ray instance on the machine.  It is stopped by ending the processes of that session one by one:
``ray stop`` would end every Ray process of the user, other people's simulations included.

Ray registers a head started with ``--node-ip-address 127.0.0.1`` under the machine's address
(it refuses loopback for nodes); the GCS listens on all interfaces, so the simulation reaches it
through ``RAY_ADDRESS=127.0.0.1:<port>``, which ``--ray-address auto`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from _data import SMOKE

BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on this machine right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def session_processes(session: int) -> list[int]:
    """Pids of the processes of session ``session`` (Ray's daemons re-parent, but keep it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def end_session(session: int, grace_s: float = 10.0) -> list[int]:
    """SIGTERM each process of the session, then SIGKILL what is left; the pids that were ended."""
    seen = session_processes(session)
    for pid in seen:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return seen


@contextmanager
def ray_head(env: dict[str, str]) -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs, 0 GPUs); yields its GCS address on loopback."""
    # Ray's unix sockets live under --temp-dir and must fit in 107 bytes: keep the path short.
    temp = Path(tempfile.mkdtemp(prefix="fedrs-ray-", dir="/tmp"))
    (gcs, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager,
     dashboard) = free_ports(9)  # fmt: skip
    command = [
        str(BIN / "ray"), "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs),
        "--num-cpus", "2",
        "--num-gpus", "0",
        "--include-dashboard", "false",
        "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env),
        "--metrics-export-port", str(metrics),
        "--node-manager-port", str(node_manager),
        "--object-manager-port", str(object_manager),
        "--temp-dir", str(temp),
        "--disable-usage-stats",
    ]  # fmt: skip
    starter = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # every daemon it leaves behind is in this session
    )
    try:
        output, _ = starter.communicate(timeout=180)
        if starter.returncode != 0:
            raise RuntimeError(f"ray start failed ({starter.returncode}):\n{output[-3000:]}")
        yield f"127.0.0.1:{gcs}"
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        end_session(starter.pid)
        shutil.rmtree(temp, ignore_errors=True)


CLUSTER_RECORD = """
import json, logging, ray
import ray._private.state as state
ray.init(address="auto", logging_level=logging.ERROR)
jobs = [
    {"id": j["JobID"], "dead": bool(j.get("IsDead")), "entrypoint": j.get("Entrypoint", "")}
    for j in state.jobs()
]
actors = [
    {"class": a["ActorClassName"], "job": a["JobID"], "state": a["State"]}
    for a in state.actors().values()
]
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print("@@" + json.dumps({"jobs": jobs, "actors": actors, "nodes": nodes}))
"""


def cluster_record(env: dict[str, str]) -> dict[str, Any]:
    """The cluster's job and actor tables (GCS), read by a separate driver."""
    run = subprocess.run(
        [sys.executable, "-c", CLUSTER_RECORD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("@@")]
    assert run.returncode == 0 and lines, run.stdout[-2000:] + run.stderr[-2000:]
    record: dict[str, Any] = json.loads(lines[-1][2:])
    return record


def simulate(out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fedrs"), "simulate", "--config", str(SMOKE), "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        cwd=out.parent,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulate_joins_a_ray_cluster(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_USAGE_STATS_ENABLED": "0"}
    # the cluster's workers get the environment of `ray start`, here a cache folder that cannot
    # be used: the simulation must carry the driver's cache folder in the run's settings
    unusable = tmp_path / "not-a-folder"
    unusable.write_text("")
    with ray_head(env | {"FEDRS_CACHE_DIR": str(unusable)}) as address:
        env |= {"FEDRS_CACHE_DIR": str(cache)}
        driver_env = env | {"RAY_ADDRESS": address}
        before = cluster_record(driver_env)
        assert len(before["nodes"]) == 1

        # A GPU request is checked against the cluster's resources, not this machine's.
        refused = simulate(tmp_path / "gpu", driver_env, "--ray-address", "auto", "--num-gpus", "1")
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "the Ray cluster at auto has no GPU" in " ".join(refused.stderr.split())

        out = tmp_path / "run"
        run = simulate(
            out,
            driver_env,
            "--ray-address",
            "auto",
            "--clients",
            "2",
            "--rounds",
            "1",
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds"] == 1
        assert summary["clients_ok"] == 2
        assert summary["clients_failed"] == 0
        assert summary["bytes_up"] > 0

        after = cluster_record(driver_env)
    # The simulation runtime (the flwr-simulation process the SuperLink starts) ran as a job of
    # this cluster, and its clients as actors there: two ClientAppActors, as many as the
    # cluster's 2 CPUs hold at 1 CPU per client.
    new_jobs = [j for j in after["jobs"] if j["id"] not in {b["id"] for b in before["jobs"]}]
    simulations = [j for j in new_jobs if "flwr-simulation" in j["entrypoint"]]
    assert len(simulations) == 1, new_jobs
    assert simulations[0]["dead"]
    clients = [a for a in after["actors"] if a["job"] == simulations[0]["id"]]
    assert [a["class"] for a in clients] == ["ClientAppActor"] * 2, clients
    assert after["nodes"] == before["nodes"]
