"""What the admin app reads and changes, passed in as one object (no globals)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from listener.errors import ObjectStoreError
from listener.settings import Settings
from listener.settings.database import DatabaseUrl
from listener.store.audit import AuditTrail
from listener.store.embeddings import EmbeddingStore, Neighbour
from listener.store.flags import StudyFlags
from listener.store.jobs import JobStore
from listener.store.journal import Journal
from listener.store.objects import SpoolFiles, spool_files
from listener.store.outbox import Outbox
from listener.store.records import AdminRecords
from listener.store.spool import Spool
from listener.store.uploads import shared_spool
from listener.store.vector_index import OpenIndexes, SimilarFilter, similar


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
    files: SpoolFiles | None = None  # spool_url: s3://... (listener.store.objects)

    def spool_file(self, relative: str) -> Path:
        """The spool file at ``relative``, fetched from the bucket when it is not on this host;
        a fetch that fails leaves the path absent (the reader answers as for a missing file)."""
        path = self.spool.root / relative
        if self.files is not None:
            with contextlib.suppress(ObjectStoreError):
                self.files.local(path)
        return path

    indexes: OpenIndexes | None = None  # similarity indexes (listener.store.vector_index)

    @property
    def db_path(self) -> DatabaseUrl:
        """Where the journal's tables live (``str()`` hides any password)."""
        return self.settings.journal_database

    @property
    def results_dir(self) -> Path:
        return self.settings.data_dir / "results"

    def similar(
        self, sop_instance_uid: str, top: int, where: SimilarFilter | None = None
    ) -> list[Neighbour]:
        """The instances most like one (KeyError: no embedding), through the open indexes."""
        if self.indexes is None:
            store = EmbeddingStore(self.db_path)
            try:
                return similar(
                    store, self.settings.data_dir / "index", sop_instance_uid, top, where
                )
            finally:
                store.close()
        return self.indexes.similar(sop_instance_uid, top, where)

    def close(self) -> None:
        for store in (self.journal, self.jobs, self.outbox, self.records):
            store.close()
        if self.flags is not None:
            self.flags.close()
        if self.indexes is not None:
            self.indexes.store.close()
        if self.audit is not None:
            self.audit.close()
        if self.spool.shared is not None:
            self.spool.shared.close()


def open_state(settings: Settings, clock: Callable[[], float] = time.time) -> AdminState:
    """The admin state for ``settings``; every table it reads exists once this returns."""
    journal = Journal(settings.journal_database)
    outbox = Outbox(settings.journal_database)
    spool = Spool(
        settings.spool_dir,
        settings.quarantine_dir,
        min_free_mb=settings.disk_min_free_mb,
        shared=shared_spool(settings),  # STOW-RS instances go to the bucket too
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
        files=spool_files(settings),
        indexes=OpenIndexes(EmbeddingStore(settings.journal_database), settings.data_dir / "index"),
    )
