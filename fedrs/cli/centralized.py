"""Train the joint model centrally on the union of the data (the reference for federations)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedrs.cli._common import console, progress, quiet_third_parties, tracker
from fedrs.cli.simulate import experiment_overrides, print_summary
from fedrs.config import load_config
from fedrs.settings import check_out_folder, clear_run


def main(
    config: Path | None = typer.Option(None, help="Experiment TOML (default: built-in)."),
    data: Path | None = typer.Option(None, help="Archive or fedrs cache (default: synthetic)."),
    out: Path = typer.Option(Path("runs/centralized"), help="Output folder."),
    tracking_uri: str | None = typer.Option(None, help="MLflow URI (default: sqlite in --out)."),
    overwrite: bool = typer.Option(
        False, help="Replace the run in --out (its summary, model and configuration)."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: key=value (repeat)."),
    verbose: bool = typer.Option(False, help="Also show third-party logs and notices."),
) -> None:
    # heavy: mlflow, faiss, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.centralized import run_centralized

    # heavy: mlflow, flwr, faiss, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.validation import check_experiment

    quiet_third_parties(verbose)
    overrides = experiment_overrides(data=data, tracking_uri=tracking_uri, sets=set_)
    experiment = load_config(config, overrides)
    replaced = check_out_folder(out, overwrite=overwrite, resumable=False)
    check_experiment(experiment)  # the same check as a federation's, before any data
    clear_run(replaced)
    with progress() as bar:
        track = tracker(bar)

        def on_epoch(stage: int, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
            bar.console.print(
                f"stage {stage} epoch {epoch}/{epochs}: loss {metrics['loss']:.4f} "
                f"({metrics['train_s']:.1f} s)"
            )

        summary = run_centralized(experiment, out, progress=track, on_epoch=on_epoch)
    print_summary(summary, f"fedrs centralized: {out}")
    console.print(f"summary: {out / 'summary.json'}")
