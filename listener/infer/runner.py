"""Run a claimed job: infer + convert, then write its results durably and act on what it found.

:meth:`JobRunner.run_job` is the job stage's one worker boundary: a task's failure is recorded on
its job, never raised to the loop that runs several jobs at once:

- a model outage (a transient model error, or the breaker failing the call fast) leaves the job
  IN PROGRESS, waiting for the model with a job-level backoff that honours the endpoint's
  Retry-After and the breaker's next probe, until the job is ``max_age_s`` old (then CANCELED
  with its last cause); fast-fails of an open breaker do not count as attempts;
- a permanent failure (a model answer a retry cannot fix, a property of the input such as a
  missing pixel-module attribute) cancels the job at once with its cause;
- anything else (a bug) is logged with its traceback and retried until ``max_attempts``.

While the job runs, a heartbeat renews its lease every third of ``lease_s``; when a renewal
finds the lease gone (an operator canceled the job, or another runner took it after this one
stalled), the work is cancelled and nothing of it is recorded. Every change is fenced by the
lease (:class:`~listener.store.jobs.Lease`), so a stale runner changes nothing.

After a task, :meth:`JobRunner.act` keeps the embeddings and the out-of-distribution score,
writes each checked result object under ``results/<study>/`` (temp file, fsync, rename) and
queues it for the task's destinations, and routes the study when the task's top label (or its
OOD score) asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import KeyObjectSelectionDocumentStorage

from converters.check import checked_bytes
from converters.provenance import ResultRef
from listener.errors import (
    CircuitOpenError,
    GatewayError,
    ObjectMissingError,
    TransientModelError,
)
from listener.infer.actions import ood_flag, review_flag
from listener.infer.clients import ModelClients
from listener.infer.egress import EgressReport
from listener.infer.priors import PriorFinder
from listener.infer.tasks import EgressObserver, TaskContext, TaskOutcome, run_task
from listener.logging import get_logger
from listener.route.plan import PlannedTask, task_from_payload
from listener.security.settings import EgressPolicy
from listener.settings import Destination, PriorsSettings, Settings
from listener.store.audit import AuditTrail
from listener.store.db import DatabaseError
from listener.store.drift import DriftStore, drift_facts, group_key
from listener.store.embeddings import EmbeddingStore
from listener.store.flags import StudyFlag, StudyFlags
from listener.store.jobs import Job, JobState, JobStore, Lease
from listener.store.journal import Journal, instance_paths
from listener.store.outbox import Enqueue, Outbox
from listener.timing import backoff_delay

log = get_logger("jobs")

RETRY_MAX_S = 600.0
# Data elements at least this large stay in the file until used: a job reads the headers of
# every input instance, and the pixels only of the images its task prepares.
DEFER_BYTES = 16 * 1024


@dataclass(frozen=True)
class JobPolicy:
    """Leases, backoff and patience of the job stage (settings ``job_*``)."""

    lease_s: float = 60.0
    max_age_s: float = 86400.0
    retry_base_s: float = 5.0
    retry_max_s: float = RETRY_MAX_S

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        return cls(
            lease_s=settings.job_lease_s,
            max_age_s=settings.job_max_age_s,
            retry_base_s=settings.job_retry_base_s,
        )

    def delay(self, attempts: int, hint_s: float | None) -> float:
        """Wait after a transient failure: the job backoff, or the server's hint when later."""
        return max(backoff_delay(attempts, self.retry_base_s, self.retry_max_s), hint_s or 0.0)


class LeaseLostError(Exception):
    """The runner no longer holds the job's lease; its work must not be recorded."""


# What a reference to an earlier result needs (converters.provenance.ResultRef).
_REF_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"]


def write_durably(path: Path, obj: Dataset) -> None:
    """Write a result object to ``path`` through a temp file, fsync and rename: the Part 10
    bytes the result gate checked (:func:`converters.check.checked_bytes`), not a second
    encoding of the object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("wb") as handle:
        handle.write(checked_bytes(obj))
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)


@dataclass
class JobRunner:
    """The job stage's dependencies; one per job-runner process."""

    journal: Journal
    jobs: JobStore
    outbox: Outbox
    embeddings: EmbeddingStore
    spool_dir: Path
    results_dir: Path
    clock: Callable[[], float] = field(default=time.time)
    policy: JobPolicy = field(default_factory=JobPolicy)
    prior_settings: PriorsSettings = field(default_factory=PriorsSettings)
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    calling_ae: str = "PACSAI"
    egress: dict[str, EgressPolicy] = field(default_factory=dict)  # models.<name>.egress
    audit: AuditTrail | None = None
    adapters_dir: Path | None = None  # saved adapters (listener.infer.adapters)
    flags: StudyFlags | None = None  # review and OOD flags, OOD scores (listener.store.flags)
    drift: DriftStore | None = None  # embedding drift per group (listener.store.drift)
    # Spool files not on this host come from the bucket, results go to it before they are
    # queued (listener.store.objects).
    fetch: Callable[[Path], Path] | None = None
    publish: Callable[[Path], None] | None = None

    @cached_property
    def priors(self) -> PriorFinder:
        """The prior look-up of this runner (one index connection and cache per process)."""
        return PriorFinder(
            self.journal,
            self.spool_dir,
            self.results_dir,
            self.prior_settings,
            self.destinations,
            self.calling_ae,
            self.clock,
            self.fetch,
        )

    def context(self, clients: ModelClients, study_uid: str) -> TaskContext:
        """The task context of one job: clients, its study's spooled files, prior lookup.

        Instances are read when the task asks for them, with their large elements (pixel data)
        left in the file until used (:data:`DEFER_BYTES`), and each at most once per job: a
        task that asks again (the lateral among all images, then by its role; the sources
        again for an error message) gets the dataset already read."""
        paths = instance_paths(self.journal, self.spool_dir, study_uid, self.fetch)
        read: dict[str, Dataset] = {}

        def load(uid: str) -> Dataset:
            if uid not in read:
                read[uid] = dcmread(paths[uid], defer_size=DEFER_BYTES)
            return read[uid]

        return TaskContext(
            clients=clients,
            load=load,
            prior=self.priors,
            earlier=lambda task: self.earlier_results(study_uid, task),
            egress=self.egress,
            on_egress=self._egress_observer(clients, study_uid),
            adapters_dir=self.adapters_dir,
            stored_embedding=lambda uid, version: (
                self.embeddings.by_version([uid]).get(uid, {}).get(version)
            ),
        )

    def earlier_results(self, study_uid: str, task: PlannedTask) -> list[ResultRef]:
        """The results of the task's previous generation on the study, which a follow-up's
        results supersede (IHE IOCM: converters.kos withdraws them, the new SR names them).

        The job table knows their SOP Instance UIDs; their written files under ``results/``
        give the series and SOP class a reference needs. Rejection notes are left out (a note
        is never withdrawn), and so are results whose files retention has already purged.
        """
        refs = []
        for uid in self.jobs.earlier_outputs(study_uid, task.rule, task.name):
            path = self.results_dir / study_uid / f"{uid}.dcm"
            try:
                path = self.fetch(path) if self.fetch is not None else path
                header = dcmread(path, stop_before_pixels=True, specific_tags=_REF_TAGS)
            except (OSError, InvalidDicomError, ObjectMissingError):
                log.warning("earlier_result_unreadable", study_uid=study_uid, sop_instance_uid=uid)
                continue
            if str(header.SOPClassUID) != KeyObjectSelectionDocumentStorage:
                refs.append(ResultRef.of(header))
        return refs

    def _egress_observer(self, clients: ModelClients, study_uid: str) -> EgressObserver | None:
        """What each task sent to its model, into the audit trail (Begin Transferring)."""
        audit = self.audit
        if audit is None:
            return None

        def observe(report: EgressReport, ok: bool, failure: str | None) -> None:
            client = getattr(clients, report.model)
            audit.model_call(
                model=report.model,
                endpoint=str(client.transport.endpoint),
                study_uid=report.study_uid or study_uid,
                patient_id=report.patient_id,
                sent=report.details(),
                ok=ok,
                reason=failure,
            )

        return observe

    async def run_job(self, job: Job, context: TaskContext) -> None:
        """Run one claimed job to completion or to a recorded failure (the worker boundary)."""
        bound = log.bind(job_id=job.id, study_uid=job.study_uid, task=job.task)
        lease = job.lease
        if lease is None:
            raise ValueError(f"job {job.id} was not claimed")
        started = self.clock()
        work = asyncio.create_task(self._work(job, lease, context))
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(lease, work, lost))
        try:
            outputs = await work
        except asyncio.CancelledError:
            if not lost.is_set():
                work.cancel()
                raise
            bound.warning("job_lease_lost", attempt=job.attempts)
            return
        except LeaseLostError:
            bound.warning("job_lease_lost", attempt=job.attempts)
            return
        except Exception as exc:
            self._record_failure(job, lease, exc, bound)
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if self.jobs.complete(lease, outputs, self.clock()):
            bound.info(
                "job_completed",
                outputs=len(outputs),
                seconds=round(self.clock() - started, 3),
            )
        else:
            bound.warning("job_lease_lost", attempt=job.attempts)

    async def _work(self, job: Job, lease: Lease, context: TaskContext) -> list[str]:
        task = task_from_payload(job.payload)
        outcome = await run_task(task, context)
        log.info(
            "task_answered",
            job_id=job.id,
            model=task.model,
            model_version=outcome.model_version,
            emulator=outcome.emulated,  # the answers are synthetic: not a clinical model
        )
        if not self.jobs.holds(lease):  # do not write or queue what another runner will
            raise LeaseLostError
        # writing and fsyncing the results off the event loop keeps the heartbeat beating
        return await asyncio.to_thread(self.act, job, outcome, self.clock(), task)

    async def _heartbeat(self, lease: Lease, work: asyncio.Task[Any], lost: asyncio.Event) -> None:
        """Renew the lease every third of its length; cancel the work when it is gone."""
        while True:
            await asyncio.sleep(self.policy.lease_s / 3)
            try:
                held = self.jobs.renew(lease, self.clock() + self.policy.lease_s)
            except DatabaseError as exc:  # a busy journal: try again at the next beat
                log.warning("job_lease_not_renewed", job_id=lease.job_id, error=str(exc))
                continue
            if not held:
                lost.set()
                work.cancel()
                return

    def _record_failure(self, job: Job, lease: Lease, exc: Exception, bound: Any) -> None:
        """Record a failed run on its job as the module docstring says."""
        now = self.clock()
        model = str(job.payload.get("model") or "") or None
        if isinstance(exc, TransientModelError | CircuitOpenError):
            counted = not isinstance(exc, CircuitOpenError)
            attempts = job.attempts if counted else job.attempts - 1
            state = self.jobs.fail(
                lease,
                str(exc),
                now,
                retry_at=now + self.policy.delay(attempts, exc.retry_after_s),
                waiting_for=model,
                counted=counted,
                max_age_s=self.policy.max_age_s,
            )
            event = "job_waiting_for_model" if state is JobState.IN_PROGRESS else "job_failed"
            bound.warning(event, error=str(exc), model=model, attempt=attempts, counted=counted)
        elif isinstance(exc, GatewayError):
            retry_at = now + self.policy.delay(job.attempts, None) if exc.retryable else None
            state = self.jobs.fail(lease, str(exc), now, retry_at=retry_at)
            bound.warning("job_failed", error=str(exc), attempt=job.attempts)
        else:  # the one worker boundary: log it with its traceback, fail this job alone
            retry_at = now + self.policy.delay(job.attempts, None)
            state = self.jobs.fail(lease, f"internal error: {exc!r}", now, retry_at=retry_at)
            bound.exception("job_crashed", attempt=job.attempts)
        if state is None:
            bound.warning("job_lease_lost", attempt=job.attempts)

    def act(
        self, job: Job, outcome: TaskOutcome, now: float, task: PlannedTask | None = None
    ) -> list[str]:
        """Keep embeddings, write and queue the result objects, route by label; their UIDs.
        ``task`` is the job's task when the caller has it already (else read from the job)."""
        task = task or task_from_payload(job.payload)
        self._keep_embeddings(job, task, outcome, now)
        uids, queued = [], []
        for obj in outcome.objects:
            uid = str(obj.SOPInstanceUID)
            path = self.results_dir / job.study_uid / f"{uid}.dcm"
            write_durably(path, obj)
            if self.publish is not None:
                self.publish(path)
            uids.append(uid)
            queued += [Enqueue(d, path, uid, str(job.id)) for d in task.result_destinations]
        self.outbox.enqueue_many(queued, now)
        if outcome.top_label is not None and (task.routes or task.default_route):
            target = task.routes.get(outcome.top_label) or task.default_route
            if target:
                self._forward_study(job.study_uid, target, f"route:{job.id}", now)
                log.info(
                    "study_routed",
                    study_uid=job.study_uid,
                    label=outcome.top_label,
                    destination=target,
                )
        review = review_flag(task, outcome.probabilities, job.study_uid, now)
        if review is not None:
            self._raise_flag(review[0], f"review:{job.id}", now, review[1])
        return uids

    def _raise_flag(self, flag: StudyFlag, job_key: str, now: float, priority: int = 0) -> None:
        """Keep a review or OOD flag, raise the study's priority, forward it when asked."""
        if self.flags is not None:
            self.flags.flag(flag, priority)
        log.warning(
            "study_flagged",
            study_uid=flag.study_uid,
            kind=flag.kind,
            reason=flag.reason,
            destination=flag.destination,
            raise_priority=priority,
        )
        if flag.destination:
            self._forward_study(flag.study_uid, flag.destination, job_key, now)

    def _forward_study(self, study_uid: str, destination: str, job_key: str, now: float) -> None:
        """Queue the study's originals for ``destination``, except those already queued or sent
        there: a follow-up's job (generation > 0) then forwards only the late instances, as the
        originals' forwards of a follow-up do (route/release.py)."""
        paths = instance_paths(self.journal, self.spool_dir, study_uid)
        done = self.outbox.queued_to(destination, paths)
        self.outbox.enqueue_many(
            [
                Enqueue(destination, path, uid, job_key)
                for uid, path in paths.items()
                if uid not in done
            ],
            now,
        )

    def _keep_embeddings(
        self, job: Job, task: PlannedTask, outcome: TaskOutcome, now: float
    ) -> None:
        """Store the study's vectors, keep its OOD score; flag (and optionally route) it when
        the score is above the task's threshold."""
        for uid, vector in outcome.embeddings.items():
            score = self.embeddings.study_ood_score(job.study_uid, vector, outcome.model_version)
            self.embeddings.put(uid, job.study_uid, vector, outcome.model_version, now)
            if score is None:
                continue
            if self.flags is not None:
                self.flags.set_ood(job.study_uid, score, outcome.model_version, now)
            flag = ood_flag(task, score, job.study_uid, now)
            if flag is not None:
                self._raise_flag(flag, f"ood:{job.id}", now)
        for vector in list(outcome.embeddings.values())[:1]:  # a study joins its group once
            self._watch_drift(job.study_uid, vector, outcome.model_version, now)

    def _watch_drift(
        self, study_uid: str, vector: list[float], model_version: str, now: float
    ) -> None:
        """Add the study to its drift group; audit and log a group that turns drifted."""
        if self.drift is None or not self.drift.settings.enabled:
            return
        group = group_key(
            drift_facts(self.journal, self.spool_dir, study_uid, self.fetch), self.drift.keys
        )
        reading, turned = self.drift.observe(group, study_uid, vector, model_version, now)
        if reading is None or not turned:
            return
        log.warning(
            "embedding_drift_detected",
            group=group,
            statistic=round(reading.statistic, 5),
            p_value=round(reading.p_value, 4),
        )
        if self.audit is not None:
            self.audit.drift_detected(group, reading.statistic, reading.p_value)
