"""One retry path for the CLI and the admin API: a canceled job becomes a new job that
references it, and every kind of dead-lettered send that belongs to it goes back to the queue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from listener.store.jobs import JobState, JobStore
from listener.store.outbox import Outbox, Outcome
from listener.store.retry import retry_job

STUDY = "1.2.3"
CLI = [sys.executable, "-m", "listener.cli"]


def _setup(tmp_path: Path) -> tuple[JobStore, Outbox, int]:
    path = tmp_path / "var" / "journal.sqlite"
    jobs, outbox = JobStore(path), Outbox(path)
    job_id = jobs.schedule(
        job_key="k",
        study_uid=STUDY,
        generation=0,
        rule="r",
        task="classify",
        payload={"model": "medimageinsight"},
        priority=0,
        now=0,
    )
    keys = [
        str(job_id),
        f"route:{job_id}",
        f"ood:{job_id}",
        f"forward:{STUDY}:0:archive-rule",
        f"forward:{STUDY}:1:archive-rule",  # a later generation: not this job's
        "forward:9.9.9:0:archive-rule",  # another study
        str(job_id + 100),
    ]
    for n, key in enumerate(keys):
        outbox.enqueue("pacs", tmp_path / f"{n}.dcm", f"1.2.3.{n}", key, now=0)
    entries = outbox.claim(1, batch_size=100, lease_s=10)["pacs"]
    outbox.record([Outcome(e, "dead", 1, error="refused") for e in entries], now=1)
    job = jobs.claim("w", now=2, lease_s=10)
    assert job is not None and job.lease is not None
    jobs.fail(job.lease, "401 key rejected", 3, retry_at=None)
    return jobs, outbox, job_id


def test_retry_reruns_the_job_and_resubmits_all_four_kinds_of_its_sends(tmp_path: Path) -> None:
    """Results, route:, ood: and the study generation's forward: dead letters are resubmitted;
    those of another generation, study or job are not; the new job references the old."""
    jobs, outbox, job_id = _setup(tmp_path)
    outcome = retry_job(jobs, outbox, job_id, now=10)
    assert outcome is not None and outcome.done and outcome.resubmitted == 4
    assert outcome.new_job_id is not None
    new = jobs.get(outcome.new_job_id)
    assert new is not None and new.retry_of == job_id and new.state is JobState.SCHEDULED
    still_dead = sorted(e.job_id for e in outbox.dead_letters())
    assert still_dead == sorted(
        [f"forward:{STUDY}:1:archive-rule", "forward:9.9.9:0:archive-rule", str(job_id + 100)]
    )
    again = retry_job(jobs, outbox, job_id, now=11)
    assert again is not None and again.new_job_id == outcome.new_job_id
    assert again.resubmitted == 0
    assert retry_job(jobs, outbox, 999, now=12) is None


def test_the_cli_retries_through_the_same_path(tmp_path: Path) -> None:
    """`pacs-ai jobs retry` reports the new job and the resubmitted sends."""
    _jobs, _outbox, job_id = _setup(tmp_path)
    result = subprocess.run(
        [*CLI, "jobs", "retry", str(job_id), "--data-dir", str(tmp_path / "var")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = f"job {job_id}: retried as job {job_id + 1}; sends resubmitted: 4"
    assert expected in result.stdout.splitlines()
