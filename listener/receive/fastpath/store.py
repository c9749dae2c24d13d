"""C-STORE requests served in the DUL thread, straight from the P-DATA-TF PDUs.

pynetdicom turns each received PDU into PDU objects and a P-DATA primitive, decodes the command
set into a pydicom ``Dataset``, queues the message for the association thread, which builds the
response through another ``Dataset`` and queues it back to the DUL thread. For a C-STORE that
costs more than storing the instance. :class:`StorePath` takes the fragments (PS3.8 Annex E)
of each message as the DUL reads them; a C-STORE-RQ it can serve (see :meth:`StorePath._admit`)
goes to the bound ``EVT_C_STORE`` handler in this thread, and its C-STORE-RSP is written to the
socket as one P-DATA-TF PDU. Every other message (C-ECHO, a malformed or unusual C-STORE) is
handed, fragment by fragment and in order, to pynetdicom's DIMSE provider, which serves it as
before. Association negotiation, release and abort stay pynetdicom's.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pydicom import Dataset
from pynetdicom import _config, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from listener.logging import get_logger
from listener.receive.fastpath.codec import (
    COMMAND_FRAGMENT,
    LAST_FRAGMENT,
    StoreCommand,
    encode_store_response,
    parse_store_request,
    split_pdvs,
)
from listener.receive.status import StoreStatus

# How long a request may wait for its association's EVT_ESTABLISHED handlers to finish.
ESTABLISHED_WAIT_S = 10.0
# pynetdicom binds these debug-logging handlers to every association; they may be skipped.
_STANDARD_HANDLERS = frozenset(
    {
        standard_dimse_recv_handler,
        standard_dimse_sent_handler,
        standard_pdu_recv_handler,
        standard_pdu_sent_handler,
    }
)
# Notifications the lean path does not raise; a handler of our own bound to one turns it off.
_SKIPPED_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)


def lean_path_allowed(assoc: Any) -> bool:
    """Whether an association may use :class:`StorePath`: nothing listens for what it skips."""
    if _config.STORE_RECV_CHUNKED_DATASET:
        return False
    for event in _SKIPPED_EVENTS:
        if any(handler not in _STANDARD_HANDLERS for handler, _ in assoc.get_handlers(event)):
            return False
    return True


class StorePath:
    """Assembles the messages of one association from their PDVs and serves its C-STOREs.

    ``dul.assoc.serving`` is a :class:`threading.Event` set once the association serves
    requests (see :class:`listener.receive.fastpath.association.EventAssociation`).
    """

    def __init__(self, dul: Any) -> None:
        self._dul = dul
        self._log = get_logger("receive")
        self._pending: list[tuple[int, memoryview]] = []  # this message's PDVs, for a hand-over
        self._command: list[memoryview] = []
        self._data: list[memoryview] = []
        self._request: tuple[StoreCommand, C_STORE, int] | None = None
        self._passthrough = False

    def on_pdu(self, body: memoryview) -> None:
        """Take the PDVs of one P-DATA-TF PDU (its bytes after the 6-byte PDU header)."""
        items = split_pdvs(body)
        if items is None:
            self._dul.event_queue.put("Evt19")  # PS3.8 §9.2: invalid PDU received
            return
        for context_id, value in items:
            if self._passthrough:
                self._forward(context_id, value)
            elif self._request is None:
                self._on_command(context_id, value)
            else:
                self._on_data(context_id, value)

    def _on_command(self, context_id: int, value: memoryview) -> None:
        self._pending.append((context_id, value))
        if not value[0] & COMMAND_FRAGMENT:
            self._hand_over()
            return
        self._command.append(value[1:])
        if not value[0] & LAST_FRAGMENT:
            return
        command = parse_store_request(b"".join(self._command))
        self._command = []
        primitive = self._admit(command, context_id) if command is not None else None
        if command is None or primitive is None:
            self._hand_over()
            return
        self._request = (command, primitive, context_id)

    def _on_data(self, context_id: int, value: memoryview) -> None:
        assert self._request is not None
        command, primitive, command_context = self._request
        self._pending.append((context_id, value))
        if value[0] & COMMAND_FRAGMENT or context_id != command_context:
            self._hand_over()
            return
        self._data.append(value[1:])
        if not value[0] & LAST_FRAGMENT:
            return
        primitive.DataSet = BytesIO(b"".join(self._data))
        self._request = None
        self._data = []
        self._pending = []
        self._serve(command, primitive, context_id)

    def _admit(self, command: StoreCommand, context_id: int) -> C_STORE | None:
        """The request primitive, if pynetdicom would serve it with the Storage service class.

        As ``Association._serve_request``: not during release, on an accepted context, for a
        SOP class without SOP Class Common Extended Negotiation (PS3.7 Annex D.3.3.6).
        """
        assoc = self._dul.assoc
        # A peer may send its first request before the association thread has run the
        # EVT_ESTABLISHED handlers; pynetdicom would queue it until then, so wait as long.
        assoc.serving.wait(ESTABLISHED_WAIT_S)
        if not assoc.is_established or assoc._sent_release:
            return None
        if context_id not in assoc._accepted_cx:
            return None
        if command.sop_class_uid in assoc.acceptor.accepted_common_extended:
            return None
        if uid_to_service_class(command.sop_class_uid) is not StorageServiceClass:
            return None
        primitive = C_STORE()
        try:
            primitive.MessageID = command.message_id
            primitive.AffectedSOPClassUID = command.sop_class_uid
            primitive.AffectedSOPInstanceUID = command.sop_instance_uid
            primitive.Priority = command.priority
            primitive.MoveOriginatorApplicationEntityTitle = command.move_originator_ae
            primitive.MoveOriginatorMessageID = command.move_originator_id
        except (ValueError, TypeError):
            return None
        return primitive

    def _hand_over(self) -> None:
        """Give this message's fragments so far to pynetdicom, and the rest of it after them."""
        pending, self._pending = self._pending, []
        self._command, self._data, self._request = [], [], None
        for context_id, value in pending:
            self._forward(context_id, value)

    def _forward(self, context_id: int, value: memoryview) -> None:
        primitive = P_DATA()
        item: Any = [context_id, bytes(value)]  # pynetdicom checks for a list, typed as tuple
        primitive.presentation_data_value_list = [item]
        dimse = self._dul.assoc.dimse
        dimse.receive_primitive(primitive)
        self._passthrough = dimse.message is not None

    def _serve(self, command: StoreCommand, primitive: C_STORE, context_id: int) -> None:
        """Run the bound C-STORE handler and answer, as pynetdicom's Storage SCP does."""
        assoc = self._dul.assoc
        context = assoc._accepted_cx[context_id]
        # As pynetdicom's service classes: an abort from the handler must not wait on this thread.
        assoc.abort = assoc._abort_nonblocking
        try:
            status = evt.trigger(
                assoc, evt.EVT_C_STORE, {"request": primitive, "context": context.as_tuple}
            )
        except Exception:
            self._log.exception("store_handler_failed", context_id=context_id)
            status = StoreStatus.PROCESSING_FAILURE
        finally:
            assoc.abort = assoc._abort_blocking
        if not assoc.is_established:
            return
        self._respond(command, context_id, _status_code(status))

    def _respond(self, command: StoreCommand, context_id: int, status: int) -> None:
        pdu = encode_store_response(context_id, command, status)
        limit = self._dul.assoc.requestor.maximum_length
        if limit and len(pdu) - 6 > limit:  # PS3.8 D.1: the peer's maximum P-DATA-TF length
            response = C_STORE()
            response.MessageIDBeingRespondedTo = command.message_id
            response.AffectedSOPClassUID = command.sop_class_uid
            response.AffectedSOPInstanceUID = command.sop_instance_uid
            response.Status = status
            self._dul.assoc.dimse.send_msg(response, context_id)
            return
        self._dul.socket.send(pdu)


def _status_code(status: object) -> int:
    """The status a handler returned, as pynetdicom reads it (an int or a Status dataset)."""
    if isinstance(status, int):
        return status
    if isinstance(status, Dataset) and "Status" in status:
        return int(status.Status)
    return StoreStatus.CANNOT_UNDERSTAND
