"""The per-model concurrency limit holds across processes: two work hosts of two job runners
each, one model endpoint (the emulator, with a service time long enough for the calls to
overlap) with ``concurrency: 2`` for CXRReportGen, 1 for MedImageInsight and 3 for
MedImageParse. The endpoint never sees more requests of a model in flight than its limit, and
sees the limit reached (the slots are used), while ten chest CRs and two chest CTs go through.
Each job runner alone would send up to its own limit, so four of them could send four times as
many; and each CT's segmentation sends its frames in parallel requests, so two of them alone
would send twice MedImageParse's limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from factory import ct_series, write_series
from peers import Orthanc, run_orthanc, send_with_storescu, wait_for
from pgserver import database_setting
from pynetdicom import AE, AllStoragePresentationContexts, evt
from scaleout import chest_studies, pacs_env, result_count, run_cluster

from listener.emulator.server import start_emulator
from listener.receive.status import StoreStatus
from listener.settings import MODEL_NAMES, EmulatorSettings, load_settings
from listener.store.db import DatabaseTarget
from listener.store.jobs import JobState, JobStore

pytestmark = pytest.mark.integration

CR_STUDIES = 10
CR_RESULTS = 2  # a report SR and a classification SR (tests/integration/test_scaleout.py)
CT_SLICES = 12  # one frame per MedImageParse request (batch_size 1): 12 requests per CT
CT_RESULTS = 2  # a SEG and its SR
LIMITS = {"cxrreportgen": 2, "medimageinsight": 1, "medimageparse": 3}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS the results go to."""
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        yield orthanc


def test_model_concurrency_holds_across_work_processes(
    tmp_path: Path, pacs: Orthanc, journal_db: DatabaseTarget
) -> None:
    """On the embedded journal (SQLite) and on PostgreSQL: one code path."""
    emulator = start_emulator(EmulatorSettings(latency_ms=400))
    crs, cr_uids = chest_studies(tmp_path, "engine-cr", CR_STUDIES)
    cts = {
        f"1.2.826.0.1.3680043.8.498.78{index}": write_series(
            ct_series(
                CT_SLICES,
                body_part="CHEST",
                study_uid=f"1.2.826.0.1.3680043.8.498.78{index}",
                uid_seed=f"engine-ct-{index}",
            ),
            tmp_path / f"ct{index}",
        )
        for index in (1, 2)
    }
    env = {
        **pacs_env(pacs),
        "PACSAI_QUIET_PERIOD_S": "1",
        "PACSAI_JOB_RUNNERS": "2",
        "PACSAI_JOBS_PER_RUNNER": "4",
        **{
            f"PACSAI_MODELS__{name.upper()}__ENDPOINT": f"{emulator.url}/{name}/score"
            for name in MODEL_NAMES
        },
        **{
            f"PACSAI_MODELS__{name.upper()}__CONCURRENCY": str(limit)
            for name, limit in LIMITS.items()
        },
        "PACSAI_MODELS__MEDIMAGEPARSE__BATCH_SIZE": "1",
        **{f"PACSAI_{k.upper()}": v for k, v in database_setting(journal_db).items()},
    }
    try:
        with run_cluster(tmp_path, env) as cluster:
            for paths in cts.values():
                send_with_storescu(cluster.port, paths)
            for path in crs:
                send_with_storescu(cluster.port, [path])
            wait_for(
                "every study's results in Orthanc",
                lambda: (
                    all(result_count(pacs, uid) >= CR_RESULTS for uid in cr_uids)
                    and all(result_count(pacs, uid) >= CT_RESULTS for uid in cts)
                ),
                timeout=300,
            )
            settings = load_settings(
                None, data_dir=cluster.receivers[0].data_dir, **database_setting(journal_db)
            )
        stats: dict[str, Any] = httpx.get(f"{emulator.url}/_emulator/stats").json()
    finally:
        emulator.stop()
    assert stats["per_model"]["cxrreportgen"] == CR_STUDIES
    assert stats["per_model"]["medimageparse"] == len(cts) * CT_SLICES
    assert stats["max_in_flight_per_model"] == LIMITS
    store = JobStore(settings.journal_database)
    jobs = store.list_jobs()
    assert {j.state for j in jobs} == {JobState.COMPLETED}
    # the jobs ran on both work hosts (claims name their runner: "attempt 1 by work-1:PID")
    runners = {
        detail.split(" by ")[1].split(" ")[0]
        for job in jobs
        for _, state, detail in store.events(job.id)
        if state == JobState.IN_PROGRESS.value and detail and " by " in detail
    }
    assert {owner.split(":")[0] for owner in runners} == {"work-1", "work-2"}, runners
    assert all(result_count(pacs, uid) == CR_RESULTS for uid in cr_uids)
    assert all(result_count(pacs, uid) == CT_RESULTS for uid in cts)


@dataclass
class CountingPacs:
    """A storage SCP (pynetdicom) that takes its time over each instance and counts the
    associations open at once: the peer whose association limit the gateway must keep."""

    hold_s: float
    port: int = 0
    open_now: int = 0
    most_open: int = 0
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self, _event: Any) -> None:
        with self.lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)

    def closed(self, _event: Any) -> None:
        with self.lock:
            self.open_now -= 1

    def store(self, event: Any) -> int:
        time.sleep(self.hold_s)
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return StoreStatus.SUCCESS


@contextmanager
def counting_pacs(hold_s: float) -> Iterator[CountingPacs]:
    """A :class:`CountingPacs` on a free loopback port."""
    pacs = CountingPacs(hold_s)
    ae = AE(ae_title="COUNTING")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, pacs.opened),
            (evt.EVT_CONN_CLOSE, pacs.closed),
            (evt.EVT_C_STORE, pacs.store),
        ],
    )
    pacs.port = server.server_address[1]
    try:
        yield pacs
    finally:
        server.shutdown()


def test_a_destination_sees_its_association_limit_across_work_hosts(
    tmp_path: Path, journal_db: DatabaseTarget
) -> None:
    """With ``max_associations: 1`` the destination never has two associations from the
    gateway open at once, though two work hosts with two job runners each may send to it: one
    delivery run per destination at a time, on whichever host (a sender per process, each
    claiming its own share of the outbox, would open one each)."""
    crs, _uids = chest_studies(tmp_path, "assoc-cr", CR_STUDIES)
    with counting_pacs(hold_s=0.1) as pacs:
        env = {
            "PACSAI_DESTINATIONS__PACS__AE_TITLE": "COUNTING",
            "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
            "PACSAI_DESTINATIONS__PACS__PORT": str(pacs.port),
            "PACSAI_DESTINATIONS__PACS__MAX_ASSOCIATIONS": "1",
            "PACSAI_QUIET_PERIOD_S": "1",
            **{f"PACSAI_{k.upper()}": v for k, v in database_setting(journal_db).items()},
        }
        with run_cluster(tmp_path, env) as cluster:
            for path in crs:
                send_with_storescu(cluster.port, [path])
            wait_for(
                "every study's results at the destination",
                lambda: len(set(pacs.received)) >= CR_STUDIES * CR_RESULTS,
                timeout=300,
            )
            runs = sum(len(w.events("outbox_delivered")) for w in cluster.workers)
    assert runs > 1  # the results went in several delivery runs, never two at once
    assert pacs.most_open == 1
    assert len(pacs.received) == len(set(pacs.received)) == CR_STUDIES * CR_RESULTS
