"""What the receiver reads from an instance without decoding it: the identifying UIDs, checked
against PS3.5 §9.1, found by walking the encoded elements (PS3.5 §7) of bytes or of an mmap of a
spool file; and the PS3.10 file meta it writes in front of a received data set.

A deflated data set (PS3.5 §A.5) is inflated a chunk at a time into a scratch file, up to a cap,
so neither a large instance nor a deflate bomb is ever held whole in memory.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from pydicom.filereader import read_file_meta_info

from listener.errors import InstanceTooLargeError, InvalidDatasetError, MissingIdentifierError
from listener.store.header_text import SPECIFIC_CHARACTER_SET, character_sets, decode_header_text
from listener.store.journal import InstanceRecord

# PS3.5 §9.1: a UID is components of digits separated by dots, no component with a leading zero
# (a lone "0" is allowed), nothing else (no padding, no trailing newline), at most 64 characters.
# Checked before a UID names a file or folder.
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CHUNK = 1 << 20
DEFAULT_MAX_INFLATED = 256 * 1024 * 1024


# What the header walk reads: bytes, or an mmap of a spool file.
_Buffer = bytes | mmap.mmap


_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
]


@dataclass(frozen=True)
class InstanceHeader:
    """The few attributes the receiver needs, read without touching the pixel data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    modality: str | None
    patient_id: str | None
    patient_name: str | None

    def record(
        self,
        path: str,
        size: int,
        received_at: float,
        association_id: str | None = None,
        digest: str | None = None,
    ) -> InstanceRecord:
        """The journal row of this instance, stored at ``path`` (relative to the spool)."""
        return InstanceRecord(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            modality=self.modality,
            transfer_syntax=self.transfer_syntax,
            path=path,
            size=size,
            received_at=received_at,
            generation=0,
            association_id=association_id,
            digest=digest,
        )


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid UID (PS3.5 §9.1)."""
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 §9.1), in words without the value; None if it is."""
    if not value:
        return "is empty"
    if len(value) > 64:
        return f"has {len(value)} characters, over 64"
    if _UID_RE.fullmatch(value) is None:
        return "is not dot-separated digits without leading zeros"
    return None


def read_header(
    dataset: _Buffer,
    transfer_syntax: str,
    *,
    start: int = 0,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    scratch_dir: Path | None = None,
) -> InstanceHeader:
    """The identifying attributes of an encoded dataset (no file meta), checking it is whole.

    ``dataset`` is bytes or an mmap of a spool file whose data set begins at ``start``. Raises
    InvalidDatasetError when the bytes are not a complete dataset or lack one of the identifying
    UIDs (SOP Class/Instance, Study and Series Instance UID are Type 1, PS3.3 C.12.1, C.7.2.1 and
    C.7.3.1), InstanceTooLargeError when a deflated data set inflates to more than
    ``max_inflated`` bytes (inflated into a file under ``scratch_dir`` when given, never held
    whole). Values are read from the encoded bytes; nothing is decoded into a pydicom dataset,
    and pixel data is skipped, not read.
    """
    try:
        values = walk_dataset(
            dataset,
            transfer_syntax,
            start=start,
            max_inflated=max_inflated,
            scratch_dir=scratch_dir,
        )
    except struct.error as exc:
        raise InvalidDatasetError("dataset cannot be parsed") from exc
    uids = {}
    for tag in _HEADER_TAGS[:4]:
        value = values.get(tag, "")
        if not value:
            raise MissingIdentifierError(f"dataset has no {tag}")
        problem = uid_problem(value)
        if problem is not None:
            raise MissingIdentifierError(f"dataset {tag} is not a valid UID: it {problem}")
        uids[tag] = value
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax=transfer_syntax,
        modality=values.get("Modality") or None,
        patient_id=values.get("PatientID") or None,
        patient_name=values.get("PatientName") or None,
    )


def split_file(data: bytes) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes) of a PS3.10 file (preamble, DICM, meta, dataset)."""
    values, end = file_meta_values(data)
    syntax = values.get(0x00020010, "")
    if not syntax:
        raise InvalidDatasetError("file meta has no Transfer Syntax UID")
    return syntax, data[end:]


def file_meta_values(data: bytes) -> tuple[dict[int, str], int]:
    """The text values of a PS3.10 file's meta elements (PS3.10 §7.1) by tag, and where its
    data set begins; ``data`` holds at least the preamble, ``DICM`` and group 0002."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise InvalidDatasetError("not a DICOM file (no DICM prefix)")
    (meta_length,) = struct.unpack_from("<I", data, 140)
    if len(data) < 144 + meta_length:
        raise InvalidDatasetError("file meta is cut short")
    meta = _Walker(data[144 : 144 + meta_length], implicit=False, little=True)
    values: dict[int, str] = {}
    pos = 0
    while pos < len(meta.data):
        tag, vr, start, length = meta.element(pos)
        pos = meta.skip_value(tag, vr, start, length)
        if vr in (b"UI", b"AE", b"SH", b"UR"):
            values[tag] = meta.data[start:pos].decode("ascii", "replace").strip("\0 ")
    return values, 144 + meta_length


def read_file_header(
    path: Path,
    transfer_syntax: str,
    *,
    start: int,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    scratch_dir: Path | None = None,
) -> InstanceHeader:
    """:func:`read_header` of the data set at ``start`` in the file ``path``, read through mmap
    (only the pages of element headers are touched, never the pixel data)."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size <= start:
            return read_header(b"", transfer_syntax)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return read_header(
                view,
                transfer_syntax,
                start=start,
                max_inflated=max_inflated,
                scratch_dir=scratch_dir,
            )


def meta_end(path: Path) -> int:
    """Where the data set begins in a PS3.10 file: after the preamble, DICM and group 0002."""
    with path.open("rb") as handle:
        head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise InvalidDatasetError("not a DICOM file (no DICM prefix)")
    (meta_length,) = struct.unpack_from("<I", head, 140)
    return int(144 + meta_length)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 §7.1.2)."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UR"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1612.1"
IMPLEMENTATION_VERSION = "PACSAI_010"


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    source_ae: str,
    called_ae: str = "",
    peer: tuple[str, int] | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 §7.1) for a received dataset.

    Built directly as bytes (it is a handful of fixed elements) so that storing an instance
    costs no pydicom dataset construction. The association that brought it is kept with it
    (PS3.10 Table 7.1-1): Source and Sending Application Entity Title (the calling AE),
    Receiving Application Entity Title (the called AE) and Sending Presentation Address
    (``dicom://host:port`` of the peer), so that the file alone says who sent it when the journal
    has to be rebuilt from the spool (:func:`listener.store.spool.reindex`).
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _padded(sop_class_uid, b"\0")),
            _element(0x0002, 0x0003, b"UI", _padded(sop_instance_uid, b"\0")),
            _element(0x0002, 0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _element(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\0")),
            _element(0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
        )
    )
    if source_ae:
        body += _element(0x0002, 0x0016, b"AE", _padded(source_ae, b" "))
        body += _element(0x0002, 0x0017, b"AE", _padded(source_ae, b" "))
    if called_ae:
        body += _element(0x0002, 0x0018, b"AE", _padded(called_ae, b" "))
    if peer is not None:
        host, port = peer
        address = f"dicom://[{host}]:{port}" if ":" in host else f"dicom://{host}:{port}"
        body += _element(0x0002, 0x0027, b"UR", _padded(address, b" "))
    length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + length + body


@dataclass(frozen=True)
class FileSender:
    """The association facts a spool file's meta information holds (see encode_file_meta)."""

    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int


def file_sender(path: Path) -> FileSender | None:
    """Who sent the spool file at ``path``, from its file meta; None if it does not say."""
    meta = read_file_meta_info(path)
    calling = str(meta.get("SendingApplicationEntityTitle") or "").strip()
    calling = calling or str(meta.get("SourceApplicationEntityTitle") or "").strip()
    address = urlsplit(str(meta.get("SendingPresentationAddress") or "").strip())
    if not calling or address.hostname is None:
        return None
    called = str(meta.get("ReceivingApplicationEntityTitle") or "").strip()
    return FileSender(calling, called, address.hostname, address.port or 0)


# --- a header walk that checks the dataset is complete -------------------------------------

# PS3.5 §7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
_LONG_VRS |= frozenset({b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


class _Walker:
    """Walks encoded elements (PS3.5 §7) without decoding values; raises on truncation.

    Elements of one data set or item must come in ascending tag order (PS3.5 §7.1); a repeated
    or decreasing tag ends the walk, so a run of zeros cannot keep it busy 8 bytes at a time.
    """

    def __init__(self, data: _Buffer, *, implicit: bool, little: bool) -> None:
        self.data = data
        self.end = len(data)
        self.implicit = implicit
        self.order = "<" if little else ">"

    def element(self, pos: int) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value offset, value length) of the element at ``pos``."""
        data = self.data
        if pos + 8 > self.end:
            raise InvalidDatasetError("dataset is truncated in an element header")
        group, elem = struct.unpack_from(self.order + "HH", data, pos)
        tag = group << 16 | elem
        if self.implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(self.order + "I", data, pos + 4)
            return tag, b"", pos + 8, length
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise InvalidDatasetError("dataset is truncated in an element header")
            (length,) = struct.unpack_from(self.order + "I", data, pos + 8)
            return tag, vr, pos + 12, length
        (length,) = struct.unpack_from(self.order + "H", data, pos + 6)
        return tag, vr, pos + 8, length

    def skip(self, pos: int, end_tag: int | None = None) -> int:
        """Walk elements from ``pos`` to the end (or past ``end_tag``); return the end offset."""
        last = -1
        while pos < self.end:
            tag, vr, start, length = self.element(pos)
            if tag == end_tag:
                return start
            last = _ascending(last, tag)
            pos = self.skip_value(tag, vr, start, length)
        if end_tag is not None:
            raise InvalidDatasetError("dataset is truncated inside a sequence")
        return pos

    def skip_value(self, tag: int, vr: bytes, start: int, length: int) -> int:
        if length != _UNDEFINED:
            end = start + length
            if end > self.end:
                raise InvalidDatasetError("dataset is truncated inside an element value")
            return end
        return self._skip_items(start)

    def _skip_items(self, pos: int) -> int:
        # Undefined length (PS3.5 §7.5): items until a Sequence Delimitation Item; works for
        # sequences and for encapsulated pixel data, whose fragments are defined-length items.
        while True:
            tag, _, start, length = self.element(pos)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise InvalidDatasetError("malformed sequence or encapsulated pixel data")
            pos = start + length if length != _UNDEFINED else self.skip(start, _ITEM_END)
            if pos > self.end:
                raise InvalidDatasetError("dataset is truncated inside an item")


def _ascending(last: int, tag: int) -> int:
    if tag <= last:
        raise InvalidDatasetError("data elements are not in ascending tag order (PS3.5 §7.1)")
    return tag


_WANTED = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00080060: "Modality",
    0x00100020: "PatientID",
    0x00100010: "PatientName",
}


def walk_dataset(
    data: _Buffer,
    transfer_syntax: str,
    *,
    start: int = 0,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    scratch_dir: Path | None = None,
) -> dict[str, str]:
    """The top-level values :data:`_WANTED` of an encoded dataset, checking it is complete.

    Every element is walked (values skipped), so a dataset cut short anywhere, including in
    its pixel data, is refused rather than stored. Deflated datasets (PS3.5 §A.5) are inflated
    first, a chunk at a time and at most ``max_inflated`` bytes, into a scratch file under
    ``scratch_dir`` (or memory without one).
    """
    if transfer_syntax in DEFLATED:
        return _walk_inflated(data, start, max_inflated, scratch_dir)
    walker = _Walker(
        data,
        implicit=transfer_syntax == IMPLICIT_VR_LE,
        little=transfer_syntax != EXPLICIT_VR_BE,
    )
    found: dict[str, str] = {}
    charsets: list[str] = []  # listener.store.header_text: names in the dataset's own sets
    pos, last = start, -1
    while pos < walker.end:
        tag, vr, value_start, length = walker.element(pos)
        last = _ascending(last, tag)
        pos = walker.skip_value(tag, vr, value_start, length)
        if tag == SPECIFIC_CHARACTER_SET:
            charsets = character_sets(bytes(data[value_start:pos]))
        elif tag in _WANTED and length != _UNDEFINED:
            found[_WANTED[tag]] = decode_header_text(tag, bytes(data[value_start:pos]), charsets)
    return found


def _walk_inflated(
    data: _Buffer, start: int, max_inflated: int, scratch_dir: Path | None
) -> dict[str, str]:
    # A deflated data set is explicit VR little endian once inflated (PS3.5 §A.5).
    if scratch_dir is None:
        sink = io.BytesIO()
        _inflate(data, start, max_inflated, sink)
        return walk_dataset(sink.getvalue(), "1.2.840.10008.1.2.1")
    scratch = scratch_dir / f"{uuid.uuid4().hex}.inflated"
    try:
        with scratch.open("w+b") as handle:
            _inflate(data, start, max_inflated, handle)
            handle.flush()
            if handle.tell() == 0:
                return {}
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return walk_dataset(view, "1.2.840.10008.1.2.1")
    finally:
        scratch.unlink(missing_ok=True)


def _inflate(data: _Buffer, start: int, limit: int, sink: BinaryIO) -> None:
    """Inflate raw deflate (RFC 1951) from ``data[start:]`` into ``sink``, at most ``limit``
    bytes, never more than a chunk in memory."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pos, end, total = start, len(data), 0
    try:
        while not inflater.eof:
            if inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            elif pos < end:
                chunk = data[pos : pos + _CHUNK]
                pos += len(chunk)
            else:
                break
            out = inflater.decompress(chunk, _CHUNK)
            total += len(out)
            if total > limit:
                raise InstanceTooLargeError(
                    f"deflated data set inflates to more than {limit // (1024 * 1024)} MiB"
                )
            sink.write(out)
    except zlib.error as exc:
        raise InvalidDatasetError("deflated dataset cannot be inflated") from exc
    if not inflater.eof:
        raise InvalidDatasetError("deflated dataset is truncated")
