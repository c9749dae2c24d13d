"""The durable outbox against a real pynetdicom SCP on a loopback port (a fake PACS).

The fake PACS records, per association, which SOP instances it was sent, and answers with a
status chosen by the test, so these tests see exactly what went over the wire.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from factory import ct_series, rgb_secondary_capture, write_series
from peers import free_port
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from listener.receive.status import StoreStatus
from listener.route import Destination
from listener.send.deliver import Deliverer, SendBackoff
from listener.send.scu import StoreSender
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.outbox import EntryState, Outbox

T0 = 1_000_000.0  # an arbitrary "now"; time is a parameter, nothing sleeps


@dataclass
class FakePacs:
    """A pynetdicom storage SCP whose answers a test decides, recording what it receives."""

    ae: Any
    port: int
    policy: Callable[[int, int], int]
    received: list[list[str]] = field(default_factory=list)  # per association, SOP UIDs
    lock: threading.Lock = field(default_factory=threading.Lock)
    _assoc_index: dict[int, int] = field(default_factory=dict)

    def handle_store(self, event: Any) -> int:
        with self.lock:
            index = self._assoc_index.setdefault(id(event.assoc), len(self._assoc_index))
            while len(self.received) <= index:
                self.received.append([])
            self.received[index].append(str(event.request.AffectedSOPInstanceUID))
            position = len(self.received[index]) - 1
        return int(self.policy(index, position))

    def all_received(self) -> list[str]:
        return [uid for association in self.received for uid in association]

    def destination(self, **extra: Any) -> Destination:
        return Destination(ae_title="FAKEPACS", host="127.0.0.1", port=self.port, **extra)


@pytest.fixture
def fake_pacs() -> Iterator[Callable[..., FakePacs]]:
    """Start fake PACS servers on free loopback ports; shut them all down afterwards."""
    servers: list[Any] = []

    def start(
        policy: Callable[[int, int], int] = lambda a, i: StoreStatus.SUCCESS,
        contexts: Any = AllStoragePresentationContexts,
    ) -> FakePacs:
        ae = AE(ae_title="FAKEPACS")
        ae.supported_contexts = contexts
        pacs = FakePacs(ae=ae, port=0, policy=policy)
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, pacs.handle_store)]
        )
        servers.append(server)
        pacs.port = server.server_address[1]
        return pacs

    yield start
    for server in servers:
        server.shutdown()


def series_files(tmp_path: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` CT slices written to disk, with their SOP Instance UIDs."""
    datasets = ct_series(n)
    paths = write_series(datasets, tmp_path / "series")
    return [(p, str(ds.SOPInstanceUID)) for p, ds in zip(paths, datasets, strict=True)]


def make_outbox(journal: JournalDb, dest: Destination, **backoff: Any) -> Deliverer:
    """A deliverer for one destination named ``pacs`` over a fresh journal."""
    return Deliverer(
        Outbox(journal, ["pacs"]),
        {"pacs": dest},
        StoreSender("PACSAI"),
        SendBackoff(base_s=10, factor=2, max_s=100, **backoff),
    )


def test_enqueue_is_idempotent(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """Queueing the same job and SOP instance twice keeps one entry; unknown names are refused."""
    outbox = make_outbox(journal_db, fake_pacs().destination())
    ((path, uid),) = series_files(tmp_path, 1)
    assert outbox.queue.enqueue("pacs", path, uid, 7, now=T0)
    assert not outbox.queue.enqueue("pacs", path, uid, 7, now=T0 + 1)
    assert outbox.queue.enqueue("pacs", path, uid, 8, now=T0)  # another job is another entry
    assert outbox.queue.counts() == {"pending": 2}
    with pytest.raises(ValueError, match="unknown destination"):
        outbox.queue.enqueue("nowhere", path, uid, 7, now=T0)


def test_delivers_and_never_resends(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """Due entries are sent once; later calls send nothing more."""
    pacs = fake_pacs()
    outbox = make_outbox(journal_db, pacs.destination())
    files = series_files(tmp_path, 5)
    for path, uid in files:
        outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)
    report = outbox.deliver_due(now=T0)
    assert report.sent == {"pacs": 5}
    assert outbox.deliver_due(now=T0 + 10_000).total_sent == 0
    assert sorted(pacs.all_received()) == sorted(uid for _, uid in files)
    assert outbox.queue.counts("job-1") == {"sent": 5}


def test_out_of_resources_resends_only_unconfirmed(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """Out of Resources (A700) is retried after the backoff, sending only unconfirmed instances."""

    def policy(association: int, position: int) -> StoreStatus:
        if association == 0 and position >= 3:
            return StoreStatus.OUT_OF_RESOURCES
        return StoreStatus.SUCCESS

    pacs = fake_pacs(policy)
    outbox = make_outbox(journal_db, pacs.destination(max_associations=1))
    files = series_files(tmp_path, 8)
    for path, uid in files:
        outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)

    first = outbox.deliver_due(now=T0)
    assert (first.sent, first.retrying) == ({"pacs": 3}, {"pacs": 5})
    pending = outbox.queue.entries(EntryState.PENDING)
    assert {e.next_attempt_at for e in pending} == {T0 + 10}
    assert all("out of resources" in (e.last_error or "") for e in pending)

    assert outbox.deliver_due(now=T0 + 5).total_sent == 0  # not due yet
    second = outbox.deliver_due(now=T0 + 10)
    assert second.sent == {"pacs": 5}
    assert pacs.received[1] == [e.sop_instance_uid for e in pending]
    assert sorted(pacs.received[0][:3] + pacs.received[1]) == sorted(uid for _, uid in files)


def test_backoff_grows_until_dead_letter(journal_db: JournalDb, tmp_path: Path) -> None:
    """A refused connection backs off 10, 20, 40 s and gives up after max_attempts."""
    dest = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    outbox = make_outbox(journal_db, dest, max_attempts=4)
    ((path, uid),) = series_files(tmp_path, 1)
    outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)
    now = T0
    for expected_delay in (10, 20, 40):
        assert outbox.deliver_due(now=now).retrying == {"pacs": 1}
        (entry,) = outbox.queue.entries(EntryState.PENDING)
        assert entry.next_attempt_at == now + expected_delay
        assert "cannot connect" in (entry.last_error or "")
        now = entry.next_attempt_at
    assert outbox.deliver_due(now=now).dead == {"pacs": 1}
    (dead,) = outbox.queue.dead_letters()
    assert dead.attempts == 4 and (dead.last_error or "").startswith("gave up after 4 attempts")


def test_rejected_calling_ae_is_dead_until_resubmitted(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """A permanent association rejection goes to dead-letter; resubmit delivers once fixed."""
    pacs = fake_pacs()
    pacs.ae.require_calling_aet = ["MODALITY1"]
    outbox = make_outbox(journal_db, pacs.destination())
    files = series_files(tmp_path, 3)
    for path, uid in files:
        outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)

    assert outbox.deliver_due(now=T0).dead == {"pacs": 3}
    dead = outbox.queue.dead_letters(job_id="job-1")
    assert len(dead) == 3
    assert all("Calling AE title not recognised" in (e.last_error or "") for e in dead)
    assert outbox.deliver_due(now=T0 + 10_000).total_sent == 0  # dead letters stay put

    pacs.ae.require_calling_aet = ["MODALITY1", "PACSAI"]  # the operator fixes the cause
    assert outbox.queue.resubmit(dead, now=T0 + 20_000) == 3
    assert outbox.deliver_due(now=T0 + 20_000).sent == {"pacs": 3}
    assert outbox.queue.counts() == {"sent": 3}
    assert pacs.all_received() == [uid for _, uid in files]


def test_unsupported_sop_class_is_permanent(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """An instance whose SOP class the peer refuses is dead-lettered; the others are delivered."""
    from pynetdicom import build_context

    pacs = fake_pacs(contexts=[build_context(CTImageStorage)])
    outbox = make_outbox(journal_db, pacs.destination())
    files = series_files(tmp_path, 2)
    sc = rgb_secondary_capture()
    sc_path = tmp_path / "sc.dcm"
    sc.save_as(sc_path, enforce_file_format=True)
    for path, uid in [*files, (sc_path, str(sc.SOPInstanceUID))]:
        outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)
    report = outbox.deliver_due(now=T0)
    assert (report.sent, report.dead) == ({"pacs": 2}, {"pacs": 1})
    (dead,) = outbox.queue.dead_letters()
    assert dead.sop_instance_uid == str(sc.SOPInstanceUID)
    assert "no accepted presentation context" in (dead.last_error or "")


def test_missing_file_and_removed_destination_are_dead(
    journal_db: JournalDb, tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> None:
    """A file gone from disk, or a destination no longer configured, is a dead letter."""
    pacs = fake_pacs()
    outbox = make_outbox(journal_db, pacs.destination())
    ((path, uid),) = series_files(tmp_path, 1)
    outbox.queue.enqueue("pacs", tmp_path / "gone.dcm", "1.2.3", "job-1", now=T0)
    outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)
    assert outbox.deliver_due(now=T0).dead == {"pacs": 1}
    reconfigured = Deliverer(Outbox(journal_db), {}, StoreSender("PACSAI"))
    (entry,) = outbox.queue.dead_letters()
    reconfigured.queue.resubmit([entry.id], now=T0)
    assert reconfigured.deliver_due(now=T0).dead == {"pacs": 1}
    assert "not configured" in (reconfigured.queue.dead_letters()[0].last_error or "")


# PS3.4 B.2.3 statuses that StoreStatus does not name (the receiver never returns them).
WARNING_COERCION = 0xB000
OUT_OF_RESOURCES_SPECIFIC = 0xA7FF

STATUS_TABLE: list[tuple[int, str]] = [
    (StoreStatus.SUCCESS, "sent"),
    (WARNING_COERCION, "sent"),
    (StoreStatus.OUT_OF_RESOURCES, "retrying"),
    (OUT_OF_RESOURCES_SPECIFIC, "retrying"),
    (StoreStatus.SOP_CLASS_NOT_SUPPORTED, "dead"),
    (StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "dead"),
    (StoreStatus.CANNOT_UNDERSTAND, "dead"),
    (StoreStatus.PROCESSING_FAILURE, "dead"),
]


@pytest.mark.parametrize(("status", "state"), STATUS_TABLE)
def test_each_store_status_is_classified(
    journal_db: JournalDb,
    tmp_path: Path,
    fake_pacs: Callable[..., FakePacs],
    status: int,
    state: str,
) -> None:
    """Success and warnings confirm, Out of Resources retries, other failures dead-letter."""
    pacs = fake_pacs(lambda association, position: status)
    outbox = make_outbox(journal_db, pacs.destination())
    ((path, uid),) = series_files(tmp_path, 1)
    outbox.queue.enqueue("pacs", path, uid, "job-1", now=T0)
    report = outbox.deliver_due(now=T0)
    assert {"sent": report.sent, "retrying": report.retrying, "dead": report.dead}[state] == {
        "pacs": 1
    }


def test_unreachable_destination_is_dead_after_the_default_age(tmp_path: Path) -> None:
    """With the default settings, a destination that stays unreachable for more than a day
    turns its entries into dead letters that say why, instead of retrying them forever."""
    from listener.pipeline import build_pipeline
    from listener.settings import load_settings

    port = free_port()  # nothing listens there
    settings = load_settings(
        None,
        data_dir=tmp_path / "var",
        destinations={"pacs": {"ae_title": "GONE", "host": "127.0.0.1", "port": port}},
    )
    pipeline = build_pipeline(settings)
    try:
        ((path, uid),) = series_files(tmp_path, 1)
        pipeline.outbox.enqueue("pacs", path, uid, 1, now=T0)
        assert pipeline.deliverer.deliver_due(T0).retrying == {"pacs": 1}
        assert pipeline.deliverer.deliver_due(T0 + 3600).retrying == {"pacs": 1}
        assert pipeline.deliverer.deliver_due(T0 + 86400 + 1).dead == {"pacs": 1}
        (dead,) = pipeline.outbox.dead_letters()
        assert dead.last_error is not None
        assert "cannot connect" in dead.last_error and "gave up after 3 attempts" in dead.last_error
    finally:
        pipeline.close()


def test_resubmitted_dead_letter_gets_a_fresh_age(journal_db: JournalDb, tmp_path: Path) -> None:
    """A resubmitted dead letter is tried again with its age counted from the resubmission, so
    one more transient failure does not kill it at once."""
    dest = Destination(ae_title="GONE", host="127.0.0.1", port=free_port())
    outbox = make_outbox(journal_db, dest, max_age_s=100)
    ((path, uid),) = series_files(tmp_path, 1)
    outbox.queue.enqueue("pacs", path, uid, 1, now=T0)
    assert outbox.deliver_due(T0 + 200).dead == {"pacs": 1}
    outbox.queue.resubmit(outbox.queue.dead_letters(), now=T0 + 1000)
    assert outbox.deliver_due(T0 + 1000).retrying == {"pacs": 1}


def test_building_a_sender_or_reading_the_outbox_leaves_pynetdicom_alone(
    journal_db: JournalDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pynetdicom's process-wide chunked-send switch is set by a sender process at start-up
    (enable_chunked_send), never as a side effect of building a sender or reading the table."""
    from pynetdicom import _config

    from listener.send.scu import enable_chunked_send

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    outbox = make_outbox(journal_db, Destination(ae_title="X", host="127.0.0.1", port=1))
    assert outbox.queue.entries() == []
    assert _config.STORE_SEND_CHUNKED_DATASET is False
    enable_chunked_send()
    assert _config.STORE_SEND_CHUNKED_DATASET is True
