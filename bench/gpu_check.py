"""GPU check: a federation with GPU shares against the same on CPUs, and bitstreams across devices.

Runs only where torch sees a CUDA GPU: anywhere else it stops at once with one line on stderr
and exit code 2.  In order (about 5 minutes on one H200 with 16 cores, well under 8):

1. installs the project (``pip install --no-build-isolation -e .``: torch, Flower, Ray and the
   other dependencies must be installed already) unless fedrs already imports from this
   repository (``--no-install`` skips the test), then starts itself again;
2. builds the synthetic archive and its cache once, outside the timings;
3. ``fedrs simulate --clients 10 --partition modality --num-gpus 0.1`` and the same with
   ``--num-gpus 0`` and ``train.device = "cpu"`` (so that the server's evaluation stays on the
   CPU too), both with ``--rounds`` rounds (the first is stage 1), ``data.patches`` =
   ``--patches`` and smaller evaluation sets: each run's wall time (process start to end, and
   the ServerApp's ``wall_s``), the devices its summary records, and per client, from MLflow,
   the stage-2 patches per second (``examples / train_s`` of the stage-2 rounds) and on the GPU
   ``cuda_max_memory_mb`` (``torch.cuda.max_memory_allocated`` of its training);
4. bitstreams across devices: the GPU run's model, and untrained ``cheng2020-attn`` and
   ``cheng2020-attn-ctx`` smoke models, compress validation patches on the GPU and on the CPU;
   each side's streams are decoded on both, and the latents, images and hash codes compared.

The last line is one JSON object with the figures.

    python bench/gpu_check.py [--rounds 2] [--patches 1000] [--no-install] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 10
CLI = "import sys; from fedrs.cli import main; sys.exit(main(sys.argv[1:]))"


def stop(message: str) -> NoReturn:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def require_gpu() -> str:
    """The GPU's name; stops (exit 2) where torch sees none."""
    try:
        import torch
    except ImportError:
        stop("torch is not installed; install a CUDA build of torch, then run this again")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        stop(
            f"no CUDA GPU is visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={visible!r}); this check measures "
            "fedrs on a GPU and runs only where one is"
        )
    return str(torch.cuda.get_device_name(0))


def installed_here() -> bool:
    """Whether fedrs (with its range coder and apps) imports, outside this folder, from here."""
    probe = "import fedrs, fedrs._coder, fedrs.server.simulation; print(fedrs.__file__)"
    with tempfile.TemporaryDirectory() as elsewhere:
        found = subprocess.run(
            [sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True
        )
    if found.returncode != 0:
        return False
    return Path(found.stdout.strip()).resolve().is_relative_to(REPO)


def install() -> None:
    print("installing the project (pip install --no-build-isolation -e .)", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "-e", str(REPO)]
    if subprocess.run(command, cwd=REPO).returncode != 0:
        stop(
            "installing the project failed; install torch (CUDA), then `pip install -e .` "
            "with its dependencies, and run this again with --no-install"
        )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data.patches": args.patches,
        "data.max_queries": args.queries,
        "data.max_database": args.database,
        "data.max_validation": args.queries,
    }


def simulate(
    name: str, out: Path, options: list[str], sets: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """``fedrs simulate`` in a child process; its summary with the wall time measured here."""
    command = [sys.executable, "-c", CLI, "simulate", "--clients", str(CLIENTS)]
    command += ["--partition", "modality", "--out", str(out), *options]
    for key, value in sets.items():
        command += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    print(f"[{name}] {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)  # fedrs stops the processes it started
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        return {"error": f"did not finish within {timeout:g} s"}
    wall = time.perf_counter() - started
    if code != 0:
        return {"error": f"exit code {code}", "wall_s": round(wall, 1)}
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary["process_wall_s"] = round(wall, 1)
    return summary


def per_client(summary: dict[str, Any], stage1_rounds: int) -> dict[str, Any]:
    """Stage-2 patches/s, peak GPU memory and device of each client, from the run's MLflow."""
    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(tracking_uri=summary["tracking_uri"])
    run_id = summary["mlflow_run_id"]

    def history(client: int, name: str) -> dict[int, float]:
        points = tracking.get_metric_history(run_id, f"client/{client}/{name}")
        return {p.step: p.value for p in points}

    clients: dict[str, Any] = {}
    for client in range(CLIENTS):
        examples, seconds = history(client, "examples"), history(client, "train_s")
        stage2 = [r for r in sorted(seconds) if r > stage1_rounds and r in examples]
        memory = history(client, "cuda_max_memory_mb")
        devices = history(client, "device_cuda")
        clients[str(client)] = {
            "stage2_patches_per_s": (
                round(sum(examples[r] for r in stage2) / sum(seconds[r] for r in stage2), 2)
                if stage2
                else None
            ),
            "cuda_max_memory_mb": round(max(memory.values()), 1) if memory else None,
            "rounds_on_cuda": int(sum(devices.values())),
        }
    return clients


def run_figures(summary: dict[str, Any], stage1_rounds: int) -> dict[str, Any]:
    if "error" in summary:
        return summary
    clients = per_client(summary, stage1_rounds)
    rates = [c["stage2_patches_per_s"] for c in clients.values() if c["stage2_patches_per_s"]]
    return {
        "process_wall_s": summary["process_wall_s"],
        "server_wall_s": summary["wall_s"],
        "server_device": summary.get("device"),
        "client_devices": summary.get("client_devices"),
        "clients_ok": summary["clients_ok"],
        "map@20": summary.get("map@20"),
        "stage2_patches_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
        "clients": clients,
    }


def cross_device(config: Any, weights: Path | None, rows: int) -> dict[str, Any]:
    """Compress on each device, decode on both: what differs between GPU and CPU."""
    import copy

    import torch

    from fedrs.pipeline import load_run_data
    from fedrs.train import build_model, load_batch

    cpu_model = build_model(config).eval()
    if weights is not None:
        cpu_model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    data = load_run_data(config.data)
    batch = load_batch(data.archive, data.validation_rows[:rows], cpu_model.modalities)
    on_gpu = load_batch(data.archive, data.validation_rows[:rows], cpu_model.modalities, "cuda")
    models = {"cuda": (gpu_model, on_gpu), "cpu": (cpu_model, batch)}
    written = {name: model.compress(inputs) for name, (model, inputs) in models.items()}
    result: dict[str, Any] = {
        "same_bytes": {
            m: sum(
                a.to_bytes() == b.to_bytes()
                for a, b in zip(written["cuda"][m], written["cpu"][m], strict=True)
            )
            / len(written["cpu"][m])
            for m in written["cpu"]
        }
    }
    for writer, reader in (("cuda", "cpu"), ("cpu", "cuda")):
        streams = written[writer]
        own = models[writer][0].decompress(streams)
        codes = models[writer][0].hash_from_bitstreams(streams).cpu()
        entry: dict[str, Any] = {}
        try:
            read = models[reader][0].decompress(streams)
            other = models[reader][0].hash_from_bitstreams(streams).cpu()
        except Exception as exc:  # a stream that does not decode elsewhere is the finding
            entry["error"] = f"{type(exc).__name__}: {exc}"
        else:
            for m in streams:
                dy = (read["y_hat"][m].cpu() - own["y_hat"][m].cpu()).abs().max()
                dx = (read["x_hat"][m].cpu() - own["x_hat"][m].cpu()).abs().max()
                entry[f"max_dy_{m}"] = float(dy)
                entry[f"max_dx_{m}"] = float(dx)
            entry["same_codes"] = float((codes == other).all(1).float().mean())
        result[f"{writer}_to_{reader}"] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the first is stage 1)")
    parser.add_argument("--patches", type=int, default=1000, help="synthetic archive size")
    parser.add_argument("--queries", type=int, default=100, help="evaluation queries")
    parser.add_argument("--database", type=int, default=400, help="evaluation database")
    parser.add_argument("--run-timeout-s", type=float, default=200.0, help="per simulation")
    parser.add_argument("--no-install", action="store_true", help="use the installed fedrs")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args()

    gpu = require_gpu()
    if not args.no_install and not installed_here():
        install()
        script = str(Path(__file__).resolve())
        os.execv(sys.executable, [sys.executable, script, *sys.argv[1:], "--no-install"])

    from fedrs.config import load_config
    from fedrs.pipeline import resolve_cache

    started = time.perf_counter()
    base = args.keep or Path(tempfile.mkdtemp(prefix="fedrs-gpu-check-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ["FEDRS_CACHE_DIR"] = str(base / "cache")
    sets = overrides(args)
    config = load_config(None, sets | {"federation.rounds": args.rounds})
    print(f"GPU: {gpu}; runs in {base}; building the data once", flush=True)
    resolve_cache(config.data)
    stage1 = config.federation.stage1_rounds
    rounds = ["--rounds", str(args.rounds)]
    runs = {
        "gpu": simulate(
            "gpu", base / "gpu", [*rounds, "--num-gpus", "0.1"], sets, args.run_timeout_s
        ),
        "cpu": simulate(
            "cpu",
            base / "cpu",
            [*rounds, "--num-gpus", "0"],
            sets | {"train.device": "cpu"},
            args.run_timeout_s,
        ),
    }
    figures: dict[str, Any] = {"gpu": gpu, "rounds": args.rounds, "patches": args.patches}
    for name, summary in runs.items():
        figures[name] = run_figures(summary, stage1)
        print(f"[{name}] {json.dumps({k: v for k, v in figures[name].items() if k != 'clients'})}")
    gpu_rate = figures["gpu"].get("stage2_patches_per_s_median")
    cpu_rate = figures["cpu"].get("stage2_patches_per_s_median")
    if gpu_rate and cpu_rate:
        figures["stage2_speedup_per_client"] = round(gpu_rate / cpu_rate, 2)

    print("bitstreams across devices", flush=True)
    weights = base / "gpu" / "model.pt"
    crossing = {"default": cross_device(config, weights if weights.is_file() else None, 32)}
    smoke = REPO / "experiments" / "smoke.toml"
    for codec in ("cheng2020-attn", "cheng2020-attn-ctx"):
        small = load_config(smoke, sets | {"model.codecs": {"s1": codec, "s2": codec}})
        crossing[codec] = cross_device(small, None, 16)
    figures["cross_device"] = crossing
    for name, result in crossing.items():
        print(f"  {name}: {json.dumps(result)}", flush=True)
    figures["check_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
