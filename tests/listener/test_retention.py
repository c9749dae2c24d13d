"""Retention: originals go only after their study settled and aged; a purge survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from factory import ct_series
from pgserver import database_setting

from listener.pipeline import Pipeline, build_pipeline
from listener.serve.loops import retention
from listener.settings import Settings
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.journal import InstanceRecord
from listener.store.outbox import Outcome
from listener.store.records import AdminRecords
from listener.store.stats import Stats, read_stats

T0 = 1_000_000.0
DAY = 86400.0


def _pipeline(tmp_path: Path, journal_db: JournalDb | None = None) -> Pipeline:
    settings = Settings(
        data_dir=tmp_path / "var",
        **({} if journal_db is None else database_setting(journal_db)),
        retention_originals_s=DAY,
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
    )
    return build_pipeline(settings, clock=lambda: T0)


def _stats(pipeline: Pipeline) -> Stats:
    AdminRecords(pipeline.settings.journal_database).close()  # the admin's tables, as in serve
    return read_stats(pipeline.journal.db)


def _dispatched_study(pipeline: Pipeline, n: int = 4) -> tuple[str, list[Path]]:
    """A study received at T0, released and dispatched, as the receiver and worker leave it."""
    datasets = ct_series(n)
    paths = []
    for ds in datasets:
        relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        path = pipeline.settings.spool_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        pipeline.journal.record_instance(
            InstanceRecord(
                str(ds.SOPInstanceUID),
                str(ds.SOPClassUID),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                "CT",
                str(ds.file_meta.TransferSyntaxUID),
                relative,
                path.stat().st_size,
                T0,
                0,
            ),
            quiet_period_s=5,
        )
    study_uid = str(datasets[0].StudyInstanceUID)
    for study in pipeline.journal.release_due_studies(T0 + 5):
        pipeline.journal.mark_dispatched(study.study_uid, study.generation)
    return study_uid, paths


def test_originals_go_after_their_study_settled_and_aged(
    tmp_path: Path, journal_db: JournalDb
) -> None:
    """Originals stay while a job is scheduled or a send of them is pending, however old; they
    are purged a day after the last job and send finished, journaled and counted in metrics
    (on both journal engines)."""
    pipeline = _pipeline(tmp_path, journal_db)
    purger = retention(pipeline)
    study_uid, paths = _dispatched_study(pipeline)
    job_id = pipeline.jobs.schedule(
        job_key="k",
        study_uid=study_uid,
        generation=0,
        rule="r",
        task="t",
        payload={},
        priority=0,
        now=T0 + 5,
    )
    pipeline.outbox.enqueue("pacs", paths[0], "1.2.3", "forward", now=T0 + 5)
    assert purger.purge_due(T0 + 30 * DAY).files == {}  # job scheduled, send pending
    job = pipeline.jobs.claim("w", T0 + 10, 60)
    assert job is not None and job.id == job_id
    pipeline.jobs.complete(job.lease, [], T0 + 20)
    assert purger.purge_due(T0 + 30 * DAY).files == {}  # the send still needs a file
    (entry,) = pipeline.outbox.claim(T0 + 100, batch_size=10, lease_s=60)["pacs"]
    pipeline.outbox.record([Outcome(entry, "sent", 1)], T0 + 100)
    assert purger.purge_due(T0 + 100 + DAY - 1).files == {}  # settled, not a day old yet
    assert all(p.exists() for p in paths)
    report = purger.purge_due(T0 + 100 + DAY)
    assert report.files == {"originals": 4}
    assert not any(p.exists() for p in paths)
    assert pipeline.journal.instances(study_uid) == []
    stats = _stats(pipeline)
    assert stats.purged == [("originals", 4, sum(report.bytes.values()))]


_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
from listener.pipeline import build_pipeline
from listener.serve.loops import retention
from listener.settings import Settings

settings = Settings(data_dir=Path(sys.argv[1]), retention_originals_s=1.0)
pipeline = build_pipeline(settings)
removed = []

def remove(path: Path) -> None:
    if len(removed) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    path.unlink()
    removed.append(path)

retention(pipeline).purge_due(float(sys.argv[2]), remove)
"""


def test_kill_during_a_purge_is_completed_at_start_up(tmp_path: Path) -> None:
    """Kill -9 after two of four files of a purge: the journal still lists the study's rows and
    the purge's intent; start-up completes it, leaving no file and no row behind."""
    pipeline = _pipeline(tmp_path)
    study_uid, paths = _dispatched_study(pipeline)
    pipeline.close()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_MIDWAY),
            str(tmp_path / "var"),
            str(T0 + DAY),
        ],
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    pipeline = _pipeline(tmp_path)
    assert sum(p.exists() for p in paths) == 2
    assert len(pipeline.journal.instances(study_uid)) == 4
    assert retention(pipeline).complete_interrupted(T0 + DAY) == 1
    assert not any(p.exists() for p in paths)
    assert pipeline.journal.instances(study_uid) == []
    assert pipeline.journal.known_paths() == set()
    assert _stats(pipeline).purged[0][:2] == ("originals", 4)
    assert retention(pipeline).complete_interrupted(T0 + DAY) == 0
