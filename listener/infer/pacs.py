"""Priors from the PACS: the patient's earlier chest study, its frontal image and its report.

Two sources, chosen by the kind of the destination the ``priors.source`` setting names:

- DIMSE: C-FIND in the Study Root model (PS3.4 C.6.2) at STUDY level for the patient's studies
  before the current Study Date, then at SERIES level for a study's CR/DX and SR series, which
  are fetched with C-GET (PS3.4 C.4.3; our AE takes the SCP role for their storage classes,
  PS3.7 D.3.3.4) into memory;
- DICOMweb: QIDO-RS (PS3.18 §10.6) for studies and series, WADO-RS (§10.4) for the instances.

Of the earlier studies, latest first, the first with a frontal image (View Position AP or PA) is
the prior. Its report is a radiologist's SR (Basic Text, Enhanced or Comprehensive SR: the text of
its TEXT content items) when the study has one, else the gateway's own draft (its SR's LOINC
18782-3 text). Nothing here waits longer than the source's timeout; the caller bounds the whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom import Dataset, dcmread
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from converters.codes import DRAFT_REPORT
from converters.provenance import MANUFACTURER
from listener.infer.dicomweb import json_value, open_client, qido, wado_instance
from listener.infer.tasks import PriorImage
from listener.route.defaults import FRONTAL_VIEWS
from listener.settings import Destination

CHEST_MODALITIES = frozenset({"CR", "DX"})
_STORAGE = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
)
# PS3.4 C.4.1.1.4 / C.4.3.1.4: Pending statuses of C-FIND and C-GET.
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000


class PriorLookupError(Exception):
    """The source could not be asked (refused association, HTTP error): no prior from it."""


@dataclass(frozen=True)
class PriorQuery:
    """Whose prior: the patient (ID and issuer), the current study and its date."""

    patient_id: str
    issuer: str
    study_uid: str
    study_date: str


@dataclass(frozen=True)
class EarlierStudy:
    """A study the source holds for the patient."""

    study_uid: str
    study_date: str


class PriorSource(Protocol):
    """Where earlier studies are found and fetched."""

    def studies(self, query: PriorQuery) -> list[EarlierStudy]: ...

    def series(self, study_uid: str) -> list[tuple[str, str]]:
        """(Series Instance UID, Modality) of each series of the study."""
        ...

    def fetch(self, study_uid: str, series_uid: str) -> list[Dataset]: ...


def find_prior(source: PriorSource, query: PriorQuery, max_studies: int) -> PriorImage | None:
    """The latest earlier study's frontal image and report (see the module docstring)."""
    earlier = [
        s
        for s in source.studies(query)
        if s.study_uid != query.study_uid
        and (not query.study_date or (s.study_date and s.study_date < query.study_date))
    ]
    earlier.sort(key=lambda s: s.study_date, reverse=True)
    for study in earlier[:max_studies]:
        series = source.series(study.study_uid)
        images = [
            ds
            for uid, modality in series
            if modality in CHEST_MODALITIES
            for ds in source.fetch(study.study_uid, uid)
        ]
        frontal = pick_frontal(images)
        if frontal is None:
            continue
        reports = [
            ds for uid, m in series if m == "SR" for ds in source.fetch(study.study_uid, uid)
        ]
        return PriorImage(frontal, study.study_date or "unknown date", report_text(reports))
    return None


def pick_frontal(images: Iterable[Dataset]) -> Dataset | None:
    """The latest frontal (AP/PA) image among ``images``, by acquisition then content time."""
    frontal = [ds for ds in images if str(ds.get("ViewPosition", "")).upper() in FRONTAL_VIEWS]
    frontal.sort(
        key=lambda ds: (
            str(ds.get("AcquisitionDate", "")),
            str(ds.get("AcquisitionTime", "")),
            str(ds.get("ContentTime", "")),
        )
    )
    return frontal[-1] if frontal else None


def report_text(reports: Iterable[Dataset]) -> str | None:
    """A radiologist's SR text first, else the gateway's own draft, else None."""
    drafts, radiologist = [], []
    for sr in reports:
        if str(sr.get("Manufacturer", "")) == MANUFACTURER:
            drafts += [
                str(item.TextValue)
                for item in sr.get("ContentSequence", [])
                if "TextValue" in item
                and item.ConceptNameCodeSequence[0].CodeValue == DRAFT_REPORT.value
            ]
        else:
            text = " ".join(_texts(sr.get("ContentSequence", [])))
            if text:
                radiologist.append(text)
    found = radiologist or drafts
    return found[0] if found else None


def _texts(items: Iterable[Dataset]) -> Iterator[str]:
    """The TEXT content items' values of an SR content tree, depth first (PS3.3 C.17.3)."""
    for item in items:
        if item.get("ValueType") == "TEXT" and "TextValue" in item:
            yield str(item.TextValue).strip()
        yield from _texts(item.get("ContentSequence", []))


class DimseSource:
    """C-FIND + C-GET against a DIMSE destination (see the module docstring)."""

    def __init__(self, dest: Destination, calling_ae: str, timeout_s: float) -> None:
        self.dest = dest
        self.calling_ae = dest.calling_ae or calling_ae
        self.timeout_s = timeout_s

    def _associate(self, received: list[Dataset] | None = None) -> Any:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for storage in _STORAGE:
            ae.add_requested_context(storage, list(AllTransferSyntaxes)[:16])
        handlers: list[Any] = []
        if received is not None:

            def on_store(event: Any) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                received.append(ds)
                return _SUCCESS

            handlers.append((evt.EVT_C_STORE, on_store))
        assoc = ae.associate(
            self.dest.host,
            self.dest.port,
            ae_title=self.dest.ae_title,
            ext_neg=[build_role(storage, scp_role=True) for storage in _STORAGE],
            evt_handlers=handlers,
        )
        if not assoc.is_established:
            raise PriorLookupError(f"no association with {self.dest.describe()}")
        return assoc

    def _find(self, identifier: Dataset) -> list[Dataset]:
        assoc = self._associate()
        try:
            found = []
            model = StudyRootQueryRetrieveInformationModelFind
            for status, answer in assoc.send_c_find(identifier, model):
                if status is None:
                    raise PriorLookupError("C-FIND: no response in time")
                if status.Status in _PENDING and answer is not None:
                    found.append(answer)
            return found
        finally:
            assoc.release()

    def studies(self, query: PriorQuery) -> list[EarlierStudy]:
        ask = Dataset()
        ask.QueryRetrieveLevel = "STUDY"
        ask.PatientID = query.patient_id
        ask.IssuerOfPatientID = ""
        ask.StudyDate = f"-{query.study_date}" if query.study_date else ""
        ask.StudyInstanceUID = ""
        ask.ModalitiesInStudy = ""
        found = []
        for ds in self._find(ask):
            issuer = str(ds.get("IssuerOfPatientID", "") or "")
            if query.issuer and issuer and issuer != query.issuer:
                continue
            modalities = set(ds.get("ModalitiesInStudy", None) or [])
            if modalities and not modalities & (CHEST_MODALITIES | {"SR"}):
                continue
            found.append(EarlierStudy(str(ds.StudyInstanceUID), str(ds.get("StudyDate", ""))))
        return found

    def series(self, study_uid: str) -> list[tuple[str, str]]:
        ask = Dataset()
        ask.QueryRetrieveLevel = "SERIES"
        ask.StudyInstanceUID = study_uid
        ask.SeriesInstanceUID = ""
        ask.Modality = ""
        return [(str(ds.SeriesInstanceUID), str(ds.get("Modality", ""))) for ds in self._find(ask)]

    def fetch(self, study_uid: str, series_uid: str) -> list[Dataset]:
        ask = Dataset()
        ask.QueryRetrieveLevel = "SERIES"
        ask.StudyInstanceUID = study_uid
        ask.SeriesInstanceUID = series_uid
        received: list[Dataset] = []
        assoc = self._associate(received)
        try:
            model = StudyRootQueryRetrieveInformationModelGet
            for status, _ in assoc.send_c_get(ask, model):
                if status is None:
                    raise PriorLookupError("C-GET: no response in time")
        finally:
            assoc.release()
        return received


class WebSource:
    """QIDO-RS + WADO-RS against a DICOMweb destination (see the module docstring)."""

    def __init__(self, dest: Destination, timeout_s: float) -> None:
        self.dest = dest
        self.timeout_s = timeout_s

    def studies(self, query: PriorQuery) -> list[EarlierStudy]:
        params = {"PatientID": query.patient_id, "includefield": "00100021,00080061"}
        if query.study_date:
            params["StudyDate"] = f"-{query.study_date}"
        with open_client(self.dest, timeout_s=self.timeout_s) as client:
            found = qido(client, "/studies", params)
        studies = []
        for item in found:
            issuer = json_value(item, "00100021") or ""
            if query.issuer and issuer and issuer != query.issuer:
                continue
            uid, date = json_value(item, "0020000D"), json_value(item, "00080020") or ""
            if uid:
                studies.append(EarlierStudy(str(uid), str(date)))
        return studies

    def series(self, study_uid: str) -> list[tuple[str, str]]:
        with open_client(self.dest, timeout_s=self.timeout_s) as client:
            found = qido(client, f"/studies/{study_uid}/series", {})
        return [(str(json_value(s, "0020000E")), str(json_value(s, "00080060"))) for s in found]

    def fetch(self, study_uid: str, series_uid: str) -> list[Dataset]:
        with open_client(self.dest, timeout_s=self.timeout_s) as client:
            found = qido(client, f"/studies/{study_uid}/series/{series_uid}/instances", {})
            return [
                dcmread(BytesIO(wado_instance(client, study_uid, series_uid, uid)))
                for item in found
                if (uid := json_value(item, "00080018"))
            ]
