"""Job table: UPS states, atomic claims, leases, priorities, retry and cancel."""

from __future__ import annotations

from pathlib import Path

from listener.store.jobs import JobState, JobStore


def _store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "journal.sqlite")


def _schedule(store: JobStore, key: str, *, priority: int = 0, now: float = 0.0) -> int:
    return store.schedule(
        job_key=key,
        study_uid="1.2.3",
        generation=0,
        rule="r",
        task=key,
        payload={"model": "cxrreportgen"},
        priority=priority,
        now=now,
        max_attempts=2,
    )


def test_schedule_is_idempotent(tmp_path: Path) -> None:
    """Scheduling the same job key twice yields one job."""
    store = _store(tmp_path)
    assert _schedule(store, "a") == _schedule(store, "a")
    assert len(store.list_jobs()) == 1


def test_claim_honours_priority_then_age(tmp_path: Path) -> None:
    """The highest priority job is claimed first, then the oldest."""
    store = _store(tmp_path)
    _schedule(store, "old-low", now=1)
    _schedule(store, "new-high", priority=5, now=2)
    _schedule(store, "newer-low", now=3)
    order = [store.claim("w", now=10, lease_s=60) for _ in range(3)]
    assert [job.task for job in order if job] == ["new-high", "old-low", "newer-low"]
    assert store.claim("w", now=10, lease_s=60) is None


def test_expired_lease_is_claimed_again(tmp_path: Path) -> None:
    """A job whose worker died (lease expired) is taken by the next claim, not before."""
    store = _store(tmp_path)
    _schedule(store, "a")
    first = store.claim("dead-worker", now=0, lease_s=30)
    assert first is not None and first.state is JobState.IN_PROGRESS
    assert store.claim("w2", now=10, lease_s=30) is None
    again = store.claim("w2", now=31, lease_s=30)
    assert again is not None and again.id == first.id and again.attempts == 2


def test_failures_reschedule_then_cancel_and_retry_restores(tmp_path: Path) -> None:
    """A failure reschedules until attempts run out; then CANCELED; operator retry reschedules."""
    store = _store(tmp_path)
    job_id = _schedule(store, "a")
    assert store.claim("w", now=0, lease_s=5) is not None
    assert store.fail(job_id, "503", now=1, retry_at=5) is JobState.SCHEDULED
    assert store.claim("w", now=2, lease_s=5) is None
    assert store.claim("w", now=5, lease_s=5) is not None
    assert store.fail(job_id, "503 again", now=6, retry_at=10) is JobState.CANCELED
    job = store.get(job_id)
    assert job is not None and job.last_error == "503 again"
    assert store.retry(job_id, now=20)
    claimed = store.claim("w", now=20, lease_s=5)
    assert claimed is not None and claimed.attempts == 1
    store.complete(job_id, ["1.2.3.4"], now=21)
    done = store.get(job_id)
    assert done is not None and done.state is JobState.COMPLETED and done.outputs == ["1.2.3.4"]
    states = [state for _, state, _ in store.events(job_id)]
    assert states[0] == "SCHEDULED" and states[-1] == "COMPLETED"


def test_permanent_failure_cancels_at_once(tmp_path: Path) -> None:
    """A failure without a retry time cancels the job immediately."""
    store = _store(tmp_path)
    job_id = _schedule(store, "a")
    store.claim("w", now=0, lease_s=5)
    assert store.fail(job_id, "401 key rejected", now=1, retry_at=None) is JobState.CANCELED
    assert store.counts() == {"CANCELED": 1}


def test_cancel_only_unfinished(tmp_path: Path) -> None:
    """Cancel stops a scheduled job and refuses a completed one."""
    store = _store(tmp_path)
    a = _schedule(store, "a")
    b = _schedule(store, "b")
    store.claim("w", now=0, lease_s=5)
    store.complete(a, [], now=1)
    assert not store.cancel(a, now=2)
    assert store.cancel(b, now=2)


def test_requeue_host_takes_back_only_that_hosts_leases(tmp_path: Path) -> None:
    """After a crash, jobs leased by the host's dead processes are scheduled again at once."""
    store = _store(tmp_path)
    a = _schedule(store, "a")
    _schedule(store, "b")
    store.claim("here:101", now=0, lease_s=900)
    store.claim("elsewhere:7", now=0, lease_s=900)
    assert store.requeue_host("here", now=5) == 1
    again = store.claim("here:202", now=5, lease_s=900)
    assert again is not None and again.id == a
    assert store.claim("here:202", now=5, lease_s=900) is None
