"""A local certificate authority for the development stack.

The dev IAM must be served over HTTPS (HTCondor's SciTokens validation and XRootD only accept HTTPS
issuers), and every client must trust it *explicitly* through this CA, never by turning verification
off. The CA and one server certificate are generated once per state directory and reused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class DevPKI:
    """Paths of the dev CA certificate and of the server certificate/key it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def trust(ca_cert: Path) -> ssl.SSLContext:
    """A TLS client context that trusts the dev CA explicitly (never verification turned off)."""
    return ssl.create_default_context(cafile=str(ca_cert))


SYSTEM_CA_DIR = Path("/usr/local/share/ca-certificates")


def trust_system_wide(ca_cert: Path, name: str) -> Path:
    """Install a CA in the system trust store (needs root); undo with :func:`untrust_system_wide`.

    Only for servers that offer no CA setting of their own: scitokens-cpp inside HTCondor and XRootD
    fetches issuer keys with the system store."""
    import subprocess

    target = SYSTEM_CA_DIR / f"{name}.crt"
    SYSTEM_CA_DIR.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(ca_cert).read_bytes())
    subprocess.run(["update-ca-certificates"], check=True, capture_output=True)
    return target


def untrust_system_wide(installed: Path) -> None:
    import subprocess

    installed.unlink(missing_ok=True)
    subprocess.run(["update-ca-certificates", "--fresh"], check=True, capture_output=True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _server_names() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    # HTCondor checks certificates against the host's own name, not the address it dialled.
    for host in {socket.gethostname(), socket.getfqdn()}:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    return names


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def ensure_dev_pki(state_dir: Path) -> DevPKI:
    """Create (once) a CA and a loopback server certificate under ``state_dir/pki``."""
    pki_dir = Path(state_dir) / "pki"
    pki = DevPKI(pki_dir / "ca.pem", pki_dir / "server.pem", pki_dir / "server-key.pem")
    if pki.ca_cert.exists() and pki.server_cert.exists() and pki.server_key.exists():
        return pki
    pki_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=825)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmsaf-hub development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_server_names()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write_private(pki_dir / "ca-key.pem", _key_pem(ca_key))
    _write_private(pki.server_key, _key_pem(server_key))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return pki
