"""Embedding drift per group of studies: readings kept in the journal, tested on every study.

Each embedded study joins its group (the ``drift.group_by`` facts of its first instance: calling
AE title, modality, body part; e.g. ``calling_ae=CT1,modality=CT``) with its embedding through a
fixed random projection (:mod:`listener.store.mmd`). The group's first ``reference_size``
studies are its reference (a pinned set: a later change of input does not move it); its latest
``window_size`` studies after them are the window. From ``min_window`` studies on, every new
study tests the window against the reference; the reading (MMD², permutation p-value, drifted
or not) is kept, for the ``pacsai_embedding_drift`` gauge, the readiness warning, the dashboard
plot and ``pacs-ai drift``. A group that turns drifted raises an audit event (the caller's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from listener.settings import DriftSettings
from listener.store.db import Database, DatabaseTarget, JournalTables, MissingTableError
from listener.store.journal import Journal
from listener.store.mmd import mmd_test, projection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_members (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    model_version TEXT NOT NULL,
    projected BLOB NOT NULL,
    added_at REAL NOT NULL,
    UNIQUE (grp, study_uid, model_version)
);
-- "window" is quoted: a reserved word in PostgreSQL
CREATE TABLE IF NOT EXISTS drift_readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    at REAL NOT NULL,
    statistic REAL NOT NULL,
    p_value REAL NOT NULL,
    drifted INTEGER NOT NULL,
    reference INTEGER NOT NULL,
    "window" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_readings_grp ON drift_readings (grp, id);
"""


_LATEST = (
    'SELECT grp, at, statistic, p_value, drifted, reference, "window" FROM drift_readings'
    " WHERE id IN (SELECT MAX(id) FROM drift_readings GROUP BY grp) ORDER BY grp"
)


@dataclass(frozen=True)
class DriftReading:
    """One test of a group's window against its reference."""

    group: str
    at: float
    statistic: float
    p_value: float
    drifted: bool
    reference: int
    window: int


def group_key(facts: dict[str, str], keys: Sequence[str]) -> str:
    """The group name: ``key=value`` pairs in the configured order (missing values: ``-``)."""
    return ",".join(f"{key}={facts.get(key) or '-'}" for key in keys)


def drift_facts(
    journal: Journal,
    spool_dir: Path,
    study_uid: str,
    fetch: Callable[[Path], Path] | None = None,
) -> dict[str, str]:
    """The grouping facts of a study: its calling AE title, its first instance's modality and
    body part (Body Part Examined, read from that instance's header)."""
    facts: dict[str, str] = {}
    info = journal.study(study_uid)
    if info is not None and info.calling_ae:
        facts["calling_ae"] = info.calling_ae
    records = journal.instances(study_uid)
    if records:
        facts["modality"] = records[0].modality or ""
        try:
            first = spool_dir / records[0].path
            header = dcmread(
                fetch(first) if fetch else first,
                stop_before_pixels=True,
                specific_tags=["BodyPartExamined"],
            )
            facts["body_part"] = str(header.get("BodyPartExamined", "") or "")
        except (OSError, InvalidDicomError):
            pass
    return facts


class DriftStore(JournalTables):
    """The drift tables and the test run on each new study of a group."""

    schema = _SCHEMA

    def __init__(self, path: DatabaseTarget, settings: DriftSettings | None = None) -> None:
        super().__init__(path)
        self.settings = settings or DriftSettings()
        self.keys: tuple[str, ...] = tuple(self.settings.group_by)

    @cached_property
    def _projection(self) -> npt.NDArray[np.float64]:
        return projection(1024, self.settings.projection_dim)

    def observe(
        self, group: str, study_uid: str, vector: Sequence[float], model_version: str, now: float
    ) -> tuple[DriftReading | None, bool]:
        """Add a study to its group; the reading it makes (None: too few yet) and whether the
        group turned drifted with it (it was not at the group's previous reading)."""
        x = np.asarray(vector, dtype=np.float64).ravel()
        if x.shape[0] != self._projection.shape[0]:
            return None, False
        projected = (x @ self._projection).astype(np.float32)
        s = self.settings
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO drift_members (grp, study_uid, model_version, projected,"
                " added_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (group, study_uid, model_version, projected.tobytes(), now),
            )
            rows = db.execute(
                "SELECT projected FROM drift_members WHERE grp = ? AND model_version = ?"
                " ORDER BY id",
                (group, model_version),
            ).fetchall()
        vectors = [np.frombuffer(r[0], dtype=np.float32) for r in rows]
        reference, rest = vectors[: s.reference_size], vectors[s.reference_size :]
        window = rest[-s.window_size :]
        if len(reference) < s.reference_size or len(window) < s.min_window:
            return None, False
        result = mmd_test(np.stack(reference), np.stack(window), s.permutations)
        reading = DriftReading(
            group,
            now,
            result.statistic,
            result.p_value,
            result.p_value < s.alpha,
            len(reference),
            len(window),
        )
        previous = self.latest().get(group)
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO drift_readings (grp, at, statistic, p_value, drifted, reference,"
                ' "window") VALUES (?, ?, ?, ?, ?, ?, ?)',
                (
                    group,
                    now,
                    reading.statistic,
                    reading.p_value,
                    int(reading.drifted),
                    reading.reference,
                    reading.window,
                ),
            )
        turned = reading.drifted and (previous is None or not previous.drifted)
        return reading, turned

    def readings(self, group: str) -> list[DriftReading]:
        """A group's readings, oldest first."""
        with self.db.read() as db:
            rows = db.execute(
                'SELECT grp, at, statistic, p_value, drifted, reference, "window"'
                " FROM drift_readings WHERE grp = ? ORDER BY id",
                (group,),
            ).fetchall()
        return [_reading(row) for row in rows]

    def latest(self) -> dict[str, DriftReading]:
        """Each group's latest reading."""
        with self.db.read() as db:
            rows = db.execute(_LATEST).fetchall()
        return {row[0]: _reading(row) for row in rows}

    def members(self) -> dict[str, int]:
        """How many studies each group holds."""
        with self.db.read() as db:
            rows = db.execute("SELECT grp, COUNT(*) FROM drift_members GROUP BY grp").fetchall()
        return {str(g): int(n) for g, n in rows}


def latest_readings(database: Database) -> list[DriftReading]:
    """Each group's latest reading, for the metrics (empty when no job runner has created the
    table yet)."""
    try:
        with database.snapshot() as db:
            rows = db.execute(_LATEST).fetchall()
    except MissingTableError:
        return []
    return [_reading(row) for row in rows]


def _reading(row: Sequence[object]) -> DriftReading:
    return DriftReading(
        str(row[0]),
        float(str(row[1])),
        float(str(row[2])),
        float(str(row[3])),
        bool(row[4]),
        int(str(row[5])),
        int(str(row[6])),
    )
