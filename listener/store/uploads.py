"""Uploads of spool files to the S3 bucket, a journal state (``spool_url: s3://...``).

With ``s3.ack: local`` a received instance is answered once its local file is durable and its
upload is *pending* in the ``spool_uploads`` table; the dispatcher's uploader puts it in the
bucket and marks it ``uploaded``, retrying a failure with backoff (:func:`listener.timing.
backoff_delay`), so the local disk of a receiver is at risk only until the upload. A row
belongs to the host that holds the local file (``host``: its executor id, by default the host
name): only that host's uploader can send it, and after a crash (kill -9) the host's next
uploader finds its pending rows and resumes.
With ``s3.ack: uploaded`` the receiver uploads before it answers (:meth:`SharedSpool.publish`)
and the row is written ``uploaded`` at once.

Rows of acknowledged instances a crash left without an upload row (the process died between
the journal commit and the queueing) are adopted at the uploader's start
(:meth:`UploadQueue.adopt`). SQL is plain: ``?`` placeholders, ``ON CONFLICT ... DO NOTHING``.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from listener.errors import ObjectStoreError
from listener.logging import get_logger
from listener.settings import Settings
from listener.store.db import (
    BUSY_TIMEOUT_S,
    Database,
    DatabaseTarget,
    JournalTables,
    MissingTableError,
)
from listener.store.objects import ObjectStore, SpoolFiles, object_store, spool_files
from listener.timing import backoff_delay

PENDING = "pending"
UPLOADED = "uploaded"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool_uploads (
    path TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    uploaded_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS spool_uploads_due ON spool_uploads (host, state, due_at);
"""

_log = get_logger("uploads")


@dataclass(frozen=True)
class PendingUpload:
    """One spool file still to go to the bucket (``path`` relative to the spool root)."""

    path: str
    attempts: int


class UploadQueue(JournalTables):
    """The ``spool_uploads`` table in the journal database at ``path``."""

    schema = _SCHEMA

    def __init__(
        self,
        path: DatabaseTarget,
        *,
        host: str | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s)
        self.host = host or socket.gethostname()

    def enqueue(self, relative: str, now: float, *, state: str = PENDING) -> None:
        """Record a spool file to upload (``pending``) or just uploaded; a known one stays."""
        with self.db.read() as db:
            db.execute(
                "INSERT INTO spool_uploads (path, host, state, due_at, queued_at, uploaded_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                (relative, self.host, state, now, now, now if state == UPLOADED else None),
            )

    def due(self, now: float, limit: int = 64) -> list[PendingUpload]:
        """The pending uploads of this host whose time has come, oldest first."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT path, attempts FROM spool_uploads"
                " WHERE host = ? AND state = ? AND due_at <= ? ORDER BY due_at LIMIT ?",
                (self.host, PENDING, now, limit),
            ).fetchall()
        return [PendingUpload(str(path), int(attempts)) for path, attempts in rows]

    def uploaded(self, relative: str, now: float) -> None:
        with self.db.read() as db:
            db.execute(
                "UPDATE spool_uploads SET state = ?, uploaded_at = ?, last_error = NULL"
                " WHERE path = ?",
                (UPLOADED, now, relative),
            )

    def failed(self, relative: str, error: str, due_at: float) -> None:
        with self.db.read() as db:
            db.execute(
                "UPDATE spool_uploads SET attempts = attempts + 1, due_at = ?, last_error = ?"
                " WHERE path = ?",
                (due_at, error[:500], relative),
            )

    def forget(self, relatives: list[str]) -> None:
        """Drop the rows of spool files that are gone (purged, or never acknowledged)."""
        with self.db.transaction() as db:
            db.executemany("DELETE FROM spool_uploads WHERE path = ?", [(p,) for p in relatives])

    def counts(self) -> dict[str, int]:
        """Rows by state, every host."""
        return upload_counts(self.db)

    def adopt(self, spool_dir: Path, now: float) -> int:
        """Queue journaled instances with no upload row whose file is on this host; how many."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT i.path FROM instances i"
                " LEFT JOIN spool_uploads u ON u.path = i.path WHERE u.path IS NULL"
            ).fetchall()
        local = [str(path) for (path,) in rows if (spool_dir / str(path)).is_file()]
        for relative in local:
            self.enqueue(relative, now)
        return len(local)


class Uploader:
    """Sends this host's due uploads to the bucket (a thread of the dispatcher)."""

    def __init__(
        self,
        queue: UploadQueue,
        store: ObjectStore,
        spool_dir: Path,
        *,
        retry_base_s: float = 2.0,
        retry_max_s: float = 300.0,
        parallel: int = 8,
    ) -> None:
        self.queue = queue
        self.parallel = parallel
        self.store = store
        self.spool_dir = spool_dir
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s

    def upload_due(self, now: float) -> int:
        """Upload what is due at ``now``, ``parallel`` at a time; how many went up. A failure
        waits its backoff (the others of the round are still tried: each has its own)."""
        due = self.queue.due(now)
        gone = [item.path for item in due if not (self.spool_dir / item.path).is_file()]
        todo = [item for item in due if item.path not in gone]
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            errors = list(pool.map(self._put, todo))
        done = 0
        for item, error in zip(todo, errors, strict=True):
            if error is None:
                self.queue.uploaded(item.path, now)
                done += 1
                continue
            delay = backoff_delay(item.attempts + 1, self.retry_base_s, self.retry_max_s)
            self.queue.failed(item.path, error, now + delay)
            _log.warning("spool_upload_failed", error=error, retry_in_s=delay)
        if gone:
            self.queue.forget(gone)
            _log.warning("spool_upload_dropped", count=len(gone), reason="local file is gone")
        return done

    def _put(self, item: PendingUpload) -> str | None:
        try:
            self.store.put(item.path, self.spool_dir / item.path)
        except ObjectStoreError as exc:
            return str(exc)
        return None


class SharedSpool:
    """The receiver's side of the bucket: what happens to an instance just written durably."""

    def __init__(self, store: ObjectStore, queue: UploadQueue, *, ack: str) -> None:
        self.store = store
        self.queue = queue
        self.ack = ack

    def publish(self, relative: str, path: Path, now: float) -> str | None:
        """Queue the upload (``ack: local``) or upload now (``ack: uploaded``); None when the
        instance may be acknowledged, else why not (the bucket refused or is unreachable)."""
        if self.ack == "local":
            self.queue.enqueue(relative, now)
            return None
        try:
            self.store.put(relative, path)
        except ObjectStoreError as exc:
            return str(exc)
        self.queue.enqueue(relative, now, state=UPLOADED)
        return None

    def close(self) -> None:
        self.queue.close()


def shared_spool(settings: Settings) -> SharedSpool | None:
    """The receiver's bucket hook for ``settings``, None for the local folder alone."""
    store = object_store(settings)
    if store is None:
        return None
    return SharedSpool(
        store, UploadQueue(settings.journal_database, host=settings.executor), ack=settings.s3.ack
    )


def uploader(settings: Settings) -> Uploader | None:
    """The uploader of this host for ``settings``, None for the local folder alone."""
    store = object_store(settings)
    if store is None:
        return None
    return Uploader(
        UploadQueue(settings.journal_database, host=settings.executor),
        store,
        settings.spool_dir,
        retry_base_s=settings.s3.upload_retry_base_s,
        retry_max_s=settings.s3.upload_retry_max_s,
    )


class BucketPurge:
    """Retention's side of the bucket: the objects of what it purges go too, and the upload
    rows of purged originals leave the journal."""

    def __init__(self, files: SpoolFiles, journal_path: DatabaseTarget) -> None:
        assert files.store is not None
        self.files = files
        self.store = files.store
        self.journal_path = journal_path

    def stored_under(self, folder: Path) -> list[Path]:
        """The files the bucket holds below ``folder`` (a study's results folder)."""
        key = self.files.key(folder)
        if key is None:
            return []
        head = key + "/"
        return [folder / k.removeprefix(head) for k in self.store.keys(head)]

    def remove(self, paths: list[Path]) -> None:
        """Delete the objects of ``paths`` (spool files or result objects)."""
        keys = [key for path in paths if (key := self.files.key(path)) is not None]
        self.store.delete(keys)
        queue = UploadQueue(self.journal_path)
        try:
            queue.forget(keys)
        finally:
            queue.close()


def bucket_purge(settings: Settings) -> BucketPurge | None:
    """Retention's bucket hook for ``settings``, None for the local folder alone."""
    files = spool_files(settings)
    return BucketPurge(files, settings.journal_database) if files.store is not None else None


def upload_counts(database: Database) -> dict[str, int]:
    """Upload rows by state (every host), for the metrics; empty when the table was never made
    (no bucket configured)."""
    try:
        with database.read() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM spool_uploads GROUP BY state").fetchall()
    except MissingTableError:
        return {}
    return {str(state): int(count) for state, count in rows}
