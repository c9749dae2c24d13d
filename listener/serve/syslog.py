"""Shipping the audit trail to a syslog collector: RFC 5424 messages over TLS (RFC 5425), as
IHE ATNA's Record Audit Event transaction (ITI-20) asks.

The journal's ``audit_events`` table is the durable copy; the shipper sends the records not sent
yet, oldest first, and marks each once it is written to the TLS connection. A collector that is
down or refuses us costs nothing but a retry at the next round (the records wait in the journal).

Each record is one RFC 5424 message: PRI of facility 10 (security/authorization) with severity
notice (5) for a success and warning (4) for a failure, the record's own time, our host name,
APP-NAME ``pacs-ai``, MSGID ``IHE+RFC-3881`` (the ITI-20 value for DICOM audit messages), no
structured data, and the DICOM audit message XML as MSG with a UTF-8 BOM. On the wire each is
framed by octet counting (RFC 5425 §4.3: ``MSG-LEN SP SYSLOG-MSG``).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from datetime import UTC, datetime

from listener.logging import get_logger
from listener.security.settings import AuditSettings
from listener.security.tls import client_context, handshake_reason
from listener.store.audit import AuditLog

FACILITY_AUTHPRIV = 10  # RFC 5424 Table 1: security/authorization messages
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
APP_NAME = "pacs-ai"
MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"
SHIP_INTERVAL_S = 1.0

_log = get_logger("audit")


def syslog_frame(message: str, *, at: float, outcome: str, hostname: str, procid: int) -> bytes:
    """One audit message as an RFC 5424 message framed for RFC 5425 (octet counting)."""
    severity = SEVERITY_NOTICE if outcome == "0" else SEVERITY_WARNING
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    stamp = stamp.replace("+00:00", "Z")
    header = f"<{FACILITY_AUTHPRIV * 8 + severity}>1 {stamp} {hostname} {APP_NAME} {procid}"
    body = f"{header} {MSGID} - ".encode() + _BOM + message.encode("utf-8")
    return f"{len(body)} ".encode("ascii") + body


class SyslogShipper:
    """Sends the unshipped audit records to ``settings.syslog_host`` over TLS."""

    def __init__(self, log: AuditLog, settings: AuditSettings) -> None:
        assert settings.syslog_host is not None
        self.log = log
        self.settings = settings
        self.host = settings.syslog_host
        self.hostname = socket.gethostname() or "-"
        self._context = client_context(
            settings.syslog_ca_file,
            settings.syslog_cert_file,
            settings.syslog_key_file,
            check_hostname=settings.syslog_check_hostname,
        )
        self._sock: ssl.SSLSocket | None = None

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is None:
            raw = socket.create_connection((self.host, self.settings.syslog_port), timeout=10)
            self._sock = self._context.wrap_socket(raw, server_hostname=self.host)
        return self._sock

    def ship_due(self, now: float) -> int:
        """Send what is not shipped yet; how many records went (0 when the collector failed)."""
        rows = self.log.unshipped()
        if not rows:
            return 0
        try:
            sock = self._connect()
            for row in rows:
                frame = syslog_frame(
                    row["message"],
                    at=row["at"],
                    outcome=row["outcome"],
                    hostname=self.hostname,
                    procid=os.getpid(),
                )
                sock.sendall(frame)
        except (OSError, ValueError) as exc:
            _log.warning(
                "audit_ship_failed",
                collector=f"{self.host}:{self.settings.syslog_port}",
                error=handshake_reason(exc),
            )
            self.close()
            return 0
        self.log.mark_shipped([int(row["id"]) for row in rows], now)
        return len(rows)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def run_shipper(log: AuditLog, settings: AuditSettings, stop: threading.Event) -> None:
    """Ship audit records every :data:`SHIP_INTERVAL_S` until ``stop`` is set (a thread of the
    worker process); a last round runs at stop."""
    shipper = SyslogShipper(log, settings)
    try:
        while not stop.wait(SHIP_INTERVAL_S):
            shipper.ship_due(time.time())
        shipper.ship_due(time.time())
    finally:
        shipper.close()
