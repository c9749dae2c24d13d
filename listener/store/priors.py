"""The chest index: per received study, its patient, date and frontal image, for prior look-ups.

CXRReportGen's prior is the same patient's latest earlier frontal chest image. Looking it up
used to read the headers of every study in the journal; here a study is indexed once (patient,
issuer, Study Date, its frontal image's spool path, read from its files the first time that
patient is looked up, and again only when the study received more instances since), and the
look-up itself is one indexed query on (patient, issuer, date).
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.store.db import DatabaseTarget, JournalTables, MissingTableError, upsert

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chest_index (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    study_date TEXT NOT NULL,
    first_received_at REAL NOT NULL,
    indexed_through REAL NOT NULL,
    frontal_path TEXT
);
CREATE INDEX IF NOT EXISTS chest_index_patient ON chest_index (patient_id, issuer, study_date);
"""
_COLUMNS = (
    "study_uid",
    "patient_id",
    "issuer",
    "study_date",
    "first_received_at",
    "indexed_through",
    "frontal_path",
)


@dataclass(frozen=True)
class IndexedStudy:
    """A study of the index: its date and frontal image (relative to the spool), if any."""

    study_uid: str
    study_date: str
    frontal_path: str | None


@dataclass(frozen=True)
class StudyToIndex:
    """A study of the patient that the index does not know as it is now."""

    study_uid: str
    first_received_at: float
    last_received_at: float


class ChestIndex(JournalTables):
    """The chest index table in the journal database."""

    schema = _SCHEMA

    def __init__(self, path: DatabaseTarget) -> None:
        super().__init__(path)
        # The journal's studies are looked up by patient; the journal creates that table.
        with _missing_table_ok(), self.db.transaction() as db:
            db.execute("CREATE INDEX IF NOT EXISTS studies_patient ON studies (patient_id)")

    def stale_studies(self, patient_id: str) -> list[StudyToIndex]:
        """The patient's received studies that are not indexed, or received more since."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT s.study_uid, s.first_received_at, s.last_received_at FROM studies s"
                " LEFT JOIN chest_index c ON c.study_uid = s.study_uid"
                " WHERE s.patient_id = ?"
                " AND (c.study_uid IS NULL OR c.indexed_through < s.last_received_at)",
                (patient_id,),
            ).fetchall()
        return [StudyToIndex(str(r[0]), float(r[1]), float(r[2])) for r in rows]

    def put(
        self,
        study: StudyToIndex,
        *,
        patient_id: str,
        issuer: str,
        study_date: str,
        frontal_path: str | None,
    ) -> None:
        """Index (or re-index) one study."""
        with self.db.transaction() as db:
            db.execute(
                upsert("chest_index", _COLUMNS, ["study_uid"]),
                (
                    study.study_uid,
                    patient_id,
                    issuer,
                    study_date,
                    study.first_received_at,
                    study.last_received_at,
                    frontal_path,
                ),
            )

    def latest_before(
        self, patient_id: str, issuer: str, study_date: str, exclude_study: str
    ) -> IndexedStudy | None:
        """The patient's latest study with a frontal image dated before ``study_date`` (any date
        when it is empty); an issuer matches when equal or when either side has none."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT study_uid, study_date, frontal_path FROM chest_index"
                " WHERE patient_id = ? AND (issuer = ? OR issuer = '' OR ? = '')"
                " AND frontal_path IS NOT NULL AND study_uid != ?"
                " AND (? = '' OR (study_date != '' AND study_date < ?))"
                " ORDER BY study_date DESC, first_received_at DESC LIMIT 1",
                (patient_id, issuer, issuer, exclude_study, study_date, study_date),
            ).fetchone()
        return IndexedStudy(str(row[0]), str(row[1]), row[2]) if row else None


class _missing_table_ok:  # noqa: N801 - used as a context manager, read as a phrase
    """Ignore "no such table" (a database whose journal tables do not exist yet)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: object, _: object) -> bool:
        return isinstance(error, MissingTableError)
