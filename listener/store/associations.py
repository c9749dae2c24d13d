"""The journal's association records: who connected, when, how it ended, what it brought.

One row per accepted (or refused) association, written when it starts and when it ends, so the
metrics and the sender facts of the routing rules (PS3.8 §7.1.1: calling and called AE titles,
the peer's address) read the same record. The table is created with the journal's schema;
:class:`AssociationLog` is the part of :class:`~listener.store.journal.Journal` that writes it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from listener.store.db import Connection, Database


@dataclass
class AssociationRecord:
    """Counters of one association, written when it starts and when it ends."""

    id: str
    peer_host: str
    peer_port: int
    calling_ae: str
    called_ae: str
    started_at: float
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    error: str | None = None  # why the association was aborted, if it was


class AssociationLog:
    """The association records' methods of the journal (mixed into it)."""

    db: Database

    def _write(self) -> AbstractContextManager[Connection]:
        return self.db.transaction()

    def start_association(self, record: AssociationRecord) -> None:
        """Record an accepted association."""
        with self._write() as db:
            db.execute(
                "INSERT INTO associations (id, peer_host, peer_port, calling_ae, called_ae,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.peer_host,
                    record.peer_port,
                    record.calling_ae,
                    record.called_ae,
                    record.started_at,
                ),
            )

    def end_association(self, record: AssociationRecord, *, ended: str, now: float) -> None:
        """Record how an association ended (released, aborted) with its counters."""
        with self._write() as db:
            db.execute(
                "UPDATE associations SET ended_at = ?, duration_s = ?, received = ?, stored = ?,"
                " duplicates = ?, failed = ?, ended = ?, error = ? WHERE id = ?",
                (
                    now,
                    now - record.started_at,
                    record.received,
                    record.stored,
                    record.duplicates,
                    record.failed,
                    ended,
                    record.error,
                    record.id,
                ),
            )

    def close_open_associations(self, *, ended: str, now: float) -> int:
        """Mark associations left open by a crashed process as ended; return how many."""
        with self._write() as db:
            return db.execute(
                "UPDATE associations SET ended = ?, ended_at = ?, duration_s = ? - started_at"
                " WHERE ended IS NULL",
                (ended, now, now),
            ).rowcount

    def associations(self) -> list[dict[str, object]]:
        """Every association record, newest first, as plain dictionaries."""
        with self.db.read() as db:
            cursor = db.execute("SELECT * FROM associations ORDER BY started_at DESC")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
