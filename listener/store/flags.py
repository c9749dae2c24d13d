"""What the gateway noticed about a study from its model output: review flags and OOD scores.

A rule's ``flag_for_review`` (a label's probability above a threshold) and ``ood`` (an
out-of-distribution score above a threshold) actions leave a flag here, with the reason and the
score, for the admin API and dashboard to show; the study's latest OOD score is kept whether or
not it crossed a threshold, for the API, the dashboard and the metrics
(:mod:`listener.admin.metrics`). Raising a study's priority moves its not-yet-started jobs ahead
in the job queue (``jobs.priority``, :mod:`listener.store.jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.store.db import Database, JournalTables, MissingTableError, upsert
from listener.store.ups import JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study_flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    task TEXT NOT NULL,
    reason TEXT NOT NULL,
    score REAL,
    destination TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS study_flags_study ON study_flags (study_uid);
CREATE TABLE IF NOT EXISTS study_ood (
    study_uid TEXT PRIMARY KEY,
    score REAL NOT NULL,
    model_version TEXT NOT NULL,
    scored_at REAL NOT NULL
);
"""

REVIEW, OOD = "review", "ood"


@dataclass(frozen=True)
class StudyFlag:
    """One flag raised on a study by a task's action."""

    study_uid: str
    kind: str  # review | ood
    rule: str
    task: str
    reason: str
    score: float | None
    destination: str | None
    created_at: float


class StudyFlags(JournalTables):
    """The ``study_flags`` and ``study_ood`` tables in the journal database."""

    schema = _SCHEMA

    def flag(self, flag: StudyFlag, raise_priority: int = 0) -> None:
        """Record ``flag``; with ``raise_priority``, move the study's scheduled jobs ahead."""
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO study_flags (study_uid, kind, rule, task, reason, score,"
                " destination, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    flag.study_uid,
                    flag.kind,
                    flag.rule,
                    flag.task,
                    flag.reason,
                    flag.score,
                    flag.destination,
                    flag.created_at,
                ),
            )
            if raise_priority:
                db.execute(
                    "UPDATE jobs SET priority = priority + ? WHERE study_uid = ? AND state = ?",
                    (raise_priority, flag.study_uid, JobState.SCHEDULED.value),
                )

    def flags(self, study_uid: str | None = None) -> list[StudyFlag]:
        """The flags of one study (or all), oldest first."""
        sql = (
            "SELECT study_uid, kind, rule, task, reason, score, destination, created_at"
            " FROM study_flags"
        )
        params: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " WHERE study_uid = ?"
            params = (study_uid,)
        with self.db.read() as db:
            rows = db.execute(sql + " ORDER BY id", params).fetchall()
        return [StudyFlag(*row) for row in rows]

    def set_ood(self, study_uid: str, score: float, model_version: str, now: float) -> None:
        """Keep the study's latest OOD score."""
        with self.db.transaction() as db:
            db.execute(
                upsert(
                    "study_ood", ("study_uid", "score", "model_version", "scored_at"), ["study_uid"]
                ),
                (study_uid, score, model_version, now),
            )

    def ood(self, study_uid: str) -> float | None:
        with self.db.read() as db:
            row = db.execute(
                "SELECT score FROM study_ood WHERE study_uid = ?", (study_uid,)
            ).fetchone()
        return None if row is None else float(row[0])

    def ood_scores(self) -> list[float]:
        """Every study's latest OOD score (for the metrics)."""
        with self.db.read() as db:
            return [float(r[0]) for r in db.execute("SELECT score FROM study_ood").fetchall()]


def flag_metrics(database: Database) -> tuple[list[float], dict[str, int]]:
    """Every study's latest OOD score, and the flag counts by kind, for the metrics (empty
    when no job runner has created the tables yet)."""
    try:
        with database.snapshot() as db:
            scores = [float(r[0]) for r in db.execute("SELECT score FROM study_ood")]
            counts = {
                str(kind): int(n)
                for kind, n in db.execute("SELECT kind, COUNT(*) FROM study_flags GROUP BY kind")
            }
    except MissingTableError:
        return [], {}
    return scores, counts
