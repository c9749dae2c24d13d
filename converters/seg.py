"""MedImageParse masks as a DICOM Segmentation (PS3.3 A.51 Segmentation IOD), with highdicom.

One BINARY segment per prompt that found something, labelled with the prompt and coded from the
model's category (:mod:`converters.codes`), marked AUTOMATIC with the algorithm identified
(PS3.3 C.8.20.2 Segment Description). A prompt whose mask is empty gets no segment: an empty
segment tells a viewer nothing and some reject it; it is returned as "not found" instead, for the
SR to record. When no prompt found anything, no SEG is built at all.

Sources are one multi-frame image (Enhanced CT/MR, ...) or one or more single-frame images of
one series (a CR, a CT series). Masks come already on the source pixel grid, one frame per source
frame in the order given; the geometry (plane positions, or none for images without a Frame of
Reference) comes from the sources through highdicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from converters.codes import AI_FAMILY, clip_text, segment_property
from converters.provenance import MANUFACTURER, Provenance, ResultKind, set_fresh, study_uid_of


@dataclass(frozen=True)
class Prompt:
    """One MedImageParse prompt and the category the model answered for it."""

    text: str
    category: str


@dataclass(frozen=True)
class SourceMasks:
    """Masks on the source pixel grid: shape (prompts, frames, rows, columns), truthy = inside."""

    prompts: tuple[Prompt, ...]
    masks: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SegOutcome:
    """The SEG (None when every prompt came back empty), its segments in order, the misses."""

    seg: Dataset | None
    segments: tuple[Prompt, ...]
    not_found: tuple[Prompt, ...]


def frame_count(sources: Sequence[Dataset]) -> int:
    """Frames the sources hold together: one per single-frame image, or the multi-frame's."""
    if len(sources) == 1:
        return int(sources[0].get("NumberOfFrames") or 1)
    if any(int(ds.get("NumberOfFrames") or 1) != 1 for ds in sources):
        raise ValueError("several source images must all be single-frame")
    return len(sources)


def _check_masks(sources: Sequence[Dataset], masks: SourceMasks) -> None:
    shape = masks.masks.shape
    expected = (len(masks.prompts), frame_count(sources), sources[0].Rows, sources[0].Columns)
    if shape != expected:
        raise ValueError(f"masks have shape {shape}; the sources and prompts need {expected}")
    if any((ds.Rows, ds.Columns) != expected[2:] for ds in sources):
        raise ValueError("source images differ in size")


def algorithm_identification(
    provenance: Provenance, prompts: Sequence[str]
) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification (PS3.3 C.8.20.2.1 / TID 4019): model, version, family."""
    return hd.AlgorithmIdentificationSequence(
        name=provenance.model_name,
        family=AI_FAMILY,
        version=clip_text(provenance.model.version),
        source=clip_text(provenance.rule),
        parameters={"prompt": clip_text("; ".join(prompts))} if prompts else None,
    )


def _description(
    number: int, prompt: Prompt, provenance: Provenance, study_uid: str
) -> hd.seg.SegmentDescription:
    prop = segment_property(prompt.category)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=clip_text(prompt.text),
        segmented_property_category=prop.category,
        segmented_property_type=prop.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(provenance, [prompt.text]),
        tracking_uid=segment_tracking_uid(provenance, study_uid, number, prompt),
        tracking_id=clip_text(prompt.text),
    )


def segment_tracking_uid(
    provenance: Provenance, study_uid: str, number: int, prompt: Prompt
) -> str:
    """The Tracking UID of a segment; the SR that references it uses the same one."""
    return provenance.tracking_uid(study_uid, ResultKind.SEG, f"{number}:{prompt.text}")


def build_seg(sources: Sequence[Dataset], masks: SourceMasks, provenance: Provenance) -> SegOutcome:
    """A BINARY SEG with one segment per prompt that found something, or None if none did."""
    study_uid = study_uid_of(sources)
    _check_masks(sources, masks)
    found = [i for i in range(len(masks.prompts)) if masks.masks[i].any()]
    not_found = tuple(p for i, p in enumerate(masks.prompts) if i not in found)
    segments = tuple(masks.prompts[i] for i in found)
    if not found:
        return SegOutcome(None, (), not_found)
    # highdicom wants (frames, rows, columns, segments) for several binary segments; a view
    # when every prompt found something (no copy of the whole mask stack), else the found ones.
    kept = masks.masks if len(found) == len(masks.prompts) else masks.masks[found]
    pixels = np.moveaxis(np.asarray(kept, dtype=np.bool_), 0, -1)
    descriptions = [
        _description(n, p, provenance, study_uid) for n, p in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=provenance.series_uid(study_uid, ResultKind.SEG),
        series_number=ResultKind.SEG.series_number,
        sop_instance_uid=provenance.instance_uid(study_uid, ResultKind.SEG),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model_name,
        software_versions=" ".join(provenance.software_versions),  # restamped as two values
        device_serial_number=provenance.device_serial_number,
        content_label="AI_SEG",
        content_description=clip_text(provenance.series_description(ResultKind.SEG)),
        transfer_syntax_uid=ExplicitVRLittleEndian,  # BINARY SEG: no compression (highdicom)
    )
    provenance.stamp(seg, ResultKind.SEG)
    _fix_projection_geometry(seg, sources[0])
    return SegOutcome(seg, segments, not_found)


def _fix_projection_geometry(seg: Dataset, source: Dataset) -> None:
    """Geometry for sources without a patient coordinate system (CR, DX, secondary capture).

    PS3.3 C.7.6.1 makes Patient Orientation Type 2C when there is no Image Orientation
    (Patient); highdicom leaves it out, so it is copied from the source (empty when unknown).
    Some projection images carry a Pixel Spacing of zero (unknown); a SEG repeating it in its
    Pixel Measures is invalid (PS3.3 C.7.6.16.2.1 wants a positive spacing), so it is dropped.
    """
    if "FrameOfReferenceUID" in source:
        return
    set_fresh(seg, "PatientOrientation", source.get("PatientOrientation", ""))
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    spacing = measures[0].get("PixelSpacing") if measures else None
    if measures is not None and (not spacing or any(float(v) <= 0 for v in spacing)):
        del shared.PixelMeasuresSequence
