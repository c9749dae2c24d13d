"""C-STORE command sets and P-DATA-TF PDUs as bytes, checked against pynetdicom's own codec."""

from __future__ import annotations

from io import BytesIO

from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

from listener.receive.fastpath.codec import (
    StoreCommand,
    encode_store_response,
    parse_store_request,
    split_pdvs,
)
from listener.receive.status import StoreStatus


def _command_bytes(message: DIMSEMessage) -> bytes:
    """The command set pynetdicom encodes for a message (fragment headers stripped)."""
    fragments = [
        data[1:]
        for primitive in message.encode_msg(1, 0)
        for _, data in primitive.presentation_data_value_list
        if data[0] & 1
    ]
    return b"".join(fragments)


def _store_request(**extra: object) -> tuple[C_STORE, bytes]:
    request = C_STORE()
    request.MessageID = 42
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = generate_uid()
    request.Priority = 1
    for name, value in extra.items():
        setattr(request, name, value)
    request.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return request, _command_bytes(message)


def test_store_request_is_read_as_pynetdicom_wrote_it() -> None:
    """Every C-STORE-RQ field pynetdicom encodes comes back from the byte reader."""
    request, command = _store_request(
        MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=9
    )
    assert parse_store_request(command) == StoreCommand(
        message_id=42,
        sop_class_uid=CTImageStorage,
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        priority=1,
        move_originator_ae="MOVER",
        move_originator_id=9,
    )


def test_other_commands_and_damaged_ones_are_not_read() -> None:
    """A C-ECHO-RQ, a truncated command set and a non-command group all give None."""
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    _, store = _store_request()
    assert parse_store_request(_command_bytes(message)) is None
    assert parse_store_request(store[:-3]) is None
    assert parse_store_request(b"\x08\x00" + store[2:]) is None


def test_store_response_decodes_in_pynetdicom() -> None:
    """The response PDU is one P-DATA-TF that pynetdicom decodes to the same C-STORE-RSP."""
    _, command = _store_request()
    request = parse_store_request(command)
    assert request is not None
    pdu_bytes = encode_store_response(5, request, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    pdu = P_DATA_TF()
    pdu.decode(pdu_bytes)
    message = DIMSEMessage()
    assert message.decode_msg(pdu.to_primitive())
    response = message.message_to_primitive()
    assert message.context_id == 5
    assert isinstance(response, C_STORE)
    assert response.MessageIDBeingRespondedTo == 42
    assert response.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert response.AffectedSOPClassUID == request.sop_class_uid
    assert response.AffectedSOPInstanceUID == request.sop_instance_uid
    assert message.command_set.CommandGroupLength == len(pdu_bytes) - 6 - 6 - 12


def test_pdv_items_are_split_and_overruns_refused() -> None:
    """PDV items come back with their context IDs; an item running past the PDU is refused."""
    body = b"\x00\x00\x00\x03\x01\x03\xaa" + b"\x00\x00\x00\x02\x03\x00"
    items = split_pdvs(memoryview(body))
    assert items is not None
    assert [(cid, bytes(value)) for cid, value in items] == [(1, b"\x03\xaa"), (3, b"\x00")]
    assert split_pdvs(memoryview(body[:-1])) is None
    assert split_pdvs(memoryview(b"\x00\x00\x00\x01\x01")) is None
