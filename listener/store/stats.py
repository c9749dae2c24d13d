"""Counts across the journal's tables for metrics and readiness, read in one snapshot.

Each table's schema belongs to its own module; this module only reads them, so the admin side
never writes SQL or spells a state: :func:`read_stats` for the Prometheus collector, and
:func:`overdue` and :func:`model_availability` for readiness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from listener.store.db import Connection, Database
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
    waiting_jobs: dict[str, int] = field(default_factory=dict)  # model -> jobs waiting for it
    models_down: dict[str, bool] = field(default_factory=dict)  # model -> breaker open


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
                "SELECT destination, SUM(CASE WHEN state = ? THEN 1 ELSE 0 END),"
                " SUM(CASE WHEN state = ? THEN 1 ELSE 0 END),"
                " SUM(attempts) - SUM(CASE WHEN state = ? THEN 1 ELSE 0 END)"
                " FROM outbox GROUP BY destination",
                (EntryState.SENT, EntryState.DEAD, EntryState.SENT),
            )
        ]
        stats.purged = [
            (str(kind), int(files), int(size))
            for kind, files, size in db.execute(
                "SELECT kind, SUM(files), SUM(bytes) FROM purges WHERE state = 'done' GROUP BY 1"
            )
        ]
        stats.waiting_jobs = _waiting_jobs(db)
        stats.models_down = {m: h[0] == _OPEN for m, h in _health(db).items()}
    return stats


_OPEN = "open"  # CircuitState.OPEN, as listener.infer.resilience records it


def _waiting_jobs(db: Connection) -> dict[str, int]:
    """Jobs IN PROGRESS that no runner holds because their model failed: per model."""
    return {
        str(model): int(n)
        for model, n in db.execute(
            "SELECT waiting_for, COUNT(*) FROM jobs WHERE state = ? AND lease_owner IS NULL"
            " AND waiting_for IS NOT NULL GROUP BY 1",
            (JobState.IN_PROGRESS,),
        )
    }


def _health(
    db: Connection,
) -> dict[str, tuple[str, float, float | None, str | None]]:
    """Model -> (breaker state, since, next probe, last error); empty before any job runner ran."""
    if not db.columns("model_health"):  # no job runner has recorded one yet
        return {}
    rows = db.execute(
        "SELECT model, state, since, next_probe_at, last_error FROM model_health"
    ).fetchall()
    return {str(r[0]): (str(r[1]), float(r[2]), r[3], r[4]) for r in rows}


@dataclass(frozen=True)
class ModelAvailability:
    """Whether a model is usable now, as the job runners' breakers last saw it."""

    model: str
    available: bool
    reason: str | None = None
    since: float | None = None
    next_probe_at: float | None = None
    waiting_jobs: int = 0


def model_availability(database: Database, models: Iterable[str]) -> list[ModelAvailability]:
    """Each of ``models`` (and any other with a record): unavailable while the breaker of the
    job runner that last called it is open, with the endpoint's last failure as the reason."""
    with database.snapshot() as db:
        health = _health(db)
        waiting = _waiting_jobs(db)
    out = []
    for model in dict.fromkeys([*models, *health]):
        state, since, probe, error = health.get(model, ("closed", None, None, None))
        down = state == _OPEN
        out.append(
            ModelAvailability(
                model,
                not down,
                reason=error if down else None,
                since=since if down else None,
                next_probe_at=probe if down else None,
                waiting_jobs=waiting.get(model, 0),
            )
        )
    return out


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
    progress past their lease, jobs due before ``job_before`` that no runner took (scheduled,
    or waiting out a transient failure), sends due before ``send_before``."""
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
                "SELECT COUNT(*) FROM jobs WHERE (state = ? OR (state = ? AND lease_owner IS NULL))"
                " AND not_before < ?",
                JobState.SCHEDULED,
                JobState.IN_PROGRESS,
                job_before,
            ),
            overdue_sends=count(
                "SELECT COUNT(*) FROM outbox WHERE state = ? AND next_attempt_at < ?",
                EntryState.PENDING,
                send_before,
            ),
        )
