"""C-STORE command sets and P-DATA-TF PDUs as bytes, without pydicom datasets.

The receiver's hot path: pynetdicom decodes every command set into a pydicom ``Dataset`` and
encodes every response through one, which costs more than storing the instance. A C-STORE
command set is a handful of Implicit VR Little Endian elements of group 0000 (PS3.7 §9.3.1,
Annex E.1), so reading the request and writing the response directly is short and exact.
Anything these functions do not recognise is left to pynetdicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from listener.receive.status import StoreStatus

# PS3.7 Annex E.1: Command Field values.
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
# PS3.7 Annex E.1: Command Data Set Type "no data set present"; anything else means one follows.
NO_DATA_SET = 0x0101
# PS3.8 §9.3.1: PDU type of P-DATA-TF.
P_DATA_TF = 0x04
# PS3.8 Annex E.2: message control header bits.
COMMAND_FRAGMENT = 0x01
LAST_FRAGMENT = 0x02

# Command set elements of group 0000 (PS3.7 Annex E.1), by element number.
_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_RESPONDED_TO = 0x0120
_MOVE_ORIGINATOR_AE = 0x1030
_MOVE_ORIGINATOR_ID = 0x1031
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_PDV_HEADER = struct.Struct(">LBB")
_PDU_HEADER = struct.Struct(">BBL")


@dataclass(frozen=True)
class StoreCommand:
    """The parameters of a C-STORE-RQ command set (PS3.7 Table 9.3-1)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int
    move_originator_ae: str | None = None
    move_originator_id: int | None = None


def _elements(command: bytes) -> dict[int, bytes] | None:
    """Group 0000 elements by element number; None if the encoding is not a command set."""
    found: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(command, offset)
        offset += 8
        if group != 0 or offset + length > end:
            return None
        found[element] = command[offset : offset + length]
        offset += length
    return found


def _text(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii")


def _us(value: bytes | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == 2 else None


def parse_store_request(command: bytes) -> StoreCommand | None:
    """The C-STORE-RQ in an encoded command set, or None for any other or incomplete command.

    None also covers a C-STORE-RQ without a data set or without one of its mandatory fields
    (PS3.7 Table 9.3-1); the caller leaves such messages to pynetdicom, which answers them.
    """
    elements = _elements(command)
    if elements is None or _us(elements.get(_COMMAND_FIELD)) != C_STORE_RQ:
        return None
    message_id = _us(elements.get(_MESSAGE_ID))
    priority = _us(elements.get(_PRIORITY))
    data_set_type = _us(elements.get(_DATA_SET_TYPE))
    sop_class = elements.get(_AFFECTED_SOP_CLASS)
    sop_instance = elements.get(_AFFECTED_SOP_INSTANCE)
    if (
        message_id is None
        or priority is None
        or data_set_type in (None, NO_DATA_SET)
        or not sop_class
        or not sop_instance
    ):
        return None
    originator_ae = elements.get(_MOVE_ORIGINATOR_AE)
    try:
        return StoreCommand(
            message_id=message_id,
            sop_class_uid=_text(sop_class),
            sop_instance_uid=_text(sop_instance),
            priority=priority,
            move_originator_ae=_text(originator_ae) if originator_ae is not None else None,
            move_originator_id=_us(elements.get(_MOVE_ORIGINATOR_ID)),
        )
    except UnicodeDecodeError:
        return None


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"  # PS3.5 §6.2: UI values are padded with a trailing NULL
    return _ELEMENT.pack(0, element, len(value)) + value


def encode_store_response(
    context_id: int, request: StoreCommand, status: StoreStatus | int
) -> bytes:
    """One P-DATA-TF PDU carrying the whole C-STORE-RSP command set (PS3.7 Table 9.3-2).

    The single PDV holds the last (and only) command fragment (message control header 0x03,
    PS3.8 Annex E.2); the response has no data set.
    """
    body = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS, request.sop_class_uid.encode("ascii")),
            _element(_COMMAND_FIELD, _US.pack(C_STORE_RSP)),
            _element(_RESPONDED_TO, _US.pack(request.message_id)),
            _element(_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
            _element(_STATUS, _US.pack(int(status))),
            _element(_AFFECTED_SOP_INSTANCE, request.sop_instance_uid.encode("ascii")),
        )
    )
    command = _element(_GROUP_LENGTH, struct.pack("<L", len(body))) + body
    pdv = _PDV_HEADER.pack(len(command) + 2, context_id, COMMAND_FRAGMENT | LAST_FRAGMENT)
    return _PDU_HEADER.pack(P_DATA_TF, 0, len(pdv) + len(command)) + pdv + command


def split_pdvs(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The (context ID, message control header + fragment) items of a P-DATA-TF PDU body.

    PS3.8 §9.3.5: each item is a 4-byte length, a context ID and the value. None if an item
    runs past the end or is too short to hold its header, which makes the PDU invalid.
    """
    items: list[tuple[int, memoryview]] = []
    offset, end = 0, len(body)
    while offset < end:
        if offset + 6 > end:
            return None
        length = _PDV_HEADER.unpack_from(body, offset)[0]
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((body[offset + 4], body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items
