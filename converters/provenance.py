"""Who made a result object and where it goes: model, rule, gateway, time, UIDs, equipment.

Builders never invent identity. The caller passes a :class:`Provenance`; from it and the source
images come the deterministic Series and SOP Instance UIDs (:mod:`converters.uids`), the series
number and description per result kind, the equipment attributes (PS3.3 C.7.5.1 General
Equipment, C.7.5.2 Enhanced General Equipment) and the algorithm identification.

Identity (PS3.5 §9: one UID, one content). A result's Series and SOP Instance UIDs derive from
everything that determines its content: the task (rule and task name), the model and its
version, the result kind, and the exact source instances (their SOP Instance UIDs, sorted, so
the order images arrived in does not matter). Two inputs of one study, or two tasks of one rule
with the same model, therefore never share a UID, and a re-run of the same input gives the same
UIDs and, with the same clock, the same bytes. Tracking UIDs (TID 4108) leave the sources out on
purpose: a finding keeps its Tracking UID when a follow-up adds slices, which is what lets a
reader (or IHE AIRAI feedback) follow it from one generation of results to the next.

Text and time. Every result is written in UTF-8 (Specific Character Set ISO_IR 192, PS3.3
C.12.1.1.2) whatever the source's set: pydicom decodes the copied patient and study attributes
with the source's set and they are re-encoded as UTF-8 on writing, so a prompt such as "肺炎"
beside a Latin-1 source survives exactly. Creation times carry Timezone Offset From UTC (PS3.3
C.12.1.1.8); when the source states its own offset, the times are converted to it, since that
one attribute governs every date and time in the object, the copied study times included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pydicom import Dataset

from converters.codes import PRIVATE_SCHEME, clip_text
from converters.copied import clean_copied
from converters.model_outputs import ModelIdentity
from converters.uids import derive_uid

MANUFACTURER = "pacs-ai-listener"
UTF8 = "ISO_IR 192"  # Specific Character Set of every result object

MODEL_DISPLAY_NAMES = {
    "medimageinsight": "MedImageInsight",
    "cxrreportgen": "CXRReportGen",
    "medimageparse": "MedImageParse",
    "medimageparse3d": "MedImageParse 3D",
}


class ResultKind(Enum):
    """The kinds of result object; each gets its own series. Values: (key, series no., label)."""

    SEG = ("seg", 9001, "SEG")
    SEG_SR = ("seg-sr", 9002, "SR")
    REPORT_SR = ("report-sr", 9003, "SR")
    FINDINGS_PR = ("findings-pr", 9004, "findings PR")
    CLASSIFICATION_SR = ("classification-sr", 9005, "classification SR")
    REJECTION_KOS = ("rejection-kos", 9006, "rejection note")

    @property
    def key(self) -> str:
        return self.value[0]

    @property
    def series_number(self) -> int:
        return self.value[1]

    @property
    def label(self) -> str:
        return self.value[2]


@dataclass(frozen=True)
class ResultRef:
    """An earlier result object, by the UIDs a reference to it needs (e.g. from the journal)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    @classmethod
    def of(cls, obj: Dataset) -> ResultRef:
        """The reference to a built (or read back) result object."""
        return cls(
            str(obj.StudyInstanceUID),
            str(obj.SeriesInstanceUID),
            str(obj.SOPClassUID),
            str(obj.SOPInstanceUID),
        )


def sources_digest(sources: Sequence[Dataset]) -> str:
    """A digest of the sources' SOP Instance UIDs, sorted: the exact input set, in any order."""
    uids = sorted({str(ds.SOPInstanceUID) for ds in sources})
    return hashlib.sha256("\n".join(uids).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """What produced a result: the model, the task that asked for it, the gateway, the time.

    ``rule`` and ``task`` name the routing rule and its task; both are part of every result
    UID. ``uid_root`` None gives ``2.25`` UUID-derived UIDs; otherwise a hash under that root.
    ``created`` becomes the objects' creation and content date and time (with its offset from
    UTC when it is timezone-aware). ``supersedes`` lists the earlier generation's results that
    these replace: the SR names them as Predecessor Documents and a rejection note
    (:mod:`converters.kos`) withdraws them.
    """

    model: ModelIdentity
    rule: str
    gateway_version: str
    created: datetime
    uid_root: str | None = None
    device_serial_number: str = "1"
    task: str = ""
    supersedes: tuple[ResultRef, ...] = ()

    @property
    def model_name(self) -> str:
        """The model's display name (e.g. "MedImageParse")."""
        return MODEL_DISPLAY_NAMES.get(self.model.name.lower(), self.model.name)

    @property
    def software_versions(self) -> tuple[str, str]:
        """Software Versions: the gateway's and the model's (PS3.3 C.7.5.1), each cut to the
        64 characters of an LO value (an adapter's name and version on top of the model's)."""
        return (
            clip_text(f"{MANUFACTURER} {self.gateway_version}"),
            clip_text(f"{self.model.name} {self.model.version}"),
        )

    def _task_key(self, study_uid: str, kind: ResultKind) -> tuple[str, ...]:
        model, version = self.model.name, self.model.version
        return (study_uid, model, version, self.rule, "task", self.task, kind.key)

    def _key(self, sources: Sequence[Dataset], kind: ResultKind) -> tuple[str, ...]:
        return (*self._task_key(study_uid_of(sources), kind), "sources", sources_digest(sources))

    def series_uid(self, sources: Sequence[Dataset], kind: ResultKind) -> str:
        """The Series Instance UID of ``kind`` results made from exactly these sources."""
        return derive_uid(*self._key(sources, kind), "series", root=self.uid_root)

    def instance_uid(self, sources: Sequence[Dataset], kind: ResultKind, index: int = 0) -> str:
        """The SOP Instance UID of the ``index``-th object of ``kind`` made from these sources."""
        return derive_uid(*self._key(sources, kind), "instance", str(index), root=self.uid_root)

    def content_uid(self, sources: Sequence[Dataset], kind: ResultKind, name: str) -> str:
        """Any other UID inside a result (e.g. the Dimension Organization UID), as determined."""
        return derive_uid(*self._key(sources, kind), "content", name, root=self.uid_root)

    def tracking_uid(self, study_uid: str, kind: ResultKind, item: str) -> str:
        """A Tracking UID for one finding or segment (TID 4108), stable across re-runs and
        across generations of one task's results (the sources are not part of its key)."""
        return derive_uid(*self._task_key(study_uid, kind), "tracking", item, root=self.uid_root)

    def device_uid(self) -> str:
        """Device Observer UID (TID 1004): the gateway running this model, not the study."""
        return derive_uid(MANUFACTURER, self.model.name, self.device_serial_number)

    def series_description(self, kind: ResultKind) -> str:
        """E.g. "AI MedImageParse SEG (emulator)": what produced the series."""
        suffix = " (emulator)" if self.model.emulated else ""
        return f"AI {self.model_name} {kind.label}{suffix}"

    def created_for(self, source: Dataset) -> tuple[datetime, str | None]:
        """The creation time as written next to ``source``'s times, and its offset from UTC.

        A source stating its Timezone Offset From UTC gets the time converted to that offset;
        otherwise the clock's own offset is used (the gateway's local time, as ``serve`` and
        ``process`` give it). A naive clock gives no offset.
        """
        offset = _parse_offset(str(source.get("TimezoneOffsetFromUTC", "") or ""))
        created = self.created
        if offset is not None and created.tzinfo is not None:
            created = created.astimezone(offset)
        if created.tzinfo is None:
            return created, None
        return created, created.strftime("%z")

    def stamp(self, obj: Dataset, kind: ResultKind, source: Dataset | None = None) -> None:
        """Set what highdicom leaves to us: description, creation times, equipment, UTF-8."""
        created, offset = self.created_for(source if source is not None else Dataset())
        date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
        values: dict[str, Any] = {
            "SeriesDescription": self.series_description(kind),
            "InstanceCreationDate": date,
            "InstanceCreationTime": time,
            "Manufacturer": MANUFACTURER,
            "ManufacturerModelName": self.model_name,
            "SoftwareVersions": list(self.software_versions),
            "DeviceSerialNumber": self.device_serial_number,
        }
        if offset is not None:
            values["TimezoneOffsetFromUTC"] = offset
        # PS3.3 C.11.10: a presentation state has a creation date, not a content date.
        prefix = "PresentationCreation" if kind is ResultKind.FINDINGS_PR else "Content"
        values[f"{prefix}Date"], values[f"{prefix}Time"] = date, time
        if any(PRIVATE_SCHEME in str(el.value) for el in obj.iterall() if el.VR == "SH"):
            values["CodingSchemeIdentificationSequence"] = [private_scheme_identification()]
        for keyword, value in values.items():
            set_fresh(obj, keyword, value)
        obj.SpecificCharacterSet = UTF8
        # highdicom stamps its own contribution with the wall clock; use the creation time.
        for item in obj.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S") + (offset or "")
        if source is not None:
            clean_copied(obj, source)


def _parse_offset(value: str) -> timezone | None:
    """A Timezone Offset From UTC value ("+0100", "-0530") as a timezone; None if absent or bad."""
    text = value.strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    hours, minutes = int(text[1:3]), int(text[3:])
    if hours > 14 or minutes > 59:
        return None
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def set_fresh(obj: Dataset, keyword: str, value: Any) -> None:
    """Set an attribute on a new data element rather than changing the existing one in place.

    highdicom copies patient and study attributes from the sources by sharing their data
    element objects; assigning through pydicom would change the element in place, and with it
    the source dataset. Deleting first gives the result its own element.
    """
    if keyword in obj:
        delattr(obj, keyword)
    setattr(obj, keyword, value)


def private_scheme_identification() -> Dataset:
    """Coding Scheme Identification item for the private scheme (PS3.3 C.12.1.1.2)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "pacs-ai-listener local codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def study_uid_of(sources: Sequence[Dataset]) -> str:
    """The one Study Instance UID the sources share; results of mixed studies are refused."""
    if not sources:
        raise ValueError("a result needs at least one source image")
    uids = {str(ds.StudyInstanceUID) for ds in sources}
    if len(uids) != 1:
        raise ValueError(f"source images span {len(uids)} studies; expected one")
    return uids.pop()
