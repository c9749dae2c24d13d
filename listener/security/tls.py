"""TLS contexts for every secure connection of the gateway: DICOM TLS on receive and send
(PS3.15 Annex B.1 "The Basic TLS Secure Transport Connection Profile", B.9 "BCP 195"), the
admin API over HTTPS and the audit trail's syslog over TLS (RFC 5425).

One policy for all of them, from BCP 195 (RFC 9325): TLS 1.2 or later, forward-secret AEAD
cipher suites only (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3 suites are all AEAD),
no compression, no renegotiation. A client always verifies the server's certificate against
the configured CA (or the system store) and, unless told otherwise, its host name.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# RFC 9325 §4.2: the recommended TLS 1.2 suites (OpenSSL names).
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None = None,
    *,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context with our certificate; with ``require_client_cert`` a client must present
    a certificate signed by ``ca_file`` or the handshake fails (PS3.15 B.1: both peers may be
    authenticated by certificate). Without it a client certificate is still asked for and
    checked when ``ca_file`` is given, so the allow-list can match its subject."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert_file, key_file)
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_file`` (the system store when
    None) and its host name unless ``check_hostname`` is False; it presents ``cert_file`` when
    the server asks for a client certificate."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def subject_cn(sock: ssl.SSLSocket) -> str | None:
    """The common name (CN) of the verified peer certificate's subject, or None when the peer
    presented none (or it did not verify)."""
    peer = sock.getpeercert()
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return None


def handshake_reason(exc: BaseException) -> str:
    """A TLS failure in words for logs and dead letters: OpenSSL's reason and, for a certificate
    that did not verify, why (expired, unknown CA, host name mismatch)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__
