"""Grounded findings drawn on the image: a Softcopy Presentation State (PS3.3 A.33).

For viewers without SR support, each finding's boxes become closed POLYLINE graphics in PIXEL
units on the frontal image (PS3.3 C.10.5 Graphic Annotation), each with a text label: the
finding's number and its sentence, up to 64 characters, so two boxes of "There is increased
density in the right/left hemithorax" keep their side. They sit on one graphic layer with a
recommended display colour (C.10.7, Graphic Layer Recommended Display CIELab Value). Body Part
Examined and Laterality come from the image (:mod:`converters.anatomy`): the side from Image
Laterality on DX and MG, no Laterality at all for an unpaired part such as the chest.

Grayscale images get a Grayscale Softcopy Presentation State whose modality and VOI LUT
transformations are copied from the image by
highdicom, so the image looks as it would without the presentation state (MONOCHROME1 keeps its
inverse presentation LUT); colour images get a Color Softcopy Presentation State (A.34) with an
sRGB ICC profile, the one highdicom ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.dataelem import DataElement

from converters.anatomy import set_body_part_and_laterality
from converters.codes import clip_text
from converters.grounding import ImageFrame, PixelFinding, clip_box, closed_rectangle
from converters.intensity import lut_values
from converters.provenance import (
    MANUFACTURER,
    UTF8,
    Provenance,
    ResultKind,
    study_uid_of,
)

LAYER = "AI_FINDINGS"
CONTENT_LABEL = "AI_FINDINGS"  # CS, 16 characters at most
_SRGB_PROFILE = ("highdicom", "_icc_profiles/sRGB_v4_ICC_preference.icc")
LAYER_COLOUR = (255, 225, 25)  # yellow: stands out on grayscale radiographs


def _objects(
    findings: Sequence[PixelFinding], frontal: ImageFrame, provenance: Provenance, study_uid: str
) -> tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]:
    graphics, texts = [], []
    for index, finding in enumerate(findings):
        for number, raw in enumerate(finding.boxes):
            box = clip_box(raw, frontal.image)
            item = f"finding {index + 1}.{number + 1}"
            uid = provenance.tracking_uid(study_uid, ResultKind.FINDINGS_PR, item)
            graphics.append(
                hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                    graphic_data=closed_rectangle(box),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    tracking_id=item,
                    tracking_uid=uid,
                )
            )
            texts.append(
                hd.pr.TextObject(
                    text_value=finding_label(index, finding.text),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    anchor_point=(box.x_min, box.y_min),
                    anchor_point_visible=False,
                )
            )
    return graphics, texts


def finding_label(index: int, text: str) -> str:
    """The label drawn by a finding's boxes: its number and sentence, side included."""
    return clip_text(f"{index + 1}: {text}")


def _srgb_profile() -> bytes:
    package, path = _SRGB_PROFILE
    return resources.files(package).joinpath(path).read_bytes()


def build_findings_pr(
    sources: Sequence[Dataset],
    frontal: ImageFrame,
    findings: Sequence[PixelFinding],
    provenance: Provenance,
) -> Dataset | None:
    """A presentation state drawing every box with its label; None when no finding has boxes."""
    study_uid = study_uid_of(sources)
    graphics, texts = _objects(findings, frontal, provenance, study_uid)
    if not graphics:
        return None
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER,
        order=1,
        description="AI findings",
        display_color=hd.color.CIELabColor.from_rgb(*LAYER_COLOUR),
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[frontal.image],
        graphic_layer=layer,
        referenced_frame_number=frontal.frame_numbers,
        graphic_objects=graphics,
        text_objects=texts,
    )
    common: dict[str, Any] = {
        "referenced_images": [with_ow_voi_lut(frontal.image)],
        "series_instance_uid": provenance.series_uid(sources, ResultKind.FINDINGS_PR),
        "series_number": ResultKind.FINDINGS_PR.series_number,
        "sop_instance_uid": provenance.instance_uid(sources, ResultKind.FINDINGS_PR),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": provenance.model_name,
        "software_versions": " ".join(provenance.software_versions),
        "device_serial_number": provenance.device_serial_number,
        "content_label": CONTENT_LABEL,
        "content_description": provenance.series_description(ResultKind.FINDINGS_PR)[:64],
        "graphic_annotations": [annotation],
        "graphic_layers": [layer],
        "specific_character_set": UTF8,
    }
    pr: Dataset
    if frontal.image.get("SamplesPerPixel", 1) == 3:
        pr = hd.pr.ColorSoftcopyPresentationState(**common, icc_profile=_srgb_profile())
    else:
        pr = hd.pr.GrayscaleSoftcopyPresentationState(
            **common, presentation_lut_transformation=_presentation_lut(frontal.image)
        )
    provenance.stamp(pr, ResultKind.FINDINGS_PR, frontal.image)
    set_body_part_and_laterality(pr, frontal.image)
    return pr


def with_ow_voi_lut(image: Dataset) -> Dataset:
    """``image`` as highdicom can read it: VOI LUT Data as OW bytes (it reads no US data).

    A shallow copy with a new VOI LUT Sequence; the image itself is not changed.
    """
    items = image.get("VOILUTSequence")
    if not items or all(isinstance(item.get("LUTData"), bytes) for item in items):
        return image
    copy = Dataset()
    for element in image:
        copy.add(element)
    if hasattr(image, "file_meta"):
        copy.file_meta = image.file_meta
    converted = []
    for item in items:
        new = Dataset()
        for element in item:
            if element.keyword != "LUTData":
                new.add(element)
        new.add(DataElement(0x00283006, "OW", lut_values(item).astype("<u2").tobytes()))
        converted.append(new)
    copy.VOILUTSequence = converted
    return copy


def _presentation_lut(image: Dataset) -> hd.PresentationLUTTransformation:
    """INVERSE for MONOCHROME1, IDENTITY otherwise (PS3.3 C.11.6, C.11.4).

    A presentation state's output is in P-values, where the lowest value is black; a
    MONOCHROME1 image shows its lowest values white, so it needs the inverse shape to look the
    same with the presentation state applied as without it.
    """
    inverse = str(image.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    shape = (
        hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
    )
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)
