"""Simulate a federation: Flower server + N clients on Ray actors, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedrs.cli._common import (
    console,
    number,
    progress,
    quiet_third_parties,
    round_printer,
    tracker,
)
from fedrs.cli._overrides import drop_replaced_options, note_line
from fedrs.cli.compare import figures
from fedrs.config import parse_override
from fedrs.reference import read_reference
from fedrs.settings import RunSettings, check_out_folder, clear_run


def experiment_overrides(
    *,
    config: Path | None = None,
    clients: int | None = None,
    partition: str | None = None,
    strategy: str | None = None,
    rounds: int | None = None,
    data: Path | None = None,
    tracking_uri: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    ray_address: str | None = None,
    update_codec: str | None = None,
    codec_step: float | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Dotted overrides of an experiment from CLI options (``None`` leaves the file's value).

    With ``config`` (the experiment file), ``--partition`` / ``--strategy`` naming another
    component than the file drops the options the file gives the replaced one and says so in
    one line on stderr (:func:`fedrs.cli._overrides.drop_replaced_options`).
    """

    named = {
        "partition.clients": clients,
        "partition.name": partition,
        "federation.strategy": strategy,
        "federation.rounds": rounds,
        "data.path": str(data.resolve()) if data is not None else None,
        "tracking.uri": tracking_uri,
        "federation.num_cpus": num_cpus,
        "federation.num_gpus": num_gpus,
        "federation.ray_address": ray_address,
        "federation.update_codec": update_codec,
        "federation.codec.step": codec_step,
    }
    overrides = {k: v for k, v in named.items() if v is not None}
    explicit = dict(parse_override(s) for s in sets or [])
    drops, notes = drop_replaced_options(config, overrides, explicit)
    for note in notes:
        note_line(note)
    return overrides | drops | explicit


def validate_components(experiment: Any) -> None:
    """Refuse a bad experiment before data is prepared or Ray starts (one InputError line).

    See :func:`fedrs.validation.check_experiment`: partition and its options, image codecs,
    update codec, strategy and its options.
    """
    # heavy: mlflow, flwr, faiss, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.validation import check_experiment

    check_experiment(experiment)


def prepare_data_with_progress(settings: Any) -> None:
    """Build the synthetic archive and the cache once, here, before any client starts."""
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.pipeline import resolve_cache

    config = settings.experiment()
    with progress() as bar:
        track = tracker(bar)

        resolve_cache(config.data, progress=track)


MAP_ROWS = tuple(
    f"map@{k}{convention}{baseline}"
    for k in (20, 10, 100)
    for convention in ("", "_min_k_r")
    for baseline in ("", "_random")
)
"""The summary's mAP keys in table order: ``map@k`` (AP over the relevant items retrieved in the
top k), ``map@k_min_k_r`` (AP divided by min(k, R)), each followed by its random-code baseline."""

_ALWAYS_SHOWN = frozenset({"map@20", "map@20_random", "map@10", "map@100"})
"""Rows shown ("-") even when the summary lacks them; the others only where present."""


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """The final figures of a run, numbers whole in an 80-column terminal.

    ``map@k`` divides AP by the relevant items retrieved in the top k, ``map@k_min_k_r`` by
    min(k, R) (R = relevant items in the database); ``_random`` rows score random codes; a
    ``95% over queries`` row under an mAP is its bootstrap interval over the queries.
    """
    table = Table(title=title)
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    for key in MAP_ROWS:
        if key in _ALWAYS_SHOWN or key in summary:
            table.add_row(key, number(summary.get(key)))
        low, high = summary.get(f"{key}_ci_low"), summary.get(f"{key}_ci_high")
        if low is not None and high is not None:  # 95 % bootstrap interval over the queries
            table.add_row(f"{key} 95% over queries", f"[{number(low)}, {number(high)}]")
    for key in ("bpp", "psnr"):
        for modality, value in (summary.get(key) or {}).items():
            table.add_row(f"{key} {modality.upper()}", number(value))
    for key in (
        "eval_queries",
        "eval_database",
        "encode_s_per_10k",
        "rounds",
        "clients_ok",
        "clients_failed",
        "bytes_up",
        "bytes_down",
        "wall_s",
    ):
        if key in summary:
            table.add_row(key, number(summary[key]))
    return table


def print_summary(summary: dict[str, Any], title: str) -> None:
    console.print(summary_table(summary, title))


REFERENCE_ROWS = ("mAP@20", "mAP@20 min(k,R)", "bpp S1", "bpp S2", "PSNR S1", "PSNR S2")
"""Figures of :func:`reference_table`: column titles of ``fedrs compare``
(:data:`fedrs.cli.compare.COLUMNS`), read from a summary by :func:`fedrs.cli.compare.figures`."""


def reference_table(summary: dict[str, Any], reference: dict[str, Any]) -> Table:
    """A federation's final figures beside the centralized reference of the same archive and
    recipe (:mod:`fedrs.reference`): the difference for mAP and PSNR, the ratio for bpp."""

    epochs = reference["figures"].get("epochs")
    table = Table(
        title="federated vs centralized"
        + (f" ({int(epochs)} epochs on the pooled data)" if epochs else ""),
        caption=f"reference: {reference['run']}",
    )
    for column in ("figure", "federated", "centralized", "gap"):
        table.add_column(column, justify="left" if column == "figure" else "right", no_wrap=True)
    federated, centralized = figures(summary), figures(reference["figures"])
    for title in REFERENCE_ROWS:
        mine, theirs = federated[title], centralized[title]
        if mine is None and theirs is None:
            continue
        gap = "-"
        if mine is not None and theirs is not None:
            if title.startswith("bpp"):
                gap = f"x{mine / theirs:.2f}" if theirs > 0 else "-"
            elif title.startswith("PSNR"):
                gap = f"{mine - theirs:+.2f} dB"
            else:
                gap = f"{mine - theirs:+.3f}"
        table.add_row(title, number(mine), number(theirs), gap)
    return table


def print_reference(summary: dict[str, Any], experiment: Any) -> None:
    """Show the centralized reference beside ``summary`` when one is cached, else say how
    to make one."""

    reference = read_reference(experiment)
    if reference is None:
        console.print(
            "no centralized reference of this archive and recipe is cached: `fedrs compare` "
            "with the same experiment writes one, shown here next time",
            highlight=False,
        )
        return
    console.print(reference_table(summary, reference))


def main(
    clients: int | None = typer.Option(None, help="Number of simulated clients."),
    partition: str | None = typer.Option(None, help="iid|dirichlet|modality|country|season."),
    strategy: str | None = typer.Option(None, help="Strategy name (see `fedrs strategies`)."),
    rounds: int | None = typer.Option(None, help="Federated rounds."),
    config: Path | None = typer.Option(None, help="Experiment TOML (default: the built-in one)."),
    data: Path | None = typer.Option(None, help="Archive or fedrs cache (default: synthetic)."),
    out: Path = typer.Option(Path("runs/simulate"), help="Output folder."),
    tracking_uri: str | None = typer.Option(None, help="MLflow URI (default: sqlite in --out)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    overwrite: bool = typer.Option(
        False, help="Replace the run in --out (its summary, model, checkpoints and history)."
    ),
    num_cpus: float | None = typer.Option(None, help="CPUs per client (fractions allowed)."),
    num_gpus: float | None = typer.Option(None, help="GPUs per client (fractions allowed)."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address ('auto' to join)."),
    update_codec: str | None = typer.Option(
        None, help="How updates travel: none (plain arrays) | entropy (quantised, entropy-coded)."
    ),
    codec_step: float | None = typer.Option(
        None, help="Entropy update codec: quantisation step as a fraction of each update's RMS."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: key=value (repeat)."),
    verbose: bool = typer.Option(False, help="Also show Flower's and Ray's logs."),
) -> None:
    # heavy: ray, flwr, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.server.simulation import check_resources, run_simulation

    quiet_third_parties(verbose)
    overrides = experiment_overrides(
        config=config,
        clients=clients,
        partition=partition,
        strategy=strategy,
        rounds=rounds,
        data=data,
        tracking_uri=tracking_uri,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        ray_address=ray_address,
        update_codec=update_codec,
        codec_step=codec_step,
        sets=set_,
    )
    settings = RunSettings(
        config_path=str(config.resolve()) if config else None,
        overrides=overrides,
        out=str(out.resolve()),
        resume=resume,
    )
    experiment = settings.experiment()
    replaced = check_out_folder(out, resume=resume, overwrite=overwrite)
    fed = experiment.federation
    check_resources(fed.num_cpus, fed.num_gpus, fed.ray_address)
    validate_components(experiment)
    prepare_data_with_progress(settings)
    clear_run(replaced)  # every check has passed
    console.print(
        f"simulating [bold]{experiment.partition.clients}[/] clients "
        f"({experiment.partition.name} partition, {fed.strategy}, "
        f"{fed.build_update_codec(experiment.seed).describe()} updates) for {fed.rounds} rounds",
        soft_wrap=True,
    )
    with progress() as bar:
        summary = run_simulation(
            settings,
            on_round=round_printer(bar, fed.rounds),
            verbose=verbose,
            echo=lambda line: bar.console.print(line, markup=False, highlight=False),
        )
    print_summary(summary, f"fedrs simulate: {out}")
    print_reference(summary, experiment)
    console.print(f"summary: {out / 'summary.json'}; MLflow: {summary['tracking_uri']}")
