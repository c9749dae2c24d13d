"""Run a claimed job: infer + convert, then write its results durably and act on what it found.

:meth:`JobRunner.run_job` is the job stage's one worker boundary: a task's failure is recorded on
its job (retried later when the error is transient, canceled when it is not), never raised to the
loop that runs several jobs at once. After a task, :meth:`JobRunner.act` keeps the embeddings and
the out-of-distribution score, writes each checked result object under ``results/<study>/``
(temp file, fsync, rename) and queues it for the task's destinations, and routes the study when
the task's top label (or its OOD score) asks for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import KeyObjectSelectionDocumentStorage

from converters.provenance import ResultRef
from listener.errors import GatewayError
from listener.infer.clients import ModelClients
from listener.infer.priors import PriorFinder
from listener.infer.tasks import TaskContext, TaskOutcome, run_task
from listener.logging import get_logger
from listener.route.plan import PlannedTask, task_from_payload
from listener.store.embeddings import EmbeddingStore
from listener.store.jobs import Job, JobStore
from listener.store.journal import Journal, instance_paths
from listener.store.outbox import Enqueue, Outbox
from listener.timing import backoff_delay

log = get_logger("jobs")

JOB_LEASE_S = 900.0
RETRY_BASE_S = 5.0
RETRY_MAX_S = 600.0
# What a reference to an earlier result needs (converters.provenance.ResultRef).
_REF_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"]


def write_durably(path: Path, obj: Dataset) -> None:
    """Write a result object to ``path`` through a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    obj.save_as(temp, enforce_file_format=True)
    with temp.open("rb") as handle:
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

    @property
    def priors(self) -> PriorFinder:
        return PriorFinder(self.journal, self.spool_dir, self.results_dir)

    def context(self, clients: ModelClients, study_uid: str) -> TaskContext:
        """The task context of one job: clients, its study's spooled files, prior lookup."""
        paths = instance_paths(self.journal, self.spool_dir, study_uid)

        def load(uid: str) -> Dataset:
            return dcmread(paths[uid])

        return TaskContext(
            clients=clients,
            load=load,
            prior=self.priors,
            earlier=lambda task: self.earlier_results(study_uid, task),
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
                header = dcmread(path, stop_before_pixels=True, specific_tags=_REF_TAGS)
            except (OSError, InvalidDicomError):
                log.warning("earlier_result_unreadable", study_uid=study_uid, sop_instance_uid=uid)
                continue
            if str(header.SOPClassUID) != KeyObjectSelectionDocumentStorage:
                refs.append(ResultRef.of(header))
        return refs

    async def run_job(self, job: Job, context: TaskContext) -> None:
        """Run one claimed job to completion or to a recorded failure (the worker boundary)."""
        bound = log.bind(job_id=job.id, study_uid=job.study_uid, task=job.task)
        started = self.clock()
        try:
            outcome = await run_task(task_from_payload(job.payload), context)
            outputs = self.act(job, outcome, self.clock())
        except GatewayError as exc:
            retry_at = None if not exc.retryable else self.clock() + self._retry_delay(job)
            state = self.jobs.fail(job.id, str(exc), self.clock(), retry_at=retry_at)
            bound.warning("job_failed", error=str(exc), state=state.value, attempt=job.attempts)
            return
        except Exception as exc:  # the one worker boundary: log it, fail this job alone
            retry_at = self.clock() + self._retry_delay(job)
            state = self.jobs.fail(
                job.id, f"internal error: {exc!r}", self.clock(), retry_at=retry_at
            )
            bound.exception("job_crashed", state=state.value, attempt=job.attempts)
            return
        self.jobs.complete(job.id, outputs, self.clock())
        bound.info("job_completed", outputs=len(outputs), seconds=round(self.clock() - started, 3))

    @staticmethod
    def _retry_delay(job: Job) -> float:
        """Backoff for a failed job: 5 s, 10 s, 20 s, ... at most 10 minutes."""
        return backoff_delay(job.attempts, RETRY_BASE_S, RETRY_MAX_S)

    def act(self, job: Job, outcome: TaskOutcome, now: float) -> list[str]:
        """Keep embeddings, write and queue the result objects, route by label; their UIDs."""
        task = task_from_payload(job.payload)
        self._keep_embeddings(job, task, outcome, now)
        uids, queued = [], []
        for obj in outcome.objects:
            uid = str(obj.SOPInstanceUID)
            path = self.results_dir / job.study_uid / f"{uid}.dcm"
            write_durably(path, obj)
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
        return uids

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
        """Store the study's vectors; flag (and optionally route) an out-of-distribution study."""
        threshold = task.parameters.get("ood_threshold")
        for uid, vector in outcome.embeddings.items():
            score = self.embeddings.study_ood_score(job.study_uid, vector, outcome.model_version)
            self.embeddings.put(uid, job.study_uid, vector, outcome.model_version, now)
            if score is None or threshold is None or score <= float(threshold):
                continue
            destination = task.parameters.get("ood_destination")
            log.warning(
                "study_out_of_distribution",
                study_uid=job.study_uid,
                score=round(score, 4),
                threshold=float(threshold),
                destination=destination,
            )
            if isinstance(destination, str) and destination:
                self._forward_study(job.study_uid, destination, f"ood:{job.id}", now)
