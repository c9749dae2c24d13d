"""Readiness turns red with a reason per stuck stage; the admin clock is passed in."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pgserver import database_setting

from listener.admin import create_admin_app, open_state
from listener.asgi import BackgroundServer
from listener.settings import Settings, load_settings
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.executors import ExecutorBeat, Executors
from listener.store.journal import InstanceRecord, Journal
from listener.store.outbox import Outbox

NOW = 1_800_000_000.0


def _settings(tmp_path: Path, journal_db: JournalDb) -> Settings:
    """The gateway's settings, its journal on the engine of ``journal_db``."""
    return load_settings(
        None, data_dir=tmp_path / "data", disk_min_free_mb=0, **database_setting(journal_db)
    )


def _ready(tmp_path: Path, now: float, journal_db: JournalDb) -> httpx.Response:
    settings = _settings(tmp_path, journal_db)
    state = open_state(settings, clock=lambda: now)
    try:
        with BackgroundServer(create_admin_app(state)) as server:
            return httpx.get(f"{server.url}/readyz", timeout=30)
    finally:
        state.close()


@pytest.mark.integration
def test_stuck_stages_make_readiness_fail_with_reasons(
    tmp_path: Path, journal_db: JournalDb
) -> None:
    """An unreleased study, a job past its lease, an overdue job and an overdue outbox entry
    each add their reason to a 503; before they are late, the gateway is ready."""
    path = _settings(tmp_path, journal_db).journal_database
    journal = Journal(path)
    record = InstanceRecord(
        "1.2.3.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3",
        "1.2.3.9",
        "CT",
        "1.2.840.10008.1.2.1",
        "x.dcm",
        10,
        NOW,
        0,
    )
    journal.record_instance(record, quiet_period_s=10.0)
    journal.close()
    state = open_state(_settings(tmp_path, journal_db))
    for key in ("a", "b"):
        state.jobs.schedule(
            job_key=key,
            study_uid="1.2.3",
            generation=0,
            rule="r",
            task="t",
            payload={},
            priority=0,
            now=NOW,
        )
    assert state.jobs.claim("worker", NOW, lease_s=60.0) is not None
    state.close()
    outbox = Outbox(path, ["pacs"])
    outbox.enqueue("pacs", tmp_path / "x.dcm", "1.2.3.1", "job", NOW)
    assert _ready(tmp_path, NOW + 30, journal_db).status_code == 200
    answer = _ready(tmp_path, NOW + 3600, journal_db)
    assert answer.status_code == 503
    reasons = answer.json()["reasons"]
    assert [reason.split(":")[0] for reason in reasons] == ["assemble", "infer", "infer", "send"]
    assert "1 jobs IN PROGRESS past their lease" in reasons[1]
    assert "1 scheduled jobs overdue" in reasons[2]


@pytest.mark.integration
def test_an_open_breaker_names_the_model_without_failing_the_gateway(
    tmp_path: Path, journal_db: JournalDb
) -> None:
    """A job runner's open breaker makes /readyz name the model as unavailable with its cause
    and waiting jobs (status degraded, still 200: studies are still received and queued), and
    the metrics count the jobs waiting for it; once a breaker closes the model is available."""
    from listener.store.records import AdminRecords, ModelHealthRecorder

    settings = _settings(tmp_path, journal_db)
    state = open_state(settings)
    state.jobs.schedule(
        job_key="a",
        study_uid="1.2.3",
        generation=0,
        rule="r",
        task="t",
        payload={"model": "medimageinsight"},
        priority=0,
        now=NOW,
    )
    job = state.jobs.claim("worker", NOW, lease_s=60.0)
    assert job is not None and job.lease is not None
    cause = "cannot reach medimageinsight endpoint http://x/score: ConnectError: refused"
    state.jobs.fail(job.lease, cause, NOW, retry_at=NOW + 30, waiting_for="medimageinsight")
    state.close()
    records = AdminRecords(settings.journal_database)
    recorder = ModelHealthRecorder(records, "host:1", clock=lambda: NOW)
    recorder("medimageinsight", "open", cause, 30.0)
    answer = _ready(tmp_path, NOW + 1, journal_db)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "degraded" and body["reasons"] == []
    model = body["models"]["medimageinsight"]
    assert model["available"] is False and model["reason"] == cause
    assert (model["next_probe_at"], model["waiting_jobs"]) == (NOW + 30, 1)
    assert body["models"]["cxrreportgen"]["available"] is True
    state = open_state(settings)
    try:
        with BackgroundServer(create_admin_app(state)) as server:
            metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        state.close()
    assert 'pacsai_jobs_waiting_for_model{model="medimageinsight"} 1.0' in metrics
    assert 'pacsai_model_available{model="medimageinsight"} 0.0' in metrics
    recorder("medimageinsight", "closed", cause, None)
    body = _ready(tmp_path, NOW + 2, journal_db).json()
    assert body["status"] == "ready" and body["models"]["medimageinsight"]["available"] is True
    records.close()


@pytest.mark.integration
def test_readiness_lists_the_processes_of_every_host(tmp_path: Path, journal_db: JournalDb) -> None:
    """Every process with a heartbeat on the journal, whichever host it runs on, is listed with
    its role and the age of its last heartbeat."""
    table = Executors(_settings(tmp_path, journal_db).journal_database)
    table.beat(ExecutorBeat("host-a:11", "host-a", "receive", "receive", 11, NOW - 60, NOW - 2))
    table.beat(ExecutorBeat("host-b:12", "host-b", "job-runner", "work", 12, NOW - 60, NOW - 9))
    table.close()
    body = _ready(tmp_path, NOW, journal_db).json()
    assert [(e["owner"], e["role"], e["heartbeat_age_s"]) for e in body["executors"]] == [
        ("host-a:11", "receive", 2.0),
        ("host-b:12", "work", 9.0),
    ]
