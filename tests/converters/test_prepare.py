"""Per-model preparation of 2-D frames: PNG mode and size, padding, intensity defaults."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from converters.geometry import mask_to_model, mask_to_source
from converters.intensity import display_pixels
from converters.prepare import ImageModel, PreparedImage, prepare_frames, prepare_image


def decode(prepared: PreparedImage) -> Image.Image:
    """The prepared PNG, decoded."""
    image = Image.open(io.BytesIO(prepared.png))
    assert image.format == "PNG"
    return image


def ct_slice(pixels: npt.NDArray[np.int16]) -> Dataset:
    """A single-frame CT image (stored value - 1024 = HU) without a window of its own."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


@pytest.fixture(scope="module")
def cr_chest() -> Dataset:
    """The real MONOCHROME1 15-bit CR chest (1955 rows x 1841 columns)."""
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def enhanced_ct() -> Dataset:
    """The real two-frame Enhanced CT with per-frame functional groups."""
    return pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))


def test_cr_chest_prepares_for_every_2d_model(cr_chest: Dataset) -> None:
    """The CR chest gives a 1024 RGB PNG, a 480 RGB PNG and a native 8-bit gray PNG."""
    expected = {
        ImageModel.MEDIMAGEPARSE: ("RGB", (1024, 1024)),
        ImageModel.MEDIMAGEINSIGHT: ("RGB", (480, 480)),
        ImageModel.CXRREPORTGEN: ("L", (1841, 1955)),
    }
    for model, (mode, size) in expected.items():
        prepared = prepare_image(cr_chest, model)
        image = decode(prepared)
        assert (image.mode, image.size, prepared.size) == (mode, size, size)
        assert prepared.sop_instance_uid == cr_chest.SOPInstanceUID
        assert prepared.transform.source_rows == 1955
        assert prepared.transform.source_cols == 1841


def test_cxr_png_is_the_display_image_itself(cr_chest: Dataset) -> None:
    """CXRReportGen gets the windowed, inverted frame unchanged, pixel for pixel."""
    image = np.asarray(decode(prepare_image(cr_chest, ImageModel.CXRREPORTGEN)))
    assert np.array_equal(image, display_pixels(cr_chest))


def test_parse_pads_the_chest_with_black_bars(cr_chest: Dataset) -> None:
    """The taller-than-wide chest is centred with black bars left and right in the 1024 square."""
    prepared = prepare_image(cr_chest, ImageModel.MEDIMAGEPARSE)
    image = np.asarray(decode(prepared))
    left_edge, _ = prepared.transform.to_model(0, 0)
    right_edge, _ = prepared.transform.to_model(1841, 0)
    assert left_edge > 20 and 1024 - right_edge > 20  # 57 px pad each side, times 1024/1955
    # Bicubic support reaches two source-scale pixels over the border; beyond that, pure black.
    assert image[:, : int(left_edge) - 2].max() == 0
    assert image[:, int(right_edge) + 3 :].max() == 0
    assert image[:, int(left_edge) + 3 : int(right_edge) - 2].mean() > 100
    band = mask_to_model(np.ones((1955, 1841), dtype=bool), prepared.transform)
    assert band[:, 0].sum() == 0 and band[:, 1023].sum() == 0 and band[:, 512].all()


def test_parse_mask_in_model_space_maps_back_onto_the_chest(cr_chest: Dataset) -> None:
    """A full 1024 mask maps back to every source pixel; the pad is not part of the image."""
    prepared = prepare_image(cr_chest, ImageModel.MEDIMAGEPARSE)
    back = mask_to_source(np.full((1024, 1024), 255, dtype=np.uint8), prepared.transform)
    assert back.shape == (1955, 1841) and back.all()


def test_jpeg2000_chest_prepares_identically(cr_chest: Dataset) -> None:
    """RG1_J2KR gives byte-identical model input to RG1_UNCR for every model."""
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    for model in ImageModel:
        assert prepare_image(j2k, model).png == prepare_image(cr_chest, model).png


def test_enhanced_ct_prepares_per_frame_for_parse_and_insight(enhanced_ct: Dataset) -> None:
    """Each Enhanced CT frame becomes its own MedImageParse and MedImageInsight input."""
    for model, side in ((ImageModel.MEDIMAGEPARSE, 1024), (ImageModel.MEDIMAGEINSIGHT, 480)):
        prepared = prepare_frames(enhanced_ct, model, preset="ct-abdomen")
        assert [p.frame for p in prepared] == [0, 1]
        images = [np.asarray(decode(p)) for p in prepared]
        assert all(image.shape == (side, side, 3) for image in images)
        assert not np.array_equal(images[0], images[1])


def test_parse_default_intensity_is_the_half_percent_clip() -> None:
    """Without a window or preset MedImageParse clips at 0.5/99.5%, CXRReportGen at 1/99%."""
    rng = np.random.default_rng(11)
    ds = ct_slice(rng.integers(0, 3000, size=(200, 200)).astype(np.int16))
    parse = np.asarray(decode(prepare_image(ds, ImageModel.MEDIMAGEPARSE, size=200)))[..., 0]
    cxr = np.asarray(decode(prepare_image(ds, ImageModel.CXRREPORTGEN)))
    assert 0.002 < np.mean(parse == 255) < 0.008
    assert 0.007 < np.mean(cxr == 255) < 0.015


def test_preset_applies_when_the_dataset_has_no_window() -> None:
    """A CT slice without its own window is shown through the configured preset range."""
    stored = np.tile(np.arange(0, 2048, 8, dtype=np.int16), (16, 1))
    prepared = prepare_image(ct_slice(stored), ImageModel.CXRREPORTGEN, preset="ct-lung")
    image = np.asarray(decode(prepared))
    hu = stored.astype(float) - 1024
    assert np.all(image[hu <= -1000] == 0) and np.all(image[hu >= 1000] == 255)


def test_rgb_image_stays_colour_for_parse_and_goes_gray_for_cxr() -> None:
    """Colour frames keep their colour for MedImageParse and become luminance for CXRReportGen."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    parse = np.asarray(decode(prepare_image(ds, ImageModel.MEDIMAGEPARSE)))
    assert parse.shape == (1024, 1024, 3)
    assert np.abs(parse[..., 0].astype(int) - parse[..., 2]).max() > 100
    cxr = decode(prepare_image(ds, ImageModel.CXRREPORTGEN))
    assert (cxr.mode, cxr.size) == ("L", (100, 100))
