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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from listener.errors import InvalidDatasetError, StorageFullError
from listener.journal import InstanceRecord, Journal

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


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid UID (PS3.5 §9.1)."""
    return len(value) <= 64 and bool(_UID_RE.match(value))


def read_header(data: bytes) -> InstanceHeader:
    """Parse the header of a PS3.10 file (preamble, meta, dataset), stopping before PixelData.

    Raises InvalidDatasetError when the bytes are not a readable dataset or lack one of the
    identifying UIDs (SOP Class/Instance, Study and Series Instance UID are Type 1, PS3.3 C.12.1
    and C.7.2.1/C.7.3.1).
    """
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        values = {tag: ds.get(tag) for tag in _HEADER_TAGS}
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidDatasetError(f"dataset cannot be parsed: {type(exc).__name__}") from exc
    uids = {}
    for tag in _HEADER_TAGS[:4]:
        value = str(values[tag] or "").strip("\0 ")
        if not value:
            raise InvalidDatasetError(f"dataset has no {tag}")
        if not is_uid(value):
            raise InvalidDatasetError(f"dataset {tag} is not a valid UID")
        uids[tag] = value
    name = values["PatientName"]
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax=transfer_syntax,
        modality=_text(values["Modality"]),
        patient_id=_text(values["PatientID"]),
        patient_name=_text(name),
    )


def _text(value: object) -> str | None:
    return None if value is None or str(value) == "" else str(value)


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
    that no longer parse are moved to the quarantine.
    """
    known = journal.known_paths()
    added = 0
    for relative in spool.files():
        if relative in known:
            continue
        path = spool.root / relative
        try:
            header = read_header(path.read_bytes())
        except InvalidDatasetError as exc:
            reason = {"reason": str(exc), "spool_path": relative, "time_utc": _utc(now)}
            spool.quarantine([path.read_bytes()], reason)
            path.unlink()
            continue
        record = InstanceRecord(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            modality=header.modality,
            transfer_syntax=header.transfer_syntax,
            path=relative,
            size=path.stat().st_size,
            received_at=now,
            generation=0,
        )
        added += journal.record_instance(
            record,
            quiet_period_s=quiet_period_s,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
        )
    return added


def _utc(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 §7.1.2)."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1612.1"
IMPLEMENTATION_VERSION = "PACSAI_010"


def encode_file_meta(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 §7.1) for a received dataset.

    Built directly as bytes (it is a handful of fixed elements) so that storing an instance
    costs no pydicom dataset construction. The Source Application Entity Title records the
    calling AE (PS3.10 Table 7.1-1).
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
    length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + length + body
