"""Who made a result object and where it goes: model, rule, gateway, time, UIDs, equipment.

Builders never invent identity. The caller passes a :class:`Provenance`; from it and the source
study come the deterministic Series and SOP Instance UIDs (:mod:`converters.uids`), the series
number and description per result kind, the equipment attributes (PS3.3 C.7.5.1 General
Equipment, C.7.5.2 Enhanced General Equipment) and the algorithm identification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pydicom import Dataset

from converters.codes import PRIVATE_SCHEME
from converters.model_outputs import ModelIdentity
from converters.uids import derive_uid

MANUFACTURER = "pacs-ai-listener"

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
class Provenance:
    """What produced a result: the model, the rule that asked for it, the gateway, the time.

    ``uid_root`` None gives ``2.25`` UUID-derived UIDs; otherwise a hash under that root.
    ``created`` becomes the objects' Content Date and Time.
    """

    model: ModelIdentity
    rule: str
    gateway_version: str
    created: datetime
    uid_root: str | None = None
    device_serial_number: str = "1"

    @property
    def model_name(self) -> str:
        """The model's display name (e.g. "MedImageParse")."""
        return MODEL_DISPLAY_NAMES.get(self.model.name.lower(), self.model.name)

    @property
    def software_versions(self) -> tuple[str, str]:
        """Software Versions: the gateway's and the model's (PS3.3 C.7.5.1)."""
        return (f"{MANUFACTURER} {self.gateway_version}", f"{self.model.name} {self.model.version}")

    def _key(self, study_uid: str, kind: ResultKind) -> tuple[str, ...]:
        return (study_uid, self.model.name, self.model.version, self.rule, kind.key)

    def series_uid(self, study_uid: str, kind: ResultKind) -> str:
        """The Series Instance UID of ``kind`` results for this study."""
        return derive_uid(*self._key(study_uid, kind), "series", root=self.uid_root)

    def instance_uid(self, study_uid: str, kind: ResultKind, index: int = 0) -> str:
        """The SOP Instance UID of the ``index``-th object of ``kind`` for this study."""
        return derive_uid(*self._key(study_uid, kind), "instance", str(index), root=self.uid_root)

    def tracking_uid(self, study_uid: str, kind: ResultKind, item: str) -> str:
        """A Tracking UID for one finding or segment (TID 4108), stable across re-runs."""
        return derive_uid(*self._key(study_uid, kind), "tracking", item, root=self.uid_root)

    def device_uid(self) -> str:
        """Device Observer UID (TID 1004): the gateway running this model, not the study."""
        return derive_uid(MANUFACTURER, self.model.name, self.device_serial_number)

    def series_description(self, kind: ResultKind) -> str:
        """E.g. "AI MedImageParse SEG (emulator)": what produced the series."""
        suffix = " (emulator)" if self.model.emulated else ""
        return f"AI {self.model_name} {kind.label}{suffix}"

    def stamp(self, obj: Dataset, kind: ResultKind) -> None:
        """Set what highdicom leaves to us: description, creation times, equipment."""
        date, time = self.created.strftime("%Y%m%d"), self.created.strftime("%H%M%S")
        values: dict[str, Any] = {
            "SeriesDescription": self.series_description(kind),
            "InstanceCreationDate": date,
            "InstanceCreationTime": time,
            "Manufacturer": MANUFACTURER,
            "ManufacturerModelName": self.model_name,
            "SoftwareVersions": list(self.software_versions),
            "DeviceSerialNumber": self.device_serial_number,
        }
        # PS3.3 C.11.10: a presentation state has a creation date, not a content date.
        prefix = "PresentationCreation" if kind is ResultKind.FINDINGS_PR else "Content"
        values[f"{prefix}Date"], values[f"{prefix}Time"] = date, time
        if any(PRIVATE_SCHEME in str(el.value) for el in obj.iterall() if el.VR == "SH"):
            values["CodingSchemeIdentificationSequence"] = [private_scheme_identification()]
        for keyword, value in values.items():
            set_fresh(obj, keyword, value)


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
