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


# Prompts a rule may send, by their own words: these win over the model's category, which is
# coarse ("other organ" for a spleen). Every prompt of config/rules.yaml and the default rules
# is here (tests/converters/test_prompt_codes.py keeps it so).
_PROMPTS: dict[str, SegmentProperty] = {
    "liver": _PROPERTIES["liver"],
    "lung": _PROPERTIES["lung"],
    "lungs": _PROPERTIES["lung"],
    "kidney": _PROPERTIES["kidney"],
    "kidneys": _PROPERTIES["kidney"],
    "pancreas": _PROPERTIES["pancreas"],
    "heart": _PROPERTIES["heart anatomies"],
    "brain": _PROPERTIES["brain anatomies"],
    "eye": _PROPERTIES["eye anatomies"],
    "vessel": _PROPERTIES["vessel"],
    "spleen": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Spleen),
    "stomach": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Stomach),
    "gallbladder": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Gallbladder),
    "prostate": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Prostate),
    "colon": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Colon),
    "aorta": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Aorta),
    "esophagus": SegmentProperty(ANATOMICAL_STRUCTURE, codes.SCT.Esophagus),
    "tumor": _PROPERTIES["tumor"],
    "tumour": _PROPERTIES["tumor"],
    "mass": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Mass),
    "nodule": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Nodule),
    "cyst": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Cyst),
    "lesion": _PROPERTIES["other lesion"],
    "other lesion": _PROPERTIES["other lesion"],
    "infection": _PROPERTIES["infection"],
    "pleural effusion": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.PleuralEffusion),
    "pneumothorax": SegmentProperty(ABNORMAL_STRUCTURE, codes.SCT.Pneumothorax),
}
# Categories too generic to stand for a prompt: a prompt falling back on them is "unmapped".
_GENERIC_CATEGORIES = frozenset({"other", "other organ", "other abnormality"})
UNMAPPED_PROMPT = Code("PROMPT", PRIVATE_SCHEME, "Prompt without a standard code")


def segment_property(category: str, prompt: str | None = None) -> SegmentProperty:
    """The coded property of a MedImageParse prompt and the category the model gave it.

    The prompt's own words win (:data:`_PROMPTS`); then a specific model category; a prompt
    with neither is coded as what it is, an unmapped prompt: category :data:`UNMAPPED_PROMPT`
    and a private type code whose meaning keeps the prompt's text. Without a prompt, unknown
    categories count as "other".
    """
    if prompt is not None:
        words = " ".join(prompt.lower().split())
        if words in _PROMPTS:
            return _PROMPTS[words]
    key = category.strip().lower()
    if prompt is None or (key in _PROPERTIES and key not in _GENERIC_CATEGORIES):
        return _PROPERTIES.get(key, _PROPERTIES["other"])
    return SegmentProperty(UNMAPPED_PROMPT, prompt_code(prompt))


def known_prompts() -> frozenset[str]:
    """The prompts with a standard code of their own."""
    return frozenset(_PROMPTS)


def prompt_code(prompt: str) -> Code:
    """A private code for a prompt no standard code covers; its meaning is the prompt's text."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest().upper()
    return Code("P" + digest[: MAX_CODE_VALUE - 1], PRIVATE_SCHEME, clip_text(prompt))


# SR concept names and values (PS3.16 DCM and SNOMED CT).
PROBABILITY = codes.DCM.Probability  # (122157, DCM)
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1"
FINDING = codes.DCM.Finding  # (121071, DCM)
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
# What a prompt that found no region records (TID 1500 row 13): the algorithm did not detect it,
# a test result, not a clinical absence of the structure ("Absent" would read "no liver").
NOT_DETECTED = Code("260415000", "SCT", "Not detected")
COMMENT = codes.DCM.Comment  # (121106, DCM)
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
