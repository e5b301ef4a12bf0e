"""Scale of a simulated federation on this machine: peak memory and time per round.

Runs ``fedrs simulate`` as a child process, twice:

(1) ``default``: the main job as a user types it (``fedrs simulate --clients 10 --partition
    modality``: the built-in experiment, 2,000-patch synthetic archive, 3 rounds);
(2) ``hundred``: 100 clients on tiny shards of the same archive (``data.max_train`` patches in
    all, a few per client), smaller evaluation sets, 2 rounds; one CPU per client, so Ray runs
    as many clients at a time as the machine has cores.

While a run lasts, the memory of its whole process tree (the driver, Ray's GCS and raylet, and
every Ray worker hosting a ClientApp) is sampled from /proc: every ``--interval`` seconds the
anonymous (private) RSS of each process, every ``--pss-interval`` seconds its proportional share
of file-backed and shared pages (smaps_rollup; the memory-mapped cache and the shared libraries
are counted once across the processes that map them).  Their sum is the PSS of the tree, the
figure reported as peak memory; the plain sum of RSS (shared pages once per process) is shown
beside it.  Round times come from the run's own files: ``config.toml`` is written
when the ServerApp starts, ``history.json`` grows by one row at the end of every round.

(3) ``setup``: a client's set-up before training (``fedrs.clients.app.load_client_data``: open
    the run's cache, split it, partition the training rows, keep the shard in the node's state)
    on an index of 480,038 patches, the size of BigEarthNet v2, generated with the official
    metadata's columns: the first round of the first client of a process (it opens the cache),
    the first round of another client of that process, and later rounds (median of 3).  The
    cache holds no pixels (set-up reads none), so no archive of that size is built.

The synthetic archive and its cache are built first (once, under ``$FEDRS_CACHE_DIR`` or
~/.cache/fedrs, where later runs find them), outside the measured runs; ``--patches`` sets its
size (default: the experiment's, 2,000), and :func:`archive_figures` reports on it.  The last
line is one JSON object with the figures.

    python bench/scale.py [--runs default,hundred,setup] [--clients-many 100] [--patches N]
                          [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- process-tree memory from /proc ------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[19])


def _status_kib(pid: int) -> dict[str, int] | None:
    """RssAnon, RssFile, RssShmem of ``pid`` in KiB (/proc/<pid>/status: cheap to read)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            values[key] = int(rest.split()[0])
    return values if len(values) == 3 else None


def _shared_pss_kib(pid: int) -> tuple[int, int] | None:
    """(Pss_File + Pss_Shmem, Pss) of ``pid`` in KiB from smaps_rollup (walks the page tables:
    tens of milliseconds for a process with torch loaded, so it is read less often)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Pss_File", "Pss_Shmem"):
            values[key] = int(rest.split()[0])
    if len(values) != 3:
        return None
    return values["Pss_File"] + values["Pss_Shmem"], values["Pss"]


def _name(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    parts = [p for p in raw.decode(errors="replace").split("\0") if p]
    if not parts:
        return "?"
    if parts[0].startswith("ray::"):
        return parts[0]  # Ray workers rename themselves (ray::ClientAppActor, ray::IDLE)
    shown = [Path(parts[0]).name, *(Path(p).name for p in parts[1:3] if not p.startswith("-"))]
    return " ".join(shown)[:60]


def descendants(root: int, known: dict[int, int]) -> dict[int, int]:
    """Processes below ``root`` (pid -> start time), ``root`` included.

    ``known`` (the previous answer) keeps processes that were seen below ``root`` before and
    have since been re-parented (a Ray daemon whose parent exited) while their start time is
    unchanged, so that a pid reused by another program is not counted.
    """
    parents: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _stat(int(entry))
        if info is None:
            continue
        parents.setdefault(info[0], []).append(int(entry))
        start[int(entry)] = info[1]
    found: dict[int, int] = {}
    stack = [root] + [p for p, t in known.items() if start.get(p) == t]
    while stack:
        pid = stack.pop()
        if pid in found or pid not in start:
            continue
        found[pid] = start[pid]
        stack.extend(parents.get(pid, ()))
    return found


@dataclass
class Sample:
    """One look at the tree (KiB)."""

    t: float
    memory_kib: int  # private (anonymous) pages + a fair share of shared pages, see Sampler
    rss_kib: int  # plain sum of RSS: shared pages once per process that maps them
    processes: int
    top: list[tuple[str, int]]


@dataclass
class Sampler:
    """Samples the memory of a process tree and the progress of a run folder, in a thread.

    Every ``interval`` seconds: the tree, and each process' anonymous, file and shmem RSS from
    /proc/<pid>/status.  Every ``pss_interval`` seconds: each process' proportional share of
    its file-backed and shared pages (``Pss_File + Pss_Shmem`` of smaps_rollup).  A sample's
    ``memory_kib`` is the sum of anonymous RSS (private to each process: Ray workers are
    started by exec, not forked) and of the latest shared shares (file + shmem RSS for a
    process not yet measured): PSS, with the private part at the fine period.
    """

    root: int
    out: Path
    interval: float
    pss_interval: float = 2.0
    started: float = field(default_factory=time.perf_counter)
    samples: list[Sample] = field(default_factory=list)
    pss_peak_kib: int = 0
    server_started: float | None = None
    round_ends: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        known: dict[int, int] = {}
        shared: dict[int, int] = {}
        last_pss = -float("inf")
        while not self._stop.is_set():
            known = descendants(self.root, known)
            if time.perf_counter() - last_pss >= self.pss_interval:
                last_pss = time.perf_counter()
                shared, pss_total = {}, 0
                for pid in known:
                    found = _shared_pss_kib(pid)
                    if found is not None:
                        shared[pid] = found[0]
                        pss_total += found[1]
                self.pss_peak_kib = max(self.pss_peak_kib, pss_total)
            memory = rss = 0
            per: list[tuple[str, int]] = []
            for pid in known:
                status = _status_kib(pid)
                if status is None:
                    continue
                share = shared.get(pid, status["RssFile"] + status["RssShmem"])
                mine = status["RssAnon"] + share
                memory += mine
                rss += status["RssAnon"] + status["RssFile"] + status["RssShmem"]
                per.append((_name(pid), mine))
            now = time.perf_counter() - self.started
            per.sort(key=lambda item: -item[1])
            self.samples.append(Sample(now, memory, rss, len(per), per[:6]))
            self._progress(now)
            self._stop.wait(self.interval)

    def _progress(self, now: float) -> None:
        if self.server_started is None and (self.out / "config.toml").is_file():
            self.server_started = now
        try:
            rounds = len(json.loads((self.out / "history.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return
        while len(self.round_ends) < rounds:
            self.round_ends.append(now)


# -- runs ---------------------------------------------------------------------------------------


def fedrs_command() -> list[str]:
    script = Path(sys.executable).with_name("fedrs")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from fedrs.cli import main; sys.exit(main())"]


def prepare_data(args: list[str], scratch: Path) -> None:
    """Build the synthetic archive and its cache for a run's data settings (outside timings)."""
    code = (
        "import sys\n"
        "from fedrs.config import load_config, parse_override\n"
        "from fedrs.pipeline import resolve_cache\n"
        "overrides = dict(parse_override(s) for s in sys.argv[1:])\n"
        "print('data:', resolve_cache(load_config(None, overrides).data))\n"
    )
    sets = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
    subprocess.run([sys.executable, "-c", code, *sets], check=True, cwd=scratch)


def run_simulation(
    name: str, args: list[str], out: Path, interval: float, pss_interval: float
) -> dict[str, Any]:
    """One ``fedrs simulate`` run under the sampler; its figures."""
    command = [*fedrs_command(), "simulate", *args, "--out", str(out)]
    print(f"[{name}] {' '.join(command)}", flush=True)
    log = out.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=out.parent)
        sampler = Sampler(process.pid, out, interval, pss_interval, started=started)
        sampler.start()
        code = process.wait()
        sampler.stop()
        wall = time.perf_counter() - started
    if code != 0 or not (out / "summary.json").is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"[{name}] fedrs simulate failed (exit {code}); log tail:\n{tail}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    peak = max(sampler.samples, key=lambda s: s.memory_kib)
    marks = [sampler.server_started or 0.0, *sampler.round_ends]
    round_s = [round(b - a, 1) for a, b in itertools.pairwise(marks)]
    rounds = int(summary["rounds"])
    model_file = out / "model.pt"
    return {
        "name": name,
        "clients": int(summary["num_clients"]),
        "rounds": rounds,
        "clients_ok": int(summary["clients_ok"]),
        "clients_failed": int(summary["clients_failed"]),
        "wall_s": round(wall, 1),
        "startup_s": round(sampler.server_started or 0.0, 1),
        "server_wall_s": float(summary["wall_s"]),
        "s_per_round": round(float(summary["wall_s"]) / rounds, 1),
        "round_s": round_s,
        "peak_pss_gib": round(peak.memory_kib / 1024**2, 3),
        "peak_pss_coarse_gib": round(sampler.pss_peak_kib / 1024**2, 3),
        "peak_rss_sum_gib": round(max(s.rss_kib for s in sampler.samples) / 1024**2, 3),
        "peak_processes": max(s.processes for s in sampler.samples),
        "peak_at_s": round(peak.t, 1),
        "peak_top": [(n, round(k / 1024, 1)) for n, k in peak.top],
        "bytes_up_per_round": int(summary["bytes_up"]) // rounds,
        "bytes_down_per_round": int(summary["bytes_down"]) // rounds,
        "model_file_bytes": model_file.stat().st_size if model_file.is_file() else None,
        "map@20": summary.get("map@20"),
        "samples": len(sampler.samples),
    }


def model_figures() -> dict[str, Any]:
    """Parameters and bytes of the default model, whole and per codec."""
    import torch

    from fedrs.config import load_config
    from fedrs.train import build_model

    model = build_model(load_config(None, {}))
    state = model.state_dict()
    per_part: dict[str, int] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            part = ".".join(key.split(".")[:2]) if key.startswith("codecs.") else key.split(".")[0]
            per_part[part] = per_part.get(part, 0) + value.numel() * value.element_size()
    return {
        "model_state_bytes": sum(per_part.values()),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "model_bytes_by_part": per_part,
    }


def archive_figures(run_args: list[str]) -> dict[str, Any]:
    """Figures of the synthetic archive a simulation run reads (built by :func:`prepare_data`):
    for now its size in patches."""
    from fedrs.config import load_config, parse_override

    sets = [run_args[i + 1] for i, a in enumerate(run_args[:-1]) if a == "--set"]
    config = load_config(None, dict(parse_override(s) for s in sets))
    return {"patches": config.data.patches}


V2_PATCHES = 480_038
"""Patches of BigEarthNet v2 (the official metadata.parquet)."""
V2_COUNTRIES = {
    "Finland": 155_227,
    "Portugal": 89_792,
    "Serbia": 73_385,
    "Lithuania": 48_365,
    "Ireland": 48_326,
    "Austria": 43_797,
    "Belgium": 11_196,
    "Switzerland": 4_874,
    "Luxembourg": 3_460,
    "Kosovo": 1_616,
}
V2_SPLITS = {"train": 237_871, "validation": 122_342, "test": 119_825}


def generated_metadata(patches: int = V2_PATCHES, seed: int = 0) -> Any:
    """A metadata table with the official v2 columns (``patch_id``, ``labels``, ``split``,
    ``country``, ``s1_name``, ``s2v1_name``): v2's country and split shares, 1 to 6 labels a
    patch, names in the Sentinel product format."""
    import numpy as np
    import pandas as pd

    from fedrs.data.facts import LABELS_19

    rng = np.random.default_rng(seed)

    def drawn(shares: dict[str, int]) -> np.ndarray:
        weights = np.array(list(shares.values()), dtype=np.float64)
        names = np.array(list(shares), dtype=object)
        return names[rng.choice(len(names), size=patches, p=weights / weights.sum())]

    day = rng.integers(0, 365, patches)
    dates = pd.Timestamp("2017-06-01") + pd.to_timedelta(day, unit="D")
    stamp = pd.Series(dates.strftime("%Y%m%dT101031"))
    tile = pd.Series(rng.integers(0, 999, patches).astype(str)).str.zfill(3)
    row = np.arange(patches)  # tile-free cell numbers keep every name unique
    place = (
        "T"
        + tile
        + "_"
        + pd.Series(row // 1000).astype(str)
        + "_"
        + pd.Series(row % 1000).astype(str)
    )
    labels_per_patch = rng.integers(1, 7, patches)
    label_names = np.array(LABELS_19, dtype=object)
    rank = rng.random((patches, len(LABELS_19))).argsort(axis=1).argsort(axis=1)
    labels = [list(label_names[chosen]) for chosen in rank < labels_per_patch[:, None]]
    return pd.DataFrame(
        {
            "patch_id": ("S2A_MSIL2A_" + stamp + "_N9999_R022_" + place).to_numpy(object),
            "labels": labels,
            "split": drawn(V2_SPLITS),
            "country": drawn(V2_COUNTRIES),
            "s1_name": ("S1A_IW_GRDH_1SDV_" + stamp + "_" + place).to_numpy(object),
            "s2v1_name": ("S2A_MSIL2A_" + stamp + "_" + place).to_numpy(object),
        }
    )


def client_setup_figures(
    base: Path, *, patches: int = V2_PATCHES, clients: int = 100, later: int = 3
) -> dict[str, Any]:
    """Seconds of a client's set-up before training (``load_client_data``) on a cache whose
    index holds ``patches`` generated patches and no pixels: first round of the process' first
    client (opens the cache), first round of another client, later rounds (median)."""
    import statistics
    from collections import OrderedDict
    from unittest import mock

    import pandas as pd
    from flwr.app import RecordDict

    import fedrs.pipeline as pipeline
    from fedrs.clients.app import load_client_data
    from fedrs.config import load_config
    from fedrs.data.archive import PatchArchive
    from fedrs.data.cache import MARKER, CachedArchive
    from fedrs.data.metadata import load_metadata

    class MetadataOnlyCache(CachedArchive):
        """A cache over an index alone (the set-up reads no pixel)."""

        def __init__(self, root: Path, metadata: pd.DataFrame, **kwargs: Any) -> None:
            PatchArchive.__init__(self, root, metadata, **kwargs)

        def _index_columns(self) -> None:
            PatchArchive._index_columns(self)

    cache = base / f"index-{patches}"
    cache.mkdir(parents=True, exist_ok=True)
    generated_metadata(patches).to_parquet(cache / "index.parquet", index=False)
    (cache / MARKER).write_text("{}", encoding="utf-8")

    def open_index(root: Path, *, modalities: tuple[str, ...]) -> CachedArchive:
        meta = load_metadata(Path(root) / "index.parquet")  # read + normalise, as a cache does
        return MetadataOnlyCache(
            Path(root), meta, modalities=modalities, split=None, on_error="raise"
        )

    config = load_config(None, {"partition.clients": clients})
    states = [RecordDict(), RecordDict()]

    def set_up(client: int) -> float:
        started = time.perf_counter()
        node = {"partition-id": client, "num-partitions": clients}
        load_client_data(config, node, states[client])
        return time.perf_counter() - started

    with (
        mock.patch.object(pipeline, "resolve_cache", lambda data, progress=None: cache),
        mock.patch.object(pipeline, "open_archive", open_index),
        mock.patch.object(pipeline, "_OPENED", OrderedDict()),
    ):
        first_open = set_up(0)
        first = set_up(1)
        later_s = statistics.median(set_up(0) for _ in range(later))
    return {
        "patches": patches,
        "clients": clients,
        "first_round_open_s": round(first_open, 3),
        "first_round_s": round(first, 3),
        "later_round_s": round(later_s, 4),
    }


def print_runs(results: dict[str, dict[str, Any]]) -> None:
    """The table of the simulation runs."""
    header = (
        f"{'run':<8} {'clients':>7} {'rounds':>6} {'ok':>4} {'peak PSS GiB':>12} "
        f"{'RSS sum GiB':>11} {'procs':>5} {'s/round':>7} {'rounds (s)':<24} {'wall s':>7}"
    )
    print(header)
    for r in results.values():
        print(
            f"{r['name']:<8} {r['clients']:>7} {r['rounds']:>6} {r['clients_ok']:>4} "
            f"{r['peak_pss_gib']:>12.2f} {r['peak_rss_sum_gib']:>11.2f} "
            f"{r['peak_processes']:>5} {r['s_per_round']:>7.1f} {r['round_s']!s:<24} "
            f"{r['wall_s']:>7.1f}"
        )
    for r in results.values():
        print(f"{r['name']}: largest processes at the peak (MiB): {r['peak_top']}")


RUNS: dict[str, list[str]] = {
    # The main job: no experiment file, only what DESIGN.md's command line gives.
    "default": ["--clients", "10", "--partition", "modality"],
    # 100 clients on a few patches each; small evaluation sets so the server stays light.
    "hundred": [
        "--clients",
        "{clients}",
        "--partition",
        "modality",
        "--rounds",
        "2",
        "--num-cpus",
        "1",
        "--set",
        "data.max_train={max_train}",
        "--set",
        "data.max_queries=48",
        "--set",
        "data.max_database=96",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", default="default,hundred,setup", help="comma-separated: default,hundred,setup"
    )
    parser.add_argument("--clients-many", type=int, default=100)
    parser.add_argument("--patches-per-client", type=int, default=5)
    parser.add_argument(
        "--patches", type=int, default=None, help="synthetic archive size (default: 2,000)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="sampling period, seconds")
    parser.add_argument("--pss-interval", type=float, default=2.0, help="smaps_rollup period")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS) - {"setup"})
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {[*sorted(RUNS), 'setup']}")
    data_args = [] if args.patches is None else ["--set", f"data.patches={args.patches}"]
    values = {
        "clients": args.clients_many,
        "max_train": args.clients_many * args.patches_per_client,
    }
    results: dict[str, dict[str, Any]] = {}
    archive: dict[str, Any] = {}
    setup: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedrs-scale-") as tmp:
        base = args.keep.resolve() if args.keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name == "setup":
                print("[setup] client set-up on a generated BigEarthNet v2-sized index", flush=True)
                setup = client_setup_figures(base / "setup", clients=args.clients_many)
                continue
            run_args = [a.format(**values) for a in RUNS[name]] + data_args
            prepare_data(run_args, base)
            archive = archive or archive_figures(run_args)
            out = base / name
            results[name] = run_simulation(name, run_args, out, args.interval, args.pss_interval)
    figures = model_figures()
    print()
    if results:
        print_runs(results)
    if archive:
        print(f"archive: {archive['patches']:,} patches")
    if setup:
        print(
            f"client set-up on a {setup['patches']:,}-patch index, {setup['clients']} clients: "
            f"first round {setup['first_round_open_s']:.3f} s (opens the cache), "
            f"{setup['first_round_s']:.3f} s (cache already open in the process); "
            f"later rounds {setup['later_round_s']:.4f} s"
        )
    print(
        f"default model: {figures['model_parameters']:,} parameters, "
        f"{figures['model_state_bytes']:,} bytes of state"
    )
    final: dict[str, Any] = {"cores": os.cpu_count()}
    if archive:
        final["archive_patches"] = archive["patches"]
    if setup:
        final |= {
            "client_setup_index_patches": setup["patches"],
            "client_setup_first_round_open_s": setup["first_round_open_s"],
            "client_setup_first_round_s": setup["first_round_s"],
            "client_setup_later_round_s": setup["later_round_s"],
            "bar_client_setup_later_le_0_1_s": setup["later_round_s"] <= 0.1,
        }
    try:
        total = os.sysconf("SC_PHYS_PAGES") * PAGE
        final["mem_total_gib"] = round(total / GIB, 1)
    except (OSError, ValueError):
        pass
    suffix = {"default": "10", "hundred": str(args.clients_many)}
    for name, r in results.items():
        s = suffix[name]
        final |= {
            f"peak_gib_{s}_clients": r["peak_pss_gib"],
            f"peak_rss_sum_gib_{s}_clients": r["peak_rss_sum_gib"],
            f"peak_pss_coarse_gib_{s}_clients": r["peak_pss_coarse_gib"],
            f"s_per_round_{s}": r["s_per_round"],
            f"round_s_{s}": r["round_s"],
            f"wall_s_{s}": r["wall_s"],
            f"startup_s_{s}": r["startup_s"],
            f"clients_ok_{s}": r["clients_ok"],
            f"clients_failed_{s}": r["clients_failed"],
            f"bytes_up_per_round_{s}": r["bytes_up_per_round"],
            f"bytes_down_per_round_{s}": r["bytes_down_per_round"],
        }
    if "default" in results:
        final["bar_10_clients_le_6gib"] = results["default"]["peak_pss_gib"] <= 6.0
    final["model_state_bytes"] = figures["model_state_bytes"]
    final["model_parameters"] = figures["model_parameters"]
    final["model_bytes_by_part"] = figures["model_bytes_by_part"]
    print(json.dumps(final))


if __name__ == "__main__":
    main()
