"""Federated vs centralized rate–distortion: Bjøntegaard deltas over several λ, with seeds.

For every λ (``loss.lmbda``) and seed, ``fedrs compare`` trains the centralized reference and each
federation on the same archive (runs already in ``--out`` are read, not rerun), then this script
fits each run's (bpp, PSNR) points per modality into a curve and reports, for each federation
against the centralized curve, the BD-rate (% more bits for the same PSNR) and the BD-PSNR (dB
gained at the same bpp) per modality (``fedrs.bjontegaard``), and mAP@20 in both conventions at
every λ (mean over the λ values), with the random-code baselines.  With several seeds each figure
is a mean with its 95 % Student-t half width over the seeds.  Beside them: the rounds (epochs),
passes over the data and MB up + down each run took, and the largest round-to-round change of
each modality's bpp after the stage-1 rounds (``fedrs.convergence.rate_jump``).

Then, for each federation, its targets against the centralized run, each met or not: mAP@20
at 99 % or more of the centralized one in both conventions, BD-PSNR of -0.5 dB or better per
modality ("curves apart" where the bpp ranges do not overlap: no delta is defined), at most 3x
the centralized passes, and no rate jump above 15 %; and modality-aware minus FedAvg seed by
seed (mAP@20, BD-rate, MB) with its 95 % interval.

Prints the tables, then, as its last line, one JSON object with every figure.

    python bench/convergence.py [--config experiments/modality-split.toml] [--lambdas 6,25,100]
        [--central-lambdas λ,...] [--fit pchip|cubic] [--seeds 0]
        [--strategies fedavg,modality-aware] [--out runs/convergence] [--rounds N]
        [--until-plateau] [--set key=value ...]

Each curve is fitted by the piecewise cubic Hermite interpolant through its points (``--fit
pchip``, the default): short trainings give curves flat in PSNR within a tenth of a dB while λ
moves the rate, and a least-squares cubic through such scattered points swings by a dB or more
between them; ``--fit cubic`` is VCEG-M33's fit (``fedrs.bjontegaard``).

``--central-lambdas`` adds points to the centralized curve only (``fedrs compare --strategies
""`` at those λ): where the federated codecs sit at lower rates than the centralized ones, the
two curves overlap in bpp only once the centralized curve reaches down to them, and a
Bjøntegaard delta is defined only over that overlap.  The mAP@20, passes and bytes of the
centralized run stay averaged over ``--lambdas``, the λ values both sides ran.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from fedrs.bjontegaard import FITS, bd_psnr, bd_rate
from fedrs.cli import main as cli
from fedrs.convergence import (
    federation_settings,
    mean_interval,
    paired_differences,
    rate_jump,
)

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("s1", "s2")


def run_folder(out: Path, lmbda: float, seed: int | None, name: str) -> Path:
    base = out / f"lambda-{lmbda:g}"
    return (base if seed is None else base / f"seed-{seed}") / name


def compare(args: argparse.Namespace, lmbda: float, *, central_only: bool = False) -> None:
    """One ``fedrs compare`` at ``lmbda`` (every seed), reading what is already there; with
    ``central_only``, the centralized run alone."""
    strategies = "" if central_only else args.strategies
    argv = ["compare", "--out", str(args.out / f"lambda-{lmbda:g}")]
    argv += ["--strategies", strategies, "--set", f"loss.lmbda={lmbda}"]
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


def deltas(
    central: list[dict[str, Any]], federated: list[dict[str, Any]], *, fit: str
) -> dict[str, Any]:
    """BD-rate and BD-PSNR per modality of one federation against the centralized curve,
    each curve fitted by ``fit`` (``fedrs.bjontegaard.FITS``)."""
    out: dict[str, Any] = {}
    for modality in MODALITIES:
        ref, test = curve(central, modality), curve(federated, modality)
        try:
            out[f"bd_rate_{modality}"] = bd_rate(*ref, *test, fit=fit)
        except Exception as exc:  # curves that do not overlap: reported, not fatal
            out[f"bd_rate_{modality}"] = None
            out[f"bd_rate_{modality}_why"] = str(exc)
        try:
            out[f"bd_psnr_{modality}"] = bd_psnr(*ref, *test, fit=fit)
        except Exception as exc:
            out[f"bd_psnr_{modality}"] = None
            out[f"bd_psnr_{modality}_why"] = str(exc)
    return out


def retrieval(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """mAP@20 (both conventions, with their random baselines) averaged over the λ values."""
    keys = ("map@20", "map@20_min_k_r", "map@20_random", "map@20_min_k_r_random")
    return {k: sum(float(s[k]) for s in summaries) / len(summaries) for k in keys}


def passes(s: dict[str, Any]) -> float:
    """Passes over the training data: a centralized run's epochs, a federation's rounds times
    its local epochs."""
    if s.get("epochs") is not None:
        return float(s["epochs"])
    return float(s.get("rounds") or 0) * int(federation_settings(s).get("local_epochs", 1) or 1)


def traffic(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Rounds (epochs for the centralized run), passes over the data and MB up + down,
    averaged over the λ values."""
    rounds = [float(s.get("rounds") or s.get("epochs") or 0) for s in summaries]
    mb = [(s.get("bytes_up", 0) + s.get("bytes_down", 0)) / 1e6 for s in summaries]
    n = len(summaries)
    return {
        "rounds": sum(rounds) / n,
        "passes": sum(passes(s) for s in summaries) / n,
        "mb": sum(mb) / n,
    }


def jumps(summaries: list[dict[str, Any]]) -> dict[str, float | None]:
    """The largest round-to-round bpp change per modality after the stage-1 rounds, over the
    λ values (``fedrs.convergence.rate_jump``)."""
    out: dict[str, float | None] = {}
    for modality in MODALITIES:
        found = [
            rate_jump(
                s.get("history") or [],
                modality,
                after_round=int(federation_settings(s).get("stage1_rounds", 0) or 0),
            )
            for s in summaries
        ]
        values = [x for x in found if x is not None]
        out[f"rate_jump_{modality}"] = max(values) if values else None
    return out


MAP_SHARE = 0.99
BD_PSNR_FLOOR = -0.5
PASSES_FACTOR = 3.0
JUMP_CEILING = 0.15


def verdicts(result: dict[str, Any], name: str) -> list[tuple[str, str, bool | None]]:
    """The issue's targets for federation ``name`` (means over the seeds): what, the figure,
    and whether it is met (None where the figure is missing)."""
    row, central = result[name], result["centralized"]

    def mean(r: dict[str, Any], key: str) -> float | None:
        value = r.get(key)
        return None if value is None else float(value["mean"])

    out: list[tuple[str, str, bool | None]] = []
    for key, title in (("map@20", "mAP@20"), ("map@20_min_k_r", "mAP@20 min(k,R)")):
        fed, ref = mean(row, key), mean(central, key)
        if fed is None or ref is None or ref <= 0:
            out.append((f"{title} >= {MAP_SHARE:.0%} of centralized", "-", None))
            continue
        share = fed / ref
        out.append(
            (f"{title} >= {MAP_SHARE:.0%} of centralized", f"{share:.1%}", share >= MAP_SHARE)
        )
    for modality in MODALITIES:
        value = mean(row, f"bd_psnr_{modality}")
        apart = any(f"bd_psnr_{modality}_why" in r for r in row["per_seed"])
        figure = f"{value:+.2f} dB" if value is not None else ("curves apart" if apart else "-")
        met = None if value is None else value >= BD_PSNR_FLOOR
        out.append((f"BD-PSNR {modality.upper()} >= {BD_PSNR_FLOOR:g} dB", figure, met))
    fed, ref = mean(row, "passes"), mean(central, "passes")
    if fed is None or not ref:
        out.append((f"passes <= {PASSES_FACTOR:g}x centralized", "-", None))
    else:
        out.append(
            (
                f"passes <= {PASSES_FACTOR:g}x centralized",
                f"{fed:g} vs {ref:g} ({fed / ref:.2f}x)",
                fed <= PASSES_FACTOR * ref,
            )
        )
    for modality in MODALITIES:
        value = mean(row, f"rate_jump_{modality}")
        figure = "-" if value is None else f"{value:.1%}"
        met = None if value is None else value <= JUMP_CEILING
        out.append(
            (f"round-to-round {modality.upper()} rate jump <= {JUMP_CEILING:.0%}", figure, met)
        )
    return out


def paired_difference(
    per_seed: dict[str, list[dict[str, Any]]], first: str, second: str, key: str
) -> dict[str, Any] | None:
    """``first - second`` of ``key`` seed by seed (``fedrs.convergence.paired_differences``),
    with its mean, 95 % interval, ``n`` and whether the interval is ``clear`` of zero; None
    where no seed has both."""
    if len(per_seed[first]) != len(per_seed[second]):
        raise ValueError(f"{first} and {second} ran different numbers of seeds")
    found = paired_differences(
        dict(enumerate(per_seed[first])), dict(enumerate(per_seed[second])), (key,)
    )
    if found["mean"][key] is None:
        return None
    return {k: found[k][key] for k in ("mean", "half_width", "n", "clear")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/modality-split.toml")
    parser.add_argument("--lambdas", default="6,25,100")
    parser.add_argument(
        "--central-lambdas", default="", help="more λ for the centralized curve only, e.g. 3"
    )
    parser.add_argument(
        "--fit",
        choices=FITS,
        default="pchip",
        help="curve fit of the deltas: pchip (through the points; the default) or cubic",
    )
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
    extra = [float(x) for x in args.central_lambdas.split(",") if x.strip()]
    extra = [x for x in dict.fromkeys(extra) if x not in lambdas]
    curve_lambdas = sorted(lambdas + extra)
    seeds: list[int | None] = (
        [int(s) for s in args.seeds.split(",")] if args.seeds is not None else [None]
    )
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for lmbda in lambdas:
        compare(args, lmbda)
    for lmbda in extra:
        compare(args, lmbda, central_only=True)

    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in ["centralized", *names]}
    for seed in seeds:
        reference = {
            lm: summary(run_folder(args.out, lm, seed, "centralized")) for lm in curve_lambdas
        }
        central = [reference[lm] for lm in lambdas]
        per_seed["centralized"].append(retrieval(central) | traffic(central))
        for name in names:
            runs = [summary(run_folder(args.out, lm, seed, name)) for lm in lambdas]
            per_seed[name].append(
                deltas(list(reference.values()), runs, fit=args.fit)
                | retrieval(runs)
                | traffic(runs)
                | jumps(runs)
            )

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
        "passes",
        "mb",
        "rate_jump_s1",
        "rate_jump_s2",
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
        ("passes", "passes", 1),
        ("MB", "mb", 0),
        ("S1 jump", "rate_jump_s1", 2),
        ("S2 jump", "rate_jump_s2", 2),
    ]
    print(
        f"Federations vs centralized, lambdas {', '.join(f'{x:g}' for x in lambdas)}"
        + (f" (centralized curve also at {', '.join(f'{x:g}' for x in extra)})" if extra else "")
        + f"; seeds {args.seeds or 'config'}; BD vs the centralized curve per modality "
        f"({args.fit} fit); mAP@20 averaged over the lambdas (random codes: "
        f"{cell(result['centralized']['map@20_random'], 3)} / "
        f"{cell(result['centralized']['map@20_min_k_r_random'], 3)})"
    )
    print(f"{'run':<16}" + "".join(f"{title:>14}" for title, _, _ in columns))
    for name, row in result.items():
        print(f"{name:<16}" + "".join(f"{cell(row[key], d):>14}" for _, key, d in columns))
    checks = {name: verdicts(result, name) for name in names}
    for name, verdict_rows in checks.items():
        print(f"\ntargets, {name}:")
        for what, figure, met in verdict_rows:
            state = "-" if met is None else ("met" if met else "NOT met")
            print(f"  {what:<44}{figure:>24}  {state}")
    differences: dict[str, Any] = {}
    if "modality-aware" in names and "fedavg" in names:
        print("\nmodality-aware - fedavg, seed by seed (mean ± 95 % interval over the seeds):")
        for key in ("map@20", "map@20_min_k_r", "bd_rate_s1", "bd_rate_s2", "mb"):
            diff = paired_difference(per_seed, "modality-aware", "fedavg", key)
            differences[key] = diff
            if diff is None:
                continue
            if diff["half_width"] is None:
                verdict = "one seed: no interval"
            elif diff["clear"]:
                verdict = "interval excludes 0"
            else:
                verdict = "interval holds 0"
            print(f"  {key:<16}{cell(diff, 3):>18}  {verdict}")
    summary_line = {
        "lambdas": lambdas,
        "central_lambdas": extra,
        "fit": args.fit,
        "seeds": args.seeds,
        "runs": result,
        "targets": {
            name: [{"target": w, "figure": f, "met": m} for w, f, m in verdict_rows]
            for name, verdict_rows in checks.items()
        },
        "modality_aware_minus_fedavg": differences,
    }
    print(json.dumps(summary_line))


if __name__ == "__main__":
    main()
