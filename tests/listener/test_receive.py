"""The receiver over real loopback associations: admission, statuses, quarantine."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from factory import ct_series
from peers import free_port, run_receiver
from pydicom import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from listener.receive.admission import REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_LIMIT, admission
from listener.receive.scp import Receiver
from listener.receive.server import start_server
from listener.receive.status import StoreStatus
from listener.settings import AllowedCaller, Settings, load_settings
from listener.store.journal import Journal
from listener.store.spool import Spool

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("receive_engine")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Settings, Journal, Spool]]:
    """A receiver on a free loopback port with a tmp data dir, allowing calling AE MODALITY."""
    with run_receiver(tmp_path, allowed_callers=[{"ae_title": "MODALITY"}]) as served:
        yield served


def _associate(settings: Settings, calling: str = "MODALITY") -> object:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", settings.port, ae_title="PACSAI")


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _send_raw(assoc: object, context_class: str, command_class: str, sop: str, data: bytes) -> int:
    """Send a C-STORE whose command and bytes we choose, on the context for context_class."""
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == context_class)  # type: ignore[attr-defined]
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = command_class
    request.AffectedSOPInstanceUID = sop
    request.Priority = 2
    request.DataSet = BytesIO(data)
    # Pause the requestor's reactor while we wait, as pynetdicom's own send_c_*() do, so that it
    # does not take the response off the queue first.
    assoc._reactor_checkpoint.clear()  # type: ignore[attr-defined]
    while not assoc._is_paused:  # type: ignore[attr-defined]
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)  # type: ignore[attr-defined]
        _, response = assoc.dimse.get_msg(block=True)  # type: ignore[attr-defined]
    finally:
        assoc._reactor_checkpoint.set()  # type: ignore[attr-defined]
    return int(response.Status)


def _truncated() -> tuple[str, str, str, bytes]:
    ds = ct_series(1)[0]
    data = _encoded(ds)
    return CTImageStorage, CTImageStorage, ds.SOPInstanceUID, data[: len(data) - 100]


def _without_sop_instance() -> tuple[str, str, str, bytes]:
    ds = ct_series(1)[0]
    sop = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    return CTImageStorage, CTImageStorage, sop, _encoded(ds)


def _dataset_of_other_class() -> tuple[str, str, str, bytes]:
    ds = ct_series(1)[0]
    ds.SOPClassUID = MRImageStorage
    return CTImageStorage, CTImageStorage, ds.SOPInstanceUID, _encoded(ds)


def _command_of_other_class() -> tuple[str, str, str, bytes]:
    ds = ct_series(1)[0]
    return CTImageStorage, MRImageStorage, ds.SOPInstanceUID, _encoded(ds)


FAILURES = [
    ("truncated dataset", _truncated, StoreStatus.CANNOT_UNDERSTAND),
    ("no SOP Instance UID", _without_sop_instance, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("dataset SOP class", _dataset_of_other_class, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("command SOP class", _command_of_other_class, StoreStatus.SOP_CLASS_NOT_SUPPORTED),
]


@pytest.mark.parametrize(("case", "make", "expected"), FAILURES, ids=[f[0] for f in FAILURES])
def test_bad_input_gets_its_status_and_is_quarantined(
    gateway: tuple[Settings, Journal, Spool], case: str, make: object, expected: StoreStatus
) -> None:
    """Each kind of bad C-STORE maps to its named status, leaves a reason file, stores nothing."""
    settings, journal, spool = gateway
    context_class, command_class, sop, data = make()  # type: ignore[operator]
    assoc = _associate(settings)
    assert assoc.is_established  # type: ignore[attr-defined]
    assert _send_raw(assoc, context_class, command_class, sop, data) == expected
    assoc.release()  # type: ignore[attr-defined]
    (reason_file,) = spool.quarantine_dir.glob("*.json")
    reason = json.loads(reason_file.read_text())
    assert reason["status"] == expected.name
    assert reason["calling_ae"] == "MODALITY" and reason["reason"]
    assert "PatientName" not in reason_file.read_text()
    assert spool.files() == [] and journal.studies() == []
    # The next association is served normally.
    good = ct_series(1)[0]
    assoc = _associate(settings)
    assert assoc.send_c_store(good).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert len(spool.files()) == 1


def test_duplicate_is_acknowledged_and_stored_once(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """Sending the same instance twice answers Success both times and keeps one file."""
    settings, journal, spool = gateway
    ds = ct_series(1)[0]
    assoc = _associate(settings)
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert len(spool.files()) == 1
    (record,) = [a for a in journal.associations() if a["stored"] == 1]
    assert (record["received"], record["duplicates"], record["ended"]) == (2, 1, "released")


def test_unknown_calling_ae_is_rejected(gateway: tuple[Settings, Journal, Spool]) -> None:
    """A calling AE not on the allow-list gets A-ASSOCIATE-RJ, calling AE not recognized, and
    the refusal is in the association log."""
    settings, journal, _ = gateway
    assoc = _associate(settings, calling="INTRUDER")
    assert assoc.is_rejected  # type: ignore[attr-defined]
    rejection = assoc.acceptor.primitive  # type: ignore[attr-defined]
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == REJECT_CALLING_AE
    (logged,) = journal.associations()
    assert (logged["calling_ae"], logged["ended"], logged["stored"]) == ("INTRUDER", "rejected", 0)


def test_storage_full_refuses_with_out_of_resources(tmp_path: Path) -> None:
    """Under the free-space watermark a C-STORE is refused with Out of Resources."""
    settings = load_settings(
        None, host="127.0.0.1", port=free_port(), data_dir=tmp_path, disk_min_free_mb=10**9
    )
    spool = Spool(settings.spool_dir, settings.quarantine_dir, min_free_mb=10**9)
    journal = Journal(settings.journal_path)
    server = start_server(settings, Receiver(settings, spool, journal))
    try:
        assoc = _associate(settings)
        status = assoc.send_c_store(ct_series(1)[0])  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    finally:
        server.shutdown()
    assert status.Status == StoreStatus.OUT_OF_RESOURCES
    assert spool.files() == []


ADMISSION = [
    ("any caller, our title", "X", "PACSAI", "10.0.0.1", [], 1, None),
    ("wrong called AE", "X", "OTHER", "10.0.0.1", [], 1, REJECT_CALLED_AE),
    ("caller not listed", "X", "PACSAI", "10.0.0.1", [("MOD", None)], 1, REJECT_CALLING_AE),
    ("caller from its net", "MOD", "PACSAI", "10.0.0.7", [("MOD", "10.0.0.0/24")], 1, None),
    (
        "caller elsewhere",
        "MOD",
        "PACSAI",
        "10.1.0.7",
        [("MOD", "10.0.0.0/24")],
        1,
        REJECT_CALLING_AE,
    ),
    ("over the limit", "X", "PACSAI", "10.0.0.1", [], 3, REJECT_LIMIT),
]


@pytest.mark.parametrize(
    ("case", "calling", "called", "host", "allowed", "active", "expected"),
    ADMISSION,
    ids=[a[0] for a in ADMISSION],
)
def test_admission_table(
    case: str,
    calling: str,
    called: str,
    host: str,
    allowed: list[tuple[str, str | None]],
    active: int,
    expected: tuple[int, int, int] | None,
) -> None:
    """admission() maps each situation to the PS3.8 rejection (result, source, reason)."""
    decision = admission(
        calling_ae=calling,
        called_ae=called,
        peer_host=host,
        ae_titles=["PACSAI"],
        allowed=[AllowedCaller(ae_title=t, host=h) for t, h in allowed],
        active=active,
        limit=2,
    )
    got = None if decision is None else (decision.result, decision.source, decision.reason)
    assert got == expected
    assert decision is None or decision.why
