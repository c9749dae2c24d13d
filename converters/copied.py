"""Patient and study attributes copied from a source as real modalities write them.

A result repeats its source's patient and study attributes (PS3.3 C.7.1.1 Patient, C.7.2.1
General Study, C.7.2.2 Patient Study), which highdicom copies as they are. Modalities write
values the standard does not allow: a Patient's Birth Date "1945-12-31" (DA is YYYYMMDD), a
Person Name with six components (PN allows five), a 70-character LO (64 at most), two values in
an attribute of multiplicity 1. Copied unchanged, each makes the result invalid (dciodvfy error)
although the result itself is right. :func:`clean_copied` keeps every well-formed copied value
and, for a malformed one, applies this policy:

=================================  ==================================================
Attribute                          Malformed in the source
=================================  ==================================================
Patient ID, Study Instance UID     copied through unchanged: the PACS files results by
                                   them and holds the source with the same value
other Type 2 attributes (Patient's written empty (present, no value): the result
Name, Birth Date, Sex, Study Date, stays valid and does not invent a value
Study Time, Referring Physician's
Name, Study ID, Accession Number)
every other copied attribute       left out (Type 3: absence is valid)
(Study Description, Patient's
Age, Size, Weight, Physicians
Reading Study, ...)
=================================  ==================================================

Repairing values (reading "1945-12-31" as 19451231) is not attempted: a guess at what a
modality meant has no place in a medical record. Messages never quote a value (they may
identify the patient); :func:`redact` strips the sources' text values from any message built
from a library's exception before it reaches a log or a job record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from pydicom import Dataset
from pydicom.datadict import dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

COPIED_THROUGH = frozenset({"PatientID", "StudyInstanceUID"})
TYPE_2 = frozenset(
    {
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)
_MAX_LENGTH = {"LO": 64, "SH": 16, "CS": 16, "ST": 1024, "LT": 10240, "DS": 16, "IS": 12, "AE": 16}
_PATTERNS = {
    "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
    "DT": re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$"),
    "AS": re.compile(r"^\d{3}[DWMY]$"),
    "CS": re.compile(r"^[A-Z0-9 _]*$"),
}
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "TM", "DT", "AS", "CS"})
_MIN_REDACTED = 3  # shorter values (sex "M", ...) would redact ordinary words


def _values(element: DataElement) -> list[object]:
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _valid_date(text: str) -> bool:
    if not re.fullmatch(r"\d{8}", text):
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_person_name(text: str) -> bool:
    groups = text.split("=")
    return len(groups) <= 3 and all(
        len(group) <= 64 and len(group.split("^")) <= 5 for group in groups
    )


def _valid_value(vr: str, value: object) -> bool:
    text = str(value)
    if vr == "DA":
        return _valid_date(text)
    if vr == "PN":
        return _valid_person_name(text)
    if vr in _MAX_LENGTH and len(text) > _MAX_LENGTH[vr]:
        return False
    pattern = _PATTERNS.get(vr)
    if pattern is not None and not pattern.match(text):
        return False
    return "\\" not in text


def _valid_multiplicity(element: DataElement, count: int) -> bool:
    try:
        vm = dictionary_VM(element.tag)
    except KeyError:
        return True
    if vm == "1":
        return count <= 1
    return True


def is_well_formed(element: DataElement) -> bool:
    """Whether a (non-sequence) element's value fits its VR and multiplicity (PS3.5 6.2)."""
    if element.VR == "SQ":
        return True
    values = _values(element)
    return _valid_multiplicity(element, len(values)) and all(
        _valid_value(element.VR, v) for v in values
    )


def expected_copy(source: Dataset, keyword: str) -> str | None:
    """What a result holds for ``keyword`` copied from ``source``: the value, "" or None (out)."""
    element = source.data_element(keyword) if keyword in source else None
    if element is None:
        return None
    if keyword in COPIED_THROUGH or is_well_formed(element):
        return str(element.value if element.value is not None else "")
    return "" if keyword in TYPE_2 else None


# Patient and study attributes (C.7.1.1, C.7.2.1, C.7.2.2) results repeat from their source.
PATIENT_STUDY_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "EthnicGroup",
        "PatientComments",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "AdmittingDiagnosesDescription",
    }
)


def cleaned_source(source: Dataset) -> Dataset:
    """``source`` as result builders may read it: malformed patient and study values emptied or
    left out (the module's policy). highdicom parses these values (a DA, an enumerated Patient's
    Sex) and fails or logs them otherwise. A shallow copy: elements, pixel data included, are
    shared; the source is not changed. Returns ``source`` itself when nothing is malformed."""
    bad = [
        keyword
        for keyword in PATIENT_STUDY_KEYWORDS
        if keyword in source and not is_well_formed(source[keyword])
    ]
    if not bad:
        return source
    copy = Dataset()
    for element in source:
        if element.keyword not in bad:
            copy.add(element)
        elif element.keyword in TYPE_2:
            setattr(copy, element.keyword, "")
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    return copy


def clean_copied(obj: Dataset, source: Dataset) -> list[str]:
    """Apply the module's policy to ``obj``'s top-level attributes copied from ``source``.

    An attribute counts as copied when the source has it with the same value. Returns the
    keywords changed (for a log line that names attributes, never values).
    """
    changed = []
    for element in list(obj):
        keyword = element.keyword
        if not keyword or keyword in COPIED_THROUGH or element.tag not in source:
            continue
        if element.VR == "SQ" or source[element.tag].value != element.value:
            continue
        if is_well_formed(element):
            continue
        del obj[element.tag]
        if keyword in TYPE_2:
            setattr(obj, keyword, "")
        changed.append(keyword)
    return changed


def _text_values(datasets: Iterable[Dataset]) -> set[str]:
    found: set[str] = set()
    for ds in datasets:
        for element in ds:
            if element.VR not in _TEXT_VRS:
                continue
            for value in _values(element):
                text = str(value)
                found.add(text)
                found.update(part for part in re.split(r"[\^=]", text) if part)
    return {text for text in found if len(text.strip()) >= _MIN_REDACTED}


def redact(message: str, sources: Iterable[Dataset]) -> str:
    """``message`` with every text value of the sources' top level replaced by "<value>"."""
    for text in sorted(_text_values(sources), key=len, reverse=True):
        message = message.replace(text, "<value>")
    return message
