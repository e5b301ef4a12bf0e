"""The Fleet gateway (fedrs.deploy.gateway) against a stand-in SuperLink: the Fleet API's calls
are forwarded whole, over TLS on both sides; the Control and Runtime APIs are not reachable
through it.  (tests/test_deploy.py runs real SuperNodes through it.)"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedrs.cli import main as cli
from fedrs.deploy.certs import Credentials, create_credentials
from fedrs.deploy.gateway import FleetGateway, parse_address
from fedrs.errors import InputError

BIG = bytes(range(256)) * 1200  # a reply larger than one forwarded chunk


class _StandIn(BaseHTTPRequestHandler):
    """Answers every request with what it received (JSON), or BIG for pull-object."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        entry = {"path": self.path, "headers": dict(self.headers.items()), "body": body.hex()}
        self.server.seen.append(entry)  # type: ignore[attr-defined]
        reply = BIG if self.path.endswith("/pull-object") else json.dumps(entry).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return create_credentials(tmp_path_factory.mktemp("certs"), nodes=0)


@pytest.fixture
def superlink(certs: Credentials) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def gateway(certs: Credentials, superlink: ThreadingHTTPServer) -> Iterator[FleetGateway]:
    upstream = ("127.0.0.1", int(superlink.server_address[1]))
    with FleetGateway(
        ("127.0.0.1", 0),
        upstream,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
        cafile=certs.ca_cert,
    ) as running:
        yield running


def _client(certs: Credentials, gateway: FleetGateway) -> httpx.Client:
    host, port = gateway.address
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    return httpx.Client(base_url=f"https://{host}:{port}", verify=context, timeout=30)


def test_fleet_calls_are_forwarded_whole(
    certs: Credentials, superlink: ThreadingHTTPServer, gateway: FleetGateway
) -> None:
    signed = {"flwr-public-key": "a2V5", "flwr-signature": "c2ln", "flwr-timestamp": "now"}
    with _client(certs, gateway) as client:  # one kept-alive connection, as SuperNodes use
        for call in ("register-node", "send-node-heartbeat", "pull-messages"):
            reply = client.post(f"/v1/fleet/{call}", content=b"\x00\x01proto", headers=signed)
            assert reply.status_code == 200
            echoed = reply.json()
            assert echoed["path"] == f"/v1/fleet/{call}"
            assert echoed["body"] == b"\x00\x01proto".hex()
            assert {k: echoed["headers"][k] for k in signed} == signed  # node auth passes on
        big = client.post("/v1/fleet/pull-object", content=b"x" * 300_000)
        assert big.status_code == 200 and big.content == BIG
    seen = superlink.seen  # type: ignore[attr-defined]
    assert [s["path"] for s in seen][-1] == "/v1/fleet/pull-object"
    assert len(bytes.fromhex(seen[-1]["body"])) == 300_000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/control/list-nodes"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/runtime/acquire-task"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/../control/list-nodes"),
        ("POST", "/v1/fleet/%2e%2e/control/list-nodes"),
        ("POST", "/v1/fleet/pull-messages?next=/v1/control/list-nodes"),
        ("POST", "/docs"),
        ("POST", "/"),
    ],
)
def test_nothing_but_the_fleet_api_is_reachable(
    certs: Credentials,
    superlink: ThreadingHTTPServer,
    gateway: FleetGateway,
    method: str,
    path: str,
) -> None:
    host, port = gateway.address
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    connection.request(method, path, body=b"\x00" if method == "POST" else None)
    reply = connection.getresponse()
    assert reply.status == 404 and b"not a Fleet API call" in reply.read()
    connection.close()
    assert superlink.seen == []  # type: ignore[attr-defined]


def test_plain_http_and_an_unreachable_superlink(certs: Credentials) -> None:
    host, port = "127.0.0.1", 9  # nothing listens on the discard port
    with FleetGateway(("127.0.0.1", 0), (host, port), insecure=True) as gateway:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.address[1]}") as client:
            reply = client.post("/v1/fleet/pull-messages", content=b"x")
        assert reply.status_code == 502 and b"unreachable" in reply.content
        with pytest.raises(httpx.HTTPError):  # a TLS client gets no TLS
            _client(certs, gateway).post("/v1/fleet/pull-messages", content=b"x")


def test_gateway_refuses_bad_setups(
    certs: Credentials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InputError, match="loopback address"):
        FleetGateway(("127.0.0.1", 0), ("10.0.0.5", 8000), insecure=True)
    with pytest.raises(InputError, match="--ssl-keyfile, --ssl-ca-certfile"):
        FleetGateway(("127.0.0.1", 0), ("127.0.0.1", 8000), certfile=certs.server_cert)
    assert parse_address("[::1]:8000", "x") == ("::1", 8000)
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_address("0.0.0.0", "--listen")
    args = ["fleet-gateway", "--listen", "127.0.0.1:9092", "--superlink", "192.168.1.1:8000"]
    assert cli([*args, "--insecure"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must listen on a loopback address" in err[0]
