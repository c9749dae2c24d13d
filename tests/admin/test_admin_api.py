"""The admin API over real HTTP after an end-to-end run: health, readiness, metrics, studies,
jobs with retry and cancel, the association log and OpenAPI."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest
from admin_e2e import CT_SLICES, EndToEnd
from prometheus_client.parser import text_string_to_metric_families

from listener.admin import create_admin_app, open_state
from listener.asgi import BackgroundServer
from listener.serve.loops import runner_id
from listener.settings import ModelsSettings
from listener.store.jobs import JobState

pytestmark = pytest.mark.integration


@pytest.fixture
def api(e2e: EndToEnd) -> Iterator[httpx.Client]:
    """An HTTP client for the admin server of the end-to-end run."""
    with httpx.Client(base_url=e2e.admin.url, timeout=30) as client:
        yield client


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_health_and_readiness(api: httpx.Client) -> None:
    """/healthz answers ok and /readyz is ready while every stage has moved on."""
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


def test_readiness_turns_red_under_the_disk_watermark(e2e: EndToEnd) -> None:
    """With disk_min_free_mb above the free space, /readyz answers 503 naming the watermark."""
    settings = e2e.settings.model_copy(update={"disk_min_free_mb": 10**9})
    state = open_state(settings)
    try:
        with BackgroundServer(create_admin_app(state)) as server:
            answer = httpx.get(f"{server.url}/readyz", timeout=30)
    finally:
        state.close()
    assert answer.status_code == 503
    reasons = answer.json()["reasons"]
    assert len(reasons) == 1 and "disk_min_free_mb" in reasons[0]


def test_metrics_match_the_end_to_end_run(e2e: EndToEnd, api: httpx.Client) -> None:
    """Counters equal what the run did: instances and bytes received, results the PACS got,
    one association, one model call per CT slice, two studies released."""
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    spooled = [p for p in e2e.settings.spool_dir.rglob("*.dcm") if ".tmp" not in p.parts]
    assert samples[("pacsai_instances_received_total", ())] == len(e2e.sent_files) == CT_SLICES + 1
    assert samples[("pacsai_received_bytes_total", ())] == sum(p.stat().st_size for p in spooled)
    results = list((e2e.settings.data_dir / "results").glob("*/*.dcm"))
    pacs_got = e2e.pacs_files()
    assert len(results) == len(pacs_got) >= 4  # SEG + SR; report SR + PR + classification SR
    sent = (("destination", "pacs"), ("outcome", "sent"))
    assert samples[("pacsai_sends_total", sent)] == len(pacs_got)
    assert samples[("pacsai_sends_total", (("destination", "pacs"), ("outcome", "dead")))] == 0
    (association,) = e2e.pipeline.journal.associations()
    outcome = (("outcome", str(association["ended"])),)
    assert samples[("pacsai_associations_total", outcome)] == 1
    ok = (("model", "medimageparse"), ("outcome", "ok"))
    # one request per batch of slices (models.medimageparse.batch_size rows a request)
    calls = math.ceil(CT_SLICES / ModelsSettings().medimageparse.batch_size)
    assert samples[("pacsai_model_calls_total", ok)] == calls
    parse = (("model", "medimageparse"),)
    assert samples[("pacsai_model_call_duration_seconds_count", parse)] == calls
    assert samples[("pacsai_model_call_duration_seconds_sum", parse)] > 0
    assert samples[("pacsai_study_completion_wait_seconds_count", ())] == 2
    assert samples[("pacsai_studies", (("state", "dispatched"),))] == 2
    assert samples[("pacsai_jobs", (("state", "COMPLETED"),))] >= 1
    assert samples[("pacsai_quarantined_instances_total", ())] == 0


def test_study_list_and_timeline(e2e: EndToEnd, api: httpx.Client) -> None:
    """The study is listed as done without patient data, and its timeline shows reception,
    release, the job's events, the results and their sends in time order."""
    studies = api.get("/api/studies").json()
    row = next(s for s in studies if s["study_uid"] == e2e.study_uid)
    assert row["stage"] == "done" and row["instances"] == CT_SLICES
    assert "patient_id" not in row and "patient_name" not in row
    with_phi = api.get("/api/studies", params={"show_patient": "1"}).json()
    assert next(s for s in with_phi if s["study_uid"] == e2e.study_uid)["patient_id"] == "SYN001"
    story = api.get(f"/api/studies/{e2e.study_uid}").json()
    events = [event["event"] for event in story["timeline"]]
    assert events[:3] == ["first_instance_received", "last_instance_received", "released"]
    assert "job_completed" in events and events[-1] == "sent"
    assert [e["at"] for e in story["timeline"]] == sorted(e["at"] for e in story["timeline"])
    assert {r["modality"] for r in story["results"]} >= {"SEG", "SR"}
    assert all(entry["state"] == "sent" for entry in story["sends"])
    assert api.get("/api/studies/1.2.3.4").status_code == 404


def test_job_cancel_and_retry_through_the_api(e2e: EndToEnd, api: httpx.Client) -> None:
    """A scheduled job is canceled, then retried as a new SCHEDULED job that references it (the
    old one stays CANCELED), and a worker can claim the new one; a completed job without dead
    letters cannot be retried."""
    done = next(j for j in api.get("/api/jobs").json() if j["state"] == "COMPLETED")
    assert api.post(f"/api/jobs/{done['id']}/retry", json={}).status_code == 409
    original = e2e.pipeline.jobs.get(done["id"])
    assert original is not None
    job_id = e2e.pipeline.jobs.schedule(
        job_key=f"{original.job_key}:operator-test",
        study_uid=original.study_uid,
        generation=original.generation,
        rule=original.rule,
        task=original.task,
        payload=original.payload,
        priority=original.priority,
        now=time.time(),
    )
    canceled = api.post(f"/api/jobs/{job_id}/cancel", json={})
    assert canceled.status_code == 200 and canceled.json()["state"] == JobState.CANCELED
    assert api.get("/api/jobs", params={"state": "CANCELED"}).json()[0]["id"] == job_id
    retried = api.post(f"/api/jobs/{job_id}/retry", json={}).json()
    assert retried["id"] != job_id and retried["retry_of"] == job_id
    assert retried["state"] == JobState.SCHEDULED and retried["attempts"] == 0
    assert retried["events"][-1]["detail"] == f"operator retry of job {job_id}"
    old = api.get(f"/api/jobs/{job_id}").json()
    assert old["state"] == JobState.CANCELED  # a canceled step stays canceled (PS3.4 CC.1.1)
    claimed = e2e.pipeline.jobs.claim(runner_id(e2e.pipeline.settings), time.time(), 600.0)
    assert claimed is not None and claimed.id == retried["id"] and claimed.lease is not None
    e2e.pipeline.jobs.complete(claimed.lease, claimed.outputs, time.time())  # leave it done
    assert api.post("/api/jobs/999999/retry", json={}).status_code == 404


def test_association_log_and_openapi(e2e: EndToEnd, api: httpx.Client) -> None:
    """The association log shows the modality's association; OpenAPI lists every path."""
    log = api.get("/api/associations").json()
    assert [(a["calling_ae"], a["stored"], a["failed"]) for a in log] == [
        ("MODALITY", len(e2e.sent_files), 0)
    ]
    assert log[0]["ended"] in ("released", "closed")  # how it ended is the receiver's to test
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/healthz", "/readyz", "/metrics", "/api/studies/{uid}", "/api/jobs/{id}/retry"):
        assert path in paths
    assert {"/api/rules/reload", "/api/associations", "/api/studies/{uid}/overlay.png"} <= set(
        paths
    )
