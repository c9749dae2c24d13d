"""Rejection note for superseded results: a Key Object Selection document (IHE IOCM).

When a study is processed again with other inputs (a follow-up adds slices, a series is
re-sent), the new results get new UIDs (:mod:`converters.provenance`) and the earlier
generation must be withdrawn. IHE Imaging Object Change Management (IOCM, RAD TF-1 §39) does
that with a Key Object Selection document (PS3.3 A.35.4, TID 2010) whose title says why the
referenced instances are rejected; an IOCM-aware archive then hides them from queries and
retrieval.

Title: (113001, DCM, "Rejected for Quality Reasons"), CID 7011. The earlier results are not
wrong about the images they saw; they are incomplete or stale against the study as it now
stands, which is the quality reason IOCM gives for "the instances should not be used". The other
rejection titles fit worse: (113037, DCM, "Rejected for Patient Safety Reasons") marks an
instance that must not be viewed because it could harm a patient (a wrong-side image) and
triggers incident handling at many sites; (113038, "Incorrect Modality Worklist Entry") is for
images filed under the wrong order; (113039, "Data Retention Policy Expired") asks the archive to
delete, which a re-run is not.

PACS without IOCM store the note as one more object in the study (Orthanc with default settings
does: it keeps the earlier results, the new ones and the note side by side) and keep showing
the earlier results; the new SR names them in its Predecessor Documents Sequence, so a reader
can tell which generation is current. Removing the earlier results there is a manual step.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code

from converters.provenance import (
    MANUFACTURER,
    UTF8,
    Provenance,
    ResultKind,
    ResultRef,
    study_uid_of,
)
from converters.sr import device_observer

REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
# Patient and study attributes a stand-in for an earlier result carries (from the new sources).
_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _stand_in(ref: ResultRef, source: Dataset) -> Dataset:
    """A dataset with what highdicom reads of a referenced earlier result: UIDs and identity."""
    item = Dataset()
    for keyword in _STUDY_KEYWORDS:
        if keyword in source:
            item[keyword] = source[keyword]
    item.StudyInstanceUID = ref.study_uid
    item.SeriesInstanceUID = ref.series_uid
    item.SOPClassUID = ref.sop_class_uid
    item.SOPInstanceUID = ref.sop_instance_uid
    return item


def build_rejection_note(
    sources: Sequence[Dataset], superseded: Sequence[ResultRef], provenance: Provenance
) -> Dataset:
    """A KOS rejecting ``superseded`` (earlier results of the study of ``sources``).

    Its UIDs derive from the new generation's sources and the provenance, like the results it
    accompanies, so a re-run gives the same note.
    """
    study_uid = study_uid_of(sources)
    if not superseded:
        raise ValueError("a rejection note needs at least one superseded result")
    if any(ref.study_uid != study_uid for ref in superseded):
        raise ValueError("superseded results must belong to the sources' study")
    refs = sorted(set(superseded), key=lambda r: (r.series_uid, r.sop_instance_uid))
    stand_ins = [_stand_in(ref, sources[0]) for ref in refs]
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=stand_ins,
        observer_device_context=device_observer(provenance),
        description="Superseded by AI results computed on the study's current images",
    )
    kind = ResultKind.REJECTION_KOS
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=stand_ins,
        content=content,
        series_instance_uid=provenance.series_uid(sources, kind),
        series_number=kind.series_number,
        sop_instance_uid=provenance.instance_uid(sources, kind),
        instance_number=1,
        manufacturer=MANUFACTURER,
        specific_character_set=UTF8,
    )
    provenance.stamp(kos, kind, sources[0])
    return kos
