"""The gate every result object passes before it may leave: a pure self-check.

The object is encoded the way it will travel (Part 10 file, its own transfer syntax), read back
with pydicom and with highdicom's reader for its SOP class, and then checked: the identity
attributes the PACS files it by are present and equal to the source study's (PS3.3 C.7.1.1
Patient, C.7.2.1 General Study), it has its own series and instance UIDs, and every SOP instance
it references is one of the sources (or a companion result built with it, e.g. the SEG an SR
points to). A failure raises :class:`ResultCheckError`, which the pipeline maps to a failed job;
messages name attributes, never their values (they may identify the patient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.uid import (
    ColorSoftcopyPresentationStateStorage,
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
)

from converters.copied import expected_copy

# Attributes a result must share with its source study (the PACS files results by them).
IDENTITY_KEYWORDS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
REQUIRED_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality")


def _read_presentation_state(ds: Dataset) -> None:
    """Highdicom 0.28 has no presentation state reader: check the graphic layer references."""
    layers = {str(item.GraphicLayer) for item in ds.get("GraphicLayerSequence", [])}
    for annotation in ds.get("GraphicAnnotationSequence", []):
        if str(annotation.GraphicLayer) not in layers:
            raise ValueError("graphic annotation on an undeclared graphic layer")
        if not annotation.get("ReferencedImageSequence"):
            raise ValueError("graphic annotation references no image")
        for graphic in annotation.get("GraphicObjectSequence", []):
            if len(graphic.GraphicData) != 2 * int(graphic.NumberOfGraphicPoints):
                raise ValueError("graphic data does not match its number of points")


# The read-back is the gate's own throwaway copy, so highdicom's readers may work on it in place
# (``copy=False``): its deep copy of a 200-image SR or SEG cost as much as the reading itself.
_READERS: dict[str, Callable[[Dataset], Any]] = {
    SegmentationStorage: lambda ds: hd.seg.Segmentation.from_dataset(ds, copy=False),
    Comprehensive3DSRStorage: lambda ds: hd.sr.Comprehensive3DSR.from_dataset(ds, copy=False),
    GrayscaleSoftcopyPresentationStateStorage: _read_presentation_state,
    ColorSoftcopyPresentationStateStorage: _read_presentation_state,
    KeyObjectSelectionDocumentStorage: hd.ko.KeyObjectSelectionDocument.from_dataset,
}


class ResultCheckError(ValueError):
    """A built result object failed its self-check and must not be sent."""


# The attribute under which the gate leaves the Part 10 bytes it checked on the object, so the
# writer sends those very bytes instead of encoding the object a second time.
_GATE_BYTES = "_gate_part10"


def encode(obj: Dataset) -> bytes:
    """The object as a DICOM Part 10 file, exactly as it would be written or sent."""
    buffer = BytesIO()
    obj.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def checked_bytes(obj: Dataset) -> bytes:
    """The Part 10 bytes the gate read back and checked for ``obj`` (what must be written and
    sent: the very bytes that passed), or a fresh encoding for an object that did not pass
    through :func:`check_result`. A result is not changed after its check, so both are equal."""
    data = obj.__dict__.get(_GATE_BYTES)
    return data if isinstance(data, bytes) else encode(obj)


def _read_back(obj: Dataset) -> Dataset:
    try:
        data = encode(obj)
        back = dcmread(BytesIO(data))
    except Exception as exc:  # any encoding or parsing failure means the object is unusable
        raise ResultCheckError(f"result does not encode and read back: {exc}") from exc
    reader = _READERS.get(str(back.get("SOPClassUID", "")))
    if reader is None:
        raise ResultCheckError(f"unexpected result SOP class {back.get('SOPClassUID')}")
    try:
        reader(back)
    except Exception as exc:  # highdicom raises many types for malformed objects
        raise ResultCheckError(f"highdicom cannot read the result back: {exc}") from exc
    obj.__dict__[_GATE_BYTES] = data
    return back


def _check_identity(back: Dataset, source: Dataset) -> None:
    for keyword in REQUIRED_KEYWORDS:
        if not back.get(keyword):
            raise ResultCheckError(f"result lacks {keyword}")
    for keyword in IDENTITY_KEYWORDS:
        expected = expected_copy(source, keyword)  # malformed values: converters.copied
        if keyword not in back:
            raise ResultCheckError(f"result lacks {keyword}")
        if str(back.get(keyword, "")) != (expected or ""):
            raise ResultCheckError(f"result's {keyword} differs from the source study's")


def _referenced_instances(back: Dataset) -> set[str]:
    found = set()
    for element in back.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


def check_result(
    obj: Dataset, sources: Sequence[Dataset], companions: Sequence[Dataset] = ()
) -> Dataset:
    """Check ``obj`` against its sources; return it unchanged, or raise ResultCheckError."""
    if not sources:
        raise ResultCheckError("no source images to check the result against")
    back = _read_back(obj)
    _check_identity(back, sources[0])
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    source_series = {str(ds.SeriesInstanceUID) for ds in sources}
    if str(back.SOPInstanceUID) in source_uids or str(back.SeriesInstanceUID) in source_series:
        raise ResultCheckError("result reuses a source instance or series UID")
    known = source_uids | {str(ds.SOPInstanceUID) for ds in companions}
    unknown = _referenced_instances(back) - known
    if unknown:
        raise ResultCheckError(
            f"result references {len(unknown)} instance(s) not among its sources"
        )
    return obj
