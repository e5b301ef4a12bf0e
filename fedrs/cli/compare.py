"""Compare centralized training with federations (FedAvg, modality-aware) on the same data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from fedrs.cli._common import console, number, progress, quiet_third_parties, round_printer

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
    "random codes, same queries and database."
)
"""The table's caption: what the mAP columns mean."""


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


def comparison_table(rows: dict[str, dict[str, Any]], title: str) -> Table:
    """One row a run, one column a figure of :data:`COLUMNS`; fits an 80-column terminal.

    Numbers never wrap (:func:`fedrs.cli._common.number` keeps them short), headers stack on
    up to three lines, columns are one space apart and a long run name folds: no cell is cut
    short. The caption (:data:`CONVENTIONS`) says what the mAP columns mean.
    """
    table = Table(
        title=title,
        caption=CONVENTIONS,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0),
    )
    table.add_column("run", overflow="fold")
    for header, _ in COLUMNS:
        table.add_column(_header(header), justify="right", no_wrap=True)
    for name, summary in rows.items():
        table.add_row(name, *(number(_value(summary, key)) for _, key in COLUMNS))
    return table


def centralized_equivalent(config: Any) -> dict[str, Any]:
    """Overrides giving a centralized run the federation's total local epochs per stage."""
    fed = config.federation
    stage1 = min(fed.stage1_rounds, fed.rounds)
    return {
        "train.stage1_epochs": stage1 * fed.local_epochs,
        "train.stage2_epochs": (fed.rounds - stage1) * fed.local_epochs,
    }


def _plot(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (("mAP@20", "map@20"), ("bpp", "bpp"), ("PSNR (dB)", "psnr"))
    for ax, (title, key) in zip(axes, panels, strict=True):
        if key == "map@20":
            # both conventions (retrieved: AP / R_k; min(k,R): AP / min(20, R)), each with its
            # random-code baseline as a black tick on its bar
            width = 0.4
            for i, (label, convention) in enumerate((("mAP@20", ""), ("min(k,R)", "_min_k_r"))):
                xs = [j + (i - 0.5) * width for j in range(len(names))]
                figures = [_value(rows[n], f"map@20{convention}") or 0 for n in names]
                ax.bar(xs, figures, width, label=label)
                random = [_value(rows[n], f"map@20{convention}_random") for n in names]
                ax.hlines(
                    [r if r is not None else float("nan") for r in random],
                    [x - width / 2 for x in xs],
                    [x + width / 2 for x in xs],
                    colors="k",
                    linestyles="--",
                    label="random" if i == 0 else None,
                )
            ax.set_xticks(range(len(names)), names)
            ax.legend()
        else:
            width = 0.4
            for i, modality in enumerate(("s1", "s2")):
                xs = [j + (i - 0.5) * width for j in range(len(names))]
                ax.bar(
                    xs,
                    [_value(rows[n], (key, modality)) or 0 for n in names],
                    width,
                    label=modality.upper(),
                )
            ax.set_xticks(range(len(names)), names)
            ax.legend()
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(
    config: Path | None = typer.Option(None, help="Experiment TOML (default: built-in)."),
    out: Path = typer.Option(Path("runs/compare"), help="Output folder (one sub-folder a run)."),
    strategies: str = typer.Option("fedavg,modality-aware", help="Federated strategies."),
    data: Path | None = typer.Option(None, help="Archive or fedrs cache (default: synthetic)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: key=value (repeat)."),
    verbose: bool = typer.Option(False, help="Also show Flower's and Ray's logs."),
) -> None:
    """Runs (or reads, where ``<out>/<run>/summary.json`` exists) every run, then tabulates."""
    from fedrs.centralized import run_centralized
    from fedrs.cli.simulate import (
        experiment_overrides,
        prepare_data_with_progress,
        validate_components,
    )
    from fedrs.config import load_config
    from fedrs.server.simulation import run_simulation
    from fedrs.settings import RunSettings
    from fedrs.tracking import Tracker, default_tracking_uri

    quiet_third_parties(verbose)
    out = out.resolve()
    overrides = experiment_overrides(data=data, sets=set_)
    # every run of the comparison logs to one MLflow store
    overrides.setdefault("tracking.uri", default_tracking_uri(out))
    base = load_config(config, overrides)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    runs = [load_config(config, overrides | {"federation.strategy": name}) for name in names]
    for experiment in runs or [base]:  # the experiments that will run (no strategy: centralized)
        validate_components(experiment)
    settings = RunSettings(str(config.resolve()) if config else None, overrides, str(out))
    prepare_data_with_progress(settings)
    rows: dict[str, dict[str, Any]] = {}
    central = out / "centralized"
    if (central / "summary.json").is_file():
        console.print(f"reading {central / 'summary.json'}")
        rows["centralized"] = json.loads((central / "summary.json").read_text())
    else:
        console.print("[bold]centralized[/] run")
        central_config = load_config(config, overrides | centralized_equivalent(base))
        rows["centralized"] = run_centralized(central_config, central)
    for name in names:
        folder = out / name
        if (folder / "summary.json").is_file():
            console.print(f"reading {folder / 'summary.json'}")
            rows[name] = json.loads((folder / "summary.json").read_text())
            continue
        console.print(f"[bold]{name}[/] federation")
        run_settings = RunSettings(
            settings.config_path,
            overrides | {"federation.strategy": name},
            str(folder),
        )
        rounds = run_settings.experiment().federation.rounds
        with progress() as bar:
            rows[name] = run_simulation(
                run_settings,
                on_round=round_printer(bar, rounds),
                verbose=verbose,
                echo=lambda line, bar=bar: bar.console.print(line, markup=False, highlight=False),
            )

    console.print(
        comparison_table(rows, f"fedrs compare: {base.name} ({base.partition.name} partition)")
    )
    result = {
        name: {title: _value(summary, key) for title, key in COLUMNS}
        for name, summary in rows.items()
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot = _plot(rows, out / "comparison.png")
    tracker = Tracker(
        str(base.tracking.uri),
        experiment=base.tracking.experiment,
        run_name=f"{base.name}-compare",
        artifact_root=out / "mlartifacts",
    )
    tracker.log_params(base.to_dict() | {"mode": "compare", "strategies": ",".join(names)})
    for name, figures in result.items():
        safe = {f"{name}/{_metric_name(k)}": v for k, v in figures.items() if v is not None}
        tracker.log_metrics(safe, step=0)
    tracker.log_artifact(out / "comparison.json")
    tracker.log_artifact(plot)
    tracker.end()
    console.print(f"table: {out / 'comparison.json'}; plot: {plot}")
