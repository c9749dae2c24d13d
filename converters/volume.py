"""A CT/MR series as the NIfTI volume MedImageParse 3D takes, and its label volume back per frame.

The series is a list of single-frame instances or one (or more) Enhanced multi-frame instances;
every frame is one slice. Slices are sorted by their position along the slice normal
(Image Orientation row x column direction, PS3.3 C.7.6.2.1.1), never by Instance Number.

Voxel (i, j, k) is column i, row j of the k-th slice in that order. DICOM positions are in the
patient LPS system and NIfTI's are RAS, so the affine is the DICOM plane geometry with x and y
negated:  ``LPS(i, j, k) = P0 + i * dc * row_dir + j * dr * col_dir + k * step``, where P0 is the
first slice's Image Position, (dr, dc) its Pixel Spacing (row spacing first) and ``step`` the
vector between consecutive slice positions (so a gantry tilt is kept, as a sheared affine).

Intensity: the model card does not say whether the endpoint wants raw values or 0..255
(docs/models.md §4, §9). Without a preset the volume holds the Modality LUT output (HU for CT)
as int16, which loses nothing and lets the endpoint window itself; values that are not whole
numbers in int16 range (some MR rescales) go as float32. With a preset the volume holds the
windowed 0..255 values as uint8, like the model's training data (§5.3).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import nibabel
import numpy as np
import numpy.typing as npt
from nibabel import orientations as nibabel_orientations
from pydicom import Dataset

from converters.frames import frame_view, is_colour, number_of_frames, stored_values
from converters.intensity import CT_PRESETS, modality_values, range_to_uint8

# nibabel's functions carry no annotations; one Any-typed handle each keeps mypy strict elsewhere.
_NIB: Any = nibabel
_ORIENT: Any = nibabel_orientations

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 0.01  # relative unevenness of slice steps still treated as one spacing


class VolumeError(ValueError):
    """The frames do not form one regular volume (mixed orientation, size, uneven spacing)."""


class FrameRef(NamedTuple):
    """One source frame: the instance and the 0-based frame index within it."""

    sop_instance_uid: str
    frame: int


@dataclass(frozen=True)
class PreparedVolume:
    """The gzip-compressed NIfTI for MedImageParse 3D and where each slice came from.

    ``shape`` is (columns, rows, slices); ``slices[k]`` is the source frame of slice k;
    ``affine`` maps voxel indices to RAS millimetres.
    """

    nifti: bytes
    affine: npt.NDArray[np.float64]
    shape: tuple[int, int, int]
    slices: tuple[FrameRef, ...]
    windowed: bool


@dataclass(frozen=True)
class _Slice:
    ref: FrameRef
    source: Dataset
    position: npt.NDArray[np.float64]
    distance: float


def _floats(value: Any, count: int, name: str, ref: FrameRef) -> npt.NDArray[np.float64]:
    if value is None or len(value) != count:
        raise VolumeError(f"{name} missing or malformed on frame {ref.frame} of an instance")
    return np.array([float(v) for v in value], dtype=np.float64)


def _plane(view: Dataset, ref: FrameRef) -> tuple[npt.NDArray[np.float64], ...]:
    """(orientation (6), spacing (row, col), position (3)) of one frame."""
    orientation = _floats(view.get("ImageOrientationPatient"), 6, "Image Orientation", ref)
    spacing = _floats(view.get("PixelSpacing"), 2, "Pixel Spacing", ref)
    position = _floats(view.get("ImagePositionPatient"), 3, "Image Position", ref)
    return orientation, spacing, position


def _collect(datasets: Sequence[Dataset]) -> tuple[list[_Slice], Dataset]:
    """Every frame with its position along the common slice normal; checks they agree."""
    slices: list[_Slice] = []
    first: tuple[npt.NDArray[np.float64], ...] | None = None
    first_view = Dataset()
    for ds in datasets:
        for index in range(number_of_frames(ds)):
            ref = FrameRef(str(ds.SOPInstanceUID), index)
            view = frame_view(ds, index)
            plane = _plane(view, ref)
            if first is None:
                first, first_view = plane, view
            elif not (
                np.allclose(plane[0], first[0], atol=_ORIENTATION_TOLERANCE)
                and np.allclose(plane[1], first[1], rtol=1e-4)
                and (view.Rows, view.Columns) == (first_view.Rows, first_view.Columns)
            ):
                raise VolumeError("frames differ in orientation, pixel spacing or size")
            if is_colour(view):
                raise VolumeError("colour images cannot form a MedImageParse 3D volume")
            normal = np.cross(plane[0][:3], plane[0][3:])
            slices.append(_Slice(ref, ds, plane[2], float(plane[2] @ normal)))
    if not slices:
        raise VolumeError("no frames to build a volume from")
    return sorted(slices, key=lambda s: s.distance), first_view


def _step(slices: list[_Slice], view: Dataset) -> npt.NDArray[np.float64]:
    """The vector from one slice position to the next; checks the spacing is even."""
    if len(slices) == 1:
        orientation = np.array([float(v) for v in view.ImageOrientationPatient])
        thickness = view.get("SpacingBetweenSlices") or view.get("SliceThickness") or 1.0
        return np.cross(orientation[:3], orientation[3:]) * float(thickness)
    gaps = np.diff([s.distance for s in slices])
    if np.min(gaps) <= 1e-3:
        raise VolumeError("two frames share a slice position (several phases or stacks?)")
    if np.max(gaps) - np.min(gaps) > _SPACING_TOLERANCE * float(np.mean(gaps)):
        raise VolumeError("uneven slice spacing cannot be written as one NIfTI affine")
    result: npt.NDArray[np.float64] = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    return result


def _affine(slices: list[_Slice], view: Dataset) -> npt.NDArray[np.float64]:
    orientation = np.array([float(v) for v in view.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in view.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * col_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = _step(slices, view)
    lps[:3, 3] = slices[0].position
    result: npt.NDArray[np.float64] = LPS_TO_RAS @ lps
    return result


def _compact(values: npt.NDArray[np.float64], preset: str | None) -> npt.NDArray[Any]:
    """One slice in its final dtype: uint8 windowed, int16 when exact, else float32."""
    if preset is not None:
        low, high = CT_PRESETS[preset]
        return range_to_uint8(values, low, high)
    info = np.iinfo(np.int16)
    whole = np.array_equal(values, np.round(values))
    if whole and info.min <= values.min() and values.max() <= info.max:
        return values.astype(np.int16)
    return values.astype(np.float32)


def _voxels(slices: list[_Slice], preset: str | None) -> npt.NDArray[Any]:
    """Stack the slices as (columns, rows, slices), in the dtype the module docstring gives.

    Each slice is narrowed as it is read, so a long series never sits in memory as float64;
    stacking int16 with any float32 slice gives float32 for the whole volume.
    """
    planes = []
    for s in slices:
        view = frame_view(s.source, s.ref.frame)
        values = modality_values(view, stored_values(s.source, s.ref.frame))
        planes.append(_compact(values, preset))
    return np.stack(planes, axis=-1).transpose(1, 0, 2)


def nifti_bytes(voxels: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> bytes:
    """A gzip-compressed NIfTI-1 file (scanner qform and sform, millimetres), deterministic."""
    image = _NIB.Nifti1Image(voxels, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def build_volume(datasets: Sequence[Dataset], preset: str | None = None) -> PreparedVolume:
    """The series (any frame order) as a NIfTI volume for MedImageParse 3D."""
    if preset is not None and preset not in CT_PRESETS:
        raise ValueError(f"unknown intensity preset {preset!r}")
    slices, view = _collect(datasets)
    affine = _affine(slices, view)
    voxels = _voxels(slices, preset)
    return PreparedVolume(
        nifti=nifti_bytes(voxels, affine),
        affine=affine,
        shape=(int(voxels.shape[0]), int(voxels.shape[1]), int(voxels.shape[2])),
        slices=tuple(s.ref for s in slices),
        windowed=preset is not None,
    )


def read_nifti(data: bytes) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """Voxels and affine of a NIfTI-1 file, gzip-compressed or not."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    image = _NIB.Nifti1Image.from_bytes(raw)
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def _to_volume_grid(
    labels: npt.NDArray[Any], labels_affine: npt.NDArray[np.float64], volume: PreparedVolume
) -> npt.NDArray[Any]:
    """Labels reordered onto the volume's axes when the answer came back reoriented."""
    source = _ORIENT.io_orientation(labels_affine)
    target = _ORIENT.io_orientation(volume.affine)
    transform = _ORIENT.ornt_transform(source, target)
    return np.asarray(_ORIENT.apply_orientation(labels, transform))


def frame_masks(
    labels: npt.NDArray[Any],
    volume: PreparedVolume,
    label: int | None = None,
    labels_affine: npt.NDArray[np.float64] | None = None,
) -> dict[FrameRef, npt.NDArray[np.bool_]]:
    """A label volume as one (rows, columns) mask per source frame.

    ``label`` selects one label value (k for the k-th prompt); None takes every non-zero voxel.
    Give ``labels_affine`` (the returned NIfTI's affine) to undo an axis flip or permutation.
    """
    if labels_affine is not None:
        labels = _to_volume_grid(labels, labels_affine, volume)
    if tuple(labels.shape) != volume.shape:
        raise VolumeError(f"label volume shape {labels.shape} is not the input's {volume.shape}")
    selected = labels != 0 if label is None else labels == label
    return {ref: np.ascontiguousarray(selected[:, :, k].T) for k, ref in enumerate(volume.slices)}
