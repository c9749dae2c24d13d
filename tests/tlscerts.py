"""Test certificates made on the spot with the ``openssl`` command (never committed): a CA, a
server certificate for 127.0.0.1/localhost, client certificates from that CA and from another."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    """A certificate (PEM) and its private key (PEM, unencrypted)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Two CAs and the certificates of the TLS tests."""

    ca: Path  # the trusted CA's certificate
    server: KeyPair  # signed by ``ca``, for 127.0.0.1 and localhost
    client: KeyPair  # signed by ``ca``, CN=MODALITY1
    stranger: KeyPair  # signed by another CA, CN=MODALITY1
    other_ca: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(pair.cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def _signed(folder: Path, name: str, cn: str, ca: KeyPair, extensions: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _run(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
        "-keyout", str(pair.key), "-out", str(request),
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "2", "-out", str(pair.cert), "-extfile", str(ext),
    )  # fmt: skip
    return pair


SERVER_EXT = (
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
CLIENT_EXT = (
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


def make_pki(folder: Path) -> Pki:
    """Create the test certificates in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    other = _ca(folder, "other-ca")
    return Pki(
        ca=ca.cert,
        server=_signed(folder, "server", "pacsai.test", ca, SERVER_EXT),
        client=_signed(folder, "client", "MODALITY1", ca, CLIENT_EXT),
        stranger=_signed(folder, "stranger", "MODALITY1", other, CLIENT_EXT),
        other_ca=other.cert,
    )
