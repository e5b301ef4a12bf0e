"""The Fleet gateway: the only door of a SuperLink that is open to the network.

Flower 1.42's ``flower-superlink`` serves three APIs on its one ``--host``/``--port`` address:
the Fleet API (``/v1/fleet/...``, what SuperNodes call), the Control API (``/v1/control/...``,
the operator's ``flwr`` commands: register node keys, submit and stop runs) and the Runtime API
(``/v1/runtime/...``, its ServerApp processes).  Open-source Flower authenticates no caller of
the Control API, so whoever reaches that address can register a key of their own and submit an
app, whose ServerApp then runs on the server host and whose ClientApp runs on every SuperNode.
(``--fleet-api-address`` and ``--control-api-address`` are deprecated in 1.42 and move none of
the HTTP APIs.)

So the SuperLink listens on the loopback address only, and the gateway listens on the network
and forwards to it exactly what SuperNodes send, ``POST /v1/fleet/<call>``; every other request
(another path or method, a query string, a dot segment) is answered ``404`` without reaching the
SuperLink.  The operator reaches the Control API on the server host itself, through an SSH
tunnel or a VPN.

TLS: the gateway presents the SuperLink's certificate to SuperNodes and connects to the
SuperLink over TLS, verifying it against the deployment's CA (the certificates of
:mod:`fedrs.deploy.certs` are valid for 127.0.0.1 and localhost as well as the public names).
Node authentication is untouched: a SuperNode's signed headers travel to the SuperLink as they
came.  One connection to the SuperLink per forwarded request; request and response bodies are
streamed, a request body being limited to :data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fedrs.errors import InputError

__all__ = [
    "FLEET_PATH",
    "MAX_BODY",
    "FleetGateway",
    "parse_address",
]

FLEET_PATH = re.compile(r"/v1/fleet/[a-z][a-z0-9-]*")
"""The request paths forwarded (the Fleet API's calls); nothing else is."""
MAX_BODY = 1 << 30
"""Largest request body forwarded, in bytes (a SuperNode's pushed objects are far smaller)."""
CHUNK = 1 << 16
REFUSED_BODY = 1 << 20
"""Largest body of a refused request that is read (and dropped) to keep its connection."""
IDLE_S = 120.0
"""Seconds an idle SuperNode connection stays open."""
UPSTREAM_TIMEOUT_S = 300.0
"""Seconds a forwarded call may wait on the SuperLink."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "server",
        "date",
        "expect",
    }
)

log = logging.getLogger("fedrs.gateway")


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``.

    Raises:
        InputError: no port, or a port outside 1-65535 (naming ``what``).
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Upstream:
    host: str
    port: int
    context: ssl.SSLContext | None

    def connect(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=UPSTREAM_TIMEOUT_S)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=UPSTREAM_TIMEOUT_S, context=self.context
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Handler(BaseHTTPRequestHandler):
    """One SuperNode connection: each request is forwarded, or refused."""

    protocol_version = "HTTP/1.1"
    server_version = "fedrs-fleet-gateway"
    sys_version = ""
    timeout = IDLE_S
    server: _Server

    def do_POST(self) -> None:
        if not FLEET_PATH.fullmatch(self.path):
            self._refuse(404, "not a Fleet API call")
            return
        if "transfer-encoding" in self.headers or "content-length" not in self.headers:
            self._refuse(411, "a Content-Length is required")
            return
        try:
            length = int(self.headers["content-length"])
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._refuse(413, f"bodies of 0 to {MAX_BODY} bytes are forwarded")
            return
        self._forward(length)

    def do_GET(self) -> None:
        self._refuse(404, "not a Fleet API call")

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _refuse(self, status: int, why: str) -> None:
        log.warning(
            "refused %s %r from %s: %s", self.command, self.path[:200], self.client_address[0], why
        )
        if status != 502:  # a refused request's body is read and dropped (a small one only)
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if 0 < length <= REFUSED_BODY:
                self.rfile.read(length)
            elif length or "transfer-encoding" in self.headers:
                self.close_connection = True
        body = f"{status} {why}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, length: int) -> None:
        upstream = self.server.upstream
        connection = upstream.connect()
        try:
            try:
                connection.putrequest("POST", self.path, skip_host=True, skip_accept_encoding=True)
                connection.putheader("Host", upstream.authority)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        connection.putheader(key, value)
                connection.putheader("Content-Length", str(length))
                connection.putheader("Connection", "close")
                connection.endheaders()
                left = length
                while left:
                    chunk = self.rfile.read(min(CHUNK, left))
                    if not chunk:
                        self.close_connection = True
                        return  # the SuperNode went away mid-request
                    connection.send(chunk)
                    left -= len(chunk)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                log.error("the SuperLink at %s is unreachable: %s", upstream.authority, exc)
                self._refuse(502, "the SuperLink is unreachable")
                return
            self._relay(response)
        finally:
            connection.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        size = response.getheader("Content-Length")
        if size is None or not size.isdigit():
            body = response.read()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Content-Length", size)
        self.end_headers()
        left = int(size)
        while left:
            chunk = response.read(min(CHUNK, left))
            if not chunk:
                self.close_connection = True  # the SuperLink cut the reply short
                return
            self.wfile.write(chunk)
            left -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: _Upstream,
        context: ssl.SSLContext | None,
    ) -> None:
        self.upstream = upstream
        self.context = context
        if ":" in listen[0]:
            self.address_family = socket.AF_INET6
        super().__init__(listen, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake happens here, in the connection's own thread."""
        if self.context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(30.0)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            self.shutdown_request(wrapped)  # the plain socket was handed over to it


class FleetGateway:
    """Forward the Fleet API of a SuperLink on the loopback address to a network address.

    Args:
        listen: ``(host, port)`` to listen on (port 0: a free one, see :attr:`address`).
        superlink: ``(host, port)`` of the SuperLink, a loopback address.
        certfile: the certificate presented to SuperNodes (the SuperLink's ``server.pem``).
        keyfile: its private key.
        cafile: the CA that issued the SuperLink's certificate (verifies the SuperLink).
        insecure: no TLS on either side (all three files then unused).

    Raises:
        InputError: a SuperLink address that is not a loopback one, missing TLS files, or an
            address that cannot be listened on.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        superlink: tuple[str, int],
        *,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        cafile: str | Path | None = None,
        insecure: bool = False,
    ) -> None:
        if not _is_loopback(superlink[0]):
            raise InputError(
                f"--superlink {superlink[0]}: the SuperLink must listen on a loopback address "
                "(127.0.0.1, ::1 or localhost); its Control API must not be reachable from the "
                "network"
            )
        server_context = upstream_context = None
        if not insecure:
            files = {
                "--ssl-certfile": certfile,
                "--ssl-keyfile": keyfile,
                "--ssl-ca-certfile": cafile,
            }
            missing = [flag for flag, path in files.items() if path is None]
            if missing:
                raise InputError(f"TLS needs {', '.join(missing)} (or --insecure)")
            try:
                server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                server_context.minimum_version = ssl.TLSVersion.TLSv1_2
                server_context.load_cert_chain(str(certfile), str(keyfile))
                upstream_context = ssl.create_default_context(cafile=str(cafile))
                upstream_context.minimum_version = ssl.TLSVersion.TLSv1_2
            except (OSError, ssl.SSLError) as exc:
                raise InputError(f"unusable TLS files: {exc}") from None
        upstream = _Upstream(superlink[0], superlink[1], upstream_context)
        try:
            self._server = _Server(listen, upstream, server_context)
        except OSError as exc:
            raise InputError(f"cannot listen on {listen[0]}:{listen[1]}: {exc}") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the gateway listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Serve until :meth:`close` (from another thread) or a signal."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> FleetGateway:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10.0)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FleetGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
