"""CT series to NIfTI for MedImageParse 3D, and the label volume back onto the source frames."""

from __future__ import annotations

import gzip
import random

import nibabel
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from converters.volume import (
    FrameRef,
    VolumeError,
    build_volume,
    frame_masks,
    nifti_bytes,
    read_nifti,
)

ROWS, COLS, SLICES = 24, 32, 5
ROW_SPACING, COL_SPACING, SLICE_GAP = 0.7, 0.9, 2.5
ANGLE = np.deg2rad(20)
ROW_DIR = np.array([np.cos(ANGLE), np.sin(ANGLE), 0.0])  # direction of increasing column
COL_DIR = np.array([0.0, 0.0, -1.0])  # direction of increasing row
NORMAL = np.cross(ROW_DIR, COL_DIR)
ORIGIN = np.array([-12.0, 30.0, 55.0])


def stored(k: int) -> npt.NDArray[np.int16]:
    """Stored values of slice k: unique per (row, column, slice); HU = stored - 1024."""
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    return (900 + 200 * k + 3 * rr + cc).astype(np.int16)


def position(k: int, gap: float = SLICE_GAP) -> npt.NDArray[np.float64]:
    """Image Position (Patient) of slice k, in LPS millimetres."""
    return ORIGIN + k * gap * NORMAL


def ct_slice(k: int, pos: npt.NDArray[np.float64], rows: int = ROWS) -> Dataset:
    """One oblique single-frame CT slice of the synthetic series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = SLICES - k  # deliberately not the spatial order
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROW_DIR, *COL_DIR)]
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = SLICE_GAP
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, COLS
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored(k)[:rows].tobytes()
    return ds


@pytest.fixture
def series() -> list[Dataset]:
    """The synthetic series in spatial order (slice k at ORIGIN + k * gap * normal)."""
    return [ct_slice(k, position(k)) for k in range(SLICES)]


def shuffled(datasets: list[Dataset]) -> list[Dataset]:
    """The same datasets in a fixed scrambled order."""
    out = list(datasets)
    random.Random(3).shuffle(out)
    assert out != datasets
    return out


def test_series_becomes_a_volume_with_shape_and_lps_to_ras_affine(series: list[Dataset]) -> None:
    """Voxel (i, j, k) sits at the RAS position DICOM gives for column i, row j of slice k."""
    volume = build_volume(shuffled(series))
    assert volume.shape == (COLS, ROWS, SLICES)
    assert volume.slices == tuple(FrameRef(ds.SOPInstanceUID, 0) for ds in series)
    for i, j, k in [(0, 0, 0), (COLS - 1, 0, 2), (5, ROWS - 1, SLICES - 1), (17, 9, 3)]:
        lps = position(k) + i * COL_SPACING * ROW_DIR + j * ROW_SPACING * COL_DIR
        ras = lps * np.array([-1.0, -1.0, 1.0])
        assert np.allclose(volume.affine @ np.array([i, j, k, 1.0]), [*ras, 1.0], atol=1e-4)


def test_nifti_file_holds_hounsfield_units_and_the_affine(series: list[Dataset]) -> None:
    """The .nii.gz, read by nibabel, has int16 HU at [column, row, slice] and a scanner sform."""
    volume = build_volume(shuffled(series))
    image = nibabel.Nifti1Image.from_bytes(gzip.decompress(volume.nifti))
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16 and data.shape == (COLS, ROWS, SLICES)
    for k in range(SLICES):
        assert np.array_equal(data[:, :, k].T, stored(k).astype(np.int16) - 1024)
    sform, code = image.get_sform(coded=True)
    assert int(code) == 1 and np.allclose(sform, volume.affine, atol=1e-4)
    assert not volume.windowed


def test_preset_gives_a_windowed_uint8_volume(series: list[Dataset]) -> None:
    """With a CT preset the voxels are the preset window mapped onto 0..255."""
    volume = build_volume(series, preset="ct-abdomen")
    data, _ = read_nifti(volume.nifti)
    assert data.dtype == np.uint8 and volume.windowed
    hu = np.stack([stored(k).T for k in range(SLICES)], axis=-1).astype(float) - 1024
    assert np.all(data[hu <= -150] == 0) and np.all(data[hu >= 250] == 255)


def test_label_volume_round_trips_to_the_right_frame_and_pixels(series: list[Dataset]) -> None:
    """A label drawn on slice 3 comes back on that instance's pixel grid and nowhere else."""
    volume = build_volume(shuffled(series))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[4:20, 2:11, 3] = 2  # columns 4..19, rows 2..10 of slice 3
    labels[0:5, 0:5, 1] = 1
    answer = nifti_bytes(labels, volume.affine)  # as the model would return it
    returned, returned_affine = read_nifti(answer)
    masks = frame_masks(returned, volume, label=2, labels_affine=returned_affine)
    expected = np.zeros((ROWS, COLS), dtype=bool)
    expected[2:11, 4:20] = True
    assert set(masks) == {FrameRef(ds.SOPInstanceUID, 0) for ds in series}
    for k, ds in enumerate(series):
        mask = masks[FrameRef(ds.SOPInstanceUID, 0)]
        assert mask.shape == (ROWS, COLS)
        assert np.array_equal(mask, expected if k == 3 else np.zeros_like(expected))
    anything = frame_masks(returned, volume)
    assert anything[FrameRef(series[1].SOPInstanceUID, 0)][0:5, 0:5].all()


def test_flipped_answer_is_reoriented_onto_the_input_grid(series: list[Dataset]) -> None:
    """A label volume returned with a flipped first axis maps back to the same frame masks."""
    volume = build_volume(series)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1:6, 7:9, 2] = 1
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = volume.shape[0] - 1
    flipped = frame_masks(labels[::-1], volume, 1, labels_affine=volume.affine @ flip)
    assert {ref: m.tolist() for ref, m in flipped.items()} == {
        ref: m.tolist() for ref, m in frame_masks(labels, volume, 1).items()
    }


def test_enhanced_ct_frames_are_sorted_along_the_normal() -> None:
    """The two Enhanced CT frames become slices ordered by position along the slice normal."""
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    volume = build_volume([ds])
    assert volume.shape == (512, 512, 2)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    distances = [
        float(np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float) @ normal)
        for item in ds.PerFrameFunctionalGroupsSequence
    ]
    order = list(np.argsort(distances))
    assert [ref.frame for ref in volume.slices] == order
    data, _ = read_nifti(volume.nifti)
    for k, frame in enumerate(order):
        assert np.array_equal(data[:, :, k].T, ds.pixel_array[frame].astype(np.int16) - 1024)
    assert np.isclose(abs(volume.affine[2, 2]), abs(distances[0] - distances[1]))


def test_duplicate_positions_are_refused(series: list[Dataset]) -> None:
    """Two frames at the same position (e.g. two phases) do not make one volume."""
    with pytest.raises(VolumeError, match="share a slice position"):
        build_volume([*series, ct_slice(9, position(2))])


def test_uneven_spacing_is_refused(series: list[Dataset]) -> None:
    """A missing slice leaves uneven gaps, which one NIfTI affine cannot describe."""
    with pytest.raises(VolumeError, match="uneven slice spacing"):
        build_volume([series[0], series[1], series[3], series[4]])


def test_mixed_sizes_are_refused(series: list[Dataset]) -> None:
    """Frames of different sizes do not stack into a volume."""
    with pytest.raises(VolumeError, match="orientation, pixel spacing or size"):
        build_volume([*series, ct_slice(5, position(5), rows=ROWS - 4)])
