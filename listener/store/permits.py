"""Request permits: how many requests each model endpoint has in flight from the whole gateway.

A model's ``concurrency`` is the most requests its endpoint may have in flight at once from every
process on every host that shares the journal. Each request (each attempt of it) holds one
permit, a row of ``model_permits``, while it is on the wire, and gives it back when its answer
is in: so a job may send several requests at once (a CT's segmentation batches) when the
endpoint has room, and the limit still holds however many jobs and job runners share it.

Slots ``0 .. concurrency-1`` of a model are the permits; a taken slot names its holder (the
process's lease owner name, :mod:`listener.store.executors`) and when it lapses. A permit lapses
after the request's own deadline and a margin, so a process killed with a request in flight
frees its permits without anyone's help; the sweeper frees a silent process's permits at once
(:meth:`ModelPermits.release_owner`). The claim is one ``UPDATE``: on SQLite statements take the
write lock one at a time, and on PostgreSQL the second of two claims of one slot re-reads the row
after the first commits and finds it taken, so no slot is ever held twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.store.db import (
    BUSY_TIMEOUT_S,
    Database,
    DatabaseTarget,
    JournalTables,
    MissingTableError,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_permits (
    model TEXT NOT NULL,
    slot INTEGER NOT NULL,
    holder TEXT,
    expires_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (model, slot)
);
"""

_FREE = "(holder IS NULL OR expires_at < ?)"


@dataclass(frozen=True)
class Permit:
    """One taken slot of a model's permits."""

    model: str
    slot: int
    holder: str


class ModelPermits(JournalTables):
    """The ``model_permits`` table (see the module docstring)."""

    schema = _SCHEMA

    def __init__(self, target: DatabaseTarget, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        super().__init__(target, busy_timeout_s=busy_timeout_s)
        self._slots: dict[str, int] = {}  # slots known to exist, per model

    def _ensure_slots(self, model: str, limit: int) -> None:
        if self._slots.get(model, 0) >= limit:
            return
        with self.db.transaction() as db:
            for slot in range(limit):
                db.execute(
                    "INSERT INTO model_permits (model, slot) VALUES (?, ?)"
                    " ON CONFLICT (model, slot) DO NOTHING",
                    (model, slot),
                )
        self._slots[model] = limit

    def try_acquire(
        self, model: str, limit: int, holder: str, now: float, lease_s: float
    ) -> Permit | None:
        """Take a free slot among ``model``'s first ``limit`` for ``holder`` until
        ``now + lease_s``; None when all of them are held."""
        self._ensure_slots(model, limit)
        with self.db.read() as db:
            row = db.execute(
                "UPDATE model_permits SET holder = ?, expires_at = ?"
                f" WHERE model = ? AND {_FREE} AND slot = ("
                f"  SELECT slot FROM model_permits WHERE model = ? AND slot < ? AND {_FREE}"
                "  ORDER BY slot LIMIT 1)"
                " RETURNING slot",
                (holder, now + lease_s, model, now, model, limit, now),
            ).fetchone()
        return None if row is None else Permit(model, int(row[0]), holder)

    def release(self, permit: Permit) -> None:
        """Give ``permit`` back (nothing happens when it lapsed and another holder took it)."""
        with self.db.read() as db:
            db.execute(
                "UPDATE model_permits SET holder = NULL, expires_at = 0"
                " WHERE model = ? AND slot = ? AND holder = ?",
                (permit.model, permit.slot, permit.holder),
            )

    def release_owner(self, holder: str) -> int:
        """Free every permit ``holder`` holds (a process gone silent); how many."""
        with self.db.read() as db:
            cursor = db.execute(
                "UPDATE model_permits SET holder = NULL, expires_at = 0 WHERE holder = ?",
                (holder,),
            )
            return cursor.rowcount

    def release_host(self, executor_id: str) -> int:
        """Free every permit held by a process of ``executor_id`` (at its start-up, when none of
        them can still be running); how many."""
        with self.db.read() as db:
            cursor = db.execute(
                "UPDATE model_permits SET holder = NULL, expires_at = 0 WHERE holder LIKE ?",
                (f"{executor_id}:%",),
            )
            return cursor.rowcount

    def held(self, model: str, now: float) -> int:
        """How many of ``model``'s permits are held at ``now``."""
        return requests_in_flight(self.db, now).get(model, 0)


def requests_in_flight(database: Database, now: float) -> dict[str, int]:
    """The permits held at ``now`` per model, for the metrics (empty before any job runner made
    the table)."""
    try:
        with database.read() as db:
            rows = db.execute(
                "SELECT model, COUNT(*) FROM model_permits WHERE holder IS NOT NULL"
                " AND expires_at >= ? GROUP BY model",
                (now,),
            ).fetchall()
    except MissingTableError:
        return {}
    return {str(model): int(count) for model, count in rows}
