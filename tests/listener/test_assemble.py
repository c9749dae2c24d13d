"""The assemble worker: release by time, callbacks, redelivery after a crash."""

from __future__ import annotations

import threading

from listener.assemble import next_wait, release_loop, release_step
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.journal import InstanceRecord, Journal, ReleasedStudy, StudyState


def _add(journal: Journal, sop: str, at: float, quiet: float = 5.0) -> None:
    journal.record_instance(
        InstanceRecord(
            sop,
            "1.2.840.10008.5.1.4.1.1.2",
            "9.9",
            "9.9.1",
            "CT",
            "1.2.840.10008.1.2.1",
            f"9.9/9.9.1/{sop}.dcm",
            1,
            at,
            0,
        ),
        quiet_period_s=quiet,
    )


def test_release_step_calls_back_once_at_due_time(journal_db: JournalDb) -> None:
    """release_step hands a study to the callback only when now reaches its due time."""
    journal = Journal(journal_db)
    _add(journal, "1.1", 10.0)
    seen: list[ReleasedStudy] = []
    assert release_step(journal, 14.0, seen.append) == 0
    assert release_step(journal, 15.0, seen.append) == 1
    assert release_step(journal, 16.0, seen.append) == 0
    assert [s.study_uid for s in seen] == ["9.9"]
    study = journal.study("9.9")
    assert study is not None and study.state is StudyState.DISPATCHED


def test_next_wait_sleeps_until_due_within_poll_interval(journal_db: JournalDb) -> None:
    """The worker sleeps until the next due time, bounded by the poll interval."""
    journal = Journal(journal_db)
    assert next_wait(journal, 0.0, 0.5) == 0.5
    _add(journal, "1.1", 10.0)
    assert abs(next_wait(journal, 14.8, 0.5) - 0.2) < 1e-9
    assert next_wait(journal, 16.0, 0.5) == 0.0


def test_worker_redelivers_studies_left_ready(journal_db: JournalDb) -> None:
    """A study released before a crash but never dispatched goes to the callback at start."""
    journal = Journal(journal_db)
    _add(journal, "1.1", 10.0)
    journal.release_due_studies(20.0)  # released, then the worker "crashed"
    seen: list[ReleasedStudy] = []
    stop = threading.Event()

    def on_ready(study: ReleasedStudy) -> None:
        seen.append(study)
        stop.set()

    release_loop(journal, stop, on_ready=on_ready, clock=lambda: 20.0, poll_interval_s=0.01)
    assert [s.study_uid for s in seen] == ["9.9"]


def test_trickling_study_is_released_at_the_maximum_wait(journal_db: JournalDb) -> None:
    """A study that gets an instance every 4 s never has a 5 s quiet period; with a maximum
    wait of 30 s it is released 30 s after its first instance, and a later instance opens a
    follow-up whose own ceiling counts from that instance."""
    journal = Journal(journal_db)
    seen: list[ReleasedStudy] = []
    for i in range(8):  # at 0, 4, ..., 28
        _add(journal, f"1.{i}", 4.0 * i)
        assert release_step(journal, 4.0 * i + 1, seen.append, max_wait_s=30) == 0
    assert journal.next_due_at(max_wait_s=30) == 30.0
    assert release_step(journal, 29.9, seen.append) == 0  # no ceiling: still waiting
    assert release_step(journal, 30.0, seen.append, max_wait_s=30) == 1
    assert (seen[0].generation, seen[0].instance_count) == (0, 8)
    for i in range(8, 20):  # at 32, 36, ..., 76
        _add(journal, f"1.{i}", 4.0 * i)
        release_step(journal, 4.0 * i + 1, seen.append, max_wait_s=30)
    # 32..60 arrive before the follow-up's ceiling (62); the one at 64 is released at 65.
    assert [(s.generation, s.new_instances) for s in seen] == [(0, 8), (1, 9)]
