"""The composition root: builds the stages of one process and connects them.

    PACS/modality --C-STORE--> receive --> spool --> assemble --> route --> infer --> convert
        --> send --C-STORE--> PACS

- receive + spool (:mod:`listener.receive`, :mod:`listener.store.spool`): the C-STORE handler
  writes the instance durably and records it in the journal; nothing else.
- assemble (:mod:`listener.assemble`): the quiet-period timer in the journal releases a study
  once, to the route stage's :meth:`~listener.route.release.StudyRouter.on_study_ready`.
- route (:mod:`listener.route`): the rules plan the study; forwards go into the outbox queue and
  one job per model task into the job table (:mod:`listener.store`).
- infer + convert (:mod:`listener.infer`, :mod:`converters`): a job runner claims a job, calls
  the model, builds and checks the result objects, writes them and queues them
  (:class:`~listener.infer.runner.JobRunner`).
- send (:mod:`listener.send`): the deliverer sends what the outbox queue holds due.

Stages hand work over only through the journal database (jobs, outbox, studies) and files, never
through memory, so any of these loops can run in its own process and a crash loses nothing.
Which process runs which loop is :mod:`listener.serve`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from listener.infer.runner import JobPolicy, JobRunner
from listener.route.load import effective_rules
from listener.route.model import RuleSet
from listener.route.release import StudyRouter
from listener.send.deliver import Deliverer, SendBackoff
from listener.send.scu import StoreSender
from listener.settings import MODEL_NAMES, Settings
from listener.store.audit import AuditTrail
from listener.store.drift import DriftStore
from listener.store.embeddings import EmbeddingStore
from listener.store.executors import owner_name
from listener.store.flags import StudyFlags
from listener.store.jobs import JobStore
from listener.store.journal import Journal
from listener.store.objects import spool_files
from listener.store.outbox import Outbox


@dataclass
class Pipeline:
    """The stages of one process, built by :func:`build_pipeline`, and the stores they share."""

    settings: Settings
    journal: Journal
    jobs: JobStore
    outbox: Outbox
    embeddings: EmbeddingStore
    router: StudyRouter
    runner: JobRunner
    deliverer: Deliverer
    audit: AuditTrail | None = None

    @property
    def rules(self) -> RuleSet:
        return self.router.rules

    def reload_rules(self) -> None:
        """Take up the rules file again: new plans and new destinations from now on."""
        rules = effective_rules(self.settings)
        self.router.rules = rules
        self.deliverer.destinations = dict(rules.destinations)
        self.runner.priors.destinations = dict(rules.destinations)
        self.outbox.destinations = set(rules.destinations)

    def close(self) -> None:
        for store in (self.journal, self.jobs, self.outbox, self.embeddings):
            store.close()
        for extra in (self.runner.flags, self.runner.drift):
            if extra is not None:
                extra.close()
        if self.audit is not None:
            self.audit.close()


def build_pipeline(
    settings: Settings, journal: Journal | None = None, clock: Callable[[], float] = time.time
) -> Pipeline:
    """Every stage a dispatcher or job-runner process needs, from the settings (one per process)."""
    rules = effective_rules(settings)
    journal = journal or Journal(settings.journal_database)
    jobs = JobStore(settings.journal_database)
    outbox = Outbox(settings.journal_database, rules.destinations)
    embeddings = EmbeddingStore(settings.journal_database)
    results_dir = settings.data_dir / "results"
    audit = AuditTrail.open(settings, clock)
    files = spool_files(settings)  # spool_url: s3://... lets a worker read what it lacks
    fetch = files.local if files.store is not None else None
    publish = files.publish if files.store is not None else None
    return Pipeline(
        settings=settings,
        journal=journal,
        jobs=jobs,
        outbox=outbox,
        embeddings=embeddings,
        router=StudyRouter(
            rules,
            journal,
            jobs,
            outbox,
            settings.spool_dir,
            settings.quiet_period_s,
            clock,
            settings.max_study_wait_s,
            fetch,
        ),
        runner=JobRunner(
            journal,
            jobs,
            outbox,
            embeddings,
            settings.spool_dir,
            results_dir,
            clock,
            JobPolicy.from_settings(settings),
            prior_settings=settings.priors,
            destinations=rules.destinations,
            calling_ae=settings.ae_titles[0],
            egress={name: settings.models.get(name).egress for name in MODEL_NAMES},
            audit=audit,
            adapters_dir=settings.data_dir / "adapters",
            flags=StudyFlags(settings.journal_database),
            drift=DriftStore(settings.journal_database, settings.drift),
            fetch=fetch,
            publish=publish,
        ),
        deliverer=Deliverer(
            outbox,
            rules.destinations,
            StoreSender(calling_ae=settings.ae_titles[0]),
            SendBackoff(
                base_s=settings.send_retry_base_s,
                max_attempts=settings.send_max_attempts,
                max_age_s=settings.send_max_age_s,
            ),
            audit=audit,
            fetch=fetch,
            owner=owner_name(settings.executor),
        ),
        audit=audit,
    )
