"""A DICOM requestor written with sockets and struct, for input no well-behaved toolkit sends.

pynetdicom and DCMTK validate what they send (UID lengths, PDU sizes), so the hostile-input
tests speak the upper layer protocol (PS3.8 §9.3) and the command set (PS3.7 Annex E) directly:
oversized PDU length fields, connections that stall inside a PDU, UIDs that are not UIDs, data
sets streamed from a generator without being held in memory.
"""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
P_DATA_TF = 0x04
A_ASSOCIATE_AC = 0x02
A_RELEASE_RQ = 0x05
A_ABORT = 0x07


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(
    contexts: list[tuple[str, list[str]]], *, calling: str = "RAWSCU", called: str = "PACSAI"
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 §9.3.2) proposing ``contexts`` (ids 1, 3, 5...)."""
    items = _item(0x10, APPLICATION_CONTEXT)
    for index, (abstract, syntaxes) in enumerate(contexts):
        body = bytes([2 * index + 1, 0, 0, 0]) + _item(0x30, abstract.encode())
        body += b"".join(_item(0x40, syntax.encode()) for syntax in syntaxes)
        items += _item(0x20, body)
    items += _item(0x50, _item(0x51, struct.pack(">I", 0)) + _item(0x52, b"1.2.826.0.1.99"))
    variable = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
    variable += b"\0" * 32 + items
    return struct.pack(">BBI", 0x01, 0, len(variable)) + variable


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``, or ConnectionError if it closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, body) of the next PDU."""
    kind, _, length = struct.unpack(">BBI", recv_exact(sock, 6))
    return kind, recv_exact(sock, length)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed the connection (reading what it still sent, e.g. an A-ABORT)."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, TimeoutError):
        return False
    return True


@dataclass
class Association:
    """An accepted association over a plain socket."""

    sock: socket.socket
    accepted: dict[int, str]  # context id -> transfer syntax
    message_id: int = 0

    def release(self) -> None:
        self.sock.sendall(struct.pack(">BBI", A_RELEASE_RQ, 0, 4) + b"\0" * 4)
        read_pdu(self.sock)
        self.sock.close()


def associate(
    port: int,
    contexts: list[tuple[str, list[str]]],
    *,
    calling: str = "RAWSCU",
    timeout: float = 30.0,
) -> Association:
    """Open an association; raises AssertionError unless it is accepted."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(associate_rq(contexts, calling=calling))
    kind, body = read_pdu(sock)
    assert kind == A_ASSOCIATE_AC, f"association not accepted (PDU type {kind:#x})"
    accepted: dict[int, str] = {}
    pos = 68  # protocol version, reserved, called and calling AE, reserved (PS3.8 §9.3.3)
    while pos < len(body):
        item, _, length = struct.unpack_from(">BBH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if item == 0x21 and value[2] == 0:  # presentation context item, accepted
            sub_length = struct.unpack_from(">H", value, 6)[0]
            accepted[value[0]] = value[8 : 8 + sub_length].decode().strip("\0")
        pos += 4 + length
    return Association(sock, accepted)


def element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 §7.1.2), value padded to even length."""
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    if vr in ("OB", "OW", "UN", "SQ", "UT"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def header(sop_instance: str, *, study: str = "1.2.3.4", series: str = "1.2.3.4.5") -> bytes:
    """The identifying elements of a CT image data set (explicit VR little endian)."""
    return b"".join(
        (
            element(0x0008, 0x0016, "UI", CT_IMAGE.encode()),
            element(0x0008, 0x0018, "UI", sop_instance.encode()),
            element(0x0008, 0x0060, "CS", b"CT"),
            element(0x0020, 0x000D, "UI", study.encode()),
            element(0x0020, 0x000E, "UI", series.encode()),
        )
    )


def private_blob(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A private creator and a private OB element of ``size`` zero bytes, as chunks."""
    yield element(0x0029, 0x0010, "LO", b"PACSAI TEST")
    yield struct.pack("<HH2sHI", 0x0029, 0x1000, b"OB", 0, size)
    zeros = bytes(chunk)
    for _ in range(size // chunk):
        yield zeros
    yield bytes(size % chunk)


def deflated(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Raw deflate (RFC 1951) of ``chunks``, as the Deflated transfer syntax wants (PS3.5 A.5)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def _command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    def el(elem: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HHI", 0, elem, len(value)) + value

    body = b"".join(
        (
            el(0x0002, sop_class.encode()),
            el(0x0100, struct.pack("<H", 0x0001)),  # C-STORE-RQ
            el(0x0110, struct.pack("<H", message_id)),
            el(0x0700, struct.pack("<H", 0)),
            el(0x0800, struct.pack("<H", 0)),  # a data set follows
            el(0x1000, sop_instance.encode()),
        )
    )
    return el(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 §9.3.5, Annex E.2 message control header)."""
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBI", P_DATA_TF, 0, len(pdv)) + pdv


def send_store(
    assoc: Association,
    context_id: int,
    sop_instance: str,
    data: Iterable[bytes],
    *,
    sop_class: str = CT_IMAGE,
    fragment: int = 16000,
) -> int:
    """Send one C-STORE whose data set is the concatenated ``data``; its response status."""
    assoc.message_id += 1
    assoc.sock.sendall(
        p_data(context_id, 0x03, _command(sop_class, sop_instance, assoc.message_id))
    )
    pending = bytearray()
    for chunk in data:
        pending += chunk
        view, pos = memoryview(pending), 0
        while len(pending) - pos > fragment:
            assoc.sock.sendall(p_data(context_id, 0x00, bytes(view[pos : pos + fragment])))
            pos += fragment
        view.release()
        del pending[:pos]
    assoc.sock.sendall(p_data(context_id, 0x02, bytes(pending)))
    return read_status(assoc.sock)


def read_status(sock: socket.socket) -> int:
    """The Status (0000,0900) of the next C-STORE-RSP, which must come in one PDV."""
    kind, body = read_pdu(sock)
    assert kind == P_DATA_TF, f"expected a response, got PDU type {kind:#x}"
    command = body[6:]
    pos = 0
    while pos < len(command):
        group, elem, length = struct.unpack_from("<HHI", command, pos)
        if (group, elem) == (0, 0x0900):
            return int(struct.unpack_from("<H", command, pos + 8)[0])
        pos += 8 + length
    raise AssertionError("response without a status")
