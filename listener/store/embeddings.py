"""MedImageInsight embeddings kept per instance, for similarity search and drift monitoring.

Embeddings are not a DICOM result type (IHE AIR), so they stay inside the gateway: one unit-norm
float32 vector per classified instance in the journal database. Because the model L2-normalizes
its vectors, a dot product is the cosine similarity.

Out-of-distribution score of a study: ``1 - mean cosine similarity to its k nearest neighbours in
the reference set`` (the embeddings of earlier studies, other than itself). 0 means "looks like what
we have seen", values towards 1 (and beyond, for opposite vectors) mean "unlike anything seen".
With fewer than ``min_reference`` reference vectors the score is undefined (None): a fresh gateway
has no notion of normal yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from listener.store.db import JournalTables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    /* rowid */
    sop_instance_uid TEXT NOT NULL,
    model_version TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    vector BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (sop_instance_uid, model_version)
);
CREATE INDEX IF NOT EXISTS embeddings_study ON embeddings (study_uid);
"""


@dataclass(frozen=True)
class Neighbour:
    """A stored instance and its cosine similarity to the query (with its modality and receive
    time when the answer came through the index, which joins the journal for its filters)."""

    sop_instance_uid: str
    study_uid: str
    similarity: float
    modality: str | None = None
    received_at: float | None = None


def unit(vector: Sequence[float] | npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The vector as float32 scaled to length 1 (zero vectors stay zero)."""
    array = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array


def ood_score(
    vector: npt.NDArray[np.float32], reference: npt.NDArray[np.float32], k: int = 5
) -> float:
    """1 - mean cosine similarity of ``vector`` to its ``k`` nearest rows of ``reference``."""
    similarities = reference @ unit(vector)
    nearest = np.sort(similarities)[-min(k, len(similarities)) :]
    return float(1.0 - nearest.mean())


class EmbeddingStore(JournalTables):
    """The embeddings table in the journal database."""

    schema = _SCHEMA

    def put(
        self,
        sop_instance_uid: str,
        study_uid: str,
        vector: Sequence[float],
        model_version: str,
        now: float,
    ) -> None:
        """Store (or replace) the embedding of one instance for one model version. A replaced
        row is deleted and inserted anew (as SQLite's ``INSERT OR REPLACE`` does), so its
        ``rowid`` is new and an incremental reader (:mod:`listener.store.vector_index`) sees it."""
        blob = unit(vector).tobytes()
        with self.db.transaction() as db:
            db.execute(
                "DELETE FROM embeddings WHERE sop_instance_uid = ? AND model_version = ?",
                (sop_instance_uid, model_version),
            )
            db.execute(
                "INSERT INTO embeddings (sop_instance_uid, model_version, study_uid, vector,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (sop_instance_uid, model_version, study_uid, blob, now),
            )

    def _rows(self, model_version: str | None) -> list[tuple[str, str, bytes]]:
        sql = "SELECT sop_instance_uid, study_uid, vector FROM embeddings"
        params: tuple[str, ...] = ()
        if model_version is not None:
            sql += " WHERE model_version = ?"
            params = (model_version,)
        with self.db.read() as db:
            return list(db.execute(sql, params).fetchall())

    def get(self, sop_instance_uid: str) -> tuple[str, npt.NDArray[np.float32], str] | None:
        """(study UID, vector, model version) of one instance, the newest version if several."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT study_uid, vector, model_version FROM embeddings"
                " WHERE sop_instance_uid = ? ORDER BY created_at DESC LIMIT 1",
                (sop_instance_uid,),
            ).fetchone()
        if row is None:
            return None
        return str(row[0]), np.frombuffer(row[1], dtype=np.float32), str(row[2])

    def similar(self, sop_instance_uid: str, top: int = 5) -> list[Neighbour]:
        """The ``top`` most similar other instances (same model version), most similar first."""
        found = self.get(sop_instance_uid)
        if found is None:
            raise KeyError(sop_instance_uid)
        _, query, version = found
        rows = [r for r in self._rows(version) if r[0] != sop_instance_uid]
        if not rows:
            return []
        matrix = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
        scores = matrix @ query
        order = np.argsort(-scores)[:top]
        return [Neighbour(rows[i][0], rows[i][1], float(scores[i])) for i in order]

    def study_ood_score(
        self,
        study_uid: str,
        vector: Sequence[float],
        model_version: str,
        *,
        k: int = 5,
        min_reference: int = 5,
    ) -> float | None:
        """OOD score of a study's vector against every other study's (None: too few yet)."""
        rows = [r for r in self._rows(model_version) if r[1] != study_uid]
        if len(rows) < min_reference:
            return None
        reference = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
        return ood_score(unit(vector), reference, k)

    def by_version(
        self, uids: Sequence[str], *, study: bool = False
    ) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        """Each UID's embedding per model version: of the instance, or (``study``) the unit mean
        of the study's instances (what an adapter trained per study learns from)."""
        column = "study_uid" if study else "sop_instance_uid"
        found: dict[str, dict[str, list[npt.NDArray[np.float32]]]] = {}
        with self.db.read() as db:
            for uid in dict.fromkeys(uids):
                rows = db.execute(
                    f"SELECT model_version, vector FROM embeddings WHERE {column} = ?",
                    (uid,),
                ).fetchall()
                for version, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    found.setdefault(uid, {}).setdefault(str(version), []).append(vector)
        return {
            uid: {version: unit(np.mean(vectors, axis=0)) for version, vectors in versions.items()}
            for uid, versions in found.items()
        }

    def first_instance(self, study_uid: str) -> str | None:
        """The SOP Instance UID of one embedded instance of the study (None: none embedded)."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT sop_instance_uid FROM embeddings WHERE study_uid = ?"
                " ORDER BY created_at LIMIT 1",
                (study_uid,),
            ).fetchone()
        return None if row is None else str(row[0])

    def instance_count(self, study_uid: str) -> int:
        """How many instances of the study have an embedding (any model version)."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE study_uid = ?", (study_uid,)
            ).fetchone()
        return int(row[0])

    def count(self) -> int:
        with self.db.read() as db:
            return int(db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
