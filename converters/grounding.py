"""Findings grounded on one image: sentences with boxes in source pixels, and the image frame.

Shared by the report SR (SCOORD regions, PS3.3 C.18.6) and the presentation state (graphic
annotations, PS3.3 C.10.5): both take boxes in continuous source pixel coordinates, where (0, 0)
is the top left corner of the top left pixel, the convention of both modules and of
:mod:`converters.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from converters.geometry import PixelBox

SHORT_LABEL_WORDS = 5


@dataclass(frozen=True)
class PixelFinding:
    """One finding sentence and its boxes on the frontal image, in source pixels."""

    text: str
    boxes: tuple[PixelBox, ...] = ()


@dataclass(frozen=True)
class ImageFrame:
    """An image and, for a multi-frame image, the 1-based frame a finding lies on."""

    image: Dataset
    frame: int | None = None

    @property
    def frame_numbers(self) -> list[int] | None:
        """Referenced Frame Number values: needed for multi-frame images only."""
        frames = int(self.image.get("NumberOfFrames") or 1)
        if frames == 1:
            return None
        number = self.frame or 1
        if not 1 <= number <= frames:
            raise ValueError(f"frame {number} is outside the image's {frames} frames")
        return [number]


def short_label(text: str, words: int = SHORT_LABEL_WORDS) -> str:
    """The first few words of a finding, for a label drawn next to its box."""
    parts = text.split()
    label = " ".join(parts[:words])
    return label + ("..." if len(parts) > words else "")


def closed_rectangle(box: PixelBox) -> npt.NDArray[np.float32]:
    """A box as a closed polyline of five (column, row) points, the first repeated last."""
    if not (box.x_min < box.x_max and box.y_min < box.y_max):
        raise ValueError(f"box {box} has no area")
    points = [
        (box.x_min, box.y_min),
        (box.x_max, box.y_min),
        (box.x_max, box.y_max),
        (box.x_min, box.y_max),
        (box.x_min, box.y_min),
    ]
    return np.asarray(points, dtype=np.float32)


def clip_box(box: PixelBox, image: Dataset) -> PixelBox:
    """A box cut to the image's extent (a model may draw slightly past the edge)."""
    cols, rows = float(image.Columns), float(image.Rows)
    return PixelBox(
        min(max(box.x_min, 0.0), cols),
        min(max(box.y_min, 0.0), rows),
        min(max(box.x_max, 0.0), cols),
        min(max(box.y_max, 0.0), rows),
    )
