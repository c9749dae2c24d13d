"""The spool: file meta encoding, the header walk, durable writes and re-indexing."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from factory import ct_series
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite

from listener.errors import InvalidDatasetError, MissingIdentifierError
from listener.store.journal import Journal, Sender
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


def _spooled(spool: Spool, ds: Dataset, *, calling: str, called: str, peer: str) -> str:
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    header = read_header(buffer.getvalue(), "1.2.840.10008.1.2.1")
    meta = encode_file_meta(
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax="1.2.840.10008.1.2.1",
        source_ae=calling,
        called_ae=called,
        peer=(peer, 40123),
    )
    relative, _ = spool.write(header, [meta, buffer.getvalue()])
    return relative


def test_reindexed_instances_keep_their_senders(tmp_path: Path) -> None:
    """A study whose journal rows were lost (power failure) gets each instance's sender back
    from its spool file: calling and called AE title and peer address, two senders apart."""
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine")
    first, second = ct_series(2)
    _spooled(spool, first, calling="CT_SCANNER1", called="PACSAI", peer="10.20.1.5")
    _spooled(spool, second, calling="WORKSTATION", called="PACSAI_SORT", peer="::1")
    journal = Journal(tmp_path / "journal.sqlite")
    assert reindex(spool, journal, quiet_period_s=5, now=50.0) == 2
    senders = journal.senders(str(first.StudyInstanceUID))
    assert senders[str(first.SOPInstanceUID)] == Sender("CT_SCANNER1", "PACSAI", "10.20.1.5")
    assert senders[str(second.SOPInstanceUID)] == Sender("WORKSTATION", "PACSAI_SORT", "::1")
    assert {a["ended"] for a in journal.associations()} == {"recovered"}


def test_file_meta_records_the_association() -> None:
    """The spool file's meta says who sent it (PS3.10 Table 7.1-1 sending/receiving elements)."""
    ds = ct_series(1)[0]
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    meta = encode_file_meta(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax="1.2.840.10008.1.2.1",
        source_ae="MODALITY",
        called_ae="PACSAI",
        peer=("192.168.1.7", 104),
    )
    back = dcmread(BytesIO(meta + buffer.getvalue()))
    assert back.file_meta.SendingApplicationEntityTitle == "MODALITY"
    assert back.file_meta.ReceivingApplicationEntityTitle == "PACSAI"
    assert back.file_meta.SendingPresentationAddress == "dicom://192.168.1.7:104"


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named .part"])
def test_incoming_is_claimed_once_and_leaves_nothing_in_tmp(tmp_path: Path, unnamed: bool) -> None:
    """A streamed instance (unnamed O_TMPFILE inode, or a named .part file where that is not
    offered) gets its final name exclusively: a second claim of the UID is refused and the first
    file's bytes stay; nothing is left in .tmp once both are done."""
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine")
    assert spool._linker is not None  # this platform offers O_TMPFILE and a way to link it
    if not unnamed:
        spool._linker = None
    ds = ct_series(1)[0]
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    syntax = "1.2.840.10008.1.2.1"
    meta = encode_file_meta(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=syntax,
        source_ae="",
    )
    first, second = spool.open_incoming(meta, 1 << 30), spool.open_incoming(meta, 1 << 30)
    assert (len(list(spool.tmp.iterdir())) == 0) is unnamed
    first.write(buffer.getvalue())
    second.write(buffer.getvalue()[:-2] + b"\1\1")
    header = first.header(syntax, max_inflated=1 << 20)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    relative = spool.claim(first, header)
    assert relative is not None
    assert spool.claim(second, second.header(syntax, max_inflated=1 << 20)) is None
    first.discard()
    second.discard()
    assert (spool.root / relative).read_bytes() == meta + buffer.getvalue()
    assert list(spool.tmp.iterdir()) == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named .part"])
def test_deflated_incoming_is_inflated_beside_the_spool(tmp_path: Path, unnamed: bool) -> None:
    """The header of a deflated data set streamed into an unnamed file is read by inflating it
    into the spool's temporary folder (not next to the descriptor's /proc entry)."""
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine")
    if not unnamed:
        spool._linker = None
    syntax, dataset = split_file(_file_bytes("image_dfl.dcm"))
    expected = dcmread(get_testdata_file("image_dfl.dcm"))
    meta = encode_file_meta(
        sop_class_uid=expected.SOPClassUID,
        sop_instance_uid=expected.SOPInstanceUID,
        transfer_syntax=syntax,
        source_ae="",
    )
    incoming = spool.open_incoming(meta, 1 << 30)
    incoming.write(dataset)
    header = incoming.header(syntax, max_inflated=1 << 26)
    incoming.discard()
    assert header.sop_instance_uid == expected.SOPInstanceUID
    assert list(spool.tmp.iterdir()) == []
