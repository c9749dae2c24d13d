"""Overlay pictures: SEG masks coloured exactly on their pixels, boxes drawn where they belong."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pytest
from factory import ct_series
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite

from converters.cxr import build_report_sr
from converters.geometry import PixelBox
from converters.grounding import ImageFrame, PixelFinding
from converters.model_outputs import ModelIdentity
from converters.overlay import (
    DEFAULT_ALPHA,
    LabelledBox,
    base_image,
    box_pixels,
    boxes_from_presentation_state,
    boxes_from_sr,
    busiest_source_frame,
    colour,
    referenced_images,
    render_boxes,
    render_segments,
    segments_on,
)
from converters.pr import build_findings_pr, finding_label
from converters.provenance import Provenance
from converters.seg import Prompt, SourceMasks, build_seg


def _provenance(model: str) -> Provenance:
    identity = ModelIdentity(model, "emulator-test", emulated=True)
    return Provenance(identity, "test-rule", "0.1.0", datetime(2026, 1, 2, 3, 4, 5))


def _round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _decode(png: bytes) -> npt.NDArray[np.uint8]:
    assert png.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def sources() -> list[Dataset]:
    """Three 64x64 CT slices with a phantom body."""
    return ct_series(3)


def _masks() -> npt.NDArray[np.bool_]:
    masks = np.zeros((2, 3, 64, 64), dtype=np.bool_)
    masks[0, 1, 10:20, 30:45] = True
    masks[1, 1, 40:50, 5:15] = True
    masks[1, 2, 40:42, 5:7] = True
    return masks


def test_seg_overlay_colours_exactly_the_segment_pixels(sources: list[Dataset]) -> None:
    """Each segment's pixels are blended with its own colour; every other pixel is untouched."""
    masks = _masks()
    prompts = (Prompt("liver", "liver"), Prompt("kidney", "kidney"))
    outcome = build_seg(sources, SourceMasks(prompts, masks), _provenance("medimageparse"))
    assert outcome.seg is not None
    seg = _round_trip(outcome.seg)
    source = sources[1]
    assert busiest_source_frame(seg) == (str(source.SOPInstanceUID), 0)
    segments = segments_on(seg, str(source.SOPInstanceUID))
    assert [(s.number, s.label) for s in segments] == [(1, "liver"), (2, "kidney")]
    picture = _decode(render_segments(source, segments))
    assert picture.shape == (64 + 2 * 18, 64, 3)  # the legend band sits below the image
    shown = picture[:64].astype(np.float64)
    base = base_image(source).astype(np.float64)
    for number, mask in ((1, masks[0, 1]), (2, masks[1, 1])):
        expected = np.rint(
            (1 - DEFAULT_ALPHA) * base[mask] + DEFAULT_ALPHA * np.array(colour(number))
        )
        assert np.array_equal(shown[mask], expected)
    outside = ~(masks[0, 1] | masks[1, 1])
    assert np.array_equal(shown[outside], base[outside])


def test_seg_overlay_scaled_keeps_segment_places(sources: list[Dataset]) -> None:
    """A picture scaled by 4 has each segment pixel as a 4x4 block of the blended colour."""
    prompts = (Prompt("liver", "liver"), Prompt("kidney", "kidney"))
    outcome = build_seg(sources, SourceMasks(prompts, _masks()), _provenance("medimageparse"))
    assert outcome.seg is not None
    segments = segments_on(_round_trip(outcome.seg), str(sources[1].SOPInstanceUID))
    picture = _decode(render_segments(sources[1], segments, scale=4.0, legend=False))
    assert picture.shape == (256, 256, 3)
    small = _decode(render_segments(sources[1], segments, legend=False))
    assert np.array_equal(picture[::4, ::4], small)


def _findings() -> list[PixelFinding]:
    return [
        PixelFinding(
            "Small left pleural effusion with basal atelectasis", (PixelBox(8, 20, 30, 44),)
        ),
        PixelFinding("Cardiomegaly", (PixelBox(35.5, 4.25, 60, 30),)),
    ]


def _check_box_drawn(picture: npt.NDArray[np.uint8], base: npt.NDArray[np.uint8]) -> None:
    x0, y0, x1, y1 = box_pixels(PixelBox(8, 20, 30, 44))
    assert (x0, y0, x1, y1) == (8, 20, 29, 43)
    row = 38  # below any label: labels sit above a box or along its top edge
    assert tuple(picture[row, x0]) == colour(1) and tuple(picture[row, x1]) == colour(1)
    assert tuple(picture[y1, 15]) == colour(1)
    assert np.array_equal(picture[row, x0 - 1], base[row, x0 - 1])  # outside, left
    assert np.array_equal(picture[row, x1 + 1], base[row, x1 + 1])  # outside, right
    assert np.array_equal(picture[row, x0 + 4 : x1 - 3], base[row, x0 + 4 : x1 - 3])  # inside
    assert tuple(picture[27, 59]) == colour(2)  # the second box's right edge, in its colour


def test_presentation_state_boxes_land_on_their_pixels(sources: list[Dataset]) -> None:
    """Boxes read back from a presentation state are outlined at their pixels, with labels."""
    image = sources[0]
    pr = build_findings_pr([image], ImageFrame(image), _findings(), _provenance("cxrreportgen"))
    assert pr is not None
    pr = _round_trip(pr)
    boxes = boxes_from_presentation_state(pr, str(image.SOPInstanceUID))
    assert boxes == [
        LabelledBox(finding_label(0, _findings()[0].text), PixelBox(8, 20, 30, 44)),
        LabelledBox(finding_label(1, "Cardiomegaly"), PixelBox(35.5, 4.25, 60, 30)),
    ]
    assert referenced_images(pr) == [str(image.SOPInstanceUID)]
    assert boxes_from_presentation_state(pr, "1.2.3.4") == []
    picture = _decode(render_boxes(image, boxes))
    _check_box_drawn(picture, base_image(image))


def test_report_sr_regions_give_the_same_boxes(sources: list[Dataset]) -> None:
    """The report SR's SCOORD regions read back as the same boxes, labelled with the finding."""
    image = sources[0]
    sr = build_report_sr([image], ImageFrame(image), _findings(), _provenance("cxrreportgen"))
    sr = _round_trip(sr)
    boxes = boxes_from_sr(sr, str(image.SOPInstanceUID))
    assert [b.label for b in boxes] == [f.text for f in _findings()]
    assert [b.box for b in boxes] == [PixelBox(8, 20, 30, 44), PixelBox(35.5, 4.25, 60, 30)]
    assert referenced_images(sr) == [str(image.SOPInstanceUID)]
    _check_box_drawn(_decode(render_boxes(image, boxes)), base_image(image))
