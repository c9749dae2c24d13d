"""A host dies and nothing is lost or doubled: HAProxy in front of two receive hosts, two work
hosts, Orthanc as the PACS. One work host is killed (-9, its whole process tree) while it holds
jobs whose model calls are in flight; one receive host is killed between two instances of an
association. Every acknowledged instance is in the shared spool (S3, or the local folder on the
embedded backends), every study completes, no result is doubled in Orthanc and no job is left
waiting once the sweeper has run."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from factory import chest_radiograph, ct_series, write_series
from peers import Orthanc, nodelay_env, run_gateway, run_orthanc, wait_for
from pgserver import PostgresServer, database_setting
from pydicom import dcmread
from pynetdicom import AE
from s3peer import SeaweedS3, object_bytes
from scaleout import Cluster, receiver_args, run_cluster

from listener.settings import Settings, load_settings
from listener.store.jobs import JobState, JobStore
from listener.store.journal import Journal
from listener.store.outbox import EntryState, Outbox

pytestmark = pytest.mark.integration

CT_SLICES = 40
CR_STUDIES = 4
CT_RESULTS, CR_RESULTS = 2, 2  # as in test_scaleout: SEG + SR; report SR + classification SR
SENT_BEFORE_KILL = 10


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS the results go to."""
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        yield orthanc


def _result_count(pacs: Orthanc, study_uid: str) -> int:
    studies = pacs.find("Study", {"StudyInstanceUID": study_uid})
    if not studies:
        return 0
    return len(pacs.get(f"/studies/{studies[0]['ID']}/instances"))


def _storescu(port: int, paths: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        check=True,
        env=nodelay_env(),
        timeout=120,
    )


def _send_then_kill_its_receiver(cluster: Cluster, paths: list[Path]) -> int:
    """Send the first instances of ``paths`` over one association through HAProxy, then kill
    the receive host that holds it (between two instances); return that host's index."""
    ae = AE(ae_title="KILLTEST")
    ae.add_requested_context(str(dcmread(paths[0], stop_before_pixels=True).SOPClassUID))
    assoc = ae.associate("127.0.0.1", cluster.port, ae_title="PACSAI")
    assert assoc.is_established
    for path in paths[:SENT_BEFORE_KILL]:
        status = assoc.send_c_store(dcmread(path))
        assert status is not None and status.Status == 0x0000
    (index,) = [
        i
        for i, r in enumerate(cluster.receivers)
        if any(e.get("calling_ae") == "KILLTEST" for e in r.events("association_accepted"))
    ]
    cluster.receivers[index].kill_hard()
    assoc.abort()
    return index


def _backend_env(
    backend: str, request: pytest.FixtureRequest, prefix: str
) -> tuple[dict[str, str], SeaweedS3 | None, dict[str, str]]:
    if backend == "sqlite+folder":
        return {}, None, {}
    postgres: PostgresServer = request.getfixturevalue("postgres")
    seaweedfs: SeaweedS3 = request.getfixturevalue("seaweedfs")
    database = database_setting(postgres.new_database())
    env = {f"PACSAI_{k.upper()}": v for k, v in database.items()} | seaweedfs.env(prefix)
    return env, seaweedfs, database


@pytest.mark.parametrize("backend", ["sqlite+folder", "postgresql+s3"])
def test_a_dead_worker_and_a_dead_receiver_lose_and_double_nothing(
    tmp_path: Path, pacs: Orthanc, request: pytest.FixtureRequest, backend: str
) -> None:
    """Worker 1 is killed while its model calls hang in flight, a receiver between two
    instances; the modality sends the cut series again and the killed receiver comes back (a
    reboot). Every instance the journal acknowledged is in the shared spool, every study's
    jobs complete once, Orthanc holds each result once, and no job waits after the sweep."""
    prefix = uuid.uuid4().hex
    backend_env, seaweedfs, database = _backend_env(backend, request, prefix)
    ct = write_series(
        ct_series(CT_SLICES, body_part="CHEST", uid_seed="recovery-ct"), tmp_path / "ct"
    )
    crs = [
        write_series([chest_radiograph(f"recovery-cr-{i}")], tmp_path / f"cr{i}")[0]
        for i in range(CR_STUDIES)
    ]
    ct_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    cr_uids = [str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in crs]
    env = {
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": pacs.aet,
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(pacs.dicom_port),
        "PACSAI_QUIET_PERIOD_S": "2",
        "PACSAI_EXECUTOR_TIMEOUT_S": "3",
        "PACSAI_JOB_LEASE_S": "600",  # recovery must come from the sweeper, not the lease
        "PACSAI_EMULATOR__LATENCY_MS": "1500",
        **backend_env,
    }
    settings: Settings
    with run_cluster(tmp_path, env) as cluster:
        settings = load_settings(None, data_dir=cluster.receivers[0].data_dir, **database)
        jobs = JobStore(settings.journal_database)
        for path in crs:
            _storescu(cluster.port, [path])
        wait_for(
            "worker 1 holding jobs in flight",
            lambda: any((j.lease_owner or "").startswith("work-1:") for j in jobs.list_jobs()),
            timeout=120,
        )
        cluster.workers[0].kill_hard()
        killed = _send_then_kill_its_receiver(cluster, ct)
        time.sleep(0.5)
        _storescu(cluster.port, ct)  # the modality sends the cut series again
        with run_gateway(
            cluster.receivers[killed].data_dir,
            *receiver_args(killed + 1),
            port=cluster.receivers[killed].port,
            log_name=f"receive-{killed + 1}-again.log",
            env=cluster.env,
        ):
            wait_for(
                "every study's results in Orthanc",
                lambda: (
                    _result_count(pacs, ct_uid) >= CT_RESULTS
                    and all(_result_count(pacs, uid) >= CR_RESULTS for uid in cr_uids)
                ),
                timeout=240,
            )
            journal = Journal(settings.journal_database)
            acknowledged = [i.path for i in journal.instances(ct_uid)]
            acknowledged += [i.path for uid in cr_uids for i in journal.instances(uid)]
            if seaweedfs is not None:
                url = seaweedfs.spool_url(prefix)
                wait_for(
                    "every acknowledged instance in the bucket",
                    lambda: all(object_bytes(seaweedfs, url, p) for p in acknowledged),
                    timeout=60,
                )
            else:
                assert all((settings.spool_dir / p).is_file() for p in acknowledged)
        silent = [e for w in cluster.workers[1:] for e in w.events("executor_silent")]
    assert len(acknowledged) == CT_SLICES + CR_STUDIES
    assert any(str(e["owner"]).startswith("work-1:") for e in silent)
    assert _result_count(pacs, ct_uid) == CT_RESULTS
    assert all(_result_count(pacs, uid) == CR_RESULTS for uid in cr_uids)
    done = jobs.list_jobs()
    assert {j.state for j in done} == {JobState.COMPLETED}
    keys = [(j.study_uid, j.generation, j.task) for j in done]
    assert len(keys) == len(set(keys))
    sent = Outbox(settings.journal_database).entries(destination="pacs")
    assert {e.state for e in sent} == {EntryState.SENT}, [
        (e.sop_instance_uid, e.job_id, e.state, e.attempts, e.next_attempt_at, e.last_error)
        for e in sent
        if e.state != EntryState.SENT
    ] + [(e.sop_instance_uid, e.job_id, e.attempts) for e in sent]
    assert len({e.sop_instance_uid for e in sent}) == CT_RESULTS + CR_RESULTS * CR_STUDIES
