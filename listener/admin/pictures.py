"""The picture of a processed study: its first SEG, else its boxes, drawn on the source image.

Reads the result objects the pipeline wrote under ``results/<study>/`` and the source instances
from the spool, and hands them to the pure renderers of :mod:`converters.overlay`.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, PngImagePlugin
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from converters.overlay import (
    LabelledBox,
    boxes_from_presentation_state,
    boxes_from_sr,
    busiest_source_frame,
    referenced_images,
    render_boxes,
    render_segments,
    segments_on,
)
from listener.admin.state import AdminState

PICTURE_SIDE = 512  # pictures are scaled so that their longer side is about this many pixels
_ORDER = {"SEG": 0, "PR": 1, "SR": 2}


def _results(folder: Path) -> list[tuple[str, Path]]:
    """(modality, path) of the SEG, PR and SR results in a study's folder, in drawing order."""
    found = []
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
        try:
            modality = str(dcmread(path, stop_before_pixels=True).get("Modality", ""))
        except (InvalidDicomError, OSError):
            continue
        if modality in _ORDER:
            found.append((modality, path))
    return sorted(found, key=lambda item: _ORDER[item[0]])


def has_picture(state: AdminState, study_uid: str) -> bool:
    """Whether the study has a result that can be drawn (a SEG, a presentation state or SR)."""
    return any(modality in ("SEG", "PR") for modality, _ in _results(state.results_dir / study_uid))


EMULATOR_CAPTION = "EMULATOR: synthetic result, not a clinical model"


def _emulated(obj: Dataset) -> bool:
    """Whether a result came from the model emulator (its series description says so)."""
    return "emulator" in str(obj.get("SeriesDescription", "")).lower()


def mark_emulated(png: bytes) -> bytes:
    """The picture with :data:`EMULATOR_CAPTION` drawn across its top and kept as its PNG
    ``Comment`` text (so programs can tell too)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((4, 4), EMULATOR_CAPTION)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), EMULATOR_CAPTION, fill=(255, 210, 0))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", EMULATOR_CAPTION)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _scale(source: Dataset) -> float:
    return PICTURE_SIDE / max(int(source.Rows), int(source.Columns))


def study_picture(state: AdminState, study_uid: str) -> bytes | None:
    """PNG of the study's first drawable result on its source image, marked when the emulator
    made it; None when there is none."""
    png = _first_picture(state, study_uid)
    if png is None:
        return None
    picture, obj = png
    return mark_emulated(picture) if _emulated(obj) else picture


def _first_picture(state: AdminState, study_uid: str) -> tuple[bytes, Dataset] | None:
    sources = {
        record.sop_instance_uid: state.spool_file(record.path)
        for record in state.journal.instances(study_uid)
    }
    for modality, path in _results(state.results_dir / study_uid):
        obj = dcmread(path)
        if modality == "SEG":
            place = busiest_source_frame(obj)
            if place is None or place[0] not in sources:
                continue
            source = dcmread(sources[place[0]])
            segments = segments_on(obj, place[0], place[1])
            return render_segments(source, segments, frame=place[1], scale=_scale(source)), obj
        for uid in referenced_images(obj):
            if uid not in sources:
                continue
            boxes: list[LabelledBox] = (
                boxes_from_presentation_state(obj, uid)
                if modality == "PR"
                else boxes_from_sr(obj, uid)
            )
            if boxes:
                source = dcmread(sources[uid])
                return render_boxes(source, boxes, scale=_scale(source)), obj
    return None
