"""Certificates and keys of a Flower deployment: a CA, the SuperLink's TLS pair, node keys.

The layout is the one Flower's guides use, so the files drop into the documented commands::

    <dir>/ca.crt, ca.key        the certificate authority (keep ca.key off the servers)
    <dir>/server.pem, .key      the SuperLink's certificate (SAN: the given hosts) and key
    <dir>/nodes/node-<i>        a SuperNode's private key (EC P-384, OpenSSH format)
    <dir>/nodes/node-<i>.pub    its public key (OpenSSH format), for ``flwr supernode register``

The SuperLink gets ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
server.key``, each SuperNode ``--root-certificates ca.crt --auth-supernode-private-key
nodes/node-<i>``, and the operator's connection ``root-certificates = ".../ca.crt"``.

Existing files are kept (more node keys can be added later; the server certificate is made
again, by the same CA, when the hosts change) unless ``overwrite`` is set.  Private keys are
written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrs.errors import InputError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
NODES = "nodes"
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
"""Names the SuperLink certificate is valid for when no host is given."""


@dataclass(frozen=True)
class Credentials:
    """Paths of the files of a deployment (see the module docstring)."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]

    def node_public_key(self, index: int) -> Path:
        """The public key (OpenSSH) of node ``index`` (from 0)."""
        return public_key_path(self.node_keys[index])


def public_key_path(private_key: Path) -> Path:
    """``nodes/node-1`` -> ``nodes/node-1.pub``."""
    return private_key.with_name(private_key.name + ".pub")


def node_key_path(folder: Path, index: int) -> Path:
    """Private key file of node ``index`` (from 0): ``<folder>/nodes/node-<index + 1>``."""
    return folder / NODES / f"node-{index + 1}"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _san_entries(hosts: Sequence[str]) -> list[Any]:
    from cryptography import x509

    entries: list[Any] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise InputError("certificate host names must not be empty")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if any(c.isspace() or c in "/:@" for c in host):
                raise InputError(f"{host!r} is neither an IP address nor a DNS name") from None
            entries.append(x509.DNSName(host))
    return entries


def _certificate_hosts(path: Path) -> set[str] | None:
    """The IP addresses and DNS names a certificate is valid for, or None when unreadable."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return names | set(san.get_values_for_type(x509.DNSName))


def _load_ca(cert_path: Path, key_path: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{cert_path.parent}: unreadable CA files ({exc})") from None
    return cert, key


def _new_ca(folder: Path, days: int) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrs deployment CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(
        folder / CA_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _new_server_pair(
    folder: Path, ca_cert: Any, ca_key: Any, hosts: Sequence[str], days: int
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(
        folder / SERVER_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(folder / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def create_node_key(path: Path) -> Path:
    """Write an EC P-384 key pair: ``path`` (OpenSSH private key) and ``path.pub``.

    This is what ``flower-supernode --auth-supernode-private-key`` reads and what ``flwr
    supernode register`` accepts (the same as ``ssh-keygen -t ecdsa -b 384 -N ""``).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_public(public_key_path(path), public + b"\n")
    return path


def create_credentials(
    folder: str | Path,
    *,
    nodes: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    overwrite: bool = False,
) -> Credentials:
    """Create (or complete) the CA, the SuperLink's certificate and ``nodes`` node key pairs.

    Args:
        folder: where the files go (created when missing).
        nodes: number of SuperNode key pairs (``nodes/node-1`` ... ``nodes/node-<nodes>``).
        hosts: IP addresses and DNS names the SuperLink is reached at (certificate SAN); the
            first is also its common name.
        days: validity of the new certificates.
        overwrite: make every file again; otherwise files present are kept.

    Returns:
        The paths of the files.

    Raises:
        InputError: a bad count, host or validity, or unreadable CA files.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
        raise InputError(f"nodes must be a non-negative integer, not {nodes!r}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InputError(f"days must be a positive integer, not {days!r}")
    hosts = tuple(h.strip() for h in hosts)
    if not hosts:
        raise InputError("at least one host name or IP address is needed for the certificate")
    _san_entries(hosts)
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = root / CA_CERT, root / CA_KEY
    if overwrite or not (ca_cert_path.is_file() and ca_key_path.is_file()):
        ca_cert, ca_key = _new_ca(root, days)
        fresh_ca = True
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
        fresh_ca = False
    server_stale = not (root / SERVER_KEY).is_file() or _certificate_hosts(
        root / SERVER_CERT
    ) != set(hosts)
    if overwrite or fresh_ca or server_stale:
        _new_server_pair(root, ca_cert, ca_key, hosts, days)
    keys = []
    for index in range(nodes):
        path = node_key_path(root, index)
        if overwrite or not (path.is_file() and public_key_path(path).is_file()):
            create_node_key(path)
        keys.append(path)
    return Credentials(
        folder=root,
        ca_cert=ca_cert_path,
        ca_key=ca_key_path,
        server_cert=root / SERVER_CERT,
        server_key=root / SERVER_KEY,
        node_keys=tuple(keys),
    )
