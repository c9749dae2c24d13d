"""Where a source pixel lands in a model's input, and back: images, masks and boxes.

Coordinates are continuous pixel coordinates: pixel (row r, column c) covers [c, c + 1) x
[r, r + 1), its centre is (c + 0.5, r + 0.5). A :class:`GridMap` is the per-axis affine map
``model = (source + offset) * scale`` that a preparation applied, and covers the three
geometries of the models (docs/models.md §5.3):

- MedImageParse: pad to a square with black, then resize to 1024 x 1024 (:func:`pad_square_map`).
  The toolkit pads ``(long - short) // 2`` on both sides, which leaves the canvas one pixel short
  of square when the difference is odd and then stretches it; we put the odd pixel after the
  image (bottom or right) so the canvas is square and the aspect ratio is kept exactly.
- MedImageInsight: resize to a square, aspect not kept (:func:`stretch_map`).
- CXRReportGen: native size (:func:`identity_map`); its boxes are normalized to a centre crop,
  handled by :func:`cxr_box_to_source` and :func:`source_box_to_cxr` (docs/models.md §2.2).

Masks map back by nearest-neighbour sampling at pixel centres, which is the same as resizing the
model-space mask to the padded canvas with nearest-neighbour and cropping the pad (§5.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from converters.model_outputs import Box

BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PixelBox:
    """A box (x_min, y_min, x_max, y_max) in continuous pixel coordinates of some grid."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class GridMap:
    """Per-axis affine map from a source pixel grid to a model's input grid.

    ``model_x = (source_x + offset_x) * scale_x`` and likewise for y. Offsets are the black pad
    added before the resize (in source pixels); scales are model pixels per source pixel.
    """

    source_rows: int
    source_cols: int
    model_rows: int
    model_cols: int
    offset_x: float = 0.0
    offset_y: float = 0.0
    scale_x: float = 1.0
    scale_y: float = 1.0

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """A source point in model coordinates."""
        return (x + self.offset_x) * self.scale_x, (y + self.offset_y) * self.scale_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """A model point in source coordinates."""
        return x / self.scale_x - self.offset_x, y / self.scale_y - self.offset_y


def _check_size(rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise ValueError(f"image size must be positive, got {rows} x {cols}")


def pad_square_map(rows: int, cols: int, size: int = 1024) -> GridMap:
    """MedImageParse: centre the image on a black square of its long side, resize to ``size``."""
    _check_size(rows, cols)
    side = max(rows, cols)
    scale = size / side
    return GridMap(rows, cols, size, size, (side - cols) // 2, (side - rows) // 2, scale, scale)


def stretch_map(rows: int, cols: int, size: int = 480) -> GridMap:
    """MedImageInsight: resize straight to ``size`` x ``size``, aspect ratio not kept."""
    _check_size(rows, cols)
    return GridMap(rows, cols, size, size, 0, 0, size / cols, size / rows)


def identity_map(rows: int, cols: int) -> GridMap:
    """CXRReportGen: the image goes at its native size."""
    _check_size(rows, cols)
    return GridMap(rows, cols, rows, cols)


def resample_image(image: npt.NDArray[np.uint8], grid: GridMap) -> npt.NDArray[np.uint8]:
    """Pad with black and resize an 8-bit gray or RGB image as ``grid`` says (bicubic).

    Pillow's bicubic filter widens its support when shrinking, so downsizing is anti-aliased
    like the toolkit's skimage ``resize(order=3, anti_aliasing=True)``.
    """
    canvas_cols = round(grid.model_cols / grid.scale_x)
    canvas_rows = round(grid.model_rows / grid.scale_y)
    top, left = int(grid.offset_y), int(grid.offset_x)
    canvas = np.zeros((canvas_rows, canvas_cols, *image.shape[2:]), dtype=np.uint8)
    canvas[top : top + grid.source_rows, left : left + grid.source_cols] = image
    if (canvas_rows, canvas_cols) == (grid.model_rows, grid.model_cols):
        return canvas
    resized = Image.fromarray(canvas).resize(
        (grid.model_cols, grid.model_rows), Image.Resampling.BICUBIC
    )
    return np.asarray(resized, dtype=np.uint8)


def binarize(mask: npt.NDArray[Any]) -> BoolMask:
    """A model mask as booleans: bool as is, 8-bit over 128 (the toolkit's threshold, §5.4)."""
    if mask.dtype == np.bool_:
        return np.asarray(mask, dtype=np.bool_)
    if np.issubdtype(mask.dtype, np.floating):
        return np.asarray(mask > 0.5, dtype=np.bool_)
    return np.asarray(mask > 128, dtype=np.bool_)


def _sample_indices(count: int, offset: float, scale: float) -> npt.NDArray[np.int64]:
    """Index on the other grid nearest to each of ``count`` pixel centres: floor((i+.5+o)*s)."""
    centres = np.arange(count, dtype=np.float64) + 0.5
    indices: npt.NDArray[np.int64] = np.floor((centres + offset) * scale).astype(np.int64)
    return indices


def mask_to_source(mask: npt.NDArray[Any], grid: GridMap) -> BoolMask:
    """A model-space mask (0/255 or bool) on the source pixel grid, pad cropped off."""
    if mask.shape != (grid.model_rows, grid.model_cols):
        raise ValueError(f"mask shape {mask.shape} is not the model grid's")
    binary = binarize(mask)
    rows = _sample_indices(grid.source_rows, grid.offset_y, grid.scale_y)
    cols = _sample_indices(grid.source_cols, grid.offset_x, grid.scale_x)
    rows = np.clip(rows, 0, grid.model_rows - 1)
    cols = np.clip(cols, 0, grid.model_cols - 1)
    return np.asarray(binary[np.ix_(rows, cols)], dtype=np.bool_)


def mask_to_model(mask: npt.NDArray[Any], grid: GridMap) -> BoolMask:
    """A source-space mask as the model sees it: padded with False, nearest-neighbour resized."""
    if mask.shape != (grid.source_rows, grid.source_cols):
        raise ValueError(f"mask shape {mask.shape} is not the source grid's")
    binary = binarize(mask)
    rows = _sample_indices(grid.model_rows, -grid.offset_y * grid.scale_y, 1.0 / grid.scale_y)
    cols = _sample_indices(grid.model_cols, -grid.offset_x * grid.scale_x, 1.0 / grid.scale_x)
    inside_rows = (rows >= 0) & (rows < grid.source_rows)
    inside_cols = (cols >= 0) & (cols < grid.source_cols)
    sampled = binary[
        np.ix_(np.clip(rows, 0, grid.source_rows - 1), np.clip(cols, 0, grid.source_cols - 1))
    ]
    return np.asarray(sampled & np.outer(inside_rows, inside_cols), dtype=np.bool_)


def box_to_model(box: PixelBox, grid: GridMap) -> PixelBox:
    """A source-pixel box in model pixel coordinates."""
    x_min, y_min = grid.to_model(box.x_min, box.y_min)
    x_max, y_max = grid.to_model(box.x_max, box.y_max)
    return PixelBox(x_min, y_min, x_max, y_max)


def box_to_source(box: PixelBox, grid: GridMap) -> PixelBox:
    """A model-pixel box in source pixel coordinates (not clipped to the image)."""
    x_min, y_min = grid.to_source(box.x_min, box.y_min)
    x_max, y_max = grid.to_source(box.x_max, box.y_max)
    return PixelBox(x_min, y_min, x_max, y_max)


def _crop(rows: int, cols: int) -> tuple[int, int, int]:
    """CXRReportGen's assumed centre crop: (side, left, top) with side = min(rows, cols)."""
    _check_size(rows, cols)
    side = min(rows, cols)
    return side, (cols - side) // 2, (rows - side) // 2


def cxr_box_to_source(box: Box, rows: int, cols: int) -> PixelBox:
    """A normalized CXRReportGen box in source pixels (§2.2: x_px = x * side + (w - side)//2)."""
    side, left, top = _crop(rows, cols)
    return PixelBox(
        box.x_min * side + left,
        box.y_min * side + top,
        box.x_max * side + left,
        box.y_max * side + top,
    )


def source_box_to_cxr(box: PixelBox, rows: int, cols: int) -> Box:
    """A source-pixel box normalized the way CXRReportGen reports it (inverse of the above)."""
    side, left, top = _crop(rows, cols)
    return Box(
        (box.x_min - left) / side,
        (box.y_min - top) / side,
        (box.x_max - left) / side,
        (box.y_max - top) / side,
    )
