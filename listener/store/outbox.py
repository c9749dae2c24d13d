"""A durable outbox per destination, in the journal's SQLite database.

Each entry is one instance (file, SOP Instance UID) for one destination on behalf of one job.
:meth:`Outbox.deliver_due` sends what is due, destination by destination in parallel, and records
each outcome: a confirmed instance is ``sent`` and never sent again; a transient failure stays
``pending`` with an exponentially growing ``next_attempt_at``; a permanent failure becomes
``dead`` with its reason, until an operator :meth:`Outbox.resubmit` s it.

Time is a parameter (``now``, seconds since the epoch). Entries are claimed before sending by
moving their ``next_attempt_at`` a lease ahead, in one transaction, so two workers never send the
same entry at once, and entries claimed by a worker that died become due again when the lease
runs out. Enqueueing is idempotent: the same (destination, job, SOP instance) is one entry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from listener.errors import PermanentSendError, TransientSendError
from listener.logging import get_logger
from listener.route import Destination
from listener.send.scu import InstanceOutcome, StoreItem, StoreSender
from listener.store.db import JournalTables

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
    UNIQUE (destination, job_id, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);
"""

_log = get_logger("outbox")


class EntryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff for transient failures: ``base_s * factor**(attempts-1)``, capped.

    ``max_attempts`` (None: never give up) moves an entry to dead-letter after that many
    transient failures in a row.
    """

    base_s: float = 5.0
    factor: float = 2.0
    max_s: float = 900.0
    max_attempts: int | None = None

    def delay(self, attempts: int) -> float:
        return float(min(self.max_s, self.base_s * self.factor ** max(attempts - 1, 0)))


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxEntry:
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
        )


@dataclass
class DeliveryReport:
    """Counts of one :meth:`Outbox.deliver_due` call, per destination."""

    sent: dict[str, int] = field(default_factory=dict)
    retrying: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)

    def add(self, destination: str, state: str) -> None:
        counter = {"sent": self.sent, "retrying": self.retrying, "dead": self.dead}[state]
        counter[destination] = counter.get(destination, 0) + 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())


class Outbox(JournalTables):
    """The per-destination outbox in the journal database at ``path``."""

    schema = _SCHEMA

    def __init__(
        self,
        path: Path,
        destinations: Mapping[str, Destination],
        sender: StoreSender,
        backoff: Backoff | None = None,
        *,
        batch_size: int = 500,
        lease_s: float = 600.0,
        busy_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self.destinations = dict(destinations)
        self.sender = sender
        self.backoff = backoff or Backoff()
        self.batch_size = batch_size
        self.lease_s = lease_s

    def enqueue(
        self, destination: str, path: Path, sop_instance_uid: str, job_id: str | int, now: float
    ) -> bool:
        """Queue one instance for ``destination``; False when that job already queued it."""
        if destination not in self.destinations:
            raise ValueError(f"unknown destination {destination!r}")
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (destination, job_id, sop_instance_uid, path, state,"
                " next_attempt_at, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    destination,
                    str(job_id),
                    sop_instance_uid,
                    str(path),
                    EntryState.PENDING,
                    now,
                    now,
                ),
            )
            return cursor.rowcount == 1

    def _claim(self, now: float) -> dict[str, list[OutboxEntry]]:
        """Take the due entries, at most ``batch_size`` per destination, under a lease."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT * FROM outbox WHERE state = ? AND next_attempt_at <= ?"
                " ORDER BY destination, id",
                (EntryState.PENDING, now),
            ).fetchall()
            due: dict[str, list[OutboxEntry]] = {}
            for row in rows:
                batch = due.setdefault(row["destination"], [])
                if len(batch) < self.batch_size:
                    batch.append(OutboxEntry.from_row(row))
            claimed = [(now + self.lease_s, e.id) for batch in due.values() for e in batch]
            db.executemany("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", claimed)
            db.execute("COMMIT")
        return due

    def deliver_due(self, now: float) -> DeliveryReport:
        """Send every due entry, all destinations in parallel, and record each outcome."""
        report = DeliveryReport()
        due = self._claim(now)
        if not due:
            return report
        with ThreadPoolExecutor(max_workers=len(due)) as pool:
            futures = {
                name: pool.submit(self._send, name, entries) for name, entries in due.items()
            }
            for name, future in futures.items():
                self._record(name, due[name], future.result(), now, report)
        return report

    def _send(self, name: str, entries: list[OutboxEntry]) -> list[InstanceOutcome]:
        dest = self.destinations.get(name)
        items = [StoreItem(e.path, e.sop_instance_uid) for e in entries]
        if dest is None:
            error = PermanentSendError(f"destination {name!r} is not configured any more")
            return [InstanceOutcome(item, error) for item in items]
        return self.sender.send(dest, items)

    def _record(
        self,
        name: str,
        entries: list[OutboxEntry],
        outcomes: list[InstanceOutcome],
        now: float,
        report: DeliveryReport,
    ) -> None:
        by_item = {(o.item.path, o.item.sop_instance_uid): o for o in outcomes}
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for entry in entries:
                outcome = by_item.get((entry.path, entry.sop_instance_uid))
                if outcome is None:
                    outcome = InstanceOutcome(
                        StoreItem(entry.path, entry.sop_instance_uid),
                        TransientSendError("no outcome reported"),
                    )
                report.add(name, self._record_one(db, entry, outcome, now))
            db.execute("COMMIT")
        _log.info(
            "outbox_delivered",
            destination=name,
            sent=report.sent.get(name, 0),
            retrying=report.retrying.get(name, 0),
            dead=report.dead.get(name, 0),
        )

    def _record_one(
        self, db: sqlite3.Connection, entry: OutboxEntry, outcome: InstanceOutcome, now: float
    ) -> str:
        if outcome.confirmed:
            db.execute(
                "UPDATE outbox SET state = ?, sent_at = ?, last_error = NULL,"
                " attempts = attempts + 1 WHERE id = ?",
                (EntryState.SENT, now, entry.id),
            )
            return "sent"
        attempts = entry.attempts + 1
        give_up = self.backoff.max_attempts is not None and attempts >= self.backoff.max_attempts
        if outcome.transient and not give_up:
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (attempts, now + self.backoff.delay(attempts), str(outcome.error), entry.id),
            )
            return "retrying"
        reason = str(outcome.error)
        if outcome.transient:
            reason = f"gave up after {attempts} attempts: {reason}"
        db.execute(
            "UPDATE outbox SET state = ?, attempts = ?, last_error = ? WHERE id = ?",
            (EntryState.DEAD, attempts, reason, entry.id),
        )
        _log.warning(
            "outbox_dead_letter",
            destination=entry.destination,
            job_id=entry.job_id,
            sop_instance_uid=entry.sop_instance_uid,
            reason=reason,
        )
        return "dead"

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
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM outbox{where} ORDER BY id", params).fetchall()
        return [OutboxEntry.from_row(row) for row in rows]

    def release_claims(self, now: float) -> int:
        """Make every pending entry due now: at start-up, entries a crashed sender had claimed
        (and any waiting out a backoff) are tried again at once. Returns how many changed."""
        with self._connect() as db:
            return db.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE state = ? AND next_attempt_at > ?",
                (now, EntryState.PENDING, now),
            ).rowcount

    def resubmit(self, entries: Iterable[OutboxEntry | int], now: float) -> int:
        """Put dead letters back in the queue, due at ``now`` with a fresh attempt count."""
        ids = [e.id if isinstance(e, OutboxEntry) else int(e) for e in entries]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            changed = 0
            for entry_id in ids:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?"
                    " WHERE id = ? AND state = ?",
                    (EntryState.PENDING, now, entry_id, EntryState.DEAD),
                )
                changed += cursor.rowcount
            db.execute("COMMIT")
        _log.info("outbox_resubmitted", count=changed)
        return changed

    def counts(self, job_id: str | int | None = None) -> dict[str, int]:
        """Number of entries per state, of one job or of all."""
        where, params = ("WHERE job_id = ?", [str(job_id)]) if job_id is not None else ("", [])
        with self._connect() as db:
            rows = db.execute(
                f"SELECT state, COUNT(*) AS n FROM outbox {where} GROUP BY state", params
            ).fetchall()
        return {row["state"]: row["n"] for row in rows}
