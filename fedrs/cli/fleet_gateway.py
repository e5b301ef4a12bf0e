"""Open a SuperLink's Fleet API, and nothing else, to the network.

`flower-superlink` serves its Fleet API (SuperNodes), its Control API (the operator's `flwr`
commands, which authenticate no one in open-source Flower) and its Runtime API on one address.
Run the SuperLink on 127.0.0.1 and this gateway on the network address: it forwards the
SuperNodes' calls (POST /v1/fleet/...) to the SuperLink and answers 404 to anything else, so
that the Control API stays on the server host (reach it through an SSH tunnel or a VPN).  With
TLS (the default) it presents the SuperLink's certificate and verifies the SuperLink against the
CA; node authentication passes through unchanged.  Runs until stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import typer

from fedrs.cli._common import console
from fedrs.deploy.gateway import FleetGateway, parse_address


def main(
    listen: str = typer.Option(
        "0.0.0.0:9092", help="Address the SuperNodes connect to (HOST:PORT)."
    ),
    superlink: str = typer.Option(
        "127.0.0.1:8000", help="The SuperLink's --host:--port, a loopback address."
    ),
    ssl_certfile: Path | None = typer.Option(
        None, "--ssl-certfile", help="The SuperLink's certificate (server.pem)."
    ),
    ssl_keyfile: Path | None = typer.Option(
        None, "--ssl-keyfile", help="Its private key (server.key)."
    ),
    ssl_ca_certfile: Path | None = typer.Option(
        None, "--ssl-ca-certfile", help="The CA certificate (ca.crt) that verifies the SuperLink."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="No TLS on either side (the SuperLink runs --insecure)."
    ),
    verbose: bool = typer.Option(False, help="Also log every forwarded call."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    gateway = FleetGateway(
        parse_address(listen, "--listen"),
        parse_address(superlink, "--superlink"),
        certfile=ssl_certfile,
        keyfile=ssl_keyfile,
        cafile=ssl_ca_certfile,
        insecure=insecure,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = gateway.address
    console.print(
        f"Fleet gateway on {host}:{port} ({'no TLS' if insecure else 'TLS'}) -> SuperLink "
        f"{superlink}; only POST /v1/fleet/* is forwarded",
        highlight=False,
        soft_wrap=True,
    )
    try:
        gateway.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.close()
