"""Grounded findings drawn on the image: a Softcopy Presentation State (PS3.3 A.33).

For viewers without SR support, each finding's boxes become closed POLYLINE graphics in PIXEL
units on the frontal image (PS3.3 C.10.5 Graphic Annotation), each with a short text label (the
first words of the finding), on one graphic layer. Grayscale images get a Grayscale Softcopy
Presentation State whose modality and VOI LUT transformations are copied from the image by
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

from converters.grounding import ImageFrame, PixelFinding, clip_box, closed_rectangle, short_label
from converters.provenance import (
    MANUFACTURER,
    Provenance,
    ResultKind,
    set_fresh,
    study_uid_of,
)

LAYER = "AI_FINDINGS"
CONTENT_LABEL = "AI_FINDINGS"  # CS, 16 characters at most
_SRGB_PROFILE = ("highdicom", "_icc_profiles/sRGB_v4_ICC_preference.icc")


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
                    text_value=short_label(finding.text),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    anchor_point=(box.x_min, box.y_min),
                    anchor_point_visible=False,
                )
            )
    return graphics, texts


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
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="AI findings")
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[frontal.image],
        graphic_layer=layer,
        referenced_frame_number=frontal.frame_numbers,
        graphic_objects=graphics,
        text_objects=texts,
    )
    common: dict[str, Any] = {
        "referenced_images": [frontal.image],
        "series_instance_uid": provenance.series_uid(study_uid, ResultKind.FINDINGS_PR),
        "series_number": ResultKind.FINDINGS_PR.series_number,
        "sop_instance_uid": provenance.instance_uid(study_uid, ResultKind.FINDINGS_PR),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": provenance.model_name,
        "software_versions": " ".join(provenance.software_versions),
        "device_serial_number": provenance.device_serial_number,
        "content_label": CONTENT_LABEL,
        "content_description": provenance.series_description(ResultKind.FINDINGS_PR)[:64],
        "graphic_annotations": [annotation],
        "graphic_layers": [layer],
    }
    pr: Dataset
    if frontal.image.get("SamplesPerPixel", 1) == 3:
        pr = hd.pr.ColorSoftcopyPresentationState(**common, icc_profile=_srgb_profile())
    else:
        pr = hd.pr.GrayscaleSoftcopyPresentationState(
            **common, presentation_lut_transformation=_presentation_lut(frontal.image)
        )
    provenance.stamp(pr, ResultKind.FINDINGS_PR)
    set_fresh(pr, "Laterality", frontal.image.get("Laterality", ""))  # Type 2C (C.7.3.1)
    return pr


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
