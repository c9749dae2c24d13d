"""Conflicts: a known SOP Instance UID received again with other content.

The stored file is never replaced (PS3.4 B.4.1 leaves a duplicate's handling to the SCP; what
was acknowledged first stays); the newcomer is kept in the quarantine and journaled here, for an
operator to judge. The table is created with the journal's schema; :class:`ConflictLog` is the
part of :class:`~listener.store.journal.Journal` that writes and reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.store.db import Database


@dataclass(frozen=True)
class InstanceConflict:
    """A known SOP Instance UID received again with other content, kept in the quarantine."""

    sop_instance_uid: str
    received_at: float
    association_id: str | None
    size: int
    digest: str
    stored_digest: str | None
    quarantine_file: str


class ConflictLog:
    """The conflict records' methods of the journal (mixed into it)."""

    db: Database

    def record_conflict(self, conflict: InstanceConflict) -> None:
        """Journal a known SOP Instance UID received with other content (kept in quarantine)."""
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO instance_conflicts (sop_instance_uid, received_at, association_id,"
                " size, digest, stored_digest, quarantine_file) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    conflict.sop_instance_uid,
                    conflict.received_at,
                    conflict.association_id,
                    conflict.size,
                    conflict.digest,
                    conflict.stored_digest,
                    conflict.quarantine_file,
                ),
            )

    def conflicts(self) -> list[InstanceConflict]:
        """Every journaled conflict, oldest first."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT sop_instance_uid, received_at, association_id, size, digest,"
                " stored_digest, quarantine_file FROM instance_conflicts ORDER BY id"
            ).fetchall()
        return [InstanceConflict(*row) for row in rows]
