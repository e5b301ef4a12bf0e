"""Federated vs centralized rate–distortion: Bjøntegaard deltas over several λ, with seeds.

For every λ (``loss.lmbda``) and seed, ``fedrs compare`` trains the centralized reference and each
federation on the same archive (runs already in ``--out`` are read, not rerun), then this script
fits each run's (bpp, PSNR) points per modality into a curve and reports, for each federation
against the centralized curve, the BD-rate (% more bits for the same PSNR) and the BD-PSNR (dB
gained at the same bpp) per modality (``fedrs.bjontegaard``), and mAP@20 in both conventions at
every λ (mean over the λ values), with the random-code baselines.  With several seeds each figure
is a mean with its 95 % Student-t half width over the seeds.

Prints a table, then, as its last line, one JSON object with every figure.

    python bench/convergence.py [--config experiments/modality-split.toml] [--lambdas 50,100,200]
        [--seeds 0] [--strategies fedavg,modality-aware] [--out runs/convergence]
        [--rounds N] [--until-plateau] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from fedrs.bjontegaard import bd_psnr, bd_rate
from fedrs.cli import main as cli
from fedrs.convergence import mean_interval

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("s1", "s2")


def run_folder(out: Path, lmbda: float, seed: int | None, name: str) -> Path:
    base = out / f"lambda-{lmbda:g}"
    return (base if seed is None else base / f"seed-{seed}") / name


def compare(args: argparse.Namespace, lmbda: float) -> None:
    """One ``fedrs compare`` at ``lmbda`` (every seed), reading what is already there."""
    argv = ["compare", "--out", str(args.out / f"lambda-{lmbda:g}")]
    argv += ["--strategies", args.strategies, "--set", f"loss.lmbda={lmbda}"]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.seeds is not None:
        argv += ["--seeds", args.seeds]
    if args.rounds:
        argv += ["--rounds", str(args.rounds)]
    if args.until_plateau:
        argv.append("--until-plateau")
    for item in args.set or []:
        argv += ["--set", item]
    code = cli(argv)
    if code != 0:
        raise SystemExit(f"fedrs compare at lambda {lmbda:g} failed with exit code {code}")


def summary(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return data


def curve(summaries: list[dict[str, Any]], modality: str) -> tuple[list[float], list[float]]:
    """(bpp, PSNR) of ``modality`` over the λ values (points without the modality left out)."""
    rates, psnrs = [], []
    for s in summaries:
        rate, psnr = (s.get("bpp") or {}).get(modality), (s.get("psnr") or {}).get(modality)
        if rate is not None and psnr is not None:
            rates.append(float(rate))
            psnrs.append(float(psnr))
    return rates, psnrs


def deltas(central: list[dict[str, Any]], federated: list[dict[str, Any]]) -> dict[str, Any]:
    """BD-rate and BD-PSNR per modality of one federation against the centralized curve."""
    out: dict[str, Any] = {}
    for modality in MODALITIES:
        ref, test = curve(central, modality), curve(federated, modality)
        try:
            out[f"bd_rate_{modality}"] = bd_rate(*ref, *test)
        except Exception as exc:  # curves that do not overlap: reported, not fatal
            out[f"bd_rate_{modality}"] = None
            out[f"bd_rate_{modality}_why"] = str(exc)
        try:
            out[f"bd_psnr_{modality}"] = bd_psnr(*ref, *test)
        except Exception as exc:
            out[f"bd_psnr_{modality}"] = None
            out[f"bd_psnr_{modality}_why"] = str(exc)
    return out


def retrieval(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """mAP@20 (both conventions, with their random baselines) averaged over the λ values."""
    keys = ("map@20", "map@20_min_k_r", "map@20_random", "map@20_min_k_r_random")
    return {k: sum(float(s[k]) for s in summaries) / len(summaries) for k in keys}


def traffic(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Rounds (epochs for the centralized run) and MB up + down, averaged over the λ values."""
    rounds = [float(s.get("rounds") or s.get("epochs") or 0) for s in summaries]
    mb = [(s.get("bytes_up", 0) + s.get("bytes_down", 0)) / 1e6 for s in summaries]
    return {"rounds": sum(rounds) / len(rounds), "mb": sum(mb) / len(mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/modality-split.toml")
    parser.add_argument("--lambdas", default="50,100,200")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: the config's seed)")
    parser.add_argument("--strategies", default="fedavg,modality-aware")
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--until-plateau", action="store_true")
    parser.add_argument("--set", action="append", help="experiment override key=value")
    args = parser.parse_args()
    args.out = args.out.resolve()
    lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    if len(lambdas) < 2:
        raise SystemExit("--lambdas needs at least 2 values (3 or more for a curve)")
    seeds: list[int | None] = (
        [int(s) for s in args.seeds.split(",")] if args.seeds is not None else [None]
    )
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for lmbda in lambdas:
        compare(args, lmbda)

    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in ["centralized", *names]}
    for seed in seeds:
        central = [summary(run_folder(args.out, lm, seed, "centralized")) for lm in lambdas]
        per_seed["centralized"].append(retrieval(central) | traffic(central))
        for name in names:
            runs = [summary(run_folder(args.out, lm, seed, name)) for lm in lambdas]
            per_seed[name].append(deltas(central, runs) | retrieval(runs) | traffic(runs))

    figures = [
        "bd_rate_s1",
        "bd_psnr_s1",
        "bd_rate_s2",
        "bd_psnr_s2",
        "map@20",
        "map@20_min_k_r",
        "map@20_random",
        "map@20_min_k_r_random",
        "rounds",
        "mb",
    ]
    result: dict[str, Any] = {}
    for name, rows in per_seed.items():
        result[name] = {}
        for key in figures:
            values = [r[key] for r in rows if r.get(key) is not None]
            if not values:
                result[name][key] = None
                continue
            mean, half = mean_interval(values)
            result[name][key] = {"mean": mean, "half_width": half, "n": len(values)}
        result[name]["per_seed"] = rows

    def cell(value: Any, digits: int) -> str:
        if value is None:
            return "-"
        text = f"{value['mean']:.{digits}f}"
        if value["half_width"] is not None and math.isfinite(value["half_width"]):
            text += f"±{value['half_width']:.{digits}f}"
        return text

    columns = [
        ("BD-rate S1 %", "bd_rate_s1", 1),
        ("BD-PSNR S1", "bd_psnr_s1", 2),
        ("BD-rate S2 %", "bd_rate_s2", 1),
        ("BD-PSNR S2", "bd_psnr_s2", 2),
        ("mAP@20", "map@20", 3),
        ("min(k,R)", "map@20_min_k_r", 3),
        ("rounds", "rounds", 1),
        ("MB", "mb", 0),
    ]
    print(
        f"Federations vs centralized, lambdas {', '.join(f'{x:g}' for x in lambdas)}; "
        f"seeds {args.seeds or 'config'}; BD vs the centralized curve per modality; mAP@20 "
        "averaged over the lambdas (random codes: "
        f"{cell(result['centralized']['map@20_random'], 3)} / "
        f"{cell(result['centralized']['map@20_min_k_r_random'], 3)})"
    )
    print(f"{'run':<16}" + "".join(f"{title:>14}" for title, _, _ in columns))
    for name, row in result.items():
        print(f"{name:<16}" + "".join(f"{cell(row[key], d):>14}" for _, key, d in columns))
    print(json.dumps({"lambdas": lambdas, "seeds": args.seeds, "runs": result}))


if __name__ == "__main__":
    main()
