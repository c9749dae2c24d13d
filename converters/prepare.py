"""One image frame as the PNG a 2-D model wants, with the map back to the source pixels.

Per model (docs/models.md §3.1 and §5.3):

- MedImageParse: pad to a square with black (centred), resize to 1024 x 1024, RGB PNG;
  intensity default: the 0.5th to 99.5th percentile, or a CT preset.
- MedImageInsight: resize to a square (480 by default, aspect not kept), RGB PNG; intensity
  default: 1st to 99th percentile.
- CXRReportGen: native size, 8-bit grayscale PNG (the model card's preferred input); intensity
  default: 1st to 99th percentile.

A dataset's own window or VOI LUT wins over these defaults (:mod:`converters.intensity`), and
MONOCHROME1 is inverted, neither of which the official toolkit does (§5.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset

from converters.frames import number_of_frames
from converters.geometry import (
    GridMap,
    identity_map,
    pad_square_map,
    resample_image,
    stretch_map,
)
from converters.intensity import IntensityPolicy, display_pixels
from converters.png import png_bytes

PARSE_SIZE = 1024
INSIGHT_SIZE = 480


class ImageModel(StrEnum):
    """The 2-D models an image frame can be prepared for."""

    MEDIMAGEPARSE = "medimageparse"
    MEDIMAGEINSIGHT = "medimageinsight"
    CXRREPORTGEN = "cxrreportgen"


# Default percentile clips per model, as fractions (docs/models.md §5.3).
DEFAULT_PERCENTILES: dict[ImageModel, tuple[float, float]] = {
    ImageModel.MEDIMAGEPARSE: (0.005, 0.995),
    ImageModel.MEDIMAGEINSIGHT: (0.01, 0.99),
    ImageModel.CXRREPORTGEN: (0.01, 0.99),
}


@dataclass(frozen=True)
class PreparedImage:
    """The encoded model input for one source frame and how its pixels relate to the source.

    ``frame`` is the 0-based frame index in the source instance; ``size`` is (width, height) of
    the PNG; ``transform`` maps source pixel coordinates to PNG pixel coordinates.
    """

    png: bytes
    transform: GridMap
    size: tuple[int, int]
    sop_instance_uid: str
    frame: int = 0


def encode_png(pixels: npt.NDArray[np.uint8], *, rgb: bool) -> bytes:
    """Lossless PNG of 8-bit pixels, as RGB (gray replicated) or as 8-bit grayscale
    (:func:`converters.png.png_bytes`; Pillow only converts between the two)."""
    if pixels.ndim != (3 if rgb else 2) or (rgb and pixels.shape[2] != 3):
        pixels = np.asarray(Image.fromarray(pixels).convert("RGB" if rgb else "L"), np.uint8)
    return png_bytes(pixels)


def _policy(model: ImageModel, preset: str | None) -> IntensityPolicy:
    return IntensityPolicy(preset=preset, percentiles=DEFAULT_PERCENTILES[model])


def _grid(model: ImageModel, rows: int, cols: int, size: int | None) -> GridMap:
    if model is ImageModel.MEDIMAGEPARSE:
        return pad_square_map(rows, cols, size or PARSE_SIZE)
    if model is ImageModel.MEDIMAGEINSIGHT:
        return stretch_map(rows, cols, size or INSIGHT_SIZE)
    return identity_map(rows, cols)


def _gray(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Colour frames reduced to luminance (ITU-R 601-2, Pillow's "L") for a gray-only model."""
    if pixels.ndim == 2:
        return pixels
    return np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint8)


def prepare_image(
    ds: Dataset,
    model: ImageModel,
    *,
    frame: int = 0,
    preset: str | None = None,
    size: int | None = None,
) -> PreparedImage:
    """Frame ``frame`` of ``ds`` ready to send to ``model``.

    ``preset`` names a CT window preset used when the dataset has no window of its own;
    ``size`` overrides the model's square side (MedImageParse 1024, MedImageInsight 480) and is
    ignored for CXRReportGen, which takes the native size.
    """
    pixels = display_pixels(ds, frame, _policy(model, preset))
    rows, cols = pixels.shape[:2]
    grid = _grid(model, rows, cols, size)
    if model is ImageModel.CXRREPORTGEN:
        png = encode_png(_gray(pixels), rgb=False)
    else:
        png = encode_png(resample_image(pixels, grid), rgb=True)
    return PreparedImage(
        png=png,
        transform=grid,
        size=(grid.model_cols, grid.model_rows),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        frame=frame,
    )


def prepare_frames(
    ds: Dataset, model: ImageModel, *, preset: str | None = None, size: int | None = None
) -> list[PreparedImage]:
    """Every frame of a (possibly multi-frame) instance prepared for ``model``."""
    return [
        prepare_image(ds, model, frame=index, preset=preset, size=size)
        for index in range(number_of_frames(ds))
    ]
