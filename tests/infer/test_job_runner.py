"""The job runner against the emulator over loopback HTTP: leases renewed while a slow call
runs, a killed runner's job completed once by another, an operator cancel that fences a running
job, a model outage the job waits out, and an input property that fails the job once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import structlog.testing
from factory import ct_series
from peers import free_port
from pydicom import Dataset
from spooled import schedule_classification, store_study

from listener.asgi import BackgroundServer
from listener.emulator import create_app
from listener.infer import build_clients
from listener.pipeline import Pipeline, build_pipeline
from listener.settings import EmulatorSettings, ModelSettings, ModelsSettings, Settings
from listener.store.jobs import Job, JobState, JobStore, forbidden_transitions
from listener.store.records import AdminRecords, ModelHealthRecorder
from listener.store.stats import model_availability

Start = Callable[..., BackgroundServer]


def stats(server: BackgroundServer) -> dict[str, Any]:
    """The emulator's request counters."""
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return answer


def classification_job(tmp_path: Path, series: list[Dataset] | None = None, **settings: Any) -> Any:
    """A pipeline over ``tmp_path/var`` with one stored CT study and one classification job."""
    pipeline = build_pipeline(Settings(data_dir=tmp_path / "var", **settings))
    series = series or ct_series(3)
    store_study(pipeline, series, at=time.time())
    job_id = schedule_classification(
        pipeline, str(series[0].StudyInstanceUID), [str(ds.SOPInstanceUID) for ds in series]
    )
    return pipeline, job_id


async def run_claimed(pipeline: Pipeline, url: str, owner: str = "runner-1") -> Job:
    """Claim the due job and run it with clients against ``url``."""
    records = AdminRecords(pipeline.settings.journal_path)
    async with build_clients(
        pipeline.settings.models, url, on_health=ModelHealthRecorder(records, owner)
    ) as clients:
        job = pipeline.jobs.claim(owner, time.time(), pipeline.settings.job_lease_s)
        assert job is not None
        await pipeline.runner.run_job(job, pipeline.runner.context(clients, job.study_uid))
    return job


def history(pipeline: Pipeline, job_id: int) -> list[str]:
    """The UPS states a job went through, in order."""
    return [state for _, state, _ in pipeline.jobs.events(job_id)]


def test_a_call_longer_than_the_lease_runs_once_with_its_lease_renewed(
    tmp_path: Path, emulator: Start
) -> None:
    """The model answers after 6 s against a 2 s lease: the runner renews the lease (its
    expiry moves on), no other runner can claim the job meanwhile, the emulator sees one
    request per call (image and labels) and the job completes on its first attempt."""
    server = emulator(latency_ms=6000)
    pipeline, job_id = classification_job(tmp_path, job_lease_s=2.0)
    rival = JobStore(pipeline.settings.journal_path)

    async def go() -> tuple[list[Job | None], list[float]]:
        run = asyncio.create_task(run_claimed(pipeline, server.url))
        claims, expiries = [], []
        while not run.done():
            await asyncio.sleep(0.2)
            claims.append(rival.claim("runner-2", time.time(), 2.0))
            job = rival.get(job_id)
            if job is not None and job.lease_until is not None:
                expiries.append(job.lease_until)
        await run
        return claims, expiries

    claims, expiries = asyncio.run(go())
    assert claims and all(claim is None for claim in claims)
    assert expiries[-1] > expiries[0] + 2.0  # renewed past the first lease's end
    job = pipeline.jobs.get(job_id)
    assert job is not None and job.state is JobState.COMPLETED and job.attempts == 1
    assert stats(server)["requests"] == 2
    assert history(pipeline, job_id).count("COMPLETED") == 1


RUNNER = """
import asyncio, sys, time
from listener.infer import build_clients
from listener.pipeline import build_pipeline
from listener.settings import Settings

pipeline = build_pipeline(Settings(data_dir=sys.argv[1], job_lease_s=1.0))

async def main():
    async with build_clients(pipeline.settings.models, sys.argv[2]) as clients:
        job = pipeline.jobs.claim("victim:1", time.time(), 1.0)
        await pipeline.runner.run_job(job, pipeline.runner.context(clients, job.study_uid))

asyncio.run(main())
"""


def test_a_runner_killed_mid_call_loses_its_lease_and_another_completes_the_job_once(
    tmp_path: Path, emulator: Start
) -> None:
    """A runner process killed with SIGKILL while its calls are on the wire stops renewing;
    its lease runs out, a second runner claims the job (attempt 2), completes it once, and
    the timeline has one COMPLETED and no forbidden transition."""
    server = emulator(latency_ms=3000)
    pipeline, job_id = classification_job(tmp_path, job_lease_s=1.0)
    victim = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(tmp_path / "var"), server.url],
        start_new_session=True,
    )
    try:
        for _ in range(300):
            if stats(server)["requests"] >= 2 or victim.poll() is not None:
                break
            time.sleep(0.05)
        assert stats(server)["requests"] == 2, "the victim's calls never reached the model"
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
    held = pipeline.jobs.get(job_id)
    assert held is not None and held.lease_owner == "victim:1"
    for _ in range(100):  # until the victim's lease runs out
        job = pipeline.jobs.get(job_id)
        if job is not None and (job.lease_until or 0) < time.time():
            break
        time.sleep(0.1)
    taken = asyncio.run(run_claimed(pipeline, server.url, owner="runner-2"))
    assert taken.id == job_id and taken.attempts == 2
    done = pipeline.jobs.get(job_id)
    assert done is not None and done.state is JobState.COMPLETED and len(done.outputs) == 1
    assert stats(server)["requests"] == 4  # two per run: the killed one and the completing one
    events = pipeline.jobs.events(job_id)
    assert any("lease of victim:1 ran out" in (detail or "") for _, _, detail in events)
    assert history(pipeline, job_id).count("COMPLETED") == 1
    assert forbidden_transitions(history(pipeline, job_id)) == []


def test_an_operator_cancel_stops_the_running_job_and_nothing_is_recorded(
    tmp_path: Path, emulator: Start
) -> None:
    """Canceled while its calls are on the wire, the job stays CANCELED: the runner's next
    renewal finds the lease gone, its work is dropped, no result is written or queued."""
    server = emulator(latency_ms=3000)
    pipeline, job_id = classification_job(tmp_path, job_lease_s=1.0)

    async def go() -> None:
        run = asyncio.create_task(run_claimed(pipeline, server.url))
        while stats(server)["requests"] < 2:
            await asyncio.sleep(0.05)
        assert pipeline.jobs.cancel(job_id, time.time())
        await run

    asyncio.run(go())
    job = pipeline.jobs.get(job_id)
    assert job is not None and job.state is JobState.CANCELED
    assert job.last_error == "operator cancel" and job.outputs == []
    assert not (pipeline.settings.data_dir / "results").exists()
    assert pipeline.outbox.entries() == []


def test_a_model_outage_is_waited_out_and_readiness_names_the_model(tmp_path: Path) -> None:
    """With nothing listening on the endpoint the job stays IN PROGRESS waiting for the model,
    its cause (the connection error) recorded, the model reported unavailable; once the
    endpoint answers on the same port the next run completes it and the model is available."""
    port = free_port()
    models = ModelsSettings(
        medimageinsight=ModelSettings(retries=1, circuit_failures=2, circuit_reset_s=0.5)
    )
    pipeline, job_id = classification_job(tmp_path, models=models, job_retry_base_s=0.2)
    url = f"http://127.0.0.1:{port}"
    asyncio.run(run_claimed(pipeline, url))
    waiting = pipeline.jobs.get(job_id)
    assert waiting is not None and waiting.state is JobState.IN_PROGRESS
    assert waiting.lease is None and waiting.waiting_for == "medimageinsight"
    assert "ConnectError" in (waiting.last_error or "")
    (down,) = [m for m in model_availability(pipeline.journal.db, []) if not m.available]
    assert down.model == "medimageinsight" and "ConnectError" in (down.reason or "")
    assert down.waiting_jobs == 1
    with BackgroundServer(create_app(EmulatorSettings()), port=port):
        for _ in range(100):
            job = pipeline.jobs.get(job_id)
            if job is not None and job.not_before <= time.time():
                break
            time.sleep(0.1)
        asyncio.run(run_claimed(pipeline, url))
    done = pipeline.jobs.get(job_id)
    assert done is not None and done.state is JobState.COMPLETED and done.waiting_for is None
    assert all(m.available for m in model_availability(pipeline.journal.db, []))
    assert forbidden_transitions(history(pipeline, job_id)) == []


def test_an_image_without_pixel_module_attributes_fails_once_with_its_cause(
    tmp_path: Path, emulator: Start
) -> None:
    """An input lacking BitsStored is a property of the data: the job is CANCELED on its first
    attempt naming the attribute, and the model is never called."""
    server = emulator()
    series = ct_series(2)
    del series[1].BitsStored
    pipeline, job_id = classification_job(tmp_path, series)
    asyncio.run(run_claimed(pipeline, server.url))
    job = pipeline.jobs.get(job_id)
    assert job is not None and job.state is JobState.CANCELED and job.attempts == 1
    assert "lacks pixel-module attributes BitsStored" in (job.last_error or "")
    assert "internal error" not in (job.last_error or "")
    assert stats(server)["requests"] == 0


def test_a_job_answered_by_the_emulator_says_so_in_its_log(tmp_path: Path, emulator: Start) -> None:
    """The job's log line for the model's answer names the model and marks it as the emulator's
    (synthetic, not a clinical model), so an operator reading the logs cannot mistake it."""
    server = emulator()
    pipeline, job_id = classification_job(tmp_path)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(run_claimed(pipeline, server.url))
    answered = [e for e in logs if e["event"] == "task_answered" and e["job_id"] == job_id]
    assert answered and answered[0]["model"] == "medimageinsight"
    assert answered[0]["emulator"] is True
