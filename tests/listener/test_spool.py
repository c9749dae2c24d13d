"""The spool: file meta encoding, the header walk, durable writes and re-indexing."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from factory import ct_series
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite

from listener.errors import InvalidDatasetError, MissingIdentifierError
from listener.store.journal import Journal
from listener.store.spool import Spool, encode_file_meta, read_header, reindex, split_file

SAMPLES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_jp2klossless.dcm",  # JPEG 2000, encapsulated pixel data
    "SC_rgb_rle.dcm",  # RLE
    "image_dfl.dcm",  # deflated explicit VR little endian
    "test-SR.dcm",  # nested sequences
]


def _file_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


@pytest.mark.parametrize("name", SAMPLES)
def test_header_walk_reads_identifiers_like_pydicom(name: str) -> None:
    """The walk finds the same UIDs as pydicom for each transfer syntax."""
    data = _file_bytes(name)
    syntax, dataset = split_file(data)
    header = read_header(dataset, syntax)
    ds = dcmread(BytesIO(data))
    assert syntax == ds.file_meta.TransferSyntaxUID
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_uid == ds.StudyInstanceUID
    assert header.series_uid == ds.SeriesInstanceUID


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jp2klossless.dcm", "image_dfl.dcm"])
def test_truncated_dataset_is_refused_anywhere(name: str) -> None:
    """A dataset cut short in its header or in its pixel data raises InvalidDatasetError."""
    syntax, dataset = split_file(_file_bytes(name))
    for cut in (len(dataset) // 5, len(dataset) // 2, len(dataset) - 12):
        with pytest.raises(InvalidDatasetError):
            read_header(dataset[:cut], syntax)


def test_missing_sop_instance_uid_is_a_missing_identifier() -> None:
    """A dataset without SOP Instance UID raises MissingIdentifierError."""
    ds = ct_series(1)[0]
    del ds.SOPInstanceUID
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    with pytest.raises(MissingIdentifierError):
        read_header(buffer.getvalue(), "1.2.840.10008.1.2.1")


def test_file_meta_reads_back_in_pydicom() -> None:
    """encode_file_meta + dataset bytes is a valid PS3.10 file with the given values."""
    ds = ct_series(1)[0]
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    meta = encode_file_meta(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax="1.2.840.10008.1.2.1",
        source_ae="MODALITY",
    )
    back = dcmread(BytesIO(meta + buffer.getvalue()))
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert back.PixelData == ds.PixelData


def test_write_is_atomic_and_reindex_restores_lost_records(tmp_path: Path) -> None:
    """Written files sit at study/series/sop.dcm, .tmp is empty, and reindex re-records them."""
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine")
    ds = ct_series(1)[0]
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    syntax = "1.2.840.10008.1.2.1"
    header = read_header(buffer.getvalue(), syntax)
    meta = encode_file_meta(
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax=syntax,
        source_ae="",
    )
    relative, size = spool.write(header, [meta, buffer.getvalue()])
    assert relative == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert (spool.root / relative).stat().st_size == size
    assert list(spool.tmp.iterdir()) == []
    (spool.tmp / "leftover.part").write_bytes(b"partial")
    assert spool.clean_temporary() == 1
    journal = Journal(tmp_path / "journal.sqlite")
    assert reindex(spool, journal, quiet_period_s=5, now=50.0) == 1
    assert reindex(spool, journal, quiet_period_s=5, now=60.0) == 0
    assert [i.path for i in journal.instances(ds.StudyInstanceUID)] == [relative]
