"""Create the TLS certificates and SuperNode keys of a deployment.

Writes a CA (ca.crt, ca.key), the SuperLink's certificate for the given hosts (server.pem,
server.key) and one EC P-384 key pair per SuperNode (nodes/node-<i>, nodes/node-<i>.pub, the
format `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read).
Files already present are kept (more nodes can be added later) unless --overwrite is given; a
server certificate that has expired, expires within 30 days or names other hosts is made again by
the same CA (said in one line), and an expired or soon-expiring CA is refused (--overwrite makes a
new one).
Copy ca.crt to every host, server.* to the SuperLink host, nodes/node-<i> to archive host i;
keep ca.key somewhere safe.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fedrs.cli._common import console
from fedrs.deploy.certs import DEFAULT_HOSTS, create_credentials


def main(
    out: Path = typer.Option(..., "--out", help="Folder for the files."),
    nodes: int = typer.Option(3, "--nodes", help="Number of SuperNode key pairs."),
    host: list[str] | None = typer.Option(
        None,
        "--host",
        help="IP address or DNS name of the SuperLink (repeat; default: 127.0.0.1, localhost).",
    ),
    days: int = typer.Option(
        365, "--days", help="Validity of a new server certificate in days (at most 825)."
    ),
    ca_days: int = typer.Option(
        1825, "--ca-days", help="Validity of a new CA in days (at most 3650)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Make every file again."),
) -> None:
    hosts = tuple(host) if host else DEFAULT_HOSTS
    made = create_credentials(
        out, nodes=nodes, hosts=hosts, days=days, ca_days=ca_days, overwrite=overwrite
    )
    for note in made.notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print(f"CA: {made.ca_cert} (key {made.ca_key}: keep it off the servers)")
    console.print(f"SuperLink: {made.server_cert}, {made.server_key}")
    for key in made.node_keys:
        console.print(f"SuperNode: {key} (public key {key.name}.pub)")
