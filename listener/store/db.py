"""Connections to the journal database, configured the same way everywhere.

Every stage keeps its tables in one SQLite file (the journal), in WAL mode so readers never block
the writer, with a busy timeout so several processes can share it. Autocommit mode: a stage that
needs a transaction opens one with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path


@contextmanager
def connect(path: Path, busy_timeout_s: float = 30.0) -> Iterator[sqlite3.Connection]:
    """A connection to the journal database, closed on exit; rows are :class:`sqlite3.Row`."""
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        yield db
    finally:
        db.close()


class JournalTables:
    """Base of a stage's own tables in the journal database: creates them (``schema``, idempotent
    ``CREATE ... IF NOT EXISTS``) and hands out connections."""

    schema = ""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(self.schema)

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path, self.busy_timeout_s)
