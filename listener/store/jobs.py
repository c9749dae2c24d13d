"""Journal-backed job table: one job per (study generation, rule, task), with UPS-shaped states.

States map one to one onto DICOM Unified Procedure Step states (PS3.4 CC.1.1): ``SCHEDULED``,
``IN PROGRESS``, ``COMPLETED`` and ``CANCELED``. A job that exhausts its attempts, or fails
permanently, is ``CANCELED`` with its last error; ``retry`` puts it back to ``SCHEDULED``.

Claiming is atomic (one UPDATE ... RETURNING), so any number of worker processes, on this host or
another sharing the database, can take work. A claim carries a lease: a worker killed mid-job
leaves an ``IN PROGRESS`` row whose lease expires, and the next claim takes it again. That, with
deterministic result UIDs, is what makes a crash produce each result exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from listener.store.db import BUSY_TIMEOUT_S, Database, JournalTables


class JobState(StrEnum):
    """UPS procedure step states (PS3.4 Table CC.1.1-1)."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    rule TEXT NOT NULL,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    last_error TEXT,
    outputs TEXT,
    not_before REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, priority DESC, not_before);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);
CREATE TABLE IF NOT EXISTS job_events (
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id);
"""


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: int
    job_key: str
    study_uid: str
    generation: int
    rule: str
    task: str
    payload: dict[str, Any]
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    last_error: str | None
    outputs: list[str]
    not_before: float
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            job_key=row["job_key"],
            study_uid=row["study_uid"],
            generation=row["generation"],
            rule=row["rule"],
            task=row["task"],
            payload=json.loads(row["payload"]),
            priority=row["priority"],
            state=JobState(row["state"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            last_error=row["last_error"],
            outputs=json.loads(row["outputs"] or "[]"),
            not_before=row["not_before"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class JobStore(JournalTables):
    """The job table in the journal database (SQLite, WAL)."""

    schema = _SCHEMA

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        with Database(path, busy_timeout_s=busy_timeout_s).read() as db:
            # journals written before the column had the study's generation name
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "episode" in columns:
                db.execute("ALTER TABLE jobs RENAME COLUMN episode TO generation")
        super().__init__(path, busy_timeout_s=busy_timeout_s)

    def _event(
        self, db: sqlite3.Connection, job_id: int, now: float, state: str, detail: str | None
    ) -> None:
        db.execute(
            "INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)",
            (job_id, now, state, detail),
        )

    def schedule(
        self,
        *,
        job_key: str,
        study_uid: str,
        generation: int,
        rule: str,
        task: str,
        payload: dict[str, Any],
        priority: int,
        now: float,
        max_attempts: int = 5,
    ) -> int:
        """Create the job unless one with the same key exists; return its id either way."""
        with self.db.transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE job_key = ?", (job_key,)).fetchone()
            if row is not None:
                return int(row["id"])
            cursor = db.execute(
                "INSERT INTO jobs (job_key, study_uid, generation, rule, task, payload, priority,"
                " state, max_attempts, not_before, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_key,
                    study_uid,
                    generation,
                    rule,
                    task,
                    json.dumps(payload, sort_keys=True),
                    priority,
                    JobState.SCHEDULED.value,
                    max_attempts,
                    now,
                    now,
                    now,
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            self._event(db, job_id, now, JobState.SCHEDULED.value, None)
            return job_id

    def claim(self, owner: str, now: float, lease_s: float) -> Job | None:
        """Take the most urgent due job (highest priority, then oldest), or an expired lease."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE (state = ? AND not_before <= ?)"
                " OR (state = ? AND lease_until < ?)"
                " ORDER BY priority DESC, not_before, id LIMIT 1",
                (JobState.SCHEDULED.value, now, JobState.IN_PROGRESS.value, now),
            ).fetchone()
            if row is None:
                return None
            claimed = db.execute(
                "UPDATE jobs SET state = ?, lease_owner = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ? RETURNING *",
                (JobState.IN_PROGRESS.value, owner, now + lease_s, now, row["id"]),
            ).fetchone()
            self._event(db, row["id"], now, JobState.IN_PROGRESS.value, owner)
            return Job.from_row(claimed)

    def requeue_host(self, host: str, now: float) -> int:
        """Put back to SCHEDULED every IN PROGRESS job leased by a process of ``host``
        (owners are ``host:pid``); used at start-up, when none of them can still be running."""
        with self.db.transaction() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND lease_owner LIKE ?",
                (JobState.IN_PROGRESS.value, f"{host}:%"),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, not_before = ?, lease_owner = NULL,"
                    " lease_until = NULL, updated_at = ? WHERE id = ?",
                    (JobState.SCHEDULED.value, now, now, row["id"]),
                )
                self._event(db, row["id"], now, JobState.SCHEDULED.value, "requeued after crash")
            return len(rows)

    def extend_lease(self, job_id: int, owner: str, until: float) -> None:
        """Keep a long job's lease alive while its worker is still busy with it."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND state = ?",
                (until, job_id, owner, JobState.IN_PROGRESS.value),
            )

    def complete(self, job_id: int, outputs: list[str], now: float) -> None:
        """Mark the job done and record what it produced (result SOP Instance UIDs)."""
        self._finish(job_id, JobState.COMPLETED, now, outputs=outputs)

    def fail(self, job_id: int, error: str, now: float, *, retry_at: float | None) -> JobState:
        """Record a failure: back to SCHEDULED at ``retry_at``, or CANCELED when out of tries."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            exhausted = row is None or row["attempts"] >= row["max_attempts"]
            state = JobState.CANCELED if retry_at is None or exhausted else JobState.SCHEDULED
            db.execute(
                "UPDATE jobs SET state = ?, last_error = ?, not_before = ?, lease_owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE id = ?",
                (state.value, error[:2000], retry_at or now, now, job_id),
            )
            self._event(db, job_id, now, state.value, error[:500])
            return state

    def _finish(self, job_id: int, state: JobState, now: float, outputs: list[str]) -> None:
        with self.db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, outputs = ?, last_error = NULL, lease_owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE id = ?",
                (state.value, json.dumps(outputs), now, job_id),
            )
            self._event(db, job_id, now, state.value, None)

    def retry(self, job_id: int, now: float) -> bool:
        """Operator retry: a CANCELED job goes back to SCHEDULED with fresh attempts."""
        with self.db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, not_before = ?, updated_at = ?"
                " WHERE id = ? AND state = ?",
                (JobState.SCHEDULED.value, now, now, job_id, JobState.CANCELED.value),
            )
            if cursor.rowcount:
                self._event(db, job_id, now, JobState.SCHEDULED.value, "operator retry")
            return cursor.rowcount > 0

    def cancel(self, job_id: int, now: float, reason: str = "operator cancel") -> bool:
        """Operator cancel of a job that has not finished."""
        with self.db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, last_error = ?, lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE id = ? AND state IN (?, ?)",
                (
                    JobState.CANCELED.value,
                    reason,
                    now,
                    job_id,
                    JobState.SCHEDULED.value,
                    JobState.IN_PROGRESS.value,
                ),
            )
            if cursor.rowcount:
                self._event(db, job_id, now, JobState.CANCELED.value, reason)
            return cursor.rowcount > 0

    def get(self, job_id: int) -> Job | None:
        with self.db.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else Job.from_row(row)

    def list_jobs(
        self, *, state: JobState | None = None, study_uid: str | None = None
    ) -> list[Job]:
        """Jobs, newest first, optionally of one state or one study."""
        clauses, args = [], []
        if state is not None:
            clauses.append("state = ?")
            args.append(state.value)
        if study_uid is not None:
            clauses.append("study_uid = ?")
            args.append(study_uid)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as db:
            rows = db.execute(f"SELECT * FROM jobs{where} ORDER BY id DESC", args).fetchall()
            return [Job.from_row(row) for row in rows]

    def earlier_outputs(self, study_uid: str, rule: str, task: str) -> list[str]:
        """The result UIDs of the latest completed job of (study, rule, task) from a generation
        before the newest one scheduled for it: what that newest job's results supersede."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT outputs FROM jobs WHERE study_uid = ? AND rule = ? AND task = ?"
                " AND state = ? AND generation < (SELECT MAX(generation) FROM jobs"
                " WHERE study_uid = ? AND rule = ? AND task = ?)"
                " ORDER BY generation DESC, id DESC LIMIT 1",
                (study_uid, rule, task, JobState.COMPLETED.value, study_uid, rule, task),
            ).fetchone()
        outputs: list[str] = json.loads(row["outputs"] or "[]") if row is not None else []
        return outputs

    def events(self, job_id: int) -> list[tuple[float, str, str | None]]:
        """The job's timeline: (time, state, detail)."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT at, state, detail FROM job_events WHERE job_id = ? ORDER BY at, rowid",
                (job_id,),
            ).fetchall()
            return [(row["at"], row["state"], row["detail"]) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (for metrics and readiness)."""
        with self.db.read() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
            return {row["state"]: row["n"] for row in rows}
