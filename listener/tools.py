"""Tools for users testing their set-up: C-ECHO, C-STORE of files, and the journal's studies."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from listener.settings import Settings


def set_nodelay(assoc: object) -> None:
    """Turn Nagle's algorithm off on an association's socket (pynetdicom never does)."""
    sock = assoc.dul.socket.socket  # type: ignore[attr-defined]
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(host: str, port: int, *, aet: str, aec: str, timeout: float) -> tuple[bool, str]:
    """C-ECHO (PS3.7 §9.1.5) the peer; return whether it answered Success and a message."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=aec)
    if not assoc.is_established:
        return False, f"association with {aec}@{host}:{port} was rejected or failed"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0:
        return True, f"C-ECHO to {aec}@{host}:{port}: success"
    return False, f"C-ECHO to {aec}@{host}:{port} failed: {status!r}"


@dataclass
class SendReport:
    """What a send did: counts and the files that failed with why."""

    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"sent {self.sent}, failed {len(self.failed)}"]
        lines += [f"  {path}: {why}" for path, why in self.failed]
        return "\n".join(lines)


def send_files(
    host: str,
    port: int,
    paths: list[Path],
    *,
    aet: str,
    aec: str,
    timeout: float,
    progress: bool,
) -> SendReport:
    """C-STORE every DICOM file under ``paths``."""
    raise NotImplementedError


def print_studies(settings: Settings, *, as_json: bool, show_patient: bool) -> int:
    """Print the studies the journal holds."""
    raise NotImplementedError
