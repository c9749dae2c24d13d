"""Counts across the journal's tables for metrics and readiness, read in one snapshot.

Each table's schema belongs to its own module; this module only reads them, so the admin side
never writes SQL or spells a state: :func:`read_stats` for the Prometheus collector, and
:func:`overdue` for readiness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from listener.store.db import Database
from listener.store.jobs import JobState
from listener.store.journal import StudyState
from listener.store.outbox import EntryState

STUDY_STATES = tuple(state.value for state in StudyState)
JOB_STATES = tuple(state.value for state in JobState)
OUTBOX_STATES = tuple(state.value for state in EntryState)


@dataclass
class Stats:
    """What the journal holds, as plain numbers (one consistent snapshot)."""

    instances: int = 0
    received_bytes: int = 0
    associations: dict[str, int] = field(default_factory=dict)
    completion_waits: list[float] = field(default_factory=list)
    studies: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    outbox: list[tuple[str, str, int]] = field(default_factory=list)
    model_calls: list[tuple[str, str, int]] = field(default_factory=list)
    model_durations: list[tuple[str, float]] = field(default_factory=list)
    sends: list[tuple[str, int, int, int]] = field(default_factory=list)  # dest, sent, dead, failed
    purged: list[tuple[str, int, int]] = field(default_factory=list)  # kind, files, bytes


def read_stats(database: Database) -> Stats:
    """Every count the metrics show, from one read transaction."""
    stats = Stats()
    with database.snapshot() as db:
        stats.instances, stats.received_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances"
        ).fetchone()
        stats.associations = {
            str(outcome): int(n)
            for outcome, n in db.execute(
                "SELECT COALESCE(ended, 'open'), COUNT(*) FROM associations GROUP BY 1"
            )
        }
        stats.completion_waits = [
            float(row[0])
            for row in db.execute(
                "SELECT released_at - last_received_at FROM studies WHERE released_at IS NOT NULL"
            )
        ]
        stats.studies = _by_state(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY 1"))
        stats.jobs = _by_state(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY 1"))
        stats.outbox = [
            (str(d), str(s), int(n))
            for d, s, n in db.execute(
                "SELECT destination, state, COUNT(*) FROM outbox GROUP BY 1, 2"
            )
        ]
        stats.model_calls = [
            (str(m), str(o), int(n))
            for m, o, n in db.execute(
                "SELECT model, outcome, COUNT(*) FROM model_calls GROUP BY 1, 2"
            )
        ]
        stats.model_durations = [
            (str(m), float(s)) for m, s in db.execute("SELECT model, duration_s FROM model_calls")
        ]
        stats.sends = [
            (str(d), int(sent), int(dead), int(failed))
            for d, sent, dead, failed in db.execute(
                "SELECT destination, SUM(state = ?), SUM(state = ?),"
                " SUM(attempts) - SUM(state = ?) FROM outbox GROUP BY destination",
                (EntryState.SENT, EntryState.DEAD, EntryState.SENT),
            )
        ]
        stats.purged = [
            (str(kind), int(files), int(size))
            for kind, files, size in db.execute(
                "SELECT kind, SUM(files), SUM(bytes) FROM purges WHERE state = 'done' GROUP BY 1"
            )
        ]
    return stats


def _by_state(rows: object) -> dict[str, int]:
    return {str(state): int(n) for state, n in rows}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Overdue:
    """Work overdue by more than its allowed lateness, per stage."""

    unreleased_studies: int
    expired_leases: int
    overdue_jobs: int
    overdue_sends: int


def overdue(
    database: Database,
    *,
    release_before: float,
    lease_before: float,
    job_before: float,
    send_before: float,
) -> Overdue:
    """Counts of overdue work: studies past their quiet period but not released, jobs in
    progress past their lease, scheduled jobs due before ``job_before``, sends due before
    ``send_before``."""
    with database.snapshot() as db:

        def count(sql: str, *params: object) -> int:
            return int(db.execute(sql, params).fetchone()[0])

        return Overdue(
            unreleased_studies=count(
                "SELECT COUNT(*) FROM studies WHERE state = ? AND due_at < ?",
                StudyState.RECEIVING,
                release_before,
            ),
            expired_leases=count(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND lease_until < ?",
                JobState.IN_PROGRESS,
                lease_before,
            ),
            overdue_jobs=count(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND not_before < ?",
                JobState.SCHEDULED,
                job_before,
            ),
            overdue_sends=count(
                "SELECT COUNT(*) FROM outbox WHERE state = ? AND next_attempt_at < ?",
                EntryState.PENDING,
                send_before,
            ),
        )
