"""The one connection policy of the journal database, for every process and thread.

Every stage keeps its tables in one SQLite file (the journal). :class:`Database` is the only place
that opens it (``sqlite3.connect`` appears nowhere else), and sets the same pragmas everywhere:

- ``journal_mode=WAL``: readers never block the writer, and several processes share the file;
- ``synchronous=NORMAL``: in WAL mode a commit survives a crash of the process; a power cut may
  lose a suffix of the last commits, never reorder them or corrupt the file. That is enough for
  what the journal promises: a C-STORE is acknowledged after the instance's file and folder are
  fsynced, and start-up re-indexes spool files whose journal row was lost; every later stage is
  idempotent from its last committed state (a lost "completed" reruns a job whose results have
  deterministic UIDs, a lost enqueue is redone with the job it belongs to);
- a busy timeout, so a writer waits for another process's transaction instead of failing.

The connection is in autocommit mode; a change that needs several statements runs in
:meth:`Database.transaction` (``BEGIN IMMEDIATE``, committed on exit, rolled back on an error).
One connection per :class:`Database`, guarded by a lock, so the threads of a process share it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


class Database:
    """A connection to the journal database at ``path``, shared by the threads of a process."""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads or a single autocommitted statement."""
        with self._lock:
            yield self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")


class JournalTables:
    """Base of a stage's own tables in the journal database: creates them (``schema``, idempotent
    ``CREATE ... IF NOT EXISTS``) and holds the process's connection for them."""

    schema = ""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.db = Database(path, busy_timeout_s=busy_timeout_s)
        with self.db.read() as db:
            db.executescript(self.schema)

    def close(self) -> None:
        self.db.close()
