"""Claims under concurrency: two processes draining one journal database (jobs, outbox entries,
ripe studies) never both take the same one, and together take every one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from listener.settings.database import DatabaseUrl
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.jobs import JobStore
from listener.store.journal import InstanceRecord, Journal
from listener.store.outbox import Enqueue, Outbox

N = 120
NOW = 1000.0

# One claimer: waits for the start file, then claims jobs, outbox entries and ripe studies one
# small batch at a time until a round finds nothing, and prints what it took.
CLAIMER = """
import json, pathlib, sys, time
from listener.settings.database import DatabaseUrl
from listener.store.jobs import JobStore
from listener.store.journal import Journal
from listener.store.outbox import Outbox

where, start, owner, now = *sys.argv[1:4], float(sys.argv[4])
target = DatabaseUrl.parse(where) if "://" in where else pathlib.Path(where)
jobs, outbox, journal = JobStore(target), Outbox(target), Journal(target)
while not pathlib.Path(start).exists():
    time.sleep(0.001)
taken = {"jobs": [], "entries": [], "studies": []}
while True:
    job = jobs.claim(owner, now, lease_s=1e9)
    if job is not None:
        taken["jobs"].append(job.id)
    due = outbox.claim(now, batch_size=2, lease_s=1e9)
    taken["entries"] += [entry.id for batch in due.values() for entry in batch]
    studies = [s.study_uid for s in journal.release_due_studies(now)]
    taken["studies"] += studies
    if job is None and not due and not studies:
        break
print(json.dumps(taken))
"""


def _fill(target: JournalDb, tmp_path: Path) -> None:
    """N scheduled jobs, N outbox entries and N studies whose quiet period is over."""
    jobs, outbox, journal = JobStore(target), Outbox(target), Journal(target)
    for i in range(N):
        jobs.schedule(
            job_key=f"job-{i}",
            study_uid=f"1.2.{i}",
            generation=0,
            rule="r",
            task="t",
            payload={},
            priority=i % 3,
            now=0.0,
        )
        journal.record_instance(
            InstanceRecord(
                f"1.3.{i}", "1.2.840", f"1.2.{i}", f"1.2.{i}.1", "CT", "1.2", "p", 1, 0.0, 0
            ),
            quiet_period_s=1.0,
        )
    outbox.enqueue_many(
        [Enqueue("pacs", tmp_path / f"{i}.dcm", f"1.4.{i}", f"job-{i % 7}") for i in range(N)],
        now=0.0,
    )
    for store in (jobs, outbox, journal):
        store.close()


def _where(target: JournalDb) -> str:
    return target.secret() if isinstance(target, DatabaseUrl) else str(target)


def test_two_processes_never_claim_the_same_job_entry_or_study(
    journal_db: JournalDb, tmp_path: Path
) -> None:
    """Two claimer processes started together on one database (each claim on PostgreSQL a
    ``FOR UPDATE SKIP LOCKED`` transaction outside the writers' queue): every job, outbox entry
    and ripe study is taken by exactly one of them."""
    _fill(journal_db, tmp_path)
    start = tmp_path / "start"
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, _where(journal_db), str(start), f"host:{n}", str(NOW)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (1, 2)
    ]
    start.touch()
    outputs = [claimer.communicate(timeout=240)[0] for claimer in claimers]
    assert [claimer.returncode for claimer in claimers] == [0, 0]
    first, second = (json.loads(out) for out in outputs)
    for kind in ("jobs", "entries", "studies"):
        mine, theirs = first[kind], second[kind]
        assert len(set(mine)) == len(mine) and len(set(theirs)) == len(theirs)
        assert not set(mine) & set(theirs), f"{kind} claimed twice"
        assert len(mine) + len(theirs) == N, kind


# One receiver: records its share of the instances of the same studies the other one records.
RECEIVER = """
import pathlib, sys, time
from listener.settings.database import DatabaseUrl
from listener.store.journal import InstanceRecord, Journal

where, start, parity = sys.argv[1], sys.argv[2], int(sys.argv[3])
journal = Journal(DatabaseUrl.parse(where) if "://" in where else pathlib.Path(where))
while not pathlib.Path(start).exists():
    time.sleep(0.001)
for i in range(parity, 200, 2):
    study, series = f"1.2.{i // 2 % 10}", f"1.2.{i // 2 % 10}.{parity}"
    record = InstanceRecord(f"1.3.{i}", "1.2.840", study, series, "CT", "1.2", "p", 1, 1.0, 0)
    assert journal.record_instance(record, quiet_period_s=1.0)
"""


def test_a_study_split_over_two_receivers_assembles_once(
    journal_db: JournalDb, tmp_path: Path
) -> None:
    """Two receiver processes record the instances of the same ten studies at once (each study's
    series split between them): every instance is journaled, each study once, and it is
    released once with all its instances."""
    Journal(journal_db).close()  # the tables, as the supervisor creates them before receivers
    start = tmp_path / "start"
    receivers = [
        subprocess.Popen([sys.executable, "-c", RECEIVER, _where(journal_db), str(start), str(n)])
        for n in (0, 1)
    ]
    start.touch()
    assert [receiver.wait(timeout=240) for receiver in receivers] == [0, 0]
    journal = Journal(journal_db)
    released = journal.release_due_studies(NOW)
    assert sorted(s.study_uid for s in released) == [f"1.2.{i}" for i in range(10)]
    assert {(s.generation, s.instance_count) for s in released} == {(0, 20)}
    assert journal.release_due_studies(NOW) == []
    assert all(study.series_count == 2 for study in journal.studies())
    journal.close()
