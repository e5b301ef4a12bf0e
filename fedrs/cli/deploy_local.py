"""Run the federation as real Flower processes on this machine: a SuperLink and N SuperNodes.

Starts `flower-superlink` and one `flower-supernode` per archive on 127.0.0.1 (each node with its
own archive: synthetic ones, built once and cached, unless --data is given), submits the app with
`flwr run`, follows the rounds and checks that the run completed.  Writes <out>/summary.json and the
MLflow store as `fedrs simulate` does, with the processes' logs under <out>/logs.  As across
machines, the SuperNodes reach the SuperLink through a Fleet gateway on a port of its own (the Fleet
API only; the SuperLink's address, with the Control API, is for the operator).  By default every
connection is encrypted and only the SuperNodes whose keys were registered may join (certificates
and keys in <out>/certs); --no-tls turns both off.  Every process started is stopped at the end,
also on failure or Ctrl-C.  The default experiment is the app's experiments/smoke.toml (small and
quick).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from fedrs.cli._common import console, progress, quiet_third_parties, round_printer, tracker
from fedrs.cli.simulate import experiment_overrides, print_summary, validate_components
from fedrs.errors import InputError
from fedrs.settings import RunSettings, check_out_folder, clear_run


def main(
    supernodes: int = typer.Option(3, help="Number of SuperNodes (one archive each)."),
    tls: bool = typer.Option(
        True, "--tls/--no-tls", help="TLS on every connection, with SuperNode auth."
    ),
    node_auth: bool = typer.Option(True, help="With --tls: only registered SuperNodes join."),
    rounds: int | None = typer.Option(None, help="Federated rounds."),
    min_clients: int | None = typer.Option(None, help="Fewest successful clients per round."),
    config: Path | None = typer.Option(
        None, help="Experiment TOML (default: experiments/smoke.toml of the app)."
    ),
    data: list[Path] | None = typer.Option(
        None, help="Archive or fedrs cache: one for every node, or repeat once per node."
    ),
    out: Path = typer.Option(Path("runs/deploy-local"), help="Output folder."),
    app: Path | None = typer.Option(None, help="Flower app folder for `flwr run`."),
    timeout: float = typer.Option(1800.0, help="Seconds the run may take once submitted."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    overwrite: bool = typer.Option(
        False, help="Replace the run in --out (its summary, model, checkpoints and history)."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: key=value (repeat)."),
    verbose: bool = typer.Option(False, help="Also show Flower's logs (the SuperLink's)."),
) -> None:
    # heavy: flwr, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.deploy.run import (
        check_app,
        default_app,
        prepare_node_data,
        run_local_deployment,
    )

    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.pipeline import resolve_cache

    quiet_third_parties(verbose)
    if supernodes < 1:
        raise InputError(f"--supernodes must be at least 1, not {supernodes}")
    if data and len(data) not in (1, supernodes):
        raise InputError(f"--data: give one archive for all nodes or one per node ({supernodes})")
    if timeout <= 0:
        raise InputError(f"--timeout must be positive, not {timeout:g}")
    app_dir = check_app(app if app is not None else default_app())
    if config is None and (app_dir / "experiments" / "smoke.toml").is_file():
        config = app_dir / "experiments" / "smoke.toml"
    overrides = experiment_overrides(rounds=rounds, data=data[0] if data else None, sets=set_)
    if min_clients is not None:
        overrides["federation.min_clients"] = min_clients
    out = out.resolve()
    settings = RunSettings(
        config_path=str(config.resolve()) if config else None,
        overrides=overrides,
        out=str(out),
        resume=resume,
    )
    experiment = settings.experiment()
    fed = experiment.federation
    if fed.min_clients > supernodes:
        raise InputError(
            f"federation.min_clients is {fed.min_clients} but only {supernodes} SuperNodes "
            "would run; lower it or add --supernodes"
        )
    replaced = check_out_folder(out, resume=resume, overwrite=overwrite)
    # heavy: flwr, imported when the command runs
    import flwr.serverapp  # noqa: F401  (sets up Flower's logger, quietened below)

    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    flower_log.setLevel(logging.ERROR)  # the strategy built here to check it warns of its own
    try:
        validate_components(experiment)
    finally:
        flower_log.setLevel(level)

    with progress() as bar:
        track = tracker(bar)
        resolve_cache(experiment.data, progress=track)
        nodes = prepare_node_data(experiment, supernodes, data or (), progress=track)
    clear_run(replaced)  # every check has passed
    for node in nodes:
        console.print(
            f"{node.name}: {node.data_path} ({'+'.join(m.upper() for m in node.modalities)})"
        )
    security = "TLS, registered SuperNodes only" if tls and node_auth else "TLS" if tls else ""
    console.print(
        f"deploying [bold]{supernodes}[/] SuperNodes and a SuperLink on 127.0.0.1"
        f"{f' ({security})' if security else ' (no TLS)'}: {fed.strategy}, {fed.rounds} rounds"
        f"{', resuming' if resume else ''}; logs in {out / 'logs'}"
    )
    with progress() as bar:
        on_round = round_printer(bar, fed.rounds)
        summary = run_local_deployment(
            settings,
            nodes,
            app=app_dir,
            tls=tls,
            node_auth=node_auth if tls else False,
            timeout=timeout,
            on_round=on_round,
            on_start=lambda d: bar.console.print(
                f"SuperLink at {d.address} (Control API); Fleet gateway at {d.fleet_address}; "
                f"{len(nodes)} SuperNodes online"
            ),
        )
    print_summary(summary, f"fedrs deploy-local: {out}")
    console.print(
        f"run {summary['run_id']}; summary: {out / 'summary.json'}; "
        f"MLflow: {summary['tracking_uri']}"
    )
