"""Entropy-coded model updates vs plain arrays: bytes up and down, mAP@20, bpp, wall time.

The same federation (experiment, seed, data, partition, clients, rounds) is simulated with
``federation.update_codec = "none"`` (float32 arrays) and ``"entropy"`` (quantised differences
to the global model, entropy-coded with fedrs.coder, coded broadcast of the global model), the
latter at several quantisation steps (fractions of each update's RMS) for a curve.  Bytes are
those of the real Flower messages (``comm/bytes_up`` / ``comm/bytes_down`` in summary.json).

Headline: the default step of ``federation.codec.step``.  Bar: >= 4x fewer bytes up
with <= 1 point of mAP@20 lost.  The last line is one JSON object with ``bytes_up_ratio`` and
``bytes_down_ratio`` (none / entropy), ``map_drop_points`` (mAP@20 none minus entropy, in
points) and the per-step ``curve``; the plot is saved to ``--plot``.

    python bench/updates.py                 # modality split, 10 clients, 3 rounds (minutes)
    python bench/updates.py --quick         # smoke setup, 3 clients, 2 rounds, two steps
    python bench/updates.py --steps 0.25,0.5,1,2 --rounds 3 --plot bench-updates.png
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def simulate(config: Path, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """One simulation; its summary with the measured wall time (Ray start included)."""
    from fedrs.server.simulation import run_simulation
    from fedrs.settings import RunSettings

    settings = RunSettings(str(config.resolve()), overrides, str(out))
    started = time.perf_counter()
    summary = run_simulation(settings)
    summary["bench_wall_s"] = time.perf_counter() - started
    return summary


def row(summary: dict[str, Any]) -> dict[str, Any]:
    bpp = summary.get("bpp") or {}
    return {
        "bytes_up": int(summary["bytes_up"]),
        "bytes_down": int(summary["bytes_down"]),
        "map@20": summary["map@20"],
        "bpp_s1": bpp.get("s1"),
        "bpp_s2": bpp.get("s2"),
        "psnr_s1": (summary.get("psnr") or {}).get("s1"),
        "psnr_s2": (summary.get("psnr") or {}).get("s2"),
        "wall_s": round(float(summary["bench_wall_s"]), 1),
        "clients_ok": int(summary["clients_ok"]),
        "clients_failed": int(summary["clients_failed"]),
    }


def plot(none: dict[str, Any], curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    mb = [c["bytes_up"] / 1e6 for c in curve]
    axes[0].plot(mb, [c["map@20"] for c in curve], marker="o", label="entropy-coded")
    for c, x in zip(curve, mb, strict=True):
        axes[0].annotate(f"step {c['step']:g}", (x, c["map@20"]), fontsize=8)
    axes[0].scatter([none["bytes_up"] / 1e6], [none["map@20"]], color="k", label="none (float32)")
    axes[0].axhline(none["map@20"] - 0.01, ls="--", color="grey", label="none - 1 point")
    axes[0].set(xscale="log", xlabel="MB up (all rounds, all clients)", ylabel="mAP@20")
    axes[0].legend(fontsize=8)
    steps = [c["step"] for c in curve]
    axes[1].plot(steps, [c["bytes_up_ratio"] for c in curve], marker="o", label="bytes up")
    axes[1].plot(steps, [c["bytes_down_ratio"] for c in curve], marker="s", label="bytes down")
    axes[1].axhline(4.0, ls="--", color="grey", label="4x")
    axes[1].set(yscale="log", ylabel="none / entropy", title="bytes saved")
    axes[1].legend(fontsize=8)
    for modality in ("s1", "s2"):
        base = none.get(f"bpp_{modality}")
        values = [c.get(f"bpp_{modality}") for c in curve]
        if base and all(v is not None for v in values):
            ratios = [v / base for v in values]
            axes[2].plot(steps, ratios, marker="o", label=f"bpp {modality.upper()}")
    axes[2].axhline(1.0, ls="--", color="grey")
    axes[2].set(ylabel="bpp entropy / none", title="image compression of the model")
    axes[2].legend(fontsize=8)
    for ax in axes[1:]:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(steps))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{s:g}" for s in steps])
        ax.set_xlabel("step (x update RMS)")
    fig.suptitle("Entropy-coded updates vs float32 arrays (same seed, data, clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments" / "modality-split.toml")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="0.25,0.5,1,2", help="curve: steps x update RMS")
    parser.add_argument("--step", type=float, default=None, help="headline step (default: codec's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value")
    parser.add_argument("--plot", type=Path, default=Path("bench-updates.png"))
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--quick", action="store_true", help="smoke setup, 3 clients, 2 rounds")
    args = parser.parse_args()

    from fedrs.cli.simulate import prepare_data_with_progress
    from fedrs.config import UpdateCodecConfig, parse_override
    from fedrs.settings import RunSettings

    if args.quick:
        args.config = REPO / "experiments" / "smoke.toml"
        args.clients, args.rounds, args.steps = 3, 2, "0.5,2"
    headline = args.step if args.step is not None else UpdateCodecConfig.model_validate({}).step
    steps = sorted({float(s) for s in args.steps.split(",") if s.strip()} | {headline})
    base = {"partition.clients": args.clients, "federation.rounds": args.rounds}
    base |= dict(parse_override(s) for s in args.sets)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out.resolve() if args.out else Path(tmp)
        prepare_data_with_progress(RunSettings(str(args.config.resolve()), base, str(root)))
        runs: dict[str, dict[str, Any]] = {}
        print(f"none: {args.clients} clients, {args.rounds} rounds, {args.config.name}", flush=True)
        runs["none"] = row(
            simulate(args.config, base | {"federation.update_codec": "none"}, root / "none")
        )
        print(f"  {json.dumps(runs['none'])}", flush=True)
        for step in steps:
            name = f"entropy-{step:g}"
            print(f"{name}:", flush=True)
            overrides = base | {"federation.update_codec": "entropy", "federation.codec.step": step}
            runs[name] = row(simulate(args.config, overrides, root / name)) | {"step": step}
            print(f"  {json.dumps(runs[name])}", flush=True)

    none = runs["none"]
    curve = []
    for step in steps:
        run = runs[f"entropy-{step:g}"]
        curve.append(
            run
            | {
                "bytes_up_ratio": round(none["bytes_up"] / run["bytes_up"], 3),
                "bytes_down_ratio": round(none["bytes_down"] / run["bytes_down"], 3),
                "map_drop_points": round(100 * (none["map@20"] - run["map@20"]), 3),
            }
        )
    chosen = next(c for c in curve if c["step"] == headline)
    plot(none, curve, args.plot)

    print()
    header = f"{'codec':<14}{'MB up':>9}{'MB down':>9}{'up x':>7}{'down x':>8}"
    header += f"{'mAP@20':>9}{'drop pt':>9}{'bpp S1':>8}{'bpp S2':>8}"
    header += f"{'PSNR S1':>9}{'PSNR S2':>9}{'wall s':>8}"
    print(header)

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        ("none", none | {"bytes_up_ratio": 1.0, "bytes_down_ratio": 1.0, "map_drop_points": 0.0})
    ]
    lines += [(f"entropy {c['step']:g}", c) for c in curve]
    for label, r in lines:
        print(
            f"{label:<14}{r['bytes_up'] / 1e6:>9.2f}{r['bytes_down'] / 1e6:>9.2f}"
            f"{r['bytes_up_ratio']:>7.2f}{r['bytes_down_ratio']:>8.2f}"
            f"{r['map@20']:>9.4f}{r['map_drop_points']:>9.2f}"
            f"{fmt(r['bpp_s1'], '.3f'):>8}{fmt(r['bpp_s2'], '.3f'):>8}"
            f"{fmt(r['psnr_s1'], '.2f'):>9}{fmt(r['psnr_s2'], '.2f'):>9}{r['wall_s']:>8.1f}"
        )
    failed = [label for label, r in lines if r["clients_failed"]]
    if failed:
        print(f"WARNING: failed client rounds in {', '.join(failed)}: bytes are not comparable")
    print(f"plot: {args.plot.resolve()}")
    figures = {
        "config": args.config.name,
        "clients": args.clients,
        "rounds": args.rounds,
        "step": headline,
        "none": none,
        "entropy": chosen,
        "bytes_up_ratio": chosen["bytes_up_ratio"],
        "bytes_down_ratio": chosen["bytes_down_ratio"],
        "map_drop_points": chosen["map_drop_points"],
        "bar_met": chosen["bytes_up_ratio"] >= 4.0 and chosen["map_drop_points"] <= 1.0,
        "curve": curve,
        "plot": str(args.plot.resolve()),
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
