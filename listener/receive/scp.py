"""The receiver's event handlers: association records, C-ECHO, and C-STORE handed to the intake.

The C-STORE handler does one thing (STYLE principle 2): stream the data set to the spool and
return a named status (:mod:`listener.receive.intake`). No pixel decoding, no HTTP, no waiting on
workers. The association server that calls these handlers, with admission and the listening
socket, is :mod:`listener.receive.server`.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from listener.logging import get_logger
from listener.receive.admission import AssociationCounter
from listener.receive.intake import Intake, PendingStore, StoreFailedError, StoreRequest, utc_text
from listener.receive.status import HANDLER_FAILURE, STORED_STATUSES, EchoStatus, StoreStatus
from listener.settings import Settings
from listener.store.audit import AuditTrail
from listener.store.header import meta_end
from listener.store.journal import AssociationRecord, Journal
from listener.store.spool import InstanceHeader, Spool

__all__ = ["Receiver", "StoreFailedError", "utc_text"]

_CHUNK = 1 << 20


@dataclass
class _Open:
    record: AssociationRecord
    ended: str = "closed"
    tls_subject: str | None = None
    # per study stored: the patient ID and the instances per SOP class, for the audit trail
    studies: dict[str, tuple[str | None, Counter[str]]] = field(default_factory=dict)


class Receiver:
    """The event handlers of the receive AE, with their dependencies passed in."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
        counter: AssociationCounter | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.journal = journal
        self.clock = clock
        self.counter = counter or AssociationCounter()
        self.intake = Intake(settings, spool, journal, clock=clock)
        self.log = get_logger("receive")
        self.audit = audit
        self.intake.on_stored = self._note_stored
        self._open: dict[object, _Open] = {}
        self._lock = threading.Lock()
        # Associations whose connection has closed while their thread is still winding down;
        # they no longer count against max_associations (weak: gone with the association).
        self._closed: weakref.WeakSet[Association] = weakref.WeakSet()

    def handlers(self) -> list[Any]:
        """The (event, handler) pairs to bind to the association server."""
        return [
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_closed),
        ]

    # association life cycle

    def record_rejection(
        self,
        assoc: Association,
        calling_ae: str,
        called_ae: str,
        why: str,
        *,
        ended: str = "rejected",
    ) -> None:
        """Journal an association refused or aborted before it was established."""
        self._record_refusal(
            str(assoc.requestor.address),
            int(assoc.requestor.port or 0),
            calling_ae,
            called_ae,
            why,
            ended=ended,
            tls_subject=getattr(assoc, "tls_subject", None),
        )

    def record_refused_connection(self, peer_host: str, peer_port: int, why: str) -> None:
        """Journal a connection refused before any association request (a failed TLS
        handshake): no AE titles are known yet."""
        self._record_refusal(peer_host, peer_port, "", "", why, ended="rejected")

    def _record_refusal(
        self,
        peer_host: str,
        peer_port: int,
        calling_ae: str,
        called_ae: str,
        why: str,
        *,
        ended: str,
        tls_subject: str | None = None,
    ) -> None:
        now = self.clock()
        record = AssociationRecord(
            id=uuid.uuid4().hex[:16],
            peer_host=peer_host,
            peer_port=peer_port,
            calling_ae=calling_ae,
            called_ae=called_ae,
            started_at=now,
            error=why,
        )
        self.journal.start_association(record)
        self.journal.end_association(record, ended=ended, now=now)
        if self.audit is not None:
            self.audit.association(record, tls_subject, False)

    def on_established(self, event: Event) -> None:
        assoc = event.assoc
        record = AssociationRecord(
            id=uuid.uuid4().hex[:16],
            peer_host=str(assoc.requestor.address),
            peer_port=int(assoc.requestor.port),
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            started_at=self.clock(),
        )
        with self._lock:
            self._open[assoc] = _Open(record, tls_subject=getattr(assoc, "tls_subject", None))
        self.journal.start_association(record)
        tls_subject = getattr(assoc, "tls_subject", None)
        self.log.info(
            "association_accepted",
            association=record.id,
            calling_ae=record.calling_ae,
            called_ae=record.called_ae,
            peer=f"{record.peer_host}:{record.peer_port}",
            tls=bool(getattr(assoc, "tls", False)),
            tls_subject=tls_subject,
        )
        if self.audit is not None:
            self.audit.association(record, tls_subject, True)

    def on_released(self, event: Event) -> None:
        self._note_end(event.assoc, "released")

    def on_aborted(self, event: Event) -> None:
        self._note_end(event.assoc, "aborted")

    def _note_end(self, assoc: object, how: str) -> None:
        with self._lock:
            entry = self._open.get(assoc)
            if entry is not None and entry.ended == "closed":
                entry.ended = how

    def on_closed(self, event: Event) -> None:
        with self._lock:
            entry = self._open.pop(event.assoc, None)
            self._closed.add(event.assoc)
            self.counter.publish(self.open_associations(event.assoc))
        failure = getattr(event.assoc, "failure", None)
        if entry is None:
            if failure is not None:  # aborted before it was established (e.g. a huge PDU)
                self.record_rejection(event.assoc, "", "", failure, ended="aborted")
            return
        if failure is not None:
            entry.ended = "aborted"
        elif entry.ended == "closed":
            entry.ended = _how_it_ended(event.assoc)
        now = self.clock()
        record = entry.record
        record.error = failure
        self.journal.end_association(record, ended=entry.ended, now=now)
        if self.audit is not None:
            for study_uid, (patient_id, classes) in entry.studies.items():
                self.audit.study_received(
                    record, entry.tls_subject, study_uid, patient_id, dict(classes)
                )
        self.log.info(
            "association_ended",
            association=record.id,
            calling_ae=record.calling_ae,
            ended=entry.ended,
            error=failure,
            received=record.received,
            stored=record.stored,
            duplicates=record.duplicates,
            failed=record.failed,
            duration_s=round(now - record.started_at, 3),
        )

    def _note_stored(self, record: AssociationRecord | None, header: InstanceHeader) -> None:
        if record is None:
            return
        with self._lock:
            entry = next((e for e in self._open.values() if e.record is record), None)
            if entry is None:
                return
            _, classes = entry.studies.setdefault(header.study_uid, (header.patient_id, Counter()))
            classes[header.sop_class_uid] += 1

    def open_associations(self, assoc: Association) -> int:
        """How many associations this process has open: those accepted or being negotiated
        (``assoc`` among them). One that was released, aborted or rejected, or whose
        connection has closed, does not count although its thread may still be ending: a
        sender that comes back just after a burst of ended associations is not refused for
        them."""
        closed = self._closed
        return sum(
            1
            for a in assoc.ae.active_associations
            if a.is_acceptor
            and a not in closed
            and not (a.is_released or a.is_aborted or a.is_rejected)
        )

    def publish_open(self, assoc: Association) -> None:
        """Tell the other receive processes this one's count (under the lock that orders
        it with the counts published as connections close)."""
        with self._lock:
            self.counter.publish(self.open_associations(assoc))

    # DIMSE services

    def on_c_echo(self, event: Event) -> int:
        """Answer C-ECHO (PS3.7 §9.1.5) with Success."""
        return EchoStatus.SUCCESS

    @property
    def max_message_bytes(self) -> int:
        """The most bytes one C-STORE may carry (``max_instance_mb``, and a margin for the
        command set); the fast path aborts an association that sends more in one message."""
        return self.settings.max_instance_mb * 1024 * 1024 + 65536

    def begin_store(self, assoc: Association, request: StoreRequest) -> PendingStore:
        """Start one C-STORE of ``assoc``; its data set is then written fragment by fragment."""
        entry = self._open.get(assoc)
        record = entry.record if entry else None
        try:
            return self.intake.begin(request, record)
        except Exception:
            # The spool cannot take it (e.g. its folder is unwritable): the message is still
            # read to its end and answered with the one handler failure status.
            self.log.exception("store_handler_failed")
            return PendingStore(self.intake, request, record, None, HANDLER_FAILURE)

    def finish_store(self, pending: PendingStore) -> int:
        """The status of a C-STORE whose data set is complete (PS3.4 Annex B.2.3)."""
        if pending.record is not None:
            pending.record.received += 1
        try:
            status: int = pending.finish()
        except Exception:
            self.log.exception("store_handler_failed")
            status = HANDLER_FAILURE
        if pending.record is not None and status not in STORED_STATUSES:
            pending.record.failed += 1
        return status

    def on_c_store(self, event: Event) -> int:
        """Spool one C-STORE that pynetdicom assembled (the stock engine, and the messages the
        fast path leaves to pynetdicom).

        Nothing raises out of here: pynetdicom would answer an exception with its own 0xC211,
        and both engines answer a failure inside the receiver with :data:`HANDLER_FAILURE`.
        """
        request = event.request
        if not isinstance(request, C_STORE) or request.DataSet is None:
            return StoreStatus.CANNOT_UNDERSTAND  # pynetdicom hands C-STOREs only: a guard
        try:
            store = StoreRequest(
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                context_class=str(event.context.abstract_syntax),
                transfer_syntax=str(event.context.transfer_syntax),
            )
        except Exception:
            self.log.exception("store_handler_failed")
            return HANDLER_FAILURE
        pending = self.begin_store(event.assoc, store)
        if _config.STORE_RECV_CHUNKED_DATASET:
            try:
                _stream_file(event.dataset_path, pending)
            except Exception:
                self.log.exception("store_handler_failed")
                pending.fail()
        else:
            pending.write(request.DataSet.getbuffer())
        return self.finish_store(pending)


def _stream_file(path: Path, pending: PendingStore) -> None:
    """Write the data set of pynetdicom's staged PS3.10 file (after its file meta) into the
    spool, a chunk at a time."""
    with path.open("rb") as handle:
        handle.seek(meta_end(path))
        while chunk := handle.read(_CHUNK):
            pending.write(chunk)


def _how_it_ended(assoc: Association) -> str:
    """Released / aborted / closed, for a connection that closed before the event said so."""
    if getattr(assoc, "release_answered", False):
        return "released"
    if assoc.is_aborted or assoc.acse.is_aborted():
        return "aborted"
    return "closed"
