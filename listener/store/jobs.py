"""Journal-backed job table: one job per (study generation, rule, task), with UPS states.

States are the DICOM Unified Procedure Step states (PS3.4 CC.1.1): ``SCHEDULED``, ``IN PROGRESS``,
``COMPLETED`` and ``CANCELED``, and only the transitions PS3.4 Table CC.1.1-2 allows happen:
SCHEDULED → IN PROGRESS → COMPLETED or CANCELED, and SCHEDULED → CANCELED. Nothing leaves
COMPLETED or CANCELED, and nothing goes back to SCHEDULED:

- a transient failure (a model outage, a crash) leaves the job IN PROGRESS with its lease released
  and ``not_before`` set to when it may run again; the attempt is counted (unless no call reached
  the model: the breaker failed it fast), and the job's timeline notes the cause;
- a permanent failure, or a job still failing transiently at ``max_age_s``, is CANCELED with its
  last cause;
- an operator's retry of a CANCELED job is a new job (a new procedure step) whose ``retry_of``
  names the old one (:func:`listener.store.retry.retry_job`).

Claiming is atomic (one transaction), so any number of job-runner processes, on this host or
another sharing the database, can take work: on SQLite the write transaction excludes every other
writer; on PostgreSQL the chosen row is locked (``FOR UPDATE SKIP LOCKED``), so a concurrent
claimer passes over it, and one that read it before the claim committed re-checks it, finds it
taken and skips it. A claim carries a lease (owner, generation ``token``, expiry):
the runner renews it while the job runs, and every change a runner makes (renew, complete, fail)
is fenced by the owner *and* the token, so a runner that lost its lease (killed, hung, or overtaken
after the lease ran out) cannot change the job any more. A job runner killed mid-job leaves an
IN PROGRESS row whose lease runs out, and the next claim takes it again. That, with deterministic
result UIDs, is what makes a crash produce each result exactly once.
"""

from __future__ import annotations

import json
from typing import Any

from listener.store.db import (
    BUSY_TIMEOUT_S,
    Connection,
    Database,
    DatabaseTarget,
    JournalTables,
)
from listener.store.job_rows import Job as Job  # re-exported
from listener.store.job_rows import Lease as Lease  # re-exported
from listener.store.ups import ALLOWED_TRANSITIONS as ALLOWED_TRANSITIONS  # re-exported
from listener.store.ups import JobState as JobState  # re-exported
from listener.store.ups import forbidden_transitions as forbidden_transitions  # re-exported

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
    lease_token INTEGER NOT NULL DEFAULT 0,
    waiting_for TEXT,
    retry_of INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, priority DESC, not_before);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);
CREATE TABLE IF NOT EXISTS job_events (
    /* rowid */
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id);
"""

# Columns added after the first release, for journals written before them.
_ADDED_COLUMNS = {
    "lease_token": "INTEGER NOT NULL DEFAULT 0",
    "waiting_for": "TEXT",
    "retry_of": "INTEGER",
}
_ERROR_CHARS, _EVENT_CHARS = 2000, 500
# A job is due: scheduled, waiting out a transient failure, or its runner's lease ran out.
_DUE = (
    "(state = ? AND not_before <= ?) OR (state = ? AND lease_owner IS NULL AND not_before <= ?)"
    " OR (state = ? AND lease_until < ?)"
)


def _due_args(now: float) -> tuple[str | float, ...]:
    scheduled, running = JobState.SCHEDULED.value, JobState.IN_PROGRESS.value
    return (scheduled, now, running, now, running, now)


class JobStore(JournalTables):
    """The job table in the journal database."""

    schema = _SCHEMA

    def __init__(self, path: DatabaseTarget, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        database = Database(path, busy_timeout_s=busy_timeout_s)
        with database.read() as db:
            columns = db.columns("jobs")
            # journals written before the column had the study's generation name
            if "episode" in columns:
                db.execute("ALTER TABLE jobs RENAME COLUMN episode TO generation")
            for name, declaration in _ADDED_COLUMNS.items():
                if columns and name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        database.close()
        super().__init__(path, busy_timeout_s=busy_timeout_s)

    def _event(
        self, db: Connection, job_id: int, now: float, state: str, detail: str | None
    ) -> None:
        db.execute(
            "INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)",
            (job_id, now, state, None if detail is None else detail[:_EVENT_CHARS]),
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
        retry_of: int | None = None,
    ) -> int:
        """Create the job unless one with the same key exists; return its id either way."""
        with self.db.transaction() as db:
            return self._schedule(
                db,
                (job_key, study_uid, generation, rule, task),
                json.dumps(payload, sort_keys=True),
                priority,
                now,
                max_attempts,
                retry_of,
            )

    def _schedule(
        self,
        db: Connection,
        identity: tuple[str, str, int, str, str],
        payload: str,
        priority: int,
        now: float,
        max_attempts: int,
        retry_of: int | None,
    ) -> int:
        row = db.execute("SELECT id FROM jobs WHERE job_key = ?", (identity[0],)).fetchone()
        if row is not None:
            return int(row["id"])
        cursor = db.execute(
            "INSERT INTO jobs (job_key, study_uid, generation, rule, task, payload, priority,"
            " state, max_attempts, not_before, retry_of, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                *identity,
                payload,
                priority,
                JobState.SCHEDULED.value,
                max_attempts,
                now,
                retry_of,
                now,
                now,
            ),
        )
        job_id = int(cursor.fetchone()[0])
        detail = None if retry_of is None else f"operator retry of job {retry_of}"
        self._event(db, job_id, now, JobState.SCHEDULED.value, detail)
        return job_id

    def due(self, now: float, limit: int) -> list[Job]:
        """The jobs a claim could take now, most urgent first (what the job engine queues)."""
        with self.db.read() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE {_DUE} ORDER BY priority DESC, not_before, id LIMIT ?",
                (*_due_args(now), limit),
            ).fetchall()
        return [Job.from_row(row) for row in rows]

    def claim(
        self, owner: str, now: float, lease_s: float, *, job_id: int | None = None
    ) -> Job | None:
        """Take the most urgent due job (highest priority, then oldest), or job ``job_id`` when
        it is due: a scheduled one, one waiting out a transient failure, or one whose runner's
        lease ran out. The claim counts an attempt and starts a new lease generation
        (``lease_token``)."""
        which, args = ("", ()) if job_id is None else (" AND id = ?", (job_id,))
        with self.db.transaction(serialized=False) as db:
            row = db.execute(
                f"SELECT id, state, lease_owner FROM jobs WHERE ({_DUE}){which}"
                f" ORDER BY priority DESC, not_before, id LIMIT 1{db.dialect.skip_locked}",
                (*_due_args(now), *args),
            ).fetchone()
            if row is None:
                return None
            claimed = db.execute(
                "UPDATE jobs SET state = ?, lease_owner = ?, lease_until = ?,"
                " lease_token = lease_token + 1, attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? RETURNING *",
                (JobState.IN_PROGRESS.value, owner, now + lease_s, now, row["id"]),
            ).fetchone()
            job = Job.from_row(claimed)
            taken = f" (lease of {row['lease_owner']} ran out)" if row["lease_owner"] else ""
            self._event(
                db,
                job.id,
                now,
                JobState.IN_PROGRESS.value,
                f"attempt {job.attempts} by {owner}{taken}",
            )
            return job

    def release_host(self, host: str, now: float) -> int:
        """Release the lease of every IN PROGRESS job held by a process of executor ``host``
        (owners are ``executor_id:pid``; the executor id is the host name by default) so it runs
        again now; used at start-up, when none of them can still be running. The jobs stay
        IN PROGRESS: UPS has no way back to SCHEDULED."""
        return self._release("LIKE", f"{host}:%", now, "lease released after crash")

    def release_owner(self, owner: str, now: float) -> int:
        """Release, the same way, the jobs of the process ``owner`` whose heartbeat stopped
        (:mod:`listener.store.executors`)."""
        return self._release("=", owner, now, "lease released: runner silent")

    def _release(self, match: str, owner: str, now: float, detail: str) -> int:
        with self.db.transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET not_before = ?, lease_owner = NULL, lease_until = NULL,"
                f" updated_at = ? WHERE state = ? AND lease_owner {match} ? RETURNING id",
                (now, now, JobState.IN_PROGRESS.value, owner),
            ).fetchall()
            for row in rows:
                self._event(db, row["id"], now, JobState.IN_PROGRESS.value, detail)
            return len(rows)

    @staticmethod
    def _fence(lease: Lease) -> tuple[str, tuple[Any, ...]]:
        return (
            " WHERE id = ? AND lease_owner = ? AND lease_token = ? AND state = ?",
            (lease.job_id, lease.owner, lease.token, JobState.IN_PROGRESS.value),
        )

    def renew(self, lease: Lease, until: float) -> bool:
        """Move the lease's expiry to ``until``; False when ``lease`` is no longer the job's
        (then the runner must stop: another runner or an operator has the job)."""
        where, args = self._fence(lease)
        with self.db.transaction() as db:
            cursor = db.execute(f"UPDATE jobs SET lease_until = ?{where}", (until, *args))
            return cursor.rowcount > 0

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` is still the job's current lease."""
        where, args = self._fence(lease)
        with self.db.read() as db:
            return db.execute(f"SELECT 1 FROM jobs{where}", args).fetchone() is not None

    def complete(self, lease: Lease, outputs: list[str], now: float) -> bool:
        """Mark the job COMPLETED with what it produced (result SOP Instance UIDs); False (and
        nothing changed) when ``lease`` is no longer the job's."""
        where, args = self._fence(lease)
        with self.db.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = ?, outputs = ?, last_error = NULL, waiting_for = NULL,"
                f" lease_owner = NULL, lease_until = NULL, updated_at = ?{where}",
                (JobState.COMPLETED.value, json.dumps(outputs), now, *args),
            ).rowcount
            if changed:
                self._event(db, lease.job_id, now, JobState.COMPLETED.value, None)
            return changed > 0

    def fail(
        self,
        lease: Lease,
        error: str,
        now: float,
        *,
        retry_at: float | None,
        waiting_for: str | None = None,
        counted: bool = True,
        max_age_s: float | None = None,
    ) -> JobState | None:
        """Record a failed attempt; the job's new state, or None when ``lease`` is no longer
        the job's (nothing changed).

        ``retry_at`` None: permanent, CANCELED now. Otherwise transient: the job stays
        IN PROGRESS, its lease released, runnable again at ``retry_at``, unless it is out of
        time or tries. ``waiting_for`` names the model the job waits for (an outage): such a
        job is retried until it is ``max_age_s`` old; any other transient failure until
        ``max_attempts``. ``counted`` False gives back the claim's attempt (no call reached the
        model: its circuit breaker failed the call fast).
        """
        where, args = self._fence(lease)
        with self.db.transaction() as db:
            row = db.execute(f"SELECT * FROM jobs{where}{db.dialect.for_update}", args).fetchone()
            if row is None:
                return None
            attempts = row["attempts"] - (0 if counted else 1)
            deadline = None if max_age_s is None else row["created_at"] + max_age_s
            if retry_at is None:
                state, cause = JobState.CANCELED, error
            elif waiting_for is not None and deadline is not None and now >= deadline:
                state = JobState.CANCELED
                waited = now - row["created_at"]
                cause = f"gave up after waiting {waited:.0f} s for {waiting_for}: {error}"
            elif waiting_for is None and attempts >= row["max_attempts"]:
                state, cause = JobState.CANCELED, f"gave up after {attempts} attempts: {error}"
            else:
                state, cause = JobState.IN_PROGRESS, error
                if deadline is not None and waiting_for is not None:
                    retry_at = min(retry_at, deadline)
            db.execute(
                "UPDATE jobs SET state = ?, attempts = ?, last_error = ?, waiting_for = ?,"
                " not_before = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ?",
                (
                    state.value,
                    attempts,
                    cause[:_ERROR_CHARS],
                    waiting_for,
                    now if retry_at is None else retry_at,
                    now,
                    lease.job_id,
                ),
            )
            note = cause if state is JobState.CANCELED else f"waiting: {cause}"
            self._event(db, lease.job_id, now, state.value, note)
            return state

    def retry(self, job_id: int, now: float) -> int | None:
        """Operator retry of a CANCELED job: a new SCHEDULED job (a new procedure step) with
        the same work, whose ``retry_of`` is ``job_id``; its id, or None when the job is not
        CANCELED. Retrying the same job again returns the same new job."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE id = ? AND state = ?", (job_id, JobState.CANCELED.value)
            ).fetchone()
            if row is None:
                return None
            new_id = self._schedule(
                db,
                (
                    f"{row['job_key']}#retry-of-{job_id}",
                    row["study_uid"],
                    row["generation"],
                    row["rule"],
                    row["task"],
                ),
                row["payload"],
                row["priority"],
                now,
                row["max_attempts"],
                job_id,
            )
            self._event(db, job_id, now, JobState.CANCELED.value, f"retried as job {new_id}")
            return new_id

    def cancel(self, job_id: int, now: float, reason: str = "operator cancel") -> bool:
        """Operator cancel of a job that has not finished; a runner holding it loses its lease
        (its next renew, complete or fail changes nothing)."""
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
