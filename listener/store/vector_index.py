"""Similarity search at scale: a compressed exhaustive scan with an exact re-rank (faiss) over the
stored embeddings.

The exact search of :meth:`listener.store.embeddings.EmbeddingStore.similar` reads every float32
vector on each query (4 GiB at a million vectors). This index answers the same question (cosine
similarity, one model version) in two steps, both from faiss (Douze et al., "The Faiss library",
arXiv:2401.08281, 2024):

1. every stored vector is compared with the query through a 4-bit product-quantisation code of
   256 bytes (one code of 16 centroids per pair of dimensions; Jégou, Douze, Schmid, "Product
   quantization for nearest neighbor search", IEEE TPAMI 33(1), 2011), scanned with the SIMD
   in-register look-up of André, Kermarrec, Le Scouarnec, "Cache locality is not enough:
   high-performance nearest neighbor search with product quantization fast scan", VLDB 2015
   (faiss ``PQ512x4fs``), which reads a sixteenth of the float32 bytes;
2. the ``CANDIDATES`` best by that estimate are re-ranked by their exact cosine against
   half-precision copies of the vectors (faiss ``Refine(SQfp16)``).

A graph index (HNSW) was measured first and left: on vectors with no cluster structure its
recall fell to 0.26 at 100,000 vectors, while the scan keeps every vector in the running
(bench/README.md, "Similarity search"). Below ``EXACT_BELOW`` vectors the index is an exact
float32 scan, which is fast at that size and needs no training; the first refresh that reaches
it trains the codes on the stored vectors and rebuilds.

The index is a file per model version under ``<data_dir>/index/``; each embedding's id is its row
id in the embeddings table, and an index catches up with rows added since it was saved when it is
opened (:meth:`VectorIndex.refresh`). Filters (modality, received date) are applied to the
candidates: the index is asked for more neighbours than wanted (``oversample`` times) and the kept
ones are those that pass; when a filter leaves fewer than ``top``, the exact search over the
filtered rows answers instead, so a narrow filter never returns fewer neighbours than exist.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from listener.store.embeddings import EmbeddingStore, Neighbour

DIMENSIONS = 1024
EXACT_BELOW = 20_000  # fewer vectors: exact float32 scan (a few milliseconds), no training
CANDIDATES = 1_000  # re-ranked exactly per query: recall@10 0.99+ at 1M (bench/README.md)
TRAIN_AT_MOST = 16_384  # vectors the codes are trained on (k-means samples 4,096 of them)
BATCH = 20_000  # rows read from the journal at a time


@dataclass(frozen=True)
class SimilarFilter:
    """Which stored instances may be answered: modality and received date range (inclusive)."""

    modality: str | None = None
    since: date | None = None
    until: date | None = None

    @property
    def active(self) -> bool:
        return self.modality is not None or self.since is not None or self.until is not None


def new_index(dimensions: int = DIMENSIONS, compressed: bool = True) -> faiss.IndexIDMap2:
    """An empty inner-product index with ids (vectors are stored unit length, so inner product
    is cosine): the trained code scan with exact re-rank, or an exact flat scan."""
    spec = f"PQ{dimensions // 2}x4fs,Refine(SQfp16)" if compressed else "Flat"
    return faiss.IndexIDMap2(faiss.index_factory(dimensions, spec, faiss.METRIC_INNER_PRODUCT))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run faiss on one OpenMP thread for the block (the setting is the calling thread's own).
    Training and single-query searches are many short parallel regions whose threads spin
    waiting for each other; on two cores shared with other work, training 16,384 vectors took
    143 s on two threads and 9 s on one (bench/README.md)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def train(index: faiss.IndexIDMap2, vectors: npt.NDArray[np.float32]) -> None:
    """Train a compressed index's codes on (up to ``TRAIN_AT_MOST`` of) ``vectors``."""
    with one_thread():
        index.train(np.ascontiguousarray(vectors[:TRAIN_AT_MOST], dtype=np.float32))


def knn(
    index: faiss.IndexIDMap2, queries: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The ``k`` best (inner products, ids; id -1 past the end) of each query row, with
    ``CANDIDATES`` re-ranked exactly when the index is compressed."""
    k = min(k, max(index.ntotal, 1))
    params = None
    if isinstance(faiss.downcast_index(index.index), faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = max(CANDIDATES / k, 1.0)
    with one_thread():
        scores, ids = index.search(
            np.ascontiguousarray(queries, dtype=np.float32), k, params=params
        )
    return scores, ids


class VectorIndex:
    """The similarity index of one model version's embeddings, kept in step with the journal."""

    def __init__(
        self,
        store: EmbeddingStore,
        folder: Path,
        model_version: str,
        exact_below: int = EXACT_BELOW,
    ) -> None:
        self.store = store
        self.exact_below = exact_below
        self.model_version = model_version
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_version)
        self.path = folder / f"{safe}.faiss"
        self.index: Any  # faiss.IndexIDMap2, over a flat or a refined fast-scan index
        if self.path.is_file():
            self.index = faiss.read_index(str(self.path))
        else:
            self.index = new_index(compressed=False)

    @property
    def compressed(self) -> bool:
        return isinstance(faiss.downcast_index(self.index.index), faiss.IndexRefine)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def refresh(self) -> int:
        """Add the embeddings stored since the index was saved (rebuilding it compressed when it
        reaches ``exact_below`` vectors); save it; how many were added."""
        known = int(faiss.vector_to_array(self.index.id_map).max()) if len(self) else 0
        added = 0
        if not self.compressed and len(self) + self._count_after(known) >= self.exact_below:
            self.index = new_index(compressed=True)
            train(self.index, next(self._batches(0, TRAIN_AT_MOST))[1])
            known = 0
            added = -len(self)
        for keys, vectors in self._batches(known, BATCH):
            self.index.add_with_ids(vectors, keys)
            added += len(keys)
        if added:  # written beside, then renamed: a reader never opens a half-written file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
            faiss.write_index(self.index, str(partial))
            partial.replace(self.path)
        return max(added, 0)

    def _count_after(self, key: int) -> int:
        with self.store.db.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model_version = ? AND rowid > ?",
                (self.model_version, key),
            ).fetchone()
        return int(row[0])

    def _batches(
        self, after: int, size: int
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """The stored rows past ``after`` in row-id order, ``size`` at a time (ids, vectors)."""
        while True:
            with self.store.db.read() as db:
                rows = db.execute(
                    "SELECT rowid, vector FROM embeddings WHERE model_version = ? AND rowid > ?"
                    " ORDER BY rowid LIMIT ?",
                    (self.model_version, after, size),
                ).fetchall()
            if not rows:
                return
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            yield keys, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            after = int(keys[-1])

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
        scores, ids = knn(self.index, query.reshape(1, -1), count)
        pairs = [(int(k), float(s)) for k, s in zip(ids[0], scores[0], strict=True) if k >= 0]
        rows = self._rows([k for k, _ in pairs])
        found = []
        for key, score in pairs:
            row = rows.get(key)
            if row is None or row[0] == exclude or not _passes(row, where):
                continue
            found.append(Neighbour(row[0], row[1], score, row[2], row[3]))
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
        """Exact search over the rows passing ``where``: their vectors only are read (a narrow
        filter over a million rows reads a few, not 4 GiB)."""
        with self.store.db.read() as db:
            rows = db.execute(
                "SELECT e.rowid, e.sop_instance_uid, e.study_uid, i.modality,"
                " COALESCE(i.received_at, e.created_at) FROM embeddings e"
                " LEFT JOIN instances i ON i.sop_instance_uid = e.sop_instance_uid"
                " WHERE e.model_version = ?",
                (self.model_version,),
            ).fetchall()
        kept = [
            (int(r[0]), (str(r[1]), str(r[2]), r[3], float(r[4])))
            for r in rows
            if r[1] != exclude and _passes((r[1], r[2], r[3], r[4]), where)
        ]
        if not kept:
            return []
        vectors = self._vectors([key for key, _ in kept])
        scores = np.stack([vectors[key] for key, _ in kept]) @ query
        order = np.argsort(-scores)[:top]
        return [
            Neighbour(r[0], r[1], float(scores[i]), r[2], r[3])
            for i in order
            for r in (kept[i][1],)
        ]

    def _vectors(self, keys: list[int]) -> dict[int, npt.NDArray[np.float32]]:
        """The stored vectors of these row ids, read 500 at a time."""
        found: dict[int, npt.NDArray[np.float32]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            with self.store.db.read() as db:
                rows = db.execute(
                    "SELECT rowid, vector FROM embeddings"
                    f" WHERE rowid IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
            found |= {int(r[0]): np.frombuffer(r[1], dtype=np.float32) for r in rows}
        return found


def _passes(row: tuple[str, str, str | None, float], where: SimilarFilter) -> bool:
    if where.modality is not None and (row[2] or "").upper() != where.modality.upper():
        return False
    day = datetime.fromtimestamp(row[3], UTC).date()
    if where.since is not None and day < where.since:
        return False
    return not (where.until is not None and day > where.until)


class OpenIndexes:
    """The indexes a long-running process (the admin server) keeps open, one per model version:
    a query reads the index file once, not on every call (2.3 GiB at a million vectors), and
    each query first catches the index up with rows stored since."""

    def __init__(self, store: EmbeddingStore, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self._open: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()

    def similar(
        self, sop_instance_uid: str, top: int = 5, where: SimilarFilter | None = None
    ) -> list[Neighbour]:
        """The instances most like one, through the index of its model version (KeyError: the
        instance has no embedding)."""
        found = self.store.get(sop_instance_uid)
        if found is None:
            raise KeyError(sop_instance_uid)
        _, query, version = found
        with self._lock:
            index = self._open.get(version)
            if index is None:
                index = self._open[version] = VectorIndex(self.store, self.folder, version)
            index.refresh()
            return index.search(query, top, where, exclude=sop_instance_uid)


def similar(
    store: EmbeddingStore,
    folder: Path,
    sop_instance_uid: str,
    top: int = 5,
    where: SimilarFilter | None = None,
) -> list[Neighbour]:
    """The instances most like one, opening the index of its model version for this one query
    (``pacs-ai similar``; KeyError: the instance has no embedding)."""
    return OpenIndexes(store, folder).similar(sop_instance_uid, top, where)
