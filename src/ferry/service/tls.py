"""TLS towards Temporal: the settings of a connection, and the certificates of the embedded server's gate.

An external Temporal cluster is reached with the options `--temporal-tls-ca`, `--temporal-tls-cert`,
`--temporal-tls-key` (and `--temporal-tls-server-name` when the certificate names another host), or
`--temporal-tls` alone for a server whose certificate a public CA signed.

The embedded dev server speaks no TLS; `ferry serve` puts a gate in front of it (temporal_gate.py) that
accepts only clients presenting a certificate of Ferry's own CA. The CA, the gate's certificate and the
client certificate are made at the first start in DATA/tls/ (the folder 0700, the keys 0600): a user who
cannot read Ferry's data folder cannot connect. The CA's key is not kept: nothing else is ever signed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from temporalio.service import TLSConfig

from ferry.core.errors import UsageError

TLS_DIR = "tls"
SERVER_NAME = "localhost"
_FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")


@dataclass(frozen=True)
class TemporalTls:
    """How a Ferry process reaches Temporal over TLS. All None and `enabled` False: plain TCP."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    enabled: bool = False

    @property
    def active(self) -> bool:
        return self.enabled or any(p is not None for p in (self.ca, self.cert, self.key))

    def config(self) -> TLSConfig | None:
        if not self.active:
            return None
        if (self.cert is None) != (self.key is None):
            raise UsageError(
                "--temporal-tls-cert and --temporal-tls-key go together",
                "give the client certificate and its private key, or neither",
            )
        return TLSConfig(
            server_root_ca_cert=_read(self.ca, "--temporal-tls-ca") if self.ca else None,
            client_cert=_read(self.cert, "--temporal-tls-cert") if self.cert else None,
            client_private_key=_read(self.key, "--temporal-tls-key") if self.key else None,
            domain=self.server_name,
        )


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read '{path}': {exc.strerror}", "check the path") from None


@dataclass(frozen=True)
class GateFiles:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def client(self) -> TemporalTls:
        return TemporalTls(
            self.path("ca.pem"), self.path("client.pem"), self.path("client.key"), SERVER_NAME, True
        )


def ensure_gate_files(data: Path) -> GateFiles:
    """The gate's CA and certificates in DATA/tls, made once (again only if one of them went missing)."""
    files = GateFiles(data / TLS_DIR)
    if all(files.path(n).is_file() for n in _FILES):
        return files
    files.folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(files.folder, 0o700)
    for name, content in _make_certificates().items():
        target = files.path(name)
        temp = target.with_name(f".{name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(temp, target)
    return files


def _make_certificates() -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=3650)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ferry"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Ferry embedded Temporal CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            names: list[x509.GeneralName] = [
                x509.DNSName(SERVER_NAME),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("ferry-client")]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    server_pem, server_key = leaf("Ferry embedded Temporal", ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_pem, client_key = leaf("Ferry", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    return {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_pem,
        "server.key": server_key,
        "client.pem": client_pem,
        "client.key": client_key,
    }
