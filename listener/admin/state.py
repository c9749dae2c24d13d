"""What the admin app reads and changes, passed in as one object (no globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from listener.settings import Settings
from listener.settings.database import DatabaseUrl
from listener.store.audit import AuditTrail
from listener.store.flags import StudyFlags
from listener.store.jobs import JobStore
from listener.store.journal import Journal
from listener.store.outbox import Outbox
from listener.store.records import AdminRecords
from listener.store.spool import Spool


@dataclass
class AdminState:
    """The journal's stores, the spool and the clock the admin app works with."""

    settings: Settings
    journal: Journal
    jobs: JobStore
    outbox: Outbox
    records: AdminRecords
    spool: Spool
    clock: Callable[[], float] = field(default=time.time)
    audit: AuditTrail | None = None
    flags: StudyFlags | None = None  # review/OOD flags and OOD scores (listener.store.flags)

    @property
    def db_path(self) -> DatabaseUrl:
        """Where the journal's tables live (``str()`` hides any password)."""
        return self.settings.journal_database

    @property
    def results_dir(self) -> Path:
        return self.settings.data_dir / "results"

    def close(self) -> None:
        for store in (self.journal, self.jobs, self.outbox, self.records):
            store.close()
        if self.flags is not None:
            self.flags.close()
        if self.audit is not None:
            self.audit.close()


def open_state(settings: Settings, clock: Callable[[], float] = time.time) -> AdminState:
    """The admin state for ``settings``; every table it reads exists once this returns."""
    journal = Journal(settings.journal_database)
    outbox = Outbox(settings.journal_database)
    spool = Spool(
        settings.spool_dir, settings.quarantine_dir, min_free_mb=settings.disk_min_free_mb
    )
    return AdminState(
        settings=settings,
        journal=journal,
        jobs=JobStore(settings.journal_database),
        outbox=outbox,
        records=AdminRecords(settings.journal_database),
        spool=spool,
        clock=clock,
        audit=AuditTrail.open(settings, clock),
        flags=StudyFlags(settings.journal_database),
    )
