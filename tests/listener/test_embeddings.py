"""Embedding store: similarity search and the out-of-distribution score."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.store.db import DatabaseTarget as JournalDb
from listener.store.embeddings import EmbeddingStore, ood_score, unit


def _vector(seed: int, base: np.ndarray | None = None, noise: float = 1.0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=1024) * noise
    if base is not None:
        values = values + base
    return [float(v) for v in unit(values)]


def test_similar_ranks_near_vectors_first(journal_db: JournalDb) -> None:
    """Instances whose vectors are close to the query come before unrelated ones."""
    store = EmbeddingStore(journal_db)
    base = np.asarray(_vector(1))
    store.put("q", "s1", list(base), "v1", now=0)
    store.put("near", "s2", _vector(2, base * 10, noise=0.05), "v1", now=0)
    store.put("far", "s3", _vector(3), "v1", now=0)
    store.put("other-model", "s4", list(base), "v2", now=0)
    ranked = store.similar("q", top=5)
    assert [n.sop_instance_uid for n in ranked] == ["near", "far"]
    assert ranked[0].similarity > 0.9 > ranked[1].similarity


def test_ood_score_separates_unseen_content(journal_db: JournalDb) -> None:
    """A study like the reference scores low; an unrelated one scores high; too few is None."""
    store = EmbeddingStore(journal_db)
    base = np.asarray(_vector(7)) * 10
    assert store.study_ood_score("new", _vector(8), "v1") is None
    for i in range(8):
        store.put(f"ref{i}", f"study{i}", _vector(100 + i, base, noise=0.05), "v1", now=i)
    familiar = store.study_ood_score("new", _vector(200, base, noise=0.05), "v1")
    strange = store.study_ood_score("new", _vector(300), "v1")
    assert familiar is not None and strange is not None
    assert familiar < 0.1 < 0.5 < strange


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_ood_score_of_a_reference_member_is_zero(seed: int) -> None:
    """A vector that is itself in the reference set has distance 0 to its nearest neighbour."""
    reference = np.stack([unit(_vector(seed + i)) for i in range(3)])
    assert abs(ood_score(reference[0], reference, k=1)) < 1e-5
