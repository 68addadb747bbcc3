"""Per-cluster secrets: TLS material for a cluster's Dask comms, and encryption of it at rest.

Each cluster gets its own self-signed certificate that is both its CA and the identity of its
scheduler, workers and clients (Dask's ``Security`` does not check host names), so a credential
for one cluster opens no other. The private key is stored encrypted (Fernet; several keys allowed
for rotation, the first one encrypts).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CRYPT_KEY_ENV = "CMSAF_SERVICE_CRYPT_KEY"
#: The 0600 file holding the key(s): how the hub hands them to the service.
CRYPT_KEY_FILE_ENV = CRYPT_KEY_ENV + "_FILE"


class CryptError(Exception):
    """Encrypted material could not be decrypted (wrong or rotated-away key)."""


@dataclass(frozen=True)
class ClusterTLS:
    """PEM certificate (also the CA) and private key of one cluster."""

    cert: str
    key: str = field(repr=False)

    def as_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key}


def generate_cluster_tls(cluster_id: str, *, valid_days: int = 365) -> ClusterTLS:
    """A fresh self-signed P-256 certificate for one cluster (CPU-bound: call from an executor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dask-{cluster_id}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(f"dask-{cluster_id}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return ClusterTLS(
        cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def parse_crypt_keys(text: str) -> list[bytes]:
    """``key1;key2`` (Fernet keys, urlsafe base64 of 32 bytes) → list; the first one encrypts."""
    keys = [k.strip().encode() for k in text.replace(",", ";").split(";") if k.strip()]
    for k in keys:
        Fernet(k)  # raises ValueError on a malformed key, without echoing it
    return keys


def new_crypt_key() -> str:
    return Fernet.generate_key().decode()


def read_crypt_keys(environ: Mapping[str, str]) -> str:
    """The key text from the file named by ``$CMSAF_SERVICE_CRYPT_KEY_FILE``, else the variable itself."""
    path = environ.get(CRYPT_KEY_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read {CRYPT_KEY_FILE_ENV}={path}: {e.strerror}") from None
    return environ.get(CRYPT_KEY_ENV, "")


def write_secret_file(path: str | os.PathLike, value: str) -> None:
    """Write ``value`` to ``path``, mode 0600 from its first byte (replacing any older file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.replace(tmp, path)


class SecretBox:
    """Encrypts and decrypts small secrets with one or more Fernet keys."""

    def __init__(self, keys: list[bytes]):
        if not keys:
            raise ValueError(f"no encryption key: set {CRYPT_KEY_ENV} or CmsafService.crypt_keys")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._primary = keys[0]

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    @classmethod
    def from_env(cls) -> "SecretBox":
        return cls(parse_crypt_keys(read_crypt_keys(os.environ)))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def derive(self, purpose: str) -> str:
        """A stable secret for ``purpose`` (e.g. one cluster's worker credential) derived from the
        primary key: nothing to store, the same after a restart, unrelated between purposes."""
        return hmac.new(self._primary, purpose.encode(), hashlib.sha256).hexdigest()

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise CryptError("cannot decrypt a stored secret: the encryption key changed") from None
