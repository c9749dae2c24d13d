"""The fast PNG writer: what any PNG decoder reads back is exactly the pixels written."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from converters.intensity import IntensityPolicy, display_pixels
from converters.png import png_bytes


def decoded(png: bytes) -> npt.NDArray[np.uint8]:
    """The pixels Pillow (libpng's rules, its own inflate) reads from ``png``."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
            lambda shape: st.sampled_from([shape, (*shape, 3)])
        ),
    )
)
def test_gray_and_rgb_frames_decode_to_the_same_pixels(pixels: npt.NDArray[np.uint8]) -> None:
    """Gray and RGB frames of any size and content (wrapping row differences included)
    decode to exactly the pixels written, in the mode written."""
    image = Image.open(io.BytesIO(png_bytes(pixels)))
    assert image.mode == ("L" if pixels.ndim == 2 else "RGB")
    assert np.array_equal(np.asarray(image), pixels)


def test_a_sliced_view_is_written_as_its_pixels() -> None:
    """A non-contiguous view (a crop of a larger frame) is written as the crop's pixels."""
    frame = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    crop = frame[5:40:2, 3:50]
    assert np.array_equal(decoded(png_bytes(crop)), crop)


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros(16, np.uint8)],
    ids=["16-bit", "RGBA", "one row"],
)
def test_other_pixel_layouts_are_refused(pixels: npt.NDArray[np.generic]) -> None:
    """Only 8-bit gray and RGB frames are written; anything else is a caller's bug."""
    with pytest.raises(ValueError, match="8-bit gray or RGB"):
        png_bytes(pixels)  # type: ignore[arg-type]


def test_a_radiograph_is_compressed_and_read_back_by_zlib_and_pillow() -> None:
    """The IDAT stream is standard zlib (the standard library inflates it) and compresses: a
    real chest radiograph's PNG is well under its raw scanlines and decodes to its pixels."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str)
    source = dcmread(path)
    pixels = display_pixels(source, 0, IntensityPolicy(preset=None, percentiles=(0.01, 0.99)))
    png = png_bytes(pixels)
    assert np.array_equal(decoded(png), pixels)
    length = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    scanlines = zlib.decompress(png[41 : 41 + length])
    assert len(scanlines) == pixels.shape[0] * (pixels.shape[1] + 1)
    assert len(png) < 0.6 * len(scanlines)
