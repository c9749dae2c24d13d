"""What leaves the hospital: the per-model egress policy, applied before every model call.

A model endpoint is usually outside the hospital (a cloud region), so before anything is sent
the task's inputs pass through the model's :class:`~listener.security.settings.EgressPolicy`:

- images that may carry patient data in their pixels are withheld: Burned In Annotation
  (0028,0301) YES, or an ultrasound or secondary capture image (modalities and SOP classes
  that habitually burn names and dates into the pixels) that does not say NO (PS3.3 C.7.6.1.1.7
  makes the attribute Type 3 in most IODs, so its absence proves nothing);
- CXRReportGen's text inputs (indication, technique, comparison) go only if the policy lists
  them, and by default with person names (the patient's and every other Person Name in the
  header, honorific + name), dates in the common written forms, and ID-like tokens (the
  patient ID, accession number, any token of five or more characters holding a digit)
  replaced by ``[name]``, ``[date]`` and ``[id]``.

What was sent, and what was withheld and why, is returned as an :class:`EgressReport` for the
audit trail. Pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom import Dataset

from listener.security.settings import EgressPolicy

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_RISKY_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES"})
_PERSON_NAME_KEYWORDS = (
    "PatientName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "PhysiciansOfRecord",
    "OtherPatientNames",
    "PatientMotherBirthName",
)
_ID_KEYWORDS = ("PatientID", "AccessionNumber", "OtherPatientIDs", "StudyID")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE_PATTERNS = [
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),  # 2024-03-07, 2024/3/7
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),  # 07.03.2024, 3/7/24
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),  # DA 20240307
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\s*,?\s+\d{{2,4}}\b", re.I),
    re.compile(rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\s*,?\s+\d{{2,4}}\b", re.I),
]
_HONORIFIC = re.compile(r"\b(Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+[A-Z][\w'-]+", re.U)
_ID_TOKEN = re.compile(r"\b(?=[\w-]*\d)[A-Za-z0-9][\w-]{4,}\b")
NAME, DATE, ID = "[name]", "[date]", "[id]"


def withheld_because(ds: Dataset, policy: EgressPolicy) -> str | None:
    """Why ``ds`` may not be sent under ``policy``, or None when it may."""
    if policy.allow_burned_in:
        return None
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "Burned In Annotation is YES"
    if burned == "NO":
        return None
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality in _RISKY_MODALITIES or sop_class.startswith(_SECONDARY_CAPTURE):
        kind = "secondary capture" if sop_class.startswith(_SECONDARY_CAPTURE) else modality
        return f"{kind} image without Burned In Annotation NO"
    return None


def _name_parts(ds: Dataset) -> set[str]:
    parts: set[str] = set()
    for keyword in _PERSON_NAME_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for name in values:
            for part in re.split(r"[\^=\s,]+", str(name)):
                if len(part) >= 2:
                    parts.add(part)
    return parts


def _id_values(ds: Dataset) -> set[str]:
    found: set[str] = set()
    for keyword in _ID_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        found.update(str(v).strip() for v in values if str(v).strip())
    return found


def scrub(text: str, ds: Dataset) -> str:
    """``text`` with the names, dates and ID-like tokens of ``ds`` (and generic ones) replaced."""
    for value in sorted(_id_values(ds), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", ID, text)
    for pattern in _DATE_PATTERNS:
        text = pattern.sub(DATE, text)
    for part in sorted(_name_parts(ds), key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(part)}\b", NAME, text, flags=re.I)
    text = _HONORIFIC.sub(lambda m: f"{m.group(1)} {NAME}", text)
    return _ID_TOKEN.sub(ID, text)


@dataclass
class EgressReport:
    """What one model call sent, and what it withheld (for the audit trail and ``rules test``)."""

    model: str
    study_uid: str = ""
    patient_id: str | None = None
    images_sent: int = 0
    withheld: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> why
    text: dict[str, str] = field(default_factory=dict)  # field -> the value as sent
    text_withheld: list[str] = field(default_factory=list)

    def details(self) -> dict[str, str]:
        """The report as ParticipantObjectDetail pairs of the audit message."""
        pairs = {"ImagesSent": str(self.images_sent), "ImagesWithheld": str(len(self.withheld))}
        for uid, why in self.withheld.items():
            pairs[f"Withheld {uid}"] = why
        for name, value in self.text.items():
            pairs[f"Text {name}"] = value
        for name in self.text_withheld:
            pairs[f"Text {name}"] = "(withheld by policy)"
        return pairs


def admit_images(
    datasets: Iterable[Dataset], policy: EgressPolicy, report: EgressReport
) -> list[Dataset]:
    """The images ``policy`` lets leave; the others are noted in ``report`` with the reason."""
    admitted = []
    for ds in datasets:
        why = withheld_because(ds, policy)
        if why is None:
            admitted.append(ds)
        else:
            report.withheld[str(ds.get("SOPInstanceUID", "?"))] = why
    return admitted


def outgoing_text(
    values: Mapping[str, str], ds: Dataset, policy: EgressPolicy, report: EgressReport
) -> dict[str, str]:
    """The text fields as they may leave: not listed in the policy, empty; else scrubbed (by
    default). Each is noted in ``report``."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if name not in policy.text_fields:
            out[name] = ""
            report.text_withheld.append(name)
            continue
        out[name] = scrub(value, ds) if policy.scrub_text else value
        report.text[name] = out[name]
    return out


def describe(policy: EgressPolicy) -> str:
    """One line saying what ``policy`` lets leave (for ``pacs-ai rules test``)."""
    fields = ", ".join(policy.text_fields) or "none"
    scrubbed = "names, dates and IDs scrubbed" if policy.scrub_text else "sent as they are"
    images = "burned-in images allowed" if policy.allow_burned_in else "burned-in images withheld"
    return f"text fields: {fields} ({scrubbed}); {images}"
