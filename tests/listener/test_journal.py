"""The journal: instances, duplicates, quiet-period timers, release and follow-ups."""

from __future__ import annotations

from listener.store.db import DatabaseTarget as JournalDb
from listener.store.journal import InstanceRecord, Journal, StudyState


def _record(sop: str, at: float, study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_uid=study,
        series_uid=series,
        modality="CT",
        transfer_syntax="1.2.840.10008.1.2.1",
        path=f"{study}/{series}/{sop}.dcm",
        size=10,
        received_at=at,
        generation=0,
    )


def test_duplicate_sop_instance_is_recorded_once(journal_db: JournalDb) -> None:
    """A second record with the same SOP Instance UID is refused and counts stay at one."""
    journal = Journal(journal_db)
    assert journal.record_instance(_record("1.1", 100.0), quiet_period_s=10)
    assert not journal.record_instance(_record("1.1", 101.0), quiet_period_s=10)
    study = journal.study("1.2.3")
    assert study is not None and study.instance_count == 1


def test_study_released_once_when_quiet_period_ends(journal_db: JournalDb) -> None:
    """A study is released only after its last instance's quiet period, and only once."""
    journal = Journal(journal_db)
    journal.record_instance(_record("1.1", 100.0), quiet_period_s=10)
    journal.record_instance(_record("1.2", 105.0), quiet_period_s=10)
    assert journal.release_due_studies(114.9) == []
    released = journal.release_due_studies(115.0)
    assert [(s.study_uid, s.generation, s.instance_count) for s in released] == [("1.2.3", 0, 2)]
    assert journal.release_due_studies(200.0) == []
    study = journal.study("1.2.3")
    assert study is not None and study.state is StudyState.READY


def test_timer_survives_a_restart(journal_db: JournalDb) -> None:
    """A journal reopened in the middle of a quiet period releases at the original due time."""
    path = journal_db
    first = Journal(path)
    first.record_instance(_record("1.1", 100.0), quiet_period_s=10)
    first.close()
    second = Journal(path)
    assert second.next_due_at() == 110.0
    assert second.release_due_studies(109.0) == []
    assert len(second.release_due_studies(110.0)) == 1
    assert second.release_due_studies(111.0) == []


def test_late_instance_opens_a_follow_up(journal_db: JournalDb) -> None:
    """An instance after release raises the generation and releases again with it marked new."""
    journal = Journal(journal_db)
    journal.record_instance(_record("1.1", 100.0), quiet_period_s=10)
    journal.release_due_studies(110.0)
    journal.mark_dispatched("1.2.3", 0)
    journal.record_instance(_record("1.2", 120.0), quiet_period_s=10)
    study = journal.study("1.2.3")
    assert study is not None and study.state is StudyState.RECEIVING and study.generation == 1
    (follow_up,) = journal.release_due_studies(130.0)
    assert (follow_up.generation, follow_up.instance_count, follow_up.new_instances) == (1, 2, 1)
    assert [i.sop_instance_uid for i in journal.instances("1.2.3", generation=1)] == ["1.2"]


def test_ready_studies_are_handed_over_again_until_dispatched(journal_db: JournalDb) -> None:
    """A released study not yet marked dispatched is listed by ready_studies (redelivery)."""
    journal = Journal(journal_db)
    journal.record_instance(_record("1.1", 100.0), quiet_period_s=1)
    journal.release_due_studies(101.0)
    assert [s.study_uid for s in journal.ready_studies()] == ["1.2.3"]
    assert journal.mark_dispatched("1.2.3", 0)
    assert journal.ready_studies() == []
