"""Review and OOD flags and OOD scores (listener.store.flags) in the admin API, the dashboard
and the metrics."""

from __future__ import annotations

from pathlib import Path

from pgserver import database_setting
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from listener.admin import open_state
from listener.admin.dashboard import _flags
from listener.admin.metrics import JournalCollector, build_registry
from listener.admin.views import study_flags
from listener.settings import load_settings
from listener.store.db import Database
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.flags import StudyFlag, StudyFlags
from listener.store.jobs import JobStore


def _flagged(path: JournalDb) -> None:
    flags = StudyFlags(path)
    flags.set_ood("1.2.3", 0.72, "v1", 10.0)
    flags.set_ood("1.2.4", 0.1, "v1", 10.0)
    flags.flag(StudyFlag("1.2.3", "ood", "r", "t", "out-of-distribution 0.72", 0.72, "odd", 11.0))
    flags.flag(StudyFlag("1.2.3", "review", "r", "t", "fracture: 0.9", 0.9, None, 12.0), 5)
    flags.close()


def test_flags_and_ood_score_in_the_api_and_the_dashboard(
    tmp_path: Path, journal_db: JournalDb
) -> None:
    """The study's flags (oldest first) and its latest OOD score are in its API view, and the
    dashboard's flag cell shows each kind with its reason."""
    state = open_state(load_settings(data_dir=tmp_path, **database_setting(journal_db)))
    _flagged(state.db_path)
    try:
        view = study_flags(state, "1.2.3")
    finally:
        state.close()
    assert view["ood_score"] == 0.72
    assert [(f["kind"], f["destination"]) for f in view["flags"]] == [
        ("ood", "odd"),
        ("review", None),
    ]
    cell = _flags(view["flags"])
    assert "<mark>review</mark> fracture: 0.9" in cell and "<mark>ood</mark>" in cell


def test_flags_and_ood_scores_in_the_metrics(tmp_path: Path, journal_db: JournalDb) -> None:
    """pacsai_study_flags counts flags by kind; pacsai_study_ood_score is the scores' histogram."""
    settings = load_settings(data_dir=tmp_path, **database_setting(journal_db))
    state = open_state(settings)  # every table the metrics read
    path = state.db_path
    state.close()
    _flagged(path)
    database = Database(path)
    text = generate_latest(build_registry(JournalCollector(database, tmp_path, lambda: 1.0)))
    database.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    assert samples[("pacsai_study_flags_total", (("kind", "review"),))] == 1
    assert samples[("pacsai_study_flags_total", (("kind", "ood"),))] == 1
    assert samples[("pacsai_study_ood_score_count", ())] == 2
    assert samples[("pacsai_study_ood_score_bucket", (("le", "0.5"),))] == 1
    # no request on the wire: every model at 0
    assert samples[("pacsai_model_requests_in_flight", (("model", "cxrreportgen"),))] == 0


def test_review_flag_raises_the_priority_of_the_studys_scheduled_jobs(tmp_path: Path) -> None:
    """Flagging with raise_priority moves the study's scheduled jobs ahead in the queue."""
    path = tmp_path / "journal.sqlite"
    jobs = JobStore(path)
    jobs.schedule(
        job_key="k1",
        study_uid="1.2.3",
        generation=0,
        rule="r",
        task="t",
        payload={"model": "medimageinsight"},
        priority=0,
        now=1.0,
    )
    flags = StudyFlags(path)
    flags.flag(StudyFlag("1.2.3", "review", "r", "t", "x", 0.9, None, 2.0), 7)
    flags.close()
    (job,) = jobs.list_jobs(study_uid="1.2.3")
    jobs.close()
    assert job.priority == 7


def test_a_studys_view_lists_the_most_similar_other_studies(tmp_path: Path) -> None:
    """The study timeline's ``similar``: other studies by embedding, the nearest first."""
    from listener.admin.views import similar_studies
    from listener.store.embeddings import EmbeddingStore

    state = open_state(load_settings(data_dir=tmp_path))
    store = EmbeddingStore(state.db_path)
    base = [1.0] + [0.0] * 1023
    for study, tilt in (("1.1", 0.0), ("1.2", 0.1), ("1.3", 2.0), ("1.4", 0.5)):
        store.put(f"{study}.1", study, [base[0], tilt, *base[2:]], "v1", now=1.0)
    store.close()
    try:
        found = similar_studies(state, "1.1", top=2)
        assert similar_studies(state, "9.9") == []
    finally:
        state.close()
    assert [f["study_uid"] for f in found] == ["1.2", "1.4"]
