"""Sending to real peers: DCMTK storescp (bit-preserving) and Orthanc, directly and by outbox."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import (
    Orthanc,
    StoreSCP,
    free_port,
    nodelay_env,
    run_orthanc,
    stop_process,
    wait_for_port,
)
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import split_dataset

from listener.route import Destination
from listener.send.deliver import Deliverer, SendBackoff
from listener.send.scu import SendTimeouts, StoreItem, StoreSender, enable_chunked_send
from listener.store.outbox import Outbox

pytestmark = pytest.mark.integration
T0 = 2_000_000.0


@pytest.fixture(autouse=True)
def _chunked() -> None:
    enable_chunked_send()  # what a sender process does at start-up


def item(path: Path) -> StoreItem:
    """The outbox item of a DICOM file."""
    return StoreItem(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set after the file meta information (what C-STORE carries)."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def mixed_files(folder: Path) -> list[Path]:
    """CT slices (explicit VR), one in implicit VR, and the chest CR uncompressed and JPEG 2000."""
    datasets = ct_series(4)
    files = write_series(datasets, folder / "ct")
    implicit = datasets[0].copy()
    implicit.SOPInstanceUID = implicit.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(folder / "implicit.dcm", enforce_file_format=True)
    files.append(folder / "implicit.dcm")
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        source = get_testdata_file(name)
        assert source is not None
        files.append(Path(shutil.copy(source, folder / name)))
    return files


def test_storescp_receives_byte_identical(tmp_path: Path, storescp: StoreSCP) -> None:
    """Every file arrives at storescp (+B) with its data set byte for byte, in its own syntax."""
    files = mixed_files(tmp_path / "src")
    dest = Destination(ae_title=storescp.aet, host="127.0.0.1", port=storescp.port)
    outcomes = StoreSender("PACSAI").send(dest, [item(p) for p in files])
    assert [o.error for o in outcomes] == [None] * len(files)
    received = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in storescp.folder.iterdir()
    }
    assert len(received) == len(files)
    for path in files:
        uid = item(path).sop_instance_uid
        assert dataset_bytes(received[uid]) == dataset_bytes(path), path.name
        sent_ts = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        got_ts = dcmread(received[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert got_ts == sent_ts


def test_orthanc_receives_everything(tmp_path: Path, orthanc: Orthanc) -> None:
    """Orthanc stores each instance sent over several associations, and has them all."""
    files = write_series(ct_series(40), tmp_path / "ct")
    items = [item(p) for p in files]
    dest = Destination(
        ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, max_associations=3
    )
    outcomes = StoreSender("PACSAI").send(dest, items)
    assert all(o.confirmed for o in outcomes)
    stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.find("Instance", {})}
    assert stored == {i.sop_instance_uid for i in items}


@contextmanager
def storescp_on(port: int, folder: Path) -> Iterator[Path]:
    """DCMTK storescp on a given port (the destination's configured one), bit-preserving."""
    folder.mkdir(parents=True, exist_ok=True)
    args = ["storescp", "-aet", "ARCHIVE", "+B", "-od", str(folder), "+xa", str(port)]
    proc = subprocess.Popen(args, env=nodelay_env(), stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield folder
    finally:
        stop_process(proc)


def test_outbox_waits_for_a_destination_that_is_down(tmp_path: Path) -> None:
    """With the destination down the outbox backs off; once it is up all arrive, none twice."""
    port = free_port()
    dest = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=port)
    outbox = Deliverer(
        Outbox(tmp_path / "journal.sqlite"),
        {"archive": dest},
        StoreSender("PACSAI"),
        SendBackoff(base_s=30),
    )
    files = write_series(ct_series(6), tmp_path / "ct")
    for path in files:
        outbox.queue.enqueue("archive", path, item(path).sop_instance_uid, "job-9", now=T0)

    down = outbox.deliver_due(now=T0)
    assert down.retrying == {"archive": 6} and down.total_sent == 0
    assert all("cannot connect" in (e.last_error or "") for e in outbox.queue.entries())

    with storescp_on(port, tmp_path / "archive") as folder:
        assert outbox.deliver_due(now=T0 + 10).total_sent == 0  # still backing off
        assert outbox.deliver_due(now=T0 + 30).sent == {"archive": 6}
        assert outbox.deliver_due(now=T0 + 10_000).total_sent == 0
    received = [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.iterdir()]
    assert sorted(received) == sorted(item(p).sop_instance_uid for p in files)
    assert outbox.queue.counts("job-9") == {"sent": 6}


def test_orthanc_refusing_the_calling_ae(tmp_path: Path) -> None:
    """Orthanc refusing an unknown AE ends in dead-letter; resubmit delivers once it is known.

    Orthanc refuses an unknown calling AE by aborting at the first C-STORE (not by rejecting the
    association), which reads as transient: the outbox retries and gives up after max_attempts.
    """
    config = {"DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True, "DicomModalities": {}}
    with run_orthanc(tmp_path / "orthanc", **config) as server:
        dest = Destination(ae_title=server.aet, host="127.0.0.1", port=server.dicom_port)
        outbox = Deliverer(
            Outbox(tmp_path / "journal.sqlite"),
            {"pacs": dest},
            StoreSender("PACSAI"),
            SendBackoff(base_s=5, max_attempts=2),
        )
        files = write_series(ct_series(3), tmp_path / "ct")
        for path in files:
            outbox.queue.enqueue("pacs", path, item(path).sop_instance_uid, "job-3", now=T0)
        assert outbox.deliver_due(now=T0).retrying == {"pacs": 3}
        assert outbox.deliver_due(now=T0 + 5).dead == {"pacs": 3}
        assert server.instance_count() == 0

        modality = {"AET": "PACSAI", "Host": "127.0.0.1", "Port": free_port()}
        server.client.put("/modalities/pacsai", json=modality).raise_for_status()
        assert outbox.queue.resubmit(outbox.queue.dead_letters(job_id="job-3"), now=T0 + 60) == 3
        assert outbox.deliver_due(now=T0 + 60).sent == {"pacs": 3}
        assert server.instance_count() == 3


@contextmanager
def busy_cores(count: int, seconds: float) -> Iterator[None]:
    """Keep ``count`` other processes spinning (bounded in time) so thread scheduling is uneven."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_every_response_reaches_its_c_store_under_load(tmp_path: Path, orthanc: Orthanc) -> None:
    """On a loaded machine, every C-STORE on one association gets its own response: pynetdicom's
    reactor must not take a response off the queue before send_c_store reads it (if it did, that
    store would wait out the DIMSE timeout and the rest of the association would fail)."""
    files = write_series(ct_series(120, rows=256, cols=256), tmp_path / "ct")
    items = [item(p) for p in files]
    dest = Destination(
        ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, max_associations=1
    )
    sender = StoreSender("PACSAI", SendTimeouts(dimse_s=3.0))
    with busy_cores(3, seconds=60):
        for _ in range(6):
            outcomes = sender.send(dest, items)
            assert [str(o.error) for o in outcomes if not o.confirmed] == []
