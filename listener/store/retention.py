"""Retention: what the gateway deletes, when, and how a purge survives a crash.

A policy per kind of file (:class:`RetentionPolicy`, each None to keep forever):

- ``originals`` (``spool/<study>/...``): a study's received instances, ``originals_s`` after the
  study *settled*: released and dispatched, no job of it scheduled or in progress, no outbox
  entry of it pending or dead (a dead letter may still be resubmitted), and neither a job nor a
  send of it changed for ``originals_s``. Never earlier, whatever the disk says.
- ``results`` (``results/<study>/...``): the study's result objects, on the same condition with
  ``results_s``.
- ``quarantine``: the data files of quarantined instances, ``quarantine_s`` after they were set
  aside (their small JSON reason files stay, the record of what was refused and why).

A purge is journaled in three steps (:meth:`Retention.purge`): a ``purges`` row with state
``intent`` and the files it will remove, committed; the files removed; then, in one transaction,
the instance rows of removed originals deleted and the purge marked ``done``. A crash anywhere in
between leaves an ``intent`` row that start-up completes (:meth:`Retention.complete_interrupted`),
so the journal never points at a purged file for long and no purged file comes back by
re-indexing (its rows go only after the file is gone).

With ``spool_url: s3://...`` a study's originals are the journal's instance rows and its
results what this host or the bucket holds (this host may hold none of the files), and a purge
deletes their objects from the bucket too (``bucket``, before the rows go, so a crash redoes it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from listener.logging import get_logger
from listener.store.db import Connection, Database
from listener.store.jobs import JobState
from listener.store.journal import StudyState
from listener.store.outbox import EntryState
from listener.store.uploads import BucketPurge

_log = get_logger("retention")

Remove = Callable[[Path], None]


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RetentionPolicy:
    """Seconds each kind is kept after it stopped being needed; None keeps it forever."""

    originals_s: float | None = 7 * 86400.0
    results_s: float | None = 30 * 86400.0
    quarantine_s: float | None = 30 * 86400.0


@dataclass(frozen=True)
class PurgeReport:
    """Files and bytes one :meth:`Retention.purge_due` call removed, by kind."""

    files: dict[str, int]
    bytes: dict[str, int]


class Retention:
    """Finds what the policy lets go and purges it, journaled (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        data_dir: Path,
        spool_dir: Path,
        results_dir: Path,
        quarantine_dir: Path,
        policy: RetentionPolicy,
        bucket: BucketPurge | None = None,
    ) -> None:
        self.db = database
        self.bucket = bucket
        self.data_dir = data_dir
        self.roots = {"originals": spool_dir, "results": results_dir, "quarantine": quarantine_dir}
        self.policy = policy

    # --- what may go ----------------------------------------------------------------------

    def settled_studies(self, older_than: float) -> list[str]:
        """Studies nothing needs any more (see the module docstring) and unchanged since
        ``older_than``."""
        with self.db.read() as db:
            greatest, instr = db.dialect.greatest, db.dialect.instr
            rows = db.execute(
                "SELECT s.study_uid,"
                f" {greatest}(s.last_received_at,"
                "  COALESCE((SELECT MAX(updated_at) FROM jobs j WHERE j.study_uid = s.study_uid),"
                "   0),"
                f"  COALESCE((SELECT MAX({greatest}(enqueued_at, COALESCE(sent_at, 0)))"
                f"   FROM outbox o WHERE {instr}(o.path, '/' || s.study_uid || '/') > 0), 0))"
                " FROM studies s WHERE s.state = ?"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid"
                "  AND j.state IN (?, ?))"
                " AND NOT EXISTS (SELECT 1 FROM outbox o"
                f"  WHERE {instr}(o.path, '/' || s.study_uid || '/') > 0 AND o.state IN (?, ?))",
                (
                    StudyState.DISPATCHED,
                    JobState.SCHEDULED,
                    JobState.IN_PROGRESS,
                    EntryState.PENDING,
                    EntryState.DEAD,
                ),
            ).fetchall()
        return [str(uid) for uid, settled_at in rows if float(settled_at) <= older_than]

    def _study_files(self, kind: str, study_uid: str) -> list[Path]:
        if kind == "originals" and self.bucket is not None:
            with self.db.read() as db:
                rows = db.execute(
                    "SELECT path FROM instances WHERE study_uid = ? ORDER BY path", (study_uid,)
                ).fetchall()
            return [self.roots[kind] / str(path) for (path,) in rows]
        folder = self.roots[kind] / study_uid
        here = {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
        if self.bucket is not None and kind == "results":
            here |= set(self.bucket.stored_under(folder))
        return sorted(here)

    def _old_quarantine(self, older_than: float) -> list[Path]:
        folder = self.roots["quarantine"]
        return sorted(
            p for p in folder.glob("*.dcm") if p.is_file() and p.stat().st_mtime <= older_than
        )

    # --- purging ----------------------------------------------------------------------------

    def purge_due(self, now: float, remove: Remove = _unlink) -> PurgeReport:
        """Purge everything the policy lets go at ``now``; what was removed, by kind."""
        report = PurgeReport({}, {})
        policy = self.policy
        for kind, age in (("originals", policy.originals_s), ("results", policy.results_s)):
            if age is None:
                continue
            for study_uid in self.settled_studies(now - age):
                files = self._study_files(kind, study_uid)
                if files:
                    self._count(report, kind, self.purge(kind, study_uid, files, now, remove))
        if policy.quarantine_s is not None:
            files = self._old_quarantine(now - policy.quarantine_s)
            if files:
                self._count(
                    report, "quarantine", self.purge("quarantine", None, files, now, remove)
                )
        return report

    @staticmethod
    def _count(report: PurgeReport, kind: str, purged: tuple[int, int]) -> None:
        report.files[kind] = report.files.get(kind, 0) + purged[0]
        report.bytes[kind] = report.bytes.get(kind, 0) + purged[1]

    def purge(
        self,
        kind: str,
        study_uid: str | None,
        files: Iterable[Path],
        now: float,
        remove: Remove = _unlink,
    ) -> tuple[int, int]:
        """Remove ``files`` as one journaled purge: intent, files, then rows and done.

        ``remove`` deletes one file (a parameter so that a test can stop the process midway).
        Returns (files, bytes) removed.
        """
        paths = list(files)
        size = sum(p.stat().st_size for p in paths if p.exists())
        relative = [p.relative_to(self.data_dir).as_posix() for p in paths]
        with self.db.transaction() as db:
            purge_id = db.execute(
                "INSERT INTO purges (kind, study_uid, state, paths, files, bytes, started_at)"
                " VALUES (?, ?, 'intent', ?, ?, ?, ?) RETURNING id",
                (kind, study_uid, json.dumps(relative), len(paths), size, now),
            ).fetchone()[0]
        self._finish(purge_id, kind, relative, now, remove)
        _log.info("purged", kind=kind, study_uid=study_uid, files=len(paths), bytes=size)
        return len(paths), size

    def _finish(
        self, purge_id: int, kind: str, relative: list[str], now: float, remove: Remove
    ) -> None:
        for path in relative:
            remove(self.data_dir / path)
        if kind == "originals":
            spool_root = self.roots["originals"].relative_to(self.data_dir).as_posix() + "/"
            spool_paths = [p.removeprefix(spool_root) for p in relative]
        else:
            spool_paths = []
        if self.bucket is not None and kind != "quarantine":
            self.bucket.remove([self.data_dir / path for path in relative])
        with self.db.transaction() as db:
            _delete_instances(db, spool_paths)
            db.execute(
                "UPDATE purges SET state = 'done', finished_at = ? WHERE id = ?", (now, purge_id)
            )

    def complete_interrupted(self, now: float) -> int:
        """Finish every purge a crash left at ``intent`` (at start-up); return how many."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT id, kind, paths FROM purges WHERE state = 'intent' ORDER BY id"
            ).fetchall()
        for purge_id, kind, paths in rows:
            self._finish(int(purge_id), str(kind), list(json.loads(paths)), now, _unlink)
        if rows:
            _log.warning("purges_completed_after_crash", count=len(rows))
        return len(rows)


def _delete_instances(db: Connection, spool_paths: list[str]) -> None:
    db.executemany("DELETE FROM instances WHERE path = ?", [(p,) for p in spool_paths])
