"""Similarity through the vector index (listener.store.vector_index, ``pacs-ai similar``): the
index agrees with exact search, exact or compressed, catches up with new embeddings, and filters
by modality and received date."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from listener.cli.common import EXIT_OK
from listener.cli.main import main
from listener.store.embeddings import EmbeddingStore
from listener.store.journal import InstanceRecord, Journal
from listener.store.vector_index import OpenIndexes, SimilarFilter, VectorIndex, similar

DAY = 86400.0


def _stored(path: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` instances (CT on even, MR on odd; received on day i % 3 of 2026) with embeddings."""
    rng = np.random.default_rng(seed)
    journal = Journal(path)
    store = EmbeddingStore(path)
    base = 1767225600.0  # 2026-01-01 00:00 UTC
    uids = []
    for i in range(n):
        uid, study = f"1.2.3.{i}", f"1.2.{i}"
        journal.record_instance(
            InstanceRecord(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid=study,
                series_uid=f"{study}.1",
                modality="CT" if i % 2 == 0 else "MR",
                transfer_syntax="1.2.840.10008.1.2.1",
                path=f"spool/{i}.dcm",
                size=1,
                received_at=base + (i % 3) * DAY + 60,
                generation=0,
            ),
            quiet_period_s=10.0,
        )
        store.put(uid, study, list(rng.standard_normal(1024)), "v1", now=base)
        uids.append(uid)
    journal.close()
    store.close()
    return uids


def test_index_agrees_with_exact_search_and_catches_up(tmp_path: Path) -> None:
    """The index's top 10 equal the exact top 10 on 300 vectors; a vector added later is found
    after the index is reopened, and the saved file is reused."""
    path = tmp_path / "journal.sqlite"
    uids = _stored(path, 300)
    store = EmbeddingStore(path)
    exact = [n.sop_instance_uid for n in store.similar(uids[0], 10)]
    indexed = [n.sop_instance_uid for n in similar(store, tmp_path / "index", uids[0], 10)]
    assert indexed == exact
    found = store.get(uids[0])
    assert found is not None
    store.put("9.9.9", "9.9", list(found[1] + 0.01), "v1", now=2.0)  # a near twin of uids[0]
    index = VectorIndex(store, tmp_path / "index", "v1")
    assert len(index) == 300 and not index.compressed and index.refresh() == 1
    assert similar(store, tmp_path / "index", uids[0], 1)[0].sop_instance_uid == "9.9.9"
    store.close()


def test_compressed_index_agrees_with_exact_search(tmp_path: Path) -> None:
    """Past its size for exact scanning the index trains its codes and rebuilds compressed; its
    top 10 still equal the exact top 10, and the saved compressed file is reopened as such."""
    path = tmp_path / "journal.sqlite"
    uids = _stored(path, 300)
    store = EmbeddingStore(path)
    index = VectorIndex(store, tmp_path / "index", "v1", exact_below=200)
    assert index.refresh() == 300 and index.compressed and len(index) == 300
    for uid in uids[:5]:
        found = store.get(uid)
        assert found is not None
        exact = [n.sop_instance_uid for n in store.similar(uid, 10)]
        assert [n.sop_instance_uid for n in index.search(found[1], 10, exclude=uid)] == exact
    reopened = VectorIndex(store, tmp_path / "index", "v1", exact_below=200)
    assert reopened.compressed and reopened.refresh() == 0 and len(reopened) == 300
    store.close()


def test_filters_by_modality_and_received_date(tmp_path: Path) -> None:
    """Only MR neighbours with --modality MR; only those received on 2026-01-02 with a one-day
    range; a filter narrower than top answers every instance that passes it."""
    path = tmp_path / "journal.sqlite"
    uids = _stored(path, 60)
    store = EmbeddingStore(path)
    folder = tmp_path / "index"
    mr = similar(store, folder, uids[0], 10, SimilarFilter(modality="MR"))
    assert len(mr) == 10 and all(int(n.sop_instance_uid.rsplit(".", 1)[1]) % 2 for n in mr)
    day = date(2026, 1, 2)
    one_day = similar(store, folder, uids[0], 50, SimilarFilter(since=day, until=day))
    assert {int(n.sop_instance_uid.rsplit(".", 1)[1]) % 3 for n in one_day} == {1}
    assert len(one_day) == 20
    store.close()


def test_similar_command_with_a_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pacs-ai similar --modality CT`` lists CT instances only."""
    uids = _stored(tmp_path / "journal.sqlite", 40)
    argv = ["similar", uids[1], "--top", "5", "--modality", "CT", "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 5
    assert all(int(line.split("\t")[1].rsplit(".", 1)[1]) % 2 == 0 for line in lines)


def test_similar_command_with_a_date_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pacs-ai similar --since 2026-01-03 --until 2026-01-03`` lists only instances received
    that day (i % 3 == 2), though nearer ones were received on other days."""
    uids = _stored(tmp_path / "journal.sqlite", 30)
    argv = ["similar", uids[0], "--top", "10", "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    everyone = capsys.readouterr().out.splitlines()[1:]
    assert {int(line.split("\t")[1].rsplit(".", 1)[1]) % 3 for line in everyone} == {0, 1, 2}
    assert main([*argv, "--since", "2026-01-03", "--until", "2026-01-03"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 10
    assert {int(line.split("\t")[1].rsplit(".", 1)[1]) % 3 for line in lines} == {2}


def test_open_indexes_keep_one_index_and_catch_up(tmp_path: Path) -> None:
    """The admin server's open indexes load a model version's index once and find an embedding
    stored after the first query on the next one."""
    path = tmp_path / "journal.sqlite"
    uids = _stored(path, 50)
    store = EmbeddingStore(path)
    indexes = OpenIndexes(store, tmp_path / "index")
    first = indexes.similar(uids[0], 3)
    index = indexes._open["v1"]
    found = store.get(uids[0])
    assert found is not None
    store.put("9.9.9", "9.9", list(found[1] + 0.01), "v1", now=2.0)
    assert indexes.similar(uids[0], 3)[0].sop_instance_uid == "9.9.9"
    assert indexes._open["v1"] is index and len(index) == 51
    assert first[0].sop_instance_uid != "9.9.9"
    store.close()
