"""The gateway-wide request permits in the journal: a model's ``concurrency`` slots, on SQLite and
on PostgreSQL (one code path)."""

from __future__ import annotations

import threading
import time

from listener.store.db import Database, DatabaseTarget
from listener.store.executors import ExecutorBeat, Executors, sweep_silent
from listener.store.jobs import JobStore
from listener.store.permits import ModelPermits, requests_in_flight

LEASE_S = 60.0


def test_no_more_permits_than_the_limit(journal_db: DatabaseTarget) -> None:
    """Two holders share a limit of 2: the third request waits until one gives its permit back;
    another model's permits are its own."""
    permits = ModelPermits(journal_db)
    first = permits.try_acquire("cxrreportgen", 2, "a:1", 100.0, LEASE_S)
    second = permits.try_acquire("cxrreportgen", 2, "b:2", 100.0, LEASE_S)
    assert first is not None and second is not None and first.slot != second.slot
    assert permits.try_acquire("cxrreportgen", 2, "a:1", 100.0, LEASE_S) is None
    assert permits.try_acquire("medimageparse", 2, "a:1", 100.0, LEASE_S) is not None
    assert permits.held("cxrreportgen", 100.0) == 2
    permits.release(first)
    third = permits.try_acquire("cxrreportgen", 2, "b:2", 101.0, LEASE_S)
    assert third is not None and third.slot == first.slot


def test_a_lowered_limit_counts_and_a_raised_one_adds_slots(journal_db: DatabaseTarget) -> None:
    """The limit of the settings that run now counts, whatever the table held before."""
    permits = ModelPermits(journal_db)
    held = [permits.try_acquire("medimageparse", 4, "a:1", 0.0, LEASE_S) for _ in range(3)]
    assert all(p is not None for p in held)
    assert permits.try_acquire("medimageparse", 2, "a:1", 0.0, LEASE_S) is None
    again = ModelPermits(journal_db)  # another process, with a higher limit
    assert again.try_acquire("medimageparse", 5, "b:2", 0.0, LEASE_S) is not None
    assert again.try_acquire("medimageparse", 5, "b:2", 0.0, LEASE_S) is not None
    assert again.try_acquire("medimageparse", 5, "b:2", 0.0, LEASE_S) is None


def test_a_lapsed_permit_is_taken_over_and_its_late_release_frees_nothing(
    journal_db: DatabaseTarget,
) -> None:
    """A holder killed with a request in flight never gives its permit back: it lapses after
    its lease, and the lapsed holder's late release leaves the new holder's permit held."""
    permits = ModelPermits(journal_db)
    lost = permits.try_acquire("medimageparse3d", 1, "dead:1", 100.0, LEASE_S)
    assert lost is not None
    assert permits.try_acquire("medimageparse3d", 1, "live:2", 100.0 + LEASE_S - 1, LEASE_S) is None
    taken = permits.try_acquire("medimageparse3d", 1, "live:2", 100.0 + LEASE_S + 1, LEASE_S)
    assert taken is not None and taken.slot == lost.slot
    permits.release(lost)
    assert permits.held("medimageparse3d", 100.0 + LEASE_S + 2) == 1


def test_a_silent_process_and_a_restarted_host_free_their_permits(
    journal_db: DatabaseTarget,
) -> None:
    """The sweeper frees the permits of a process whose heartbeat stopped, long before they
    lapse; a host starting up frees what its earlier processes held; others keep theirs."""
    permits, executors = ModelPermits(journal_db), Executors(journal_db)
    for owner in ("gone:1", "live:2", "host-b:3", "host-b:4"):
        assert permits.try_acquire("medimageinsight", 8, owner, 100.0, LEASE_S) is not None
    executors.beat(ExecutorBeat("gone:1", "gone", "job-runner", "work", 1, 0.0, 100.0))
    executors.beat(ExecutorBeat("live:2", "live", "job-runner", "work", 2, 0.0, 140.0))
    sweep_silent(executors, JobStore(journal_db), 145.0, 30.0, permits=permits)
    assert permits.held("medimageinsight", 145.0) == 3
    assert permits.release_host("host-b") == 2
    assert permits.held("medimageinsight", 145.0) == 1
    assert permits.release_owner("live:2") == 1


def test_racing_claims_never_hold_a_slot_twice(journal_db: DatabaseTarget) -> None:
    """Six processes' worth of connections claim and give back permits as fast as they can: no
    moment sees more holders than the limit, and the limit is reached."""
    limit, threads, rounds = 3, 6, 40
    lock = threading.Lock()
    holding = [0, 0]  # now, most

    def worker(n: int) -> None:
        permits = ModelPermits(journal_db)
        try:
            for _ in range(rounds):
                permit = permits.try_acquire("cxrreportgen", limit, f"w:{n}", time.time(), 60)
                if permit is None:
                    time.sleep(0.001)
                    continue
                with lock:
                    holding[0] += 1
                    holding[1] = max(holding[1], holding[0])
                time.sleep(0.002)
                with lock:
                    holding[0] -= 1
                permits.release(permit)
        finally:
            permits.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert holding[1] == limit


def test_the_metrics_count_the_permits_held_now(journal_db: DatabaseTarget) -> None:
    """What ``pacsai_model_requests_in_flight`` reports: held permits per model, lapsed ones
    not counted; nothing before any job runner made the table."""
    database = Database(journal_db)
    assert requests_in_flight(database, 0.0) == {}
    permits = ModelPermits(journal_db)
    permits.try_acquire("medimageparse", 4, "a:1", 100.0, LEASE_S)
    permits.try_acquire("medimageparse", 4, "a:1", 100.0, 1.0)
    permits.try_acquire("cxrreportgen", 2, "b:2", 100.0, LEASE_S)
    assert requests_in_flight(database, 100.5) == {"medimageparse": 2, "cxrreportgen": 1}
    assert requests_in_flight(database, 102.0) == {"medimageparse": 1, "cxrreportgen": 1}
