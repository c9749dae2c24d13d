"""Heartbeats of the gateway's processes and the sweep that frees the jobs of a silent one."""

from __future__ import annotations

from pathlib import Path

from spooled import schedule_job

from listener.store.db import DatabaseTarget
from listener.store.executors import ExecutorBeat, Executors, owner_name, sweep_silent
from listener.store.jobs import JobState, JobStore, forbidden_transitions
from listener.store.outbox import Outbox


def _beat(owner: str, at: float) -> ExecutorBeat:
    executor, pid = owner.split(":")
    return ExecutorBeat(owner, executor, "job-runner", "work", int(pid), 0.0, at)


def test_owner_name_is_executor_and_pid() -> None:
    """Lease owners and heartbeat rows share one name: executor id and PID."""
    assert owner_name("host-a", 42) == "host-a:42"


def test_beat_refreshes_one_row_per_process(journal_db: DatabaseTarget) -> None:
    """A process's second beat updates its row; silence is judged on the latest beat."""
    executors = Executors(journal_db)
    executors.beat(_beat("a:1", 10.0))
    executors.beat(_beat("a:1", 50.0))
    executors.beat(_beat("b:2", 10.0))
    assert [b.owner for b in executors.all()] == ["a:1", "b:2"]
    assert [b.owner for b in executors.silent(now=55.0, timeout_s=30.0)] == ["b:2"]


def test_sweep_releases_only_the_silent_process_jobs(journal_db: DatabaseTarget) -> None:
    """The job of a runner whose heartbeat stopped is claimable at once, long before its lease
    would run out; a live runner's job stays with it; the job stays IN PROGRESS (UPS)."""
    jobs, executors = JobStore(journal_db), Executors(journal_db)
    dead_job = schedule_job(jobs, "dead")
    schedule_job(jobs, "live")
    assert jobs.claim("dead-host:7", now=0.0, lease_s=3600.0) is not None
    assert jobs.claim("live-host:8", now=0.0, lease_s=3600.0) is not None
    executors.beat(_beat("dead-host:7", 0.0))
    executors.beat(_beat("live-host:8", 95.0))

    assert jobs.claim("other:9", now=100.0, lease_s=60.0) is None  # both leases still run
    assert sweep_silent(executors, jobs, now=100.0, timeout_s=30.0) == 1
    again = jobs.claim("other:9", now=100.0, lease_s=60.0)
    assert again is not None and again.id == dead_job and again.state is JobState.IN_PROGRESS
    assert jobs.claim("other:9", now=100.0, lease_s=60.0) is None  # the live one is not taken
    assert [b.owner for b in executors.all()] == ["live-host:8"]
    assert forbidden_transitions([s for _, s, _ in jobs.events(dead_job)]) == []
    assert sweep_silent(executors, jobs, now=101.0, timeout_s=30.0) == 0  # nothing left


def test_a_process_that_beats_again_is_not_forgotten(journal_db: DatabaseTarget) -> None:
    """Forgetting a silent row is conditional on its last beat: one that came back stays."""
    executors = Executors(journal_db)
    executors.beat(_beat("a:1", 0.0))
    (silent,) = executors.silent(now=100.0, timeout_s=30.0)
    executors.beat(_beat("a:1", 99.0))
    assert not executors.forget(silent.owner, silent.heartbeat_at)
    assert [b.owner for b in executors.all()] == ["a:1"]


def test_sweep_makes_the_sends_a_silent_sender_claimed_due_at_once(
    journal_db: DatabaseTarget, tmp_path: Path
) -> None:
    """Entries a dead sender had claimed under a ten-minute lease go out again at once; a live
    sender's claims stay with it."""
    jobs, executors, outbox = JobStore(journal_db), Executors(journal_db), Outbox(journal_db)
    outbox.enqueue("pacs", tmp_path / "a.dcm", "1.2.3.1", "7", now=0.0)
    outbox.enqueue("archive", tmp_path / "b.dcm", "1.2.3.2", "7", now=50.0)  # due later
    dead = outbox.claim(0.0, batch_size=1, lease_s=600.0, owner="dead-host:7")
    assert [e.sop_instance_uid for e in dead["pacs"]] == ["1.2.3.1"]
    executors.beat(_beat("dead-host:7", 0.0))
    executors.beat(_beat("live-host:8", 95.0))
    assert outbox.claim(100.0, batch_size=10, lease_s=600.0, owner="live-host:8") != {}
    assert outbox.claim(100.0, batch_size=10, lease_s=600.0) == {}  # both claimed
    sweep_silent(executors, jobs, now=100.0, timeout_s=30.0, outbox=outbox)
    again = outbox.claim(100.0, batch_size=10, lease_s=600.0, owner="other:9")
    assert {d: [e.sop_instance_uid for e in es] for d, es in again.items()} == {"pacs": ["1.2.3.1"]}
