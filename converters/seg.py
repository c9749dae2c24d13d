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

Each segment carries a Recommended Display CIELab Value (C.8.20.2) from :data:`PALETTE`, a fixed
list of distinguishable colours given in sRGB, so viewers (3D Slicer through dcmqi, OHIF) show
segments apart and the same segment number always looks the same. The SEG says which body part
and side it describes (:mod:`converters.anatomy`): Body Part Examined, and the side as each
segment's type modifier. Every UID in it,
the Dimension Organization UID included (highdicom draws a random one), derives from the
provenance and the sources, so the same input gives the same bytes.

Gantry-tilted series. A CT acquired with a tilted gantry has slice planes that are not
perpendicular to the slice stacking direction (the in-plane axes are sheared against it). The
SEG built on it is valid and exact: each frame carries its own Image Position and the shared
Image Orientation, as the source slices do (dciodvfy and highdicom read it back unchanged). Some
consumers assume an orthogonal grid and fail on it: dcmqi's ``segimage2itkimage`` refused it in
an audit ("origin outside image geometry"); version 1.5.7 reads it but stacks the frames along
the slice normal, so frame k lands k x spacing x sin(tilt) off along the column direction
(2.1 mm per slice for 5 mm slices at 25 degrees); pydicom-seg stacks its frames on a wrong axis.
Resample the source series to an orthogonal grid before segmenting when such consumers matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from converters.anatomy import set_body_part_and_laterality, side_modifier
from converters.codes import AI_FAMILY, clip_text, segment_property
from converters.provenance import (
    MANUFACTURER,
    UTF8,
    Provenance,
    ResultKind,
    set_fresh,
    study_uid_of,
)

# Distinguishable colours (sRGB), after Trubetskoy's "20 simple distinct colours"; segment n
# gets entry (n - 1) modulo the length. Written as CIELab (PS3.3 C.10.7.1.1).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)


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


def segment_colour(number: int) -> hd.color.CIELabColor:
    """The recommended display colour of segment ``number`` (1-based), from :data:`PALETTE`."""
    red, green, blue = PALETTE[(number - 1) % len(PALETTE)]
    return hd.color.CIELabColor.from_rgb(red, green, blue)


def _description(
    number: int, prompt: Prompt, provenance: Provenance, source: Dataset
) -> hd.seg.SegmentDescription:
    prop = segment_property(prompt.category, prompt.text)
    study_uid = str(source.StudyInstanceUID)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=clip_text(prompt.text),
        segmented_property_category=prop.category,
        segmented_property_type=prop.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(provenance, [prompt.text]),
        tracking_uid=segment_tracking_uid(provenance, study_uid, number, prompt),
        tracking_id=clip_text(prompt.text),
        display_color=segment_colour(number),
    )
    side = side_modifier(source)
    if side is not None:
        description.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(side)]
    return description


def segment_tracking_uid(
    provenance: Provenance, study_uid: str, number: int, prompt: Prompt
) -> str:
    """The Tracking UID of a segment; the SR that references it uses the same one."""
    return provenance.tracking_uid(study_uid, ResultKind.SEG, f"{number}:{prompt.text}")


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, with its overlap check done frame by frame for a boolean
    (frames, rows, columns, segments) stack: highdicom 0.28 sums the whole stack over the
    segments into an int64 array, eight bytes per pixel position (600 MiB for a 300-slice
    512x512 CT), the largest allocation of the whole build. The answer, and so the object, is
    the same (Segments Overlap, PS3.3 C.8.20.2: YES when a pixel belongs to two segments);
    everything else is highdicom's own."""

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: Any,
        segment_numbers: npt.NDArray[Any],
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        if not (
            isinstance(pixel_array, np.ndarray)
            and pixel_array.dtype == np.bool_
            and pixel_array.ndim == 4
            and pixel_array.shape[-1] == len(segment_numbers) > 1
            and segmentation_type == hd.seg.SegmentationTypeValues.BINARY
        ):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        overlap = any(bool((frame.sum(axis=-1, dtype=np.uint8) > 1).any()) for frame in pixel_array)
        values = hd.seg.SegmentsOverlapValues
        return pixel_array, values.YES if overlap else values.NO


def build_seg(sources: Sequence[Dataset], masks: SourceMasks, provenance: Provenance) -> SegOutcome:
    """A BINARY SEG with one segment per prompt that found something, or None if none did."""
    study_uid_of(sources)  # one study, or ValueError
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
        _description(n, p, provenance, sources[0]) for n, p in enumerate(segments, start=1)
    ]
    seg = _Segmentation(
        source_images=list(sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=provenance.series_uid(sources, ResultKind.SEG),
        series_number=ResultKind.SEG.series_number,
        sop_instance_uid=provenance.instance_uid(sources, ResultKind.SEG),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model_name,
        software_versions=" ".join(provenance.software_versions),  # restamped as two values
        device_serial_number=provenance.device_serial_number,
        content_label="AI_SEG",
        content_description=clip_text(provenance.series_description(ResultKind.SEG)),
        transfer_syntax_uid=ExplicitVRLittleEndian,  # BINARY SEG: no compression (highdicom)
        specific_character_set=UTF8,
    )
    provenance.stamp(seg, ResultKind.SEG, sources[0])
    _fix_projection_geometry(seg, sources[0])
    _fix_dimension_organization(seg, provenance.content_uid(sources, ResultKind.SEG, "dimension"))
    set_body_part_and_laterality(seg, sources[0], laterality=False)
    return SegOutcome(seg, segments, not_found)


def _fix_dimension_organization(seg: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID (C.7.6.17) by a derived one."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


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
