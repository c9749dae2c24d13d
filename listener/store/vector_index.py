"""Similarity search at scale: an embedded HNSW index (usearch) over the stored embeddings.

The exact search of :meth:`listener.store.embeddings.EmbeddingStore.similar` reads every vector
on each query; this index answers the same question (cosine similarity, one model version) in
logarithmic time with a hierarchical navigable small-world graph (Malkov, Yashunin, "Efficient
and robust approximate nearest neighbor search using Hierarchical Navigable Small World graphs",
IEEE TPAMI 42(4), 2020), as implemented by usearch. The index is a file per model version under
``<data_dir>/index/``; each embedding's key is its row id in the embeddings table, and an index
catches up with rows added since it was saved when it is opened (:meth:`VectorIndex.refresh`).

Filters (modality, received date) are applied to the candidates: the index is asked for more
neighbours than wanted (``oversample`` times) and the kept ones are those that pass; when a
filter leaves fewer than ``top``, the exact search over the filtered rows answers instead, so a
narrow filter never returns fewer neighbours than exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from listener.store.embeddings import EmbeddingStore, Neighbour

DIMENSIONS = 1024


@dataclass(frozen=True)
class SimilarFilter:
    """Which stored instances may be answered: modality and received date range (inclusive)."""

    modality: str | None = None
    since: date | None = None
    until: date | None = None

    @property
    def active(self) -> bool:
        return self.modality is not None or self.since is not None or self.until is not None


def new_index(dimensions: int = DIMENSIONS, expansion_search: int = 128) -> Index:
    """An empty cosine HNSW index of half-precision vectors (half the memory of float32)."""
    return Index(
        ndim=dimensions,
        metric="cos",
        dtype="f16",
        connectivity=16,
        expansion_add=128,
        expansion_search=expansion_search,
    )


class VectorIndex:
    """The HNSW index of one model version's embeddings, kept in step with the journal."""

    def __init__(self, store: EmbeddingStore, folder: Path, model_version: str) -> None:
        self.store = store
        self.model_version = model_version
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_version)
        self.path = folder / f"{safe}.usearch"
        self.index = new_index()
        if self.path.is_file():
            self.index.load(str(self.path))

    def refresh(self) -> int:
        """Add the embeddings stored since the index was saved; save it; how many were added."""
        known = int(max(self.index.keys)) if len(self.index) else 0
        with self.store.db.read() as db:
            rows = db.execute(
                "SELECT rowid, vector FROM embeddings WHERE model_version = ? AND rowid > ?"
                " ORDER BY rowid",
                (self.model_version, known),
            ).fetchall()
        if rows:
            keys = np.array([r[0] for r in rows], dtype=np.uint64)
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            self.index.add(keys, vectors)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.index.save(str(self.path))
        return len(rows)

    def search(
        self,
        query: npt.NDArray[np.float32],
        top: int,
        where: SimilarFilter | None = None,
        exclude: str | None = None,
        oversample: int = 4,
    ) -> list[Neighbour]:
        """The ``top`` most similar stored instances passing ``where``, most similar first."""
        where = where or SimilarFilter()
        wanted = top + 1 if exclude else top
        count = wanted * (oversample if where.active else 1)
        matches = self.index.search(query, min(count, max(len(self.index), 1)))
        rows = self._rows([int(k) for k in matches.keys])
        found = []
        for key, distance in zip(matches.keys, matches.distances, strict=True):
            row = rows.get(int(key))
            if row is None or row[0] == exclude or not _passes(row, where):
                continue
            found.append(Neighbour(row[0], row[1], float(1.0 - distance)))
        if len(found) < top and where.active:
            return self._exact(query, top, where, exclude)
        return found[:top]

    def _rows(self, keys: list[int]) -> dict[int, tuple[str, str, str | None, float]]:
        """Each key's SOP Instance UID, study, modality and receive time."""
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        with self.store.db.read() as db:
            found = db.execute(
                "SELECT e.rowid, e.sop_instance_uid, e.study_uid, i.modality,"
                " COALESCE(i.received_at, e.created_at) FROM embeddings e"
                " LEFT JOIN instances i ON i.sop_instance_uid = e.sop_instance_uid"
                f" WHERE e.rowid IN ({marks})",
                keys,
            ).fetchall()
        return {int(r[0]): (str(r[1]), str(r[2]), r[3], float(r[4])) for r in found}

    def _exact(
        self,
        query: npt.NDArray[np.float32],
        top: int,
        where: SimilarFilter,
        exclude: str | None,
    ) -> list[Neighbour]:
        with self.store.db.read() as db:
            rows = db.execute(
                "SELECT e.sop_instance_uid, e.study_uid, i.modality,"
                " COALESCE(i.received_at, e.created_at), e.vector FROM embeddings e"
                " LEFT JOIN instances i ON i.sop_instance_uid = e.sop_instance_uid"
                " WHERE e.model_version = ?",
                (self.model_version,),
            ).fetchall()
        kept = [r for r in rows if r[0] != exclude and _passes((r[0], r[1], r[2], r[3]), where)]
        if not kept:
            return []
        matrix = np.stack([np.frombuffer(r[4], dtype=np.float32) for r in kept])
        scores = matrix @ query
        order = np.argsort(-scores)[:top]
        return [Neighbour(str(kept[i][0]), str(kept[i][1]), float(scores[i])) for i in order]


def _passes(row: tuple[str, str, str | None, float], where: SimilarFilter) -> bool:
    if where.modality is not None and (row[2] or "").upper() != where.modality.upper():
        return False
    day = datetime.fromtimestamp(row[3], UTC).date()
    if where.since is not None and day < where.since:
        return False
    return not (where.until is not None and day > where.until)


def similar(
    store: EmbeddingStore,
    folder: Path,
    sop_instance_uid: str,
    top: int = 5,
    where: SimilarFilter | None = None,
) -> list[Neighbour]:
    """The instances most like one, through the index of its model version (KeyError: the
    instance has no embedding)."""
    found = store.get(sop_instance_uid)
    if found is None:
        raise KeyError(sop_instance_uid)
    _, query, version = found
    index = VectorIndex(store, folder, version)
    index.refresh()
    return index.search(query, top, where, exclude=sop_instance_uid)
