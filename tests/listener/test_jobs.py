"""Job table: UPS states, atomic claims, leases, priorities, retry and cancel."""

from __future__ import annotations

from spooled import schedule_job

from listener.store.db import DatabaseTarget as JournalDb
from listener.store.jobs import JobState, JobStore, forbidden_transitions


def _store(journal_db: JournalDb) -> JobStore:
    return JobStore(journal_db)


def _schedule(store: JobStore, key: str, *, priority: int = 0, now: float = 0.0) -> int:
    return schedule_job(store, key, priority=priority, now=now, max_attempts=2)


def test_schedule_is_idempotent(journal_db: JournalDb) -> None:
    """Scheduling the same job key twice yields one job."""
    store = _store(journal_db)
    assert _schedule(store, "a") == _schedule(store, "a")
    assert len(store.list_jobs()) == 1


def test_claim_honours_priority_then_age(journal_db: JournalDb) -> None:
    """The highest priority job is claimed first, then the oldest."""
    store = _store(journal_db)
    _schedule(store, "old-low", now=1)
    _schedule(store, "new-high", priority=5, now=2)
    _schedule(store, "newer-low", now=3)
    order = [store.claim("w", now=10, lease_s=60) for _ in range(3)]
    assert [job.task for job in order if job] == ["new-high", "old-low", "newer-low"]
    assert store.claim("w", now=10, lease_s=60) is None


def test_expired_lease_is_claimed_again(journal_db: JournalDb) -> None:
    """A job whose worker died (lease expired) is taken by the next claim, not before."""
    store = _store(journal_db)
    _schedule(store, "a")
    first = store.claim("dead-worker", now=0, lease_s=30)
    assert first is not None and first.state is JobState.IN_PROGRESS
    assert store.claim("w2", now=10, lease_s=30) is None
    again = store.claim("w2", now=31, lease_s=30)
    assert again is not None and again.id == first.id and again.attempts == 2


def _history(store: JobStore, job_id: int) -> list[str]:
    return [state for _, state, _ in store.events(job_id)]


def test_transient_failure_stays_in_progress_until_attempts_run_out(journal_db: JournalDb) -> None:
    """A transient failure (not a model outage) keeps the job IN PROGRESS, lease released, due
    at its retry time; out of attempts it is CANCELED with its cause; never back to SCHEDULED."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")
    first = store.claim("w", now=0, lease_s=5)
    assert first is not None and first.lease is not None
    assert store.fail(first.lease, "boom", now=1, retry_at=5) is JobState.IN_PROGRESS
    waiting = store.get(job_id)
    assert waiting is not None and waiting.state is JobState.IN_PROGRESS
    assert waiting.lease is None and waiting.attempts == 1
    assert store.claim("w", now=2, lease_s=5) is None
    second = store.claim("w", now=5, lease_s=5)
    assert second is not None and second.lease is not None and second.attempts == 2
    assert store.fail(second.lease, "boom again", now=6, retry_at=10) is JobState.CANCELED
    job = store.get(job_id)
    assert job is not None and job.last_error == "gave up after 2 attempts: boom again"
    assert "SCHEDULED" not in _history(store, job_id)[1:]
    assert forbidden_transitions(_history(store, job_id)) == []


def test_model_outage_waits_until_max_age_and_fast_fails_do_not_count(
    journal_db: JournalDb,
) -> None:
    """A job waiting for a model is retried past max_attempts until it is max_age_s old; a
    fast-fail of an open breaker gives its attempt back; at the age it is CANCELED naming the
    model and the last cause."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")  # max_attempts=2
    now = 0.0
    for _ in range(5):
        job = store.claim("w", now=now, lease_s=5)
        assert job is not None and job.lease is not None
        state = store.fail(
            job.lease, "ConnectError", now + 1, retry_at=now + 10, waiting_for="m", max_age_s=100
        )
        assert state is JobState.IN_PROGRESS
        now += 10
    job = store.claim("w", now=now, lease_s=5)
    assert job is not None and job.lease is not None and job.attempts == 6
    store.fail(job.lease, "circuit open", now, retry_at=now + 10, waiting_for="m", counted=False)
    waiting = store.get(job_id)
    assert waiting is not None and waiting.attempts == 5 and waiting.waiting_for == "m"
    job = store.claim("w", now=100, lease_s=5)
    assert job is not None and job.lease is not None
    state = store.fail(
        job.lease, "ConnectError: refused", 100, retry_at=110, waiting_for="m", max_age_s=100
    )
    assert state is JobState.CANCELED
    done = store.get(job_id)
    assert done is not None
    assert done.last_error == "gave up after waiting 100 s for m: ConnectError: refused"


def test_a_waiting_job_is_not_retried_after_its_age(journal_db: JournalDb) -> None:
    """The retry time of a waiting job is capped at its max age, so it gives up on time."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")
    job = store.claim("w", now=0, lease_s=5)
    assert job is not None and job.lease is not None
    store.fail(job.lease, "503", 1, retry_at=500, waiting_for="m", max_age_s=60)
    waiting = store.get(job_id)
    assert waiting is not None and waiting.not_before == 60


def test_stale_runner_changes_nothing(journal_db: JournalDb) -> None:
    """A runner whose lease ran out and was taken over can neither renew, fail nor complete."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")
    stale = store.claim("w1", now=0, lease_s=5)
    assert stale is not None and stale.lease is not None
    fresh = store.claim("w2", now=6, lease_s=5)
    assert fresh is not None and fresh.lease is not None
    assert fresh.lease.token == stale.lease.token + 1
    assert not store.renew(stale.lease, 100)
    assert store.fail(stale.lease, "late failure", 7, retry_at=None) is None
    assert not store.complete(stale.lease, ["9.9"], 7)
    job = store.get(job_id)
    assert job is not None and job.state is JobState.IN_PROGRESS and job.lease == fresh.lease
    assert job.last_error is None and job.lease_until == 11
    assert store.renew(fresh.lease, 20)
    assert store.complete(fresh.lease, ["1.2"], 8)


def test_same_owner_reclaiming_gets_a_new_generation(journal_db: JournalDb) -> None:
    """Fencing is by generation, not only by owner: the same worker's old lease is stale too."""
    store = _store(journal_db)
    _schedule(store, "a")
    old = store.claim("w", now=0, lease_s=5)
    new = store.claim("w", now=6, lease_s=5)
    assert old is not None and new is not None and old.lease and new.lease
    assert not store.complete(old.lease, [], 7)
    assert store.complete(new.lease, [], 7)


def test_operator_cancel_fences_the_runner(journal_db: JournalDb) -> None:
    """A job canceled while it runs refuses its runner's renew and completion."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")
    job = store.claim("w", now=0, lease_s=5)
    assert job is not None and job.lease is not None
    assert store.cancel(job_id, 1)
    assert not store.renew(job.lease, 10)
    assert not store.complete(job.lease, ["1"], 2)
    canceled = store.get(job_id)
    assert canceled is not None and canceled.state is JobState.CANCELED


def test_retry_is_a_new_job_referencing_the_old(journal_db: JournalDb) -> None:
    """An operator retry of a CANCELED job schedules a new job with retry_of set; the old one
    stays CANCELED; retrying again gives the same new job; a COMPLETED job is not retried."""
    store = _store(journal_db)
    job_id = _schedule(store, "a")
    job = store.claim("w", now=0, lease_s=5)
    assert job is not None and job.lease is not None
    store.fail(job.lease, "401 key rejected", 1, retry_at=None)
    new_id = store.retry(job_id, 2)
    assert new_id is not None and new_id != job_id
    assert store.retry(job_id, 3) == new_id
    new = store.get(new_id)
    old = store.get(job_id)
    assert new is not None and old is not None
    assert (new.state, new.retry_of, new.attempts, new.payload) == (
        JobState.SCHEDULED,
        job_id,
        0,
        old.payload,
    )
    assert old.state is JobState.CANCELED
    claimed = store.claim("w", now=4, lease_s=5)
    assert claimed is not None and claimed.id == new_id and claimed.lease is not None
    assert store.complete(claimed.lease, ["1.2.3.4"], 5)
    assert store.retry(new_id, 6) is None
    for history in (_history(store, job_id), _history(store, new_id)):
        assert forbidden_transitions(history) == []


def test_forbidden_transitions_are_found() -> None:
    """The checker flags a step back to SCHEDULED and a change after CANCELED."""
    assert forbidden_transitions(["SCHEDULED", "IN PROGRESS", "IN PROGRESS", "COMPLETED"]) == []
    assert forbidden_transitions(["SCHEDULED", "IN PROGRESS", "SCHEDULED"]) == [
        ("IN PROGRESS", "SCHEDULED")
    ]
    assert forbidden_transitions(["SCHEDULED", "CANCELED", "SCHEDULED"]) == [
        ("CANCELED", "SCHEDULED")
    ]


def test_permanent_failure_cancels_at_once(journal_db: JournalDb) -> None:
    """A failure without a retry time cancels the job immediately."""
    store = _store(journal_db)
    _schedule(store, "a")
    job = store.claim("w", now=0, lease_s=5)
    assert job is not None and job.lease is not None
    assert store.fail(job.lease, "401 key rejected", now=1, retry_at=None) is JobState.CANCELED
    assert store.counts() == {"CANCELED": 1}


def test_cancel_only_unfinished(journal_db: JournalDb) -> None:
    """Cancel stops a scheduled job and refuses a completed one."""
    store = _store(journal_db)
    a = _schedule(store, "a")
    b = _schedule(store, "b")
    job = store.claim("w", now=0, lease_s=5)
    assert job is not None and job.lease is not None and job.id == a
    store.complete(job.lease, [], now=1)
    assert not store.cancel(a, now=2)
    assert store.cancel(b, now=2)


def test_release_host_frees_only_that_hosts_leases_and_keeps_them_in_progress(
    journal_db: JournalDb,
) -> None:
    """After a crash, jobs leased by the host's dead processes run again at once, still
    IN PROGRESS (UPS has no way back to SCHEDULED)."""
    store = _store(journal_db)
    a = _schedule(store, "a")
    _schedule(store, "b")
    store.claim("here:101", now=0, lease_s=900)
    store.claim("elsewhere:7", now=0, lease_s=900)
    assert store.release_host("here", now=5) == 1
    again = store.claim("here:202", now=5, lease_s=900)
    assert again is not None and again.id == a
    assert store.claim("here:202", now=5, lease_s=900) is None
    assert forbidden_transitions(_history(store, a)) == []
