"""Result objects drawn on their source image, as PNG pictures for operators.

Two kinds of picture, both on the source frame shown the way a viewer would show it
(:func:`converters.intensity.display_pixels`: modality LUT, window, MONOCHROME1):

- a Segmentation (PS3.3 A.51) as coloured, semi-transparent masks, one colour per segment, with a
  legend band below the image naming each segment (its Segment Label, C.8.20.2);
- boxes with labels, read from a presentation state's graphic annotations (PS3.3 C.10.5: POLYLINE
  graphics in PIXEL units, text objects anchored at a box corner) or from an SR's SCOORD regions
  (PS3.3 C.18.6: POLYLINE in image pixel coordinates, labelled by their measurement group's text).

Coordinates are continuous pixel coordinates: (0, 0) is the top left corner of the top left pixel
and (Columns, Rows) the bottom right corner of the bottom right one (C.10.5.1.2). Everything here is
pure: datasets in, PNG bytes out.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from converters.geometry import PixelBox
from converters.intensity import display_pixels

Rgb = tuple[int, int, int]
RgbImage = npt.NDArray[np.uint8]

# Distinct colours (Sasha Trubetskoy's list), readable on gray images.
PALETTE: tuple[Rgb, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)
DEFAULT_ALPHA = 0.45
LABEL_SIZE = 13
_LEGEND_ROW = 18


def colour(index: int) -> Rgb:
    """The palette colour of a 1-based segment number or box number."""
    return PALETTE[(index - 1) % len(PALETTE)]


@dataclass(frozen=True)
class SegmentMask:
    """One segment on one source frame: its number, label and mask (truthy = inside)."""

    number: int
    label: str
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LabelledBox:
    """A box in source pixels and the text drawn next to it."""

    label: str
    box: PixelBox


def base_image(source: Dataset, frame: int = 0) -> RgbImage:
    """Frame ``frame`` (0-based) of ``source`` as 8-bit RGB display values."""
    pixels = display_pixels(source, frame)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, np.newaxis], 3, axis=2)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def blend(rgb: RgbImage, segments: Sequence[SegmentMask], alpha: float) -> RgbImage:
    """Each segment's pixels mixed with its colour: ``(1 - alpha) * image + alpha * colour``."""
    out = rgb.astype(np.float64)
    for segment in segments:
        if segment.mask.shape != rgb.shape[:2]:
            raise ValueError(f"segment {segment.number} mask does not match the image size")
        tint = np.array(colour(segment.number), dtype=np.float64)
        out[segment.mask] = (1.0 - alpha) * out[segment.mask] + alpha * tint
    return np.rint(out).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _resized(rgb: RgbImage, scale: float) -> Image.Image:
    image = Image.fromarray(rgb, mode="RGB")
    if scale == 1.0:
        return image
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    method = Image.Resampling.NEAREST if scale > 1.0 else Image.Resampling.LANCZOS
    return image.resize(size, method)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_segments(
    source: Dataset,
    segments: Sequence[SegmentMask],
    *,
    frame: int = 0,
    alpha: float = DEFAULT_ALPHA,
    scale: float = 1.0,
    legend: bool = True,
) -> bytes:
    """PNG of the source frame with the segments blended in, and a legend band below it.

    ``scale`` resizes the picture (masks are blended at source resolution first, so a segment
    colours exactly its own pixels); the legend never covers the image.
    """
    image = _resized(blend(base_image(source, frame), segments, alpha), scale)
    if not legend or not segments:
        return _png(image)
    canvas = Image.new("RGB", (image.width, image.height + _LEGEND_ROW * len(segments)), "black")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(LABEL_SIZE)
    for row, segment in enumerate(segments):
        top = image.height + row * _LEGEND_ROW + 3
        draw.rectangle((4, top, 16, top + 12), fill=colour(segment.number))
        draw.text((22, top - 1), segment.label, fill="white", font=font)
    return _png(canvas)


def box_pixels(box: PixelBox, scale: float = 1.0) -> tuple[int, int, int, int]:
    """The inclusive pixel rectangle (x0, y0, x1, y1) a box covers at ``scale``."""
    x0, y0 = math.floor(box.x_min * scale), math.floor(box.y_min * scale)
    x1 = max(x0, math.ceil(box.x_max * scale) - 1)
    y1 = max(y0, math.ceil(box.y_max * scale) - 1)
    return x0, y0, x1, y1


def render_boxes(
    source: Dataset,
    boxes: Sequence[LabelledBox],
    *,
    frame: int = 0,
    scale: float = 1.0,
    line_width: int = 2,
) -> bytes:
    """PNG of the source frame with each box outlined (inwards) in its colour and labelled.

    The label sits on a dark band just above the box, or inside its top edge when the box
    touches the top of the image.
    """
    image = _resized(base_image(source, frame), scale)
    draw = ImageDraw.Draw(image)
    font = _font(max(LABEL_SIZE, round(LABEL_SIZE * min(scale, 3.0))))
    for number, item in enumerate(boxes, start=1):
        x0, y0, x1, y1 = box_pixels(item.box, scale)
        draw.rectangle((x0, y0, x1, y1), outline=colour(number), width=line_width)
        if not item.label:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), item.label, font=font)
        height = bottom - top + 4
        y = y0 - height if y0 >= height else y0 + line_width
        x = x0 if y0 >= height else x0 + line_width
        draw.rectangle((x, y, x + right - left + 4, y + height - 1), fill=(0, 0, 0))
        draw.text((x + 2, y + 2 - top), item.label, fill=colour(number), font=font)
    return _png(image)


# --- reading result objects --------------------------------------------------------------------


@dataclass(frozen=True)
class SegFrame:
    """Where one SEG frame belongs: its segment and the source instance and 0-based frame."""

    index: int
    segment: int
    source_uid: str
    source_frame: int


def seg_frames(seg: Dataset) -> list[SegFrame]:
    """Each SEG frame's segment and source frame (PS3.3 C.8.20.3 Segmentation Functional Groups,
    C.7.6.16.2.6 Derivation Image); frames with no source reference are left out."""
    out = []
    for index, item in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                frames = ref.get("ReferencedFrameNumber")
                number = int(frames[0] if isinstance(frames, Sequence) else frames or 1)
                out.append(SegFrame(index, segment, str(ref.ReferencedSOPInstanceUID), number - 1))
    return out


def segment_labels(seg: Dataset) -> dict[int, str]:
    """Segment Label by Segment Number (PS3.3 C.8.20.2)."""
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.get("SegmentSequence", [])}


def _seg_pixels(seg: Dataset) -> npt.NDArray[np.generic]:
    pixels = seg.pixel_array
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels


def segments_on(seg: Dataset, source_uid: str, frame: int = 0) -> list[SegmentMask]:
    """The SEG's masks on one source frame, one per segment present there, in segment order."""
    pixels = _seg_pixels(seg)
    labels = segment_labels(seg)
    masks: dict[int, npt.NDArray[np.bool_]] = {}
    for ref in seg_frames(seg):
        if ref.source_uid == source_uid and ref.source_frame == frame:
            plane = np.asarray(pixels[ref.index] > 0)
            masks[ref.segment] = masks[ref.segment] | plane if ref.segment in masks else plane
    return [
        SegmentMask(n, labels.get(n, f"segment {n}"), masks[n])
        for n in sorted(masks)
        if masks[n].any()
    ]


def busiest_source_frame(seg: Dataset) -> tuple[str, int] | None:
    """The source (instance UID, 0-based frame) with the most segmented pixels, if any."""
    pixels = _seg_pixels(seg)
    counts: dict[tuple[str, int], int] = {}
    for ref in seg_frames(seg):
        key = (ref.source_uid, ref.source_frame)
        counts[key] = counts.get(key, 0) + int(np.count_nonzero(pixels[ref.index]))
    if not counts:
        return None
    return max(counts.items(), key=lambda item: (item[1], item[0]))[0]


def _polyline_box(data: Sequence[float]) -> PixelBox:
    columns, rows = [float(v) for v in data[0::2]], [float(v) for v in data[1::2]]
    return PixelBox(min(columns), min(rows), max(columns), max(rows))


def boxes_from_presentation_state(pr: Dataset, source_uid: str) -> list[LabelledBox]:
    """Boxes of a presentation state's PIXEL graphics on ``source_uid`` (PS3.3 C.10.5), each
    labelled by the text object anchored at its top left corner."""
    out = []
    for annotation in pr.get("GraphicAnnotationSequence", []):
        refs = {
            str(r.ReferencedSOPInstanceUID) for r in annotation.get("ReferencedImageSequence", [])
        }
        if refs and source_uid not in refs:
            continue
        texts = {
            tuple(round(float(v), 3) for v in text.AnchorPoint): str(text.UnformattedTextValue)
            for text in annotation.get("TextObjectSequence", [])
            if "AnchorPoint" in text
        }
        for graphic in annotation.get("GraphicObjectSequence", []):
            if graphic.get("GraphicAnnotationUnits") != "PIXEL":
                continue
            box = _polyline_box(graphic.GraphicData)
            label = texts.get((round(box.x_min, 3), round(box.y_min, 3)), "")
            out.append(LabelledBox(label, box))
    return out


def _is_label(item: Dataset) -> bool:
    """A TEXT item the group CONTAINS (the finding), not one that names the algorithm or the
    tracking identifier (HAS CONCEPT MOD / HAS OBS CONTEXT, PS3.3 C.17.3.2.4)."""
    return (
        item.get("ValueType") == "TEXT"
        and "TextValue" in item
        and item.get("RelationshipType") == "CONTAINS"
    )


def _walk_regions(items: Sequence[Dataset], label: str) -> Iterator[tuple[str, Dataset]]:
    texts = [str(item.TextValue) for item in items if _is_label(item)]
    label = texts[0] if texts else label
    for item in items:
        if item.get("ValueType") == "SCOORD":
            yield label, item
        if "ContentSequence" in item and item.get("ValueType") != "SCOORD":
            yield from _walk_regions(item.ContentSequence, label)


def boxes_from_sr(sr: Dataset, source_uid: str) -> list[LabelledBox]:
    """Boxes of an SR's SCOORD regions on ``source_uid`` (PS3.3 C.18.6), labelled by the first
    text of their measurement group."""
    out = []
    for label, item in _walk_regions(sr.get("ContentSequence", []), ""):
        images = [
            str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for ref in item.get("ContentSequence", [])
            if "ReferencedSOPSequence" in ref
        ]
        if images and source_uid not in images:
            continue
        out.append(LabelledBox(label, _polyline_box(item.GraphicData)))
    return out


def referenced_images(obj: Dataset) -> list[str]:
    """SOP Instance UIDs an SR or presentation state draws on, in order of first mention."""
    found: dict[str, None] = {}
    for annotation in obj.get("GraphicAnnotationSequence", []):
        for ref in annotation.get("ReferencedImageSequence", []):
            found[str(ref.ReferencedSOPInstanceUID)] = None
    for _, item in _walk_regions(obj.get("ContentSequence", []), ""):
        for ref in item.get("ContentSequence", []):
            if "ReferencedSOPSequence" in ref:
                found[str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)] = None
    return list(found)
