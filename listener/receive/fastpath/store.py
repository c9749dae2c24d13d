"""C-STORE requests served in the DUL thread, streamed from the P-DATA-TF PDUs to the spool.

pynetdicom turns each received PDU into PDU objects and a P-DATA primitive, decodes the command
set into a pydicom ``Dataset``, collects the whole data set in memory and queues the message for
the association thread, which builds the response through another ``Dataset``. For a C-STORE that
costs more than storing the instance, and an instance is held whole in memory. :class:`StorePath`
takes the fragments (PS3.8 Annex E) of each message as the DUL reads them; a C-STORE-RQ it can
serve (see :meth:`StorePath._admit`) is handed to the association's :class:`StreamedStore`
(the receiver), each data fragment written to the spool as it arrives, and its C-STORE-RSP is
written to the socket as one P-DATA-TF PDU. Every other message (C-ECHO, a malformed or unusual
C-STORE) is handed, fragment by fragment and in order, to pynetdicom's DIMSE provider, which
serves it as before, up to the same size cap. Association negotiation, release and abort stay
pynetdicom's.
"""

from __future__ import annotations

from typing import Any, Protocol

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
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
from listener.receive.intake import PendingStore, StoreRequest


class StreamedStore(Protocol):
    """Who stores the C-STOREs of an association as their fragments arrive (the receiver)."""

    @property
    def max_message_bytes(self) -> int:
        """The most bytes one message may carry; past it the association is aborted."""
        ...

    def begin_store(self, assoc: Association, request: StoreRequest) -> PendingStore: ...

    def finish_store(self, pending: PendingStore) -> int: ...


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


def lean_path_allowed(assoc: Association) -> bool:
    """Whether an association may use :class:`StorePath`: it has a :class:`StreamedStore`, and
    nothing listens for what the path skips."""
    # pynetdicom's STORE_RECV_CHUNKED_DATASET (set by the stock engine) changes only how
    # pynetdicom assembles the messages it serves; the lean path streams either way.
    if getattr(assoc, "store_stream", None) is None:
        return False
    for event in _SKIPPED_EVENTS:
        bound = assoc.get_handlers(event)
        if not isinstance(bound, list):  # an intervention event: one handler and its arguments
            bound = [bound] if bound is not None else []
        if any(entry[0] not in _STANDARD_HANDLERS for entry in bound):
            return False
    return True


class StorePath:
    """Assembles the messages of one association from their PDVs and serves its C-STOREs.

    ``dul.assoc.serving`` is a :class:`threading.Event` set once the association serves
    requests (see :class:`listener.receive.fastpath.association.EventAssociation`);
    ``dul.assoc.store_stream`` is its :class:`StreamedStore`.
    """

    def __init__(self, dul: Any) -> None:
        self._dul = dul
        self._log = get_logger("receive")
        self._pending: list[tuple[int, memoryview]] = []  # this command's PDVs, for a hand-over
        self._command: list[memoryview] = []
        self._request: tuple[StoreCommand, int, PendingStore] | None = None
        self._passthrough = False
        self._forwarded = 0  # bytes of the message being handed to pynetdicom

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

    def close(self) -> None:
        """The association is gone: drop a C-STORE cut short (its temporary file)."""
        request, self._request = self._request, None
        if request is not None:
            request[2].abandon()

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
        request = self._admit(command, context_id) if command is not None else None
        if command is None or request is None:
            self._hand_over()
            return
        self._pending = []
        stream = self._dul.assoc.store_stream
        self._request = (command, context_id, stream.begin_store(self._dul.assoc, request))

    def _on_data(self, context_id: int, value: memoryview) -> None:
        assert self._request is not None
        command, command_context, pending = self._request
        if value[0] & COMMAND_FRAGMENT or context_id != command_context:
            # PS3.8 Annex E: a message's data fragments follow its command on its context.
            self.close()
            self._dul.abort_for("a data set fragment came on another context or as a command")
            return
        pending.write(value[1:])
        if not value[0] & LAST_FRAGMENT:
            return
        self._request = None
        status = self._dul.assoc.store_stream.finish_store(pending)
        if self._dul.assoc.is_established:
            self._respond(command, context_id, status)

    def _admit(self, command: StoreCommand, context_id: int) -> StoreRequest | None:
        """The request to stream, if pynetdicom would serve it with the Storage service class.

        As ``Association._serve_request``: not during release, on an accepted context, for a
        SOP class without SOP Class Common Extended Negotiation (PS3.7 Annex D.3.3.6). The UIDs
        are not checked here: the receiver refuses an invalid one with a status.
        """
        assoc = self._dul.assoc
        # A peer may send its first request before the association thread has run the
        # EVT_ESTABLISHED handlers; pynetdicom would queue it until then, so wait as long.
        assoc.serving.wait(ESTABLISHED_WAIT_S)
        if not assoc.is_established or assoc._sent_release:
            return None
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            return None
        if command.sop_class_uid in assoc.acceptor.accepted_common_extended:
            return None
        if uid_to_service_class(str(context.abstract_syntax)) is not StorageServiceClass:
            return None
        return StoreRequest(
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            context_class=str(context.abstract_syntax),
            transfer_syntax=str(context.transfer_syntax[0]),
        )

    def _hand_over(self) -> None:
        """Give this message's fragments so far to pynetdicom, and the rest of it after them."""
        pending, self._pending = self._pending, []
        self._command = []
        self._forwarded = 0
        for context_id, value in pending:
            self._forward(context_id, value)

    def _forward(self, context_id: int, value: memoryview) -> None:
        self._forwarded += len(value)
        if self._forwarded > self._dul.assoc.store_stream.max_message_bytes:
            self._dul.abort_for("a message handed to pynetdicom is over max_instance_mb")
            return
        primitive = P_DATA()
        item: Any = [context_id, bytes(value)]  # pynetdicom checks for a list, typed as tuple
        primitive.presentation_data_value_list = [item]
        dimse = self._dul.assoc.dimse
        dimse.receive_primitive(primitive)
        self._passthrough = dimse.message is not None
        if not self._passthrough:
            self._forwarded = 0

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
