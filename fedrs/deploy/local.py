"""A Flower deployment on this machine: one SuperLink and N SuperNodes as real processes.

:class:`LocalDeployment` starts ``flower-superlink`` and one ``flower-supernode`` per archive on the
loopback address, each in its own session with its log under ``<folder>/logs``, and stops every
process it started (SIGTERM, then SIGKILL) when the ``with`` block ends, also on an error, Ctrl-C or
SIGTERM.  As a deployment across machines is laid out, the SuperNodes do not reach the SuperLink's
own address, which also serves the Control API: they connect to a Fleet gateway (``fedrs
fleet-gateway``, :mod:`fedrs.deploy.gateway`) on a port of its own, which forwards the Fleet API's
calls and nothing else.  With TLS it makes a CA, the SuperLink's certificate and node keys
(:mod:`fedrs.deploy.certs`) under ``<folder>/certs``; with node authentication (the default under
TLS) it registers each node's public key (``flwr supernode register``) before the node starts, so
that only those nodes are let in.  The operator side is the Flower CLI with its own ``FLWR_HOME``
(``<folder>/flwr-home/config.toml`` names the connection ``local``).

:mod:`fedrs.deploy.run` runs a federation on it (``fedrs deploy-local``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import tomli_w

from fedrs.deploy.certs import Credentials, create_credentials, public_key_path
from fedrs.deploy.errors import DeploymentError
from fedrs.deploy.processes import ManagedProcess, ProcessSupervisor, free_port, port_open
from fedrs.errors import InputError

HOST = "127.0.0.1"
CONNECTION = "local"
"""Name of the SuperLink connection in the deployment's ``FLWR_HOME/config.toml``."""
SUPERLINK = "superlink"
GATEWAY = "fleet-gateway"
"""The process that opens the SuperLink's Fleet API, and only it, to the SuperNodes
(:mod:`fedrs.deploy.gateway`)."""
SERVERAPP = "flwr-serverapp"
RUN_LOG = "run-log"
"""The ``flwr log --stream`` process of a verbose run."""
HELPERS = (SUPERLINK, GATEWAY, RUN_LOG)
SIMULATION = "flwr-simulation"
"""The process that runs a whole simulated federation (ServerApp and ClientApps on Ray)."""
FINISHED = "finished:"
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its name, its archive and the modalities it trains.

    Attributes:
        name: the process name (``node-1``, ...), also the name of its key and log.
        data_path: the node's archive or fedrs cache (``node_config["data-path"]``).
        modalities: what it trains (``node_config["modalities"]``).
        partition_id: the node's client id (seeds its training; ``node_config["partition-id"]``).
    """

    name: str
    data_path: Path
    modalities: tuple[str, ...]
    partition_id: int

    def node_config(self) -> dict[str, Any]:
        """The ``--node-config`` values the ClientApp reads."""
        return {
            "data-path": str(self.data_path),
            "modalities": ",".join(self.modalities),
            "partition-id": self.partition_id,
        }


def flower_executable(name: str) -> str:
    """Path of a Flower command (``flwr``, ``flower-superlink``, ...) of this environment."""

    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name}: command not found (is flwr installed in this environment?)")
    return found


def _last_line(path: Path) -> str:
    """The last error line of a log (else its last line), without terminal colour codes."""

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"\[code: \d+\]|error", line, re.IGNORECASE)]
    return (errors or lines or ["(empty log)"])[-1]


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object printed last on ``text`` (the CLI may print other lines first)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the output")
    data = json.loads(text[start:])
    if not isinstance(data, dict):
        raise ValueError("the output is not a JSON object")
    return data


class LocalDeployment:
    """One SuperLink and a SuperNode per :class:`NodeSpec`, as processes on this machine.

    Use it as a context manager: entering starts everything and waits until every node is
    online; leaving stops every process that was started.

    Args:
        folder: where logs (``logs/``), certificates (``certs/``), node configs (``nodes/``)
            and the Flower CLI home (``flwr-home/``) go.
        nodes: the SuperNodes to start.
        tls: encrypt every connection (SuperLink Fleet, Control and Runtime APIs).
        node_auth: let in only registered SuperNodes (needs TLS); default: on with TLS.
        simulation: run the SuperLink's simulation runtime (no SuperNodes: a run's ClientApps
            are simulated on Ray by the ``flwr-simulation`` process the SuperLink starts).
        start_timeout: seconds the SuperLink and the nodes get to come up.
        env: extra environment variables of every process.
    """

    def __init__(
        self,
        folder: str | Path,
        nodes: Sequence[NodeSpec],
        *,
        tls: bool = False,
        node_auth: bool | None = None,
        simulation: bool = False,
        start_timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if node_auth is None:
            node_auth = tls and not simulation
        if node_auth and not tls:
            raise InputError("SuperNode authentication needs TLS (use --tls)")
        if simulation and (nodes or node_auth):
            raise InputError("a simulation runtime has no SuperNodes to start or authenticate")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names) or set(names) & set(HELPERS):
            raise InputError(f"node names must be unique and not one of {HELPERS}: {names}")
        self.folder = Path(folder).resolve()
        self.nodes = list(nodes)
        self.tls = tls
        self.node_auth = node_auth
        self.simulation = simulation
        self.app_process = SIMULATION if simulation else SERVERAPP
        self.start_timeout = start_timeout
        self.logs = self.folder / "logs"
        self.home = self.folder / "flwr-home"
        self.port = 0
        self.fleet_port = 0
        self.credentials: Credentials | None = None
        bin_dir = str(Path(sys.executable).parent)
        self.env: dict[str, str] = dict(os.environ) | {
            "FLWR_HOME": str(self.home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        }
        self.env.update(env or {})
        self.supervisor = ProcessSupervisor(record=self.logs / "processes.json", env=self.env)
        self._old_handlers: dict[int, Any] = {}
        self.signalled: int | None = None
        self._ports: set[int] = set()
        self._reported: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalDeployment:
        self._trap_signals()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _trap_signals(self) -> None:
        """Turn SIGTERM into ``SystemExit(143)`` and Ctrl-C into ``KeyboardInterrupt``, so that
        leaving the ``with`` block stops everything, and remember the signal.

        Python drops an exception raised while a finaliser (``__del__``, a garbage-collector
        callback) runs, printing "Exception ignored"; :meth:`wait_run` raises the remembered
        signal again at its next check, so that a Ctrl-C is never lost.  Handlers someone else
        installed are left alone.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
        for signum, default in defaults.items():
            if signal.getsignal(signum) is default:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = signum
        self.raise_signalled()

    def raise_signalled(self) -> None:
        """Raise the exception of the signal received, if any (see :meth:`_trap_signals`)."""
        if self.signalled == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signalled is not None:
            raise SystemExit(128 + self.signalled)

    def start(self) -> None:
        """Start the SuperLink, register the node keys, start the nodes, wait until online."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.credentials = create_credentials(self.folder / "certs", nodes=len(self.nodes))
        self.start_superlink()
        if not self.simulation:
            self.start_gateway()
        self.write_connection()
        for index, node in enumerate(self.nodes):
            key = self.node_key(index)
            if self.node_auth and key is not None:
                self.register(public_key_path(key))
            self.start_supernode(node, key=key)
        if self.nodes:
            self.wait_online(len(self.nodes))

    def stop(self) -> None:
        """Stop every process started (SuperNodes first), SIGTERM then SIGKILL.

        A second Ctrl-C while stopping is ignored, so that nothing is left behind.
        """
        main = threading.current_thread() is threading.main_thread()
        old_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            nodes = [p for p in self.supervisor.processes if p.name not in HELPERS]
            self.supervisor.stop(nodes, grace=10.0)
            self.supervisor.stop(grace=10.0)
        finally:
            if main:
                signal.signal(signal.SIGINT, old_sigint or signal.SIG_DFL)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers = {}

    # ------------------------------------------------------------------ processes

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (its Control and Runtime APIs, and its Fleet API for
        the gateway alone)."""
        return f"{HOST}:{self.port}"

    @property
    def fleet_address(self) -> str:
        """``host:port`` the SuperNodes connect to: the Fleet gateway, which forwards the Fleet
        API calls and nothing else."""
        return f"{HOST}:{self.fleet_port}"

    def node_key(self, index: int) -> Path | None:
        """Private key of node ``index`` under TLS (each node authenticates with one)."""
        if self.credentials is None:
            return None
        return self.credentials.node_keys[index]

    def superlink_argv(self) -> list[str]:
        """The ``flower-superlink`` command line."""
        argv = [
            flower_executable("flower-superlink"),
            "--disable-runtime-dependency-installation",
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        if self.simulation:
            argv.append("--simulation")
        argv += self._server_tls_argv()
        if self.credentials is not None and self.node_auth:
            argv.append("--enable-supernode-auth")
        return argv

    def _server_tls_argv(self) -> list[str]:
        """The TLS options of a process that serves the nodes (the SuperLink, the Fleet
        gateway): the CA certificate and the server's pair, or ``--insecure`` without
        credentials."""
        if self.credentials is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.credentials.ca_cert),
            "--ssl-certfile",
            str(self.credentials.server_cert),
            "--ssl-keyfile",
            str(self.credentials.server_key),
        ]

    def start_superlink(self) -> ManagedProcess:
        """Start the SuperLink on a free port and wait until it accepts connections."""
        self.port = self._fresh_port()
        process = self.supervisor.start(
            SUPERLINK, self.superlink_argv(), log=self.logs / "superlink.log", cwd=self.folder
        )
        self._wait_port(process, "the SuperLink", self.port)
        return process

    def gateway_argv(self) -> list[str]:
        """The ``fedrs fleet-gateway`` command line: the Fleet port, forwarding to the
        SuperLink."""
        return [
            flower_executable("fedrs"),
            "fleet-gateway",
            "--listen",
            self.fleet_address,
            "--superlink",
            self.address,
            *self._server_tls_argv(),
        ]

    def start_gateway(self) -> ManagedProcess:
        """Start the Fleet gateway on a free port and wait until it accepts connections."""
        self.fleet_port = self._fresh_port()
        process = self.supervisor.start(
            GATEWAY, self.gateway_argv(), log=self.logs / "fleet-gateway.log", cwd=self.folder
        )
        self._wait_port(process, "the Fleet gateway", self.fleet_port)
        return process

    def _wait_port(self, process: ManagedProcess, what: str, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not port_open(HOST, port):
            if not process.running():
                raise DeploymentError(
                    f"{what} exited with code {process.returncode} while starting: "
                    f"{_last_line(process.log)} (see {process.log})"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{what} did not open port {port} within {self.start_timeout:g} s; "
                    f"see {process.log}"
                )
            time.sleep(0.3)

    def supernode_argv(self, node: NodeSpec, *, key: Path | None, port: int) -> list[str]:
        """The ``flower-supernode`` command line of ``node`` (its node config in a TOML file)."""

        config_file = self.folder / "nodes" / f"{node.name}.toml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(tomli_w.dumps(node.node_config()), encoding="utf-8")
        argv = [
            flower_executable("flower-supernode"),
            "--superlink",
            self.fleet_address,
            "--host",
            HOST,
            "--port",
            str(port),
            "--node-config",
            str(config_file),
        ]
        if self.credentials is None:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(self.credentials.ca_cert)]
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        return argv

    def start_supernode(self, node: NodeSpec, *, key: Path | None = None) -> ManagedProcess:
        """Start one SuperNode (its Runtime API on a free port); does not wait for it."""
        argv = self.supernode_argv(node, key=key, port=self._fresh_port())
        return self.supervisor.start(
            node.name, argv, log=self.logs / f"{node.name}.log", cwd=self.folder
        )

    def _fresh_port(self) -> int:
        """A free port not handed out before by this deployment."""
        while True:
            port = free_port(HOST)
            if port not in self._ports:
                self._ports.add(port)
                return port

    def kill(self, name: str, sig: int = signal.SIGKILL) -> ManagedProcess:
        """Signal a process group and its descendants (to simulate a crash)."""
        return self.supervisor.kill(name, sig)

    # ------------------------------------------------------------------ Flower CLI

    def write_connection(self) -> Path:
        """Write ``FLWR_HOME/config.toml`` with the connection ``local`` to the SuperLink."""

        connection: dict[str, Any] = {"address": self.address}
        if self.credentials is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(self.credentials.ca_cert)
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "config.toml"
        text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
        path.write_text(text, encoding="utf-8")
        return path

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` against this deployment; raises when it fails or times out."""
        argv = [flower_executable("flwr"), *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=self.folder,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"flwr {args[0]} did not answer within {timeout:g} s") from exc
        if done.returncode != 0:
            told = (done.stderr.strip() or done.stdout.strip()).splitlines()
            reason = told[-1] if told else f"exit code {done.returncode}"
            raise DeploymentError(f"flwr {' '.join(args[:2])} failed: {reason}")
        return done

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` and return its JSON answer."""
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            data = _last_json(done.stdout)
        except ValueError as exc:
            raise DeploymentError(f"flwr {args[0]}: unreadable answer ({exc})") from None
        if not data.get("success", False):
            raise DeploymentError(f"flwr {args[0]} failed: {data.get('error-message', data)}")
        return data

    def register(self, public_key: Path) -> int:
        """Register a SuperNode's public key with the SuperLink; returns its node id."""
        data = self.flwr_json("supernode", "register", str(public_key), CONNECTION)
        return int(data["node-id"])

    def supernodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink knows (``flwr supernode list``)."""
        data = self.flwr_json("supernode", "list", CONNECTION)
        nodes: list[dict[str, Any]] = data.get("nodes", [])
        return nodes

    def online(self) -> int:
        """How many SuperNodes are online."""
        return sum(1 for n in self.supernodes() if n.get("status") == "online")

    def wait_online(self, count: int, timeout: float | None = None) -> None:
        """Wait until ``count`` SuperNodes are online; fail early when a node exits."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self.check_superlink()
            for process in self.current_nodes():
                if not process.running():
                    raise DeploymentError(
                        f"SuperNode {process.name} exited with code {process.returncode} while "
                        f"starting: {_last_line(process.log)} (see {process.log})"
                    )
            if self.online() >= count:
                return
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"fewer than {count} SuperNodes came online within {limit:g} s; "
                    f"see the logs in {self.logs}"
                )
            time.sleep(1.0)

    def current_nodes(self) -> list[ManagedProcess]:
        """The SuperNode processes started last under each name."""
        latest = {p.name: p for p in self.supervisor.processes if p.name not in HELPERS}
        return list(latest.values())

    def check_superlink(self) -> None:
        """Raise when the SuperLink process, or the Fleet gateway, has exited."""
        process = self.supervisor.get(SUPERLINK)
        if not process.running():
            raise DeploymentError(
                f"the SuperLink (pid {process.pid}) exited with code {process.returncode}; "
                f"see {process.log}"
            )
        if self.fleet_port:
            gateway = self.supervisor.get(GATEWAY)
            if not gateway.running():
                raise DeploymentError(
                    f"the Fleet gateway (pid {gateway.pid}) exited with code "
                    f"{gateway.returncode}: {_last_line(gateway.log)} (see {gateway.log})"
                )

    def submit(self, app: Path, run_config: Path, federation_config: Path | None = None) -> int:
        """``flwr run APP local --run-config FILE [--federation-config FILE]``; the run id."""
        args = ["run", str(app), CONNECTION, "--run-config", str(run_config)]
        if federation_config is not None:
            args += ["--federation-config", str(federation_config)]
        data = self.flwr_json(*args)
        return int(data["run-id"])

    def stream_run_log(self, run_id: int) -> ManagedProcess:
        """``flwr log RUN --stream`` into ``<folder>/logs/run.log`` (the run's ServerApp and
        ClientApp output, Ray's included); stopped with the deployment."""
        argv = [flower_executable("flwr"), "log", str(run_id), CONNECTION, "--stream"]
        return self.supervisor.start(RUN_LOG, argv, log=self.logs / "run.log", cwd=self.folder)

    def run_status(self, run_id: int) -> dict[str, Any]:
        """The run's entry of ``flwr ls`` (status, status-details, elapsed, ...)."""
        data = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id), timeout=60.0)
        runs = data.get("runs", [])
        if not runs:
            raise DeploymentError(f"run {run_id} is unknown to the SuperLink")
        run: dict[str, Any] = runs[0]
        return run

    def stop_run(self, run_id: int) -> None:
        """``flwr stop``: ask the SuperLink to stop a run (errors ignored)."""
        try:
            self.flwr("stop", str(run_id), CONNECTION, timeout=30.0)
        except DeploymentError:
            pass

    def wait_run(
        self,
        run_id: int,
        *,
        timeout: float,
        poll: float = 1.0,
        status_every: float = 30.0,
        done_hint: Callable[[], bool] | None = None,
        on_poll: Callable[[], None] | None = None,
        succeeded: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Follow a run until it finishes; returns its final ``flwr ls`` entry.

        ``flwr ls`` is asked every ``status_every`` seconds, and at once when the run's
        ServerApp process ends or ``done_hint`` says so.

        Args:
            run_id: the run.
            timeout: seconds; past them the run is stopped and an error raised.
            poll: seconds between the cheap checks (processes, ``on_poll``, ``done_hint``).
            status_every: most seconds between two ``flwr ls`` calls.
            done_hint: returns True when the run looks finished.
            on_poll: called at each check (e.g. to show progress).
            succeeded: returns True when the run has done all its work (its ServerApp wrote
                its last output); the run then counts as completed without waiting for
                Flower to wind it down (the processes are stopped by :meth:`stop`).

        Raises:
            DeploymentError: the SuperLink or every SuperNode exited, or the run did not end
                within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + status_every
        earlier = set(self.supervisor.noted(SUPERLINK, self.app_process))
        failures = 0
        while True:
            time.sleep(poll)
            self.raise_signalled()
            self.supervisor.note_descendants()
            self.check_superlink()
            nodes = self.current_nodes()
            for process in nodes:
                if not process.running() and process.pid not in self._reported:
                    self._reported.add(process.pid)
                    self.on_node_exit(process)
            if self.nodes and not any(p.running() for p in nodes):
                self.stop_run(run_id)
                raise DeploymentError("every SuperNode has exited; the run cannot go on")
            if on_poll is not None:
                on_poll()
            if succeeded is not None and succeeded():
                return {"run-id": run_id, "status": COMPLETED, "status-details": ""}
            serverapps = {
                pid: running
                for pid, running in self.supervisor.noted(SUPERLINK, self.app_process).items()
                if pid not in earlier
            }
            ended = bool(serverapps) and not any(serverapps.values())
            now = time.monotonic()
            if now >= next_status or ended or (done_hint is not None and done_hint()):
                try:
                    status = self.run_status(run_id)
                    failures = 0
                except DeploymentError:
                    failures += 1  # the SuperLink runs (checked above): try again, a few times
                    if failures >= 3:
                        raise
                    status = {}
                if str(status.get("status", "")).startswith(FINISHED):
                    return status
                next_status = now + (poll * 3 if ended or failures else status_every)
            if now > deadline:
                self.stop_run(run_id)
                raise DeploymentError(f"run {run_id} did not finish within {timeout:g} s")

    def on_node_exit(self, process: ManagedProcess) -> None:
        """Called once when a SuperNode exits during a run (default: a line on stderr)."""
        print(
            f"fedrs: warning: SuperNode {process.name} (pid {process.pid}) exited with code "
            f"{process.returncode}; the run goes on with the others ({process.log})",
            file=sys.stderr,
        )
