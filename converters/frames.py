"""One frame of an image as a flat dataset, and its decoded stored values.

Classic single-frame images keep everything a frame needs (rescale, window, plane geometry) at the
top level. Enhanced multi-frame images (Enhanced CT/MR/XA, PS3.3 C.7.6.16 Multi-frame Functional
Groups) move those attributes into functional group macros, shared by all frames or given per
frame. :func:`frame_view` flattens them back, so the intensity and geometry code downstream reads
one kind of dataset and pydicom's LUT functions (which look only at the top level) work unchanged.

Frame indices here are 0-based, as pydicom counts them; DICOM's Referenced Frame Number is the
index plus one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag

_SHARED = Tag("SharedFunctionalGroupsSequence")
_PER_FRAME = Tag("PerFrameFunctionalGroupsSequence")
_PIXEL_DATA = Tag("PixelData")

# Photometric interpretations whose decoded pixels are colour (PS3.3 C.7.6.3.1.2).
COLOUR_INTERPRETATIONS = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"}
)


def number_of_frames(ds: Dataset) -> int:
    """How many frames the image holds (1 when Number of Frames is absent or empty)."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _check_index(ds: Dataset, index: int) -> None:
    count = number_of_frames(ds)
    if not 0 <= index < count:
        raise IndexError(f"frame index {index} out of range for an image of {count} frame(s)")


def _merge_functional_groups(view: Dataset, groups: Dataset) -> None:
    """Copy every attribute of every macro item in one functional groups item onto ``view``."""
    for macro in groups:
        if macro.VR != "SQ" or len(macro.value) == 0:
            continue
        for element in macro.value[0]:
            view[element.tag] = element


def frame_view(ds: Dataset, index: int = 0) -> Dataset:
    """A pixel-less dataset with the attributes that apply to frame ``index`` at the top level.

    Top-level attributes come first, then the Shared Functional Groups, then the frame's own
    Per-frame Functional Groups item, each overriding the one before (PS3.3 C.7.6.16: a
    functional group is in the shared or the per-frame sequence, never both).
    """
    _check_index(ds, index)
    view = Dataset()
    for element in ds:
        if element.tag not in (_SHARED, _PER_FRAME, _PIXEL_DATA):
            view[element.tag] = element
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        _merge_functional_groups(view, shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        _merge_functional_groups(view, per_frame[index])
    return view


def is_colour(ds: Dataset) -> bool:
    """Whether the image holds colour pixels rather than grayscale."""
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")) in COLOUR_INTERPRETATIONS


def stored_values(ds: Dataset, index: int = 0) -> npt.NDArray[np.generic]:
    """The decoded pixels of frame ``index``: stored values for grayscale, RGB for colour.

    Compressed transfer syntaxes decode through pydicom's pixel handlers (the pylibjpeg plugins
    for JPEG, JPEG-LS, JPEG 2000 and RLE). Only the requested frame is decoded. YBR pixels come
    out as RGB (pydicom converts YBR_FULL and YBR_FULL_422; the JPEG 2000 decoder undoes the
    YBR_ICT/YBR_RCT component transform itself), and palette colour goes through its LUTs.
    """
    _check_index(ds, index)
    frame = pixel_array(ds, index=index, as_rgb=True)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    return frame
