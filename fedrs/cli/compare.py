"""Compare centralized training with federations (FedAvg, modality-aware) on the same data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from fedrs.cli._common import console, fail, number, progress, quiet_third_parties, round_printer
from fedrs.config import load_config
from fedrs.convergence import mean_interval, paired_differences, target_labels, targets
from fedrs.io import atomic_write_text
from fedrs.reference import centralized_overrides, write_reference
from fedrs.settings import RunSettings, check_out_folder, clear_run

COLUMNS = (
    ("mAP@20", "map@20"),
    ("random", "map@20_random"),
    ("mAP@20 min(k,R)", "map@20_min_k_r"),
    ("random min(k,R)", "map@20_min_k_r_random"),
    ("bpp S1", ("bpp", "s1")),
    ("bpp S2", ("bpp", "s2")),
    ("PSNR S1", ("psnr", "s1")),
    ("PSNR S2", ("psnr", "s2")),
    ("MB up", "bytes_up"),
    ("wall s", "wall_s"),
)
"""``(title, summary key)`` a column: the title names the figure in ``comparison.json`` and,
stacked a word a line (``(k,R)`` on a line of its own), heads the table."""

CONVENTIONS = (
    "mAP@20: AP averaged over the relevant items retrieved in the top 20; min(k,R): AP divided "
    "by min(20, R), R = relevant items in the database; relevant = shares a label; random: "
    "random codes, same queries and database; ±queries: half width of the mAP's 95 % "
    "bootstrap interval over the queries (bounds in comparison.json)."
)
"""The table's caption: what the mAP columns mean."""

QUERY_INTERVALS = (("mAP@20", "map@20"), ("mAP@20 min(k,R)", "map@20_min_k_r"))
"""``(title, summary key)`` of the columns whose figure comes with a 95 % bootstrap interval
over the queries (the summary's ``<key>_ci_low`` and ``<key>_ci_high``); ``comparison.json``
names its bounds ``<title> low`` and ``<title> high``."""

QUERY_ROW = "±queries"
"""The run cell of the row of those intervals' half widths under a run's figures."""


def _value(summary: dict[str, Any], key: str | tuple[str, str]) -> float | None:
    value = summary.get(key) if isinstance(key, str) else (summary.get(key[0]) or {}).get(key[1])
    if value is None:
        return None
    return float(value) / 1e6 if key == "bytes_up" else float(value)


def _header(title: str) -> str:
    return title.replace(" ", "\n").replace("min(", "min\n(")


def _metric_name(title: str) -> str:
    """An MLflow-safe name for a column title: ``mAP@20 min(k,R)`` -> ``mAP@20_min_k_R``."""
    return re.sub(r"[^\w@./-]+", "_", title).strip("_")


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """A run's figures by column title (:data:`COLUMNS`) and the bounds of its intervals over
    the queries (:data:`QUERY_INTERVALS`; None in a summary without them): a row of
    ``comparison.json``."""
    row = {title: _value(summary, key) for title, key in COLUMNS}
    for title, key in QUERY_INTERVALS:
        row |= {f"{title} {end}": _value(summary, f"{key}_ci_{end}") for end in ("low", "high")}
    return row


def query_half_widths(row: dict[str, float | None]) -> dict[str, float | None]:
    """Half widths of a row's intervals over the queries by column title (None where the row
    lacks a bound)."""
    out: dict[str, float | None] = {}
    for title, _ in QUERY_INTERVALS:
        low, high = row.get(f"{title} low"), row.get(f"{title} high")
        out[title] = None if low is None or high is None else (high - low) / 2
    return out


CONFIDENCE = 0.95
"""The confidence of the intervals over seeds."""

SPREAD_ROW = "±95%"
"""The run cell of the row of half widths under a run's means."""


def intervals(
    per_seed: list[dict[str, float | None]], confidence: float = CONFIDENCE
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Means and Student-t half widths (:func:`fedrs.convergence.mean_interval`) of a run's
    figures over its seeds, each over the seeds that report it (None where none does; a half
    width None where one does).  The means also hold the mean bounds of the intervals over
    the queries (:data:`QUERY_INTERVALS`) over the seeds that report both, so that their half
    width is the seeds' mean half width."""
    means: dict[str, float | None] = {}
    half_widths: dict[str, float | None] = {}
    for title, _ in COLUMNS:
        values = [v for row in per_seed if (v := row.get(title)) is not None]
        if values:
            means[title], half_widths[title] = mean_interval(values, confidence)
        else:
            means[title] = half_widths[title] = None
    for title, _ in QUERY_INTERVALS:
        ends = [f"{title} low", f"{title} high"]
        bounds = [row for row in per_seed if all(row.get(end) is not None for end in ends)]
        for end in ends:
            values = [float(row[end] or 0.0) for row in bounds]
            means[end] = sum(values) / len(values) if values else None
    return means, half_widths


PAIRED_COLUMNS = ("mAP@20", "mAP@20 min(k,R)", "bpp S1", "bpp S2", "PSNR S1", "PSNR S2", "MB up")
"""The figures (titles of :data:`COLUMNS`) compared seed by seed in the paired table."""

PAIRED_CAPTION = (
    "each seed's figure of the first run minus that of the second (the same seed, archive "
    "and partition), then the mean over the seeds and, under it, the half width of its 95 % "
    "Student-t interval; *: an interval clear of zero."
)
"""The paired table's caption."""


def paired_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The pairs the paired table compares: each federation against the centralized run, then
    each federation against every one listed before it (``fedavg,modality-aware`` gives
    ``modality-aware - fedavg``)."""
    federations = [name for name in names if name != "centralized"]
    pairs = [(name, "centralized") for name in federations if "centralized" in names]
    pairs += [(b, a) for i, a in enumerate(federations) for b in federations[i + 1 :]]
    return pairs


def _signed(value: float | None) -> str:
    cell = number(value)
    return cell if value is None or cell.startswith("-") else f"+{cell}"


def paired_table(rows: dict[tuple[str, str], dict[str, Any]], title: str) -> Table:
    """One pair of runs a row (:func:`fedrs.convergence.paired_differences` of
    :data:`PAIRED_COLUMNS`): the mean differences, signed and
    marked ``*`` where their interval is clear of zero, and under them a row
    :data:`SPREAD_ROW` of the half widths; fits an 80-column terminal."""
    table = _run_table(title, PAIRED_CAPTION, padding=0)
    for header in PAIRED_COLUMNS:
        table.add_column(_header(header), justify="right", no_wrap=True)
    for (first, second), found in rows.items():
        cells = [
            _signed(found["mean"][h]) + ("*" if found["clear"][h] else "") for h in PAIRED_COLUMNS
        ]
        table.add_row(f"{first} - {second}", *cells)
        table.add_row(SPREAD_ROW, *(number(found["half_width"][h]) for h in PAIRED_COLUMNS))
    return table


def _run_table(title: str, caption: str, *, padding: int) -> Table:
    """A table of runs in the comparison's style: no edge, a rule under the headers, the caption
    on the left, cells padded by ``padding`` spaces left and right (not at the edges) and a first
    column ``run`` whose long names fold."""
    table = Table(
        title=title,
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, padding),
    )
    table.add_column("run", overflow="fold")
    return table


def figures_table(
    rows: dict[str, dict[str, float | None]],
    title: str,
    half_widths: dict[str, dict[str, float | None]] | None = None,
) -> Table:
    """One row a run, one column a figure of :data:`COLUMNS` (``rows``: run -> title ->
    figure); fits an 80-column terminal.

    A run whose row holds intervals over the queries (:data:`QUERY_INTERVALS`) is followed by
    a row :data:`QUERY_ROW` of their half widths under the mAP columns.  With ``half_widths``
    (means over seeds in ``rows``), each run's rows are followed by a row :data:`SPREAD_ROW`
    of the half widths of their intervals over the seeds, in the same columns.

    Numbers never wrap (:func:`fedrs.cli._common.number` keeps them short), headers stack on
    up to three lines, columns are one space apart and a long run name folds: no cell is cut
    short. The caption (:data:`CONVENTIONS`) says what the mAP columns mean.
    """
    table = _run_table(title, CONVENTIONS, padding=0)
    for header, _ in COLUMNS:
        table.add_column(_header(header), justify="right", no_wrap=True)
    for name, row in rows.items():
        table.add_row(name, *(number(row.get(header)) for header, _ in COLUMNS))
        queries = query_half_widths(row)
        if any(v is not None for v in queries.values()):
            cells = (number(queries[h]) if h in queries else "" for h, _ in COLUMNS)
            table.add_row(QUERY_ROW, *cells)
        if half_widths is not None:
            spread = half_widths.get(name, {})
            table.add_row(SPREAD_ROW, *(number(spread.get(header)) for header, _ in COLUMNS))
    return table


def comparison_table(rows: dict[str, dict[str, Any]], title: str) -> Table:
    """:func:`figures_table` of one summary a run."""
    return figures_table({name: figures(summary) for name, summary in rows.items()}, title)


TARGET_TITLES = dict(
    zip(
        target_labels(),
        (
            "mAP@20 95%",
            "mAP@20 99%",
            "min(k,R) 95%",
            "min(k,R) 99%",
            "PSNR S1 within 0.5 dB",
            "PSNR S2 within 0.5 dB",
        ),
        strict=True,
    )
)
"""The targets of :func:`fedrs.convergence.targets` as the targets table names them."""

TARGETS_CAPTION = (
    "round: the first at which the federation reaches 95 % or 99 % of the centralized mAP@20 "
    "(min(k,R): in that convention), or the centralized PSNR less 0.5 dB at no more bpp; "
    "passes: rounds x local epochs; MB: up + down until then; -: not reached (or no "
    "centralized figure)."
)
"""The targets table's caption."""

_COSTS = ("round", "passes", "bytes")


def mean_targets(per_seed: list[dict[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """Targets over seeds: for each target, ``seeds`` (how many), ``reached`` (by how many)
    and the mean ``round``, ``passes`` and ``bytes`` over the seeds that reached it (None
    where none did)."""
    out: dict[str, dict[str, Any]] = {}
    for label in target_labels():
        found = [t for seed in per_seed if (t := seed.get(label)) is not None]
        entry: dict[str, Any] = {"seeds": len(per_seed), "reached": len(found)}
        for cost in _COSTS:
            entry[cost] = sum(f[cost] for f in found) / len(found) if found else None
        out[label] = entry
    return out


def _count(value: float | None) -> str:
    """A mean count: whole where it is, else to one decimal."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def targets_table(rows: dict[str, dict[str, dict[str, Any]]], title: str) -> Table:
    """One row a federation and target (:func:`mean_targets`): the first round reaching it,
    the passes over the data and the megabytes up + down it took; with more than one seed, a
    ``seeds`` column says how many reached it and the figures are their means."""
    several = any(t["seeds"] > 1 for found in rows.values() for t in found.values())
    caption = TARGETS_CAPTION
    if several:
        caption += " Means over the seeds that reached it; seeds: how many of them did."
    table = _run_table(title, caption, padding=1)
    table.add_column("target", no_wrap=True)
    for header in ("round", "passes", "MB"):
        table.add_column(header, justify="right", no_wrap=True)
    if several:
        table.add_column("seeds", justify="right", no_wrap=True)
    for name, found in rows.items():
        for i, (label, entry) in enumerate(found.items()):
            megabytes = None if entry["bytes"] is None else entry["bytes"] / 1e6
            cells = [
                name if i == 0 else "",
                TARGET_TITLES.get(label, label),
                _count(entry["round"]),
                _count(entry["passes"]),
                number(megabytes),
            ]
            if several:
                cells.append(f"{entry['reached']}/{entry['seeds']}")
            table.add_row(*cells)
    return table


def plateau_line(name: str, plateau: dict[str, Any] | None) -> str:
    """One line on where a run's stage 2 stopped (``eval.patience``), or that it ran in full."""
    if not plateau:
        return f"{name}: every epoch or round run (no plateau rule)"
    unit = "epoch" if "stage2_epoch" in plateau else "round"
    best = plateau.get(f"best_stage2_{unit}")
    if not plateau.get("reached"):
        return f"{name}: {plateau['metric']} still improving at the last {unit} (best: {best})"
    return (
        f"{name}: {plateau['metric']} plateau at stage-2 {unit} {plateau[f'stage2_{unit}']} "
        f"(best {unit} {best}: {plateau['best']:.4g})"
    )


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``.

    Raises:
        InputError: an entry that is not a whole number, a repeated seed, or none at all.
    """
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            fail(f"--seeds: {part!r} is not a whole number (give e.g. --seeds 0,1,2)")
        if seed in seeds:
            fail(f"--seeds: seed {seed} is given twice")
        seeds.append(seed)
    if not seeds:
        fail("--seeds: no seed given (give e.g. --seeds 0,1,2)")
    return seeds


def seed_overrides(seed: int) -> dict[str, Any]:
    """The overrides of one seed's runs: the experiment's seed and its partition's."""
    return {"seed": seed, "partition.seed": seed}


def check_run_folders(folders: list[Path], overwrite: bool) -> list[Path]:
    """The comparison's resume: a run folder holding a finished run (``summary.json``) is read,
    an empty or new one is run; one holding an interrupted run is refused unless ``overwrite``,
    which runs every run again.  Returns the run files to remove before running (nothing is
    changed here).

    Raises:
        InputError: a folder holds an interrupted run and ``overwrite`` is not set.
    """

    replaced: list[Path] = []
    for folder in folders:
        if not overwrite and (folder / "summary.json").is_file():
            continue
        replaced += check_out_folder(folder, overwrite=overwrite, resumable=False)
    return replaced


def _runs(
    out: Path,
    config_path: str | None,
    overrides: dict[str, Any],
    names: list[str],
    verbose: bool,
    label: str = "",
) -> dict[str, dict[str, Any]]:
    """The summaries of the centralized run and of each federation, in ``out/<run>``: read
    where ``summary.json`` exists, run otherwise."""
    # heavy: mlflow, faiss, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.centralized import run_centralized

    # heavy: ray, flwr, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.server.simulation import run_simulation

    rows: dict[str, dict[str, Any]] = {}
    central = out / "centralized"
    base = load_config(config_path, overrides)
    if (central / "summary.json").is_file():
        console.print(f"reading {central / 'summary.json'}")
        rows["centralized"] = json.loads((central / "summary.json").read_text())
    else:
        console.print(f"{label}[bold]centralized[/] run")
        central_config = load_config(config_path, overrides | centralized_overrides(base))
        rows["centralized"] = run_centralized(central_config, central)
    # what `fedrs simulate` shows beside a federation of the same archive and recipe
    write_reference(base, rows["centralized"], central)
    for name in names:
        folder = out / name
        if (folder / "summary.json").is_file():
            console.print(f"reading {folder / 'summary.json'}")
            rows[name] = json.loads((folder / "summary.json").read_text())
            continue
        console.print(f"{label}[bold]{name}[/] federation")
        run_settings = RunSettings(
            config_path, overrides | {"federation.strategy": name}, str(folder)
        )
        rounds = run_settings.experiment().federation.rounds
        with progress() as bar:
            rows[name] = run_simulation(
                run_settings,
                on_round=round_printer(bar, rounds),
                verbose=verbose,
                echo=lambda line, bar=bar: bar.console.print(line, markup=False, highlight=False),
            )
    return rows


def _metrics(prefix: str, row: dict[str, float | None], suffix: str = "") -> dict[str, float]:
    return {f"{prefix}{_metric_name(k)}{suffix}": v for k, v in row.items() if v is not None}


TARGETS_TITLE = "targets: the federations against the centralized run"
PAIRED_TITLE = "paired over the seeds: one run minus another"


def _rounds_to(name: str, found: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {
        f"{name}/rounds_to_{_metric_name(label)}": float(entry["round"])
        for label, entry in found.items()
        if entry["round"] is not None
    }


def _one_seed(
    rows: dict[str, dict[str, Any]], title: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Print the tables of one summary a run; return ``comparison.json`` (run -> title ->
    figure, and ``targets`` for a federation) and the MLflow metrics."""
    found = {
        name: targets(rows["centralized"], summary)
        for name, summary in rows.items()
        if name != "centralized"
    }
    console.print(comparison_table(rows, title))
    console.print(
        targets_table({name: mean_targets([t]) for name, t in found.items()}, TARGETS_TITLE)
    )
    result: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    for name, summary in rows.items():
        result[name] = figures(summary)
        metrics |= _metrics(f"{name}/", result[name])
        if name in found:
            result[name]["targets"] = found[name]
            metrics |= _rounds_to(name, mean_targets([found[name]]))
    return result, metrics


def _over_seeds(
    by_seed: dict[int, dict[str, dict[str, Any]]], title: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Print the tables of runs repeated over seeds (means, their 95% half widths, targets);
    return ``comparison.json`` and the MLflow metrics.

    ``comparison.json`` holds a run as ``{"confidence", "mean", "half_width", "seeds"}``
    (``seeds``: seed -> figures, and that seed's ``targets`` for a federation) and, for a
    federation, ``targets`` (:func:`mean_targets`) and ``paired``: for each run it is compared
    with (:func:`paired_pairs`), its seed-by-seed differences
    (:func:`fedrs.convergence.paired_differences`).
    """
    seeds = list(by_seed)
    names = list(by_seed[seeds[0]])
    result: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    found: dict[str, dict[str, dict[str, Any]]] = {}
    by_run: dict[str, dict[int, dict[str, float | None]]] = {}
    for name in names:
        per_seed = {seed: figures(by_seed[seed][name]) for seed in seeds}
        by_run[name] = per_seed
        mean, half_width = intervals(list(per_seed.values()))
        result[name] = {
            "confidence": CONFIDENCE,
            "mean": mean,
            "half_width": half_width,
            "seeds": {str(seed): row for seed, row in per_seed.items()},
        }
        metrics |= _metrics(f"{name}/", mean) | _metrics(f"{name}/", half_width, "_half_width")
        for seed, row in per_seed.items():
            metrics |= _metrics(f"seed-{seed}/{name}/", row)
        if name == "centralized":
            continue
        reached = {
            seed: targets(by_seed[seed]["centralized"], by_seed[seed][name]) for seed in seeds
        }
        for seed, entry in reached.items():
            result[name]["seeds"][str(seed)]["targets"] = entry
        found[name] = mean_targets(list(reached.values()))
        result[name]["targets"] = found[name]
        metrics |= _rounds_to(name, found[name])
    console.print(
        figures_table(
            {name: row["mean"] for name, row in result.items()},
            f"{title}: mean over {len(seeds)} seeds, ± 95% interval",
            {name: row["half_width"] for name, row in result.items()},
        )
    )
    console.print(targets_table(found, TARGETS_TITLE))
    paired = {
        (a, b): paired_differences(by_run[a], by_run[b], PAIRED_COLUMNS, CONFIDENCE)
        for a, b in paired_pairs(names)
    }
    if paired:
        console.print(paired_table(paired, PAIRED_TITLE))
    for (a, b), found_pair in paired.items():
        result[a].setdefault("paired", {})[b] = found_pair
        prefix = f"{a}/minus_{b}/"
        metrics |= _metrics(prefix, found_pair["mean"])
        metrics |= _metrics(prefix, found_pair["half_width"], "_half_width")
    return result, metrics


def main(
    config: Path | None = typer.Option(None, help="Experiment TOML (default: built-in)."),
    out: Path = typer.Option(Path("runs/compare"), help="Output folder (one sub-folder a run)."),
    strategies: str = typer.Option("fedavg,modality-aware", help="Federated strategies."),
    data: Path | None = typer.Option(None, help="Archive or fedrs cache (default: synthetic)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: key=value (repeat)."),
    seeds: str | None = typer.Option(
        None,
        help="Seeds, e.g. 0,1,2: every run once a seed, in <out>/seed-<s>/<run>, figures as "
        "mean and 95% interval (default: the experiment's seed, in <out>/<run>).",
    ),
    rounds: int | None = typer.Option(
        None, min=1, help="Federation rounds (the centralized run gets as many epochs)."
    ),
    until_plateau: bool = typer.Option(
        False,
        "--until-plateau",
        help="Stop each run's stage 2 once its validation figure (eval.plateau_metric) has not "
        "improved by eval.tolerance for eval.patience epochs or rounds (patience 3 unless "
        "set); the rounds become a cap.",
    ),
    overwrite: bool = typer.Option(
        False,
        help="Run every run again, replacing the runs in --out (without it, finished runs are "
        "read and a folder holding an interrupted run is refused).",
    ),
    verbose: bool = typer.Option(False, help="Also show Flower's and Ray's logs."),
) -> None:
    """Runs (or reads, where ``<out>/<run>/summary.json`` exists) every run, then tabulates;
    with ``--seeds``, every run once a seed in ``<out>/seed-<s>/<run>``, tabulated as means with
    their 95% intervals."""
    # cycle: fedrs.cli.simulate imports this module
    from fedrs.cli.simulate import (
        experiment_overrides,
        prepare_data_with_progress,
        validate_components,
    )

    # heavy: matplotlib, imported when the command runs
    from fedrs.plots import plot_comparison

    # heavy: mlflow, imported when the command runs
    from fedrs.tracking import Tracker, default_tracking_uri

    quiet_third_parties(verbose)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    out = out.resolve()
    overrides = experiment_overrides(data=data, sets=set_)
    if rounds is not None:
        overrides["federation.rounds"] = rounds
    if until_plateau and not load_config(config, overrides).eval.patience:
        overrides["eval.patience"] = 3
    # every run of the comparison logs to one MLflow store
    overrides.setdefault("tracking.uri", default_tracking_uri(out))
    base = load_config(config, overrides)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    runs = [load_config(config, overrides | {"federation.strategy": name}) for name in names]
    for experiment in runs or [base]:  # the experiments that will run (no strategy: centralized)
        validate_components(experiment)
    folders = [
        root / name
        for root in ([out] if seed_list is None else [out / f"seed-{s}" for s in seed_list])
        for name in ("centralized", *names)
    ]
    replaced = check_run_folders(folders, overwrite)
    settings = RunSettings(str(config.resolve()) if config else None, overrides, str(out))
    prepare_data_with_progress(settings)
    clear_run(replaced)  # every check has passed
    title = f"fedrs compare: {base.name} ({base.partition.name} partition)"
    params = base.to_dict() | {"mode": "compare", "strategies": ",".join(names)}
    if seed_list is None:
        rows = _runs(out, settings.config_path, overrides, names, verbose)
        result, metrics = _one_seed(rows, title)
        for name, summary in rows.items():
            console.print(plateau_line(name, summary.get("plateau")), highlight=False)
        plot = plot_comparison(
            {name: figures(summary) for name, summary in rows.items()}, out / "comparison.png"
        )
    else:
        params["seeds"] = ",".join(map(str, seed_list))
        by_seed = {
            seed: _runs(
                out / f"seed-{seed}",
                settings.config_path,
                overrides | seed_overrides(seed),
                names,
                verbose,
                label=f"seed {seed}: ",
            )
            for seed in seed_list
        }
        result, metrics = _over_seeds(by_seed, title)
        plot = plot_comparison(
            {name: row["mean"] for name, row in result.items()},
            out / "comparison.png",
            {name: row["half_width"] for name, row in result.items()},
        )
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    tracker = Tracker(
        str(base.tracking.uri),
        experiment=base.tracking.experiment,
        run_name=f"{base.name}-compare",
        artifact_root=out / "mlartifacts",
    )
    tracker.log_params(params)
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifact(out / "comparison.json")
    tracker.log_artifact(plot)
    tracker.end()
    console.print(f"table: {out / 'comparison.json'}; plot: {plot}")
