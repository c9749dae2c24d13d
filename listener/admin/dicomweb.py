"""DICOMweb on the admin server: STOW-RS into the spool, and a read-only QIDO-RS view.

``POST /dicomweb/studies[/{study}]`` (PS3.18 §10.5) hands the body, as it arrives, to
:class:`~listener.receive.stow.StowUpload` in a worker thread a megabyte at a time (the disk
writes and fsyncs never run on the event loop, and no more than that is held in memory).

``GET /dicomweb/studies``, ``.../{study}/series`` and ``.../{study}/series/{series}/instances``
(PS3.18 §10.6) list what the gateway holds, received instances and the result objects it made,
as DICOM JSON, matched on the common keys (PatientID, StudyInstanceUID, StudyDate, Modality,
SeriesInstanceUID, SOPInstanceUID); ``limit`` and ``offset`` page. Enough for a viewer or a
script to find a study's results; there is no WADO-RS (the gateway is not an archive).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from listener.admin.state import AdminState
from listener.logging import get_logger
from listener.receive.admission import admission
from listener.receive.intake import Intake
from listener.receive.stow import (
    DICOM_JSON,
    StowRequestError,
    StowUpload,
    multipart_boundary,
    new_record,
    store_response,
    warning_header,
)
from listener.store.header import is_uid

_log = get_logger("admin")
_BATCH = 1 << 20
_STUDY_KEYS = ("PatientID", "StudyInstanceUID", "StudyDate", "ModalitiesInStudy")
_SERIES_KEYS = ("SeriesInstanceUID", "Modality")
_INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID")
_STUDY_TAGS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)


def _dicom_json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class DicomWeb:
    """The STOW-RS and QIDO-RS handlers over the admin state."""

    state: AdminState

    def __post_init__(self) -> None:
        self.intake = Intake(
            self.state.settings, self.state.spool, self.state.journal, clock=self.state.clock
        )
        self._active = 0
        self._lock = threading.Lock()

    # --- STOW-RS ----------------------------------------------------------------------

    async def stow(self, request: Request) -> Response:
        """Store the parts of a STOW-RS request (PS3.18 §10.5)."""
        study = request.path_params.get("study")
        if study is not None and not is_uid(study):
            return _error(400, "the study in the path is not a UID")
        try:
            boundary = multipart_boundary(request.headers.get("content-type", ""))
        except StowRequestError as exc:
            return _error(exc.http_status, str(exc))
        settings = self.state.settings
        peer = (request.client.host, request.client.port) if request.client else ("", 0)
        with self._lock:
            self._active += 1
            active = self._active
        try:
            rejection = admission(
                calling_ae=settings.dicomweb_ae_title,
                called_ae=settings.ae_titles[0],
                peer_host=peer[0],
                ae_titles=settings.ae_titles,
                allowed=settings.allowed_callers,
                active=active,
                limit=settings.max_associations,
            )
            if rejection is not None:
                _log.warning("stow_rejected", peer=peer[0], reason=rejection.why)
                busy = rejection.result == 2  # PS3.8 Table 9-21: rejected-transient
                return _error(503 if busy else 403, rejection.why)
            record = new_record(
                settings.dicomweb_ae_title, settings.ae_titles[0], peer, self.state.clock
            )
            upload = StowUpload(self.intake, record, boundary, study_uid=study)
            return await self._receive(request, upload)
        finally:
            with self._lock:
                self._active -= 1

    async def _receive(self, request: Request, upload: StowUpload) -> Response:
        journal, record = self.state.journal, upload.record
        await anyio.to_thread.run_sync(journal.start_association, record)
        ended = "released"
        try:
            batch = bytearray()
            async for chunk in request.stream():
                batch += chunk
                if len(batch) >= _BATCH:
                    await anyio.to_thread.run_sync(upload.write, bytes(batch))
                    batch.clear()
            if batch:
                await anyio.to_thread.run_sync(upload.write, bytes(batch))
            results = await anyio.to_thread.run_sync(upload.close)
        except ClientDisconnect:
            ended = "aborted"
            record.error = "client went away during the upload"
            await anyio.to_thread.run_sync(upload.abandon)
            return Response(status_code=400)
        finally:
            now = self.state.clock()
            await anyio.to_thread.run_sync(
                lambda: journal.end_association(record, ended=ended, now=now)
            )
        code, body = store_response(results)
        _log.info(
            "stow_received",
            association=record.id,
            parts=len(results),
            stored=record.stored,
            failed=record.failed,
            status=code,
        )
        warning = warning_header(results)
        return _dicom_json(body, code, {"Warning": warning} if warning else None)

    # --- QIDO-RS ----------------------------------------------------------------------

    def studies(self, request: Request) -> Response:
        """QIDO-RS Search for Studies (PS3.18 §10.6) over the studies the gateway holds."""
        query = _query(request, _STUDY_KEYS)
        if isinstance(query, Response):
            return query
        wanted_id = query.get("StudyInstanceUID")
        found = []
        for info in reversed(self.state.journal.studies()):
            if wanted_id and info.study_uid != wanted_id:
                continue
            if "PatientID" in query and info.patient_id != query["PatientID"]:
                continue
            records = self.state.journal.instances(info.study_uid)
            results = _result_headers(self.state.results_dir / info.study_uid)
            header = _first_header(self.state.spool_file, [r.path for r in records])
            if header is None:
                continue
            if "StudyDate" in query and not _date_matches(
                str(header.get("StudyDate", "")), query["StudyDate"]
            ):
                continue
            modalities = sorted(
                {r.modality for r in records if r.modality}
                | {str(ds.get("Modality", "")) for ds in results} - {""}
            )
            if "ModalitiesInStudy" in query and query["ModalitiesInStudy"] not in modalities:
                continue
            study = Dataset()
            for keyword in _STUDY_TAGS:
                if keyword in header:
                    setattr(study, keyword, header.get(keyword))
            study.StudyInstanceUID = info.study_uid
            study.ModalitiesInStudy = modalities
            series = {r.series_uid for r in records} | {str(ds.SeriesInstanceUID) for ds in results}
            study.NumberOfStudyRelatedSeries = len(series)
            study.NumberOfStudyRelatedInstances = len(records) + len(results)
            found.append(study)
        return _page(request, found)

    def series(self, request: Request) -> Response:
        """QIDO-RS Search for Series of one study: received series and result series."""
        query = _query(request, _SERIES_KEYS)
        if isinstance(query, Response):
            return query
        study_uid = request.path_params["study"]
        headers = self._study_headers(study_uid)
        found: dict[str, Dataset] = {}
        for ds in headers:
            uid = str(ds.SeriesInstanceUID)
            if uid in found:
                found[uid].NumberOfSeriesRelatedInstances += 1
                continue
            series = Dataset()
            series.StudyInstanceUID = study_uid
            series.SeriesInstanceUID = uid
            series.Modality = ds.get("Modality", "")
            series.SeriesNumber = ds.get("SeriesNumber", None)
            series.SeriesDescription = ds.get("SeriesDescription", "")
            series.NumberOfSeriesRelatedInstances = 1
            found[uid] = series
        matched = [
            s for s in found.values() if all(str(s.get(k, "")) == v for k, v in query.items())
        ]
        return _page(request, matched)

    def instances(self, request: Request) -> Response:
        """QIDO-RS Search for Instances of one series."""
        query = _query(request, _INSTANCE_KEYS)
        if isinstance(query, Response):
            return query
        study_uid, series_uid = request.path_params["study"], request.path_params["series"]
        found = []
        for ds in self._study_headers(study_uid):
            if str(ds.SeriesInstanceUID) != series_uid:
                continue
            item = Dataset()
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(item, keyword, ds.get(keyword))
            item.SOPClassUID = ds.get("SOPClassUID")
            item.InstanceNumber = ds.get("InstanceNumber", None)
            item.Modality = ds.get("Modality", "")
            if all(str(item.get(k, "")) == v for k, v in query.items()):
                found.append(item)
        return _page(request, found)

    def _study_headers(self, study_uid: str) -> list[Dataset]:
        records = self.state.journal.instances(study_uid)
        headers = [
            ds for r in records if (ds := _header(self.state.spool_file(r.path))) is not None
        ]
        return headers + _result_headers(self.state.results_dir / study_uid)


def _query(request: Request, keys: tuple[str, ...]) -> dict[str, str] | Response:
    """The matching keys of a QIDO-RS query; unknown keys are refused (400, PS3.18 §8.3.4)."""
    query: dict[str, str] = {}
    for key, value in request.query_params.items():
        if key in ("limit", "offset", "includefield", "fuzzymatching"):
            continue
        if key not in keys:
            return _error(400, f"unsupported query key {key}; supported: {', '.join(keys)}")
        query[key] = value
    return query


def _page(request: Request, found: list[Dataset]) -> Response:
    try:
        offset = max(0, int(request.query_params.get("offset", 0)))
        limit = max(1, min(1000, int(request.query_params.get("limit", 100))))
    except ValueError:
        return _error(400, "limit and offset are integers")
    page = found[offset : offset + limit]
    if not page:
        return Response(status_code=204)  # PS3.18 §8.3.4.4: no match
    return _dicom_json([ds.to_json_dict() for ds in page])


def _date_matches(date: str, wanted: str) -> bool:
    """A DA value against a QIDO date or date range (PS3.4 C.2.2.2.5)."""
    if "-" not in wanted:
        return date == wanted
    low, _, high = wanted.partition("-")
    return bool(date) and (not low or date >= low) and (not high or date <= high)


def _header(path: Path) -> Dataset | None:
    try:
        return dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        return None


def _first_header(spool_file: Callable[[str], Path], relative: list[str]) -> Dataset | None:
    for path in relative:
        header = _header(spool_file(path))
        if header is not None:
            return header
    return None


def _result_headers(folder: Path) -> list[Dataset]:
    if not folder.is_dir():
        return []
    found = (_header(path) for path in sorted(folder.glob("*.dcm")))
    return [ds for ds in found if ds is not None]


def routes(state: AdminState) -> list[Route]:
    """The DICOMweb routes (token rules as every other admin path)."""
    web = DicomWeb(state)
    return [
        Route("/dicomweb/studies", web.stow, methods=["POST"]),
        Route("/dicomweb/studies/{study}", web.stow, methods=["POST"]),
        Route("/dicomweb/studies", web.studies, methods=["GET"]),
        Route("/dicomweb/studies/{study}/series", web.series, methods=["GET"]),
        Route("/dicomweb/studies/{study}/series/{series}/instances", web.instances),
    ]
