"""Start long-running processes, each in its own session, and stop every one of them.

Every process starts in a new session (its own process group), with stdout and stderr in a log
file.  Flower's servers start helpers of their own, some in further sessions (the SuperLink's
SuperExec); the supervisor notes the descendants it sees (``/proc``, Linux) so that stopping
reaches them too, even after their parent died.  Stopping sends SIGTERM to each group and to each
noted descendant, waits, then sends SIGKILL to whatever is left.  A process is signalled only while
it is the one that was noted (same start time), never a later process that reuses its id.

The processes started are recorded in a JSON file (name, pid, process group, command, log), so a
user, or a test, can see what runs and check that nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedrs.errors import FedrsError

PROC = Path("/proc")


@dataclass
class ManagedProcess:
    """A process started by a :class:`ProcessSupervisor`."""

    name: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log: Path
    start_time: int | None

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of ``pid``, or None when unknown or gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_table() -> dict[int, tuple[int, int, str]]:
    """``pid -> (ppid, start time, state)`` of every process (empty without /proc)."""
    table: dict[int, tuple[int, int, str]] = {}
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return table
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        try:
            table[int(entry.name)] = (int(fields[1]), int(fields[19]), fields[0])
        except (IndexError, ValueError):
            continue
    return table


def _command_line(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def is_running(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when given, still has ``start_time``."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = text[text.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return False
    if start_time is not None:
        try:
            return int(fields[19]) == start_time
        except (IndexError, ValueError):
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at the moment (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


@dataclass
class ProcessSupervisor:
    """Starts processes in their own sessions and stops all of them (see the module docstring).

    Args:
        record: JSON file listing the processes (rewritten at each start); None for none.
        env: environment of the processes (default: this process's).
    """

    record: Path | None = None
    env: Mapping[str, str] | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    descendants: dict[int, tuple[int, str]] = field(default_factory=dict)
    """Noted descendants of the processes: pid -> (start time, name of the started process)."""
    commands: dict[int, str] = field(default_factory=dict)
    """Command lines of the noted descendants."""

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, its output appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,
            )
        process = ManagedProcess(name, tuple(argv), popen, log, process_start_time(popen.pid))
        self.processes.append(process)
        self.write_record()
        return process

    def get(self, name: str) -> ManagedProcess:
        """The process started last under ``name``."""
        for process in reversed(self.processes):
            if process.name == name:
                return process
        raise KeyError(name)

    def note_descendants(self) -> None:
        """Note the running descendants of the started processes (call it now and then)."""
        table = _process_table()
        if not table:
            return
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = [(p.pid, p.name) for p in self.processes if p.running()]
        stack += [
            (pid, owner)
            for pid, (start, owner) in self.descendants.items()
            if table.get(pid, (0, -1, ""))[1] == start
        ]
        seen: set[int] = set()
        while stack:
            pid, owner = stack.pop()
            for child in children.get(pid, []):
                if child in seen:
                    continue
                seen.add(child)
                _, start, state = table[child]
                if state not in ("Z", "X") and child not in self.descendants:
                    self.descendants[child] = (start, owner)
                    self.commands[child] = _command_line(child)
                stack.append((child, owner))
        self.write_record()

    def noted(self, owner: str, command: str) -> dict[int, bool]:
        """Noted descendants of ``owner`` whose command line holds ``command``: pid -> running."""
        return {
            pid: is_running(pid, start)
            for pid, (start, of) in self.descendants.items()
            if of == owner and command in self.commands.get(pid, "")
        }

    def write_record(self) -> None:
        """Rewrite the JSON record of the processes."""
        if self.record is None:
            return
        entries = [
            {
                "name": p.name,
                "pid": p.pid,
                "pgid": p.pid,
                "start_time": p.start_time,
                "argv": list(p.argv),
                "log": str(p.log),
                "returncode": p.returncode,
            }
            for p in self.processes
        ]
        data = {
            "processes": entries,
            "descendants": [
                {"pid": pid, "start_time": start, "of": owner, "argv": self.commands.get(pid, "")}
                for pid, (start, owner) in self.descendants.items()
            ],
        }
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(self.record.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.record)

    def _signal(self, process: ManagedProcess, sig: int) -> None:
        # Until it is reaped, the leader's id (and so its group's) cannot be taken by another
        # process; once reaped, its group is reached through the noted descendants only.
        if process.popen.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_descendants(self, sig: int, owners: set[str] | None = None) -> None:
        for pid, (start, owner) in list(self.descendants.items()):
            if (owners is None or owner in owners) and is_running(pid, start):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def kill(self, name: str, sig: int = signal.SIGKILL) -> ManagedProcess:
        """Send ``sig`` to ``name``'s process group and descendants (e.g. to simulate a crash)."""
        process = self.get(name)
        self.note_descendants()
        self._signal(process, sig)
        self._signal_descendants(sig, {name})
        return process

    def stop(self, processes: Sequence[ManagedProcess] | None = None, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL: groups and noted descendants.

        Args:
            processes: the processes to stop (default: all), with their descendants.
            grace: seconds they get to exit after SIGTERM.
        """
        targets = list(self.processes if processes is None else processes)
        owners = {p.name for p in targets}
        self.note_descendants()
        for process in targets:
            self._signal(process, signal.SIGTERM)
        self._signal_descendants(signal.SIGTERM, owners)
        deadline = time.monotonic() + grace
        for process in targets:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and any(
            owner in owners and is_running(pid, start)
            for pid, (start, owner) in self.descendants.items()
        ):
            time.sleep(0.2)
        for process in targets:
            self._signal(process, signal.SIGKILL)
        self._signal_descendants(signal.SIGKILL, owners)
        for process in targets:
            try:
                process.popen.wait(timeout=10.0)
            except subprocess.TimeoutExpired as exc:
                raise FedrsError(f"{process.name} (pid {process.pid}) survived SIGKILL") from exc
        self.write_record()
