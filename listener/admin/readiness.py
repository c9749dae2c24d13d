"""Readiness: is every stage moving? Reasons why not, read from the journal and the disk.

A stage is stuck when work it owns is overdue by far more than normal jitter:

- disk: the spool's free space is under ``disk_min_free_mb`` (receivers refuse new instances);
- assemble: a receiving study's quiet period ended long ago but it was not released (no assemble
  worker is running);
- infer: a job is IN PROGRESS past its lease (its worker died or hangs), or a scheduled job has
  been due for long (no job worker is running);
- send: an outbox entry has been due for long (no sender is running, or it is wedged).
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.admin.state import AdminState
from listener.store.stats import overdue


@dataclass(frozen=True)
class Thresholds:
    """How late work may be before the stage counts as stuck, in seconds."""

    release_late_s: float = 300.0
    job_due_late_s: float = 900.0
    lease_late_s: float = 60.0
    send_late_s: float = 900.0


def problems(state: AdminState, now: float, limits: Thresholds | None = None) -> list[str]:
    """Every reason the gateway is not ready; empty when it is."""
    limits = limits or Thresholds()
    reasons = []
    free = state.spool.free_mb()
    if free < state.settings.disk_min_free_mb:
        reasons.append(
            f"disk: {free:.0f} MiB free on the spool, under disk_min_free_mb"
            f" ({state.settings.disk_min_free_mb} MiB)"
        )
    late = overdue(
        state.journal.db,
        release_before=now - limits.release_late_s,
        lease_before=now - limits.lease_late_s,
        job_before=now - limits.job_due_late_s,
        send_before=now - limits.send_late_s,
    )
    for count, reason in (
        (late.unreleased_studies, "assemble: {n} studies past their quiet period are not released"),
        (late.expired_leases, "infer: {n} jobs IN PROGRESS past their lease"),
        (
            late.overdue_jobs,
            f"infer: {{n}} scheduled jobs overdue by over {limits.job_due_late_s:.0f} s",
        ),
        (
            late.overdue_sends,
            f"send: {{n}} outbox entries overdue by over {limits.send_late_s:.0f} s",
        ),
    ):
        if count:
            reasons.append(reason.format(n=count))
    return reasons
