"""The kill trial of the distributed mode, shared by its test and its benchmark
(``bench/kill_trials.py``): HAProxy in front of two receive hosts, two work hosts, Orthanc as
the PACS. Four chest CRs go in; work host 1 is killed (-9, its whole process tree) once it holds
jobs whose model calls are in flight; a CT series is cut by killing the receive host that holds
its association between two instances, the modality sends the series again, and the killed
receiver comes back (a reboot). The outcome counts what must hold: every acknowledged instance
in the shared spool, every job completed once, each result in Orthanc once, no send left."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory import ct_series, write_series
from peers import Orthanc, run_gateway, send_with_storescu, wait_for
from pydicom import dcmread
from pynetdicom import AE
from s3peer import SeaweedS3, object_bytes
from scaleout import Cluster, chest_studies, pacs_env, receiver_args, result_count, run_cluster

from listener.settings import load_settings
from listener.store.jobs import JobState, JobStore
from listener.store.journal import Journal
from listener.store.outbox import EntryState, Outbox

CT_SLICES = 40
CR_STUDIES = 4
CT_RESULTS, CR_RESULTS = 2, 2  # SEG + SR; report SR + classification SR (no box on these CRs)
SENT_BEFORE_KILL = 10


@dataclass(frozen=True)
class TrialOutcome:
    """What a kill trial left behind."""

    acknowledged: int  # instances the journal holds (each was answered Success)
    in_shared_spool: int  # of those, how many are in the bucket (or the shared folder)
    results_expected: int
    results_in_pacs: int  # result instances Orthanc holds for the studies
    jobs: int
    jobs_not_completed: int
    duplicate_jobs: int  # jobs for the same study, generation and task
    sends_not_sent: int  # outbox entries to the PACS still pending or dead
    distinct_results_sent: int
    worker_recovered: bool  # another host's sweeper released the killed worker's work


def _unsent(outbox: Outbox) -> int:
    return sum(e.state is not EntryState.SENT for e in outbox.entries(destination="pacs"))


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


def run_kill_trial(
    workdir: Path,
    pacs: Orthanc,
    backend_env: dict[str, str],
    database: dict[str, Any],
    bucket: tuple[SeaweedS3, str] | None,
) -> TrialOutcome:
    """One kill trial in ``workdir`` (see the module docstring); ``backend_env`` and
    ``database`` put the journal and the spool where the trial runs, ``bucket`` is the S3
    service and spool URL when the spool is there."""
    ct = write_series(ct_series(CT_SLICES, body_part="CHEST", uid_seed="trial-ct"), workdir / "ct")
    crs, cr_uids = chest_studies(workdir, "trial-cr", CR_STUDIES)
    ct_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    env = {
        **pacs_env(pacs),
        # Long enough for the cut series to be sent again inside the study's quiet period (a
        # resend after it opens a follow-up generation, by design, with results of its own).
        "PACSAI_QUIET_PERIOD_S": "10",
        "PACSAI_EXECUTOR_TIMEOUT_S": "3",
        "PACSAI_JOB_LEASE_S": "600",  # recovery must come from the sweeper, not the lease
        "PACSAI_EMULATOR__LATENCY_MS": "1500",
        **backend_env,
    }
    expected = CT_RESULTS + CR_RESULTS * CR_STUDIES
    with run_cluster(workdir, env) as cluster:
        settings = load_settings(None, data_dir=cluster.receivers[0].data_dir, **database)
        jobs = JobStore(settings.journal_database)
        for path in crs:
            send_with_storescu(cluster.port, [path])
        wait_for(
            "worker 1 holding jobs in flight",
            lambda: any((j.lease_owner or "").startswith("work-1:") for j in jobs.list_jobs()),
            timeout=120,
        )
        cluster.workers[0].kill_hard()
        killed = _send_then_kill_its_receiver(cluster, ct)
        time.sleep(0.5)
        send_with_storescu(cluster.port, ct)  # the modality sends the cut series again
        with run_gateway(
            cluster.receivers[killed].data_dir,
            *receiver_args(killed + 1),
            port=cluster.receivers[killed].port,
            log_name=f"receive-{killed + 1}-again.log",
            env=cluster.env,
        ):
            wait_for(
                "every study's results in Orthanc",
                lambda: sum(result_count(pacs, uid) for uid in [ct_uid, *cr_uids]) >= expected,
                timeout=240,
            )
            journal = Journal(settings.journal_database)
            acknowledged = [i.path for uid in [ct_uid, *cr_uids] for i in journal.instances(uid)]

            def stored() -> int:
                if bucket is None:
                    return sum((settings.spool_dir / p).is_file() for p in acknowledged)
                server, url = bucket
                return sum(object_bytes(server, url, p) is not None for p in acknowledged)

            wait_for("acknowledged instances stored", lambda: stored() == len(acknowledged), 60)
            in_spool = stored()
            outbox = Outbox(settings.journal_database)
            deadline = time.monotonic() + 60  # a released claim is sent again (same UID)
            while _unsent(outbox) and time.monotonic() < deadline:
                time.sleep(0.5)
        silent = [e for w in cluster.workers[1:] for e in w.events("executor_silent")]
    done = jobs.list_jobs()
    keys = [(j.study_uid, j.generation, j.task) for j in done]
    sent = outbox.entries(destination="pacs")
    return TrialOutcome(
        acknowledged=len(acknowledged),
        in_shared_spool=in_spool,
        results_expected=expected,
        results_in_pacs=sum(result_count(pacs, uid) for uid in [ct_uid, *cr_uids]),
        jobs=len(done),
        jobs_not_completed=sum(j.state is not JobState.COMPLETED for j in done),
        duplicate_jobs=len(keys) - len(set(keys)),
        sends_not_sent=_unsent(outbox),
        distinct_results_sent=len({e.sop_instance_uid for e in sent}),
        worker_recovered=any(str(e["owner"]).startswith("work-1:") for e in silent),
    )
