"""The outbox queue: one durable entry per (destination, job, instance) in the journal database.

Each entry is one instance (file, SOP Instance UID) for one destination on behalf of one job. The
queue only stores and hands out entries; sending them is :mod:`listener.send.deliver`'s, which
records each outcome here: a confirmed instance is ``sent`` and never sent again; a transient
failure stays ``pending`` with a later ``next_attempt_at``; a permanent failure becomes ``dead``
with its reason, until an operator :meth:`Outbox.resubmit` s it.

Time is a parameter (``now``, seconds since the epoch). Entries are claimed before sending by
moving their ``next_attempt_at`` a lease ahead, in one transaction, so two deliverers never send the
same entry at once (on SQLite the write transaction excludes every other writer; on PostgreSQL
the claimed rows are locked, ``FOR UPDATE SKIP LOCKED``, and a deliverer that read them before
the claim committed re-checks them, finds them no longer due and skips them), and entries
claimed by a deliverer that died become due again when the lease runs out.
Enqueueing is idempotent: the same (destination, job, SOP instance) is one entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from listener.logging import get_logger
from listener.store.db import BUSY_TIMEOUT_S, Connection, DatabaseTarget, JournalTables, Row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    job_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    sent_at REAL,
    claimed_by TEXT,
    UNIQUE (destination, job_id, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);
"""

_log = get_logger("outbox")


class EntryState(StrEnum):
    """An outbox entry's state: waiting to be sent, confirmed by the peer, or given up."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


@dataclass(frozen=True)
class OutboxEntry:
    """One row of the outbox."""

    id: int
    destination: str
    job_id: str
    sop_instance_uid: str
    path: Path
    state: EntryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    sent_at: float | None
    enqueued_at: float = 0.0

    @classmethod
    def from_row(cls, row: Row) -> OutboxEntry:
        return cls(
            id=row["id"],
            destination=row["destination"],
            job_id=row["job_id"],
            sop_instance_uid=row["sop_instance_uid"],
            path=Path(row["path"]),
            state=EntryState(row["state"]),
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            sent_at=row["sent_at"],
            enqueued_at=row["enqueued_at"],
        )


@dataclass(frozen=True)
class Enqueue:
    """One instance to queue for a destination on behalf of a job."""

    destination: str
    path: Path
    sop_instance_uid: str
    job_id: str


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed entry: ``sent``, ``retry`` at ``next_attempt_at``, or ``dead``."""

    entry: OutboxEntry
    state: str
    attempts: int
    next_attempt_at: float = 0.0
    error: str | None = None


class Outbox(JournalTables):
    """The outbox table in the journal database at ``path``.

    ``destinations``, when given, are the names entries may be queued for: a name outside them
    is refused at once (a typo must not become a dead letter hours later).
    """

    schema = _SCHEMA

    def __init__(
        self,
        path: DatabaseTarget,
        destinations: Iterable[str] | None = None,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        with self.db.read() as db:
            if "claimed_by" not in db.columns("outbox"):  # journals written before the column
                db.execute("ALTER TABLE outbox ADD COLUMN claimed_by TEXT")
        self.destinations = None if destinations is None else set(destinations)

    def enqueue(
        self, destination: str, path: Path, sop_instance_uid: str, job_id: str | int, now: float
    ) -> bool:
        """Queue one instance for ``destination``; False when that job already queued it."""
        return (
            self.enqueue_many([Enqueue(destination, path, sop_instance_uid, str(job_id))], now) == 1
        )

    def enqueue_many(self, items: Iterable[Enqueue], now: float) -> int:
        """Queue several instances in one transaction; return how many were new."""
        items = list(items)
        for item in items:
            if self.destinations is not None and item.destination not in self.destinations:
                raise ValueError(f"unknown destination {item.destination!r}")
        with self.db.transaction() as db:
            return sum(
                db.execute(
                    "INSERT INTO outbox (destination, job_id, sop_instance_uid, path,"
                    " state, next_attempt_at, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (
                        item.destination,
                        item.job_id,
                        item.sop_instance_uid,
                        str(item.path),
                        EntryState.PENDING,
                        now,
                        now,
                    ),
                ).rowcount
                for item in items
            )

    def due_destinations(self, now: float) -> list[str]:
        """The destinations with an entry due at ``now``."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT DISTINCT destination FROM outbox WHERE state = ? AND next_attempt_at <= ?"
                " ORDER BY destination",
                (EntryState.PENDING, now),
            ).fetchall()
        return [row[0] for row in rows]

    def claim(
        self,
        now: float,
        *,
        batch_size: int,
        lease_s: float,
        owner: str | None = None,
        destination: str | None = None,
    ) -> dict[str, list[OutboxEntry]]:
        """Take the due entries (of ``destination`` only, when given), at most ``batch_size``
        per destination, under a lease: their ``next_attempt_at`` moves ``lease_s`` ahead, so two
        senders never send one entry at once and the entries of a sender that died become due
        again when the lease runs out, or at once when the sweeper finds its ``owner`` silent
        (:meth:`release_owner`)."""
        which, args = ("", ()) if destination is None else (" AND destination = ?", (destination,))
        with self.db.transaction(serialized=False) as db:
            rows = db.execute(
                f"SELECT * FROM outbox WHERE state = ? AND next_attempt_at <= ?{which}"
                f" ORDER BY destination, id{db.dialect.skip_locked}",
                (EntryState.PENDING, now, *args),
            ).fetchall()
            due: dict[str, list[OutboxEntry]] = {}
            for row in rows:
                batch = due.setdefault(row["destination"], [])
                if len(batch) < batch_size:
                    batch.append(OutboxEntry.from_row(row))
            claimed = [(now + lease_s, owner, e.id) for batch in due.values() for e in batch]
            db.executemany(
                "UPDATE outbox SET next_attempt_at = ?, claimed_by = ? WHERE id = ?", claimed
            )
        return due

    def record(self, outcomes: Iterable[Outcome], now: float) -> None:
        """Record the outcomes of claimed entries, in one transaction."""
        with self.db.transaction() as db:
            for outcome in outcomes:
                self._record_one(db, outcome, now)

    @staticmethod
    def _record_one(db: Connection, outcome: Outcome, now: float) -> None:
        entry = outcome.entry
        if outcome.state == "sent":
            db.execute(
                "UPDATE outbox SET state = ?, sent_at = ?, last_error = NULL,"
                " attempts = ? WHERE id = ?",
                (EntryState.SENT, now, outcome.attempts, entry.id),
            )
        elif outcome.state == "retry":
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (outcome.attempts, outcome.next_attempt_at, outcome.error, entry.id),
            )
        else:
            db.execute(
                "UPDATE outbox SET state = ?, attempts = ?, last_error = ? WHERE id = ?",
                (EntryState.DEAD, outcome.attempts, outcome.error, entry.id),
            )

    def dead_letters(
        self, destination: str | None = None, job_id: str | int | None = None
    ) -> list[OutboxEntry]:
        """Entries in the dead-letter state, optionally of one destination or job."""
        return self.entries(EntryState.DEAD, destination=destination, job_id=job_id)

    def entries(
        self,
        state: EntryState | None = None,
        *,
        destination: str | None = None,
        job_id: str | int | None = None,
    ) -> list[OutboxEntry]:
        """Entries filtered by state, destination and job, oldest first."""
        clauses, params = [], []
        for column, value in (("state", state), ("destination", destination), ("job_id", job_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(str(value))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        with self.db.read() as db:
            rows = db.execute(f"SELECT * FROM outbox{where} ORDER BY id", params).fetchall()
        return [OutboxEntry.from_row(row) for row in rows]

    def entries_of_study(self, study_uid: str) -> list[OutboxEntry]:
        """Entries whose file lies in a folder named after the study: its results
        (``results/<study>/``) and its forwarded originals (``spool/<study>/...``)."""
        with self.db.read() as db:
            rows = db.execute(
                f"SELECT * FROM outbox WHERE {db.dialect.instr}(path, ?) > 0 ORDER BY id",
                (f"/{study_uid}/",),
            ).fetchall()
        return [OutboxEntry.from_row(row) for row in rows]

    def queued_to(self, destination: str, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of these instances already have an entry for ``destination`` that is pending or
        sent (on behalf of any job): sending them again would only duplicate them there."""
        wanted = set(sop_instance_uids)
        with self.db.read() as db:
            rows = db.execute(
                "SELECT DISTINCT sop_instance_uid FROM outbox WHERE destination = ?"
                " AND state IN (?, ?)",
                (destination, EntryState.PENDING, EntryState.SENT),
            ).fetchall()
        return {str(row[0]) for row in rows} & wanted

    def release_claims(self, now: float) -> int:
        """Make every pending entry due now: at start-up, entries a crashed sender had claimed
        (and any waiting out a backoff) are tried again at once. Returns how many changed."""
        with self.db.transaction() as db:
            return db.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE state = ? AND next_attempt_at > ?",
                (now, EntryState.PENDING, now),
            ).rowcount

    def release_owner(self, owner: str, now: float) -> int:
        """Make the pending entries claimed by the sender ``owner`` due now: it went silent (see
        :mod:`listener.store.executors`). An entry it sent before dying but could not record
        goes again with the same SOP Instance UID, which the peer stores once."""
        with self.db.transaction() as db:
            return db.execute(
                "UPDATE outbox SET next_attempt_at = ?, claimed_by = NULL"
                " WHERE state = ? AND claimed_by = ? AND next_attempt_at > ?",
                (now, EntryState.PENDING, owner, now),
            ).rowcount

    def resubmit(self, entries: Iterable[OutboxEntry | int], now: float) -> int:
        """Put dead letters back in the queue, due at ``now`` with a fresh attempt count (and
        ``enqueued_at`` = ``now``, so the sender's age limit counts from the resubmission)."""
        ids = [e.id if isinstance(e, OutboxEntry) else int(e) for e in entries]
        with self.db.transaction() as db:
            changed = 0
            for entry_id in ids:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?,"
                    " enqueued_at = ? WHERE id = ? AND state = ?",
                    (EntryState.PENDING, now, now, entry_id, EntryState.DEAD),
                )
                changed += cursor.rowcount
        _log.info("outbox_resubmitted", count=changed)
        return changed

    def counts(self, job_id: str | int | None = None) -> dict[str, int]:
        """Number of entries per state, of one job or of all."""
        where, params = ("WHERE job_id = ?", [str(job_id)]) if job_id is not None else ("", [])
        with self.db.read() as db:
            rows = db.execute(
                f"SELECT state, COUNT(*) AS n FROM outbox {where} GROUP BY state", params
            ).fetchall()
        return {row["state"]: row["n"] for row in rows}
