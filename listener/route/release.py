"""Route a released study: plan it with the rules, then queue its forwards and schedule its jobs.

Assemble calls :meth:`StudyRouter.on_study_ready` once per released study (generation). The plan
may ask to wait longer (a rule's own quiet period, expected content not yet there): the study's
timer in the journal is re-armed and nothing else happens. Otherwise the forwards of originals go
into the outbox in one transaction (a follow-up forwards only its late instances) and one job is
scheduled per model task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from listener.logging import get_logger
from listener.route.conditions import AssociationFacts
from listener.route.model import RuleSet
from listener.route.plan import StudyPlan, headers_from_dataset, plan_study, task_payload
from listener.store.jobs import JobStore
from listener.store.journal import Journal, ReleasedStudy, instance_paths
from listener.store.outbox import Enqueue, Outbox

log = get_logger("route")


@dataclass
class StudyRouter:
    """The route stage: rules in, outbox entries and scheduled jobs out."""

    rules: RuleSet
    journal: Journal
    jobs: JobStore
    outbox: Outbox
    spool_dir: Path
    quiet_period_s: float
    clock: Callable[[], float] = field(default=time.time)
    max_study_wait_s: float | None = None
    # Spool files not on this host come from the bucket (listener.store.objects).
    fetch: Callable[[Path], Path] | None = None

    def plan(self, study: ReleasedStudy, paths: Mapping[str, Path] | None = None) -> StudyPlan:
        """Plan a released study from its instances' headers, each instance with the facts of
        the association that brought it (calling and called AE title, peer address).
        ``paths`` are the study's spool files when the caller already looked them up."""
        if paths is None:
            paths = instance_paths(self.journal, self.spool_dir, study.study_uid, self.fetch)
        headers = [
            headers_from_dataset(dcmread(path, stop_before_pixels=True)) for path in paths.values()
        ]
        facts = {
            uid: AssociationFacts(s.calling_ae, s.called_ae, s.peer_host)
            for uid, s in self.journal.senders(study.study_uid).items()
        }
        return plan_study(self.rules, headers, facts)

    def _wait_longer(self, study: ReleasedStudy, plan: StudyPlan, now: float) -> float | None:
        """When the study should be looked at again (per-rule quiet period, expected content),
        never past ``max_study_wait_s`` after its generation's first instance."""
        info = self.journal.study(study.study_uid)
        if info is None:
            return None
        due = self._rule_wait(info.first_received_at, info.last_received_at, plan, now)
        if due is None or self.max_study_wait_s is None:
            return due
        opened = self.journal.generation_opened_at(study.study_uid) or info.first_received_at
        ceiling = opened + self.max_study_wait_s
        return None if now >= ceiling else min(due, ceiling)

    def _rule_wait(
        self, first_received_at: float, last_received_at: float, plan: StudyPlan, now: float
    ) -> float | None:
        if plan.quiet_period_s is not None:
            due = last_received_at + plan.quiet_period_s
            if due > now:
                return due
        for expectation in plan.expectations:
            deadline = first_received_at + expectation.max_wait_s
            if not expectation.satisfied and now < deadline:
                return min(deadline, now + max(self.quiet_period_s, 1.0))
        return None

    def on_study_ready(self, study: ReleasedStudy) -> None:
        """Assemble's callback: plan the study, queue forwards and schedule its model jobs."""
        bound = log.bind(study_uid=study.study_uid, generation=study.generation)
        now = self.clock()
        paths = instance_paths(self.journal, self.spool_dir, study.study_uid, self.fetch)
        plan = self.plan(study, paths)
        due = self._wait_longer(study, plan, now)
        if due is not None and self.journal.rearm_study(study.study_uid, study.generation, due):
            bound.info("study_waiting", until=due, missing=[e.missing for e in plan.expectations])
            return
        timed_out = [e for e in plan.expectations if not e.satisfied]
        if plan.discard or any(e.on_timeout == "discard" for e in timed_out):
            bound.info("study_discarded", rules=list(plan.matched))
            return
        # A follow-up forwards only its late instances; the earlier ones went with their release.
        late = (
            {r.sop_instance_uid for r in self.journal.instances(study.study_uid, generation=g)}
            if (g := study.generation) > 0
            else None
        )
        self.outbox.enqueue_many(
            [
                Enqueue(
                    forward.destination,
                    paths[uid],
                    uid,
                    f"forward:{study.study_uid}:{study.generation}:{forward.rule}",
                )
                for forward in plan.forwards
                for uid in forward.instance_uids
                if late is None or uid in late
            ],
            now,
        )
        for task in plan.tasks:
            self.jobs.schedule(
                job_key=f"{study.study_uid}:{study.generation}:{task.rule}:{task.name}",
                study_uid=study.study_uid,
                generation=study.generation,
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
