"""The DICOM receiver: a pynetdicom AE serving C-ECHO and C-STORE, spooling and answering.

The C-STORE handler does one thing (STYLE principle 2): check the request, hand the encoded bytes
to the spool, record them in the journal and return a named status. No pixel decoding, no HTTP,
no waiting on workers. Association admission (calling AE and host allow-list, called AE titles,
the association limit shared by all receive processes) is decided by
:func:`listener.receive.admission.admission` before any presentation context is negotiated (PS3.8
§7.1.1.9 A-ASSOCIATE-RJ reasons).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from listener.errors import InvalidDatasetError, MissingIdentifierError, StorageFullError
from listener.logging import get_logger
from listener.receive.admission import (
    AssociationCounter,
    admission,
)
from listener.receive.fastpath.association import EventAssociation
from listener.receive.status import EchoStatus, StoreStatus
from listener.settings import Settings
from listener.store.journal import AssociationRecord, Journal
from listener.store.spool import InstanceHeader, Spool, encode_file_meta, read_header
from listener.timing import utc_text

VERIFICATION = "1.2.840.10008.1.1"
UNCOMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    }
)
# Storage SOP classes the gateway must accept even if a pynetdicom release drops them.
REQUIRED_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.2",  # Color Softcopy Presentation State Storage
)


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class with every transfer syntax pydicom knows (stored as received)."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    classes += [uid for uid in REQUIRED_STORAGE_CLASSES if uid not in classes]
    syntaxes: list[str | UID] = list(AllTransferSyntaxes)
    contexts = [build_context(uid, syntaxes) for uid in classes]
    contexts.append(build_context(VERIFICATION, syntaxes))
    return contexts


def prefer_requested_syntaxes(
    requested: Sequence[PresentationContext], supported: Sequence[PresentationContext]
) -> None:
    """Order each supported context's transfer syntaxes by the requestor's preference.

    pynetdicom accepts the first transfer syntax in the *acceptor's* list that was proposed;
    a sender proposes its preferred one (usually the one its file is in) first, so following
    the sender keeps the data as received and spares the sender a conversion it may not be able
    to do (PS3.8 §9.3.2.2 leaves the choice to the acceptor). Where two proposals of the same
    SOP class rank syntaxes equally, compressed ones go first: an uncompressed-only context
    still gets an uncompressed syntax, and the context that offers compression gets it.
    """
    ranks: dict[str, dict[str, int]] = {}
    for context in requested:
        rank = ranks.setdefault(str(context.abstract_syntax), {})
        for index, syntax in enumerate(context.transfer_syntax):
            rank[str(syntax)] = min(rank.get(str(syntax), index), index)
    for context in supported:
        rank = ranks.get(str(context.abstract_syntax), {})
        if rank:
            context.transfer_syntax = sorted(
                context.transfer_syntax,
                key=lambda syntax: (rank.get(str(syntax), len(rank) + 1), syntax in UNCOMPRESSED),
            )


# --- the C-STORE / C-ECHO handlers ---------------------------------------------------------


class StoreFailedError(Exception):
    """A C-STORE that fails with ``status``; the bytes are quarantined with ``reason``."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Open:
    record: AssociationRecord
    ended: str = "closed"


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
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.journal = journal
        self.clock = clock
        self.counter = counter or AssociationCounter()
        self.log = get_logger("receive")
        self._open: dict[object, _Open] = {}
        self._lock = threading.Lock()

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

    def record_rejection(self, assoc: Any, calling_ae: str, called_ae: str, why: str) -> None:
        """Journal a refused association, so the association log and metrics count it."""
        now = self.clock()
        record = AssociationRecord(
            id=uuid.uuid4().hex[:16],
            peer_host=str(assoc.requestor.address),
            peer_port=int(assoc.requestor.port or 0),
            calling_ae=calling_ae,
            called_ae=called_ae,
            started_at=now,
        )
        self.journal.start_association(record)
        self.journal.end_association(record, ended="rejected", now=now)

    def on_established(self, event: Any) -> None:
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
            self._open[assoc] = _Open(record)
        self.journal.start_association(record)
        self.log.info(
            "association_accepted",
            association=record.id,
            calling_ae=record.calling_ae,
            called_ae=record.called_ae,
            peer=f"{record.peer_host}:{record.peer_port}",
        )

    def on_released(self, event: Any) -> None:
        self._note_end(event.assoc, "released")

    def on_aborted(self, event: Any) -> None:
        self._note_end(event.assoc, "aborted")

    def _note_end(self, assoc: object, how: str) -> None:
        with self._lock:
            entry = self._open.get(assoc)
            if entry is not None and entry.ended == "closed":
                entry.ended = how

    def on_closed(self, event: Any) -> None:
        with self._lock:
            entry = self._open.pop(event.assoc, None)
        self.counter.publish(len(self._acceptors(event.assoc)) - 1)
        if entry is None:
            return
        if entry.ended == "closed":
            entry.ended = _how_it_ended(event.assoc)
        now = self.clock()
        record = entry.record
        self.journal.end_association(record, ended=entry.ended, now=now)
        self.log.info(
            "association_ended",
            association=record.id,
            calling_ae=record.calling_ae,
            ended=entry.ended,
            received=record.received,
            stored=record.stored,
            duplicates=record.duplicates,
            failed=record.failed,
            duration_s=round(now - record.started_at, 3),
        )

    @staticmethod
    def _acceptors(assoc: Any) -> list[Any]:
        return [a for a in assoc.ae.active_associations if a.is_acceptor]

    # DIMSE services

    def on_c_echo(self, event: Any) -> int:
        """Answer C-ECHO (PS3.7 §9.1.5) with Success."""
        return EchoStatus.SUCCESS

    def on_c_store(self, event: Any) -> int:
        """Spool one C-STORE request and return its status (PS3.4 Annex B.2.3)."""
        entry = self._open.get(event.assoc)
        record = entry.record if entry else None
        if record is not None:
            record.received += 1
        data = event.request.DataSet.getvalue()
        try:
            status = self._store(event, data, record)
        except StorageFullError as exc:
            self.log.error(
                "instance_refused",
                association=record.id if record else None,
                reason=str(exc),
                status=StoreStatus.OUT_OF_RESOURCES.name,
            )
            status = StoreStatus.OUT_OF_RESOURCES
        except StoreFailedError as failure:
            self._quarantine(event, data, failure, record)
            status = failure.status
        if record is not None and status != StoreStatus.SUCCESS:
            record.failed += 1
        return status

    def _store(self, event: Any, data: bytes, record: AssociationRecord | None) -> int:
        self.spool.check_space()
        request = event.request
        negotiated = str(event.context.abstract_syntax)
        command_class = str(request.AffectedSOPClassUID)
        if command_class != negotiated:
            raise StoreFailedError(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                f"command SOP class {command_class} differs from the negotiated {negotiated}",
            )
        syntax = str(event.context.transfer_syntax)
        header = self._checked_header(data, syntax, request, negotiated)
        meta = encode_file_meta(
            sop_class_uid=command_class,
            sop_instance_uid=header.sop_instance_uid,
            transfer_syntax=syntax,
            source_ae=record.calling_ae if record else "",
            called_ae=record.called_ae if record else "",
            peer=(record.peer_host, record.peer_port) if record else None,
        )
        chunks = [meta, data]
        if self.journal.has_instance(header.sop_instance_uid):
            return self._duplicate(header, record)
        relative, size = self.spool.write(header, chunks)
        stored = self.journal.record_instance(
            header.record(relative, size, self.clock(), record.id if record else None),
            quiet_period_s=self.settings.quiet_period_s,
            calling_ae=record.calling_ae if record else None,
            called_ae=record.called_ae if record else None,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
        )
        if not stored:
            return self._duplicate(header, record)
        if record is not None:
            record.stored += 1
        self.log.debug(
            "instance_stored",
            association=record.id if record else None,
            study_uid=header.study_uid,
            sop_instance_uid=header.sop_instance_uid,
            size=size,
        )
        return StoreStatus.SUCCESS

    def _checked_header(
        self, data: bytes, syntax: str, request: Any, negotiated: str
    ) -> InstanceHeader:
        try:
            header = read_header(data, syntax)
        except InvalidDatasetError as exc:
            status = (
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
                if isinstance(exc, MissingIdentifierError)
                else StoreStatus.CANNOT_UNDERSTAND
            )
            raise StoreFailedError(status, str(exc)) from exc
        if header.sop_class_uid != negotiated:
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"dataset SOP class {header.sop_class_uid} differs from the negotiated one",
            )
        if header.sop_instance_uid != str(request.AffectedSOPInstanceUID):
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "dataset SOP Instance UID differs from the command's Affected SOP Instance UID",
            )
        return header

    def _duplicate(self, header: InstanceHeader, record: AssociationRecord | None) -> int:
        if record is not None:
            record.duplicates += 1
        self.log.info(
            "instance_duplicate",
            association=record.id if record else None,
            study_uid=header.study_uid,
            sop_instance_uid=header.sop_instance_uid,
        )
        return StoreStatus.SUCCESS

    def _quarantine(
        self, event: Any, data: bytes, failure: StoreFailedError, record: AssociationRecord | None
    ) -> None:
        now = self.clock()
        reason: dict[str, object] = {
            "reason": failure.reason,
            "status": failure.status.name,
            "status_code": int(failure.status),
            "association": record.id if record else None,
            "peer": f"{record.peer_host}:{record.peer_port}" if record else None,
            "calling_ae": record.calling_ae if record else None,
            "called_ae": record.called_ae if record else None,
            "negotiated_sop_class": str(event.context.abstract_syntax),
            "transfer_syntax": str(event.context.transfer_syntax),
            "command_sop_class": str(event.request.AffectedSOPClassUID),
            "command_sop_instance": str(event.request.AffectedSOPInstanceUID),
            "time_utc": utc_text(now, precise=True),
        }
        path = self.spool.quarantine([data], reason)
        self.log.warning(
            "instance_quarantined",
            association=record.id if record else None,
            calling_ae=record.calling_ae if record else None,
            reason=failure.reason,
            status=failure.status.name,
            file=path.name,
        )


def _how_it_ended(assoc: Any) -> str:
    """Released / aborted / closed, for a connection that closed before the event said so."""
    if getattr(assoc, "release_answered", False):
        return "released"
    if assoc.is_aborted or assoc.acse.is_aborted():
        return "aborted"
    return "closed"


# --- the server ----------------------------------------------------------------------------


class _AdmissionACSE(ACSE):
    """pynetdicom's ACSE with our admission decision taken before context negotiation."""

    def __init__(self, assoc: Any, receiver: Receiver) -> None:
        super().__init__(assoc)
        self._receiver = receiver

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None  # set by the DUL before negotiation starts
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        peer = str(self.assoc.requestor.address)
        settings = self._receiver.settings
        local = len(Receiver._acceptors(self.assoc))
        rejection = admission(
            calling_ae=calling,
            called_ae=called,
            peer_host=peer,
            ae_titles=settings.ae_titles,
            allowed=settings.allowed_callers,
            active=self._receiver.counter.total(local),
            limit=settings.max_associations,
        )
        if rejection is not None:
            self._receiver.log.warning(
                "association_rejected",
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                reason=rejection.why,
                result=rejection.result,
                source=rejection.source,
                diagnostic=rejection.reason,
            )
            self._receiver.record_rejection(self.assoc, calling, called, rejection.why)
            self.requestor.ae_title = request.calling_ae_title
            self.send_reject(rejection.result, rejection.source, rejection.reason)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self._receiver.counter.publish(local)
        self.acceptor.ae_title = called
        prefer_requested_syntaxes(
            self.requestor.requested_contexts, self.acceptor.supported_contexts
        )
        super()._negotiate_as_acceptor()


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler, making our association and ACSE classes."""

    receiver: Receiver

    def _create_association(self) -> Any:
        # As RequestHandler._create_association in pynetdicom 3.0, with our classes.
        assoc = EventAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"Acceptor@{self.client_address[0]}:{self.client_address[1]}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acse = _AdmissionACSE(assoc, self.receiver)
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        bound: dict[Any, Any] = self.server._handlers
        for event, handlers in bound.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class ReceiveServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on accepted sockets and SO_REUSEPORT."""

    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def make_ae(settings: Settings) -> AE:
    """The receive AE with the settings' timeouts, PDU size and contexts."""
    ae = AE(ae_title=settings.ae_titles[0])
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.supported_contexts = storage_contexts()
    return ae


def start_server(
    settings: Settings, receiver: Receiver, *, reuse_port: bool = False
) -> ReceiveServer:
    """Bind the listening socket and serve associations on background threads."""
    ae = make_ae(settings)
    handler = type("RequestHandler", (_RequestHandler,), {"receiver": receiver})
    server_class = type("Server", (ReceiveServer,), {"reuse_port": reuse_port})
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=receiver.handlers(),
        server_class=server_class,
        request_handler=handler,
    )
    assert isinstance(server, ReceiveServer)
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, name="receive-server", daemon=True)
    thread.start()
    get_logger("receive").info(
        "receiver_listening",
        host=settings.host,
        port=server.server_address[1],
        ae_titles=settings.ae_titles,
    )
    return server
