"""The job and send stages on DBOS Transact: one queue per model, whose global concurrency is the
model endpoint's limit across every job runner on every host, and one per destination, which
runs one delivery at a time.

The journal's job table stays the record of each job: its UPS state, attempts, lease and
timeline (what the operator sees and acts on), and what must run. DBOS carries the dispatch:

- **Queues**: ``model-<name>`` for each model, with ``global_concurrency`` =
  ``models.<name>.concurrency`` (across every process and host sharing the engine's database)
  and ``worker_concurrency`` = the smaller of that and ``jobs_per_runner``: no more jobs of a
  model run than its endpoint can serve at once. The requests themselves hold the journal's
  request permits (:mod:`listener.infer.permits`), ``concurrency`` per model across every
  process, so one job may send several at once (a CT's frames) while the endpoint has room,
  and the requests in flight never exceed the limit however many job runners there are. The
  queue is ordered by the job's priority (STAT studies first).
- **Feeding** (:meth:`Engine.feed`): each job runner, when routing rings its doorbell and at
  every poll, lists the due jobs (:meth:`~listener.store.jobs.JobStore.due`, most urgent first)
  and the job workflows DBOS holds queued or running, and enqueues the due jobs that have none,
  with ``deduplication_id`` = the job key (study, generation, rule, task): two runners feeding
  at once queue a job once. A model's queue holds at most its ``concurrency`` waiting jobs; the
  backlog stays in the job table, where a raised priority still counts.
- **The workflow** (:func:`job_workflow`) claims its job by id, fenced by the lease as before,
  runs it on the job runner's event loop (:meth:`~listener.infer.runner.JobRunner.run_job`) and
  returns the job's new state. A job that waits out a model outage or a transient failure ends
  its workflow with the job IN PROGRESS and ``not_before`` set (Retry-After honoured); the feeder
  queues it again when it is due. Retries, backoff and the dead letter (CANCELED after
  ``max_attempts``, or after ``job_max_age_s`` waiting for a model) stay in the job table, where
  the operator sees them, rather than in DBOS step retries that only its own tables would show.
- **Sends** (:meth:`Engine.feed_sends`): a destination with due outbox entries gets a delivery
  run (:func:`send_workflow`) on its queue ``send-<destination>`` (global concurrency 1,
  deduplicated by the destination), which sends the due entries over at most the destination's
  ``max_associations`` associations (:class:`~listener.send.deliver.Deliverer`): so a peer sees
  that many associations from the whole gateway, not that many per host. Backoff, dead letters
  and resends stay in the outbox.
- **Recovery** (:meth:`Engine.cancel_orphans`): without DBOS Conductor an executor recovers only
  its own workflows. The workflow of a process that died (kill -9, a lost host) stays PENDING
  under its executor id, which is the process's heartbeat owner name
  (:mod:`listener.store.executors`). Once the sweeper has released that process's job leases
  and outbox claims and forgotten its heartbeat, the job runners cancel its PENDING workflows,
  and the feeders queue the jobs and deliveries again. Exactly once in effect: a late finish of
  the old run is fenced out by the lease token, and results have deterministic UIDs.

The engine's own tables: a SQLite file ``engine.sqlite`` beside the journal (DBOS's writers must
not share the journal's file), or the journal's PostgreSQL database (schema ``dbos``) when
``database_url`` is ``postgresql://...``. The supervisor creates or migrates them before any job
runner starts (:func:`migrate`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, Queue, SetEnqueueOptions, SetWorkflowID
from dbos import error as dbos_error
from dbos._core import execute_dequeued_workflow
from dbos._dbos import _get_dbos_instance
from dbos._utils import GlobalParams, generate_uuid

from listener.infer.clients import ModelClients
from listener.logging import get_logger
from listener.pipeline import Pipeline
from listener.serve.wake import JOBS, ring
from listener.settings import MODEL_NAMES, Settings
from listener.store.jobs import Job

log = get_logger("engine")

ENGINE_FILE = "engine.sqlite"
# The version DBOS files workflows under: a queued workflow runs only on executors of its
# version. The workflow carries a job id only, so it stays the same across releases.
ENGINE_VERSION = "pacs-ai-1"
WORKFLOW_PREFIX = "job-"
SEND_PREFIX = "send-"
QUEUE_PREFIX = "model-"
SEND_QUEUE = "send"  # a destination no longer in the settings: the deliverer dead-letters it
# DBOS runs the lowest priority number first (1 to 2**31 - 1); ours runs the highest first.
_PRIORITY_BASE = 1 << 20
_PRIORITY_MAX = (1 << 31) - 1
# Due jobs looked at per feed: more wait in the job table for the next one.
FEED_BATCH = 256
_ACTIVE = ["ENQUEUED", "PENDING"]
_FINISHED = ["SUCCESS", "ERROR", "CANCELLED"]
FINISHED_KEEP_S = 3600.0  # finished workflows stay this long in the engine's tables
TRIM_BATCH = 1000
SQLITE_POOL = 20  # DBOS's default pool for its system database
POSTGRES_POOL = 8  # per job runner, on the server's max_connections (README)


def engine_url(settings: Settings) -> str:
    """The connection string of the engine's tables (see the module docstring)."""
    database = settings.journal_database.sibling(ENGINE_FILE)
    if database.path is not None:
        return f"sqlite:///{database.path.resolve()}"
    return database.secret()


def migrate(settings: Settings) -> None:
    """Create or bring up to date the engine's tables (once per start, before the job runners)."""
    quiet_dbos()
    DBOS.migrate(engine_url(settings))


def quiet_dbos() -> None:
    """DBOS logs through the standard ``dbos`` logger at INFO (connection details included);
    keep its warnings and errors only."""
    logging.getLogger("dbos").setLevel(logging.WARNING)


def sqlite_engine(url: str) -> sa.Engine:
    """The engine for DBOS's tables on SQLite: every transaction begins with ``BEGIN
    IMMEDIATE``, so it holds the write lock from its first statement.

    DBOS's own SQLite engine sets the driver's ``isolation_level = "IMMEDIATE"``, with which
    Python's sqlite3 opens a transaction only before the first INSERT, UPDATE or DELETE. The
    dequeue reads a queue's running workflows first (its global concurrency), so two processes
    could both read the same count and both start a workflow: with two work processes and a
    limit of 2, three CXRReportGen calls were seen in flight
    (``tests/integration/test_engine_concurrency.py``). Here SQLAlchemy's ``begin`` event issues
    the ``BEGIN IMMEDIATE`` itself (the driver's own transaction handling is off), so the count
    and the claim are one serialized transaction."""
    engine = sa.create_engine(url, pool_size=SQLITE_POOL, max_overflow=0, pool_timeout=30)

    @sa.event.listens_for(engine, "connect")
    def _connect(connection: Any, _record: Any) -> None:
        connection.isolation_level = None  # the driver issues no BEGIN of its own
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute("PRAGMA foreign_keys=ON")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def queue_name(model: str) -> str:
    """The DBOS queue of ``model``'s jobs."""
    return f"{QUEUE_PREFIX}{model}"


def engine_priority(priority: int) -> int:
    """DBOS's priority for a job of ``priority`` (higher runs first in the job table)."""
    return min(max(_PRIORITY_BASE - priority, 1), _PRIORITY_MAX)


def job_id_of(workflow_id: str) -> int | None:
    """The job a workflow id (``job-<id>-<random>``) runs; None for another workflow."""
    if not workflow_id.startswith(WORKFLOW_PREFIX):
        return None
    number = workflow_id[len(WORKFLOW_PREFIX) :].split("-", 1)[0]
    return int(number) if number.isdigit() else None


@dataclass
class JobHost:
    """What the workflows of this process run on: the pipeline, the model clients and the event
    loop that owns them (the job runner's)."""

    pipeline: Pipeline
    clients: ModelClients
    loop: asyncio.AbstractEventLoop
    owner: str

    def run(self, job_id: int) -> str:
        """Run job ``job_id`` on the event loop and wait (called in a DBOS worker thread)."""
        return asyncio.run_coroutine_threadsafe(self._run(job_id), self.loop).result()

    async def _run(self, job_id: int) -> str:
        pipeline = self.pipeline
        settings = pipeline.settings
        job = await asyncio.to_thread(
            pipeline.jobs.claim,
            self.owner,
            pipeline.runner.clock(),
            settings.job_lease_s,
            job_id=job_id,
        )
        if job is None:  # done, canceled, not due yet, or another runner holds it
            return "not due"
        try:
            await pipeline.runner.run_job(job, pipeline.runner.context(self.clients, job.study_uid))
        finally:
            ring(settings.data_dir, JOBS)  # its results are due: a feeder queues their sends
        after = await asyncio.to_thread(pipeline.jobs.get, job_id)
        return "gone" if after is None else after.state.value

    def deliver(self, destination: str) -> int:
        """Send the due entries of ``destination`` (in a DBOS worker thread); a failure of
        the deliverer itself is logged and its entries are due again when their claim runs
        out."""
        try:
            now = self.pipeline.runner.clock()
            return self.pipeline.deliverer.deliver_due(now, destination).total_sent
        except Exception:
            log.exception("delivery_crashed", destination=destination)
            return 0


class Host(Protocol):
    """What a workflow runs its job or delivery on (:class:`JobHost` in a job runner)."""

    def run(self, job_id: int) -> str: ...

    def deliver(self, destination: str) -> int: ...


_host: Host | None = None


def set_host(host: Host | None) -> None:
    """Name the job host that this process's workflows run on (None: none any more)."""
    global _host
    _host = host


def _the_host() -> Host:
    if _host is None:
        raise RuntimeError("no job runner in this process")
    return _host


@DBOS.step(name="pacs-ai.run-job")
def _run_job(job_id: int) -> str:
    return _the_host().run(job_id)


@DBOS.workflow(name="pacs-ai.job")
def job_workflow(job_id: int) -> str:
    """Run job ``job_id`` once (see the module docstring); the job's state after it."""
    return _run_job(job_id)


@DBOS.step(name="pacs-ai.deliver")
def _deliver(destination: str) -> int:
    return _the_host().deliver(destination)


@DBOS.workflow(name="pacs-ai.send")
def send_workflow(destination: str) -> int:
    """Send what the outbox holds due for ``destination``; how many instances were sent."""
    return _deliver(destination)


def _enqueue(
    queue: Queue,
    id_stem: str,
    options: SetEnqueueOptions,
    workflow: Callable[[Any], Any],
    argument: int | str,
) -> bool:
    """Queue ``workflow(argument)`` under a fresh id (``id_stem`` and a random part) with
    ``options``; False when its deduplication id is held by a workflow queued or running
    already."""
    try:
        with SetWorkflowID(f"{id_stem}{uuid.uuid4().hex[:12]}"), options:
            queue.enqueue(workflow, argument)
    except dbos_error.DBOSQueueDeduplicatedError:
        return False
    return True


@dataclass
class Engine:
    """DBOS in one job-runner process: its queues, the feeder and the orphan sweep."""

    settings: Settings
    owner: str
    queues: dict[str, Queue] = field(default_factory=dict)
    send_queues: dict[str, Queue] = field(default_factory=dict)

    def launch(self) -> None:
        """Start DBOS for this process (executor id = its owner name) and register the
        model queues with the concurrency of the settings."""
        quiet_dbos()
        url = engine_url(self.settings)
        config: DBOSConfig = {
            "name": "pacs-ai",
            "system_database_url": url,
            "executor_id": self.owner,
            "application_version": ENGINE_VERSION,
            "log_level": "WARNING",
            "run_migrations": False,  # the supervisor did (migrate)
            # PostgreSQL: connections are held per transaction, never across a job
            "sys_db_pool_size": POSTGRES_POOL,
        }
        if url.startswith("sqlite"):
            config["system_database_engine"] = sqlite_engine(url)
        DBOS(config=config)
        # DBOS would poll every queue from a thread of its own, each poll a write transaction;
        # the feeder starts what is queued instead, at each of its rounds (start_queued)
        DBOS.listen_queues([])
        DBOS.launch()
        poll_s = self.settings.poll_interval_s
        for model in MODEL_NAMES:
            limit = self.settings.models.get(model).concurrency
            self.queues[model] = DBOS.register_queue(
                queue_name(model),
                global_concurrency=limit,
                worker_concurrency=min(limit, self.settings.jobs_per_runner),
                polling_interval_sec=poll_s,
                on_conflict="always_update",
            )
        for name in ["", *self.settings.destinations]:
            # one delivery run per destination at a time, on any host: at most its
            # max_associations associations from the whole gateway
            self.send_queues[name] = DBOS.register_queue(
                f"{SEND_PREFIX}{name}" if name else SEND_QUEUE,
                global_concurrency=1,
                polling_interval_sec=poll_s,
                on_conflict="always_update",
            )
        log.info(
            "engine_started",
            queues=sorted(q.name for q in [*self.queues.values(), *self.send_queues.values()]),
        )

    def active(self, *prefixes: str) -> list[Any]:
        """The workflows queued or running, on any executor: jobs, or those whose ids start with
        one of ``prefixes`` (:data:`SEND_PREFIX`: deliveries)."""
        return list(
            DBOS.list_workflows(
                status=_ACTIVE,
                workflow_id_prefix=list(prefixes or [WORKFLOW_PREFIX]),
                load_input=False,
                load_output=False,
            )
        )

    def feed(self, jobs: list[Job], peers: Collection[str] = ()) -> int:
        """Queue the most urgent of the due ``jobs`` (:meth:`~listener.store.jobs.JobStore.due`,
        most urgent first) that have no queued or running workflow, keeping at most a model's
        ``concurrency`` jobs waiting in its queue, and start what this process should; how many
        were queued.

        The rest wait in the job table: a job's priority raised there (a flagged study's
        review priority) still counts when it is queued, and the queue holds only what the
        endpoint can take next.

        ``peers`` are the other job runners of this host (their owner names): work queued
        just now goes to the least busy of them, so a study's report and classification run
        in two processes at once, not in one process taking turns at its interpreter lock
        (:meth:`_start_waiting`)."""
        active = self.active()
        busy = {job_id_of(status.workflow_id) for status in active}
        waiting = Counter(status.queue_name for status in active if status.status == "ENQUEUED")
        settle_ms = (time.time() - self.settings.poll_interval_s) * 1000
        settled = {  # queues with a job waiting longer than a poll: anyone starts it
            str(status.queue_name)
            for status in active
            if status.status == "ENQUEUED" and (status.created_at or 0) < settle_ms
        }
        queued = 0
        for job in jobs:
            if job.id in busy:
                continue
            # a payload of no known model goes to the first queue: the runner cancels it
            model = next((m for m in MODEL_NAMES if m == job.payload.get("model")), MODEL_NAMES[0])
            queue = self.queues[model]
            if waiting[queue.name] >= self.settings.models.get(model).concurrency:
                continue
            options = SetEnqueueOptions(
                deduplication_id=job.job_key, priority=engine_priority(job.priority)
            )
            if not _enqueue(queue, f"{WORKFLOW_PREFIX}{job.id}-", options, job_workflow, job.id):
                continue  # another runner queued it just now
            waiting[queue.name] += 1
            queued += 1
        running = Counter(str(s.executor_id) for s in active if s.status == "PENDING")
        if self._start_waiting(waiting, settled, running, peers):
            ring(self.settings.data_dir, JOBS)  # a less busy peer takes the rest at once
        return queued

    def _start_waiting(
        self,
        waiting: Counter[str],
        settled: set[str],
        running: Counter[str],
        peers: Collection[str],
    ) -> bool:
        """Start the queued jobs this process should, one at a time: while no peer runs fewer
        jobs than this process does, or any job that has waited longer than a poll (so a peer
        that cannot take it never holds it up). True when some were left to a less busy peer."""
        left = False
        for queue in self.queues.values():
            while waiting[queue.name] > 0:
                least = min((running[peer] for peer in peers), default=None)
                fresh = queue.name not in settled
                if least is not None and running[self.owner] > least and fresh:
                    left = True
                    break
                if not self.start_queued(queue, at_most=1):
                    break
                running[self.owner] += 1
                waiting[queue.name] -= 1
        return left

    def start_queued(self, queue: Queue, at_most: int | None = None) -> int:
        """Start now what ``queue`` lets this process start (at most ``at_most``); how many
        workflows were started.

        This is what DBOS's queue thread does at each poll (dbos 3.4, pinned: the claim checks
        the queue's global and per-process limits in one transaction). DBOS's own polling is
        off (:meth:`launch`): the feeder calls this at each round for every queue with queued
        workflows, right after it queued work, when a job of this process ended and freed a
        slot (its doorbell), and every ``poll_interval_s`` for what other processes and hosts
        queued. One query per round finds those queues, where DBOS's threads would have made a
        write transaction per queue and poll."""
        dbos = _get_dbos_instance()
        owner_xid = generate_uuid()
        load = dbos._active_workflows_set.count_for_queue(queue.name)
        limit = queue._worker_concurrency  # as registered (the property reads the database)
        if at_most is not None and limit is not None:
            load = max(load, limit - at_most)  # leaves room for ``at_most`` more
        started, _ = dbos._sys_db.start_queued_workflows(
            queue,
            GlobalParams.executor_id,
            GlobalParams.app_version,
            None,
            load,
            owner_xid=owner_xid,
        )
        for workflow_id in started:
            status = dbos._sys_db.get_workflow_status(workflow_id)
            if status is not None:
                execute_dequeued_workflow(dbos, status, owner_xid)
        return len(started)

    def feed_sends(self, destinations: list[str]) -> int:
        """Queue a delivery run for each destination with due entries, unless one is queued or
        running already (its deduplication id is the destination); how many were queued."""
        queued = 0
        for name in destinations:
            queue = self.send_queues.get(name) or self.send_queues[""]
            options = SetEnqueueOptions(deduplication_id=f"send:{name}")
            # not queued when one is queued or running already
            queued += _enqueue(queue, SEND_PREFIX, options, send_workflow, name)
            self.start_queued(queue)
        return queued

    def cancel_orphans(self, live: set[str]) -> int:
        """Cancel the running workflows (jobs and deliveries) of processes with no heartbeat
        row (``live``: the owners that have one); their work is due again once the sweeper has
        released their job leases and outbox claims."""
        cancelled = 0
        for status in self.active(WORKFLOW_PREFIX, SEND_PREFIX):
            executor = status.executor_id
            if status.status != "PENDING" or not executor or executor in live:
                continue
            if executor == self.owner:
                continue
            DBOS.cancel_workflow(status.workflow_id)
            cancelled += 1
            log.warning(
                "job_workflow_cancelled",
                workflow_id=status.workflow_id,
                executor=executor,
                reason="executor silent",
            )
        return cancelled

    def trim(self, now: float, keep_s: float = FINISHED_KEEP_S) -> int:
        """Delete the engine's records of workflows that finished more than ``keep_s`` before
        ``now`` (at most :data:`TRIM_BATCH` a call): the job table and the outbox keep the
        history, so the engine's tables stay as small as its queues."""
        cutoff = datetime.fromtimestamp(now - keep_s, UTC).isoformat()
        finished = DBOS.list_workflows(
            status=_FINISHED,
            completed_before=cutoff,
            limit=TRIM_BATCH,
            load_input=False,
            load_output=False,
        )
        ids = [status.workflow_id for status in finished]
        if ids:
            DBOS.delete_workflows(ids)
        return len(ids)

    def stop(self, timeout_s: int) -> None:
        """Stop taking work, wait up to ``timeout_s`` for running workflows, release DBOS."""
        DBOS.destroy(workflow_completion_timeout_sec=timeout_s)
