"""Stored values to 8-bit display values: modality LUT, VOI, presets, MONOCHROME1, colour."""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.pixels.processing import apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from converters.frames import frame_view
from converters.intensity import (
    CT_PRESETS,
    IntensityPolicy,
    display_pixels,
    modality_values,
    own_voi,
    policy_voi,
)


def gray_image(
    pixels: npt.NDArray[np.int16], *, photometric: str = "MONOCHROME2", intercept: float = 0.0
) -> Dataset:
    """A single-frame signed 16-bit grayscale image with the given stored values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


def ramp(
    rows: int = 32, cols: int = 64, low: int = -1200, high: int = 1500
) -> npt.NDArray[np.int16]:
    """A horizontal ramp of stored values from ``low`` to ``high``."""
    return np.tile(np.linspace(low, high, cols).round().astype(np.int16), (rows, 1))


@pytest.fixture(scope="module")
def cr_chest() -> Dataset:
    """The real MONOCHROME1 15-bit CR chest from pydicom-data."""
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    """The same stored values as MONOCHROME1 come out as 255 minus the MONOCHROME2 rendering."""
    pixels = ramp()
    m2 = display_pixels(gray_image(pixels))
    m1 = display_pixels(gray_image(pixels, photometric="MONOCHROME1"))
    assert m2.max() == 255 and m2.min() == 0
    assert np.array_equal(m1, 255 - m2)


def test_real_monochrome1_chest_is_inverted(cr_chest: Dataset) -> None:
    """The CR chest renders as 255 minus its rendering relabelled MONOCHROME2 (bone bright)."""
    as_m2 = copy.deepcopy(cr_chest)
    as_m2.PhotometricInterpretation = "MONOCHROME2"
    shown = display_pixels(cr_chest)
    assert shown.shape == (1955, 1841) and shown.dtype == np.uint8
    assert np.array_equal(shown, 255 - display_pixels(as_m2))


def test_own_window_clips_outside_to_black_and_white() -> None:
    """With Window Center/Width present, values below the window are 0 and above it are 255."""
    ds = gray_image(ramp(low=-500, high=500), intercept=0)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    shown = display_pixels(ds)
    values = ramp(low=-500, high=500)
    assert np.all(shown[values <= 40 - 0.5 - 399 / 2] == 0)
    assert np.all(shown[values > 40 - 0.5 + 399 / 2] == 255)
    inside = shown[(values > -150) & (values < 230)]
    assert inside.min() > 0 and inside.max() < 255


def test_own_window_wins_over_a_configured_preset() -> None:
    """A dataset's own window is used even when a CT preset is configured."""
    ds = gray_image(ramp(), intercept=0)
    ds.WindowCenter, ds.WindowWidth = [300, 40], [1500, 400]
    with_preset = display_pixels(ds, policy=IntensityPolicy(preset="ct-lung"))
    values = ramp()
    assert np.array_equal(with_preset, display_pixels(ds))
    assert np.all(with_preset[values <= 300 - 0.5 - 1499 / 2] == 0)
    assert np.all(with_preset[values > 300 - 0.5 + 1499 / 2] == 255)


def test_preset_range_in_hounsfield_units_applies_after_rescale() -> None:
    """Without a window, ct-abdomen maps -150 HU and below to 0 and 250 HU and above to 255."""
    stored = ramp(low=0, high=2000)
    policy = IntensityPolicy("ct-abdomen")
    shown = display_pixels(gray_image(stored, intercept=-1024), policy=policy)
    hu = stored.astype(float) - 1024
    low, high = CT_PRESETS["ct-abdomen"]
    assert np.all(shown[hu <= low] == 0) and np.all(shown[hu >= high] == 255)
    middle = shown[(hu > low + 5) & (hu < high - 5)]
    assert middle.min() > 0 and middle.max() < 255


def test_percentiles_are_the_default_without_window_or_preset() -> None:
    """With no window and no preset, about 1% of pixels clip at each end (1st-99th percentile)."""
    rng = np.random.default_rng(7)
    stored = rng.integers(-1000, 1000, size=(100, 100)).astype(np.int16)
    shown = display_pixels(gray_image(stored))
    assert 0.005 < np.mean(shown == 0) < 0.02
    assert 0.005 < np.mean(shown == 255) < 0.02


def test_enhanced_ct_uses_the_per_frame_window_of_each_frame() -> None:
    """Enhanced CT takes rescale and window from the functional groups (HU clip at the window)."""
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    for index in range(2):
        view = frame_view(ds, index)
        center, width = float(view.WindowCenter), float(view.WindowWidth)
        hu = ds.pixel_array[index].astype(float) * float(view.RescaleSlope) + float(
            view.RescaleIntercept
        )
        shown = display_pixels(ds, index)
        assert np.all(shown[hu <= center - 0.5 - (width - 1) / 2] == 0)
        assert np.all(shown[hu > center - 0.5 + (width - 1) / 2] == 255)


def test_voi_lut_sequence_is_applied() -> None:
    """A VOI LUT Sequence gives the same picture as pydicom's VOI LUT scaled to 8 bits."""
    ds = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = apply_voi_lut(ds.pixel_array, ds).astype(float) * 255 / (2**bits - 1)
    assert np.abs(display_pixels(ds).astype(float) - expected).max() <= 0.5 + 1e-9


def test_jpeg2000_chest_decodes_to_the_same_pixels(cr_chest: Dataset) -> None:
    """RG1_J2KR (lossless JPEG 2000) renders exactly like the uncompressed RG1_UNCR."""
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    assert np.array_equal(display_pixels(j2k), display_pixels(cr_chest))


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("SC_rgb_rle.dcm", 0),
        ("SC_ybr_full_uncompressed.dcm", 8),
        ("SC_rgb_jpeg_dcmtk.dcm", 8),
    ],
)
def test_colour_encodings_come_out_as_the_same_rgb(name: str, tolerance: int) -> None:
    """RLE, uncompressed YBR_FULL and JPEG YBR images render as the reference RGB image."""
    reference = display_pixels(pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))).astype(int)
    shown = display_pixels(pydicom.dcmread(get_testdata_file(name)))
    assert shown.shape == reference.shape == (100, 100, 3) and shown.dtype == np.uint8
    assert np.abs(shown.astype(int) - reference).max() <= tolerance


def test_palette_colour_goes_through_its_lut() -> None:
    """A PALETTE COLOR image comes out as 8-bit RGB from its palette."""
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    shown = display_pixels(ds)
    assert shown.shape == (ds.Rows, ds.Columns, 3) and shown.dtype == np.uint8
    assert len(np.unique(shown.reshape(-1, 3), axis=0)) > 16


def test_unknown_preset_is_refused() -> None:
    """A preset name outside the spec's list is a configuration error, not a silent default."""
    with pytest.raises(ValueError, match="unknown intensity preset"):
        IntensityPolicy(preset="ct-brain")


def test_invalid_window_falls_back_to_the_policy() -> None:
    """A Window Width under 1 (invalid for LINEAR) is ignored and the percentile clip applies."""
    ds = gray_image(ramp())
    ds.WindowCenter, ds.WindowWidth = 40, 0.5
    plain = gray_image(ramp())
    assert np.array_equal(display_pixels(ds), display_pixels(plain))


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.int16, (6, 7), elements=st.integers(-3000, 3000)),
    st.floats(-1000, 1000),
    st.sampled_from([0.5, 1.0, 2.5]),
    st.one_of(st.none(), st.tuples(st.floats(-2000, 2000), st.floats(1, 4000))),
    st.sampled_from(["LINEAR", "LINEAR_EXACT", ""]),
    st.sampled_from([None, "ct-lung", "ct-abdomen"]),
)
def test_the_value_table_gives_the_whole_image_computation(
    pixels: npt.NDArray[np.int16],
    intercept: float,
    slope: float,
    window: tuple[float, float] | None,
    function: str,
    preset: str | None,
) -> None:
    """Mapping each distinct stored value once and looking pixels up gives exactly what the
    Modality LUT, own window or preset give over the whole image."""
    ds = gray_image(pixels, intercept=intercept)
    ds.RescaleSlope = slope
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        if function:
            ds.VOILUTFunction = function
    policy = IntensityPolicy(preset=preset)
    view = frame_view(ds, 0)
    values = modality_values(view, pixels)
    expected = own_voi(view, values)
    if expected is None:
        expected = policy_voi(values, policy, hu=True)
    assert np.array_equal(display_pixels(ds, 0, policy), expected)
