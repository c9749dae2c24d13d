"""The spool: received instances on disk, written so that a crash never leaves a partial file.

Layout under the spool root::

    .tmp/<random>.part            being written; removed at start-up (never a visible instance)
    <study>/<series>/<sop>.dcm    complete DICOM files (PS3.10 file format), as received

An instance is written to ``.tmp``, fsynced, renamed into place and the directory fsynced; only
then is it recorded in the journal and the C-STORE answered. Instances that cannot be stored go
to the quarantine folder with a JSON reason file (no patient data in it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydicom.filereader import read_file_meta_info

from listener.errors import InvalidDatasetError, MissingIdentifierError, StorageFullError
from listener.store.header_text import SPECIFIC_CHARACTER_SET, character_sets, decode_header_text
from listener.store.journal import AssociationRecord, InstanceRecord, Journal
from listener.timing import utc_text

TMP_DIR = ".tmp"
# PS3.5 §9.1: a UID is digits and dots, at most 64 characters. Checked before it names a file.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
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
        )


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid UID (PS3.5 §9.1)."""
    return len(value) <= 64 and bool(_UID_RE.match(value))


def read_header(dataset: bytes, transfer_syntax: str) -> InstanceHeader:
    """The identifying attributes of an encoded dataset (no file meta), checking it is whole.

    Raises InvalidDatasetError when the bytes are not a complete dataset or lack one of the
    identifying UIDs (SOP Class/Instance, Study and Series Instance UID are Type 1, PS3.3 C.12.1,
    C.7.2.1 and C.7.3.1). Values are read from the encoded bytes; nothing is decoded into a
    pydicom dataset, and pixel data is skipped, not read.
    """
    try:
        values = walk_dataset(dataset, transfer_syntax)
    except struct.error as exc:
        raise InvalidDatasetError("dataset cannot be parsed") from exc
    uids = {}
    for tag in _HEADER_TAGS[:4]:
        value = values.get(tag, "")
        if not value:
            raise MissingIdentifierError(f"dataset has no {tag}")
        if not is_uid(value):
            raise MissingIdentifierError(f"dataset {tag} is not a valid UID")
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
    if len(data) < 144 or data[128:132] != b"DICM":
        raise InvalidDatasetError("not a DICOM file (no DICM prefix)")
    (meta_length,) = struct.unpack_from("<I", data, 140)
    meta = _Walker(data[144 : 144 + meta_length], implicit=False, little=True)
    syntax = ""
    pos = 0
    while pos < len(meta.data):
        tag, vr, start, length = meta.element(pos)
        pos = meta.skip_value(tag, vr, start, length)
        if tag == 0x00020010:
            syntax = meta.data[start:pos].decode("ascii").strip("\0 ")
    if not syntax:
        raise InvalidDatasetError("file meta has no Transfer Syntax UID")
    return syntax, data[144 + meta_length :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable writes of received instances under one root folder."""

    def __init__(self, root: Path, quarantine: Path, *, min_free_mb: int = 0) -> None:
        self.root = root
        self.quarantine_dir = quarantine
        self.min_free_mb = min_free_mb
        self.tmp = root / TMP_DIR
        for folder in (self.root, self.tmp, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def clean_temporary(self) -> int:
        """Remove files a crash left in ``.tmp``; return how many. Call before receiving."""
        removed = 0
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_mb(self) -> float:
        """Free space on the spool's file system, in MiB."""
        return shutil.disk_usage(self.root).free / (1024 * 1024)

    def check_space(self) -> None:
        """Raise StorageFullError when free space is under the watermark."""
        free = self.free_mb()
        if free < self.min_free_mb:
            raise StorageFullError(
                f"free space {free:.0f} MiB is under the watermark of {self.min_free_mb} MiB"
            )

    def relative_path(self, header: InstanceHeader) -> str:
        """Where an instance lives, relative to the root: ``<study>/<series>/<sop>.dcm``."""
        return f"{header.study_uid}/{header.series_uid}/{header.sop_instance_uid}.dcm"

    def write(self, header: InstanceHeader, chunks: list[bytes]) -> tuple[str, int]:
        """Write an instance durably; return its relative path and size in bytes.

        The bytes go to a temporary file that is fsynced and then renamed into place; the
        rename is made durable by fsyncing the directory (and any directory just created).
        """
        relative = self.relative_path(header)
        final = self.root / relative
        self._ensure_dir(final.parent)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            size = _write_durably(tmp, chunks)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return relative, size

    def _ensure_dir(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = [folder, *(p for p in folder.parents if not p.is_dir())]
        folder.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            _fsync_dir(created.parent)

    def quarantine(self, chunks: list[bytes], reason: Mapping[str, object]) -> Path:
        """Keep rejected bytes with a JSON reason file; return the data file's path."""
        stem = f"{reason.get('time_utc', '')}-{uuid.uuid4().hex[:12]}".replace(":", "")
        data_path = self.quarantine_dir / f"{stem}.dcm"
        _write_durably(data_path, chunks)
        reason_path = self.quarantine_dir / f"{stem}.json"
        reason_path.write_text(json.dumps(reason, indent=2, sort_keys=True))
        _fsync_dir(self.quarantine_dir)
        return data_path

    def files(self) -> list[str]:
        """Every complete instance file, relative to the root (``.tmp`` excluded)."""
        out = []
        for path in self.root.glob("*/*/*.dcm"):
            relative = path.relative_to(self.root).as_posix()
            if not relative.startswith(TMP_DIR):
                out.append(relative)
        return out


def _write_durably(path: Path, chunks: list[bytes]) -> int:
    size = 0
    with path.open("wb") as handle:
        for chunk in chunks:
            size += handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return size


def reindex(spool: Spool, journal: Journal, *, quiet_period_s: float, now: float) -> int:
    """Record spool files the journal does not know (lost journal commits); return how many.

    The journal commits without fsync (WAL, ``synchronous=NORMAL``); the spool file was fsynced
    before the C-STORE was acknowledged, so after a power failure the spool is the truth. Files
    that no longer parse are moved to the quarantine. Each file's sender (its file meta) becomes
    a ``recovered`` association record, one per sender, so the routing rules still see who sent
    it (:meth:`Journal.senders`).
    """
    known = journal.known_paths()
    added = 0
    recovered: dict[FileSender, AssociationRecord] = {}
    for relative in spool.files():
        if relative in known:
            continue
        path = spool.root / relative
        try:
            syntax, dataset = split_file(path.read_bytes())
            header = read_header(dataset, syntax)
        except InvalidDatasetError as exc:
            reason = {
                "reason": str(exc),
                "spool_path": relative,
                "time_utc": utc_text(now, precise=True),
            }
            spool.quarantine([path.read_bytes()], reason)
            path.unlink()
            continue
        sender = file_sender(path)
        association = None
        if sender is not None:
            association = recovered.get(sender)
            if association is None:
                association = recovered[sender] = _recovered_association(journal, sender, now)
            association.stored += 1
        record = header.record(
            relative, path.stat().st_size, now, association.id if association else None
        )
        added += journal.record_instance(
            record,
            quiet_period_s=quiet_period_s,
            calling_ae=sender.calling_ae if sender else None,
            called_ae=sender.called_ae if sender else None,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
        )
    for association in recovered.values():
        journal.end_association(association, ended="recovered", now=now)
    return added


def _recovered_association(journal: Journal, sender: FileSender, now: float) -> AssociationRecord:
    record = AssociationRecord(
        id=f"recovered-{uuid.uuid4().hex[:12]}",
        peer_host=sender.peer_host,
        peer_port=sender.peer_port,
        calling_ae=sender.calling_ae,
        called_ae=sender.called_ae,
        started_at=now,
    )
    journal.start_association(record)
    return record


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
    has to be rebuilt from the spool (:func:`reindex`).
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
    """Walks encoded elements (PS3.5 §7) without decoding values; raises on truncation."""

    def __init__(self, data: bytes, *, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.order = "<" if little else ">"

    def element(self, pos: int) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value offset, value length) of the element at ``pos``."""
        data = self.data
        if pos + 8 > len(data):
            raise InvalidDatasetError("dataset is truncated in an element header")
        group, elem = struct.unpack_from(self.order + "HH", data, pos)
        tag = group << 16 | elem
        if self.implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(self.order + "I", data, pos + 4)
            return tag, b"", pos + 8, length
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise InvalidDatasetError("dataset is truncated in an element header")
            (length,) = struct.unpack_from(self.order + "I", data, pos + 8)
            return tag, vr, pos + 12, length
        (length,) = struct.unpack_from(self.order + "H", data, pos + 6)
        return tag, vr, pos + 8, length

    def skip(self, pos: int, end_tag: int | None = None) -> int:
        """Walk elements from ``pos`` to the end (or past ``end_tag``); return the end offset."""
        while pos < len(self.data):
            tag, vr, start, length = self.element(pos)
            if tag == end_tag:
                return start
            pos = self.skip_value(tag, vr, start, length)
        if end_tag is not None:
            raise InvalidDatasetError("dataset is truncated inside a sequence")
        return pos

    def skip_value(self, tag: int, vr: bytes, start: int, length: int) -> int:
        if length != _UNDEFINED:
            end = start + length
            if end > len(self.data):
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
            if pos > len(self.data):
                raise InvalidDatasetError("dataset is truncated inside an item")


_WANTED = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00080060: "Modality",
    0x00100020: "PatientID",
    0x00100010: "PatientName",
}


def walk_dataset(data: bytes, transfer_syntax: str) -> dict[str, str]:
    """The top-level values :data:`_WANTED` of an encoded dataset, checking it is complete.

    Every element is walked (values skipped), so a dataset cut short anywhere, including in
    its pixel data, is refused rather than stored. Deflated datasets are inflated first.
    """
    if transfer_syntax in DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data)
        except zlib.error as exc:
            raise InvalidDatasetError("deflated dataset cannot be inflated") from exc
        if not inflater.eof:
            raise InvalidDatasetError("deflated dataset is truncated")
    walker = _Walker(
        data,
        implicit=transfer_syntax == IMPLICIT_VR_LE,
        little=transfer_syntax != EXPLICIT_VR_BE,
    )
    found: dict[str, str] = {}
    charsets: list[str] = []  # listener.store.header_text: names in the dataset's own sets
    pos = 0
    while pos < len(data):
        tag, vr, start, length = walker.element(pos)
        pos = walker.skip_value(tag, vr, start, length)
        if tag == SPECIFIC_CHARACTER_SET:
            charsets = character_sets(data[start:pos])
        elif tag in _WANTED and length != _UNDEFINED:
            found[_WANTED[tag]] = decode_header_text(tag, data[start:pos], charsets)
    return found
