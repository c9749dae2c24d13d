"""The journal: what has been received, each study's quiet-period timer and state.

The journal is the hand-over point between the receive processes and the dispatcher (they never
share memory), in SQLite or PostgreSQL (:mod:`listener.store.db`). On SQLite it runs in WAL mode
with ``synchronous=NORMAL``: a commit is not fsynced, but the
spool file it describes was fsynced before the C-STORE was answered, and :meth:`Journal.reconcile`
re-indexes any spool file the journal lost (power failure) at start-up. A process crash (kill -9)
loses nothing either way, because WAL pages are written to the OS before the commit returns.

Study life cycle (see ``listener/assemble.py`` for the timer rules)::

    receiving --(quiet period over)--> ready --(route took it)--> dispatched
        ^                                                               |
        +---------------- a later instance opens a follow-up -----------+

Each study carries a ``generation``: 0 for the first release, 1 for the first follow-up, and so on;
every instance records the generation it arrived in.

Every instance also records the association that brought it (``instances.association_id``), and
that association its peer's address and both AE titles, so the routing rules judge each instance
by its own sender (:meth:`Journal.senders`), whichever of a study's associations brought it. The
spool file keeps the same facts in its file meta information, so an instance re-indexed after a
power failure gets them back (:func:`~listener.store.spool.reindex`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from listener.store.associations import AssociationLog
from listener.store.associations import AssociationRecord as AssociationRecord  # re-exported
from listener.store.conflicts import ConflictLog
from listener.store.conflicts import InstanceConflict as InstanceConflict  # re-exported
from listener.store.db import Connection, Database, DatabaseError, DatabaseTarget

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    quiet_period_s REAL NOT NULL,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    due_at REAL NOT NULL,
    released_at REAL,
    calling_ae TEXT,
    called_ae TEXT,
    patient_id TEXT,
    patient_name TEXT
);
CREATE INDEX IF NOT EXISTS studies_due ON studies (state, due_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    generation INTEGER NOT NULL,
    association_id TEXT,
    digest TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, series_uid);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    peer_host TEXT NOT NULL,
    peer_port INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    duration_s REAL,
    received INTEGER NOT NULL DEFAULT 0,
    stored INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    ended TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS instance_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    received_at REAL NOT NULL,
    association_id TEXT,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    stored_digest TEXT,
    quarantine_file TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_uid TEXT,
    state TEXT NOT NULL,
    paths TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL
);
"""
# Columns added after the first release: (table, column, type), added to older journals.
_ADDED_COLUMNS = (("instances", "digest", "TEXT"), ("associations", "error", "TEXT"))


class StudyState(StrEnum):
    """Where a study is in the assemble stage."""

    RECEIVING = "receiving"
    READY = "ready"
    DISPATCHED = "dispatched"


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance: identifiers, where its file is, when and how it came."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str | None
    transfer_syntax: str
    path: str
    size: int
    received_at: float
    generation: int
    association_id: str | None = None
    digest: str | None = None  # SHA-256 of the spool file, hex


@dataclass(frozen=True)
class StudyInfo:
    """A study's row: state, timer, counts (patient fields only for explicit display)."""

    study_uid: str
    state: StudyState
    generation: int
    first_received_at: float
    last_received_at: float
    due_at: float
    released_at: float | None
    calling_ae: str | None
    called_ae: str | None
    instance_count: int
    series_count: int
    patient_id: str | None = None
    patient_name: str | None = None


@dataclass(frozen=True)
class ReleasedStudy:
    """A study whose quiet period ended: handed to the route stage exactly once per generation.

    ``generation`` 0 is the first release; a higher one is a follow-up holding late instances
    (``new_instances`` of ``instance_count`` arrived in this generation).
    """

    study_uid: str
    generation: int
    released_at: float
    instance_count: int
    new_instances: int
    calling_ae: str | None
    called_ae: str | None


@dataclass(frozen=True)
class Sender:
    """Who sent one instance: the association's calling and called AE titles and the peer's IP
    address (PS3.8 §7.1.1); None where the journal does not know it."""

    calling_ae: str | None
    called_ae: str | None
    peer_host: str | None


class Journal(AssociationLog, ConflictLog):
    """Thread-safe access to the journal file; one instance per process.

    Every method that changes state runs in one ``BEGIN IMMEDIATE`` transaction, so several
    processes (receivers, the dispatcher) can share the file.
    """

    def __init__(self, path: DatabaseTarget, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.db = Database(path, busy_timeout_s=busy_timeout_s)
        with self.db.read() as db:
            db.executescript(SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                if column not in db.columns(table):
                    with contextlib.suppress(DatabaseError):  # added by another process
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    def _write(self) -> AbstractContextManager[Connection]:
        return self.db.transaction()

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self.db.read() as db:
            return list(db.execute(sql, params).fetchall())

    # --- instances -----------------------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID is already stored."""
        rows = self._read("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return bool(rows)

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The stored instance with this SOP Instance UID, or None."""
        rows = self._read("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return InstanceRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def record_instance(
        self,
        record: InstanceRecord,
        *,
        quiet_period_s: float,
        calling_ae: str | None = None,
        called_ae: str | None = None,
        patient_id: str | None = None,
        patient_name: str | None = None,
    ) -> bool:
        """Record a stored instance and (re)start its study's quiet period; False if a duplicate.

        The study's timer becomes ``received_at + quiet_period_s``. An instance for a study that
        was already released opens a follow-up: the study's generation goes up by one and it is
        receiving again, so it will be released once more with the late instances marked.
        """
        now = record.received_at
        due = now + quiet_period_s
        with self._write() as db:
            if db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (record.sop_instance_uid,)
            ).fetchone():
                return False
            row = db.execute(  # locked: a dispatcher's release (a claim) waits or passes over it
                f"SELECT state, generation, due_at FROM studies WHERE study_uid = ?"
                f"{db.dialect.for_update}",
                (record.study_uid,),
            ).fetchone()
            if row is None:
                generation = 0
                db.execute(
                    "INSERT INTO studies (study_uid, state, generation, quiet_period_s,"
                    " first_received_at, last_received_at, due_at, calling_ae, called_ae,"
                    " patient_id, patient_name) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.study_uid,
                        StudyState.RECEIVING,
                        quiet_period_s,
                        now,
                        now,
                        due,
                        calling_ae,
                        called_ae,
                        patient_id,
                        patient_name,
                    ),
                )
            else:
                state, generation, due_at = row
                if state != StudyState.RECEIVING:
                    generation += 1
                else:
                    due = max(due, due_at)
                db.execute(
                    "UPDATE studies SET state = ?, generation = ?, quiet_period_s = ?,"
                    f" last_received_at = {db.dialect.greatest}(last_received_at, ?), due_at = ?"
                    " WHERE study_uid = ?",
                    (StudyState.RECEIVING, generation, quiet_period_s, now, due, record.study_uid),
                )
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sop_instance_uid,
                    record.sop_class_uid,
                    record.study_uid,
                    record.series_uid,
                    record.modality,
                    record.transfer_syntax,
                    record.path,
                    record.size,
                    now,
                    generation,
                    record.association_id,
                    record.digest,
                ),
            )
        return True

    def instances(
        self, study_uid: str, *, series_uid: str | None = None, generation: int | None = None
    ) -> list[InstanceRecord]:
        """The stored instances of a study (optionally one series or one generation)."""
        sql = "SELECT * FROM instances WHERE study_uid = ?"
        params: list[object] = [study_uid]
        if series_uid is not None:
            sql += " AND series_uid = ?"
            params.append(series_uid)
        if generation is not None:
            sql += " AND generation = ?"
            params.append(generation)
        rows = self._read(sql + " ORDER BY series_uid, received_at", tuple(params))
        return [InstanceRecord(*row) for row in rows]  # type: ignore[arg-type]

    def senders(self, study_uid: str) -> dict[str, Sender]:
        """Each instance's sender, by SOP Instance UID (every association that contributed).

        An instance with no association record (journaled before associations were, or by a
        caller that has none) falls back to the study's first AE titles, with no address.
        """
        rows = self._read(
            "SELECT i.sop_instance_uid, a.calling_ae, a.called_ae, a.peer_host,"
            " s.calling_ae, s.called_ae FROM instances i"
            " JOIN studies s ON s.study_uid = i.study_uid"
            " LEFT JOIN associations a ON a.id = i.association_id WHERE i.study_uid = ?",
            (study_uid,),
        )
        out = {}
        for uid, calling, called, peer, study_calling, study_called in rows:
            if peer is None:
                calling, called = study_calling, study_called
            out[str(uid)] = Sender(
                *(None if v is None else str(v) for v in (calling, called, peer))
            )
        return out

    def known_paths(self) -> set[str]:
        """The spool paths (relative to the spool root) of every recorded instance."""
        return {str(row[0]) for row in self._read("SELECT path FROM instances")}

    # --- studies -------------------------------------------------------------------------------

    _STUDY_SQL = (
        "SELECT s.study_uid, s.state, s.generation, s.first_received_at, s.last_received_at,"
        " s.due_at, s.released_at, s.calling_ae, s.called_ae,"
        " (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid),"
        " (SELECT COUNT(DISTINCT series_uid) FROM instances i WHERE i.study_uid = s.study_uid),"
        " s.patient_id, s.patient_name FROM studies s"
    )

    def studies(self) -> list[StudyInfo]:
        """Every study the journal holds, oldest first."""
        rows = self._read(self._STUDY_SQL + " ORDER BY s.first_received_at")
        return [_study_info(row) for row in rows]

    def study(self, study_uid: str) -> StudyInfo | None:
        """One study, or None if the journal does not know it."""
        rows = self._read(self._STUDY_SQL + " WHERE s.study_uid = ?", (study_uid,))
        return _study_info(rows[0]) if rows else None

    # A receiving study's generation opened when its first instance of that generation came.
    _OPENED_SQL = (
        "(SELECT MIN(i.received_at) FROM instances i"
        " WHERE i.study_uid = s.study_uid AND i.generation = s.generation)"
    )

    def next_due_at(self, max_wait_s: float | None = None) -> float | None:
        """When the next receiving study falls due: its quiet period ends, or (``max_wait_s``)
        its generation has waited that long since its first instance (None: nothing waits)."""
        due = "s.due_at"
        params: tuple[object, ...] = (StudyState.RECEIVING,)
        if max_wait_s is not None:
            least = self.db.dialect.least
            due = f"{least}(s.due_at, COALESCE({self._OPENED_SQL} + ?, s.due_at))"
            params = (max_wait_s, StudyState.RECEIVING)
        rows = self._read(f"SELECT MIN({due}) FROM studies s WHERE s.state = ?", params)
        value = rows[0][0] if rows else None
        return float(value) if isinstance(value, int | float) else None

    def generation_opened_at(self, study_uid: str) -> float | None:
        """When the study's current generation got its first instance."""
        rows = self._read(
            f"SELECT {self._OPENED_SQL} FROM studies s WHERE s.study_uid = ?", (study_uid,)
        )
        value = rows[0][0] if rows else None
        return float(value) if isinstance(value, int | float) else None

    def release_due_studies(
        self, now: float, max_wait_s: float | None = None
    ) -> list[ReleasedStudy]:
        """Move every study whose quiet period ended by ``now`` to ready, and return them.

        With ``max_wait_s``, a study whose generation opened that long ago is released too,
        however recently its last instance came (a hard ceiling for a study that keeps
        trickling in; anything later opens a follow-up). One transaction selects and updates, so
        a study is released exactly once per generation even with several dispatchers or a crash
        between two calls: on SQLite the write transaction excludes every other writer; on
        PostgreSQL the selected rows stay locked to this transaction (``FOR UPDATE SKIP
        LOCKED``): another dispatcher passes over them, and one that read a row before this
        release committed re-checks it, finds it ready and skips it. A receiver recording an
        instance locks its study's row first (:meth:`record_instance`), so a release never
        crosses a late instance: one of them waits for the other or passes over it.
        """
        ceiling = ""
        params: tuple[object, ...] = (StudyState.RECEIVING, now)
        if max_wait_s is not None:
            ceiling = f" OR {self._OPENED_SQL} + ? <= ?"
            params = (StudyState.RECEIVING, now, max_wait_s, now)
        with self.db.transaction(serialized=False) as db:
            rows = db.execute(
                f"SELECT s.study_uid, s.generation FROM studies s WHERE s.state = ?"
                f" AND (s.due_at <= ?{ceiling}) ORDER BY s.due_at{db.dialect.skip_locked}",
                params,
            ).fetchall()
            for study_uid, _ in rows:
                db.execute(
                    "UPDATE studies SET state = ?, released_at = ? WHERE study_uid = ?",
                    (StudyState.READY, now, study_uid),
                )
            return [self._released(db, study_uid) for study_uid, _ in rows]

    def ready_studies(self) -> list[ReleasedStudy]:
        """Studies released but not yet taken by the route stage (e.g. the dispatcher crashed in
        between)."""
        with self._write() as db:
            rows = db.execute(
                "SELECT study_uid FROM studies WHERE state = ? ORDER BY released_at",
                (StudyState.READY,),
            ).fetchall()
            return [self._released(db, row[0]) for row in rows]

    def rearm_study(self, study_uid: str, generation: int, due_at: float) -> bool:
        """Put a released study back to receiving until ``due_at`` (a rule wants to wait longer:
        its own quiet period, or expected content not there yet); False if it moved on."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE studies SET state = ?, due_at = ? WHERE study_uid = ? AND generation = ?"
                " AND state = ?",
                (StudyState.RECEIVING, due_at, study_uid, generation, StudyState.READY),
            )
            return cursor.rowcount == 1

    def mark_dispatched(self, study_uid: str, generation: int) -> bool:
        """Record that the route stage took this release; False if a follow-up superseded it."""
        return self.set_study_state(
            study_uid, StudyState.DISPATCHED, expect=StudyState.READY, generation=generation
        )

    def set_study_state(
        self,
        study_uid: str,
        state: str,
        *,
        expect: str | None = None,
        generation: int | None = None,
    ) -> bool:
        """Set a study's state (only from ``expect`` / for ``generation`` when given)."""
        sql = "UPDATE studies SET state = ? WHERE study_uid = ?"
        params: list[object] = [state, study_uid]
        if expect is not None:
            sql += " AND state = ?"
            params.append(expect)
        if generation is not None:
            sql += " AND generation = ?"
            params.append(generation)
        with self._write() as db:
            return db.execute(sql, tuple(params)).rowcount == 1

    @staticmethod
    def _released(db: Connection, study_uid: str) -> ReleasedStudy:
        generation, released_at, calling, called = db.execute(
            "SELECT generation, released_at, calling_ae, called_ae FROM studies"
            " WHERE study_uid = ?",
            (study_uid,),
        ).fetchone()
        total, new = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN generation = ? THEN 1 ELSE 0 END), 0)"
            " FROM instances WHERE study_uid = ?",
            (generation, study_uid),
        ).fetchone()
        return ReleasedStudy(study_uid, generation, released_at, total, new, calling, called)


def _study_info(row: tuple[object, ...]) -> StudyInfo:
    values = list(row)
    values[1] = StudyState(str(values[1]))
    return StudyInfo(*values)  # type: ignore[arg-type]


def instance_paths(
    journal: Journal, spool_dir: Path, study_uid: str, fetch: Callable[[Path], Path] | None = None
) -> dict[str, Path]:
    """The spool files of a study's instances, by SOP Instance UID; ``fetch`` brings each to
    this host first when given (:meth:`listener.store.objects.SpoolFiles.local`)."""
    paths = {r.sop_instance_uid: spool_dir / r.path for r in journal.instances(study_uid)}
    return {uid: fetch(path) for uid, path in paths.items()} if fetch else paths
