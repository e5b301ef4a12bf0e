"""Certificates and keys of a Flower deployment: a CA, the SuperLink's TLS pair, node keys.

The layout is the one Flower's guides use, so the files drop into the documented commands::

    <dir>/ca.crt, ca.key        the certificate authority (keep ca.key off the servers)
    <dir>/server.pem, .key      the SuperLink's certificate (SAN: the given hosts, 127.0.0.1
                                and localhost) and key
    <dir>/nodes/node-<i>        a SuperNode's private key (EC P-384, OpenSSH format)
    <dir>/nodes/node-<i>.pub    its public key (OpenSSH format), for ``flwr supernode register``

The SuperLink gets ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
server.key``, each SuperNode ``--root-certificates ca.crt --auth-supernode-private-key
nodes/node-<i>``, and the operator's connection ``root-certificates = ".../ca.crt"``.

Existing files are kept (more node keys can be added later) unless ``overwrite`` is set.  The
server certificate is made again, by the same CA, when the hosts change, when it was not issued by
that CA, and when it has expired or expires within :data:`RENEW_DAYS` days (each said in
:attr:`Credentials.notes`).  An expired or soon-expiring CA is refused: making a new one means
copying ``ca.crt`` to every host again, which ``overwrite`` does on purpose.

Validity: the server certificate at most :data:`MAX_SERVER_DAYS` days (825, the longest that
browsers and common TLS stacks accept for a leaf certificate), never past its CA's; the CA at most
:data:`MAX_CA_DAYS` days (ten years; :data:`DEFAULT_CA_DAYS`, five, unless given).

Every file is written under a fresh temporary name beside its target, created exclusively and
never through a symbolic link, and renamed into place (:func:`fedrs.io.atomic_file`); private
keys are created with mode 0600 from the start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrs.errors import InputError
from fedrs.io import atomic_write_bytes

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
NODES = "nodes"
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
"""Names the SuperLink certificate is valid for when no host is given."""
MAX_SERVER_DAYS = 825
"""Longest validity of the SuperLink's certificate, in days."""
DEFAULT_CA_DAYS = 1825
"""Validity of a new CA, in days, unless given."""
MAX_CA_DAYS = 3650
"""Longest validity of the CA, in days."""
RENEW_DAYS = 30
"""A certificate expiring within this many days is not reused (the server's is made again, the
CA's refused)."""


@dataclass(frozen=True)
class Credentials:
    """Paths of the files of a deployment (see the module docstring)."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]
    notes: tuple[str, ...] = ()
    """What was made again and why (e.g. an expired server certificate), one line each."""

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
    atomic_write_bytes(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, mode=0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san_entries(hosts: Sequence[str]) -> list[Any]:
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

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return names | set(san.get_values_for_type(x509.DNSName))


def _expiry(cert: Any) -> str | None:
    """Why ``cert`` may not be reused (expired, or expiring within :data:`RENEW_DAYS`), or
    None."""
    end: dt.datetime = cert.not_valid_after_utc
    left = end - _now()
    if left <= dt.timedelta(0):
        return f"expired on {end:%Y-%m-%d}"
    if left < dt.timedelta(days=RENEW_DAYS):
        return f"expires on {end:%Y-%m-%d}, in {left.days} days"
    return None


def _server_problem(path: Path, ca_cert: Any, hosts: Sequence[str]) -> str | None:
    """Why the server certificate at ``path`` must be made again, or None to keep it."""

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return "missing or unreadable"
    if _certificate_hosts(path) != set(hosts):
        return "made for other hosts"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by this CA"
    return _expiry(cert)


def _load_ca(cert_path: Path, key_path: Path) -> tuple[Any, Any]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{cert_path.parent}: unreadable CA files ({exc})") from None
    why = _expiry(cert)
    if why is not None:
        raise InputError(
            f"{cert_path}: the CA certificate {why}; make a new CA with --overwrite (then copy "
            "the new ca.crt to every host, and the new server and node files to theirs)"
        )
    return cert, key


def _new_ca(folder: Path, days: int) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrs deployment CA")])
    now = _now()
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
    key = ec.generate_private_key(ec.SECP384R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
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


def _check_days(value: Any, name: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InputError(f"{name} must be a whole number of days from 1 to {most}, not {value!r}")
    return value


def create_credentials(
    folder: str | Path,
    *,
    nodes: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    ca_days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> Credentials:
    """Create (or complete) the CA, the SuperLink's certificate and ``nodes`` node key pairs.

    Args:
        folder: where the files go (created when missing).
        nodes: number of SuperNode key pairs (``nodes/node-1`` ... ``nodes/node-<nodes>``).
        hosts: IP addresses and DNS names the SuperLink is reached at (certificate SAN; 127.0.0.1
            and localhost are always added); the first is also its common name.
        days: validity of a new server certificate (1 to :data:`MAX_SERVER_DAYS`; never past
            the CA's).
        ca_days: validity of a new CA (1 to :data:`MAX_CA_DAYS`).
        overwrite: make every file again; otherwise files present are kept (see the module
            docstring for when the server certificate is made again).

    Returns:
        The paths of the files, and notes on what was made again.

    Raises:
        InputError: a bad count, host or validity, unreadable CA files, or a CA that has
            expired or expires within :data:`RENEW_DAYS` days.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
        raise InputError(f"nodes must be a non-negative integer, not {nodes!r}")
    _check_days(days, "days", MAX_SERVER_DAYS)
    _check_days(ca_days, "ca_days", MAX_CA_DAYS)
    hosts = tuple(h.strip() for h in hosts)
    if not hosts:
        raise InputError("at least one host name or IP address is needed for the certificate")
    # the loopback names too: the Control API and the Fleet gateway reach the SuperLink there
    hosts += tuple(h for h in DEFAULT_HOSTS if h not in hosts)
    _san_entries(hosts)
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = root / CA_CERT, root / CA_KEY
    notes: list[str] = []
    if overwrite or not (ca_cert_path.is_file() and ca_key_path.is_file()):
        ca_cert, ca_key = _new_ca(root, ca_days)
        fresh_ca = True
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
        fresh_ca = False
    stale = None
    if not (overwrite or fresh_ca):
        stale = (
            "its key is missing"
            if not (root / SERVER_KEY).is_file()
            else _server_problem(root / SERVER_CERT, ca_cert, hosts)
        )
        if stale is not None and (root / SERVER_CERT).is_file():
            notes.append(f"{root / SERVER_CERT}: {stale}; made again by the same CA")
    if overwrite or fresh_ca or stale is not None:
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
        notes=tuple(notes),
    )
