"""An operator's retry, the one path shared by ``pacs-ai jobs retry`` and the admin API.

Retrying a job does what can be done again for it:

- a CANCELED job (failed or canceled) becomes a new SCHEDULED job that references it (a new
  procedure step, PS3.4 CC.1.1: a canceled step is final);
- every dead-lettered send that belongs to it goes back into the outbox: its result objects
  (queued under the job's id), the study forwarded on its top label (``route:<job>``) or its
  out-of-distribution score (``ood:<job>``), and the originals forwarded when its study generation
  was released (``forward:<study>:<generation>:<rule>``, any rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.store.jobs import Job, JobStore
from listener.store.outbox import Outbox, OutboxEntry


@dataclass(frozen=True)
class RetryOutcome:
    """What a retry did: the new job (when the old one was canceled) and the sends requeued."""

    job_id: int
    new_job_id: int | None
    resubmitted: int

    @property
    def done(self) -> bool:
        return self.new_job_id is not None or self.resubmitted > 0


def dead_letters_of(job: Job, outbox: Outbox) -> list[OutboxEntry]:
    """Every dead-lettered send that belongs to ``job``, of all four kinds."""
    keys = {str(job.id), f"route:{job.id}", f"ood:{job.id}"}
    forwards = f"forward:{job.study_uid}:{job.generation}:"
    return [
        entry
        for entry in outbox.dead_letters()
        if entry.job_id in keys or entry.job_id.startswith(forwards)
    ]


def retry_job(jobs: JobStore, outbox: Outbox, job_id: int, now: float) -> RetryOutcome | None:
    """Retry job ``job_id`` (see the module docstring); None when there is no such job."""
    job = jobs.get(job_id)
    if job is None:
        return None
    new_job_id = jobs.retry(job_id, now)
    resubmitted = outbox.resubmit(dead_letters_of(job, outbox), now)
    return RetryOutcome(job_id, new_job_id, resubmitted)
