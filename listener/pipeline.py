"""The one place that wires the stages together.

    PACS/modality --C-STORE--> receive --> spool --> assemble --> route --> infer --> convert
        --> send --C-STORE--> PACS

- receive + spool (:mod:`listener.receive.scp`, :mod:`listener.store.spool`): the C-STORE
  handler writes the instance durably and records it in the journal; nothing else.
- assemble (:mod:`listener.assemble`): the quiet-period timer in the journal releases a study
  once; :meth:`Pipeline.on_study_ready` is its callback.
- route (:mod:`listener.route.plan`): :meth:`Pipeline.on_study_ready` plans the study with the
  rules, honours per-rule quiet periods and expected content (re-arming the study's timer),
  queues the forwarding of originals in the outbox and schedules one job per model task.
- infer + convert (:mod:`listener.infer.tasks`): :meth:`Pipeline.run_job` runs a claimed job,
  writes the checked result objects durably under ``results/`` and queues them for their
  destinations.
- send (:mod:`listener.store.outbox`, :mod:`listener.send.scu`): :meth:`Pipeline.deliver`
  sends what is due.

Stages hand work over only through the journal database (jobs, outbox, studies) and files, never
through memory, so any of these loops can run in its own process and a crash loses nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from listener.errors import GatewayError
from listener.infer import ModelClients
from listener.infer.tasks import (
    PriorImage,
    TaskContext,
    TaskOutcome,
    run_task,
    task_from_payload,
    task_payload,
)
from listener.logging import get_logger
from listener.route import AssociationFacts
from listener.route.defaults import default_rules
from listener.route.load import load_rules
from listener.route.model import RuleSet
from listener.route.plan import PlannedTask, StudyPlan, headers_from_dataset, plan_study
from listener.send.scu import StoreSender
from listener.settings import Settings
from listener.store.embeddings import EmbeddingStore
from listener.store.jobs import Job, JobStore
from listener.store.journal import Journal, ReleasedStudy
from listener.store.outbox import Backoff, Outbox

log = get_logger("pipeline")

JOB_LEASE_S = 900.0
FRONTAL_VIEWS = frozenset({"PA", "AP"})
DRAFT_REPORT_CODE = "18782-3"  # LOINC "Radiology Study observation (narrative)"
RETRY_BASE_S = 5.0
RETRY_MAX_S = 600.0


def effective_rules(settings: Settings) -> RuleSet:
    """The rules file's rules, or the embedded defaults.

    Destinations in the settings override those of the same name in the rules file, so one rules
    file serves several sites whose peers differ (``PACSAI_DESTINATIONS__PACS__HOST=...``).
    """
    if settings.rules_file is None:
        return default_rules(dict(settings.destinations))
    rules = load_rules(settings.rules_file)
    by_key = {_name_key(name): name for name in rules.destinations}
    merged = dict(rules.destinations)
    for name, destination in settings.destinations.items():
        merged[by_key.get(_name_key(name), name)] = destination
    return rules.model_copy(update={"destinations": merged})


def _name_key(name: str) -> str:
    """Destination names compare without case and with ``-`` equal to ``_``: environment
    variables can spell neither ``chest-reading`` nor upper case (``..._CHEST_READING__HOST``)."""
    return name.lower().replace("-", "_")


def worker_id() -> str:
    """This process's identity as a lease owner: host and PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_delay(attempts: int) -> float:
    """Exponential backoff for a failed job: 5 s, 10 s, 20 s, ... at most 10 minutes."""
    return float(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1)))


def write_durably(path: Path, obj: Dataset) -> None:
    """Write a result object to ``path`` through a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    obj.save_as(temp, enforce_file_format=True)
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(path)


@dataclass
class Pipeline:
    """The stages' shared dependencies, built once per process by :func:`build_pipeline`."""

    settings: Settings
    rules: RuleSet
    journal: Journal
    jobs: JobStore
    outbox: Outbox
    embeddings: EmbeddingStore
    clock: Callable[[], float] = time.time

    @property
    def results_dir(self) -> Path:
        return self.settings.data_dir / "results"

    # --- route ---------------------------------------------------------------------------------

    def _paths(self, study_uid: str) -> dict[str, Path]:
        return {
            record.sop_instance_uid: self.settings.spool_dir / record.path
            for record in self.journal.instances(study_uid)
        }

    def plan(self, study: ReleasedStudy) -> StudyPlan:
        """Plan a released study from its instances' headers and its association facts."""
        headers = [
            headers_from_dataset(dcmread(path, stop_before_pixels=True))
            for path in self._paths(study.study_uid).values()
        ]
        facts = AssociationFacts(calling_ae=study.calling_ae, called_ae=study.called_ae)
        return plan_study(self.rules, headers, facts)

    def _wait_longer(self, study: ReleasedStudy, plan: StudyPlan, now: float) -> float | None:
        """When the study should be looked at again (per-rule quiet period, expected content)."""
        info = self.journal.study(study.study_uid)
        if info is None:
            return None
        if plan.quiet_period_s is not None:
            due = info.last_received_at + plan.quiet_period_s
            if due > now:
                return due
        for expectation in plan.expectations:
            deadline = info.first_received_at + expectation.max_wait_s
            if not expectation.satisfied and now < deadline:
                return min(deadline, now + max(self.settings.quiet_period_s, 1.0))
        return None

    def on_study_ready(self, study: ReleasedStudy) -> None:
        """Assemble's callback: plan the study, queue forwards and schedule its model jobs."""
        bound = log.bind(study_uid=study.study_uid, generation=study.generation)
        now = self.clock()
        plan = self.plan(study)
        due = self._wait_longer(study, plan, now)
        if due is not None and self.journal.rearm_study(study.study_uid, study.generation, due):
            bound.info("study_waiting", until=due, missing=[e.missing for e in plan.expectations])
            return
        timed_out = [e for e in plan.expectations if not e.satisfied]
        if plan.discard or any(e.on_timeout == "discard" for e in timed_out):
            bound.info("study_discarded", rules=list(plan.matched))
            return
        paths = self._paths(study.study_uid)
        # A follow-up forwards only its late instances; the earlier ones went with their release.
        late = (
            {r.sop_instance_uid for r in self.journal.instances(study.study_uid, generation=g)}
            if (g := study.generation) > 0
            else None
        )
        for forward in plan.forwards:
            job_id = f"forward:{study.study_uid}:{study.generation}:{forward.rule}"
            for uid in forward.instance_uids:
                if late is None or uid in late:
                    self.outbox.enqueue(forward.destination, paths[uid], uid, job_id, now)
        for task in plan.tasks:
            self.jobs.schedule(
                job_key=f"{study.study_uid}:{study.generation}:{task.rule}:{task.name}",
                study_uid=study.study_uid,
                episode=study.generation,
                rule=task.rule,
                task=task.name,
                payload=task_payload(task),
                priority=task.priority,
                now=now,
            )
        bound.info(
            "study_planned",
            rules=list(plan.matched),
            tasks=len(plan.tasks),
            forwards=sum(len(f.instance_uids) for f in plan.forwards),
        )

    # --- infer + convert -----------------------------------------------------------------------

    def _loader(self, study_uid: str) -> Callable[[str], Dataset]:
        paths = self._paths(study_uid)

        def load(uid: str) -> Dataset:
            return dcmread(paths[uid])

        return load

    def _forward_study(self, study_uid: str, destination: str, job_key: str, now: float) -> None:
        for uid, path in self._paths(study_uid).items():
            self.outbox.enqueue(destination, path, uid, job_key, now)

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

    def _act(self, job: Job, outcome: TaskOutcome, now: float) -> list[str]:
        task = task_from_payload(job.payload)
        self._keep_embeddings(job, task, outcome, now)
        uids = []
        for obj in outcome.objects:
            uid = str(obj.SOPInstanceUID)
            path = self.results_dir / job.study_uid / f"{uid}.dcm"
            write_durably(path, obj)
            uids.append(uid)
            for destination in task.result_destinations:
                self.outbox.enqueue(destination, path, uid, job.id, now)
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

    async def run_job(self, job: Job, context: TaskContext) -> None:
        """Run one claimed job to completion or to a recorded failure (the worker boundary)."""
        bound = log.bind(job_id=job.id, study_uid=job.study_uid, task=job.task)
        started = self.clock()
        try:
            outcome = await run_task(task_from_payload(job.payload), context)
            outputs = self._act(job, outcome, self.clock())
        except GatewayError as exc:
            retry_at = None if not exc.retryable else self.clock() + retry_delay(job.attempts)
            state = self.jobs.fail(job.id, str(exc), self.clock(), retry_at=retry_at)
            bound.warning("job_failed", error=str(exc), state=state.value, attempt=job.attempts)
            return
        except Exception as exc:  # the one worker boundary: log it, fail this job alone
            retry_at = self.clock() + retry_delay(job.attempts)
            state = self.jobs.fail(
                job.id, f"internal error: {exc!r}", self.clock(), retry_at=retry_at
            )
            bound.exception("job_crashed", state=state.value, attempt=job.attempts)
            return
        self.jobs.complete(job.id, outputs, self.clock())
        bound.info("job_completed", outputs=len(outputs), seconds=round(self.clock() - started, 3))

    def prior_image(self, current: Dataset) -> PriorImage | None:
        """The frontal chest image of the same patient's most recent earlier study the gateway
        has seen, with the draft report text the gateway produced for it, if any."""
        patient_id = str(current.get("PatientID", ""))
        if not patient_id:
            return None
        current_date = str(current.get("StudyDate", ""))
        best: tuple[str, float, Path, str] | None = None  # date, received, path, study
        for info in self.journal.studies():
            if info.patient_id != patient_id or info.study_uid == current.StudyInstanceUID:
                continue
            for path in self._paths(info.study_uid).values():
                header = dcmread(path, stop_before_pixels=True)
                date = str(header.get("StudyDate", ""))
                if str(header.get("ViewPosition", "")).upper() not in FRONTAL_VIEWS:
                    continue
                if current_date and date and date >= current_date:
                    continue
                if best is None or (date, info.first_received_at) > best[:2]:
                    best = (date, info.first_received_at, path, info.study_uid)
                break
        if best is None:
            return None
        date, _, path, study_uid = best
        return PriorImage(dcmread(path), date or "unknown date", self._report_text(study_uid))

    def _report_text(self, study_uid: str) -> str | None:
        """The draft report (LOINC 18782-3 text at the SR root) the gateway made for a study."""
        folder = self.results_dir / study_uid
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
            sr = dcmread(path)
            if sr.Modality != "SR":
                continue
            for item in sr.get("ContentSequence", []):
                code = item.ConceptNameCodeSequence[0]
                if code.CodeValue == DRAFT_REPORT_CODE and "TextValue" in item:
                    return str(item.TextValue)
        return None

    def context(self, clients: ModelClients, study_uid: str) -> TaskContext:
        """The task context of one job: clients, its study's spooled files, prior lookup."""
        return TaskContext(clients=clients, load=self._loader(study_uid), prior=self.prior_image)

    def deliver(self) -> int:
        """Send what the outbox holds due now; return how many instances were confirmed."""
        return self.outbox.deliver_due(self.clock()).total_sent


def build_pipeline(settings: Settings, journal: Journal | None = None) -> Pipeline:
    """Everything the worker side needs, from the settings (one per process)."""
    rules = effective_rules(settings)
    journal = journal or Journal(settings.journal_path)
    sender = StoreSender(calling_ae=settings.ae_titles[0])
    return Pipeline(
        settings=settings,
        rules=rules,
        journal=journal,
        jobs=JobStore(settings.journal_path),
        outbox=Outbox(
            settings.journal_path,
            rules.destinations,
            sender,
            Backoff(base_s=settings.send_retry_base_s, max_attempts=settings.send_max_attempts),
        ),
        embeddings=EmbeddingStore(settings.journal_path),
    )
