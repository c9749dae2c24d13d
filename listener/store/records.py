"""Facts only the admin side needs, kept in the journal database so every process sees them.

- ``model_calls``: one row per model call (latency, outcome, attempts), written by the model
  transport through :class:`ModelCallRecorder`, read by the metrics at scrape time. Rows older
  than :data:`MODEL_CALLS_KEEP_S` are pruned as new ones arrive.
- ``rules_reloads``: each validated rules reload an operator asked for, with the rules'
  fingerprint; the dispatcher and job runners compare
  :meth:`AdminRecords.latest_rules_reload` with the fingerprint of the rules they run and
  reload when it differs.
- ``model_health``: the latest state of each model's circuit breaker, written by the job runner
  process whose breaker changed (:class:`ModelHealthRecorder`); a breaker lives in one process,
  and this row is how the admin process's readiness learns that a model is down, why, and when
  the next probe is due. The latest change wins: a breaker that closes anywhere means the
  endpoint answered.
- ``supervised``: each supervised process's quick exits in a row and its last error, written
  by the supervisor; ``/readyz`` is red while one is crash-looping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from listener.logging import get_logger
from listener.store.db import DatabaseError, JournalTables, upsert

MODEL_CALLS_KEEP_S = 7 * 24 * 3600.0
_PRUNE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    at REAL NOT NULL,
    duration_s REAL NOT NULL,
    outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS model_calls_model ON model_calls (model, outcome);
CREATE TABLE IF NOT EXISTS model_health (
    model TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    next_probe_at REAL,
    last_error TEXT,
    owner TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rules_reloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL,
    rule_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS supervised (
    name TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    exitcode INTEGER,
    last_error TEXT,
    at REAL NOT NULL
);
"""
# Quick exits in a row from which a supervised process counts as crash-looping.
CRASH_LOOP_FAILURES = 2

_log = get_logger("admin")


@dataclass(frozen=True)
class RulesReload:
    """One recorded rules reload request."""

    id: int
    at: float
    fingerprint: str
    source: str
    rule_count: int


class AdminRecords(JournalTables):
    """The two admin tables in the journal database at ``path`` ."""

    schema = _SCHEMA

    def record_model_call(
        self, model: str, *, at: float, duration_s: float, outcome: str, attempts: int
    ) -> None:
        """Record one finished model call; now and then drop rows past the keep period."""
        with self.db.transaction() as db:
            row_id = db.execute(
                "INSERT INTO model_calls (model, at, duration_s, outcome, attempts)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (model, at, duration_s, outcome, attempts),
            ).fetchone()[0]
            if row_id % _PRUNE_EVERY == 0:
                db.execute("DELETE FROM model_calls WHERE at < ?", (at - MODEL_CALLS_KEEP_S,))

    def record_model_health(
        self,
        model: str,
        *,
        state: str,
        at: float,
        next_probe_at: float | None,
        last_error: str | None,
        owner: str,
    ) -> None:
        """Record the new state of ``model``'s breaker (``since`` kept while it stays the same)."""
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO model_health (model, state, since, next_probe_at, last_error, owner,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
                " since = CASE WHEN model_health.state = excluded.state THEN model_health.since"
                " ELSE excluded.since END,"
                " state = excluded.state, next_probe_at = excluded.next_probe_at,"
                " last_error = excluded.last_error, owner = excluded.owner,"
                " updated_at = excluded.updated_at",
                (model, state, at, next_probe_at, last_error, owner, at),
            )

    def record_rules_reload(
        self, fingerprint: str, rule_count: int, *, source: str, now: float
    ) -> RulesReload:
        """Record that the dispatcher and job runners should run the rules with ``fingerprint``
        (already validated, :func:`listener.route.model.rules_fingerprint`) from now on."""
        with self.db.transaction() as db:
            row_id = db.execute(
                "INSERT INTO rules_reloads (at, fingerprint, source, rule_count)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (now, fingerprint, source, rule_count),
            ).fetchone()[0]
        return RulesReload(int(row_id), now, fingerprint, source, rule_count)

    def latest_rules_reload(self) -> RulesReload | None:
        """The most recent reload request, or None when nobody asked for one."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT id, at, fingerprint, source, rule_count FROM rules_reloads"
                " ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else RulesReload(*row)


@dataclass(frozen=True)
class SupervisedProcess:
    """A supervised process that exited: quick exits in a row, exit code, last error."""

    name: str
    failures: int
    exitcode: int | None
    last_error: str | None
    at: float


class SupervisedRecords(JournalTables):
    """The supervisor's record of its processes' exits, for ``/readyz``."""

    schema = _SCHEMA

    def clear(self) -> None:
        """Forget the previous run's processes (at supervisor start-up)."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM supervised")

    def record(self, process: SupervisedProcess) -> None:
        with self.db.transaction() as db:
            db.execute(
                upsert(
                    "supervised", ("name", "failures", "exitcode", "last_error", "at"), ["name"]
                ),
                (
                    process.name,
                    process.failures,
                    process.exitcode,
                    process.last_error,
                    process.at,
                ),
            )

    def crash_looping(self) -> list[SupervisedProcess]:
        """Processes with at least :data:`CRASH_LOOP_FAILURES` quick exits in a row."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT name, failures, exitcode, last_error, at FROM supervised"
                " WHERE failures >= ? ORDER BY name",
                (CRASH_LOOP_FAILURES,),
            ).fetchall()
        return [SupervisedProcess(*row) for row in rows]


def reload_requested(records: AdminRecords, current_fingerprint: str) -> bool:
    """Whether an operator asked for rules other than those with ``current_fingerprint`` (a
    process then reloads with :func:`listener.route.load.effective_rules`)."""
    latest = records.latest_rules_reload()
    return latest is not None and latest.fingerprint != current_fingerprint


class ModelCallRecorder:
    """The model transport's ``on_call`` hook: records each call in :class:`AdminRecords`.

    Pass it as ``build_clients(..., on_call=ModelCallRecorder(records))``. A failure to record
    is logged and swallowed: metrics must never fail a model call.
    """

    def __init__(self, records: AdminRecords, clock: Callable[[], float] = time.time) -> None:
        self._records = records
        self._clock = clock

    def __call__(self, model: str, duration_s: float, outcome: str, attempts: int) -> None:
        try:
            self._records.record_model_call(
                model, at=self._clock(), duration_s=duration_s, outcome=outcome, attempts=attempts
            )
        except DatabaseError as exc:
            _log.warning("model_call_not_recorded", model=model, error=str(exc))


class ModelHealthRecorder:
    """The model transport's ``on_health`` hook: records breaker changes in
    :class:`AdminRecords` (``owner`` names this process). A failure to record is logged and
    swallowed: readiness must never fail a model call."""

    def __init__(
        self, records: AdminRecords, owner: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._records = records
        self._owner = owner
        self._clock = clock

    def __call__(
        self, model: str, state: str, last_error: str | None, retry_in_s: float | None
    ) -> None:
        now = self._clock()
        try:
            self._records.record_model_health(
                model,
                state=state,
                at=now,
                next_probe_at=None if retry_in_s is None else now + retry_in_s,
                last_error=last_error,
                owner=self._owner,
            )
        except DatabaseError as exc:
            _log.warning("model_health_not_recorded", model=model, error=str(exc))
