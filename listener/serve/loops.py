"""Worker-side loops: job runners (infer + convert, and the outbox's deliveries), retention, the
sweeper and the spool uploader (``spool_url: s3://...``, :mod:`listener.store.uploads`).

``pacs-ai serve`` starts ``settings.job_runners`` job-runner processes; each queues the due jobs
of the journal on the job engine's model queues, and the destinations with due sends on their
delivery queues, and runs what the engine hands it: up to ``settings.jobs_per_runner`` jobs per
model at once and each model's ``concurrency`` across every process, one delivery run per
destination across every process (:mod:`listener.serve.engine`), so one slow or failing study
never holds up the others. All of them take their work from the journal (and the engine's
queues) only, so they can be killed at any time; they poll it every ``poll_interval_s``, and
wake at once when a stage that queued work rings their doorbell (:mod:`listener.serve.wake`):
routing rings them for the jobs and forwards it queued, a job that ends for its results' sends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from converters.sr import preload_standard_tables
from listener.infer import build_clients
from listener.infer.permits import RequestPermits
from listener.logging import get_logger
from listener.pipeline import Pipeline, build_pipeline
from listener.route.model import rules_fingerprint
from listener.send.scu import enable_chunked_send
from listener.serve.engine import FEED_BATCH, Engine, JobHost, migrate, set_host
from listener.serve.wake import JOBS, Doorbell, ring
from listener.settings import Settings
from listener.store.executors import Executors, owner_name, sweep_silent
from listener.store.permits import ModelPermits
from listener.store.records import (
    AdminRecords,
    ModelCallRecorder,
    ModelHealthRecorder,
    reload_requested,
)
from listener.store.retention import Retention, RetentionPolicy
from listener.store.uploads import bucket_purge, uploader

log = get_logger("serve")
T = TypeVar("T")
JOB_RUNNER = "job-runner"  # the process name a job runner's heartbeat row carries
# How long a stopping job runner waits for the jobs it runs (they run again elsewhere after).
STOP_WAIT_S = 30


def runner_id(settings: Settings) -> str:
    """The identity of the running process as a lease owner: executor id (by default the host
    name) and PID, as its heartbeat row names it (:mod:`listener.store.executors`)."""
    return owner_name(settings.executor)


def recover_after_crash(settings: Settings, now: float) -> int:
    """Release the leases of jobs that job runners of this executor held when the service last
    stopped (they run again at once, still IN PROGRESS), and, when this host is the only one
    (role ``all``), make the outbox's pending sends due now.

    Called by the supervisor before it starts any job runner: no job can be in progress on this
    executor then, so every ``IN PROGRESS`` lease of it belongs to a process that is gone. With
    several hosts (roles ``receive`` and ``work``) another host's deliverer may hold claims right
    now, so those are left to run out their lease instead.

    First the job engine's tables are created or migrated, and the heartbeat rows of this
    executor's processes forgotten: the job runners then cancel their workflows at once
    (:meth:`listener.serve.engine.Engine.cancel_orphans`) and queue their jobs again.
    """
    migrate(settings)
    pipeline = build_pipeline(settings)
    try:
        # the engine's job runners cancel the workflows of processes with no heartbeat row
        Executors(settings.journal_database).forget_host(settings.executor)
        permits = ModelPermits(settings.journal_database)
        permits.release_host(settings.executor)
        permits.close()
        count = pipeline.jobs.release_host(settings.executor, now)
        released = pipeline.outbox.release_claims(now) if settings.role == "all" else 0
        retention(pipeline).complete_interrupted(now)
    finally:
        pipeline.close()
    if count:
        log.warning("job_leases_released_after_crash", count=count)
    if released:
        log.info("outbox_claims_released", count=released)
    return count


async def _job_loop(
    pipeline: Pipeline, emulator_url: str | None, stop: threading.Event, clock: Callable[[], float]
) -> None:
    """Feed the job engine and run the workflows it hands this process
    (:mod:`listener.serve.engine`) until ``stop``; then wait for the running ones."""
    settings = pipeline.settings
    owner = runner_id(settings)
    records = AdminRecords(settings.journal_database)
    executors = Executors(settings.journal_database)
    bell = Doorbell(settings.data_dir, JOBS)
    engine = Engine(settings, owner)
    permits = ModelPermits(settings.journal_database)
    async with build_clients(
        settings.models,
        emulator_url,
        emulator_key=settings.emulator.key,
        on_call=ModelCallRecorder(records),
        on_health=ModelHealthRecorder(records, owner),
        permits=RequestPermits(permits, owner),
    ) as clients:
        set_host(JobHost(pipeline, clients, asyncio.get_running_loop(), owner))
        await asyncio.to_thread(engine.launch)
        next_sweep = 0.0
        try:
            while not stop.is_set():
                reload_rules_if_asked(pipeline, records)
                now = clock()
                sweep = now >= next_sweep
                if sweep:
                    next_sweep = now + settings.executor_timeout_s / 3
                await asyncio.to_thread(_feed, engine, pipeline, executors, sweep, clock)
                await bell.wait_async(settings.poll_interval_s)
        finally:
            await asyncio.to_thread(engine.stop, STOP_WAIT_S)
            set_host(None)
    bell.close()
    permits.close()


def _feed(
    engine: Engine,
    pipeline: Pipeline,
    executors: Executors,
    sweep: bool,
    clock: Callable[[], float],
) -> None:
    """One round of the job runner's engine duties: cancel the workflows of silent processes
    and forget finished ones (when ``sweep``), then queue the due jobs and deliveries. A busy
    or unreachable database is logged and tried again next round."""
    now = clock()
    try:
        if sweep:
            engine.cancel_orphans(executors.owners())
            engine.trim(now)
        peers = _local_peers(engine, executors, now)
        queued = engine.feed(pipeline.jobs.due(now, FEED_BATCH), peers)
        sends = engine.feed_sends(pipeline.outbox.due_destinations(now))
    except Exception as exc:
        log.warning("job_feed_failed", error=str(exc))
        return
    if queued or sends:
        log.info("work_queued", jobs=queued, deliveries=sends)


def _local_peers(engine: Engine, executors: Executors, now: float) -> list[str]:
    """The other live job runners of this host (owner names), whose heartbeat is recent."""
    settings = engine.settings
    return [
        beat.owner
        for beat in executors.all()
        if beat.executor_id == settings.executor
        and beat.process.startswith(JOB_RUNNER)
        and beat.owner != engine.owner
        and beat.heartbeat_at >= now - settings.executor_timeout_s
    ]


def reload_rules_if_asked(pipeline: Pipeline, records: AdminRecords) -> None:
    """Take up a rules file that the admin API validated and recorded for reload."""
    if reload_requested(records, rules_fingerprint(pipeline.rules)):
        pipeline.reload_rules()
        log.info("rules_reloaded", rules=len(pipeline.rules.rules))


def run_job_runner(settings: Settings, emulator_url: str | None, stop: threading.Event) -> None:
    """Run jobs until ``stop`` is set (the body of a job-runner process)."""
    pipeline = build_pipeline(settings)
    enable_chunked_send()  # the job runners run the deliveries too
    preload_standard_tables()  # not inside the first study's job
    log.info("job_runner_started", owner=runner_id(settings), concurrency=settings.jobs_per_runner)
    asyncio.run(_job_loop(pipeline, emulator_url, stop, pipeline.runner.clock))
    log.info("job_runner_stopped", owner=runner_id(settings))


def ringing_after(on_ready: Callable[[T], None], data_dir: Path) -> Callable[[T], None]:
    """``on_ready`` (the route stage's callback), then a ring for the job runners: routing
    queues the study's jobs and its forwards, and the job runners queue both in the engine."""

    def route_and_ring(study: T) -> None:
        on_ready(study)
        ring(data_dir, JOBS)

    return route_and_ring


def retention(pipeline: Pipeline) -> Retention:
    """The retention of this data folder, by the settings' policy."""
    settings = pipeline.settings
    return Retention(
        pipeline.journal.db,
        settings.data_dir,
        settings.spool_dir,
        pipeline.runner.results_dir,
        settings.quarantine_dir,
        RetentionPolicy(
            originals_s=settings.retention_originals_s,
            results_s=settings.retention_results_s,
            quarantine_s=settings.retention_quarantine_s,
        ),
        bucket=bucket_purge(settings),
    )


def run_sweeper(pipeline: Pipeline, executors: Executors, stop: threading.Event) -> None:
    """Release the jobs of processes whose heartbeat stopped, every third of
    ``executor_timeout_s``, until ``stop`` is set (a thread of the dispatcher process)."""
    timeout_s = pipeline.settings.executor_timeout_s
    permits = ModelPermits(pipeline.settings.journal_database)
    try:
        while not stop.wait(timeout_s / 3):
            try:
                sweep_silent(
                    executors, pipeline.jobs, time.time(), timeout_s, pipeline.outbox, permits
                )
            except Exception:  # a busy journal: the next sweep tries again
                log.exception("sweep_crashed")
    finally:
        permits.close()


def run_purger(pipeline: Pipeline, stop: threading.Event) -> None:
    """Purge what the retention policy lets go, every ``retention_interval_s``, until ``stop``
    is set (a thread of the dispatcher process)."""
    purger = retention(pipeline)
    while not stop.is_set():
        try:
            purger.purge_due(time.time())
        except Exception:  # a purge that failed is tried again next time
            log.exception("purge_crashed")
        stop.wait(pipeline.settings.retention_interval_s)


def run_uploader(settings: Settings, stop: threading.Event) -> None:
    """Upload this host's pending spool files to the bucket (``spool_url: s3://...``) until
    ``stop`` is set, retrying failures with backoff (a thread of the dispatcher process). At
    start, instances journaled without an upload row (a crash between the two) are queued."""
    shipper = uploader(settings)
    if shipper is None:
        return
    try:
        adopted = shipper.queue.adopt(settings.spool_dir, time.time())
        if adopted:
            log.warning("spool_uploads_adopted", count=adopted)
        while not stop.is_set():
            try:
                if shipper.upload_due(time.time()):
                    continue  # more may be due at once
            except Exception:  # a bug in one round must not stop uploads for good
                log.exception("upload_crashed")
            stop.wait(settings.poll_interval_s)
    finally:
        shipper.queue.close()
