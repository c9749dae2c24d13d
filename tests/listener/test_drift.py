"""Embedding drift: the MMD permutation test and the per-group readings (listener.store.drift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from listener.settings import DriftSettings
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.drift import DriftStore, group_key
from listener.store.mmd import mmd_test, projection


def _cloud(centre: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    points = centre + 0.8 * rng.standard_normal((n, centre.size))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_mmd_test_tells_a_shift_from_a_resample() -> None:
    """Two samples of one distribution give a large p-value; a shifted one a tiny p-value."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(1024), rng.standard_normal(1024)
    project = projection(1024, 32)
    same = mmd_test(_cloud(a, 40, rng) @ project, _cloud(a, 30, rng) @ project)
    shifted = mmd_test(_cloud(a, 40, rng) @ project, _cloud(b, 30, rng) @ project)
    assert same.p_value > 0.05
    assert shifted.p_value < 0.01 and shifted.statistic > same.statistic


def test_a_group_drifts_when_its_input_changes_and_the_other_does_not(
    journal_db: JournalDb,
) -> None:
    """Group CT1 gets 40 studies of one kind, then another kind: it drifts within the second
    batch, turning once; group CT2, always the first kind, never drifts."""
    settings = DriftSettings(reference_size=20, window_size=15, min_window=8)
    store = DriftStore(journal_db, settings)
    rng = np.random.default_rng(2)
    first, second = rng.standard_normal(1024), rng.standard_normal(1024)
    shifted = group_key({"calling_ae": "CT1", "modality": "CT"}, settings.group_by)
    steady = group_key({"calling_ae": "CT2", "modality": "CT"}, settings.group_by)
    assert shifted == "calling_ae=CT1,modality=CT"
    turned = []
    for i in range(60):
        kind = first if i < 40 else second
        for group, centre in ((shifted, kind), (steady, first)):
            vector = _cloud(centre, 1, rng)[0]
            reading, turn = store.observe(group, f"{group}.{i}", list(vector), "v1", float(i))
            if turn:
                turned.append((group, i))
            if i < 27:  # reference of 20 and a window under 8: no reading yet
                assert reading is None
    readings = store.readings(shifted)
    assert not any(r.drifted for r in readings if r.at < 40)
    assert turned and turned[0][0] == shifted and 40 <= turned[0][1] < 50
    assert len([t for t in turned if t[0] == shifted]) == 1
    assert not any(r.drifted for r in store.readings(steady))
    assert store.latest()[shifted].drifted
    assert store.members() == {shifted: 60, steady: 60}
    store.close()


def test_drift_command_prints_each_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pacs-ai drift`` lists every group with its studies; a group with a reading shows it."""
    from listener.cli.main import main

    settings = DriftSettings(reference_size=5, window_size=5, min_window=3)
    store = DriftStore(tmp_path / "journal.sqlite", settings)
    rng = np.random.default_rng(3)
    centre = rng.standard_normal(1024)
    for i in range(8):
        store.observe("calling_ae=A", f"s{i}", list(_cloud(centre, 1, rng)[0]), "v1", float(i))
    store.observe("calling_ae=B", "t0", list(_cloud(centre, 1, rng)[0]), "v1", 1.0)
    store.close()
    assert main(["drift", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GROUP\tSTUDIES\tMMD2")
    assert lines[1].startswith("calling_ae=A\t8\t") and lines[1].split("\t")[4] in ("yes", "no")
    assert lines[2] == "calling_ae=B\t1\t-\t-\t-\t-"
