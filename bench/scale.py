"""Scale of a simulated federation on this machine: memory, time per round, archive size.

Runs (``--runs``, default ``default,hundred,setup``), the first two ``fedrs simulate`` as a
child process:

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

(4) ``archive``: the synthetic archive at each of ``--sizes`` (default 2,000 and 20,000
    patches), side by side with the ratio of the last to the first:

    * the archive and its cache, made as ``fedrs simulate`` makes them (once, under
      ``$FEDRS_CACHE_DIR`` or ~/.cache/fedrs; patches/s of the synthesis and of the cache build
      when this run made them); bytes per S1/S2 pair of the cache and of the GeoTIFFs;
    * ``fedrs prepare`` patches/s (:func:`fedrs.data.prepare_cache`, 2 worker processes) on
      ``--prepare-rows`` rows spread over the archive, copied into a temporary cache (other
      rows each repetition, median of ``--prepare-reps``), the same work at every size;
    * batches of 16 random rows read from the cache (:func:`fedrs.train.load_batch`) and from
      the GeoTIFFs (each item read and upsampled, then stacked and normalised: the same values,
      checked), the same rows both ways: loading alone (``--batches`` a path; then the same
      rows again, mapped and in the page cache, which sets the cost of a first read apart),
      and loading plus one training step of the default model (stage 1: forward, backward,
      clipping, Adam, one torch thread, as a client trains; ``--step-batches`` a path);
      median of ``--reps`` repetitions that go round the sizes and alternate the order of the
      paths;
    * a client's set-up (``load_client_data``) on the cache: first round (opening the cache),
      first round of another client, later rounds (rows kept in the node's state);
    * one ``fedrs simulate`` run (10 clients, ``modality`` partition, ``--archive-rounds``
      rounds), the same work at every size: ``train.max_batches`` = ``--max-batches``,
      evaluation on 200 queries x 800 database patches.  Clients run one at a time
      (``--num-cpus`` = the cores), so a round's wall time is the clients' ``train_s``
      (summed, from the run's MLflow store) + the server's evaluation (``eval_s`` in
      ``history.json``) + the rest: client set-up, model building, messages, aggregation,
      checkpoints, tracking.  The rest is reported for the first round and for later rounds
      (median); evaluation as seconds per 10,000 patches; peak memory as in (1), and the
      peak of the tree's anonymous memory alone (the pages of the memory-mapped cache that a
      process has read count in its PSS: file pages, which the kernel may reclaim);
    * :func:`fedrs.train.evaluate` of that run's model (the first size's) on 200 x 800
      patches in this process with one torch thread, as clients train (the server evaluates
      with torch's default threads, as many as the cores): seconds per 10,000 patches,
      median of 3 repetitions that go round the sizes;
    * the patches a round's evaluation reads at the default caps (every test patch, 800
      database patches), which grow with the archive, and their seconds at that rate.

    The simulations run first, while this process maps no cache.  The 20,000-patch archive
    takes about 11 GB of disk (5.6 GB of GeoTIFFs, 5.5 GB of cache).

For (1) and (2) the synthetic archive and its cache are built first (once, under
``$FEDRS_CACHE_DIR`` or ~/.cache/fedrs, where later runs find them), outside the measured
runs; ``--patches`` sets its size (default: the experiment's, 2,000), and
:func:`archive_figures` reports on it.  The last line is one JSON object with the figures.

    python bench/scale.py [--runs default,hundred,setup,archive] [--clients-many 100]
                          [--patches N] [--sizes 2000,20000] [--keep DIR]
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
    anon_kib: int = 0  # anonymous pages alone: what is not page cache, files or shared memory


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
            memory = rss = anon = 0
            per: list[tuple[str, int]] = []
            for pid in known:
                status = _status_kib(pid)
                if status is None:
                    continue
                share = shared.get(pid, status["RssFile"] + status["RssShmem"])
                mine = status["RssAnon"] + share
                memory += mine
                anon += status["RssAnon"]
                rss += status["RssAnon"] + status["RssFile"] + status["RssShmem"]
                per.append((_name(pid), mine))
            now = time.perf_counter() - self.started
            per.sort(key=lambda item: -item[1])
            self.samples.append(Sample(now, memory, rss, len(per), per[:6], anon_kib=anon))
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
        "peak_anon_gib": round(max(s.anon_kib for s in sampler.samples) / 1024**2, 3),
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


def run_data_config(run_args: list[str]) -> Any:
    """The data settings (a :class:`fedrs.config.DataConfig`) of a run's ``--set`` options."""
    from fedrs.config import load_config, parse_override

    sets = [run_args[i + 1] for i, a in enumerate(run_args[:-1]) if a == "--set"]
    return load_config(None, dict(parse_override(s) for s in sets)).data


def tree_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    total = 0
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def archive_figures(data: Any) -> dict[str, Any]:
    """Figures of the synthetic archive of the data settings ``data`` and of its cache (both
    built already, by :func:`prepare_data` or :func:`build_archive`): patches, S1/S2 pairs,
    patches per split, bytes of the cache and of the GeoTIFF archive, and per pair."""
    from fedrs.data.cache import CachedArchive
    from fedrs.pipeline import open_cache, resolve_cache

    cache = resolve_cache(data)
    archive: CachedArchive = open_cache(cache, ("s1", "s2"))
    meta = archive.metadata
    pairs = int((meta["has_s1"] & meta["has_s2"]).sum())
    cache_bytes = tree_bytes(cache)
    geotiff_bytes = tree_bytes(Path(archive.info["source"]))
    return {
        "patches": len(meta),
        "pairs": pairs,
        "splits": {str(k): int(v) for k, v in meta["split"].value_counts().items()},
        "cache": str(cache),
        "source": str(archive.info["source"]),
        "cache_bytes": cache_bytes,
        "cache_bytes_per_pair": round(cache_bytes / max(1, pairs)),
        "geotiff_bytes": geotiff_bytes,
        "geotiff_bytes_per_pair": round(geotiff_bytes / max(1, pairs)),
    }


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


# -- archive sizes --------------------------------------------------------------------------------

BATCH = 16
"""Patches a batch, as ``train.batch_size`` (default)."""


def build_archive(patches: int) -> dict[str, Any]:
    """The synthetic archive of ``patches`` patches and its cache, made as ``fedrs simulate``
    makes them (:func:`fedrs.pipeline.resolve_cache`: once, under ``$FEDRS_CACHE_DIR`` or
    ~/.cache/fedrs); the seconds of each step this call did (None: found built)."""
    from fedrs.config import load_config
    from fedrs.pipeline import resolve_cache

    steps: list[list[float]] = []  # [started, last advance (0: none)]: synthesis, then caching

    def progress(description: str, total: int) -> Any:
        step = [time.perf_counter(), 0.0]
        steps.append(step)

        def advance(done: int) -> None:
            step[1] = time.perf_counter()

        return advance

    print(f"[archive {patches}] synthetic archive and cache", flush=True)
    resolve_cache(load_config(None, {"data.patches": patches}).data, progress=progress)
    ended = time.perf_counter()
    ends = [step[0] for step in steps[1:]] + [ended]
    seconds: list[float | None] = [
        end - start if advanced else None
        for (start, advanced), end in zip(steps, ends, strict=True)
    ]
    synth_s, cache_s = [*seconds, None, None][:2]
    return {
        "synth_s": None if synth_s is None else round(synth_s, 1),
        "synth_patches_s": None if synth_s is None else round(patches / synth_s, 1),
        "cache_build_s": None if cache_s is None else round(cache_s, 1),
        "cache_build_patches_s": None if cache_s is None else round(patches / cache_s, 1),
    }


def spread_rows(total: int, count: int, offset: int = 0) -> Any:
    """``count`` rows spread evenly over ``0 .. total - 1`` (all of them when ``count >=
    total``), shifted by ``offset`` within a step: offsets ``0 .. step - 1`` give disjoint
    rows."""
    import numpy as np

    if count >= total:
        return np.arange(total)
    step = total // count
    return np.arange(count) * step + offset % step


def prepare_seconds(source: Path, rows: Any, out: Path, workers: int = 2) -> float:
    """Seconds of :func:`fedrs.data.prepare_cache` (``workers`` processes, as
    ``fedrs prepare``) copying ``rows`` of the GeoTIFF archive ``source`` into a new cache
    ``out``, which is removed afterwards."""
    import shutil

    from fedrs.data import open_archive, prepare_cache

    archive = open_archive(source)
    subset = type(archive)(
        Path(archive.root),
        archive.metadata.iloc[rows].reset_index(drop=True),
        modalities=archive.modalities,
        split=None,
        resample=archive.resample,
        on_error="raise",
    )
    started = time.perf_counter()
    prepare_cache(subset, out, workers=workers)
    seconds = time.perf_counter() - started
    shutil.rmtree(out)
    return seconds


def geotiff_batch(archive: Any, rows: Any) -> dict[str, Any]:
    """A normalised batch read from GeoTIFFs: each row's item (S2 upsampled per patch), stacked
    and normalised, the values :func:`fedrs.train.load_batch` gives from the cache."""
    from fedrs.data import Normalize, collate_patches

    return Normalize()(collate_patches([archive[int(r)] for r in rows]))


def ratio(a: float | None, b: float | None) -> float | None:
    """``b / a``, or None when either is missing or ``a`` is 0."""
    if a is None or b is None or a == 0:
        return None
    return b / a


def median(values: list[float]) -> float:
    import statistics

    return float(statistics.median(values))


def data_path_figures(
    opened: dict[int, tuple[Any, Any]], *, batches: int, step_batches: int, reps: int
) -> dict[int, dict[str, Any]]:
    """Batches of :data:`BATCH` random rows read from the cache (:func:`fedrs.train.load_batch`)
    and from the GeoTIFF archive (:func:`geotiff_batch`), the same rows both ways: seconds of
    ``batches`` batches (loading alone; then the same rows again: mapped and in the page
    cache), and of ``step_batches`` other batches each loaded and trained on (one step of
    stage 1 of the default model: forward, backward, gradient clipping, Adam, one torch thread,
    as a client trains), per archive size in ``opened`` (size -> (cache, GeoTIFF archive)).
    Repetitions go round the sizes and alternate which path goes first, each with new rows;
    medians of ``reps`` repetitions."""
    import numpy as np
    import torch

    from fedrs.config import load_config
    from fedrs.train import LocalTrainer, build_model, load_batch

    config = load_config(None, {})
    modalities = ("s1", "s2")
    first_cache = next(iter(opened.values()))[0]
    trainer = LocalTrainer(
        build_model(config), first_cache, np.arange(len(first_cache)), config, stage=1, seed=0
    )
    clip = config.train.grad_clip

    def train_step(batch: dict[str, Any]) -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.backward(batch)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(trainer.params, clip)
        trainer.optimizer.step()

    timings: dict[int, dict[str, list[float]]] = {size: {} for size in opened}
    same: dict[int, bool] = {}
    for rep in range(reps):
        for size, (cache, geotiff) in opened.items():
            rng = np.random.default_rng([rep, size])
            chosen = [rng.choice(len(cache), BATCH, replace=False) for _ in range(batches)]
            stepped = [rng.choice(len(cache), BATCH, replace=False) for _ in range(step_batches)]
            loaders = {
                "cache": lambda rows, c=cache: load_batch(c, rows, modalities),
                "geotiff": lambda rows, g=geotiff: geotiff_batch(g, rows),
            }
            if size not in same:
                a, b = loaders["cache"](chosen[0]), loaders["geotiff"](chosen[0])
                same[size] = all(torch.equal(a[m], b[m]) for m in modalities)
            for path in sorted(loaders, reverse=rep % 2 == 1):
                load = loaders[path]
                started = time.perf_counter()
                for rows in chosen:
                    load(rows)
                timings[size].setdefault(f"load_{path}", []).append(
                    (time.perf_counter() - started) / batches
                )
                started = time.perf_counter()
                for rows in chosen:  # the same rows again: mapped and in the page cache
                    load(rows)
                timings[size].setdefault(f"again_{path}", []).append(
                    (time.perf_counter() - started) / batches
                )
                if step_batches:
                    started = time.perf_counter()
                    for rows in stepped if path == "cache" else stepped[::-1]:
                        train_step(load(rows))
                    timings[size].setdefault(f"step_{path}", []).append(
                        (time.perf_counter() - started) / step_batches
                    )
    out: dict[int, dict[str, Any]] = {}
    for size, found in timings.items():
        figures: dict[str, Any] = {"same_values": same[size]}
        for key, values in found.items():
            seconds = median(values)
            figures[f"{key}_ms"] = round(seconds * 1e3, 1)
            figures[f"{key}_batches_s"] = round(1 / seconds, 2)
        figures["load_geotiff_vs_cache"] = round(
            figures["load_geotiff_ms"] / figures["load_cache_ms"], 2
        )
        if step_batches:
            figures["step_geotiff_vs_cache"] = round(
                figures["step_geotiff_ms"] / figures["step_cache_ms"], 2
            )
        out[size] = figures
    return out


def client_setup_on_caches(
    sizes: list[int], *, clients: int = 10, later: int = 3, reps: int = 3
) -> dict[int, dict[str, Any]]:
    """Seconds of a client's set-up before training (``fedrs.clients.app.load_client_data``:
    resolve and open the run's cache, split it, partition the training rows, keep the shard in
    the node's state) on the synthetic archive of each size, default partition of ``clients``
    clients: the first round of a process' first client (it opens the cache), the first round
    of another client, later rounds (median of ``later``); each the median of ``reps``
    repetitions that go round the sizes, every one in a process state with no cache open."""
    from collections import OrderedDict
    from unittest import mock

    from flwr.app import RecordDict

    import fedrs.pipeline as pipeline
    from fedrs.clients.app import load_client_data
    from fedrs.config import load_config

    found: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    for _ in range(reps):
        for size in sizes:
            config = load_config(None, {"data.patches": size, "partition.clients": clients})
            states = [RecordDict(), RecordDict()]

            def set_up(client: int) -> float:
                started = time.perf_counter()
                node = {"partition-id": client, "num-partitions": clients}
                load_client_data(config, node, states[client])  # noqa: B023 (called here)
                return time.perf_counter() - started

            with mock.patch.object(pipeline, "_OPENED", OrderedDict()):
                times = {
                    "first_round_open_s": set_up(0),
                    "first_round_s": set_up(1),
                    "later_round_s": median([set_up(0) for _ in range(later)]),
                }
            for key, value in times.items():
                found[size].setdefault(key, []).append(value)
    return {
        size: {key: round(median(values), 4) for key, values in times_of.items()}
        for size, times_of in found.items()
    }


def evaluation_figures(
    sizes: list[int], model_file: Path, *, queries: int, database: int, reps: int = 3
) -> dict[int, dict[str, Any]]:
    """:func:`fedrs.train.evaluate` of the model in ``model_file`` on ``queries`` x
    ``database`` patches of the synthetic archive of each size, in this process with one torch
    thread (as a client trains): seconds per 10,000 patches evaluated (reading, compressing,
    hashing, decoding the queries, ranking, the bootstrap), and the encode and decode seconds
    per 10,000 it reports; medians of ``reps`` repetitions that go round the sizes."""
    import torch

    from fedrs.config import load_config
    from fedrs.pipeline import load_run_data
    from fedrs.train import build_model, evaluate

    torch.set_num_threads(1)
    found: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    for _ in range(reps):
        for size in sizes:
            overrides = {
                "data.patches": size,
                "data.max_queries": queries,
                "data.max_database": database,
            }
            config = load_config(None, overrides)
            model = build_model(config)
            model.load_state_dict(torch.load(model_file, weights_only=True))
            figures = evaluate(model, load_run_data(config.data, reuse=True), config)
            evaluated = figures["eval_queries"] + figures["eval_database"]
            for key, value in (
                ("evaluate_s_per_10k", 1e4 * figures["eval_s"] / evaluated),
                ("evaluate_encode_s_per_10k", figures["encode_s_per_10k"]),
                ("evaluate_decode_s_per_10k", figures["decode_s_per_10k"]),
            ):
                found[size].setdefault(key, []).append(value)
    return {
        size: {key: round(median(values), 1) for key, values in times.items()}
        for size, times in found.items()
    }


def client_train_seconds(out: Path) -> dict[int, float]:
    """Round -> the clients' ``train_s`` summed, from the run's MLflow store (the per-client
    metrics ``client/<id>/train_s``, logged at the round's step)."""
    import contextlib
    import sqlite3

    query = "SELECT step, SUM(value) FROM metrics WHERE key LIKE 'client/%/train_s' GROUP BY step"
    with contextlib.closing(sqlite3.connect(out / "mlflow.db")) as db:
        return {int(step): float(total) for step, total in db.execute(query).fetchall()}


def round_parts(
    round_s: list[float], train_s: list[float], eval_s: list[float]
) -> list[dict[str, float]]:
    """Each round's wall seconds split into the clients' training (their ``train_s`` summed:
    the clients run one at a time), the server's evaluation, and the rest (everything else:
    client set-up, model building, messages, aggregation, checkpoint, tracking)."""
    return [
        {
            "round_s": round(r, 1),
            "train_s": round(t, 1),
            "eval_s": round(e, 1),
            "rest_s": round(r - t - e, 1),
        }
        for r, t, e in zip(round_s, train_s, eval_s, strict=True)
    ]


def archive_run_args(patches: int, *, rounds: int, max_batches: int, cores: int) -> list[str]:
    """``fedrs simulate`` options of the round measurement at one archive size: the main job's
    10 clients and partition, one client at a time (``--num-cpus`` = the cores), the same
    training and evaluation work at every size (``train.max_batches``, 200 queries x 800
    database patches)."""
    return [
        "--clients",
        "10",
        "--partition",
        "modality",
        "--rounds",
        str(rounds),
        "--num-cpus",
        str(cores),
        "--set",
        f"data.patches={patches}",
        "--set",
        f"train.max_batches={max_batches}",
        "--set",
        "data.max_queries=200",
        "--set",
        "data.max_database=800",
    ]


def round_figures(run: dict[str, Any], out: Path) -> dict[str, Any]:
    """A round measurement's figures: rounds split by :func:`round_parts`, the rest of the
    first round and of later rounds (median), evaluation seconds per 10,000 patches, peak
    memory."""
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    train = client_train_seconds(out)
    eval_s = [float(h["eval/eval_s"]) for h in history]
    parts = round_parts(run["round_s"], [train.get(int(h["round"]), 0.0) for h in history], eval_s)
    evaluated = [h["eval/eval_queries"] + h["eval/eval_database"] for h in history]
    return {
        "rounds": parts,
        "startup_s": run["startup_s"],
        "rest_first_round_s": parts[0]["rest_s"],
        "rest_later_rounds_s": round(median([p["rest_s"] for p in parts[1:]]), 1)
        if len(parts) > 1
        else None,
        "eval_s_per_10k": round(
            median([1e4 * s / n for s, n in zip(eval_s, evaluated, strict=True)]), 1
        ),
        "encode_s_per_10k": round(median([h["eval/encode_s_per_10k"] for h in history]), 1),
        "decode_s_per_10k": round(median([h["eval/decode_s_per_10k"] for h in history]), 1),
        "eval_patches": int(evaluated[0]),
        "peak_pss_gib": run["peak_pss_gib"],
        "peak_rss_sum_gib": run["peak_rss_sum_gib"],
        "peak_anon_gib": run["peak_anon_gib"],
        "peak_top": run["peak_top"],
        "wall_s": run["wall_s"],
    }


ARCHIVE_ROWS: list[tuple[str, str, str]] = [
    # (label, key, format)
    ("patches (S1/S2 pairs)", "pairs", ",.0f"),
    ("GeoTIFF bytes / pair", "geotiff_bytes_per_pair", ",.0f"),
    ("cache bytes / pair", "cache_bytes_per_pair", ",.0f"),
    ("cache GB", "cache_gb", ".2f"),
    ("synthesis patches/s (whole archive)", "synth_patches_s", ".1f"),
    ("cache build patches/s (whole archive)", "cache_build_patches_s", ".1f"),
    ("prepare patches/s (spread rows, 2 workers)", "prepare_patches_s", ".1f"),
    ("load batches/s, cache", "load_cache_batches_s", ".1f"),
    ("load batches/s, GeoTIFF", "load_geotiff_batches_s", ".1f"),
    ("  GeoTIFF / cache (time)", "load_geotiff_vs_cache", ".2f"),
    ("load batches/s, cache, same rows again", "again_cache_batches_s", ".1f"),
    ("load batches/s, GeoTIFF, same rows again", "again_geotiff_batches_s", ".1f"),
    ("load + train step batches/s, cache", "step_cache_batches_s", ".3f"),
    ("load + train step batches/s, GeoTIFF", "step_geotiff_batches_s", ".3f"),
    ("  GeoTIFF / cache (time)", "step_geotiff_vs_cache", ".2f"),
    ("client set-up s, 1st round, opens cache", "first_round_open_s", ".3f"),
    ("client set-up s, 1st round, cache open", "first_round_s", ".3f"),
    ("client set-up s, later rounds", "later_round_s", ".4f"),
    ("simulate: start-up s (to the server's start)", "startup_s", ".1f"),
    ("round rest s, 1st round", "rest_first_round_s", ".1f"),
    ("round rest s, later rounds (median)", "rest_later_rounds_s", ".1f"),
    ("server evaluation s / 10k patches", "eval_s_per_10k", ".1f"),
    ("  encode s / 10k", "encode_s_per_10k", ".1f"),
    ("  decode s / 10k (queries)", "decode_s_per_10k", ".1f"),
    ("evaluate s / 10k patches, 1 torch thread", "evaluate_s_per_10k", ".1f"),
    ("  encode s / 10k", "evaluate_encode_s_per_10k", ".1f"),
    ("  decode s / 10k (queries)", "evaluate_decode_s_per_10k", ".1f"),
    ("default evaluation patches (all test x 800)", "default_eval_patches", ",.0f"),
    ("  s / round at 1 thread's s / 10k", "default_eval_s", ".0f"),
    ("peak memory GiB (PSS of the tree)", "peak_pss_gib", ".2f"),
    ("peak anonymous memory GiB (no file pages)", "peak_anon_gib", ".2f"),
    ("peak RSS sum GiB", "peak_rss_sum_gib", ".2f"),
]


def print_archive_table(figures: dict[int, dict[str, Any]]) -> None:
    """The archive sizes side by side, and the ratio of the last to the first."""
    sizes = list(figures)
    width = 46
    head = f"{'archive':<{width}}" + "".join(f"{f'{s:,}':>12}" for s in sizes)
    print(head + (f"{'ratio':>9}" if len(sizes) > 1 else ""))
    for label, key, spec in ARCHIVE_ROWS:
        values = [figures[s].get(key) for s in sizes]
        cells = "".join(f"{'-' if v is None else format(v, spec):>12}" for v in values)
        change = ratio(values[0], values[-1]) if len(sizes) > 1 else None
        tail = f"{change:>9.2f}" if change is not None else (f"{'-':>9}" if len(sizes) > 1 else "")
        print(f"{label:<{width}}{cells}{tail}")
    for size in sizes:
        rounds = figures[size].get("rounds") or []
        shown = ", ".join(
            f"{p['round_s']:.0f} = {p['train_s']:.0f} + {p['eval_s']:.0f} + {p['rest_s']:.0f}"
            for p in rounds
        )
        print(f"{size:,}: rounds (s) = training + evaluation + rest: {shown}")


def archive_comparison(
    sizes: list[int],
    base: Path,
    *,
    reps: int,
    batches: int,
    step_batches: int,
    prepare_rows: int,
    prepare_reps: int,
    rounds: int,
    max_batches: int,
    interval: float,
    pss_interval: float,
) -> dict[int, dict[str, Any]]:
    """The figures of :data:`ARCHIVE_ROWS` for the synthetic archive of each size.

    The simulations run first, while this process maps no cache: pages of a cache mapped here
    too would be shared with the run's processes and lower their PSS."""
    from fedrs.config import load_config
    from fedrs.data import open_archive
    from fedrs.pipeline import open_cache

    figures: dict[int, dict[str, Any]] = {size: build_archive(size) for size in sizes}
    for size in sizes:
        data = load_config(None, {"data.patches": size}).data
        found = archive_figures(data)
        figures[size] |= found
        figures[size]["cache_gb"] = found["cache_bytes"] / 1e9
        test = found["splits"].get("test", 0)
        train = found["splits"].get("train", 0)
        figures[size]["default_eval_patches"] = test + min(train, data.max_database)
    cores = os.cpu_count() or 1
    for size in sizes:
        args = archive_run_args(size, rounds=rounds, max_batches=max_batches, cores=cores)
        out = base / f"archive-{size}"
        run = run_simulation(f"archive {size}", args, out, interval, pss_interval)
        figures[size] |= round_figures(run, out)
    print("[archive] evaluation, one torch thread", flush=True)
    model_file = base / f"archive-{sizes[0]}" / "model.pt"
    evaluated = evaluation_figures(sizes, model_file, queries=200, database=800)
    for size in sizes:
        figures[size] |= evaluated[size]
        figures[size]["default_eval_s"] = round(
            figures[size]["default_eval_patches"] * figures[size]["evaluate_s_per_10k"] / 1e4, 1
        )
    print(f"[archive] prepare {prepare_rows} spread rows, x{prepare_reps}", flush=True)
    prepared: dict[int, list[float]] = {size: [] for size in sizes}
    for rep in range(prepare_reps):
        for size in sizes:
            rows = spread_rows(size, prepare_rows, offset=rep)
            out = base / f"prepare-{size}-{rep}"
            source = Path(figures[size]["source"])
            prepared[size].append(len(rows) / prepare_seconds(source, rows, out))
    for size in sizes:
        figures[size]["prepare_patches_s"] = round(median(prepared[size]), 1)
        figures[size]["prepare_rows"] = min(prepare_rows, size)
    print(f"[archive] batches: cache vs GeoTIFF, x{reps}", flush=True)
    opened = {
        size: (
            open_cache(Path(figures[size]["cache"]), ("s1", "s2")),
            open_archive(figures[size]["source"]),
        )
        for size in sizes
    }
    paths = data_path_figures(opened, batches=batches, step_batches=step_batches, reps=reps)
    print("[archive] client set-up", flush=True)
    setups = client_setup_on_caches(sizes)
    for size in sizes:
        figures[size] |= paths[size] | setups[size]
    return figures


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
        "--runs",
        default="default,hundred,setup",
        help="comma-separated: default,hundred,setup,archive",
    )
    parser.add_argument("--clients-many", type=int, default=100)
    parser.add_argument("--patches-per-client", type=int, default=5)
    parser.add_argument(
        "--patches", type=int, default=None, help="synthetic archive size (default: 2,000)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="sampling period, seconds")
    parser.add_argument("--pss-interval", type=float, default=2.0, help="smaps_rollup period")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    archive_options = parser.add_argument_group("archive (the archive sizes compared)")
    archive_options.add_argument("--sizes", default="2000,20000", help="patches, comma-separated")
    archive_options.add_argument("--reps", type=int, default=5, help="repetitions of batches")
    archive_options.add_argument("--batches", type=int, default=20, help="batches read a path")
    archive_options.add_argument(
        "--step-batches", type=int, default=3, help="batches trained on a path"
    )
    archive_options.add_argument("--prepare-rows", type=int, default=512)
    archive_options.add_argument("--prepare-reps", type=int, default=3)
    archive_options.add_argument("--archive-rounds", type=int, default=3)
    archive_options.add_argument("--max-batches", type=int, default=1, help="per client round")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    known = {*RUNS, "setup", "archive"}
    unknown = sorted(set(names) - known)
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {sorted(known)}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    data_args = [] if args.patches is None else ["--set", f"data.patches={args.patches}"]
    values = {
        "clients": args.clients_many,
        "max_train": args.clients_many * args.patches_per_client,
    }
    results: dict[str, dict[str, Any]] = {}
    archive: dict[str, Any] = {}
    setup: dict[str, Any] = {}
    by_size: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedrs-scale-") as tmp:
        base = args.keep.resolve() if args.keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name == "setup":
                print("[setup] client set-up on a generated BigEarthNet v2-sized index", flush=True)
                setup = client_setup_figures(base / "setup", clients=args.clients_many)
                continue
            if name == "archive":
                by_size = archive_comparison(
                    sizes,
                    base,
                    reps=args.reps,
                    batches=args.batches,
                    step_batches=args.step_batches,
                    prepare_rows=args.prepare_rows,
                    prepare_reps=args.prepare_reps,
                    rounds=args.archive_rounds,
                    max_batches=args.max_batches,
                    interval=args.interval,
                    pss_interval=args.pss_interval,
                )
                continue
            run_args = [a.format(**values) for a in RUNS[name]] + data_args
            prepare_data(run_args, base)
            archive = archive or archive_figures(run_data_config(run_args))
            out = base / name
            results[name] = run_simulation(name, run_args, out, args.interval, args.pss_interval)
    figures = model_figures()
    print()
    if results:
        print_runs(results)
    if archive:
        print(
            f"archive: {archive['patches']:,} patches, cache "
            f"{archive['cache_bytes_per_pair']:,} B a pair"
        )
    if by_size:
        print_archive_table(by_size)
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
        final["archive_cache_bytes_per_pair"] = archive["cache_bytes_per_pair"]
    if by_size:
        final["archive_sizes"] = {str(size): found for size, found in by_size.items()}
        first, last = by_size[sizes[0]], by_size[sizes[-1]]
        final["archive_ratio"] = {
            key: None if r is None else round(r, 3)
            for _, key, _ in ARCHIVE_ROWS
            for r in [ratio(first.get(key), last.get(key))]
        }
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
