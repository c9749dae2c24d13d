"""Findings presentation state: boxes and labels on the frontal image, display kept as is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ColorSoftcopyPresentationStateStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)
from result_cases import (
    SOURCE_KINDS,
    dciodvfy,
    findings_for,
    frontal_of,
    load_sources,
    provenance,
    rectangle,
    write,
)

from converters.frames import frame_view
from converters.grounding import PixelFinding
from converters.pr import build_findings_pr, finding_label
from converters.results import build_report_results


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_presentation_state_draws_every_box_with_its_label(kind: str, tmp_path: Path) -> None:
    """Each box is a closed 5-point PIXEL polyline on the frontal image, labelled by its finding."""
    sources = load_sources(kind)
    frontal = frontal_of(sources)
    findings = findings_for(frontal.image)
    objects = build_report_results(sources, frontal, findings, provenance("cxrreportgen"))
    assert len(objects) == 2
    path = write(objects[1], tmp_path, "pr")
    dciodvfy(path)
    pr = pydicom.dcmread(path)
    (annotation,) = pr.GraphicAnnotationSequence
    (image_ref,) = annotation.ReferencedImageSequence
    assert image_ref.ReferencedSOPInstanceUID == frontal.image.SOPInstanceUID
    if frontal.frame is not None:
        assert list(map(int, np.atleast_1d(image_ref.ReferencedFrameNumber))) == [frontal.frame]
    boxes = [findings[1].boxes[0], findings[1].boxes[1], findings[2].boxes[0]]
    graphics = annotation.GraphicObjectSequence
    assert len(graphics) == 3
    for graphic, box in zip(graphics, boxes, strict=True):
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        points = np.asarray(graphic.GraphicData, dtype=np.float32).reshape(-1, 2)
        assert np.allclose(points, rectangle(box))
    labels = [str(t.UnformattedTextValue) for t in annotation.TextObjectSequence]
    assert labels == [finding_label(1, findings[1].text)] * 2 + [finding_label(2, findings[2].text)]
    assert pr.SeriesDescription == "AI CXRReportGen findings PR (emulator)"


@pytest.mark.parametrize("kind", ["cr_chest", "ct_series", "enhanced_ct", "mr_small"])
def test_grayscale_state_keeps_the_image_window_and_polarity(kind: str) -> None:
    """The grayscale state repeats the image's window and shows MONOCHROME1 inverted, as is."""
    sources = load_sources(kind)
    frontal = frontal_of(sources)
    pr = build_findings_pr(sources, frontal, findings_for(frontal.image), provenance())
    assert pr is not None and pr.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    view = frame_view(frontal.image, (frontal.frame or 1) - 1)
    voi = pr.SoftcopyVOILUTSequence[0]
    first = lambda value: float(np.atleast_1d(value)[0])  # noqa: E731
    assert first(voi.WindowCenter) == first(view.WindowCenter)
    assert first(voi.WindowWidth) == first(view.WindowWidth)
    monochrome1 = frontal.image.PhotometricInterpretation == "MONOCHROME1"
    assert pr.PresentationLUTShape == ("INVERSE" if monochrome1 else "IDENTITY")


def test_colour_image_gets_a_colour_state_with_an_icc_profile() -> None:
    """An RGB image is annotated by a Color Softcopy Presentation State carrying sRGB."""
    sources = load_sources("rgb_capture")
    pr = build_findings_pr(sources, frontal_of(sources), findings_for(sources[0]), provenance())
    assert pr is not None and pr.SOPClassUID == ColorSoftcopyPresentationStateStorage
    assert len(pr.ICCProfile) > 0


def test_no_boxes_means_no_presentation_state() -> None:
    """Findings without boxes give only the SR: there is nothing to draw."""
    sources = load_sources("mr_small")
    findings = [PixelFinding("No acute abnormality.")]
    assert build_findings_pr(sources, frontal_of(sources), findings, provenance()) is None
    assert len(build_report_results(sources, frontal_of(sources), findings, provenance())) == 1
