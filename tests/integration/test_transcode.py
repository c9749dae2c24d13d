"""Sending to a peer that takes no compressed syntax: the sender decodes, never re-encodes.

The peer is DCMTK storescp without ``+xa``, which accepts the uncompressed transfer syntaxes
only (like many PACS with JPEG 2000), and stores bit-preserving (``+B``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from factory import ct_series, lesion_mask, rgb_secondary_capture, write_series
from peers import free_port, nodelay_env, stop_process, wait_for_port
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, generate_uid
from pynetdicom.dsutils import split_dataset

from listener.route import Destination
from listener.send.scu import StoreItem, StoreSender, decoded, enable_chunked_send

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _chunked() -> None:
    enable_chunked_send()  # what a sender process does at start-up


@contextmanager
def uncompressed_only_peer(folder: Path) -> Iterator[Destination]:
    """Storescp accepting only uncompressed syntaxes (its default), bit-preserving."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["storescp", "-aet", "PLAINPACS", "+B", "-od", str(folder), str(port)]
    proc = subprocess.Popen(args, env=nodelay_env(), stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield Destination(ae_title="PLAINPACS", host="127.0.0.1", port=port)
    finally:
        stop_process(proc)


def _item(path: Path) -> StoreItem:
    return StoreItem(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))


def _received(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


def _dataset_bytes(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _jpeg2000_study(folder: Path) -> list[Path]:
    datasets = ct_series(3)
    for ds in datasets:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return write_series(datasets, folder)


def _segmentation(source: Path, folder: Path) -> Path:
    """A SEG over one of the study's slices, as the gateway's results are (uncompressed)."""
    image = dcmread(source)
    image.decompress(generate_instance_uid=False)
    mask = lesion_mask(int(image.Rows), int(image.Columns))[np.newaxis]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept(
            "M-01000", "SRT", "Morphologically Altered Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("M-03000", "SRT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    path = folder / "seg.dcm"
    seg.save_as(path)
    return path


def test_jpeg2000_study_arrives_decompressed_with_identical_pixels(tmp_path: Path) -> None:
    """A JPEG 2000 study to a peer that accepts only uncompressed syntaxes is decoded on the way:
    every instance arrives (same SOP Instance UID) uncompressed, with exactly the source's
    pixels; the SEG beside it, already uncompressed, arrives byte for byte unchanged."""
    files = _jpeg2000_study(tmp_path / "j2k")
    seg = _segmentation(files[0], tmp_path)
    with uncompressed_only_peer(tmp_path / "peer") as dest:
        outcomes = StoreSender("PACSAI").send(dest, [_item(p) for p in [*files, seg]])
    assert [o.error for o in outcomes] == [None] * 4
    received = _received(tmp_path / "peer")
    for path in files:
        source = dcmread(path)
        got = dcmread(received[str(source.SOPInstanceUID)])
        assert not got.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(got.pixel_array, source.pixel_array)
        assert got.get("LossyImageCompression") != "01"
    assert _dataset_bytes(received[_item(seg).sop_instance_uid]) == _dataset_bytes(seg)


def _lossy_jpeg(folder: Path) -> Path:
    """An RGB image compressed to JPEG baseline by DCMTK (Lossy Image Compression 01, ratio,
    method ISO_10918_1 set by dcmcjpeg)."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain.dcm"
    rgb_secondary_capture().save_as(plain, enforce_file_format=True)
    lossy = folder / "lossy.dcm"
    subprocess.run(["dcmcjpeg", "+eb", str(plain), str(lossy)], check=True)
    return lossy


def test_lossy_source_is_decoded_and_keeps_its_lossy_marking(tmp_path: Path) -> None:
    """A lossy JPEG source to the uncompressed-only peer arrives decoded (uncompressed, the
    source's decoded pixels, never a second lossy step) and still says Lossy Image Compression
    01 with the source's ratio and method."""
    lossy = _lossy_jpeg(tmp_path / "src")
    source = dcmread(lossy)
    assert source.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    extended = Path(shutil.copy(str(get_testdata_file("JPEG2000.dcm")), tmp_path / "j2k-lossy.dcm"))
    with uncompressed_only_peer(tmp_path / "peer") as dest:
        outcomes = StoreSender("PACSAI").send(dest, [_item(lossy), _item(extended)])
    assert [o.error for o in outcomes] == [None, None]
    received = _received(tmp_path / "peer")
    for path in (lossy, extended):
        original = dcmread(path)
        got = dcmread(received[str(original.SOPInstanceUID)])
        assert not got.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(got.pixel_array, original.pixel_array)
        assert got.LossyImageCompression == "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            assert got.get(keyword) == original.get(keyword) or original.get(keyword) is None
    got = dcmread(received[str(source.SOPInstanceUID)])
    assert got.LossyImageCompressionMethod == "ISO_10918_1"
    assert got.LossyImageCompressionRatio == source.LossyImageCompressionRatio


def test_decoding_a_lossy_source_without_its_marking_adds_it(tmp_path: Path) -> None:
    """A JPEG baseline file that does not say it is lossy is marked so when decoded (01, method
    ISO_10918_1, a ratio), because decoding does not make it lossless."""
    lossy = _lossy_jpeg(tmp_path / "src")
    ds = dcmread(lossy)
    for keyword in (
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    ):
        delattr(ds, keyword)
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    result = decoded(bare)
    assert result.SOPInstanceUID == ds.SOPInstanceUID
    assert result.LossyImageCompression == "01"
    assert result.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(result.LossyImageCompressionRatio) > 1
