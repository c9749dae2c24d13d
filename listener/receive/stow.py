"""STOW-RS receive (PS3.18 §10.5): a ``multipart/related; type="application/dicom"`` body whose
parts are PS3.10 files, each stored through the same intake as a C-STORE.

The body is parsed as it arrives (python-multipart's push parser; never held whole in memory).
Each part's file meta (PS3.10 §7.1) is gathered first: its Media Storage SOP Class and Instance
UIDs and Transfer Syntax stand in for the C-STORE command and the negotiated presentation
context; the data set after it is streamed into :class:`~listener.receive.intake.Intake` exactly
as a C-STORE's fragments are (spool ``.tmp``, checks, the claim by link, the journal, the
quarantine), so the spooled data set is byte for byte the uploaded one and the file meta is the
gateway's own, naming the uploader as its sender. The answer per part is the C-STORE status the
intake gives; :func:`store_response` turns them into the PS3.18 store response.

A request is admitted like an association (:func:`~listener.receive.admission.admission`), with
the ``dicomweb_ae_title`` setting as its calling AE title and the client's address as its peer,
and it is journaled as one association record, so the routing rules see who sent the study.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import Dataset
from pynetdicom import AllStoragePresentationContexts
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from listener.errors import InvalidDatasetError
from listener.logging import get_logger
from listener.receive.intake import Intake, PendingStore, StoreRequest
from listener.receive.server import REQUIRED_STORAGE_CLASSES
from listener.receive.status import STORED_STATUSES, StoreStatus
from listener.store.header import file_meta_values
from listener.store.journal import AssociationRecord

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
# The file meta of a part must fit in this much: it is buffered before the data set streams.
MAX_META_BYTES = 64 * 1024
_STORAGE_CLASSES = frozenset(
    [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    + list(REQUIRED_STORAGE_CLASSES)
)
_MEDIA_SOP_CLASS, _MEDIA_SOP_INSTANCE, _TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010

_log = get_logger("receive")


class StowRequestError(ValueError):
    """The request as a whole is not a STOW-RS request (answered 400 or 415)."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status


@dataclass(frozen=True)
class PartResult:
    """What became of one part: its UIDs (when its file meta named them) and its status."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: StoreStatus
    reason: str | None = None

    @property
    def stored(self) -> bool:
        return self.status in STORED_STATUSES


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a STOW-RS request's ``Content-Type`` (PS3.18 §10.5.1.1, RFC 2387)."""
    media, params = parse_options_header(content_type)
    if media != b"multipart/related":
        raise StowRequestError(415, "Content-Type must be multipart/related")
    kind = params.get(b"type", DICOM_MEDIA_TYPE.encode()).decode("latin-1").lower()
    if kind != DICOM_MEDIA_TYPE:
        raise StowRequestError(415, f'only type="{DICOM_MEDIA_TYPE}" parts are accepted')
    boundary = params.get(b"boundary")
    if not boundary:
        raise StowRequestError(400, "Content-Type has no boundary")
    return bytes(boundary)


class _Part:
    """One body part: its file meta gathered, then its data set streamed into the intake."""

    def __init__(self, upload: StowUpload, content_type: str | None) -> None:
        self._upload = upload
        self._head = bytearray()
        self.pending: PendingStore | None = None
        self.failure: PartResult | None = None
        if content_type is not None and content_type.lower() != DICOM_MEDIA_TYPE:
            self._fail(StoreStatus.CANNOT_UNDERSTAND, f"part media type {content_type!r}")

    def _fail(
        self,
        status: StoreStatus,
        reason: str,
        sop_class: str | None = None,
        sop_instance: str | None = None,
    ) -> None:
        self.failure = PartResult(sop_class, sop_instance, status, reason)

    def write(self, data: bytes) -> None:
        if self.failure is not None:
            return
        if self.pending is not None:
            self.pending.write(data)
            return
        self._head += data
        if len(self._head) >= 144:
            self._begin()
        elif len(self._head) > MAX_META_BYTES:
            self._fail(StoreStatus.CANNOT_UNDERSTAND, "file meta is too long")

    def _begin(self) -> None:
        try:
            values, end = file_meta_values(bytes(self._head[: 144 + MAX_META_BYTES]))
        except InvalidDatasetError as exc:
            if "cut short" in str(exc) and len(self._head) <= MAX_META_BYTES:
                return  # more of the file meta is still to come
            self._fail(StoreStatus.CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}")
            return
        sop_class = values.get(_MEDIA_SOP_CLASS, "")
        sop_instance = values.get(_MEDIA_SOP_INSTANCE, "")
        syntax = values.get(_TRANSFER_SYNTAX, "")
        if not (sop_class and sop_instance and syntax):
            self._fail(
                StoreStatus.CANNOT_UNDERSTAND,
                "file meta lacks Media Storage SOP Class/Instance UID or Transfer Syntax UID",
            )
            return
        if sop_class not in _STORAGE_CLASSES:
            self._fail(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "not a storage SOP class",
                sop_class[:64],
                sop_instance[:64],
            )
            return
        request = StoreRequest(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            context_class=sop_class,
            transfer_syntax=syntax,
            expected_study=self._upload.study_uid,
        )
        self.pending = self._upload.intake.begin(request, self._upload.record)
        rest, self._head = bytes(self._head[end:]), bytearray()
        self.pending.write(rest)

    def finish(self) -> PartResult:
        """Store the part; its result. Nothing of it stays in ``.tmp``."""
        if self.failure is None and self.pending is None:
            self._fail(StoreStatus.CANNOT_UNDERSTAND, "not a DICOM PS3.10 file: too short")
        if self.failure is not None:
            self.abandon()
            return self.failure
        assert self.pending is not None
        request = self.pending.request
        status = StoreStatus(self.pending.finish())
        return PartResult(request.sop_class_uid, request.sop_instance_uid, status)

    def abandon(self) -> None:
        if self.pending is not None:
            self.pending.abandon()


@dataclass
class StowUpload:
    """One STOW-RS request being received: feed it the body with :meth:`write`, then
    :meth:`close` (or :meth:`abandon` when the client went away)."""

    intake: Intake
    record: AssociationRecord
    boundary: bytes
    study_uid: str | None = None
    results: list[PartResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._part: _Part | None = None
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._broken: str | None = None
        self._parser = MultipartParser(
            self.boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        media = self._headers.get("content-type")
        parsed = parse_options_header(media)[0].decode("latin-1") if media else None
        self._part = _Part(self, parsed)
        self.record.received += 1

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            self._part.write(data[start:end])

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        result = part.finish()  # the intake counts what it stored and its duplicates
        if not result.stored:
            self.record.failed += 1
            _log.warning(
                "stow_part_refused",
                association=self.record.id,
                status=result.status.name,
                reason=result.reason,
            )
        self.results.append(result)

    def write(self, chunk: bytes) -> None:
        """Feed the next bytes of the body."""
        if self._broken is not None:
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            self._broken = f"malformed multipart body: {exc}"

    def close(self) -> list[PartResult]:
        """The end of the body: every part's result (a cut-short part is a failure)."""
        if self._broken is None:
            try:
                self._parser.finalize()
            except MultipartParseError as exc:
                self._broken = f"malformed multipart body: {exc}"
        if self._part is not None:
            self._part.abandon()
            self._part = None
            self._broken = self._broken or "the body ended inside a part"
        if self._broken is not None:
            self.record.failed += 1
            self.results.append(PartResult(None, None, StoreStatus.CANNOT_UNDERSTAND, self._broken))
        return self.results

    def abandon(self) -> None:
        """Drop the part being written (the client went away); stored parts stay stored."""
        if self._part is not None:
            self._part.abandon()
            self._part = None


def new_record(
    calling_ae: str, called_ae: str, peer: tuple[str, int], clock: Callable[[], float] = time.time
) -> AssociationRecord:
    """The association record of one STOW-RS request."""
    return AssociationRecord(
        id=f"stow-{uuid.uuid4().hex[:16]}",
        peer_host=peer[0],
        peer_port=peer[1],
        calling_ae=calling_ae,
        called_ae=called_ae,
        started_at=clock(),
    )


# PS3.18 §10.5.3 (Table 10.5.3-1): all stored 200, none stored 409, some (or warnings) 202.
HTTP_OK, HTTP_ACCEPTED, HTTP_CONFLICT = 200, 202, 409


def store_response(results: list[PartResult]) -> tuple[int, dict[str, object]]:
    """The HTTP status and the Store Instances Response (PS3.18 §10.5.3.1, Table 10.5.3-3) as
    DICOM JSON (PS3.18 Annex F): Referenced SOP Sequence for what was stored (with a Warning
    Reason for a warning status), Failed SOP Sequence with the Failure Reason for the rest."""
    response = Dataset()
    stored, failed = [], []
    for result in results:
        item = Dataset()
        if result.sop_class_uid:
            item.ReferencedSOPClassUID = result.sop_class_uid
        if result.sop_instance_uid:
            item.ReferencedSOPInstanceUID = result.sop_instance_uid
        if result.stored:
            if result.status != StoreStatus.SUCCESS:
                item.WarningReason = int(result.status)
            stored.append(item)
        else:
            item.FailureReason = int(result.status)
            failed.append(item)
    response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    warned = any(r.stored and r.status != StoreStatus.SUCCESS for r in results)
    if not results or not stored:
        code = HTTP_CONFLICT
    elif failed or warned:
        code = HTTP_ACCEPTED
    else:
        code = HTTP_OK
    return code, response.to_json_dict()


def warning_header(results: list[PartResult]) -> str | None:
    """The failure reasons in words, as a Warning header (PS3.18 §8.10.3: ``299 <agent>:``)."""
    texts = [r.reason for r in results if not r.stored and r.reason]
    if not texts:
        return None
    return ", ".join(f'299 pacs-ai: "{text.replace(chr(34), chr(39))}"' for text in texts[:20])
