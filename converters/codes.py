"""Coded concepts for result objects: segment properties, SR concept names, private codes.

MedImageParse answers each prompt with one of 16 categories (docs/models.md §3.2). A segment
needs a Segmented Property Category (PS3.16 CID 7150) and a Segmented Property Type (CID 7151,
or CID 7152-7160 for its sub-groups), both SNOMED CT; :func:`segment_property` maps each model
category onto such a pair. Concepts no standard code covers (free-text classification labels,
"top label") use a private coding scheme designator starting with ``99`` (PS3.16 §8.1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99PACSAI"
MAX_CODE_VALUE = 16  # SH (PS3.5 §6.2)
MAX_CODE_MEANING = 64  # LO

# CID 7150 Segmentation Property Categories.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure
BODY_SUBSTANCE = codes.SCT.BodySubstance
TISSUE = codes.SCT.Tissue


@dataclass(frozen=True)
class SegmentProperty:
    """Segmented Property Category (CID 7150) and Type (CID 7151) of one segment."""

    category: Code
    type: Code


_PROPERTIES: dict[str, SegmentProperty] = {
    "liver": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Liver),
    "lung": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Lung),
    "kidney": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Kidney),
    "pancreas": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Pancreas),
    "heart anatomies": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Heart),
    "brain anatomies": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Brain),
    "eye anatomies": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Eye),
    "vessel": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.BloodVessel),
    "other organ": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Organ),
    "tumor": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Neoplasm),
    # pydicom's dictionary maps "InfectiousDisease" to a department code; use the disorder.
    "infection": SegmentProperty(ABNORMAL_STRUCTURE, Code("40733004", "SCT", "Infectious disease")),
    "other lesion": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Lesion),
    "fluid disturbance": SegmentProperty(BODY_SUBSTANCE, codes.SCT.BodyFluid),
    "other abnormality": SegmentProperty(ABNORMAL_STRUCTURE, ABNORMAL_STRUCTURE),
    "histology structure": SegmentProperty(TISSUE, TISSUE),
    "other": SegmentProperty(ANATOMICAL_STRUCTURE, ANATOMICAL_STRUCTURE),
}


def segment_property(category: str) -> SegmentProperty:
    """The coded property of a MedImageParse category; unknown categories count as "other"."""
    return _PROPERTIES.get(category.strip().lower(), _PROPERTIES["other"])


# SR concept names and values (PS3.16 DCM and SNOMED CT).
PROBABILITY = codes.DCM.Probability  # (122157, DCM)
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1"
FINDING = codes.DCM.Finding  # (121071, DCM)
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
YES = codes.SCT.Yes
NO = codes.SCT.No
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
DRAFT_REPORT = Code("18782-3", "LN", "Radiology Study observation (narrative)")
# TID 1500 row 4 "Procedure reported" is DCID 100 (Quantitative Diagnostic Imaging Procedure);
# "Imaging procedure" is in that group for every modality, "Chest imaging" is not.
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure
# CID 29 Acquisition Modality: the values TID 1602 (Image Library Entry Descriptors) row 1 takes
# for Modality. Modalities of derived images such as OT (secondary capture) are not among them.
ACQUISITION_MODALITIES = frozenset(code.value for code in codes.cid29.concepts.values())
MODALITY = codes.DCM.Modality  # (121139, DCM), TID 1602 row 1
AI_FAMILY = codes.cid7162.ArtificialIntelligence  # CID 7162 Algorithm Family
DEVICE_OBSERVER = codes.DCM.Device
TOP_LABEL = Code("TOPLABEL", PRIVATE_SCHEME, "Highest probability label")
# highdicom 0.28.2 writes this concept's meaning as "Source Image for Segmentation"; PS3.16
# Table D-1 has it in sentence case, and SR validators compare meanings case by case.
SOURCE_IMAGE_FOR_SEGMENTATION = codes.DCM.SourceImageForSegmentation  # (121233, DCM)


def clip_text(text: str, limit: int = MAX_CODE_MEANING) -> str:
    """One line of ``text`` cut to ``limit`` characters (LO/SH values cannot hold more).

    The cut is marked with ASCII dots: the source's character set may lack an ellipsis.
    """
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def private_label_code(label: str) -> Code:
    """A private code for a free-text label: value from a hash of the label, meaning the label."""
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest().upper()
    return Code("L" + digest[: MAX_CODE_VALUE - 1], PRIVATE_SCHEME, clip_text(label))
