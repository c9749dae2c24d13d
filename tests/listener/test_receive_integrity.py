"""One SOP Instance UID, one file; refused instances get a status, a quarantine entry and a record.

Real senders over loopback: two DCMTK storescu processes racing each other, and a requestor
written with sockets (:mod:`rawdicom`) for the UIDs and PDUs that well-behaved toolkits refuse
to send.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rawdicom
from factory import ct_series, write_series
from peers import nodelay_env, run_receiver
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from listener.receive.status import StoreStatus
from listener.settings import Settings
from listener.store.journal import Journal
from listener.store.spool import Spool, is_uid

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("receive_engine")

ROUNDS = 40


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    (meta_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + meta_length :]


def _storescu(port: int, aet: str, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["storescu", "-aet", aet, "-aec", "PACSAI", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=nodelay_env(),
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Settings, Journal, Spool]]:
    """A receiver on a free loopback port with default settings."""
    with run_receiver(tmp_path / "data") as served:
        yield served


def test_same_uid_from_two_associations_at_once_stores_one_file(
    gateway: tuple[Settings, Journal, Spool], tmp_path: Path
) -> None:
    """Two associations send the same 40 SOP Instance UIDs with different content at once: one
    file per UID with the bytes of the sender the journal credits, the journal's size and
    digest those of the file, the other content in the quarantine as a journaled conflict."""
    settings, journal, spool = gateway
    series = ct_series(ROUNDS, rows=128, cols=128)
    first = write_series(series, tmp_path / "first")
    for ds in series:
        ds.PixelData = bytes(len(ds.PixelData))  # same UIDs, other content
        ds.SeriesDescription = "Other content"
    second = write_series(series, tmp_path / "second")
    senders = [
        _storescu(settings.port, "SENDER1", first),
        _storescu(settings.port, "SENDER2", second),
    ]
    for sender in senders:
        output, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, output  # both answered Success (the default)
    sent = {"SENDER1": first, "SENDER2": second}
    by_association = {str(a["id"]): str(a["calling_ae"]) for a in journal.associations()}
    conflicts = {c.sop_instance_uid: c for c in journal.conflicts()}
    for index, ds in enumerate(series):
        uid = ds.SOPInstanceUID
        files = list(spool.root.glob(f"*/*/{uid}.dcm"))
        assert len(files) == 1, uid
        stored = files[0]
        record = journal.instance(uid)
        assert record is not None and record.association_id is not None
        assert record.size == stored.stat().st_size
        assert record.digest == hashlib.sha256(stored.read_bytes()).hexdigest()
        winner = by_association[record.association_id]
        loser = "SENDER2" if winner == "SENDER1" else "SENDER1"
        assert _dataset_bytes(stored) == _dataset_bytes(sent[winner][index])
        conflict = conflicts[uid]
        assert by_association[str(conflict.association_id)] == loser
        assert conflict.stored_digest == record.digest
        kept = spool.quarantine_dir / conflict.quarantine_file
        assert _dataset_bytes(kept) == _dataset_bytes(sent[loser][index])
        reason = json.loads(kept.with_suffix(".json").read_text())
        assert reason["kind"] == "conflict" and reason["command_sop_instance"] == uid
    assert len(conflicts) == ROUNDS


def test_conflict_is_answered_with_a_warning_when_set(tmp_path: Path) -> None:
    """With duplicate_conflict: warning, other content for a stored UID gets Elements Discarded
    and the stored file is untouched; the same content again is plain Success."""
    with run_receiver(tmp_path / "data", duplicate_conflict="warning") as (
        settings,
        journal,
        spool,
    ):
        ds = ct_series(1)[0]
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", settings.port, ae_title="PACSAI")
        assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
        (stored,) = spool.root.glob("*/*/*.dcm")
        before = stored.read_bytes()
        assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
        ds.PixelData = bytes(len(ds.PixelData))
        status = assoc.send_c_store(ds).Status
        assoc.release()
        assert status == StoreStatus.WARNING_ELEMENTS_DISCARDED
        assert stored.read_bytes() == before
        assert len(journal.conflicts()) == 1
        (record,) = journal.associations()
        assert (record["received"], record["stored"], record["duplicates"]) == (3, 1, 2)


UIDS = [
    ("65 characters", "1." + "2" * 63, False),
    ("64 characters", "1." + "2" * 62, True),
    ("leading zero", "1.02.3", False),
    ("trailing newline", "1.2.3\n", False),
    ("lone zero component", "1.0.3", True),
    ("empty component", "1..3", False),
    ("letters", "1.2.a", False),
]


@pytest.mark.parametrize(("case", "uid", "valid"), UIDS, ids=[u[0] for u in UIDS])
def test_uid_syntax_follows_ps3_5_9_1(case: str, uid: str, valid: bool) -> None:
    """is_uid accepts exactly the UIDs PS3.5 §9.1 allows."""
    assert is_uid(uid) is valid


MALFORMED = [
    ("SOP Instance UID of 65 characters", "1." + "2" * 63, "1.2.3.4"),
    ("SOP Instance UID with a leading zero", "1.02.3", "1.2.3.4"),
    ("Study Instance UID with a trailing newline", "1.2.3.99", "1.2.3\n"),
]


@pytest.mark.parametrize(("case", "sop", "study"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_uid_is_refused_with_a_status_and_quarantined(
    gateway: tuple[Settings, Journal, Spool], case: str, sop: str, study: str
) -> None:
    """A malformed UID gets a failure status (not an abort), a quarantine entry, a failed count
    on the association record, and names no file; the association goes on."""
    settings, journal, spool = gateway
    assoc = rawdicom.associate(settings.port, [(rawdicom.CT_IMAGE, [rawdicom.EXPLICIT_LE])])
    status = rawdicom.send_store(assoc, 1, sop, [rawdicom.header(sop, study=study)])
    good = ct_series(1)[0]
    good_status = rawdicom.send_store(
        assoc, 1, good.SOPInstanceUID, [rawdicom.header(good.SOPInstanceUID)]
    )
    assoc.release()
    assert status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert good_status == StoreStatus.SUCCESS
    (reason_file,) = spool.quarantine_dir.glob("*.json")
    reason = json.loads(reason_file.read_text())
    assert reason["status"] == "DATASET_DOES_NOT_MATCH_SOP_CLASS" and "UID" in reason["reason"]
    assert [Path(f).stem for f in spool.files()] == [good.SOPInstanceUID]
    record = _wait_for_end(journal)
    assert (record["received"], record["stored"], record["failed"]) == (2, 1, 1)


def test_pdu_over_the_announced_maximum_aborts_and_is_logged(tmp_path: Path) -> None:
    """With max_pdu_size 16384 a 1 MiB P-DATA-TF PDU gets an A-ABORT before it is read; the
    association record says aborted and why."""
    with run_receiver(tmp_path / "data", max_pdu_size=16384) as (settings, journal, _):
        assoc = rawdicom.associate(settings.port, [(rawdicom.CT_IMAGE, [rawdicom.EXPLICIT_LE])])
        sop = ct_series(1)[0].SOPInstanceUID
        data = rawdicom.header(sop) + bytes(1 << 20)
        # the gateway may abort as soon as it has read the length field: a broken pipe is fine
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            assoc.sock.sendall(rawdicom.p_data(1, 0x02, data))
        kind, _ = rawdicom.read_pdu(assoc.sock)
        assert kind == rawdicom.A_ABORT
        assert rawdicom.closed_by_peer(assoc.sock)
        record = _wait_for_end(journal)
    assert record["ended"] == "aborted"
    assert "over the limit of 16384" in str(record["error"])


def test_pdu_length_of_4_gib_before_association_is_refused(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """An A-ASSOCIATE-RQ whose length field says 4 GiB is aborted at once, and recorded."""
    settings, journal, _ = gateway
    with socket.create_connection(("127.0.0.1", settings.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF) + b"\0" * 64)
        kind, _ = rawdicom.read_pdu(sock)
        assert kind == rawdicom.A_ABORT
    record = _wait_for_end(journal)
    assert record["ended"] == "aborted" and "4294967295" in str(record["error"])


def _wait_for_end(journal: Journal) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = journal.associations()
        if records and records[0]["ended"]:
            return records[0]
        time.sleep(0.02)
    raise AssertionError("no ended association record")


def test_journal_of_an_older_release_gains_the_new_columns(tmp_path: Path) -> None:
    """A journal created before digests and abort reasons existed opens and records both."""
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT"
            " NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, modality TEXT,"
            " transfer_syntax TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,"
            " received_at REAL NOT NULL, generation INTEGER NOT NULL, association_id TEXT)"
        )
    journal = Journal(path)
    try:
        columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(instances)")}
        assert "digest" in columns
    finally:
        journal.close()
