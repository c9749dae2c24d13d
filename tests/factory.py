"""Synthetic DICOM test data: CT series, phantoms, RGB secondary capture.

Everything here is made in memory with pydicom, so tests and benchmarks need no network. The CT
objects carry the attributes dciodvfy asks for (PatientPosition, AcquisitionNumber, ...), so the
result objects derived from them can be validated strictly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

UID_ROOT = "1.2.826.0.1.3680043.8.498."


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_study(ds: Dataset, *, patient_id: str, study_uid: str, accession: str) -> None:
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic test study"


def ct_phantom(rows: int, cols: int, index: int, n_slices: int) -> npt.NDArray[np.int16]:
    """Stored values of one slice: a body ellipse with a brighter disc lesion in the middle slices.

    The lesion (stored 1300 -> 300 HU) sits at a known place: centre (rows*0.4, cols*0.6), radius
    min(rows, cols)/10, on slices in the middle third.
    """
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 <= 1.0
    pixels = np.zeros((rows, cols), dtype=np.int16)  # -1000 HU air
    pixels[body] = 1040  # 40 HU soft tissue
    if n_slices // 3 <= index < max(2 * n_slices // 3, n_slices // 3 + 1):
        pixels[lesion_mask(rows, cols)] = 1300
    return pixels


def lesion_mask(rows: int, cols: int) -> npt.NDArray[np.bool_]:
    """Where :func:`ct_phantom` puts the lesion on a slice."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    radius = min(rows, cols) / 10
    result: npt.NDArray[np.bool_] = (yy - rows * 0.4) ** 2 + (xx - cols * 0.6) ** 2 <= radius**2
    return result


def ct_series(
    n: int,
    *,
    rows: int = 64,
    cols: int = 64,
    patient_id: str = "SYN001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    accession: str = "ACC001",
    body_part: str = "ABDOMEN",
    spacing: float = 0.7,
    thickness: float = 2.5,
    uid_seed: str | None = None,
    oblique_deg: float = 0.0,
    gantry_tilt_deg: float = 0.0,
) -> list[Dataset]:
    """A CT series of ``n`` axial slices with a phantom body and a lesion, dciodvfy-clean.

    ``uid_seed`` fixes every UID (derived from it), for tests that compare bytes across runs.
    ``oblique_deg`` turns the image plane about the patient's x axis and stacks the slices along
    its normal (an oblique series); ``gantry_tilt_deg`` turns the plane the same way but keeps
    the slices stacked along z, as a tilted gantry acquires them (Gantry/Detector Tilt set).
    """
    uid = _uid_source(uid_seed)
    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid("series")
    frame_of_reference = uid("frame-of-reference")
    angle = np.radians(oblique_deg or gantry_tilt_deg)
    column = [0.0, float(np.cos(angle)), float(np.sin(angle))]
    normal = np.cross([1.0, 0.0, 0.0], column)
    step = -normal * thickness if oblique_deg else np.array([0.0, 0.0, -thickness])
    origin = np.array([-cols * spacing / 2, -rows * spacing / 2, 0.0])
    out = []
    for i in range(n):
        sop_uid = uid(f"instance-{i}")
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, sop_uid)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _patient_study(ds, patient_id=patient_id, study_uid=study_uid, accession=accession)
        ds.Modality = "CT"
        ds.Manufacturer = "Synthetic"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Synthetic CT"
        ds.BodyPartExamined = body_part
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = i + 1
        ds.AcquisitionNumber = 1
        ds.ContentDate = "20260101"
        ds.ContentTime = "120000"
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin + i * step]
        ds.ImageOrientationPatient = [1, 0, 0, *(round(v, 6) for v in column)]
        if gantry_tilt_deg:
            ds.GantryDetectorTilt = gantry_tilt_deg
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1000
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = ct_phantom(rows, cols, i, n).tobytes()
        out.append(ds)
    return out


IMAGE_FAMILIES = ("disc", "band")


def family_study(family: str, index: int, *, size: int = 64) -> Dataset:
    """A one-image CT study of a visibly distinct synthetic family, varied per ``index``.

    ``disc``: a bright disc of varying radius and position near the centre; ``band``: a bright
    horizontal band across the top of varying height. Both on soft-tissue background with noise,
    so that the emulator's pixel-derived embeddings of one family lie close together and far
    from the other's.
    """
    rng = np.random.default_rng([index, sum(family.encode())])
    (ds,) = ct_series(
        1,
        rows=size,
        cols=size,
        patient_id=f"FAM{index:04d}",
        accession=f"F{index:05d}",
        uid_seed=f"{family}-{index}",
    )
    yy, xx = np.mgrid[0:size, 0:size]
    if family == "disc":
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.15, 0.3) * size
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    elif family == "band":
        top, height = rng.uniform(0.0, 0.1) * size, rng.uniform(0.2, 0.4) * size
        shape = (yy >= top) & (yy < top + height)
    elif family == "corner":  # a third family, unlike the other two (out of distribution)
        edge = rng.uniform(0.55, 0.7) * size
        shape = (yy > edge) & (xx > edge)
    else:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(IMAGE_FAMILIES)}, corner)")
    hu = 1000 + 40 + 160 * shape + rng.normal(0, 15, (size, size))  # stored = HU + 1000
    ds.PixelData = np.clip(hu, 0, 3000).astype(np.int16).tobytes()
    ds.StudyDescription = "Synthetic family"
    return ds


def _uid_source(seed: str | None) -> Callable[[str], str]:
    """UIDs for one synthetic object: random, or derived from ``seed`` and the UID's role."""
    if seed is None:
        return lambda _role: generate_uid(prefix=UID_ROOT)
    return lambda role: generate_uid(prefix=UID_ROOT, entropy_srcs=[seed, role])


def chest_radiograph(
    uid_seed: str, *, rows: int = 320, cols: int = 256, monochrome1: bool = True
) -> Dataset:
    """A CR chest PA (12-bit): two dark lungs and a bright mediastinum, fixed UIDs from
    ``uid_seed``. MONOCHROME1 stores them inverted (higher values darker), as CR plates do."""
    uid = _uid_source(uid_seed)
    sop_uid = uid("instance")
    ds = Dataset()
    ds.file_meta = _file_meta(ComputedRadiographyImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, patient_id="SYN-CR", study_uid=uid("study"), accession="ACCCR")
    ds.Modality = "CR"
    ds.SeriesInstanceUID = uid("series")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.ImagerPixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[0:rows, 0:cols]
    bright = np.full((rows, cols), 3000.0)
    for centre in (0.3, 0.7):
        lung = ((yy - rows * 0.5) / (rows * 0.35)) ** 2 + (
            (xx - cols * centre) / (cols * 0.16)
        ) ** 2
        bright[lung <= 1.0] = 800.0
    stored = 4095 - bright if monochrome1 else bright
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def rgb_secondary_capture(
    rows: int = 96, cols: int = 128, *, patient_id: str = "SYN003", accession: str = "ACC003"
) -> Dataset:
    """An RGB secondary capture (e.g. a dermatology photo) with a coloured disc on grey."""
    sop_uid = generate_uid(prefix=UID_ROOT)
    ds = Dataset()
    ds.file_meta = _file_meta(SecondaryCaptureImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    _patient_study(
        ds, patient_id=patient_id, study_uid=generate_uid(prefix=UID_ROOT), accession=accession
    )
    ds.Modality = "XC"
    ds.ConversionType = "DI"
    ds.Laterality = ""
    ds.SeriesInstanceUID = generate_uid(prefix=UID_ROOT)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = np.full((rows, cols, 3), 128, dtype=np.uint8)
    disc = (yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 <= (min(rows, cols) / 4) ** 2
    pixels[disc] = (180, 60, 50)
    ds.PixelData = pixels.tobytes()
    return ds


def with_voi_lut(ds: Dataset, vr: str = "OW") -> Dataset:
    """``ds`` (a grayscale image) with a VOI LUT Sequence instead of a window: a linear ramp over
    its stored range, LUT Data as ``vr`` ("OW" bytes or "US" values), 16 bits out."""
    from pydicom.dataelem import DataElement

    stored = int(ds.get("BitsStored", 16))
    entries = min(2**stored, 4096)
    ramp = np.linspace(0, 65535, entries).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [entries, 0, 16]
    item.LUTExplanation = "Synthetic ramp"
    if vr == "OW":
        item.add(DataElement(0x00283006, "OW", ramp.astype("<u2").tobytes()))
    else:
        item.add(DataElement(0x00283006, "US", [int(v) for v in ramp]))
    ds.VOILUTSequence = [item]
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write datasets as DICOM files (``IMG0001.dcm``...) into ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets, start=1):
        path = folder / f"IMG{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Write a synthetic CT series: ``python tests/factory.py OUT -n 200 --rows 512 --cols 512``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=64)
    args = parser.parse_args(argv)
    write_series(ct_series(args.n, rows=args.rows, cols=args.cols), args.out)


if __name__ == "__main__":
    main()
